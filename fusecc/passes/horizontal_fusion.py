"""horizontal_fusion: sibling GEMMs that read the same input become one.

Matches: two or more ``mm``/``addmm`` nodes that take the same left operand
and constant right operands with the same K and dtype - the Q/K/V (and
Llama's gate/up) projections of a transformer layer.
Produces: one GEMM against the weights concatenated at compile time,
followed by a split into the original outputs, wrapped in a FusedGroup of
kind ``gemm`` (attrs: ``horizontal`` = number of siblings, ``split_sizes``).
One wide GEMM reads the activation once and keeps the cores busy at small
batch where three narrow ones would not.
Refuses: non-constant weights (training), differing dtypes, GEMMs with
alpha/beta, and siblings whose consumers need a contiguous output that a
split cannot provide.
"""

from __future__ import annotations

import operator
from collections import defaultdict

import torch
from torch.fx import GraphModule, Node

from ..graph.analysis import tensor_meta
from ..graph.constants import constant_value, insert_constant, is_constant
from ..graph.fused_group import fuse_nodes
from .manager import PassContext

NAME = "horizontal_fusion"
INFERENCE_ONLY = False

aten = torch.ops.aten
_VIEWS_NEEDING_STRIDES = (aten.view.default, aten._unsafe_view.default)


def _gemm_operands(node: Node) -> tuple[Node, Node, Node | None] | None:
    """(input, weight [K, N], bias [N] or None) of a plain mm/addmm."""
    if node.op != "call_function" or node.kwargs:
        return None
    if node.target is aten.mm.default:
        return node.args[0], node.args[1], None
    if node.target is aten.addmm.default and len(node.args) == 3:
        bias, x, w = node.args
        val = tensor_meta(bias)
        if val is None or val.dim() != 1:
            return None
        return x, w, bias
    return None


def run(gm: GraphModule, ctx: PassContext) -> GraphModule:
    by_input: dict[Node, list[Node]] = defaultdict(list)
    for node in gm.graph.nodes:
        ops = _gemm_operands(node)
        if ops is not None:
            by_input[ops[0]].append(node)
    for x, siblings in by_input.items():
        if len(siblings) < 2:
            continue
        subject = "+".join(s.name for s in siblings)
        reason = _refusal(siblings)
        if reason:
            ctx.decide(NAME, subject, reason)
            continue
        call = _fuse(gm, x, siblings)
        ctx.decide(NAME, subject, f"{len(siblings)} sibling GEMMs on {x.name} became {call.target}", accepted=True)
    return gm


def _refusal(siblings: list[Node]) -> str | None:
    operands = [_gemm_operands(s) for s in siblings]
    if not all(is_constant(w) and (b is None or is_constant(b)) for _, w, b in operands):
        return "weights are not constants (training graph or parameters not frozen)"
    metas = [tensor_meta(w) for _, w, _ in operands]
    if len({(m.dtype, m.shape[0]) for m in metas}) != 1:
        return "weights differ in dtype or inner dimension"
    total = sum(m.shape[1] for m in metas)
    for s in siblings:
        out = tensor_meta(s)
        # The split output is a column slice of the wide result: row stride = total.
        strided = torch.empty_strided(tuple(out.shape), (total, 1), dtype=out.dtype, device="meta")
        for user in s.users:
            if user.target in _VIEWS_NEEDING_STRIDES:
                if not all(isinstance(d, int) for d in user.args[1]):
                    return f"consumer {user.name} views {s.name} with a symbolic shape"
                try:
                    strided.view(user.args[1])
                except RuntimeError:
                    return f"consumer {user.name} views {s.name} in a way a column slice does not allow"
    return None


def _fuse(gm: GraphModule, x: Node, siblings: list[Node]) -> Node:
    operands = [_gemm_operands(s) for s in siblings]
    weights = [constant_value(gm, w) for _, w, _ in operands]
    sizes = [w.shape[1] for w in weights]
    first = siblings[0]
    wide_w = insert_constant(gm, torch.cat(weights, dim=1), "_hfused_weight", first)
    has_bias = any(b is not None for _, _, b in operands)
    with gm.graph.inserting_before(first):
        if has_bias:
            biases = [
                constant_value(gm, b) if b is not None else torch.zeros(n, dtype=weights[0].dtype)
                for (_, _, b), n in zip(operands, sizes)
            ]
            wide_b = insert_constant(gm, torch.cat(biases), "_hfused_bias", first)
            gemm = gm.graph.call_function(aten.addmm.default, (wide_b, x, wide_w))
        else:
            gemm = gm.graph.call_function(aten.mm.default, (x, wide_w))
        split = gm.graph.call_function(aten.split_with_sizes.default, (gemm, sizes, 1))
        items = [gm.graph.call_function(operator.getitem, (split, i)) for i in range(len(siblings))]
    x_val = tensor_meta(x)
    gemm.meta["val"] = x_val.new_empty((x_val.shape[0], sum(sizes)))
    split.meta["val"] = tuple(tensor_meta(s) for s in siblings)
    for item, s in zip(items, siblings):
        item.meta = dict(s.meta)
        s.replace_all_uses_with(item)
        gm.graph.erase_node(s)
    return fuse_nodes(gm, [gemm, split, *items], "gemm", {"horizontal": len(siblings), "split_sizes": sizes})
