"""Channels-last convolution by indirection (no im2col copy).

After Dukhan, "The Indirect Convolution Algorithm" (2019): a tile of MR
output pixels x NR output channels is accumulated in vector registers over
every tap (ky, kx) and input channel. For each tap the micro-kernel gets MR
row pointers - one per pixel, straight into the NHWC input, or to a static
row of zeros where the tap falls in the padding - and broadcasts from them
while it streams the packed weight panel ([taps][Cin][NR], the same panels
as `nhwc_gemm`). Nothing is copied, so a 3x3 layer reads its input where it
lies instead of writing and re-reading a 9x larger im2col matrix.

Loop nest per task (a chunk of pixel tiles x one weight panel):

    for each block of taps (K blocked so the weights of a block stay in L2)
        for each pixel tile of the chunk
            tile accumulators += taps of the block      (micro-kernel)
    epilogue of every tile (bias, activation, residual) -> output

The per-thread accumulator buffer holds the chunk's tiles between tap
blocks; with one tap block (small K) each tile goes straight to the
epilogue. ``schedule`` orders tasks pixel chunk-major (early layers: many
pixels, small weights) or panel-major (deep layers: the weights are read
from memory once and each thread streams its own panels).
"""

from __future__ import annotations

import math

from ...kernels.spec import KernelSpec
from . import gemm
from .common import SIGNATURE, declarations, thread_scratch, thread_stride
from .gemm import PREFETCH_K, tile_columns

ACC_BYTES = 64 * 1024  # per-thread accumulators of a chunk of tiles (L2 resident)
B_BLOCK_BYTES = 256 * 1024  # weights of one tap block of one panel (L2 resident)
FINISH_IN_REGISTERS = True  # the epilogue of a panel's last block runs on the accumulators (see _microkernel)


def segments(geo: dict, params: dict) -> tuple[int, int]:
    """(number of segments, floats per segment) of one pixel's K = (ky, kx, ci).
    ``taps``: one segment per tap (Cin floats), padding taps point at zeros;
    ``rows``: one per kernel row (KW*Cin contiguous floats of a padded copy
    of the input) - for few input channels, where per-tap segments are short."""
    if params.get("segment") == "rows":
        return geo["kh"], geo["kw"] * geo["cin"]
    return geo["kh"] * geo["kw"], geo["cin"]


def segment_choices(geo: dict) -> tuple[str, ...]:
    return ("taps", "rows") if geo["dw"] == 1 else ("taps",)


def default_segment(geo: dict) -> str:
    return "rows" if geo["dw"] == 1 and geo["cin"] < 16 and geo["kw"] > 1 else "taps"


def _padded_shape(geo: dict) -> tuple[int, int]:
    return geo["h"] + geo["pt"] + geo["pb"], geo["w"] + geo["pl"] + geo["pr"]


def _needs_copy(geo: dict) -> bool:
    """Row segments read the input in place only if it is dense channels-last and unpadded."""
    dense = geo["xsw"] == geo["cin"] and geo["xsh"] == geo["w"] * geo["cin"] and (geo["xsc"] == 1 or geo["cin"] == 1)
    return not dense or any(geo[p] for p in ("pt", "pl", "pb", "pr"))


def seg_block(geo: dict, params: dict, nr: int) -> int:
    """Segments per K block: ``kc`` rows of K, else an L2-sized block of weights."""
    nseg, seg = segments(geo, params)
    rows = params.get("kc") or B_BLOCK_BYTES // (4 * nr)
    most = max(1, min(nseg, rows // seg))
    return math.ceil(nseg / math.ceil(nseg / most))  # equal blocks: 9 taps as 5 + 4, not 8 + 1


def max_chunk_tiles(mr: int, nr: int) -> int:
    return max(1, ACC_BYTES // (4 * mr * nr))


def _acc_bytes(params: dict) -> int:
    mr, nv = params["tile"]
    nr = nv * params["vl"]
    return 4 * max_chunk_tiles(mr, nr) * mr * nr + 64


def workspace_bytes(geo: dict, params: dict, nthreads: int) -> int:
    copy = 0
    if params.get("segment") == "rows" and _needs_copy(geo):
        hp, wp = _padded_shape(geo)
        copy = 4 * geo["n"] * hp * wp * geo["cin"] + 64
    return nthreads * thread_stride(_acc_bytes(params)) + copy + 64  # the copy after every thread's region


def _microkernel(fn: str, rows: int, mr: int, nv: int, vl: int, seg: int, stream: bool, finish: tuple | None) -> str:
    """acc[rows x NR] (+)= sum over segments t, floats c of ptrs[t][i][c] * bp[t][c][:];
    ``stream``: also prefetch ``pf`` at ``pf_rate`` (as gemm.microkernel).
    With ``finish`` set (the last segment block of a panel of whole vectors)
    the epilogue runs on the accumulator registers instead: ``finish`` is
    (declarations, the whole-vector epilogue lines), and the tile never goes
    through ``acc`` (the RGB stem: 464 -> 432 us, its K is one block). With
    ``finish`` None the kernel always stores ``acc``."""
    nr = nv * vl
    stream_arg = gemm.STREAM_PARAMS if stream else ""
    lines = [
        f"static inline void {fn}(long ntaps, const float* const* FC_RESTRICT ptrs, "
        f"const float* FC_RESTRICT bp, float* FC_RESTRICT acc, int accumulate, "
        f"void* const* args, long pix0, long co0, int finish{stream_arg}) {{"
    ]
    for i in range(rows):
        lines.append(
            "  " + " ".join(f"vf c{i}_{j} = accumulate ? vload(acc + {i * nr + j * vl}) : vzero();" for j in range(nv))
        )
    lines.append("  for (long t = 0; t < ntaps; ++t) {")
    lines.append("    " + " ".join(f"const float* FC_RESTRICT a{i} = ptrs[t * {mr} + {i}];" for i in range(rows)))
    lines.append(f"    const float* FC_RESTRICT b = bp + t * {seg * nr}L;")
    lines.append(f"    for (long c = 0; c < {seg}L; ++c) {{")
    lines.append(
        "      " + " ".join(f"__builtin_prefetch(b + (c + {PREFETCH_K}) * {nr} + {o});" for o in range(0, nr, 16))
    )
    if stream:
        lines.append(f"      __builtin_prefetch(pf + (((t * {seg}L + c) * pf_rate) >> 16) * 16, 0, 2);")
    lines.append("      " + " ".join(f"const vf b{j} = vload(b + c * {nr} + {j * vl});" for j in range(nv)))
    for i in range(rows):
        fmas = " ".join(f"c{i}_{j} = vfma(x{i}, b{j}, c{i}_{j});" for j in range(nv))
        lines.append(f"      {{ const vf x{i} = vset1(a{i}[c]); {fmas} }}")
    lines.append("    }")
    lines.append("  }")
    if finish is not None:
        declarations_code, full = finish
        lines.append("  if (finish) {")
        lines.append(declarations_code)
        lines.extend(gemm.epilogue_on_registers(rows, nv, vl, full, lambda i: f"const long pix = pix0 + {i}L;", "    "))
        lines.append("    return;")
        lines.append("  }")
    else:
        lines.append("  (void)args; (void)pix0; (void)co0; (void)finish;")
    for i in range(rows):
        lines.append("  " + " ".join(f"vstore(acc + {i * nr + j * vl}, c{i}_{j});" for j in range(nv)))
    lines.append("}")
    return "\n".join(lines)


def _pointer_fn(name: str, geo: dict, mr: int, rows_mode: bool, copy: bool) -> str:
    """``NAME_ptrs``: the row pointers of segments [t0, t1) for pixels [pix0, pix0 + rows)."""
    if rows_mode:
        hp, wp = _padded_shape(geo)
        cin = geo["cin"]
        if copy:  # padded copy: every row segment is in range, the padding is in the copy
            img, row, pix = f"{hp * wp * cin}L", f"{wp * cin}L", f"{cin}L"
        else:
            img, row, pix = f"{geo['xsn']}L", f"{geo['xsh']}L", f"{geo['xsw']}L"
        return f"""
static inline void {name}_ptrs(const float* FC_RESTRICT x, long pix0, long rows, long t0, long t1,
                              const float** FC_RESTRICT ptrs) {{
  for (long i = 0; i < rows; ++i) {{
    const long p = pix0 + i, nimg = p / {geo["P"]}L, rest = p % {geo["P"]}L;
    const float* base = x + nimg * {img} + (rest % {geo["ow"]}L) * {geo["sw"]}L * {pix};
    const long y = (rest / {geo["ow"]}L) * {geo["sh"]}L;
    for (long t = t0; t < t1; ++t) ptrs[(t - t0) * {mr} + i] = base + (y + t * {geo["dh"]}L) * {row};
  }}
}}"""
    return f"""
static inline void {name}_ptrs(const float* FC_RESTRICT x, long pix0, long rows, long t0, long t1,
                              const float** FC_RESTRICT ptrs) {{
  for (long i = 0; i < rows; ++i) {{
    const long p = pix0 + i, nimg = p / {geo["P"]}L, rest = p % {geo["P"]}L;
    const long y0 = (rest / {geo["ow"]}L) * {geo["sh"]}L - {geo["pt"]}L;
    const long x0 = (rest % {geo["ow"]}L) * {geo["sw"]}L - {geo["pl"]}L;
    const float* img = x + nimg * {geo["xsn"]}L;
    for (long t = t0; t < t1; ++t) {{
      const long iy = y0 + (t / {geo["kw"]}L) * {geo["dh"]}L, ix = x0 + (t % {geo["kw"]}L) * {geo["dw"]}L;
      ptrs[(t - t0) * {mr} + i] = (iy >= 0 && iy < {geo["h"]}L && ix >= 0 && ix < {geo["w"]}L)
        ? img + iy * {geo["xsh"]}L + ix * {geo["xsw"]}L : {name}_zeros;
    }}
  }}
}}"""


def _copy_padded(geo: dict) -> str:
    """Every thread's share of the zero-padded dense copy ``xp`` of the input."""
    hp, wp = _padded_shape(geo)
    cin = geo["cin"]
    row_bytes = 4 * wp * cin
    if geo["xsc"] != 1 and cin > 1:  # another layout (NCHW): gather each pixel's channels
        copy_row = (
            f"for (long ix = 0; ix < {geo['w']}L; ++ix) for (long c = 0; c < {cin}L; ++c) "
            f"dst[(ix + {geo['pl']}L) * {cin}L + c] = src[ix * {geo['xsw']}L + c * {geo['xsc']}L];"
        )
    elif geo["xsw"] == cin:
        copy_row = f"memcpy(dst + {geo['pl'] * cin}L, src, {4 * geo['w'] * cin});"
    else:
        copy_row = (
            f"for (long ix = 0; ix < {geo['w']}L; ++ix) "
            f"memcpy(dst + (ix + {geo['pl']}L) * {cin}L, src + ix * {geo['xsw']}L, {4 * cin});"
        )
    return f"""
    #pragma omp for schedule(static)
    for (long r = 0; r < {geo["n"] * hp}L; ++r) {{
      const long nimg = r / {hp}L, iy = r % {hp}L - {geo["pt"]}L;
      float* FC_RESTRICT dst = xp + r * {wp * cin}L;
      if (iy < 0 || iy >= {geo["h"]}L) {{ memset(dst, 0, {row_bytes}); continue; }}
      const float* FC_RESTRICT src = x + nimg * {geo["xsn"]}L + iy * {geo["xsh"]}L;
      memset(dst, 0, {4 * geo["pl"] * cin});
      {copy_row}
      memset(dst + {(geo["pl"] + geo["w"]) * cin}L, 0, {4 * geo["pr"] * cin});
    }}"""


def render(spec: KernelSpec, name: str, vl: int, params: dict, geo: dict, epilogue: tuple) -> str:
    mr, nv = params["tile"]
    nr = nv * vl
    cout, k = geo["cout"], geo["K"]
    nseg, seg = segments(geo, params)
    rows_mode = params.get("segment") == "rows"
    copy = rows_mode and _needs_copy(geo)
    pixels = geo["n"] * geo["P"]
    mtiles = math.ceil(pixels / mr)
    panels = math.ceil(cout / nr)
    tb = seg_block(geo, params, nr)
    kblocks = math.ceil(nseg / tb)
    tm_max = max_chunk_tiles(mr, nr)
    x_i, w_i = spec.attrs["input"], spec.attrs["weight"]
    full, part = epilogue
    panel_major = params.get("schedule") == "channel_major"
    # channel-major tasks stream the weights they read next (the next segment
    # block of the panel, then the next task's panel) while computing these,
    # as the GEMM kernel's channel-major schedule does
    stream = panel_major and gemm.STREAM_OPERANDS
    pf_param, pf_arg = (gemm.STREAM_PARAMS, gemm.STREAM_ARGS) if stream else ("", "")
    # measured (conv 64 -> 96 3x3 s2 at 56x56, buffered / registers): ReLU6
    # stem 1.07x, Hardswish 1.004x, SiLU 0.994x, GELU 0.992x
    in_registers = FINISH_IN_REGISTERS and gemm.light_epilogue(full)
    finish = (declarations(spec, in_entry=False), full) if in_registers else None
    kernels = "\n".join(_microkernel(f"{name}_ukr{r}", r, mr, nv, vl, seg, stream, finish) for r in range(1, mr + 1))
    dispatch = "\n".join(
        f"    case {r}: {name}_ukr{r}(t1 - t0, ptrs, bp + t0 * {seg * nr}L, acc, t0 > 0, args, pix0, co0, finish{pf_arg});"
        " break;"
        for r in range(1, mr + 1)
    )

    # (panel, pixel chunk) of a task: panel-major or pixel chunk-major
    task_order = (
        "const long p = task / chunks, ch = task % chunks;"
        if panel_major
        else f"const long ch = task / {panels}L, p = task % {panels}L;"
    )

    acc_bytes = _acc_bytes(params)
    stream_setup, pf_of = "", ""
    if stream:  # the next block: this panel's next segments, else the next task's panel
        stream_setup = f"""
        const int more = kb + 1 < {kblocks}L;
        const float* FC_RESTRICT nblock = more ? bp + t1 * {seg * nr}L : wpack + (task + 1 < last ? task + 1 : task) / chunks * {k * nr}L;
        const long nsegs = more ? ({nseg}L - t1 < {tb}L ? {nseg}L - t1 : {tb}L) : {min(tb, nseg)}L;
        const long steps = (t1 - t0) * {seg}L, rate = fc_stream_rate(nsegs * {seg * -(-nr // 16)}L, (mt1 - mt0) * steps);"""
        pf_of = ", fc_stream_at(nblock, mt - mt0, steps, rate), rate"
    return f"""
static const float {name}_zeros[{geo["cin"]}] __attribute__((aligned(64)));

{kernels}
{_pointer_fn(name, geo, mr, rows_mode, copy)}

static inline void {name}_accumulate(const float* FC_RESTRICT x, const float* FC_RESTRICT bp, long pix0, long rows,
                                     long t0, long t1, float* FC_RESTRICT acc, void* const* args, long co0,
                                     int finish{pf_param}) {{
  const float* ptrs[{tb * mr}];
  {name}_ptrs(x, pix0, rows, t0, t1, ptrs);
  switch (rows) {{
{dispatch}
    default: break;
  }}
}}

static inline void {name}_epilogue(void* const* args, const float* FC_RESTRICT tile, long pix0, long rows, long co0) {{
{declarations(spec, in_entry=False)}
  for (long i = 0; i < rows; ++i) {{
    const long pix = pix0 + i;
{tile_columns(nr, vl, "co", "co0", cout, full, part, "    ")}
  }}
}}

{SIGNATURE.format(name=name)} {{
  const float* FC_RESTRICT x = (const float*)args[{x_i}];
  const float* FC_RESTRICT wpack = (const float*)args[{w_i}];
  char* ws = (char*)args[{len(spec.operands) + len(spec.outputs)}];
  float* FC_RESTRICT xp = {thread_scratch("nthreads", acc_bytes)};  /* after every thread's region */
  (void)xp; (void){name}_zeros;
  /* pixel chunks: at most {tm_max} tiles (accumulators in L2), enough tasks for every thread */
  long chunks = ({mtiles}L + {tm_max - 1}L) / {tm_max}L;
  while (chunks < {mtiles}L && (chunks * {panels}L < 8L * nthreads || (chunks * {panels}L) % nthreads)) ++chunks;
  const long per_chunk = ({mtiles}L + chunks - 1) / chunks;
  #pragma omp parallel num_threads(nthreads) if (chunks * {panels}L > 1)
  {{
#ifdef _OPENMP
    const int tid = omp_get_thread_num();
#else
    const int tid = 0;
#endif
    float* FC_RESTRICT accbuf = {thread_scratch("tid", acc_bytes)};
    const float* FC_RESTRICT src = {"xp" if copy else "x"};{_copy_padded(geo) if copy else ""}
    long first, last;
    fc_thread_range(chunks * {panels}L, &first, &last);
    for (long task = first; task < last; ++task) {{
      {task_order}
      const float* FC_RESTRICT bp = wpack + p * {k * nr}L;
      const long mt0 = ch * per_chunk, mt1 = (ch + 1) * per_chunk < {mtiles}L ? (ch + 1) * per_chunk : {mtiles}L;
      for (long kb = 0; kb < {kblocks}L; ++kb) {{
        const long t0 = kb * {tb}L, t1 = t0 + {tb}L < {nseg}L ? t0 + {tb}L : {nseg}L;{stream_setup}
        for (long mt = mt0; mt < mt1; ++mt) {{
          const long pix0 = mt * {mr}L, rows = {pixels}L - pix0 < {mr}L ? {pixels}L - pix0 : {mr}L;
          float* FC_RESTRICT acc = accbuf + (mt - mt0) * {mr * nr}L;
          /* the last block of a panel of whole vectors finishes in registers */
          const int finish = {int(in_registers)} && t1 == {nseg}L && (p + 1) * {nr}L <= {cout}L;
          {name}_accumulate(src, bp, pix0, rows, t0, t1, acc, args, p * {nr}L, finish{pf_of});
          if (t1 == {nseg}L && !finish) {name}_epilogue(args, acc, pix0, rows, p * {nr}L);
        }}
      }}
    }}
  }}
}}
"""
