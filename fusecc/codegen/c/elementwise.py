"""Elementwise kernels: a loop nest over the (coalesced) output space, the
innermost dim vectorized, the rest split into parallel tasks."""

from __future__ import annotations

import math

from ...kernels.expr import Load
from ...kernels.spec import KernelSpec
from .common import SIGNATURE, declarations, sload, sstore, unravel, vload, vstore
from .expr import ExprEmitter

PARALLEL_MIN_ELEMENTS = 1 << 15
TASK_MIN_ELEMENTS = 1 << 13


def tunables(spec: KernelSpec, dialect=None) -> dict[str, tuple]:
    return {"tasks_per_thread": (1, 4, 16)}


def render(spec: KernelSpec, name: str, vl: int, params: dict) -> str:
    space = list(spec.space)
    inner = space[-1]
    outer_dims = space[:-1]
    outer = math.prod(outer_dims)
    total = outer * inner
    # split the inner dim into chunks when there are too few outer rows to share
    want_tasks = 2 * params.get("tasks_per_thread", 4) * 8
    chunks = 1
    if outer < want_tasks and inner >= 2 * TASK_MIN_ELEMENTS:
        chunks = min(math.ceil(want_tasks / outer), inner // TASK_MIN_ELEMENTS)
    chunk_len = math.ceil(inner / chunks / vl) * vl
    chunks = math.ceil(inner / chunk_len)

    nd = len(outer_dims)
    idx_names = [f"i{d}" for d in range(nd)]
    body: list[str] = []
    body += unravel("outer", outer_dims, idx_names)
    for a, acc in enumerate(spec.accesses):
        terms = [f"{n} * {s}L" for n, s in zip(idx_names, acc.strides[:-1]) if s]
        body.append(f"const long base{a} = {' + '.join(terms) or '0'};")
    body.append(f"const long j0 = chunk * {chunk_len}L;")
    body.append(f"const long j1 = j0 + {chunk_len}L < {inner}L ? j0 + {chunk_len}L : {inner}L;")
    body.append("long j = j0;")

    def loader(vector: bool):
        def load(node: Load) -> str:
            acc = spec.accesses[node.access]
            dtype = spec.operands[node.operand].dtype
            ptr = f"in{node.operand} + base{node.access} + j * {acc.strides[-1]}L"
            return vload(dtype, ptr, acc.strides[-1]) if vector else sload(dtype, ptr)

        return load

    def loop_body(vector: bool) -> list[str]:
        em = ExprEmitter(vector, loader(vector))
        values = [em.emit(o.expr) for o in spec.outputs]
        lines = em.lines
        for j, (o, v) in enumerate(zip(spec.outputs, values)):
            ptr = f"out{j} + outer * {inner}L + j"
            lines.append(vstore(o.dtype, ptr, v) if vector else sstore(o.dtype, ptr, v))
        return lines

    body.append(f"for (; j + {vl} <= j1; j += {vl}) {{")
    body += ["  " + line for line in loop_body(True)]
    body.append("}")
    body.append("for (; j < j1; ++j) {")
    body += ["  " + line for line in loop_body(False)]
    body.append("}")

    inner_code = "\n".join("    " + line for line in body)
    return f"""
{SIGNATURE.format(name=name)} {{
{declarations(spec)}
  #pragma omp parallel for num_threads(nthreads) schedule(static) if ({total}L >= {PARALLEL_MIN_ELEMENTS}L)
  for (long task = 0; task < {outer * chunks}L; ++task) {{
    const long outer = task / {chunks}L;
    const long chunk = task % {chunks}L;
    (void)outer;
{inner_code}
  }}
}}
"""
