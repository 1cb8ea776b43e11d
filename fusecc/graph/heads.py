"""Where an attention op's heads live in the graph around it.

`trace(sdpa, keep)` follows the head axis of an attention op's queries,
keys and values back to the projection GEMMs that produce them, and of its
output forward to the GEMM that consumes it, through the views, permutes,
splits and elementwise ops (RoPE) in between. For a mask of heads to keep
it says, per node on the way, which axis shrinks and which of its elements
remain: the output features of the Q/K/V projections, the input features of
the output projection. `head_pruning` uses it to remove skipped heads with
their projection rows and columns.

A mask is ``(axis, keep)``: ``keep`` has one boolean per element of that
axis. Views map masks by grouping the dims whose sizes multiply to the same
count (the head axis of ``[B, L, H, D]`` is a run of ``D`` features of
``[B, L, H*D]``); GQA's repeat (``expand`` of a size-1 axis) needs no pruned
input. Anything else on the way - a graph input instead of a projection, a
tensor read outside the attention, a reduction over heads - is refused
with the reason.
"""

from __future__ import annotations

import dataclasses
import operator

import numpy as np
import torch
from torch.fx import Node

from .analysis import positions, tensor_meta
from .constants import is_constant

aten = torch.ops.aten

Mask = tuple[int, np.ndarray]  # (axis, one keep flag per element of the axis)

RESHAPES = (aten.view.default, aten._unsafe_view.default, aten.reshape.default)
_SAME_SHAPE = (aten.clone.default, aten.alias.default, aten.neg.default, aten.contiguous.default)
BINARY = (aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor)
_GEMMS = (aten.mm.default, aten.addmm.default)
SPLITS = (aten.split.Tensor, aten.split_with_sizes.default)
_ASSERTS = (aten._assert_tensor_metadata.default,)


class Refused(Exception):
    """The heads cannot be followed here; the message says why."""


@dataclasses.dataclass
class HeadTrace:
    """The nodes whose head axis shrinks, with their masks: ``inputs`` from
    the projections to the attention's Q/K/V, ``outputs`` from its output
    to the output projection; ``sources`` / ``sinks`` are those GEMMs."""

    sdpa: Node
    inputs: dict[Node, Mask]
    outputs: dict[Node, Mask]
    sources: list[Node]
    sinks: list[Node]

    def nodes(self) -> list[Node]:
        """Every node whose shape or arguments change, in graph order."""
        order = positions(self.sdpa.graph)
        return sorted({*self.inputs, *self.outputs, self.sdpa}, key=order.__getitem__)


def _shape(node) -> tuple[int, ...]:
    meta = tensor_meta(node) if isinstance(node, Node) else None
    if meta is None:
        raise Refused(f"{getattr(node, 'name', node)} has no tensor shape")
    if not all(isinstance(s, int) for s in meta.shape):
        raise Refused(f"{node.name} has symbolic sizes")
    return tuple(meta.shape)


def _readers(node: Node) -> list[Node]:
    return [u for u in node.users if u.target not in _ASSERTS]


def _groups(a: tuple[int, ...], b: tuple[int, ...]) -> list[tuple[range, range]]:
    """Runs of dims of ``a`` and ``b`` (a view's two shapes) with equal products."""
    out, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        i0, j0 = i, j
        pa = a[i] if i < len(a) else 1
        pb = b[j] if j < len(b) else 1
        i, j = min(i + 1, len(a)), min(j + 1, len(b))
        while pa != pb:
            if pa < pb and i < len(a):
                pa, i = pa * a[i], i + 1
            elif pb < pa and j < len(b):
                pb, j = pb * b[j], j + 1
            else:
                raise Refused(f"a view from {list(a)} to {list(b)} is not a regrouping of dims")
        out.append((range(i0, i), range(j0, j)))
    return out


def reshape_mask(src: tuple[int, ...], dst: tuple[int, ...], mask: Mask) -> Mask:
    """The mask of a view's other side: ``mask`` on ``src``'s axis, as a
    mask on one axis of ``dst``."""
    axis, keep = mask
    for ra, rb in _groups(src, dst):
        if axis in ra:
            break
    full = np.ones([src[d] for d in ra], dtype=bool)
    shape = [1] * len(ra)
    shape[axis - ra.start] = src[axis]
    full &= keep.reshape(shape)
    mapped = full.reshape([dst[d] for d in rb])
    for k in range(mapped.ndim):
        others = tuple(d for d in range(mapped.ndim) if d != k)
        along = mapped.any(axis=others) if others else mapped
        spread = np.broadcast_to(np.expand_dims(along, others), mapped.shape)
        if np.array_equal(mapped, spread):
            return rb.start + k, along
    raise Refused(f"the heads of {list(src)} are not one axis of {list(dst)}")


def _dim(d: int, rank: int) -> int:
    return d % rank if rank else 0


def _slice_is_full(node: Node, size: int) -> bool:
    start, end, step = (list(node.args[2:5]) + [None, None, None])[:3]
    return (start in (None, 0)) and (end is None or end >= size) and (step in (None, 1))


def _through_layout(node: Node, mask: Mask, forward: bool) -> Mask | None:
    """``mask`` carried through a view, permute, transpose or copy ``node``:
    from its input to its output (``forward``) or back; None for other ops."""
    axis, keep = mask
    target, args = node.target, node.args
    if target in RESHAPES:
        src, out = _shape(args[0]), _shape(node)
        return reshape_mask(src, out, mask) if forward else reshape_mask(out, src, mask)
    out = _shape(node)
    if target is aten.permute.default:
        perm = [_dim(d, len(out)) for d in args[1]]
        return (perm.index(axis), keep) if forward else (perm[axis], keep)
    if target is aten.transpose.int:
        d0, d1 = _dim(args[1], len(out)), _dim(args[2], len(out))
        return {d0: d1, d1: d0}.get(axis, axis), keep
    if target in _SAME_SHAPE:
        return mask
    return None


def _backward(node: Node, mask: Mask) -> list[tuple[Node, Mask]]:
    """The inputs of ``node`` that must shrink for its output to take ``mask``,
    with their masks."""
    axis, keep = mask
    target, args = node.target, node.args
    out = _shape(node)
    layout = _through_layout(node, mask, forward=False)
    if layout is not None:
        return [(args[0], layout)]
    if target is aten.unsqueeze.default:
        d = _dim(args[1], len(out))
        if d == axis:
            raise Refused(f"{node.name} adds the head axis")
        return [(args[0], (axis - (d < axis), keep))]
    if target is aten.expand.default:
        src = _shape(args[0])
        aligned = axis - (len(out) - len(src))
        if aligned < 0 or src[aligned] == 1:
            return []  # a repeat (GQA): fewer copies, the source unchanged
        return [(args[0], (aligned, keep))]
    if target is aten.slice.Tensor:
        if _dim(args[1], len(out)) == axis and not _slice_is_full(node, _shape(args[0])[axis]):
            raise Refused(f"{node.name} slices the head axis")
        return [(args[0], mask)]
    if target is aten.cat.default:
        dim = _dim(args[1] if len(args) > 1 else 0, len(out))
        if dim == axis:
            raise Refused(f"{node.name} concatenates along the head axis")
        return [(t, mask) for t in args[0]]
    if target is operator.getitem and getattr(args[0], "target", None) in SPLITS:
        return [(args[0], mask)]  # the split combines its pieces' masks
    if target in BINARY:
        found = []
        for operand in args[:2]:
            if not isinstance(operand, Node):
                continue
            shape = _shape(operand)
            aligned = axis - (len(out) - len(shape))
            if aligned < 0 or shape[aligned] == 1:
                continue  # broadcast over heads (RoPE's cos / sin)
            if is_constant(operand):
                continue  # sliced in place by the rewrite
            found.append((operand, (aligned, keep)))
        return found
    name = getattr(target, "__name__", target)
    raise Refused(f"the heads pass through {node.name} ({name}), which fusecc cannot follow")


def _split_mask(split: Node, pieces: dict[int, Mask]) -> Mask:
    """A split's input mask from its pieces' masks (pieces not pruned keep everything)."""
    src = _shape(split.args[0])
    dim = _dim(split.args[2] if len(split.args) > 2 else 0, len(src))
    sizes = [_shape(p)[dim] for p in _split_outputs(split)]
    axes = {axis for axis, _ in pieces.values()}
    if axes != {dim}:
        if len(axes) == 1 and len(pieces) == len(sizes):
            (axis,) = axes
            masks = [pieces[i][1] for i in range(len(sizes))]
            if all(np.array_equal(m, masks[0]) for m in masks):
                return axis, masks[0]
        raise Refused(f"{split.name}'s pieces shrink different axes")
    keep = np.concatenate([pieces[i][1] if i in pieces else np.ones(n, dtype=bool) for i, n in enumerate(sizes)])
    return dim, keep


def _split_outputs(split: Node) -> list[Node]:
    val = split.meta.get("val")
    count = len(val) if isinstance(val, (tuple, list)) else 0
    by_index = {u.args[1]: u for u in split.users if u.target is operator.getitem}
    if len(by_index) != count:
        raise Refused(f"not every piece of {split.name} is read")
    return [by_index[i] for i in range(count)]


def _gemm_weight(gemm: Node) -> Node:
    weight = gemm.args[-1]
    if not is_constant(weight):
        raise Refused(f"the weight of {gemm.name} is not a constant")
    if gemm.target is aten.addmm.default and (
        gemm.kwargs or (isinstance(gemm.args[0], Node) and not is_constant(gemm.args[0]))
    ):
        raise Refused(f"{gemm.name} has a non-constant bias or alpha/beta")
    return weight


def _trace_inputs(sdpa: Node, keep: np.ndarray) -> tuple[dict[Node, Mask], list[Node]]:
    """Back from Q, K, V to the projections: a sweep in reverse graph order,
    so every reader of a node has said how it must shrink before the node is
    visited."""
    wanted: dict[Node, list[tuple[Node, Mask]]] = {}  # node -> (reader, mask) claims
    for operand in sdpa.args[:3]:
        wanted.setdefault(operand, []).append((sdpa, (1, keep)))
    masks: dict[Node, Mask] = {}
    sources: list[Node] = []
    node = sdpa.prev
    while wanted.keys() - masks.keys() and node.op != "root":
        claims = wanted.get(node)
        node, cur = node.prev, node
        if claims is None:
            continue
        is_split = cur.target in SPLITS
        readers = {r for r, _ in claims}
        outside = [u for u in _readers(cur) if u not in readers and not (is_split and not _readers(u))]
        if outside:
            raise Refused(f"{cur.name} is also read outside the attention (by {outside[0].name})")
        mask = _split_mask(cur, {r.args[1]: m for r, m in claims}) if is_split else _agree(cur, [m for _, m in claims])
        masks[cur] = mask
        if cur.op != "call_function":
            raise Refused(f"the heads come from {cur.name}, a graph input, not a projection")
        if cur.target in _GEMMS:
            if mask[0] != 1:
                raise Refused(f"the heads are rows, not features, of {cur.name}")
            _gemm_weight(cur)
            sources.append(cur)
            continue
        for operand, m in [(cur.args[0], mask)] if is_split else _backward(cur, mask):
            wanted.setdefault(operand, []).append((cur, m))
    return masks, sources


def _agree(node: Node, masks: list[Mask]) -> Mask:
    axis, keep = masks[0]
    for a, k in masks[1:]:
        if a != axis or not np.array_equal(k, keep):
            raise Refused(f"the readers of {node.name} need different heads of it")
    return axis, keep


def _trace_outputs(sdpa: Node, keep: np.ndarray) -> tuple[dict[Node, Mask], list[Node]]:
    """Forward from the attention output to the output projection."""
    outs = [u for u in sdpa.users if u.target is operator.getitem and u.args[1] == 0]
    if len(outs) != 1:
        raise Refused(f"{sdpa.name}'s output is not read once")
    masks: dict[Node, Mask] = {outs[0]: (1, keep)}
    sinks: list[Node] = []
    todo = [outs[0]]
    while todo:
        node = todo.pop()
        for user in _readers(node):
            if user.target in _GEMMS and user.args[-2] is node and masks[node][0] == 1:
                _gemm_weight(user)
                sinks.append(user)
                continue
            mask = _through_layout(user, masks[node], forward=True) if user.args and user.args[0] is node else None
            if mask is None:
                raise Refused(f"the attention output goes to {user.name}, not an output projection")
            masks[user] = mask
            todo.append(user)
    if not sinks:
        raise Refused(f"{sdpa.name}'s output reaches no output projection")
    return masks, sinks


def trace(sdpa: Node, keep: np.ndarray) -> HeadTrace:
    """The nodes that shrink when an attention op keeps only ``keep``'s heads."""
    keep = np.asarray(keep, dtype=bool)
    heads = _shape(sdpa.args[0])[1]
    if keep.shape != (heads,):
        raise Refused(f"{sdpa.name} has {heads} heads, the mask {keep.shape[0]}")
    mask = sdpa.kwargs.get("attn_mask")
    if isinstance(mask, Node) and len(_shape(mask)) == 4 and _shape(mask)[1] != 1 and not is_constant(mask):
        raise Refused(f"{sdpa.name}'s mask differs per head and is not a constant")
    inputs, sources = _trace_inputs(sdpa, keep)
    outputs, sinks = _trace_outputs(sdpa, keep)
    return HeadTrace(sdpa, inputs, outputs, sources, sinks)
