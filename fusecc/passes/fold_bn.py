"""fold_bn: fold inference batch-norm into the conv or linear layer before it.

Matches: ``_native_batch_norm_legit_no_training`` whose statistics and
affine parameters are constants. Produces, in order of preference:
  * conv -> BN: the convolution with rescaled weights and a new bias;
  * linear (addmm/mm over [N, C]) -> BN1d: the GEMM with rescaled weight
    columns and a new bias;
  * anything else: a per-channel ``x * scale + shift`` (two pointwise ops
    that later fuse with their neighbours).
Refuses: training-mode BN (inference-only pass) and BN whose statistics are
not constants (parameters not frozen).
The folded constants are computed in float64 and cast back to the layer's
dtype, so folding adds less error than the unfolded BN itself has.
"""

from __future__ import annotations

import operator

import torch
from torch.fx import GraphModule, Node

from ..graph.analysis import tensor_meta
from ..graph.constants import constant_value, insert_constant, is_constant
from .manager import PassContext

NAME = "fold_bn"
INFERENCE_ONLY = True

aten = torch.ops.aten
_BN = aten._native_batch_norm_legit_no_training.default


def run(gm: GraphModule, ctx: PassContext) -> GraphModule:
    for bn in list(gm.graph.find_nodes(op="call_function", target=_BN)):
        x, weight, bias, mean, var, _momentum, eps = bn.args
        if not all(a is None or is_constant(a) for a in (weight, bias, mean, var)):
            ctx.decide(NAME, bn.name, "batch-norm statistics are not constants (parameters not frozen)")
            continue
        if any(u.target is not operator.getitem or u.args[1] != 0 for u in bn.users):
            ctx.decide(NAME, bn.name, "batch-norm's mean/invstd outputs are used")
            continue
        val = tensor_meta(x)
        channels = val.shape[1]
        scale, shift = _scale_shift(gm, weight, bias, mean, var, eps, channels)
        producer = x if len(x.users) == 1 else None
        if producer is not None and _fold_into_conv(gm, producer, bn, scale, shift):
            ctx.decide(NAME, bn.name, f"folded into convolution {producer.name}", accepted=True)
        elif producer is not None and _fold_into_gemm(gm, producer, bn, scale, shift):
            ctx.decide(NAME, bn.name, f"folded into {producer.target} {producer.name}", accepted=True)
        else:
            _as_affine(gm, bn, x, scale, shift)
            ctx.decide(NAME, bn.name, "no conv/linear to fold into; became per-channel scale+shift", accepted=True)
    return gm


def _scale_shift(gm, weight, bias, mean, var, eps, channels) -> tuple[torch.Tensor, torch.Tensor]:
    def value(node: Node | None, default: float) -> torch.Tensor:
        if node is None:
            return torch.full((channels,), default, dtype=torch.float64)
        return constant_value(gm, node).detach().to(torch.float64)

    scale = value(weight, 1.0) / torch.sqrt(value(var, 1.0) + eps)
    shift = value(bias, 0.0) - value(mean, 0.0) * scale
    return scale, shift


def _replace_bn_output(gm: GraphModule, bn: Node, new: Node) -> None:
    for user in list(bn.users):
        user.replace_all_uses_with(new)
        gm.graph.erase_node(user)
    gm.graph.erase_node(bn)


def _fold_into_conv(gm: GraphModule, conv: Node, bn: Node, scale, shift) -> bool:
    if conv.target is not aten.convolution.default:
        return False
    inp, w, b, stride, padding, dilation, transposed, output_padding, groups = conv.args
    if transposed or not is_constant(w) or (b is not None and not is_constant(b)):
        return False
    weight = constant_value(gm, w)
    dtype = weight.dtype
    new_w = (weight.to(torch.float64) * scale.view(-1, *([1] * (weight.dim() - 1)))).to(dtype)
    old_b = constant_value(gm, b).to(torch.float64) if b is not None else torch.zeros_like(shift)
    new_b = (old_b * scale + shift).to(dtype)
    w_node = insert_constant(gm, new_w, "_bn_folded", conv)
    b_node = insert_constant(gm, new_b, "_bn_folded", conv)
    with gm.graph.inserting_after(conv):
        new_conv = gm.graph.call_function(
            aten.convolution.default,
            (inp, w_node, b_node, stride, padding, dilation, transposed, output_padding, groups),
        )
    new_conv.meta = dict(conv.meta)
    _replace_bn_output(gm, bn, new_conv)
    gm.graph.erase_node(conv)
    return True


def _fold_into_gemm(gm: GraphModule, gemm: Node, bn: Node, scale, shift) -> bool:
    if gemm.target is aten.addmm.default:
        b, inp, wt = gemm.args[:3]
        if gemm.kwargs or not is_constant(b):
            return False
    elif gemm.target is aten.mm.default:
        (inp, wt), b = gemm.args, None
    else:
        return False
    if not is_constant(wt) or tensor_meta(gemm).dim() != 2:
        return False
    weight_t = constant_value(gm, wt)  # [K, C]
    dtype = weight_t.dtype
    new_w = (weight_t.to(torch.float64) * scale.view(1, -1)).to(dtype)
    old_b = constant_value(gm, b).to(torch.float64) if b is not None else torch.zeros_like(shift)
    new_b = (old_b * scale + shift).to(dtype)
    if new_b.dim() != 1:
        return False
    w_node = insert_constant(gm, new_w, "_bn_folded", gemm)
    b_node = insert_constant(gm, new_b, "_bn_folded", gemm)
    with gm.graph.inserting_after(gemm):
        new_gemm = gm.graph.call_function(aten.addmm.default, (b_node, inp, w_node))
    new_gemm.meta = dict(gemm.meta)
    _replace_bn_output(gm, bn, new_gemm)
    gm.graph.erase_node(gemm)
    return True


def _as_affine(gm: GraphModule, bn: Node, x: Node, scale, shift) -> None:
    val = tensor_meta(x)
    shape = (-1,) + (1,) * (val.dim() - 2)
    s_node = insert_constant(gm, scale.to(val.dtype).view(shape), "_bn_folded", bn)
    t_node = insert_constant(gm, shift.to(val.dtype).view(shape), "_bn_folded", bn)
    with gm.graph.inserting_before(bn):
        mul = gm.graph.call_function(aten.mul.Tensor, (x, s_node))
        add = gm.graph.call_function(aten.add.Tensor, (mul, t_node))
    mul.meta = {"val": val}
    add.meta = {"val": val}
    _replace_bn_output(gm, bn, add)
