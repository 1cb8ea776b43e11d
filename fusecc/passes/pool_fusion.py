"""pool_fusion: a global average pool folded into the convolution before it.

Runs after `block_fusion`, on the groups it left alone; a block the target
then runs as its layers gets the same treatment at lowering
(`runtime/lower.py`), its last layer taking the pool.
Matches: a ``reduction`` group that is one ``mean`` over the spatial dims
(H, W) of a 4-d float32 tensor, whose input is the only output of a ``conv``
group and is used by nothing else - the last 1x1 convolution of MobileNetV2
with its ReLU6, then ``AdaptiveAvgPool2d(1)``.
Produces: one ``conv`` group (``attrs["pool"] = "mean"``) whose output is
the pooled [N, C, 1, 1] (or [N, C]) tensor. The kernel adds each output
tile into the per-channel sums as it leaves the registers, so the
convolution's full result (250 KB in MobileNetV2, read back cold by a
separate pooling kernel) is never written.
Refuses, with the reason in the dump: targets without pooled convolution
kernels (`Target.pooled_convolutions`), grouped (depthwise) convolutions,
kxk or strided ones (their own kernels beat the pooled GEMM: ResNet-18's
last 3x3 layer took 835-849 us pooled against 617-648 + 67-71 us apart),
runtime (unfrozen) weights, results that are not channels-last.
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from .. import targets
from ..graph.fused_group import FusedGroup, fuse_nodes, inline_group
from .manager import PassContext

NAME = "pool_fusion"
INFERENCE_ONLY = True

aten = torch.ops.aten


def _spatial_mean(group: FusedGroup) -> Node | None:
    """The group's only op if it is a float32 mean over dims (2, 3) of its 4-d input."""
    ops = [n for n in group.graph.nodes if n.op == "call_function"]
    if len(ops) != 1 or ops[0].target is not aten.mean.dim:
        return None
    mean = ops[0]
    x = mean.args[0]
    val = x.meta.get("val") if isinstance(x, Node) else None
    if not isinstance(val, torch.Tensor) or val.dim() != 4 or val.dtype is not torch.float32:
        return None
    if mean.kwargs.get("dtype") not in (None, torch.float32) or x.op != "placeholder":
        return None
    dims = mean.args[1] if len(mean.args) > 1 else None
    return mean if dims is not None and sorted(d % 4 for d in dims) == [2, 3] else None


def _refusal(conv_group: FusedGroup, conv_call: Node) -> str | None:
    """Why the conv group cannot carry a pooled output, or None."""
    convs = [n for n in conv_group.graph.nodes if n.target is aten.convolution.default]
    if len(convs) != 1:
        return f"conv group with {len(convs)} convolutions"
    conv = convs[0]
    if conv.args[8] != 1:
        return "grouped (depthwise) convolution: only dense convolutions pool in their epilogue"
    kh, kw = conv.args[1].meta["val"].shape[2:]
    x = conv.args[0]
    pad = x.args[1] if x.target is aten.constant_pad_nd.default else ()
    if (kh, kw) != (1, 1) or tuple(conv.args[3]) != (1, 1) or any(conv.args[4]) or any(pad):
        # the pooled kernel is the GEMM over the pixels in place; a kxk layer's
        # own (indirect, Winograd) kernel is faster than that plus the pool
        return "not a 1x1 stride-1 unpadded convolution: its own kernel beats the pooled GEMM kernel"
    placeholders = conv_group.graph.find_nodes(op="placeholder")
    weight = conv.args[1]
    if weight not in placeholders or not conv_group.constant_inputs[placeholders.index(weight)]:
        return "the convolution's weights are not constants"
    if x.target is aten.constant_pad_nd.default:  # an empty pad (transformers' TF padding of a 1x1 layer)
        x = x.args[0]
    if x.target is aten.clone.default:  # a layout change the kernel reads through: its source counts
        x = x.args[0]
    for what, val in (("input", x.meta.get("val")), ("result", conv_call.meta.get("val"))):
        if not isinstance(val, torch.Tensor) or not val.is_contiguous(memory_format=torch.channels_last):
            return f"the convolution {what} is not channels-last"
    return None


def pool_candidate(gm: GraphModule, call: Node) -> Node | None:
    """The producer call of ``call`` if ``call`` is a spatial-mean reduction
    group over the output of another group (a conv group, or a block whose
    last layer may be one once the target unfuses it)."""
    group = gm.get_submodule(call.target) if call.op == "call_module" else None
    if not (isinstance(group, FusedGroup) and group.kind == "reduction") or _spatial_mean(group) is None:
        return None
    producer = call.args[0]
    if not (isinstance(producer, Node) and producer.op == "call_module"):
        return None
    return producer if isinstance(gm.get_submodule(producer.target), FusedGroup) else None


def fuse_pool(gm: GraphModule, call: Node, target, decide) -> Node | None:
    """Fold the spatial-mean reduction group ``call`` into the conv group
    that produces its input; returns the new conv group's call, or None
    (with the reason given to ``decide(subject, message, accepted)``)."""
    producer = pool_candidate(gm, call)
    if producer is None:
        return None
    conv_group = gm.get_submodule(producer.target)
    if conv_group.kind != "conv":
        return None
    if len(producer.users) != 1:
        decide(producer.target, "the convolution result has users besides the pool", False)
        return None
    reason = _refusal(conv_group, producer)
    if reason is None and not target.pooled_convolutions:
        reason = f"target {target.name!r} has no pooled convolution kernels"
    if reason is not None:
        decide(producer.target, reason, False)
        return None
    attrs = {**conv_group.attrs, "pool": "mean"}
    name = producer.target  # the convolution keeps its name (and its kernel's)
    members = inline_group(gm, producer) + inline_group(gm, call)
    fused = fuse_nodes(gm, members, "conv", attrs, name=name)
    decide(name, f"global average pool folded into {name}", True)
    return fused


def run(gm: GraphModule, ctx: PassContext) -> GraphModule:
    target = targets.get(ctx.options.target)

    def decide(subject: str, message: str, accepted: bool) -> None:
        ctx.decide(NAME, subject, message, accepted)

    for call in list(gm.graph.find_nodes(op="call_module")):
        fuse_pool(gm, call, target, decide)
    return gm
