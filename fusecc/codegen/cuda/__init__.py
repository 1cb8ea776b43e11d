"""The CUDA renderer: the same `KernelSpec`s as the C renderer, as CUDA C.

Kernel shapes (simple, correctness first; tuned shapes come with the tuner):

* elementwise - one thread per element, grid-stride loop;
* reduction - one block per row: every stage is a block-wide sum/max/min
  (per-thread partials, then a shared-memory tree), statistics are shared,
  per-element outputs are written by all threads, per-row ones by thread 0;
* gemm - 64x64 output tiles per block, 16-deep K slices staged through
  shared memory, 4x4 outputs per thread, the fused epilogue applied per
  output element before the store;
* conv2d - the same tiled GEMM as an implicit GEMM: the shared-memory B tile
  is gathered from the input on the fly (im2col never materialized),
  grouped convolutions on the grid's z dimension;
* block - every block pattern (inverted residual, bottleneck, ConvNeXt,
  basic) in one kernel (`block.py`): per output tile, the kxk layer's input
  window and its outputs (or a chunk of them) in shared memory, the last
  layer's sums in registers;
* attention - one thread per query row, key/value tiles in shared memory,
  online softmax; dense, causal, masked, or the kept blocks of a sparsity
  plan (`attention.py`).

Kernels can be run on the CPU for checking (`emulate.py`). Expressions go through the scalar form of the shared `ExprEmitter` with
CUDA's float math. Every kernel is ``extern "C" __global__`` taking one
pointer per operand and output, then a workspace pointer.
"""

from __future__ import annotations

import math

from ...kernels.spec import KernelSpec, conv_geometry
from ..c.common import sload as _load
from ..c.common import sstore as _store
from . import attention, block
from .common import CTYPE, PRELUDE, THREADS, CudaSource, emitter, offset, parameters, unravel

TILE_M = TILE_N = 64
TILE_K = 16


def _elementwise(spec: KernelSpec, name: str) -> CudaSource:
    space = list(spec.space)
    total = math.prod(space)
    names = [f"i{d}" for d in range(len(space))]
    em = emitter(spec, names)
    values = [em.emit(o.expr) for o in spec.outputs]
    body = unravel("idx", space, names) + em.lines
    body += [_store(o.dtype, f"out{j} + idx", v) for j, (o, v) in enumerate(zip(spec.outputs, values))]
    text = f"""
extern "C" __global__ void {name}({parameters(spec)}) {{
  for (long idx = (long)blockIdx.x * blockDim.x + threadIdx.x; idx < {total}L; idx += (long)gridDim.x * blockDim.x) {{
{chr(10).join("    " + x for x in body)}
  }}
}}
"""
    blocks = max(1, min(math.ceil(total / THREADS), 65535))
    return CudaSource(name, PRELUDE + text, (blocks, 1, 1), (THREADS, 1, 1), {})


_INIT = {"sum": "0.0f", "max": "-INFINITY", "min": "INFINITY"}
_COMBINE = {"sum": "{a} + {b}", "max": "fc_maxf({a}, {b})", "min": "fc_minf({a}, {b})"}


def _reduction(spec: KernelSpec, name: str) -> CudaSource:
    nrow = spec.attrs["row_rank"]
    row_dims, col_dims = list(spec.space[:nrow]), list(spec.space[nrow:])
    rows, cols = math.prod(row_dims), math.prod(col_dims)
    row_names = [f"r{d}" for d in range(nrow)]
    col_names = [f"c{d}" for d in range(len(col_dims))]
    names = row_names + col_names
    lines = unravel("row", row_dims, row_names)
    lines.append(f"__shared__ float part[{THREADS}];")
    lines.append(f"__shared__ float stats[{max(1, len(spec.stages))}];")

    def stat(s):
        return f"stats[{s.index}]"

    for k, (kind, expr) in enumerate(spec.stages):
        em = emitter(spec, names, stat=stat, prefix=f"s{k}_")
        v = em.emit(expr)
        lines.append(f"{{ float acc = {_INIT[kind]};")
        lines.append(f"  for (long c = threadIdx.x; c < {cols}L; c += blockDim.x) {{")
        lines.extend("    " + x for x in unravel("c", col_dims, col_names))
        lines.extend("    " + x for x in em.lines)
        lines.append(f"    acc = {_COMBINE[kind].format(a='acc', b=v)};")
        lines.append("  }")
        lines.append("  part[threadIdx.x] = acc; __syncthreads();")
        lines.append("  for (int s = blockDim.x / 2; s > 0; s >>= 1) {")
        lines.append(
            f"    if (threadIdx.x < s) part[threadIdx.x] = {_COMBINE[kind].format(a='part[threadIdx.x]', b='part[threadIdx.x + s]')};"
        )
        lines.append("    __syncthreads();")
        lines.append("  }")
        lines.append(f"  if (threadIdx.x == 0) stats[{k}] = part[0];")
        lines.append("  __syncthreads(); }")
    elem = [(j, o) for j, o in enumerate(spec.outputs) if not o.per_row]
    per_row = [(j, o) for j, o in enumerate(spec.outputs) if o.per_row]
    if elem:
        em = emitter(spec, names, stat=stat, prefix="o_")
        values = [em.emit(o.expr) for _, o in elem]
        lines.append(f"for (long c = threadIdx.x; c < {cols}L; c += blockDim.x) {{")
        lines.extend("  " + x for x in unravel("c", col_dims, col_names))
        lines.extend("  " + x for x in em.lines)
        for (j, o), v in zip(elem, values):
            lines.append("  " + _store(o.dtype, f"out{j} + {offset(names, o.space_strides)}", v))
        lines.append("}")
    if per_row:
        em = emitter(spec, row_names, stat=stat, prefix="p_")
        values = [em.emit(o.expr) for _, o in per_row]
        lines.append("if (threadIdx.x == 0) {")
        lines.extend("  " + x for x in em.lines)
        for (j, o), v in zip(per_row, values):
            lines.append("  " + _store(o.dtype, f"out{j} + {offset(row_names, o.space_strides[:nrow])}", v))
        lines.append("}")
    text = f"""
extern "C" __global__ void {name}({parameters(spec)}) {{
  const long row = blockIdx.x;
  if (row >= {rows}L) return;
{chr(10).join("  " + x for x in lines)}
}}
"""
    return CudaSource(name, PRELUDE + text, (rows, 1, 1), (THREADS, 1, 1), {})


def _tiled_gemm(
    spec: KernelSpec,
    name: str,
    m: int,
    n: int,
    k: int,
    batch: int,
    a_elem: str,
    b_elem: str,
    epilogue_point: list[str],
    out_ptr,
) -> CudaSource:
    """C[z][m][n] = sum_k A(z, m, k) * B(z, k, n) with a 64x64x16 shared-memory
    tiling; ``a_elem``/``b_elem`` are C expressions of (z, row, kk) / (z, kk, col)."""
    em = emitter(spec, epilogue_point, acc="accv", prefix="e")
    values = [em.emit(o.expr) for o in spec.outputs]
    stores = [out_ptr(j, o, v) for j, (o, v) in enumerate(zip(spec.outputs, values))]
    text = f"""
extern "C" __global__ void {name}({parameters(spec)}) {{
  __shared__ float As[{TILE_K}][{TILE_M} + 1];
  __shared__ float Bs[{TILE_K}][{TILE_N} + 1];
  const long z = blockIdx.z;
  const long row0 = (long)blockIdx.y * {TILE_M}, col0 = (long)blockIdx.x * {TILE_N};
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  float acc[4][4] = {{{{0}}}};
  for (long k0 = 0; k0 < {k}L; k0 += {TILE_K}) {{
    for (int e = threadIdx.x; e < {TILE_M * TILE_K}; e += blockDim.x) {{
      const int mm = e / {TILE_K}, kk = e % {TILE_K};
      const long row = row0 + mm, kx = k0 + kk;
      As[kk][mm] = (row < {m}L && kx < {k}L) ? ({a_elem}) : 0.0f;
    }}
    for (int e = threadIdx.x; e < {TILE_N * TILE_K}; e += blockDim.x) {{
      const int kk = e / {TILE_N}, nn = e % {TILE_N};
      const long col = col0 + nn, kx = k0 + kk;
      Bs[kk][nn] = (col < {n}L && kx < {k}L) ? ({b_elem}) : 0.0f;
    }}
    __syncthreads();
    for (int kk = 0; kk < {TILE_K}; ++kk)
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j)
          acc[i][j] += As[kk][ty * 4 + i] * Bs[kk][tx * 4 + j];
    __syncthreads();
  }}
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) {{
      const long mrow = row0 + ty * 4 + i, ncol = col0 + tx * 4 + j;
      if (mrow >= {m}L || ncol >= {n}L) continue;
      const float accv = acc[i][j];
{chr(10).join("      " + x for x in em.lines)}
{chr(10).join("      " + x for x in stores)}
    }}
}}
"""
    grid = (math.ceil(n / TILE_N), math.ceil(m / TILE_M), batch)
    return CudaSource(name, PRELUDE + text, grid, (THREADS, 1, 1), {"tile": (TILE_M, TILE_N, TILE_K)})


def _gemm(spec: KernelSpec, name: str) -> CudaSource:
    batch, m, n = spec.space
    k = spec.attrs["K"]
    a_i, b_i = spec.attrs["a"], spec.attrs["b"]
    sab, sam, sak = spec.attrs["a_strides"]
    sbb, sbk, sbn = spec.attrs["b_strides"]
    a_elem = _load(spec.operands[a_i].dtype, f"in{a_i} + z * {sab}L + row * {sam}L + kx * {sak}L")
    b_elem = _load(spec.operands[b_i].dtype, f"in{b_i} + z * {sbb}L + kx * {sbk}L + col * {sbn}L")

    def out_ptr(j: int, o, value: str) -> str:
        if o.col_range is None:
            sb, sm, sn = o.space_strides or (m * n, n, 1)
            return _store(o.dtype, f"out{j} + z * {sb}L + mrow * {sm}L + ncol * {sn}L", value)
        lo, hi = o.col_range
        w = hi - lo
        return f"if (ncol >= {lo}L && ncol < {hi}L) {{ {_store(o.dtype, f'out{j} + z * {m * w}L + mrow * {w}L + ncol - {lo}L', value)} }}"

    return _tiled_gemm(spec, name, m, n, k, batch, a_elem, b_elem, ["z", "mrow", "ncol"], out_ptr)


def _conv(spec: KernelSpec, name: str) -> CudaSource:
    a = spec.attrs
    geo = conv_geometry(spec)
    n_img, cout, oh, ow, g, cin_g, cout_g = (geo[k] for k in ("n", "cout", "oh", "ow", "g", "cin_g", "cout_g"))
    kh, kw, h, w, sh, sw, pt, pl, dh, dw = (geo[k] for k in ("kh", "kw", "h", "w", "sh", "sw", "pt", "pl", "dh", "dw"))
    xsn, xsc, xsh, xsw = a["in_strides"]
    wst = spec.operands[a["weight"]].strides
    x_i, w_i = a["input"], a["weight"]
    pixels = n_img * oh * ow
    kdim = cin_g * kh * kw
    # GEMM rows: output channels of group z; columns: pixels of all images; K: (ci, ky, kx)
    a_elem = _load(
        spec.operands[w_i].dtype,
        f"in{w_i} + (z * {cout_g}L + row) * {wst[0]}L + (kx / {kh * kw}L) * {wst[1]}L"
        f" + ((kx % {kh * kw}L) / {kw}L) * {wst[2]}L + (kx % {kw}L) * {wst[3]}L",
    )
    gather = f"fc_im2col_{name}(in{x_i}, z, kx, col)"
    helper = f"""
__device__ __forceinline__ float fc_im2col_{name}(const {CTYPE[spec.operands[x_i].dtype]}* x, long z, long kx, long col) {{
  const long nimg = col / {oh * ow}L, rest = col % {oh * ow}L, oy = rest / {ow}L, ox = rest % {ow}L;
  const long ci = z * {cin_g}L + kx / {kh * kw}L, r = kx % {kh * kw}L, ky = r / {kw}L, kxx = r % {kw}L;
  const long iy = oy * {sh}L - {pt}L + ky * {dh}L, ix = ox * {sw}L - {pl}L + kxx * {dw}L;
  if (iy < 0 || iy >= {h}L || ix < 0 || ix >= {w}L) return 0.0f;
  return {_load(spec.operands[x_i].dtype, f"x + nimg * {xsn}L + ci * {xsc}L + iy * {xsh}L + ix * {xsw}L")};
}}
"""

    def out_ptr(j: int, o, value: str) -> str:
        st = o.strides or (cout * oh * ow, oh * ow, ow, 1)
        return _store(o.dtype, f"out{j} + nimg * {st[0]}L + co * {st[1]}L + oy * {st[2]}L + ox * {st[3]}L", value)

    src = _tiled_gemm(spec, name, cout_g, pixels, kdim, g, a_elem, gather, ["nimg", "co", "oy", "ox"], out_ptr)
    # the epilogue point in (image, channel, y, x) from the GEMM's (group, row, column)
    point = (
        f"const long co = z * {cout_g}L + mrow; const long nimg = ncol / {oh * ow}L; "
        f"const long oy = (ncol % {oh * ow}L) / {ow}L; const long ox = ncol % {ow}L;"
    )
    text = src.text.replace(
        "      const float accv = acc[i][j];", f"      const float accv = acc[i][j];\n      {point}"
    )
    text = text.replace(f'extern "C" __global__ void {name}(', helper + f'extern "C" __global__ void {name}(', 1)
    return CudaSource(name, text, src.grid, src.block, src.params)


_KINDS = {
    "elementwise": _elementwise,
    "reduction": _reduction,
    "gemm": _gemm,
    "conv2d": _conv,
    "block": block.render,
    "attention": attention.render,
}
KINDS = frozenset(_KINDS)  # blocks: every pattern block fusion finds


def render(spec: KernelSpec) -> CudaSource:
    try:
        kind = _KINDS[spec.kind]
    except KeyError:
        raise NotImplementedError(f"the CUDA renderer has no {spec.kind!r} kernels") from None
    return kind(spec, f"fc_cuda_{spec.kind}_{spec.signature()}")
