"""What fusecc knows about each ATen op: one category per op.

Passes group ops by category (a pointwise chain, a reduction with its
prologue, a GEMM with its epilogue); the later lowering stage turns each
category into a kernel kind. An op with no category is *unknown*: it stays
a plain ATen call and is reported as a fallback.

Pointwise and reduction ops come from the tags PyTorch itself puts on its
operators (``torch.Tag.pointwise`` / ``torch.Tag.reduction``); the tables
below list only what the tags do not say.
"""

from __future__ import annotations

import enum
import operator

import torch
from torch.fx import Node

aten = torch.ops.aten
prims = torch.ops.prims


class OpCategory(enum.Enum):
    POINTWISE = "pointwise"  # elementwise with broadcasting
    REDUCTION = "reduction"  # reduces one or more dims (incl. softmax, norms)
    GEMM = "gemm"  # mm / addmm / bmm / baddbmm
    CONV = "conv"
    ATTENTION = "attention"  # fused SDPA variants
    VIEW = "view"  # no data movement for contiguous inputs
    DATA = "data"  # moves or creates data: cat, pad, gather, factories
    POOL = "pool"
    NORM = "norm"  # batch norm (folded away for inference)
    SCAN = "scan"
    BACKWARD = "backward"  # composite backward ops of the categories above
    GETITEM = "getitem"  # picks one output of a multi-output op
    UNKNOWN = "unknown"


def _ops(*packets_or_overloads):
    out = set()
    for p in packets_or_overloads:
        if isinstance(p, torch._ops.OpOverloadPacket):
            out.update(getattr(p, name) for name in p.overloads())
        else:
            out.add(p)
    return frozenset(out)


_EXPLICIT: dict[OpCategory, frozenset] = {
    OpCategory.POINTWISE: _ops(
        aten._to_copy.default, aten.hardtanh_backward, aten.clamp, aten.clamp_min, aten.clamp_max
    ),
    OpCategory.REDUCTION: _ops(
        aten._softmax,
        aten._safe_softmax,
        aten._log_softmax,
        aten.native_layer_norm,
        aten.var_mean,
        aten.var,
        aten.mean,
        aten.sum,
        aten.amax,
        aten.amin,
        aten.argmax,
        aten.argmin,
        aten.prod,
        aten.max.dim,
        aten.min.dim,
        aten._softmax_backward_data,
        aten._log_softmax_backward_data,
        aten.native_group_norm,
    ),
    OpCategory.GEMM: _ops(aten.mm, aten.addmm, aten.bmm, aten.baddbmm),
    OpCategory.CONV: _ops(aten.convolution),
    OpCategory.ATTENTION: _ops(
        aten._scaled_dot_product_flash_attention_for_cpu,
        aten._scaled_dot_product_flash_attention,
        aten._scaled_dot_product_efficient_attention,
        aten._scaled_dot_product_cudnn_attention,
        aten.scaled_dot_product_attention,
    ),
    OpCategory.VIEW: _ops(
        aten.view,
        aten._unsafe_view,
        aten.reshape,
        aten.squeeze,
        aten.unsqueeze,
        aten.permute,
        aten.transpose,
        aten.t,
        aten.expand,
        aten.alias,
        aten.slice,
        aten.select,
        aten.split,
        aten.split_with_sizes,
        aten.unbind,
        aten.as_strided,
        aten.detach,
        aten.lift_fresh_copy,
        aten.view_as_real,
        aten.view_as_complex,
    ),
    OpCategory.DATA: _ops(
        aten.cat,
        aten.stack,
        aten.clone,
        aten.copy,
        aten.constant_pad_nd,
        aten.embedding,
        aten.gather,
        aten.index,
        aten.index_select,
        aten.repeat,
        aten.arange,
        aten.full,
        aten.full_like,
        aten.zeros,
        aten.zeros_like,
        aten.ones,
        aten.ones_like,
        aten.empty,
        aten.empty_like,
        aten.new_ones,
        aten.new_zeros,
        aten.new_full,
        aten.new_empty,
        aten.scalar_tensor,
        aten.fill,
        aten.tril,
        aten.triu,
        aten.flip,
        aten.roll,
        aten.native_dropout,
        aten.scatter,
        aten.scatter_add,
        aten.index_put,
        aten.slice_scatter,
        aten.slice_backward,
        aten.select_backward,
        aten.index_select_backward,
        aten.select_scatter,
        aten.empty_strided,
        aten.sym_size,
        aten.sym_numel,
        aten.sym_stride,
    ),
    OpCategory.POOL: _ops(
        aten.max_pool2d_with_indices,
        aten.avg_pool2d,
        aten._adaptive_avg_pool2d,
        aten.adaptive_avg_pool2d,
        aten.max_pool2d_with_indices_backward,
        aten.avg_pool2d_backward,
        aten._adaptive_avg_pool2d_backward,
    ),
    OpCategory.NORM: _ops(
        aten._native_batch_norm_legit_no_training,
        aten._native_batch_norm_legit_functional,
        aten._native_batch_norm_legit,
        aten.native_batch_norm,
    ),
    OpCategory.SCAN: _ops(aten.cumsum, aten.cumprod),
    OpCategory.BACKWARD: _ops(
        aten.convolution_backward,
        aten.native_batch_norm_backward,
        aten.native_layer_norm_backward,
        aten.native_group_norm_backward,
        aten.embedding_dense_backward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward,
        aten._scaled_dot_product_efficient_attention_backward,
        aten._scaled_dot_product_flash_attention_backward,
    ),
}

_BY_OP: dict[object, OpCategory] = {op: cat for cat, ops in _EXPLICIT.items() for op in ops}


def category(target: object) -> OpCategory:
    """The category of an FX call_function target."""
    if target is operator.getitem:
        return OpCategory.GETITEM
    cat = _BY_OP.get(target)
    if cat is not None:
        return cat
    tags = getattr(target, "tags", ())
    if torch.Tag.pointwise in tags:
        return OpCategory.POINTWISE
    if torch.Tag.reduction in tags:
        return OpCategory.REDUCTION
    if getattr(target, "__module__", "") == "_operator" or target in _SYM_SCALAR_FUNCS:
        return OpCategory.DATA  # Python arithmetic on SymInts in dynamic-shape graphs
    return OpCategory.UNKNOWN


_SYM_SCALAR_FUNCS = frozenset(
    getattr(torch, name)
    for name in ("sym_int", "sym_float", "sym_max", "sym_min", "sym_not", "sym_sqrt")
    if hasattr(torch, name)
)


# ops that only re-index their input (no arithmetic): reshapes, and permutes
# besides. Fusion looks through them; the expression replay undoes them.
RESHAPE_OPS = frozenset(
    [
        aten.view.default,
        aten._unsafe_view.default,
        aten.reshape.default,
        aten.unsqueeze.default,
        aten.squeeze.dim,
        aten.squeeze.dims,
        aten.squeeze.default,
        aten.alias.default,
    ]
)
LAYOUT_OPS = RESHAPE_OPS | {aten.permute.default}


def is_layout(node: object) -> bool:
    """A call of a view, reshape or permute."""
    return isinstance(node, Node) and node.op == "call_function" and node.target in LAYOUT_OPS


# ATen's CPU flash attention: what `F.scaled_dot_product_attention` lowers to
# on CPU, and the op `attention_capture` writes on any device
SDPA_CPU = aten._scaled_dot_product_flash_attention_for_cpu.default


def sdpa_any_device(query, key, value, dropout_p=0.0, is_causal=False, *, attn_mask=None, scale=None):
    """`SDPA_CPU` on any device, as ``(output,)``: what a captured attention
    op calls when it runs as ATen off the CPU (the CPU op has no CUDA kernel)."""
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale
    )
    return (out,)


_BY_OP[sdpa_any_device] = OpCategory.ATTENTION


def runs_off_cpu_as_sdpa(node: Node) -> bool:
    """An `SDPA_CPU` node whose tensors are not on the CPU: as ATen it must
    call `sdpa_any_device` instead."""
    val = node.meta.get("val")
    first = val[0] if isinstance(val, (tuple, list)) else val
    return node.target is SDPA_CPU and isinstance(first, torch.Tensor) and first.device.type != "cpu"


def kv_repeat(node: object) -> tuple[Node, list[Node], int] | None:
    """GQA's ``repeat_kv`` in front of an attention op's K or V: ``node`` =
    view(clone(expand(unsqueeze(S, 2), [B, Hkv, rep, L, D])), [B, H, L, D])
    (the clone optional), each step read once. Returns (S, the steps in
    graph order, rep), or None."""

    def step(cur, targets, optional=False):
        if isinstance(cur, Node) and cur.target in targets and len(cur.users) == 1:
            chain.append(cur)
            return cur.args[0]
        return cur if optional else None

    chain: list[Node] = []
    cur = step(node, (aten.view.default, aten._unsafe_view.default, aten.reshape.default))
    cur = step(cur, (aten.clone.default,), optional=True)
    cur = step(cur, (aten.expand.default,))
    expanded = chain[-1] if cur is not None else None
    cur = step(cur, (aten.unsqueeze.default,))
    if cur is None or chain[-1].args[1] != 2:
        return None
    src, out, wide = cur.meta.get("val"), node.meta.get("val"), expanded.meta.get("val")
    if not all(isinstance(t, torch.Tensor) for t in (src, out, wide)) or wide.dim() != 5:
        return None
    b, hkv, rep, length, d = wide.shape
    if tuple(src.shape) != (b, hkv, length, d) or tuple(out.shape) != (b, hkv * rep, length, d):
        return None
    return cur, chain[::-1], int(rep)


def sdpa_options(node: Node) -> dict:
    """An `SDPA_CPU` call's options by name: ``dropout``, ``causal``,
    ``mask`` (a node or None) and ``scale`` (None: 1/sqrt(head size))."""

    def arg(position: int, name: str, default):
        return node.args[position] if len(node.args) > position else node.kwargs.get(name, default)

    return {
        "dropout": arg(3, "dropout_p", 0.0),
        "causal": bool(arg(4, "is_causal", False)),
        "mask": node.kwargs.get("attn_mask"),
        "scale": node.kwargs.get("scale"),
    }


# pools the C target generates kernels for (partition groups them, lowering reads them)
GENERATED_POOLS = (aten.max_pool2d_with_indices.default, aten.avg_pool2d.default)


def node_category(node: Node) -> OpCategory | None:
    """Category of a call_function node; None for placeholders, constants,
    outputs and already-fused group calls."""
    if node.op != "call_function":
        return None
    return category(node.target)


def is_pointwise(node: Node) -> bool:
    return node_category(node) is OpCategory.POINTWISE


def op_name(target: object) -> str:
    """A short readable name: ``aten.add.Tensor``, ``getitem``."""
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    return getattr(target, "__name__", repr(target))
