"""Row reductions: every row runs its stages (a sum/max/min of an
expression over the row, vectorized), then writes per-element outputs
(softmax, layer norm) and per-row outputs (mean, statistics). Rows are
split across threads."""

from __future__ import annotations

from ...kernels.expr import Load
from ...kernels.spec import KernelSpec
from .common import SIGNATURE, declarations, sload, sstore, vload, vstore
from .expr import ExprEmitter

PARALLEL_MIN_ELEMENTS = 1 << 14
_INIT = {"sum": "0.0f", "max": "-INFINITY", "min": "INFINITY"}
_VCOMBINE = {"sum": "vadd", "max": "vmax", "min": "vmin"}
_SCOMBINE = {"sum": "{a} + {b}", "max": "fc_maxf({a}, {b})", "min": "fc_minf({a}, {b})"}
_VREDUCE = {"sum": "vreduce_add", "max": "vreduce_max", "min": "vreduce_min"}


def tunables(spec: KernelSpec, dialect=None) -> dict[str, tuple]:
    return {"unroll": (1,)}


def render(spec: KernelSpec, name: str, vl: int, params: dict) -> str:
    rows, cols = spec.space
    lines: list[str] = []
    for a, acc in enumerate(spec.accesses):
        lines.append(f"const long base{a} = r * {acc.strides[0]}L;")

    def loader(vector: bool, col: str = "c"):
        def load(node: Load) -> str:
            acc = spec.accesses[node.access]
            dtype = spec.operands[node.operand].dtype
            ptr = f"in{node.operand} + base{node.access} + {col} * {acc.strides[1]}L"
            return vload(dtype, ptr, acc.strides[1]) if vector else sload(dtype, ptr)

        return load

    def stat(vector: bool):
        return lambda s: f"vstat{s.index}" if vector else f"stat{s.index}"

    def column_loop(emit_body) -> None:
        lines.append("{")
        lines.append("  long c = 0;")
        lines.append(f"  for (; c + {vl} <= {cols}L; c += {vl}) {{")
        lines.extend("    " + x for x in emit_body(True))
        lines.append("  }")
        lines.append(f"  for (; c < {cols}L; ++c) {{")
        lines.extend("    " + x for x in emit_body(False))
        lines.append("  }")
        lines.append("}")

    for k, (kind, expr) in enumerate(spec.stages):
        lines.append(f"vf vsum{k} = vset1({_INIT[kind]});")
        lines.append(f"float stat{k} = {_INIT[kind]};")

        def stage_body(vector: bool, k=k, kind=kind, expr=expr) -> list[str]:
            em = ExprEmitter(vector, loader(vector), stat=stat(vector))
            v = em.emit(expr)
            if vector:
                return em.lines + [f"vsum{k} = {_VCOMBINE[kind]}(vsum{k}, {v});"]
            return em.lines + [f"stat{k} = {_SCOMBINE[kind].format(a=f'stat{k}', b=v)};"]

        column_loop(stage_body)
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
                ptr = f"out{j} + r * {cols}L + c"
                out.append(vstore(o.dtype, ptr, v) if vector else sstore(o.dtype, ptr, v))
            return out

        column_loop(output_body)
    if row_outputs:
        em = ExprEmitter(False, loader(False, col="0"), stat=stat(False), prefix="rw")
        values = [em.emit(o.expr) for _, o in row_outputs]
        lines.extend(em.lines)
        for (j, o), v in zip(row_outputs, values):
            lines.append(sstore(o.dtype, f"out{j} + r", v))

    body = "\n".join("    " + line for line in lines)
    return f"""
{SIGNATURE.format(name=name)} {{
{declarations(spec)}
  #pragma omp parallel for num_threads(nthreads) schedule(static) if ({rows * cols}L >= {PARALLEL_MIN_ELEMENTS}L && {rows}L > 1)
  for (long r = 0; r < {rows}L; ++r) {{
{body}
  }}
}}
"""
