"""Reductions: the space is (row dims..., reduced dims...). Every row runs
its stages (a sum/max/min of an expression over the row's elements), then
writes per-element outputs (softmax, layer norm) and per-row outputs (mean,
statistics). Two vectorizations:

* along the reduced elements (the innermost reduced dim is contiguous):
  a row's elements are consumed VL at a time, rows go to threads;
* across rows (the innermost row dim is contiguous, the reduced one is
  not - e.g. global pooling of a channels-last image): VL rows are reduced
  at once, one per lane, with no horizontal reduction at all.
"""

from __future__ import annotations

import math

from ...kernels.expr import Load
from ...kernels.spec import KernelSpec
from .common import SIGNATURE, declarations, sload, sstore, unravel, vload, vstore
from .expr import ExprEmitter

PARALLEL_MIN_ELEMENTS = 1 << 14
_INIT = {"sum": "0.0f", "max": "-INFINITY", "min": "INFINITY"}
_VCOMBINE = {"sum": "vadd", "max": "vmax", "min": "vmin"}
_SCOMBINE = {"sum": "{a} + {b}", "max": "fc_maxf({a}, {b})", "min": "fc_minf({a}, {b})"}
_VREDUCE = {"sum": "vreduce_add", "max": "vreduce_max", "min": "vreduce_min"}


def tunables(spec: KernelSpec, dialect=None) -> dict[str, tuple]:
    return {"lanes": ("elements", "rows")}


def default_params(spec: KernelSpec, dialect) -> dict:
    return {"lanes": "rows" if across_rows(spec) else "elements"}


def across_rows(spec: KernelSpec) -> bool:
    """Vectorize across rows: only per-row outputs, the innermost reduced dim
    is not contiguous for some load, and the innermost row dim is."""
    nrow = spec.attrs["row_rank"]
    if nrow == 0 or any(not o.per_row for o in spec.outputs) or spec.space[nrow - 1] < 4:
        return False
    last_row = [a.strides[nrow - 1] for a in spec.accesses] + [o.space_strides[nrow - 1] for o in spec.outputs]
    last_col = [a.strides[-1] for a in spec.accesses]
    return all(s in (0, 1) for s in last_row) and any(s not in (0, 1) for s in last_col)


def _offset(names: list[str], strides: tuple[int, ...]) -> str:
    return " + ".join(f"{n} * {s}L" for n, s in zip(names, strides) if s) or "0"


def render(spec: KernelSpec, name: str, vl: int, params: dict) -> str:
    if params.get("lanes") == "rows" and across_rows(spec):
        return _render_across_rows(spec, name, vl)
    return _render_along_elements(spec, name, vl)


def _render_along_elements(spec: KernelSpec, name: str, vl: int) -> str:
    rows = math.prod(spec.space[: spec.attrs["row_rank"]])
    cols = math.prod(spec.space[spec.attrs["row_rank"] :])
    body = "\n".join("    " + line for line in row_program(spec, vl))
    return f"""
{SIGNATURE.format(name=name)} {{
{declarations(spec)}
  #pragma omp parallel for num_threads(nthreads) schedule(static) if ({rows * cols}L >= {PARALLEL_MIN_ELEMENTS}L && {rows}L > 1)
  for (long r = 0; r < {rows}L; ++r) {{
{body}
  }}
}}
"""


def row_program(spec: KernelSpec, vl: int) -> list[str]:
    """The C statements that reduce row ``r`` and write its outputs, reading
    ``in<operand>`` and writing ``out<j>`` (also used inside block kernels,
    which bind those names to their own buffers)."""
    nrow = spec.attrs["row_rank"]
    row_dims, col_dims = list(spec.space[:nrow]), list(spec.space[nrow:])
    row_names = [f"r{d}" for d in range(nrow)]
    col_names = [f"c{d}" for d in range(len(col_dims))]
    inner = col_names[-1]
    lines: list[str] = unravel("r", row_dims, row_names)
    for a, acc in enumerate(spec.accesses):
        lines.append(f"const long base{a} = {_offset(row_names, acc.strides[:nrow])};")

    def ptr(node: Load) -> tuple[str, int, str]:
        acc = spec.accesses[node.access]
        col = acc.strides[nrow:]
        outer = _offset(col_names[:-1], col[:-1])
        return (
            f"in{node.operand} + base{node.access} + {outer} + {inner} * {col[-1]}L",
            col[-1],
            spec.operands[node.operand].dtype,
        )

    def loader(vector: bool):
        def load(node: Load) -> str:
            p, stride, dtype = ptr(node)
            return vload(dtype, p, stride) if vector else sload(dtype, p)

        return load

    def stat(vector: bool):
        return lambda s: f"vstat{s.index}" if vector else f"stat{s.index}"

    def element_loops(emit_body) -> None:
        """Nested loops over the reduced dims; the innermost in vectors then a scalar tail."""
        depth = 0
        for n, d in zip(col_names[:-1], col_dims[:-1]):
            lines.append("  " * depth + f"for (long {n} = 0; {n} < {d}L; ++{n}) {{")
            depth += 1
        pad = "  " * depth
        lines.append(pad + "{")
        lines.append(pad + f"  long {inner} = 0;")
        lines.append(pad + f"  for (; {inner} + {vl} <= {col_dims[-1]}L; {inner} += {vl}) {{")
        lines.extend(pad + "    " + x for x in emit_body(True))
        lines.append(pad + "  }")
        lines.append(pad + f"  for (; {inner} < {col_dims[-1]}L; ++{inner}) {{")
        lines.extend(pad + "    " + x for x in emit_body(False))
        lines.append(pad + "  }")
        lines.append(pad + "}")
        for _ in col_names[:-1]:
            depth -= 1
            lines.append("  " * depth + "}")

    for k, (kind, expr) in enumerate(spec.stages):
        lines.append(f"vf vsum{k} = vset1({_INIT[kind]});")
        lines.append(f"float stat{k} = {_INIT[kind]};")

        def stage_body(vector: bool, k=k, kind=kind, expr=expr) -> list[str]:
            em = ExprEmitter(vector, loader(vector), stat=stat(vector))
            v = em.emit(expr)
            if vector:
                return em.lines + [f"vsum{k} = {_VCOMBINE[kind]}(vsum{k}, {v});"]
            return em.lines + [f"stat{k} = {_SCOMBINE[kind].format(a=f'stat{k}', b=v)};"]

        element_loops(stage_body)
        lines.append(f"stat{k} = {_SCOMBINE[kind].format(a=f'stat{k}', b=f'{_VREDUCE[kind]}(vsum{k})')};")
        lines.append(f"const vf vstat{k} = vset1(stat{k}); (void)vstat{k};")

    element_outputs = [(j, o) for j, o in enumerate(spec.outputs) if not o.per_row]
    row_outputs = [(j, o) for j, o in enumerate(spec.outputs) if o.per_row]
    if element_outputs:

        def output_body(vector: bool) -> list[str]:
            em = ExprEmitter(vector, loader(vector), stat=stat(vector))
            values = [em.emit(o.expr) for _, o in element_outputs]
            out = em.lines
            for (j, o), v in zip(element_outputs, values):
                st = o.space_strides
                p = f"out{j} + {_offset(row_names, st[:nrow])} + {_offset(col_names, st[nrow:])}"
                if vector and st[-1] != 1:
                    out.append(f"vscatter({p}, {st[-1]}L, {v}, VL);")
                else:
                    out.append(vstore(o.dtype, p, v) if vector else sstore(o.dtype, p, v))
            return out

        element_loops(output_body)
    if row_outputs:
        lines.extend(f"const long {n} = 0; (void){n};" for n in col_names)
        em = ExprEmitter(False, loader(False), stat=stat(False), prefix="rw")
        values = [em.emit(o.expr) for _, o in row_outputs]
        lines.extend(em.lines)
        for (j, o), v in zip(row_outputs, values):
            lines.append(sstore(o.dtype, f"out{j} + {_offset(row_names, o.space_strides[:nrow])}", v))
    return lines


def _render_across_rows(spec: KernelSpec, name: str, vl: int) -> str:
    nrow = spec.attrs["row_rank"]
    row_dims, col_dims = list(spec.space[:nrow]), list(spec.space[nrow:])
    lane_dim = row_dims[-1]
    outer_rows = math.prod(row_dims[:-1])
    blocks = math.ceil(lane_dim / vl)
    row_names = [f"r{d}" for d in range(nrow)]
    col_names = [f"c{d}" for d in range(len(col_dims))]
    lane = row_names[-1]

    def load(node: Load) -> str:
        acc = spec.accesses[node.access]
        dtype = spec.operands[node.operand].dtype
        p = f"in{node.operand} + {_offset(row_names, acc.strides[:nrow])} + {_offset(col_names, acc.strides[nrow:])}"
        return vload(dtype, p, acc.strides[nrow - 1], "nl")

    lines: list[str] = unravel("outer", row_dims[:-1], row_names[:-1]) if nrow > 1 else []
    lines.append(f"const long {lane} = blk * {vl}L;")
    lines.append(f"const int nl = {lane_dim}L - {lane} < {vl} ? (int)({lane_dim}L - {lane}) : {vl};")
    for k, (kind, expr) in enumerate(spec.stages):
        lines.append(f"vf vstat{k} = vset1({_INIT[kind]});")
        depth = 0
        for n, d in zip(col_names, col_dims):
            lines.append("  " * depth + f"for (long {n} = 0; {n} < {d}L; ++{n}) {{")
            depth += 1
        em = ExprEmitter(True, load, stat=lambda s: f"vstat{s.index}")
        v = em.emit(expr)
        lines.extend("  " * depth + x for x in em.lines)
        lines.append("  " * depth + f"vstat{k} = {_VCOMBINE[kind]}(vstat{k}, {v});")
        for _ in col_names:
            depth -= 1
            lines.append("  " * depth + "}")
    lines.extend(f"const long {n} = 0; (void){n};" for n in col_names)
    em = ExprEmitter(True, load, stat=lambda s: f"vstat{s.index}", prefix="rw")
    values = [em.emit(o.expr) for o in spec.outputs]
    lines.extend(em.lines)
    for j, (o, v) in enumerate(zip(spec.outputs, values)):
        p = f"out{j} + {_offset(row_names, o.space_strides[:nrow])}"
        lines.append(vstore(o.dtype, p, v, "nl"))
    body = "\n".join("    " + line for line in lines)
    return f"""
{SIGNATURE.format(name=name)} {{
{declarations(spec)}
  #pragma omp parallel for num_threads(nthreads) schedule(static) if ({outer_rows * blocks}L > 1)
  for (long task = 0; task < {outer_rows * blocks}L; ++task) {{
    const long outer = task / {blocks}L, blk = task % {blocks}L;
    (void)outer;
{body}
  }}
}}
"""
