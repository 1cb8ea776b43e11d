"""head_pruning: heads an attention plan skips are removed from the graph,
with their rows of the Q/K/V projections and their columns of the output
projection.

Runs only with an attention plan (``options={"attention_sparsity":
{"plan": ...}}``) that skips some heads of a layer, before
`horizontal_fusion` so the projections are still separate GEMMs. Matches:
the graph's attention ops in order, one plan layer each (as
`attention_sparsity` and `fusecc.calibrate` number them). `graph.heads`
follows each op's head axis back to the projections and forward to the
output projection; the rewrite slices their constant weights and biases
once at compile time and shrinks every view, expand and split on the way
(BERT's separate Q/K/V, GPT-2's fused ``c_attn`` split, Llama's RoPE and
GQA repeat: a query head skipped in every group shrinks the repeat, a key
head whose queries are all skipped goes with its projection rows).

The result equals the plan's own semantics exactly: a skipped head's
output is zero, so its output-projection columns add nothing. Produces:
an attention op with fewer heads, its ``fusecc_heads`` meta (``of``: the
heads before, ``kept``: their indices), which the attention group and
`attention_sparsity` read. Refuses, with the reason in the dump (the heads
then stay, and the kernel writes their zeros): heads the trace cannot
follow, non-constant weights, a layer that skips every head.
"""

from __future__ import annotations

import operator

import numpy as np
import torch
from torch.fx import GraphModule, Node
from torch.fx.node import map_aggregate

from ..graph.analysis import positions
from ..graph.constants import constant_value, insert_constant, is_constant
from ..graph.heads import BINARY, RESHAPES, SPLITS, HeadTrace, Mask, Refused, trace
from ..ops import SDPA_CPU
from ..sparsity.plan import Plan
from .manager import PassContext

NAME = "head_pruning"
INFERENCE_ONLY = True

aten = torch.ops.aten


def _kept(mask: Mask) -> torch.Tensor:
    return torch.from_numpy(np.flatnonzero(mask[1]))


def _sliced_constant(gm: GraphModule, node: Node, axis: int, index: torch.Tensor, before: Node) -> Node:
    value = constant_value(gm, node).index_select(axis, index)
    return insert_constant(gm, value, "_pruned_", before)


def _slice_operand(gm: GraphModule, user: Node, operand: Node, axis: int, size: int, index: torch.Tensor) -> None:
    """A constant operand that runs over the heads (a per-head mask or bias) keeps the kept heads."""
    shape = operand.meta["val"].shape
    aligned = axis - (user.meta["val"].dim() - len(shape))
    if aligned >= 0 and shape[aligned] == size and size != 1:
        user.replace_input_with(operand, _sliced_constant(gm, operand, aligned, index, user))


def _rewrite(gm: GraphModule, t: HeadTrace) -> None:
    for gemm in t.sources:  # output features: weight [K, N] columns, bias [N]
        index = _kept(t.inputs[gemm])
        n = gemm.meta["val"].shape[1]
        gemm.replace_input_with(gemm.args[-1], _sliced_constant(gm, gemm.args[-1], 1, index, gemm))
        bias = gemm.args[0] if gemm.target is aten.addmm.default else None
        if is_constant(bias) and bias.meta["val"].shape[-1] == n:
            axis = bias.meta["val"].dim() - 1
            gemm.replace_input_with(bias, _sliced_constant(gm, bias, axis, index, gemm))
    for gemm in t.sinks:  # input features: weight [K, N] rows
        index = _kept(t.outputs[gemm.args[-2]])
        gemm.replace_input_with(gemm.args[-1], _sliced_constant(gm, gemm.args[-1], 0, index, gemm))
    masks = {**t.inputs, **t.outputs}
    for node, (axis, keep) in masks.items():
        size, kept = len(keep), int(keep.sum())
        if node.target in RESHAPES:
            shape = list(node.meta["val"].shape)
            shape[axis] = kept
            node.args = (node.args[0], shape)
        elif node.target is aten.expand.default:
            sizes = list(node.args[1])
            sizes[axis] = kept
            node.args = (node.args[0], sizes)
        elif node.target is aten.slice.Tensor and node.args[1] % node.meta["val"].dim() == axis:
            args = [*node.args, None, None, None][:5]  # a full slice (graph.heads checked): end -> the kept count
            node.args = (args[0], args[1], args[2] or 0, kept, args[4] or 1)
        elif node.target in SPLITS:
            _shrink_split(node, masks)
        elif node.target in BINARY:
            for operand in node.args[:2]:
                if is_constant(operand):
                    _slice_operand(gm, node, operand, axis, size, _kept((axis, keep)))
    mask, heads = t.sdpa.kwargs.get("attn_mask"), t.inputs[t.sdpa.args[0]]
    if is_constant(mask):
        _slice_operand(gm, t.sdpa, mask, 1, len(heads[1]), _kept(heads))
    for node in t.nodes() + t.sinks + list(t.sdpa.users):
        for user in list(node.users):
            if user.target is aten._assert_tensor_metadata.default:
                gm.graph.erase_node(user)
    _refresh_meta(t)


def _shrink_split(split: Node, masks: dict[Node, Mask]) -> None:
    """A split along the pruned axis gets each piece's kept size."""
    axis = masks[split][0]
    rank = split.args[0].meta["val"].dim()
    dim = (split.args[2] if len(split.args) > 2 else 0) % rank
    if dim != axis:
        return
    pieces = sorted((u for u in split.users if u.target is operator.getitem), key=lambda u: u.args[1])
    sizes = [int(masks[p][1].sum()) if p in masks else p.meta["val"].shape[dim] for p in pieces]
    split.target = aten.split_with_sizes.default
    split.args = (split.args[0], sizes, dim)


def _refresh_meta(t: HeadTrace) -> None:
    """Shapes after the rewrite, recomputed on the graph's fake tensors in graph order."""
    changed = set(t.nodes()) | set(t.sinks)
    for node in list(changed):
        changed.update(u for u in node.users if u.target is operator.getitem)
    order = positions(t.sdpa.graph)
    for node in sorted(changed, key=order.__getitem__):
        if node.op != "call_function":
            continue
        args = map_aggregate(node.args, lambda a: a.meta["val"] if isinstance(a, Node) else a)
        kwargs = map_aggregate(node.kwargs, lambda a: a.meta["val"] if isinstance(a, Node) else a)
        node.meta["val"] = node.target(*args, **kwargs)


def run(gm: GraphModule, ctx: PassContext) -> GraphModule:
    request = ctx.options.attention_sparsity
    if not request:
        return gm
    plan = Plan.load(request["plan"])
    ops = list(gm.graph.find_nodes(op="call_function", target=SDPA_CPU))
    if len(plan.layers) != len(ops):
        return gm  # attention_sparsity names the mismatch
    pruned = 0
    for i, (sdpa, heads) in enumerate(zip(ops, plan.layers)):
        keep = np.array([h["kind"] != "skip" for h in heads])
        if keep.all() or len(heads) != sdpa.args[0].meta["val"].shape[1]:
            continue
        if not keep.any():
            ctx.decide(NAME, sdpa.name, f"layer {i} skips every head; the kernel writes its zeros")
            continue
        try:
            found = trace(sdpa, keep)
        except Refused as e:
            ctx.decide(NAME, sdpa.name, f"layer {i}: {e}; its skipped heads stay (their output is zero)")
            continue
        _rewrite(gm, found)
        sdpa.meta["fusecc_heads"] = {"of": len(heads), "kept": [int(h) for h in np.flatnonzero(keep)]}
        pruned += 1
        gemms = ", ".join(g.name for g in found.sources + found.sinks)
        ctx.decide(NAME, sdpa.name, f"layer {i}: removed {int((~keep).sum())} of {len(heads)} heads "
                   f"and their rows of {gemms}", True)  # fmt: skip
    if pruned:  # the unsliced weights are left unread; the final dce removes them
        gm.graph.lint()
        gm.recompile()
    return gm
