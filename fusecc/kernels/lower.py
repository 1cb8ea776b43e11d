"""Lowering: a `FusedGroup`'s ATen subgraph -> a `KernelSpec`.

This is the one place that reads ATen ops on the way to code generation.
Each output element is expressed as an `Expr`; every tensor read becomes a
`Load` whose `Access` (strides over the kernel's iteration space) is
computed by replaying the group's broadcasts and reshapes on meta tensors -
PyTorch's own view logic decides whether an access is expressible, so a
transposed or otherwise incompatible layout is refused, never mis-indexed.

Anything not covered raises `NotLowerable` with the reason; the group then
runs as ATen and the reason is reported as a fallback.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Callable

import torch
from torch.fx import Node

from ..graph.fused_group import FusedGroup
from ..ops import GENERATED_POOLS, RESHAPE_OPS, SDPA_CPU, OpCategory, category, is_layout, kv_repeat, sdpa_options
from .expr import Acc, Const, Expr, Load, Stat, op
from .spec import TORCH_DTYPES, Access, KernelSpec, Operand, Output

aten = torch.ops.aten

View = Callable[[torch.Tensor], torch.Tensor]  # meta tensor of a node's shape -> the same data over the space


class NotLowerable(Exception):
    """The group cannot become a kernel; the message says why."""


_DTYPES = {t: name for name, t in TORCH_DTYPES.items()}


def _val(node: Node) -> torch.Tensor:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        raise NotLowerable(f"{node.name} has no tensor metadata")
    for s in (*val.shape, *val.stride()):
        if not isinstance(s, int):
            raise NotLowerable("symbolic shapes (dynamic graph): kernels are generated for static shapes")
    return val


def _dtype(node: Node) -> str:
    val = _val(node)
    if val.dtype not in _DTYPES:
        raise NotLowerable(f"{node.name} has dtype {val.dtype}; kernels handle float32, bfloat16 and bool")
    return _DTYPES[val.dtype]


def _meta_like(val: torch.Tensor) -> torch.Tensor:
    return torch.empty_strided(tuple(val.shape), tuple(val.stride()), dtype=torch.float32, device="meta")


def _canonical(t: torch.Tensor) -> tuple[int, ...]:
    """Strides with size-1 dims set to 0 (their stride never matters)."""
    return tuple(0 if size == 1 else stride for size, stride in zip(t.shape, t.stride()))


def _probe(shape: tuple[int, ...], view: View) -> tuple[int, ...]:
    """How ``view`` maps a node's logical (row-major) index onto the space."""
    return _canonical(view(torch.empty(shape, device="meta")))


def _broadcast_to(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    extra = len(shape) - t.dim()
    if extra < 0:
        raise NotLowerable("operand has more dims than the op's result")
    return t[(None,) * extra].expand(shape) if extra else t.expand(shape)


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= s
    return tuple(reversed(strides))


def _safe(view: View) -> View:
    def wrapped(t: torch.Tensor) -> torch.Tensor:
        try:
            return view(t)
        except (RuntimeError, ValueError) as e:  # a view PyTorch cannot express as strides
            raise NotLowerable(f"access not expressible as strides: {str(e).splitlines()[0]}") from e

    return wrapped


class _Builder:
    """Turns group nodes into expressions over one iteration space."""

    def __init__(self, group: FusedGroup, space: tuple[int, ...]):
        self.group = group
        self.space = space
        self.placeholders = list(group.graph.find_nodes(op="placeholder"))
        self.operands: list[Operand] = []
        self.operand_of: dict[Node, int] = {}
        self.accesses: list[Access] = []
        self.access_index: dict[Access, int] = {}
        self.memo: dict[tuple[Node, tuple[int, ...]], Expr] = {}
        # node -> callback(view) -> Expr for nodes with a kind-specific meaning (Acc, Stat)
        self.special: dict[Node, Callable[[View, tuple[int, ...]], Expr]] = {}

    def operand(self, node: Node) -> int:
        if node not in self.operand_of:
            val = _val(node)
            index = self.placeholders.index(node)
            self.operand_of[node] = len(self.operands)
            self.operands.append(
                Operand(
                    name=node.name,
                    dtype=_dtype(node),
                    shape=tuple(val.shape),
                    strides=tuple(val.stride()),
                    constant=bool(self.group.constant_inputs[index]) if self.group.constant_inputs else False,
                    arg_index=index,
                )
            )
        return self.operand_of[node]

    def access(self, operand: int, strides: tuple[int, ...]) -> int:
        acc = Access(operand, tuple(strides))
        if acc not in self.access_index:
            self.access_index[acc] = len(self.accesses)
            self.accesses.append(acc)
        return self.access_index[acc]

    def load(self, node: Node, strides: tuple[int, ...]) -> Load:
        operand = self.operand(node)
        return Load(operand, self.access(operand, strides))

    def expr(self, node: object, view: View) -> Expr:
        if not isinstance(node, Node):
            if isinstance(node, (int, float, bool)):
                return Const(float(node))
            raise NotLowerable(f"unsupported argument {node!r}")
        shape = tuple(_val(node).shape)
        view = _safe(view)
        try:
            key = (node, _probe(shape, view))
        except NotLowerable:
            # the index map exists only in the node's own layout (e.g. a
            # channels-last result reached through a permute of a batched
            # GEMM): probe with its real strides instead
            key = (node, ("layout", *_canonical(view(_meta_like(_val(node))))))
        if key in self.memo:
            return self.memo[key]
        if node in self.special:
            result = self.special[node](view, key[1])
        elif node.op == "placeholder":
            result = self.load(node, _canonical(view(_meta_like(_val(node)))))
        elif node.op == "call_function" and node.target in RESHAPE_OPS:
            result = self.expr(node.args[0], lambda t, s=shape: view(t.view(s)))
        elif node.op == "call_function" and node.target is aten.permute.default:
            result = self.expr(node.args[0], lambda t, d=tuple(node.args[1]): view(t.permute(d)))
        elif node.op == "call_function" and category(node.target) is OpCategory.POINTWISE:
            args = [
                self.expr(a, lambda t, s=shape: view(_broadcast_to(t, s))) if isinstance(a, Node) else a
                for a in node.args
            ]
            kwargs = {
                k: self.expr(v, lambda t, s=shape: view(_broadcast_to(t, s))) if isinstance(v, Node) else v
                for k, v in node.kwargs.items()
            }
            result = translate_pointwise(node, args, kwargs)
        else:
            raise NotLowerable(f"op {node.target} inside a {self.group.kind} group has no kernel lowering")
        self.memo[key] = result
        return result


def _c(x: object) -> Expr:
    if isinstance(x, Expr):
        return x
    if isinstance(x, (int, float, bool)):
        return Const(float(x))
    raise NotLowerable(f"unsupported scalar {x!r}")


def translate_pointwise(node: Node, args: list, kwargs: dict) -> Expr:
    """One ATen pointwise op on expressions (tensor args) and scalars."""
    t = node.target
    name = t.overloadpacket.__name__ if hasattr(t, "overloadpacket") else str(t)
    a = [_c(x) if not isinstance(x, (list, tuple, str, torch.dtype, type(None))) else x for x in args]

    def scaled(x: Expr, alpha: object) -> Expr:
        return x if alpha in (None, 1) else op("mul", x, _c(alpha))

    if name in ("add", "sub"):
        rhs = scaled(a[1], kwargs.get("alpha", a[2] if len(a) > 2 else 1))
        return op(name, a[0], rhs)
    if name == "rsub":
        return op("sub", scaled(a[1], kwargs.get("alpha", 1)), a[0])
    if name == "mul":
        return op("mul", a[0], a[1])
    if name == "div":
        if kwargs.get("rounding_mode") is not None:
            raise NotLowerable("div with rounding_mode")
        return op("div", a[0], a[1])
    if name in ("neg", "abs", "exp", "log", "sqrt", "rsqrt", "tanh", "erf", "sigmoid", "relu", "silu", "sin", "cos"):
        return op(name, a[0])
    if name == "reciprocal":
        return op("recip", a[0])
    if name == "gelu":
        approx = kwargs.get("approximate", a[1] if len(a) > 1 else "none")
        return op("gelu_tanh" if approx == "tanh" else "gelu", a[0])
    if name == "pow" and t is aten.pow.Tensor_Scalar:
        e = float(args[1])
        x = a[0]
        if e == 1.0:
            return x
        if e == 2.0:
            return op("mul", x, x)
        if e == 3.0:
            return op("mul", op("mul", x, x), x)
        if e == 0.5:
            return op("sqrt", x)
        if e == -0.5:
            return op("rsqrt", x)
        if e == -1.0:
            return op("recip", x)
        return op("pow", x, Const(e))
    if name == "pow":
        return op("pow", a[0], a[1])
    if name in ("maximum", "minimum"):
        return op("max" if name == "maximum" else "min", a[0], a[1])
    if name in ("clamp", "hardtanh", "clamp_min", "clamp_max"):
        lo = hi = None
        if name in ("clamp", "hardtanh"):
            lo_key, hi_key = ("min_val", "max_val") if name == "hardtanh" else ("min", "max")
            lo = kwargs.get(lo_key, args[1] if len(args) > 1 else (-1.0 if name == "hardtanh" else None))
            hi = kwargs.get(hi_key, args[2] if len(args) > 2 else (1.0 if name == "hardtanh" else None))
        elif name == "clamp_min":
            lo = args[1]
        else:
            hi = args[1]
        x = a[0]
        if lo is not None:
            x = op("max", x, _c(lo))
        if hi is not None:
            x = op("min", x, _c(hi))
        return x
    if name == "where":
        return op("select", a[0], a[1], a[2])
    if name in ("lt", "le", "gt", "ge", "eq", "ne"):
        return op(name, a[0], a[1])
    if name == "masked_fill":
        return op("select", a[1], a[2], a[0])
    if name == "leaky_relu":
        slope = _c(args[1] if len(args) > 1 else 0.01)
        return op("select", op("gt", a[0], Const(0.0)), a[0], op("mul", a[0], slope))
    if name in ("hardswish", "hardsigmoid"):
        gate = op("div", op("min", op("max", op("add", a[0], Const(3.0)), Const(0.0)), Const(6.0)), Const(6.0))
        return op("mul", a[0], gate) if name == "hardswish" else gate
    if name == "threshold_backward":
        return op("select", op("le", a[1], _c(args[2])), Const(0.0), a[0])
    if name == "tanh_backward":
        return op("mul", a[0], op("sub", Const(1.0), op("mul", a[1], a[1])))
    if name == "silu_backward":  # d/dx x*s(x) = s * (1 + x * (1 - s))
        sig = op("sigmoid", a[1])
        return op("mul", a[0], op("mul", sig, op("add", Const(1.0), op("mul", a[1], op("sub", Const(1.0), sig)))))
    if name == "gelu_backward":
        g, x = a[0], a[1]
        approx = kwargs.get("approximate", args[2] if len(args) > 2 else "none")
        if approx == "tanh":
            k0, k1 = math.sqrt(2.0 / math.pi), 0.044715
            inner = op("mul", Const(k0), op("add", x, op("mul", Const(k1), op("mul", op("mul", x, x), x))))
            t = op("tanh", inner)
            dinner = op("mul", Const(k0), op("add", Const(1.0), op("mul", Const(3 * k1), op("mul", x, x))))
            left = op("mul", Const(0.5), op("add", Const(1.0), t))
            right = op("mul", op("mul", op("mul", Const(0.5), x), op("sub", Const(1.0), op("mul", t, t))), dinner)
            return op("mul", g, op("add", left, right))
        cdf = op("mul", Const(0.5), op("add", Const(1.0), op("erf", op("mul", x, Const(1 / math.sqrt(2.0))))))
        pdf = op("mul", Const(1 / math.sqrt(2 * math.pi)), op("exp", op("mul", Const(-0.5), op("mul", x, x))))
        return op("mul", g, op("add", cdf, op("mul", x, pdf)))
    if name == "sigmoid_backward":
        return op("mul", a[0], op("mul", a[1], op("sub", Const(1.0), a[1])))
    if name == "_to_copy":
        dtype = kwargs.get("dtype")
        if kwargs.get("device") not in (None, torch.device("cpu")) or dtype not in (
            None,
            torch.float32,
            torch.bfloat16,
        ):
            raise NotLowerable(f"_to_copy to {dtype} / {kwargs.get('device')}")
        return op("round_bf16", a[0]) if dtype is torch.bfloat16 else a[0]
    raise NotLowerable(f"pointwise op {t} has no kernel lowering")


# -- kinds -----------------------------------------------------------------------------------------


def _group_outputs(group: FusedGroup) -> list[Node]:
    out = group.graph.output_node().args[0]
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _coalesce(space: tuple[int, ...], strides: list[tuple[int, ...]]) -> tuple[tuple[int, ...], list[tuple[int, ...]]]:
    """Merge adjacent dims every access walks contiguously, drop size-1 dims."""
    dims = [d for d in range(len(space)) if space[d] != 1]
    if not dims:
        return (1,), [(0,) for _ in strides]
    new_space = [space[dims[0]]]
    new_strides = [[s[dims[0]]] for s in strides]
    for d in dims[1:]:
        if all(s[-1] == st[d] * space[d] for s, st in zip(new_strides, strides)):
            new_space[-1] *= space[d]
            for s, st in zip(new_strides, strides):
                s[-1] = st[d]
        else:
            new_space.append(space[d])
            for s, st in zip(new_strides, strides):
                s.append(st[d])
    return tuple(new_space), [tuple(s) for s in new_strides]


def _finish(b: _Builder, kind: str, space: tuple[int, ...], outputs: list[Output], **extra) -> KernelSpec:
    return KernelSpec(
        kind=kind,
        name=b.group.group_name,
        space=space,
        operands=b.operands,
        accesses=b.accesses,
        outputs=outputs,
        **extra,
    )


def _memory_order(val: torch.Tensor) -> list[int]:
    """Dims from outermost to innermost in memory (the permutation that makes
    a dense, possibly permuted, tensor contiguous); None if not dense."""
    order = sorted(range(val.dim()), key=lambda d: (-val.stride()[d], -d))
    permuted = val.permute(order)
    if not permuted.is_contiguous():
        raise NotLowerable("output is not a dense (possibly permuted) tensor")
    return order


def lower_elementwise(group: FusedGroup) -> KernelSpec:
    outs = _group_outputs(group)
    first = _val(outs[0])
    shape = tuple(first.shape)
    order = _memory_order(first)
    for o in outs:
        val = _val(o)
        if tuple(val.shape) != shape or tuple(val.stride()) != tuple(first.stride()):
            raise NotLowerable("outputs of an elementwise group differ in shape or layout")
    # iterate in the outputs' memory order, so they are written contiguously
    space = tuple(shape[d] for d in order)
    b = _Builder(group, space)
    outputs = []
    for o in outs:
        expr = b.expr(o, lambda t: t.permute(order))
        outputs.append(Output(o.name, _dtype(o), shape, expr, strides=tuple(first.stride())))
    all_strides = [a.strides for a in b.accesses] + [_contiguous_strides(space)]
    space, coalesced = _coalesce(space, all_strides)
    b.accesses[:] = [type(a)(a.operand, s) for a, s in zip(b.accesses, coalesced[:-1])]
    return _finish(b, "elementwise", space, outputs)


_ROW_REDUCTIONS = {
    aten._softmax.default: "softmax",
    aten._safe_softmax.default: "softmax",
    aten._log_softmax.default: "log_softmax",
    aten.native_layer_norm.default: "layer_norm",
    aten.mean.dim: "mean",
    aten.sum.dim_IntList: "sum",
    aten.amax.default: "max",
    aten.amin.default: "min",
    aten.mean.default: "mean",
    aten.sum.default: "sum",
    aten.var.correction: "var",
}


def _reduced_dims(node: Node, rank: int) -> list[int]:
    t = node.target
    if t in (aten._softmax.default, aten._safe_softmax.default, aten._log_softmax.default):
        dims = [node.args[1]]
    elif t is aten.native_layer_norm.default:
        dims = list(range(rank - len(node.args[1]), rank))
    elif t in (aten.mean.default, aten.sum.default):
        dims = list(range(rank))
    else:
        dims = node.args[1] if len(node.args) > 1 and node.args[1] is not None else list(range(rank))
        dims = [dims] if isinstance(dims, int) else list(dims)
        if not dims:
            dims = list(range(rank))
    return sorted({d % rank for d in dims}) if rank else []


def lower_reduction(group: FusedGroup) -> KernelSpec:
    """Reductions over any dims: the space is (kept dims..., reduced dims...),
    the kept dims enumerate rows, the reduced ones the elements of a row."""
    reductions = [
        n for n in group.graph.nodes if n.op == "call_function" and category(n.target) is OpCategory.REDUCTION
    ]
    if len(reductions) != 1 or reductions[0].target not in _ROW_REDUCTIONS:
        what = ", ".join(str(n.target) for n in reductions)
        raise NotLowerable(f"reduction group with {what or 'no reduction'}: only one reduction is supported")
    red = reductions[0]
    kind = _ROW_REDUCTIONS[red.target]
    x = red.args[0]
    xval = _val(x)
    xshape = tuple(xval.shape)
    rank = xval.dim()
    reduced = _reduced_dims(red, rank)
    kept = [d for d in range(rank) if d not in reduced]
    perm = kept + reduced
    row_dims = tuple(xshape[d] for d in kept)
    col_dims = tuple(xshape[d] for d in reduced)
    rows, cols = math.prod(row_dims), math.prod(col_dims)
    space = row_dims + col_dims
    b = _Builder(group, space)
    if kind in ("mean", "sum", "max", "min", "var") and red.kwargs.get("dtype") not in (None, xval.dtype):
        raise NotLowerable("reduction with a dtype change")

    def elem_view(t: torch.Tensor) -> torch.Tensor:  # a tensor shaped like x -> the space
        return t.permute(perm)

    def row_view(t: torch.Tensor) -> torch.Tensor:  # one value per row -> the space
        return t.view(row_dims + (1,) * len(col_dims)).expand(space)

    xe = b.expr(x, elem_view)
    inv_c = Const(1.0 / max(cols, 1))
    stages: list[tuple[str, Expr]] = []
    per_row: dict[int, Expr] = {}  # getitem index (or 0) -> per-row value
    per_elem: Expr | None = None
    if kind in ("softmax", "log_softmax"):
        stages = [("max", xe), ("sum", op("exp", op("sub", xe, Stat(0))))]
        shifted = op("sub", xe, Stat(0))
        per_elem = (
            op("mul", op("exp", shifted), op("recip", Stat(1)))
            if kind == "softmax"
            else op("sub", shifted, op("log", Stat(1)))
        )
    elif kind in ("mean", "sum", "max", "min"):
        stages = [({"mean": "sum"}.get(kind, kind), xe)]
        per_row[0] = op("mul", Stat(0), inv_c) if kind == "mean" else Stat(0)
    elif kind == "var":
        correction = red.kwargs.get("correction", 1)
        correction = 1 if correction is None else correction
        mean = op("mul", Stat(0), inv_c)
        stages = [("sum", xe), ("sum", op("mul", op("sub", xe, mean), op("sub", xe, mean)))]
        per_row[0] = op("mul", Stat(1), Const(1.0 / max(cols - correction, 1)))
    else:  # layer_norm
        _, _, weight, bias, eps = red.args
        mean = op("mul", Stat(0), inv_c)
        centered = op("sub", xe, mean)
        stages = [("sum", xe), ("sum", op("mul", centered, centered))]
        rstd = op("rsqrt", op("add", op("mul", Stat(1), inv_c), Const(float(eps))))
        y = op("mul", centered, rstd)
        # weight/bias [normalized_shape] broadcast over rows
        if weight is not None:
            y = op("mul", y, b.expr(weight, lambda t: elem_view(_broadcast_to(t, xshape))))
        if bias is not None:
            y = op("add", y, b.expr(bias, lambda t: elem_view(_broadcast_to(t, xshape))))
        per_elem = y
        per_row[1], per_row[2] = mean, rstd

    elem_probe = _canonical(elem_view(torch.empty(xshape, device="meta")))
    row_probe = _canonical(row_view(torch.empty(row_dims, device="meta")))

    def value_of(index: int | None) -> Callable[[View, tuple[int, ...]], Expr]:
        def make(view: View, probe: tuple[int, ...]) -> Expr:
            if index in per_row and probe == row_probe:
                return per_row[index]
            if per_elem is not None and index in (None, 0) and probe == elem_probe:
                return per_elem
            raise NotLowerable(f"{red.target} result used with a layout the reduction kernel does not produce")

        return make

    if isinstance(red.meta.get("val"), torch.Tensor):
        b.special[red] = value_of(None if per_elem is not None else 0)
    for user in red.users:
        if user.target is operator.getitem:
            b.special[user] = value_of(user.args[1])

    outputs = []
    for o in _group_outputs(group):
        val = _val(o)
        shape = tuple(val.shape)
        if shape == xshape and cols > 1:  # one value per element, stored with its own strides
            expr = b.expr(o, elem_view)
            space_strides = tuple(val.stride()[d] for d in perm)
            outputs.append(Output(o.name, _dtype(o), shape, expr, space_strides=space_strides))
        elif val.numel() == rows:
            if not val.is_contiguous():
                raise NotLowerable(f"per-row output {o.name} is not contiguous")
            expr = b.expr(o, lambda t: row_view(t.view(row_dims)))
            row_strides = _contiguous_strides(row_dims) + (0,) * len(col_dims)
            outputs.append(Output(o.name, _dtype(o), shape, expr, per_row=True, space_strides=row_strides))
        else:
            raise NotLowerable(f"output {o.name} of shape {list(shape)} is neither per element nor per row")
    for o in outputs:
        if o.per_row:
            for acc_i in _accesses_in(o.expr):
                if any(b.accesses[acc_i].strides[len(row_dims) :]):
                    raise NotLowerable(f"per-row output {o.name} reads per-element data")
    # merge adjacent row dims, and adjacent reduced dims, that every access walks alike
    strides = [a.strides for a in b.accesses] + [o.space_strides for o in outputs]
    nrow = len(row_dims)
    row_space, row_strides = _coalesce(row_dims, [st[:nrow] for st in strides]) if nrow else ((), [()] * len(strides))
    col_space, col_strides = (
        _coalesce(col_dims, [st[nrow:] for st in strides]) if col_dims else ((1,), [(0,)] * len(strides))
    )
    merged = [r + c for r, c in zip(row_strides, col_strides)]
    b.accesses[:] = [type(a)(a.operand, st) for a, st in zip(b.accesses, merged)]
    outputs = [dataclasses.replace(o, space_strides=st) for o, st in zip(outputs, merged[len(b.accesses) :])]
    space = tuple(row_space) + tuple(col_space)
    attrs = {"reduction": kind, "row_rank": len(row_space)}
    return _finish(b, "reduction", space, outputs, stages=stages, attrs=attrs)


def _accesses_in(expr: Expr) -> list[int]:
    from .expr import walk

    return [n.access for n in walk([expr]) if isinstance(n, Load)]


def lower_gemm(group: FusedGroup) -> KernelSpec:
    anchors = [n for n in group.graph.nodes if n.op == "call_function" and category(n.target) is OpCategory.GEMM]
    if len(anchors) != 1:
        raise NotLowerable(f"gemm group with {len(anchors)} matrix products")
    g = anchors[0]
    if g.target is aten.addmm.default:
        bias, a, bmat = g.args[:3]
        if g.kwargs.get("beta", 1) != 1 or g.kwargs.get("alpha", 1) != 1:
            raise NotLowerable("addmm with alpha/beta")
    elif g.target in (aten.mm.default, aten.bmm.default):
        (a, bmat), bias = g.args[:2], None
    else:
        raise NotLowerable(f"{g.target} is not lowered yet")
    for operand in (a, bmat):
        if not (isinstance(operand, Node) and operand.op == "placeholder"):
            raise NotLowerable("GEMM operands must be group inputs")
    aval, bval = _val(a), _val(bmat)
    batched = g.target is aten.bmm.default
    bt = aval.shape[0] if batched else 1
    m, k = aval.shape[-2:]
    n = bval.shape[-1]
    space = (bt, m, n)
    b = _Builder(group, space)
    a_idx, b_idx = b.operand(a), b.operand(bmat)
    a_strides = tuple(aval.stride()) if batched else (0, *aval.stride())
    b_strides = tuple(bval.stride()) if batched else (0, *bval.stride())
    if b.operands[a_idx].constant:
        raise NotLowerable("constant left GEMM operand")

    anchor_probe = _canonical(torch.empty(space, device="meta"))

    def anchor_value(view: View, probe: tuple[int, ...]) -> Expr:
        if probe != anchor_probe:
            raise NotLowerable("GEMM result is read in a layout other than its own inside the group")
        acc: Expr = Acc()
        if bias is not None:
            acc = op("add", acc, b.expr(bias, lambda t: _broadcast_to(t, (m, n)).view(space)))
        return acc

    b.special[g] = anchor_value
    outputs = _anchor_outputs(group, b, space, g)
    attrs = {"K": k, "a": a_idx, "b": b_idx, "a_strides": a_strides, "b_strides": b_strides}
    return _finish(b, "gemm", space, outputs, attrs=attrs)


def _anchor_outputs(
    group: FusedGroup, b: _Builder, space: tuple[int, ...], anchor: Node, any_layout: bool = False
) -> list[Output]:
    """Outputs of a GEMM/conv group, incl. the column slices of a horizontal split."""
    outputs = []
    split = next((n for n in group.graph.nodes if n.target is aten.split_with_sizes.default), None)
    bounds: dict[Node, tuple[int, int]] = {}
    if split is not None:
        if split.args[0] is not anchor or split.args[2] not in (1, -1) or len(space) != 3:
            raise NotLowerable("split is not a column split of the GEMM result")
        offsets = [0]
        for size in split.args[1]:
            offsets.append(offsets[-1] + size)
        for user in split.users:
            i = user.args[1]
            bounds[user] = (offsets[i], offsets[i + 1])
    for o in _group_outputs(group):
        if any_layout and o.target is aten.mean.dim:
            outputs.append(_pooled_output(b, o, space))
            continue
        val = _val(o)
        strides = None
        path = _layout_path(o, anchor, {})
        if o not in bounds and path and any(n.target is aten.permute.default for n in path):
            if any_layout:
                raise NotLowerable(f"convolution epilogue output {o.name} goes through a permute")
            outputs.append(_permuted_output(b, o, path, space))
            continue
        if not val.is_contiguous():
            if not any_layout or tuple(val.shape) != space:
                raise NotLowerable(f"output {o.name} is not contiguous")
            _memory_order(val)  # dense, only permuted (e.g. channels-last)
            strides = tuple(val.stride())
        if o in bounds:  # a column slice of the anchor's value (incl. its bias)
            expr = b.expr(anchor, lambda t: t.view(space))
            outputs.append(Output(o.name, _dtype(o), tuple(val.shape), expr, col_range=bounds[o]))
            continue
        if val.numel() != math.prod(space):
            raise NotLowerable(f"output {o.name} does not cover the anchor's result one to one")
        # the layout (strides) only changes where a value is stored, not which value
        expr = b.expr(o, lambda t, s=tuple(val.shape): t.view(s).view(space))
        outputs.append(Output(o.name, _dtype(o), tuple(val.shape), expr, strides=strides))
    return outputs


def _pooled_output(b: _Builder, mean: Node, space: tuple[int, ...]) -> Output:
    """A convolution epilogue value averaged over the output pixels (the
    pool_fusion pass): per (image, channel) one value, at image * strides[0]
    + channel * strides[1] of the mean's own layout."""
    src, val = mean.args[0], _val(mean)
    if tuple(_val(src).shape) != space:
        raise NotLowerable(f"pooled output {mean.name} does not average the convolution's result")
    if _val(src).dtype is not torch.float32 or val.dtype is not torch.float32:
        raise NotLowerable(f"pooled output {mean.name} is not float32")
    n, c = space[:2]
    strides = tuple(val.stride())
    if (c > 1 and strides[1] != 1) or (n > 1 and strides[0] != c):
        raise NotLowerable(f"pooled output {mean.name} is not dense over (image, channel)")
    expr = b.expr(src, lambda t: t)
    return Output(mean.name, _dtype(mean), tuple(val.shape), expr, strides=strides, pool="mean")


def _layout_path(node: object, anchor: Node, memo: dict) -> list[Node] | None:
    """The views and permutes between ``anchor`` and ``node`` (an epilogue
    value computed from it), in graph order; None if ``node`` does not
    depend on the anchor."""
    if node is anchor:
        return []
    if not isinstance(node, Node) or node.op != "call_function":
        return None
    if node not in memo:
        memo[node] = None
        if is_layout(node):
            inner = _layout_path(node.args[0], anchor, memo)
            memo[node] = None if inner is None else [*inner, node]
        else:
            memo[node] = next(
                (p for a in node.all_input_nodes if (p := _layout_path(a, anchor, memo)) is not None), None
            )
    return memo[node]


def _permuted_output(b: _Builder, o: Node, path: list[Node], space: tuple[int, ...]) -> Output:
    """An epilogue output reached from the anchor through a permute (e.g.
    ConvNeXt's ``permute(0, 3, 1, 2)`` before its residual add): its values
    are indexed over the space by undoing the path's views and permutes,
    and stored at the offsets its own (dense) layout gives each space point."""

    def to_space(t: torch.Tensor) -> torch.Tensor:
        for n in reversed(path):
            if n.target is aten.permute.default:
                dims = list(n.args[1])
                t = t.permute([dims.index(d) for d in range(len(dims))])
            else:
                t = t.view(tuple(_val(n.args[0]).shape))
        return t.view(space)

    val = _val(o)
    _memory_order(val)  # dense, only permuted
    expr = b.expr(o, to_space)
    offsets = _canonical(_safe(to_space)(_meta_like(val)))
    contiguous = _canonical(torch.empty(space, device="meta"))
    return Output(
        o.name,
        _dtype(o),
        tuple(val.shape),
        expr,
        strides=None if val.is_contiguous() else tuple(val.stride()),
        space_strides=None if offsets == contiguous else offsets,
    )


def lower_conv(group: FusedGroup) -> KernelSpec:
    anchors = [n for n in group.graph.nodes if n.op == "call_function" and n.target is aten.convolution.default]
    if len(anchors) != 1:
        raise NotLowerable(f"conv group with {len(anchors)} convolutions")
    c = anchors[0]
    x, w, bias, stride, padding, dilation, transposed, _output_padding, groups = c.args
    if transposed:
        raise NotLowerable("transposed convolution")
    pad_h, pad_w = padding
    pads = [pad_h, pad_w, pad_h, pad_w]  # top, left, bottom, right
    if isinstance(x, Node) and x.target is aten.constant_pad_nd.default:  # zero pad folded in
        extra = list(x.args[1]) + [0] * (4 - len(x.args[1]))  # (left, right, top, bottom)
        pads = [pads[0] + extra[2], pads[1] + extra[0], pads[2] + extra[3], pads[3] + extra[1]]
        if min(pads) < 0:
            raise NotLowerable("negative padding (cropping) before a convolution")
        x = x.args[0]
    if isinstance(x, Node) and x.target is aten.clone.default:  # a layout change: read the source as it is
        x = x.args[0]
    xval, wval, out = _val(x), _val(w), _val(c)
    if xval.dim() != 4:
        raise NotLowerable(f"{xval.dim() - 2}-d convolution (only 2-d is lowered)")
    if not (isinstance(x, Node) and x.op == "placeholder"):
        raise NotLowerable("convolution input must be a group input")
    space = tuple(out.shape)
    b = _Builder(group, space)
    x_idx, w_idx = b.operand(x), b.operand(w)
    anchor_probe = _canonical(torch.empty(space, device="meta"))

    def anchor_value(view: View, probe: tuple[int, ...]) -> Expr:
        if probe != anchor_probe:
            raise NotLowerable("convolution result is read in another layout inside the group")
        acc: Expr = Acc()
        if bias is not None:
            acc = op("add", acc, b.load(bias, (0, 1, 0, 0)))
        return acc

    b.special[c] = anchor_value
    outputs = _anchor_outputs(group, b, space, c, any_layout=True)
    attrs = {
        "input": x_idx,
        "weight": w_idx,
        "in_channels": xval.shape[1],
        "in_strides": tuple(xval.stride()),
        "in_hw": tuple(xval.shape[2:]),
        "kernel": tuple(wval.shape[2:]),
        "stride": tuple(stride),
        "padding": tuple(pads),  # top, left, bottom, right
        "dilation": tuple(dilation),
        "groups": groups,
    }
    return _finish(b, "conv2d", space, outputs, attrs=attrs)


_BLOCK_LAYER_KINDS = {
    "inverted_residual": ("conv",),
    "stem": ("conv",),
    "bottleneck": ("conv",),
    "basic": ("conv",),
    "convnext": ("conv", "reduction", "gemm", "gemm"),
}


def _layer_input(spec: KernelSpec) -> int | None:
    """The operand through which a block layer reads the previous layer."""
    return {"conv2d": spec.attrs.get("input"), "gemm": spec.attrs.get("a")}.get(spec.kind)


def _through_layout(node: object) -> object:
    """``node`` with the views and permutes in front of it looked through."""
    while is_layout(node):
        node = node.args[0]
    return node


def lower_block(group: FusedGroup) -> KernelSpec:
    """A block: each layer (a nested group) lowers on its own - ``conv2d``
    specs for an inverted residual, a bottleneck and a basic block;
    ``conv2d``, ``reduction`` (the layer norm) and two ``gemm`` specs for a
    ConvNeXt block. The block spec lists
    them with ``operand_maps`` saying, per layer operand, which block operand
    it is (-1: the previous layer's output, which never leaves the kernel;
    views and permutes between layers only rename it - the renderer checks
    that every layer sees it as rows of pixels)."""
    from ..graph.fused_group import nested_groups

    calls = nested_groups(group)
    if not calls:
        raise NotLowerable("block without layers")
    pattern = group.attrs.get("pattern", "")
    kinds = _BLOCK_LAYER_KINDS.get(pattern)
    if kinds is None:
        raise NotLowerable(f"block pattern {pattern!r} has no lowering")
    if len(kinds) > 1 and tuple(g.kind for _, g in calls) != kinds:
        raise NotLowerable(f"a {pattern} block has layers {[g.kind for _, g in calls]}, expected {list(kinds)}")
    b = _Builder(group, ())
    layers, maps = [], []
    previous: Node | None = None
    for call, layer_group in calls:
        if layer_group.kind not in kinds:
            raise NotLowerable(f"block layer {layer_group.group_name} is a {layer_group.kind} group")
        spec = lower_group(layer_group)
        if len(spec.outputs) != 1:
            raise NotLowerable(f"block layer {layer_group.group_name} has {len(spec.outputs)} outputs")
        mapping = []
        for o in spec.operands:
            arg = call.args[o.arg_index]
            if previous is not None and _through_layout(arg) is previous:
                mapping.append(-1)
            elif isinstance(arg, Node) and arg.op == "placeholder":
                mapping.append(b.operand(arg))
            else:
                raise NotLowerable(f"block layer {layer_group.group_name} reads {arg} from inside the block")
        named = _layer_input(spec)
        if previous is not None and (mapping.count(-1) != 1 or (named is not None and mapping[named] != -1)):
            raise NotLowerable(f"block layer {layer_group.group_name} does not read the previous layer once")
        layers.append(spec)
        maps.append(tuple(mapping))
        previous = call
    out_node = _group_outputs(group)
    if out_node != [previous]:
        raise NotLowerable("a block's only output must be its last layer's")
    last = layers[-1].outputs[0]
    output = Output(last.name, last.dtype, last.shape, Acc(), strides=last.strides)
    attrs = {"layers": tuple(layers), "operand_maps": tuple(maps), "pattern": pattern}
    space = layers[0].space if pattern == "convnext" else layers[-1].space
    return _finish(b, "block", space, [output], attrs=attrs)


def lower_pool(group: FusedGroup) -> KernelSpec:
    """2-d max / average pooling: ``space = (N, C, OH, OW)``, one input, one
    output (a max pool's indices are not computed: partition only groups
    pools whose indices nobody reads)."""
    anchors = [n for n in group.graph.nodes if n.op == "call_function" and n.target in GENERATED_POOLS]
    if len(anchors) != 1:
        raise NotLowerable(f"pool group with {len(anchors)} pooling ops")
    p = anchors[0]
    is_max = p.target is aten.max_pool2d_with_indices.default
    defaults = [None, None, [], 0, 1, False] if is_max else [None, None, [], 0, False, True, None]
    args = list(p.args) + defaults[len(p.args) :]
    x, kernel, stride, padding = args[:4]
    kernel = tuple(kernel) * (2 // len(kernel))
    stride = tuple(stride or kernel) * (2 // len(stride or kernel))
    padding = tuple(padding) * (2 // len(padding)) if isinstance(padding, (list, tuple)) else (padding, padding)
    dilation = (
        (tuple(args[4]) * (2 // len(args[4])) if isinstance(args[4], (list, tuple)) else (args[4],) * 2)
        if is_max
        else (1, 1)
    )
    (out,) = _group_outputs(group)
    if is_max and not (out.target is operator.getitem and out.args[0] is p and out.args[1] == 0):
        raise NotLowerable("a max pool group must return the pooled values (not the indices)")
    if not is_max and out is not p:
        raise NotLowerable("an average pool group must return the pooled values")
    xval, val = _val(x), _val(out)
    if xval.dim() != 4 or not (isinstance(x, Node) and x.op == "placeholder"):
        raise NotLowerable("pooling input must be a 4-d group input")
    if xval.dtype is not torch.float32:
        raise NotLowerable(f"{xval.dtype} pooling is not generated")
    space = tuple(val.shape)
    b = _Builder(group, space)
    x_idx = b.operand(x)
    attrs = {
        "op": "max" if is_max else "avg",
        "input": x_idx,
        "in_hw": tuple(xval.shape[2:]),
        "in_strides": tuple(xval.stride()),
        "kernel": kernel,
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
        "count_include_pad": bool(args[5]) if not is_max else False,
        "divisor_override": args[6] if not is_max else None,
    }
    output = Output(out.name, _dtype(out), space, Acc(), strides=tuple(val.stride()))
    return _finish(b, "pool2d", space, [output], attrs=attrs)


def lower_attention(group: FusedGroup) -> KernelSpec:
    """Scaled dot-product attention (ATen's CPU flash-attention op):
    ``space = (B, H, Lq, D)``; operands q [B, H, Lq, D], k and v [B, H / rep,
    Lk, D] (``kv_repeat`` = rep: GQA's shared heads, read past the group's
    repeat) and an optional additive float mask broadcast to [B, H, Lq, Lk];
    attrs: the scale, the causal flag and every operand's strides. The
    output is the attention result (the log-sum-exp is not computed:
    partition groups the op only when nobody reads it)."""
    anchors = [n for n in group.graph.nodes if n.op == "call_function" and n.target is SDPA_CPU]
    if len(anchors) != 1:
        raise NotLowerable(f"attention group with {len(anchors)} attention ops")
    a = anchors[0]
    q, k, v = a.args[:3]
    (k, k_rep), (v, v_rep) = _kv_source(k), _kv_source(v)
    if k_rep != v_rep:
        raise NotLowerable(f"keys repeated {k_rep} times, values {v_rep}")
    options = sdpa_options(a)
    mask = options["mask"]
    (out,) = _group_outputs(group)
    if not (out.target is operator.getitem and out.args[0] is a and out.args[1] == 0):
        raise NotLowerable("an attention group must return the attention output (not the log-sum-exp)")
    if options["dropout"]:
        raise NotLowerable("attention with dropout")
    qv, kv, vv, ov = _val(q), _val(k), _val(v), _val(out)
    if any(t.dtype is not torch.float32 for t in (qv, kv, vv)) or qv.dim() != 4:
        raise NotLowerable("attention kernels are 4-d float32")
    if (
        tuple(kv.shape) != tuple(vv.shape)
        or kv.shape[0] != qv.shape[0]
        or kv.shape[1] * k_rep != qv.shape[1]
        or kv.shape[3] != qv.shape[3]
    ):
        raise NotLowerable("q, k and v must agree on batch, heads (k and v: heads / GQA repeat) and head size")
    space = tuple(qv.shape)
    b = _Builder(group, space)
    idx = {"q": b.operand(q), "k": b.operand(k), "v": b.operand(v)}
    attrs = {"q": idx["q"], "k": idx["k"], "v": idx["v"], "lk": kv.shape[2], "causal": options["causal"],
             "scale": float(options["scale"] or 1.0 / math.sqrt(qv.shape[3])),
             "q_strides": tuple(qv.stride()), "k_strides": tuple(kv.stride()), "v_strides": tuple(vv.stride()),
             "kv_repeat": k_rep}  # fmt: skip
    if mask is not None:
        mval = _val(mask)
        if mval.dtype is not torch.float32:
            raise NotLowerable(f"a {mval.dtype} attention mask (only additive float32 masks are generated)")
        full = mval.expand(space[0], space[1], space[2], kv.shape[2])  # broadcast dims get stride 0
        attrs.update(mask=b.operand(mask), mask_strides=tuple(full.stride()))
    sparsity = group.attrs.get("sparsity")
    if sparsity and any(h["kind"] != "dense" for h in sparsity["heads"]):  # an all-dense layer: the dense kernel
        attrs["sparse"] = _sparse_table(sparsity, space, kv.shape[2], options["causal"])
    output = Output(out.name, _dtype(out), space, Acc(), strides=tuple(ov.stride()))
    return _finish(b, "attention", space, [output], attrs=attrs)


def _kv_source(node: Node) -> tuple[Node, int]:
    """K or V as the kernel reads it: under GQA the shared heads in front of
    the group's ``repeat_kv`` (query head h reads key head h // rep)."""
    repeat = kv_repeat(node)
    return (repeat[0], repeat[2]) if repeat else (node, 1)


def _sparse_table(sparsity: dict, space: tuple, lk: int, causal: bool) -> dict:
    """A plan's per-head strategies as the kernel's table: for each (head,
    query block) in order, the kept key blocks (CSR offsets + block list)."""
    from ..sparsity.strategies import block_mask

    _, heads, lq, _ = space
    block, strategies = sparsity["block"], sparsity["heads"]
    if len(strategies) != heads:
        raise NotLowerable(f"the attention plan gives {len(strategies)} heads' strategies, the op has {heads} heads")
    offsets, blocks = [0], []
    for strategy in strategies:
        for row in block_mask(strategy, lq, lk, block, causal):
            blocks.extend(int(k) for k in row.nonzero()[0])
            offsets.append(len(blocks))
    return {"block": block, "offsets": tuple(offsets), "blocks": tuple(blocks)}


_LOWER_BY_KIND = {
    "pool": lower_pool,
    "block": lower_block,
    "pointwise": lower_elementwise,
    "reduction": lower_reduction,
    "gemm": lower_gemm,
    "conv": lower_conv,
    "attention": lower_attention,
}


def lower_group(group: FusedGroup) -> KernelSpec:
    lower = _LOWER_BY_KIND.get(group.kind)
    if lower is None:
        raise NotLowerable(f"no kernel lowering for {group.kind} groups")
    return lower(group)
