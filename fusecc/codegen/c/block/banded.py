"""The band walk shared by inverted residuals, bottlenecks and ConvNeXt
blocks: each thread owns a run of output rows of one image (or, with a
channel split, a range of channels of whole images) and walks it in bands:

  1. fill - the input rows the band's kxk window needs go into a *ring* of
     padded rows (zero columns at the sides, so the kxk loop has no bounds
     checks): through the expand GEMM, or copied when there is none; rows
     already in the ring from the previous band are not recomputed;
  2. middle - the band's output rows of the kxk layer (depthwise, or dense
     as one GEMM per tap), from the ring, into a band buffer;
  3. tail - the band buffer to the output: the project GEMM with its
     epilogue (bias, residual), or a pattern's own layers before it.

The ring and band buffer are sized to stay in L2, so the block's
intermediates never exist in full (ConvFirst: temporal locality, no round
trip of intermediates through memory)."""

from __future__ import annotations

import dataclasses
import math

from ....kernels.spec import KernelSpec, conv_geometry
from ..common import SIGNATURE, depthwise_pixels, thread_scratch
from ..dialects import Dialect
from .common import gemm_dims, layers, weight_operand
from .rows import bind, epilogue, gemm_partial_sums, gemm_rows

L2_BUDGET = 192 * 1024  # bytes of ring + band buffer per thread
MIN_BAND_PIXELS = 64  # pixels per tail GEMM call


@dataclasses.dataclass(frozen=True)
class Walk:
    """Which layers of the block play which part in the walk."""

    expand: int | None  # the 1x1 layer filling the ring (None: the ring holds input rows)
    middle: int  # the kxk layer reading the ring
    last: int  # the layer writing the block output
    tail_floats: int = 0  # floats per band pixel the tail keeps besides the band buffer
    split_layer: int | None = None  # a channel split divides this tail layer's output (None: the ring's channels)
    budget: int = L2_BUDGET
    band_pixels: int = MIN_BAND_PIXELS
    fill_floats: int = 0  # floats per thread a custom fill keeps (a stem's im2col panel)


def middle_geometry(spec: KernelSpec, walk: Walk) -> dict:
    return conv_geometry(layers(spec)[walk.middle])


def default_dw_pixels(spec: KernelSpec, walk: Walk, dialect: Dialect) -> int:
    """Output pixels the depthwise middle computes side by side (`rows.depthwise_row`)."""
    g = middle_geometry(spec, walk)
    return depthwise_pixels(g["ow"], g["kw"], dialect.vector_registers)


def band_rows(spec: KernelSpec, walk: Walk) -> int:
    """The largest band (output rows) of at least ``band_pixels`` pixels whose
    ring and buffers fit the budget."""
    g = middle_geometry(spec, walk)
    ring_row = 4 * (g["w"] + g["pl"] + g["pr"]) * g["cout"]
    band_row = 4 * g["ow"] * (g["cout"] + walk.tail_floats)
    band = max(1, math.ceil(walk.band_pixels / g["ow"]))
    while band > 1 and ring_row * ((band - 1) * g["sh"] + g["kh"]) + band_row * band > walk.budget:
        band -= 1
    return min(band, g["oh"])


def ring_rows(spec: KernelSpec, walk: Walk, params: dict) -> int:
    g = middle_geometry(spec, walk)
    return (params["band"] - 1) * g["sh"] + g["kh"]


def _partial_offset(spec: KernelSpec, walk: Walk, params: dict) -> int:
    """Floats before a thread's partial sums: ring, zero row, band buffer, tail rows, fill buffer."""
    g = middle_geometry(spec, walk)
    ring_row = (g["w"] + g["pl"] + g["pr"]) * g["cout"]
    band = params["band"] * g["ow"] * (g["cout"] + walk.tail_floats)
    return ring_row * (ring_rows(spec, walk, params) + 1) + band + walk.fill_floats


def per_thread_floats(spec: KernelSpec, walk: Walk, params: dict) -> int:
    """Ring + zero row + band buffer + tail rows (+ the partial sums of a
    channel split: one image's output)."""
    floats = _partial_offset(spec, walk, params)
    if params.get("split") == "channels":
        g = middle_geometry(spec, walk)
        floats += g["oh"] * g["ow"] * gemm_dims(layers(spec)[walk.last])[1] + 16
    return floats


def project_tail(
    spec: KernelSpec, walk: Walk, name: str, vl: int, params: dict, channels: bool
) -> tuple[list[str], str]:
    """The last layer as the tail: the project GEMM on the band buffer, to the
    output (rows) or to the thread's partial sums (channel split)."""
    g = middle_geometry(spec, walk)
    co, tile = gemm_dims(layers(spec)[walk.last])[1], params["tiles"][1]
    w_pr = weight_operand(spec, walk.last)
    if channels:
        fn = gemm_partial_sums(spec, f"{name}_project", walk.last, tile, vl)
        call = f"""{name}_project(dband, cw, (oy1 - oy0) * {g["ow"]}L, (const float*)args[{w_pr}], c0, cw,
                       partial + oy0 * {g["ow"] * co}L);"""
        return [fn], call
    fn = gemm_rows(spec, f"{name}_project", walk.last, tile, vl)
    call = f"""{name}_project(args, dband, cw, (oy1 - oy0) * {g["ow"]}L, (const float*)args[{w_pr}],
                       out + (nimg * {g["oh"]}L + oy0) * {g["ow"] * co}L, {co}L, (nimg * {g["oh"]}L + oy0) * {g["ow"]}L,
                       0, {math.ceil(co / (tile[1] * vl))}L, 0);"""
    return [fn], call


def split_units(spec: KernelSpec, walk: Walk, tiles: list, vl: int) -> tuple[int, int, int]:
    """How a channel split cuts the channels: (channels a unit, channels split,
    units). Units are whole panels of the GEMM producing them (or whole
    vectors of the input when no GEMM does), and a thread takes a run of them."""
    split_tail = walk.split_layer is not None
    unit = tiles[0][1] * vl if walk.expand is not None or split_tail else vl
    split_channels = gemm_dims(layers(spec)[walk.split_layer])[1] if split_tail else middle_geometry(spec, walk)["cout"]
    return unit, split_channels, math.ceil(split_channels / unit)


def _thread_buf(t: str, per_thread: int) -> str:
    return thread_scratch(t, 4 * per_thread + 128)


def render(
    spec: KernelSpec,
    walk: Walk,
    name: str,
    vl: int,
    params: dict,
    middle_fn: str,
    tail,
    fill: tuple[list[str], str] | None = None,
) -> str:
    """The kernel: ``middle_fn`` is the C of the ``{name}_dw`` row function
    (`rows.depthwise_row` or `rows.conv_row`); ``tail(channels)`` gives the
    functions and the C call that finish a band. ``fill`` = (functions, C
    statement) computes ring row ``r`` of image ``nimg`` into ``slot``
    (after its left padding) in place of the 1x1 expand or the copy; it may
    use ``walk.fill_floats`` floats at ``fillbuf``."""
    g = middle_geometry(spec, walk)
    expand = layers(spec)[walk.expand] if walk.expand is not None else None
    first = conv_geometry(expand) if expand is not None else g
    cin, ce, h, w = first["cin"], g["cout"], g["h"], g["w"]
    oh, ow, kh, sh, pt, pl, pr = g["oh"], g["ow"], g["kh"], g["sh"], g["pt"], g["pl"], g["pr"]
    last = layers(spec)[walk.last]
    co = gemm_dims(last)[1]
    n = g["n"]
    band, ring = params["band"], ring_rows(spec, walk, params)
    channels = params.get("split") == "channels"
    per_thread = per_thread_floats(spec, walk, params)
    x_i = spec.attrs["operand_maps"][0][(expand or layers(spec)[walk.middle]).attrs["input"]]
    out_i = len(spec.operands)
    w_dw = weight_operand(spec, walk.middle)
    split_tail = walk.split_layer is not None
    unit, split_channels, units = split_units(spec, walk, params["tiles"], vl)

    parts = []
    if fill is not None:
        fill_parts, fill = fill
        parts.extend(fill_parts)
    elif expand is not None:
        parts.append(gemm_rows(spec, f"{name}_expand", walk.expand, params["tiles"][0], vl))
        fill = f"""{name}_expand(args, x + (nimg * {h}L + r) * {w * cin}L, {cin}L, {w}L, (const float*)args[{weight_operand(spec, walk.expand)}],
                 slot + {pl}L * cw, cw, (nimg * {h}L + r) * {w}L, u0, u1, c0);"""
    else:
        fill = f"""for (long ix = 0; ix < {w}L; ++ix)
            memcpy(slot + ({pl}L + ix) * cw, x + ((nimg * {h}L + r) * {w}L + ix) * {cin}L + c0, 4 * cw);"""
    parts.append(middle_fn)
    tail_parts, tail_call = tail(channels)
    parts.extend(tail_parts)
    row_w = f"({w + pl + pr}L * cw)"
    bands = f"""
      long have = -(1L << 40);  /* expanded rows [.., have) are in the ring */
      for (long oy0 = y0; oy0 < y1; oy0 += {band}L) {{
        const long oy1 = oy0 + {band}L < y1 ? oy0 + {band}L : y1;
        long r = oy0 * {sh}L - {pt}L;
        if (r < have) r = have;
        if (r < 0) r = 0;
        long r_end = (oy1 - 1) * {sh}L - {pt}L + {kh}L;
        if (r_end > {h}L) r_end = {h}L;
        for (; r < r_end; ++r) {{
          float* FC_RESTRICT slot = ringbuf + (r % {ring}L) * {row_w};
          {f"memset(slot, 0, 4 * {pl}L * cw);" if pl else ""}
          {f"memset(slot + {pl + w}L * cw, 0, 4 * {pr}L * cw);" if pr else ""}
          {fill}
        }}
        if (r_end > have) have = r_end;
        for (long oy = oy0; oy < oy1; ++oy) {{
          const float* rows_in[{kh}];
          for (long ky = 0; ky < {kh}L; ++ky) {{
            const long iy = oy * {sh}L - {pt}L + ky;
            rows_in[ky] = (iy >= 0 && iy < {h}L) ? ringbuf + (iy % {ring}L) * {row_w} : zero;
          }}
          {name}_dw(args, rows_in, (const float*)args[{w_dw}], dband + (oy - oy0) * {ow}L * cw, (nimg * {oh}L + oy) * {ow}L,
                    c0, c0 + cw, cw);
        }}
        {tail_call}
      }}"""

    # per thread: ring, zero row, band buffer, the tail's rows, then (channel split) the partial sums
    partial_offset = _partial_offset(spec, walk, params)
    buffers = f"""
    float* FC_RESTRICT ringbuf = {_thread_buf("tid", per_thread)};
    float* FC_RESTRICT zero = ringbuf + {ring * (w + pl + pr) * ce}L;
    float* FC_RESTRICT dband = zero + {(w + pl + pr) * ce}L;
    memset(zero, 0, {4 * (w + pl + pr) * ce});"""
    if walk.tail_floats:
        buffers += f"""
    float* FC_RESTRICT hbuf = dband + {band * ow * ce}L;"""
    if walk.fill_floats:
        buffers += f"""
    float* FC_RESTRICT fillbuf = dband + {band * ow * (ce + walk.tail_floats)}L;"""
    if not channels:
        body = f"""
  /* rows of one image are split over the threads when images are fewer */
  long chunks = ({n}L >= nthreads) ? 1 : (nthreads + {n}L - 1) / {n}L;
  if (chunks > {oh}L) chunks = {oh}L;
  const long per_chunk = ({oh}L + chunks - 1) / chunks;
  #pragma omp parallel num_threads(nthreads) if ({n}L * chunks > 1)
  {{
#ifdef _OPENMP
    const int tid = omp_get_thread_num();
#else
    const int tid = 0;
#endif{buffers}
    const long u0 = 0, u1 = {units}L, c0 = 0, cw = {ce}L;
    (void)u0; (void)u1;
    #pragma omp for schedule(static)
    for (long task = 0; task < {n}L * chunks; ++task) {{
      const long nimg = task / chunks, y0 = (task % chunks) * per_chunk;
      const long y1 = y0 + per_chunk < {oh}L ? y0 + per_chunk : {oh}L;{bands}
    }}
  }}"""
    else:
        pfull, ppart = epilogue(last, None), epilogue(last, "rem")
        body = f"""
  /* each thread expands, filters and projects its own range of the expanded
     channels for whole images; the partial project sums are added up after */
  const long parts = nthreads < {units}L ? nthreads : {units}L;
  #pragma omp parallel num_threads(parts) if (parts > 1)
  {{
#ifdef _OPENMP
    const int tid = omp_get_thread_num(), team = omp_get_num_threads();
#else
    const int tid = 0, team = 1;
#endif{buffers}
    float* FC_RESTRICT partial = ringbuf + {partial_offset}L;
    const float* part_of[team];  /* every thread's partial sums */
    for (int t = 0; t < team; ++t) part_of[t] = {_thread_buf("t", per_thread)} + {partial_offset}L;
    {bind(spec, walk.last)}
    const long u0 = tid * {units}L / team, u1 = (tid + 1) * {units}L / team;
    const long s0 = u0 * {unit}L, sw = (u1 * {unit}L < {split_channels}L ? u1 * {unit}L : {split_channels}L) - s0;
    {"const long c0 = 0, cw = " + str(ce) + "L, e0 = s0, ew = sw;" if split_tail else "const long c0 = s0, cw = sw;"}
    (void)u1;
    for (long nimg = 0; nimg < {n}L; ++nimg) {{
      const long y0 = 0, y1 = {oh}L;{bands}
      #pragma omp barrier
      const long p_lo = tid * {oh * ow}L / team, p_hi = (tid + 1) * {oh * ow}L / team;
      float* FC_RESTRICT dst = out + nimg * {oh * ow * co}L;
      const long ldd = {co}L, co_base = 0;
      for (long row = p_lo; row < p_hi; ++row) {{
        const long pix = nimg * {oh * ow}L + row;
        for (long co = 0; co < {co}L; co += {vl}) {{
          const int rem = (int)({co}L - co < {vl}L ? {co}L - co : {vl}L);
          vf acc = vzero();
          for (int t = 0; t < team; ++t) acc = vadd(acc, vloadn(part_of[t] + row * {co}L + co, rem));
          if (rem == {vl}) {{
{chr(10).join("            " + x for x in pfull)}
          }} else {{
{chr(10).join("            " + x for x in ppart)}
          }}
        }}
      }}
      #pragma omp barrier
    }}
  }}"""
    parts.append(f"""
{SIGNATURE.format(name=name)} {{
  const float* FC_RESTRICT x = (const float*)args[{x_i}];
  float* FC_RESTRICT out = (float*)args[{out_i}];
  char* ws = (char*)args[{out_i + 1}];{body}
}}
""")
    return "\n".join(parts)
