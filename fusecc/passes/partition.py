"""partition: every floating-point compute op not yet in a group becomes a
one-op group, so a target sees the graph as a sequence of kernels (groups)
and ATen calls (views, data movement, unknown ops).

Matches: GEMMs, convolutions, reductions, pointwise ops, 2-d max/average
pools (a max pool only if its indices are unused) and float32 scaled
dot-product attention (ATen's CPU flash attention, no dropout, its
log-sum-exp unread; with GQA's repeat of K and V, which its kernel then
does not need) outside groups whose results are
float32/bfloat16/float16. Produces: a FusedGroup of kind ``gemm`` /
``conv`` / ``reduction`` / ``pointwise`` / ``pool`` / ``attention`` around each
(attrs ``single``). Integer and boolean ops (masks, indices) stay ATen calls.
The reference target inlines these groups again at no cost.
"""

from __future__ import annotations

import operator

import torch
from torch.fx import GraphModule

from ..graph.fused_group import fuse_nodes
from ..ops import GENERATED_POOLS, SDPA_CPU, OpCategory, kv_repeat, node_category, op_name, sdpa_options
from .manager import PassContext

NAME = "partition"
INFERENCE_ONLY = False

_KIND = {
    OpCategory.GEMM: "gemm",
    OpCategory.CONV: "conv",
    OpCategory.REDUCTION: "reduction",
    OpCategory.POINTWISE: "pointwise",
    OpCategory.POOL: "pool",
    OpCategory.ATTENTION: "attention",
}


def _poolable(node) -> bool:
    """2-d float32 max/average pools; a max pool only if nobody reads its indices."""
    val = node.meta.get("val")
    first = val[0] if isinstance(val, (tuple, list)) else val
    if node.target not in GENERATED_POOLS or not isinstance(first, torch.Tensor) or first.dtype is not torch.float32:
        return False
    if node.target is torch.ops.aten.avg_pool2d.default:
        return True
    return all(u.target is operator.getitem and (u.args[1] == 0 or not u.users) for u in node.users)


_FLOAT = (torch.float32, torch.bfloat16, torch.float16)


def _attention(node) -> bool:
    """ATen's CPU flash attention, float32, no dropout, its log-sum-exp unread."""
    if node.target is not SDPA_CPU:
        return False
    val = node.meta.get("val")
    first = val[0] if isinstance(val, (tuple, list)) else val
    if not isinstance(first, torch.Tensor) or first.dtype is not torch.float32 or sdpa_options(node)["dropout"]:
        return False
    return all(u.target is operator.getitem and (u.args[1] == 0 or not u.users) for u in node.users)


def _kv_heads(k) -> int:
    """The key heads before GQA's repeat (Llama's ``repeat_kv``)."""
    repeat = kv_repeat(k)
    return int(k.meta["val"].shape[1]) // (repeat[2] if repeat else 1)


def _kv_repeats(sdpa) -> list:
    """The repeat_kv steps in front of an attention op's K and V: the group
    takes them in, so its kernel reads the shared heads themselves."""
    steps = []
    for operand in sdpa.args[1:3]:
        repeat = kv_repeat(operand)
        if repeat and repeat[1][-1] not in steps:
            steps += repeat[1]
    return steps


def _attention_attrs(node) -> dict:
    """What the dump says of an attention op: heads (and key heads: fewer
    under grouped-query attention), head size, lengths, causal flag, mask kind."""
    q, k = node.args[0].meta["val"], node.args[1].meta["val"]
    options = sdpa_options(node)
    mask_val = options["mask"].meta.get("val") if options["mask"] is not None else None
    kind = "none" if mask_val is None else "boolean" if mask_val.dtype is torch.bool else "additive"
    attrs = {"heads": int(q.shape[1]), "kv_heads": _kv_heads(node.args[1]), "head_dim": int(q.shape[3]),
             "q_len": int(q.shape[2]), "kv_len": int(k.shape[2]), "causal": options["causal"], "mask": kind}  # fmt: skip
    pruned = node.meta.get("fusecc_heads")  # head_pruning removed skipped heads
    if pruned:
        attrs["pruned_from"], attrs["kept_heads"] = pruned["of"], pruned["kept"]
    return attrs


def _is_float(node) -> bool:
    val = node.meta.get("val")
    vals = val if isinstance(val, (tuple, list)) else [val]
    return any(isinstance(v, torch.Tensor) and v.dtype in _FLOAT for v in vals)


def _attrs(kind: str, node) -> dict:
    """The same attributes vertical fusion gives multi-op groups, plus ``single``."""
    name = op_name(node.target)
    if kind in ("gemm", "conv"):
        return {"anchor": name, "epilogue": [], "single": True}
    if kind == "reduction":
        return {"reduction": name, "prologue": 0, "epilogue": 0, "single": True}
    if kind == "pool":
        return {"pool": name, "single": True}
    if kind == "attention":
        return {"attention": name, **_attention_attrs(node), "single": True}
    return {"ops": 1, "single": True}


def run(gm: GraphModule, ctx: PassContext) -> GraphModule:
    wrapped = 0
    for node in list(gm.graph.nodes):
        kind = _KIND.get(node_category(node))
        if kind is None or not _is_float(node) or (kind == "pool" and not _poolable(node)):
            continue
        if kind == "attention" and not _attention(node):
            continue
        members = [node] + [u for u in node.users if u.target is operator.getitem]
        if kind == "attention":
            members = _kv_repeats(node) + members
        if not any(u for m in members for u in m.users):
            continue
        fuse_nodes(gm, members, kind, _attrs(kind, node))
        wrapped += 1
    if wrapped:
        ctx.decide(NAME, "graph", f"{wrapped} single ops became one-op groups", accepted=True)
    return gm
