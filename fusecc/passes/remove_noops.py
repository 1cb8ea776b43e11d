"""remove_noops: drop ops that return their input unchanged.

Matches: ``clone`` of a tensor that is already laid out as the clone would
be (eval-mode dropout and ``.contiguous()`` leave these), ``alias``,
``detach``, views/reshapes/expands to the same shape, identity permutes,
full-range slices, and ``_to_copy`` to the same dtype and device; and
the ``_assert_tensor_metadata`` checks export-mode tracing puts before a
``.to()`` (dtype, device, layout: fixed by the traced graph, so the check
cannot fail at run time; left in, it would run as an ATen op and be
reported as a fallback).
Produces: uses of the op redirected to its input, so fusion sees through
them; the asserts erased. Refuses: an op whose result is a graph output (the output must not
alias an input or another output behind AOTAutograd's back).
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from ..graph.analysis import same_sizes, tensor_meta
from .manager import PassContext

NAME = "remove_noops"
INFERENCE_ONLY = False

aten = torch.ops.aten
_SAME_SHAPE_VIEWS = (aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.expand.default)


def _is_noop(node: Node) -> bool:
    if node.op != "call_function" or not node.args or not isinstance(node.args[0], Node):
        return False
    src, out = tensor_meta(node.args[0]), tensor_meta(node)
    if src is None or out is None:
        return False
    target = node.target
    if target in (aten.alias.default, aten.detach.default):
        return True
    same_shape = same_sizes(src.shape, out.shape)
    same_layout = (
        same_shape and same_sizes(src.stride(), out.stride()) and src.dtype == out.dtype and src.device == out.device
    )
    if target is aten.clone.default:
        return same_layout
    if target in _SAME_SHAPE_VIEWS or target is aten.slice.Tensor:  # a slice as long as its input is all of it
        return same_shape
    if target is aten.permute.default:
        return list(node.args[1]) == list(range(src.dim()))
    if target is aten._to_copy.default:
        return same_layout and not node.kwargs.get("memory_format")
    return False


def _is_metadata_assert(node: Node) -> bool:
    """An assert of what the traced graph fixes (not of sizes or strides)."""
    if node.target is not aten._assert_tensor_metadata.default or node.users:
        return False
    checks = dict(zip(("size", "stride"), node.args[1:3])) | node.kwargs
    return checks.get("size") is None and checks.get("stride") is None


def run(gm: GraphModule, ctx: PassContext) -> GraphModule:
    output = gm.graph.output_node()
    removed = asserts = 0
    for node in list(gm.graph.nodes):
        if _is_metadata_assert(node):
            gm.graph.erase_node(node)
            asserts += 1
            continue
        if output in node.users or not _is_noop(node):
            continue
        node.replace_all_uses_with(node.args[0])
        gm.graph.erase_node(node)
        removed += 1
    if removed:
        ctx.decide(NAME, "graph", f"removed {removed} ops that return their input", accepted=True)
    if asserts:
        ctx.decide(NAME, "graph", f"removed {asserts} tensor-metadata asserts the traced graph fixes", accepted=True)
    return gm
