"""TVM lowering: a `KernelSpec` as a TVM tensor-expression program.

Each operand is a flat placeholder over its storage (so any strides work,
read with the spec's access strides); outputs are compact tensors over the
kernel's space (the runtime places them in their final layout). Kinds:
elementwise -> one ``te.compute``; reduction -> one ``te.compute`` with
reduce axes per stage, then the outputs; gemm -> a ``te.sum`` over K plus
the epilogue; conv2d -> a ``te.sum`` over (channel, ky, kx) with padding as
a bounds check. The result is a PrimFunc TVM builds for any of its targets
(llvm for x86/aarch64, cuda); untuned it is a correctness path, and the
input MetaSchedule tunes.
"""

from __future__ import annotations

import math

from ..kernels.expr import Acc, Const, Expr, Load, Op, Stat
from ..kernels.spec import KernelSpec, conv_geometry

_TVM_DTYPE = {"f32": "float32", "bf16": "bfloat16", "bool": "bool"}


def _flat_size(shape, strides) -> int:
    return 1 + sum((s - 1) * st for s, st in zip(shape, strides)) if shape else 1


def placeholders(spec: KernelSpec, te) -> list:
    """One flat placeholder per operand (constants included), by operand index."""
    out = []
    for i, o in enumerate(spec.operands):
        out.append(te.placeholder((_flat_size(o.shape, o.strides),), name=f"in{i}", dtype=_TVM_DTYPE[o.dtype]))
    return out


class _Translator:
    def __init__(self, spec: KernelSpec, inputs: list, tvm):
        self.spec, self.inputs = spec, inputs
        self.te, self.tir = tvm.te, tvm.tirx

    def load(self, node: Load, point: list) -> object:
        acc = self.spec.accesses[node.access]
        index = sum((p * s for p, s in zip(point, acc.strides) if s), self.tir.const(0, "int64"))
        value = self.inputs[node.operand][index]
        return value if value.dtype == "float32" else value.astype("float32")

    def expr(self, e: Expr, point: list, acc=None, stat=None, memo=None) -> object:
        memo = {} if memo is None else memo
        if e in memo:
            return memo[e]
        tir = self.tir
        f32 = "float32"
        if isinstance(e, Const):
            v = tir.const(e.value, f32)
        elif isinstance(e, Load):
            v = self.load(e, point)
        elif isinstance(e, Acc):
            v = acc
        elif isinstance(e, Stat):
            v = stat(e.index)
        elif isinstance(e, Op):
            if e.name == "select":
                c = self._cond(e.args[0], point, acc, stat, memo)
                a, b = (self.expr(x, point, acc, stat, memo) for x in e.args[1:])
                v = tir.Select(c, a, b)
            else:
                args = [self.expr(x, point, acc, stat, memo) for x in e.args]
                v = self._op(e.name, args)
        else:
            raise TypeError(f"unknown expression node {e!r}")
        memo[e] = v
        return v

    _CMP = {"lt": "__lt__", "le": "__le__", "gt": "__gt__", "ge": "__ge__", "eq": "__eq__", "ne": "__ne__"}

    def _cond(self, e: Expr, point, acc, stat, memo):
        if isinstance(e, Op) and e.name in self._CMP:
            a, b = (self.expr(x, point, acc, stat, memo) for x in e.args)
            return self._compare(e.name, a, b)
        return self.expr(e, point, acc, stat, memo) != self.tir.const(0.0, "float32")

    def _compare(self, name: str, a, b):
        tir = self.tir
        return {"lt": tir.LT, "le": tir.LE, "gt": tir.GT, "ge": tir.GE, "eq": tir.EQ, "ne": tir.NE}[name](a, b)

    def _op(self, name: str, a: list):
        te, tir = self.te, self.tir
        one = tir.const(1.0, "float32")
        half = tir.const(0.5, "float32")
        zero = tir.const(0.0, "float32")
        table = {
            "add": lambda: a[0] + a[1],
            "sub": lambda: a[0] - a[1],
            "mul": lambda: a[0] * a[1],
            "div": lambda: a[0] / a[1],
            "max": lambda: tir.max(a[0], a[1]),
            "min": lambda: tir.min(a[0], a[1]),
            "neg": lambda: zero - a[0],
            "abs": lambda: te.abs(a[0]),
            "exp": lambda: te.exp(a[0]),
            "log": lambda: te.log(a[0]),
            "sqrt": lambda: te.sqrt(a[0]),
            "rsqrt": lambda: te.rsqrt(a[0]),
            "tanh": lambda: te.tanh(a[0]),
            "erf": lambda: te.erf(a[0]),
            "sigmoid": lambda: te.sigmoid(a[0]),
            "relu": lambda: tir.max(a[0], zero),
            "silu": lambda: a[0] * te.sigmoid(a[0]),
            "gelu": lambda: half * a[0] * (one + te.erf(a[0] * tir.const(0.70710678118654752, "float32"))),
            "gelu_tanh": lambda: (
                half
                * a[0]
                * (
                    one
                    + te.tanh(
                        tir.const(0.7978845608028654, "float32")
                        * (a[0] + tir.const(0.044715, "float32") * a[0] * a[0] * a[0])
                    )
                )
            ),
            "recip": lambda: one / a[0],
            "pow": lambda: te.power(a[0], a[1]),
            "sin": lambda: te.sin(a[0]),
            "cos": lambda: te.cos(a[0]),
            "round_bf16": lambda: a[0].astype("bfloat16").astype("float32"),
        }
        if name in self._CMP:
            return tir.Select(self._compare(name, a[0], a[1]), one, zero)
        return table[name]()


def _cast_out(value, dtype: str):
    if dtype == "bool":
        return value != 0.0
    return value if dtype == "f32" else value.astype(_TVM_DTYPE[dtype])


def primfunc(spec: KernelSpec):
    """The PrimFunc computing ``spec``: parameters are the flat operands then
    the compact outputs (shapes in ``output_shapes(spec)``)."""
    import tvm
    from tvm import te

    inputs = placeholders(spec, te)
    tr = _Translator(spec, inputs, tvm)
    outs = _BUILD[spec.kind](spec, tr, te, tvm.tirx)
    return te.create_prim_func([*inputs, *outs])


def output_shapes(spec: KernelSpec) -> list[tuple[int, ...]]:
    """Shape of each compact output the PrimFunc writes (over the space)."""
    if spec.kind == "reduction":
        nrow = spec.attrs["row_rank"]
        return [tuple(spec.space[:nrow]) or (1,) if o.per_row else tuple(spec.space) for o in spec.outputs]
    if spec.kind == "gemm":
        b, m, n = spec.space
        return [(b, m, o.col_range[1] - o.col_range[0]) if o.col_range else (b, m, n) for o in spec.outputs]
    return [tuple(spec.space) for _ in spec.outputs]


def _elementwise(spec, tr, te, tir):
    def make(o):
        return lambda *p: _cast_out(tr.expr(o.expr, [tir.Cast("int64", x) for x in p]), o.dtype)

    return [te.compute(tuple(spec.space), make(o), name=f"out{j}") for j, o in enumerate(spec.outputs)]


def _reduction(spec, tr, te, tir):
    nrow = spec.attrs["row_rank"]
    row_dims, col_dims = tuple(spec.space[:nrow]), tuple(spec.space[nrow:])
    row_shape = row_dims or (1,)
    stages = []

    def stat_of(rows):
        return lambda k: stages[k](*rows) if row_dims else stages[k](0)

    reducers = {"sum": te.sum, "max": te.max, "min": te.min}

    def make_stage(kind, expr, axes):
        def stage(*r):
            rows = list(r) if row_dims else []
            point = [tir.Cast("int64", x) for x in rows] + [tir.Cast("int64", a) for a in axes]
            return reducers[kind](tr.expr(expr, point, stat=stat_of(r)), axis=axes)

        return stage

    def make_row(o):
        def per_row(*r):
            rows = list(r) if row_dims else []
            point = [tir.Cast("int64", x) for x in rows] + [tir.const(0, "int64")] * len(col_dims)
            return _cast_out(tr.expr(o.expr, point, stat=stat_of(r)), o.dtype)

        return per_row

    def make_elem(o):
        def per_elem(*p):
            point = [tir.Cast("int64", x) for x in p]
            return _cast_out(tr.expr(o.expr, point, stat=stat_of(p[:nrow])), o.dtype)

        return per_elem

    for k, (kind, expr) in enumerate(spec.stages):
        axes = [te.reduce_axis((0, d), name=f"c{k}_{i}") for i, d in enumerate(col_dims)]
        stages.append(te.compute(row_shape, make_stage(kind, expr, axes), name=f"stat{k}"))
    outs = []
    for j, o in enumerate(spec.outputs):
        if o.per_row:
            outs.append(te.compute(row_shape, make_row(o), name=f"out{j}"))
        else:
            outs.append(te.compute(tuple(spec.space), make_elem(o), name=f"out{j}"))
    return outs


def _gemm(spec, tr, te, tir):
    b, m, n = spec.space
    k = spec.attrs["K"]
    a_i, b_i = spec.attrs["a"], spec.attrs["b"]
    sab, sam, sak = spec.attrs["a_strides"]
    sbb, sbk, sbn = spec.attrs["b_strides"]
    A, B = tr.inputs[a_i], tr.inputs[b_i]
    r = te.reduce_axis((0, k), name="k")

    def f32(x):
        return x if x.dtype == "float32" else x.astype("float32")

    def i64(x):
        return tir.Cast("int64", x)

    C = te.compute(
        (b, m, n),
        lambda z, i, j: te.sum(
            f32(A[i64(z) * sab + i64(i) * sam + i64(r) * sak]) * f32(B[i64(z) * sbb + i64(r) * sbk + i64(j) * sbn]),
            axis=r,
        ),
        name="acc",
    )

    def make(o, lo):
        def out(z, i, c):
            col = c + lo
            point = [i64(z), i64(i), i64(col)]
            return _cast_out(tr.expr(o.expr, point, acc=C[z, i, col]), o.dtype)

        return out

    outs = []
    for j, o in enumerate(spec.outputs):
        lo, hi = o.col_range or (0, n)
        outs.append(te.compute((b, m, hi - lo), make(o, lo), name=f"out{j}"))
    return outs


def _conv(spec, tr, te, tir):
    a = spec.attrs
    geo = conv_geometry(spec)
    n_img, cout, oh, ow, cin_g, cout_g = (geo[k] for k in ("n", "cout", "oh", "ow", "cin_g", "cout_g"))
    kh, kw, h, w, sh, sw, pt, pl, dh, dw = (geo[k] for k in ("kh", "kw", "h", "w", "sh", "sw", "pt", "pl", "dh", "dw"))
    xs = a["in_strides"]
    ws = spec.operands[a["weight"]].strides
    X, W = tr.inputs[a["input"]], tr.inputs[a["weight"]]
    rc = te.reduce_axis((0, cin_g), name="rc")
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")

    def i64(x):
        return tir.Cast("int64", x)

    def f32(x):
        return x if x.dtype == "float32" else x.astype("float32")

    def acc(nn, co, y, x):
        grp = i64(co) // cout_g
        ci = grp * cin_g + i64(rc)
        iy = i64(y) * sh - pt + i64(ry) * dh
        ix = i64(x) * sw - pl + i64(rx) * dw
        inside = tir.all(iy >= 0, iy < h, ix >= 0, ix < w)
        xv = tir.if_then_else(
            inside,
            f32(X[i64(nn) * xs[0] + ci * xs[1] + tir.max(iy, 0) * xs[2] + tir.max(ix, 0) * xs[3]]),
            tir.const(0.0, "float32"),
        )
        wv = f32(W[i64(co) * ws[0] + i64(rc) * ws[1] + i64(ry) * ws[2] + i64(rx) * ws[3]])
        return te.sum(xv * wv, axis=[rc, ry, rx])

    C = te.compute((n_img, cout, oh, ow), acc, name="acc")

    def make(o):
        return lambda *p: _cast_out(tr.expr(o.expr, [i64(x) for x in p], acc=C(*p)), o.dtype)

    return [te.compute((n_img, cout, oh, ow), make(o), name=f"out{j}") for j, o in enumerate(spec.outputs)]


_BUILD = {"elementwise": _elementwise, "reduction": _reduction, "gemm": _gemm, "conv2d": _conv}


def flops(spec: KernelSpec) -> int:
    if spec.kind == "gemm":
        return 2 * math.prod(spec.space) * spec.attrs["K"]
    return math.prod(spec.space)
