"""mask_rows: an attention mask that is the same for every query row is
read as one row.

A key-padding mask reaches attention as [B, 1, Lq, Lk]: Hugging Face
builds it by broadcasting a per-key row against the query positions and
materializes it in full. The attention kernel then reads Lq x Lk mask
floats per head - at 4096 tokens 64 MB a head, 768 MB a layer of
MiniLM's 12 heads, which made its attention 1.27x slower than with the
same mask as one row (12 heads x 32, 2 threads).

Matches: the float mask of a scaled-dot-product attention op whose value
provably does not change along the query rows (dim -2, Lq > 1): built by
elementwise ops and expands from tensors of one row there, or from
constants whose rows are all equal (Hugging Face's ``q_idx >= 0`` folds to
one). Produces: the op reads ``expand(slice(mask, -2, 0, 1))``, a view with
stride 0 over the query rows, so every kernel reads the one row; the mask
itself is still computed once per call. Refuses, with the reason in the
dump: masks whose rows may differ (causal, sliding-window masks). Masks
already read with stride 0 over the rows are left as they are.
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from ..graph.analysis import tensor_meta
from ..graph.constants import constant_value, is_constant
from ..ops import SDPA_CPU, OpCategory, node_category
from .manager import PassContext

NAME = "mask_rows"
INFERENCE_ONLY = True

aten = torch.ops.aten
_ROW = -2  # the query rows of a [..., Lq, Lk] mask


def _rows_equal(gm: GraphModule, node: object, dim: int, memo: dict) -> bool:
    """Whether ``node`` (a tensor, broadcast right-aligned to the mask) is
    the same along ``dim`` (negative: counted from the last dim)."""
    if not isinstance(node, Node):
        return True  # a Python scalar
    val = tensor_meta(node)
    if val is None:
        return False
    if val.dim() < -dim or val.shape[dim] == 1:
        return True  # broadcast along dim
    key = (node, dim)
    if key not in memo:
        memo[key] = False  # no cycles in a graph, but keep recursion finite on odd input
        if is_constant(node):
            t = constant_value(gm, node)
            memo[key] = torch.equal(t, t.narrow(dim, 0, 1).expand_as(t))
        elif node.target is aten.expand.default or node_category(node) is OpCategory.POINTWISE:
            inputs: list[object] = []
            torch.fx.node.map_aggregate((node.args, node.kwargs), inputs.append)
            memo[key] = all(_rows_equal(gm, x, dim, memo) for x in inputs if isinstance(x, Node))
    return memo[key]


def _one_row(gm: GraphModule, mask: Node) -> Node:
    """``mask`` as a view of its first row, expanded back over the rows."""
    val = tensor_meta(mask)
    with gm.graph.inserting_after(mask):
        row = gm.graph.call_function(aten.slice.Tensor, (mask, val.dim() + _ROW, 0, 1))
        row.meta["val"] = val.narrow(_ROW, 0, 1)
    with gm.graph.inserting_after(row):
        wide = gm.graph.call_function(aten.expand.default, (row, list(val.shape)))
        wide.meta["val"] = row.meta["val"].expand(val.shape)
    return wide


def run(gm: GraphModule, ctx: PassContext) -> GraphModule:
    memo: dict = {}
    rows: dict[Node, Node | None] = {}  # each mask: its one-row view, or None where its rows may differ
    for node in gm.graph.find_nodes(op="call_function", target=SDPA_CPU):
        mask = node.kwargs.get("attn_mask")
        val = tensor_meta(mask)
        if val is None or val.dim() < 2 or val.shape[_ROW] == 1 or val.stride()[_ROW] == 0:
            continue
        if mask not in rows:
            shape = list(val.shape)
            if _rows_equal(gm, mask, _ROW, memo):
                rows[mask] = _one_row(gm, mask)
                ctx.decide(NAME, mask.name, f"every query row of the {shape} mask is the same: attention reads one row",
                           accepted=True)  # fmt: skip
            else:
                rows[mask] = None
                ctx.decide(NAME, mask.name, f"the query rows of the {shape} mask may differ: attention reads it in full")
        if rows[mask] is not None:
            node.kwargs = {**node.kwargs, "attn_mask": rows[mask]}
    return gm
