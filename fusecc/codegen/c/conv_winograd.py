"""Channels-last 3x3 stride-1 convolution by Winograd F(m x m, 3 x 3).

The matrices are `kernels.winograd`'s; this module renders the three
phases for a chunk of output tiles, all in per-thread scratch that stays in
L2, so nothing of the transformed sizes goes to memory:

    input transform    V[pos][tile][ci] = (B^T d B)[pos]      d: alpha x alpha input
                                                             vectors over channels
    alpha^2 GEMMs      M[pos][panel][tile][NR] = V[pos] @ U[pos]   (U: the filters,
                                                             transformed and packed at
                                                             compile time)
    output transform   Y = A^T M A, then the group's epilogue per output pixel

The GEMMs run on the GEMM micro-kernel (tiles broadcast, filter panels
loaded). The transforms are unrolled from the matrices with their constant
coefficients: zeros skipped, +-1 as adds. Tasks are (chunk of tiles, group
of output panels); with a few large chunks the panels are split so every
thread has work.

Against the direct (indirect-GEMM) kernel it trades multiplies for
transform work and a larger filter operand (alpha^2 / 9 times the weights:
4x at F(4, 3)), so it wins on layers with many pixels per weight - the
early and middle layers of ResNets - and loses where streaming the weights
dominates (batch-1 7x7 layers with 512 channels). The tuner measures both;
the default picks by that ratio.
"""

from __future__ import annotations

import math

import torch

from ...kernels import winograd
from ...kernels.spec import KernelSpec
from . import gemm
from .common import SIGNATURE, declarations, thread_scratch, thread_workspace
from .gemm import microkernel, pack_panels

SCRATCH_BYTES = 384 * 1024  # V and M of one chunk, per thread (L2: 1 MB)
TILE_SIZES = (2, 4)


def applicable(geo: dict) -> bool:
    return (
        geo["kh"] == geo["kw"] == 3
        and geo["sh"] == geo["sw"] == 1
        and geo["dh"] == geo["dw"] == 1
        and geo["g"] == 1
        and geo["xsc"] == 1
    )


# F(4, 3)'s 36 transformed filters per image of the batch. Inside a network
# a layer's filters come from memory, not cache (ResNet-50: 100 MB of weights),
# so beyond this F(2, 3)'s 16 filters win although F(4, 3) is faster hot.
FILTERS_F4_PER_IMAGE = 4 << 20
STREAM_FILTERS_ABOVE = 1 << 20  # transformed filters that stream (see render): more than stay in L2 across calls


def default_m(geo: dict) -> int:
    """F(4, 3) (2.25 multiplies per output against F(2, 3)'s 4) unless its
    tiles would compute much padding or its 36 transformed filters are more
    than FILTERS_F4_PER_IMAGE per image. Measured inside ResNet-18/50 at
    batch 1 (us per layer, F(4, 3) / F(2, 3); hot in brackets): 128 @28
    (2.4 MB of F(4, 3) filters) 241-260 / 296-351 (192 / 272), 256 @14
    (9.4 MB) 450-574 / 317-446 (280-326 / 293-309); at batch 8 256 @14 is
    1882-1947 / 2127-2194 and 512 @7 (38 MB) 3.5 / 2.6 ms."""
    waste4 = math.ceil(geo["oh"] / 4) * math.ceil(geo["ow"] / 4) * 16 / (geo["oh"] * geo["ow"])
    filters4 = 4 * 36 * geo["cin"] * geo["cout"]
    return 4 if waste4 < 1.35 and filters4 <= FILTERS_F4_PER_IMAGE * geo["n"] else 2


def preferred(geo: dict) -> bool:
    """Default choice over the direct kernel: channels enough for the GEMMs,
    and pixels enough per weight that reading the larger transformed
    filters does not dominate. Measured on ResNet's layers (2 threads,
    direct / Winograd ms): 64 @56 0.49 / 0.19, 128 @28 0.51 / 0.19, 256 @14
    0.47 / 0.30, 512 @7 0.53 / 0.53 at batch 1 and 3.75 / 2.66 at batch 8."""
    pixels = geo["n"] * geo["oh"] * geo["ow"]
    return geo["cin"] >= 16 and geo["cout"] >= 16 and 4 * pixels >= max(geo["cin"], geo["cout"])


def _sizes(geo: dict, params: dict) -> dict:
    m = params["m"]
    alpha = m + 2
    mr, nv = params["tile"]
    vl = params["vl"]
    nr = nv * vl
    cinp = math.ceil(geo["cin"] / vl) * vl
    panels = math.ceil(geo["cout"] / nr)
    th, tw = math.ceil(geo["oh"] / m), math.ceil(geo["ow"] / m)
    tiles = geo["n"] * th * tw
    per_tile = 4 * alpha * alpha * (cinp + panels * nr)
    max_rows = params.get("chunk") or max(1, SCRATCH_BYTES // (per_tile * mr))
    max_rows = min(max_rows, math.ceil(tiles / mr))
    return {
        "m": m, "alpha": alpha, "a2": alpha * alpha, "mr": mr, "nv": nv, "nr": nr, "cinp": cinp,
        "panels": panels, "th": th, "tw": tw, "tiles": tiles, "rows": math.ceil(tiles / mr),
        "max_rows": max_rows, "tbp": max_rows * mr,
    }  # fmt: skip


def _scratch_floats(s: dict) -> int:
    return s["a2"] * s["tbp"] * (s["cinp"] + s["panels"] * s["nr"])


def workspace_bytes(geo: dict, params: dict, nthreads: int) -> int:
    return thread_workspace(nthreads, 4 * _scratch_floats(_sizes(geo, params)) + 128)


def prepare_weights(weight: torch.Tensor, geo: dict, params: dict) -> torch.Tensor:
    """U as [pos][panel][Cin][NR]: each position's filters in the GEMM's panels."""
    s = _sizes(geo, params)
    u = winograd.transform_filters(weight.float(), s["m"]).reshape(s["a2"], geo["cin"], geo["cout"])
    return torch.stack([pack_panels(u[p], s["nr"]) for p in range(s["a2"])]).contiguous()


def _combine(coeffs, terms: list[str]) -> str:
    """sum c_j * terms[j] as a vector expression, adds for +-1, zeros skipped."""
    expr = None
    for c, t in zip(coeffs, terms):
        if c == 0:
            continue
        lit = f"vset1({float(c)!r}f)"
        if expr is None:
            expr = t if c == 1 else f"vneg({t})" if c == -1 else f"vmul({lit}, {t})"
        elif c == 1:
            expr = f"vadd({expr}, {t})"
        elif c == -1:
            expr = f"vsub({expr}, {t})"
        else:
            expr = f"vfma({lit}, {t}, {expr})"
    return expr or "vzero()"


def _transform_2d(mat, src: str, dst: str, n_in: int) -> list[str]:
    """dst = mat @ src @ mat^T over n_in x n_in vectors ``src{i}_{j}``."""
    rows = len(mat)
    lines = []
    for i in range(rows):  # columns first: t[i][b] = sum_a mat[i][a] src[a][b]
        for b in range(n_in):
            lines.append(f"const vf {dst}t{i}_{b} = {_combine(mat[i], [f'{src}{a}_{b}' for a in range(n_in)])};")
    for i in range(rows):
        for k in range(rows):
            lines.append(f"const vf {dst}{i}_{k} = {_combine(mat[k], [f'{dst}t{i}_{b}' for b in range(n_in)])};")
    return lines


def render(spec: KernelSpec, name: str, vl: int, params: dict, geo: dict, epilogue: tuple) -> str:
    s = _sizes(geo, params)
    m, alpha, a2, mr, nv, nr = s["m"], s["alpha"], s["a2"], s["mr"], s["nv"], s["nr"]
    cin, cout, cinp, panels, tbp = geo["cin"], geo["cout"], s["cinp"], s["panels"], s["tbp"]
    a_t, _, b_t = winograd.matrices(m)
    x_i, w_i = spec.attrs["input"], spec.attrs["weight"]
    full, part = epilogue
    v_floats = a2 * tbp * cinp
    scratch = 4 * _scratch_floats(s) + 128

    loads = []
    for a in range(alpha):
        for b in range(alpha):
            ok = f"oky{a} && okx{b}"
            loads.append(f"const vf d{a}_{b} = {ok} ? LOAD(img + {a * geo['xsh']}L + {b * geo['xsw']}L) : vzero();")
    in_xf = _transform_2d(b_t, "d", "v", alpha)
    in_stores = [
        f"vstore(dst + {(i * alpha + k) * tbp * cinp}L, v{i}_{k});" for i in range(alpha) for k in range(alpha)
    ]
    in_body = "\n".join("      " + x for x in loads + in_xf + in_stores)
    mloads = [
        f"const vf q{a}_{b} = vload(src + {(a * alpha + b) * panels * tbp * nr}L);"
        for a in range(alpha)
        for b in range(alpha)
    ]
    out_xf = _transform_2d(a_t, "q", "y", alpha)
    out_body = "\n".join("      " + x for x in mloads + out_xf)
    outs = []
    for a in range(m):
        for b in range(m):
            outs.append(
                f"if (oy0 + {a} < {geo['oh']}L && ox0 + {b} < {geo['ow']}L) {{\n"
                f"        const long pix = pix0 + {a * geo['ow'] + b}L; const vf acc = y{a}_{b};\n"
                f"        if (co + {vl} <= {cout}L) {{\n"
                + "\n".join("          " + x for x in full)
                + "\n        } else {\n          const int rem = (int)("
                + f"{cout}L - co);\n"
                + "\n".join("          " + x for x in part)
                + "\n        }\n      }"
            )
    out_stores = "\n      ".join(outs)
    # each (position, panel) block of transformed filters streams the next one
    # while its row tiles run: deep layers read them from memory (ResNet-50's
    # 256 @14 layers: 714-750 -> 669-708 us in the model, 505-532 hot)
    stream = gemm.STREAM_OPERANDS and 4 * a2 * cin * panels * nr > STREAM_FILTERS_ABOVE
    ukr = microkernel(f"{name}_ukr", mr, nv, vl, "lda", "1", 1 << 30, stream=stream)
    pf_setup, pf_of = "", ""
    if stream:
        pf_setup = f"""
          const float* FC_RESTRICT nb = p + 1 < p1 ? bp + {cin * nr}L
            : pos + 1 < {a2}L ? upack + ((pos + 1) * {panels}L + p0) * {cin * nr}L : bp;
          const long rate = fc_stream_rate({-(-cin * nr // 16)}L, nrows * {cin}L);"""
        pf_of = f", fc_stream_at(nb, r, {cin}L, rate), rate"

    return f"""
{ukr}

/* input transform of tiles [t0, t0 + count) into V[pos][tile][ci]; tiles past the end are zeros */
static void {name}_input(const float* FC_RESTRICT x, float* FC_RESTRICT vbuf, long t0, long count) {{
  for (long j = 0; j < count; ++j) {{
    const long t = t0 + j;
    const long nimg = t / {s["th"] * s["tw"]}L, ty = (t / {s["tw"]}L) % {s["th"]}L, tx = t % {s["tw"]}L;
    const long iy0 = ty * {m}L - {geo["pt"]}L, ix0 = tx * {m}L - {geo["pl"]}L;
    const int live = t < {s["tiles"]}L;
{chr(10).join(f"    const int oky{a} = live && iy0 + {a} >= 0 && iy0 + {a} < {geo['h']}L;" for a in range(alpha))}
{chr(10).join(f"    const int okx{b} = ix0 + {b} >= 0 && ix0 + {b} < {geo['w']}L;" for b in range(alpha))}
    const float* FC_RESTRICT base = x + nimg * {geo["xsn"]}L + iy0 * {geo["xsh"]}L + ix0 * {geo["xsw"]}L;
    for (long c = 0; c < {cinp}L; c += {vl}) {{
      const float* FC_RESTRICT img = base + c;
      float* FC_RESTRICT dst = vbuf + j * {cinp}L + c;
      const int rem = c + {vl} <= {cin}L ? {vl} : (int)({cin}L - c);
#define LOAD(p) (rem == {vl} ? vload(p) : vloadn(p, rem))
{in_body}
#undef LOAD
    }}
  }}
}}

/* output transform of tiles [t0, t0 + count), panels [p0, p1), and the epilogue */
static void {name}_output(void* const* args, const float* FC_RESTRICT mbuf, long t0, long count, long p0, long p1) {{
{declarations(spec, in_entry=False)}
  for (long j = 0; j < count; ++j) {{
    const long t = t0 + j;
    if (t >= {s["tiles"]}L) break;
    const long nimg = t / {s["th"] * s["tw"]}L, ty = (t / {s["tw"]}L) % {s["th"]}L, tx = t % {s["tw"]}L;
    const long oy0 = ty * {m}L, ox0 = tx * {m}L;
    const long pix0 = (nimg * {geo["oh"]}L + oy0) * {geo["ow"]}L + ox0;
    for (long p = p0; p < p1; ++p)
      for (long c = 0; c < {nr}L; c += {vl}) {{
        const long co = p * {nr}L + c;
        if (co >= {cout}L) break;
        const float* FC_RESTRICT src = mbuf + (p * {tbp}L + j) * {nr}L + c;
{out_body}
      {out_stores}
      }}
  }}
}}

{SIGNATURE.format(name=name)} {{
  const float* FC_RESTRICT x = (const float*)args[{x_i}];
  const float* FC_RESTRICT upack = (const float*)args[{w_i}];
  char* ws = (char*)args[{len(spec.operands) + len(spec.outputs)}];
  /* chunks of row tiles: at most {s["max_rows"]} (V and M in L2), a multiple of the threads, sizes within one
     row tile of each other; panel groups when there are fewer row tiles than threads */
  long chunks = ({s["rows"]}L + {s["max_rows"] - 1}L) / {s["max_rows"]}L;
  chunks = (chunks + nthreads - 1) / nthreads * nthreads;
  if (chunks > {s["rows"]}L) chunks = {s["rows"]}L;
  long pgroups = (nthreads + chunks - 1) / chunks;
  if (pgroups > {panels}L) pgroups = {panels}L;
  const long per_group = ({panels}L + pgroups - 1) / pgroups;
  #pragma omp parallel num_threads(nthreads) if (chunks * pgroups > 1)
  {{
#ifdef _OPENMP
    const int tid = omp_get_thread_num();
#else
    const int tid = 0;
#endif
    float* FC_RESTRICT vbuf = {thread_scratch("tid", scratch)};
    float* FC_RESTRICT mbuf = vbuf + {v_floats}L;
    #pragma omp for schedule(static)
    for (long task = 0; task < chunks * pgroups; ++task) {{
      const long ch = task / pgroups, pg = task % pgroups;
      const long r0 = ch * {s["rows"]}L / chunks, nrows = (ch + 1) * {s["rows"]}L / chunks - r0;
      const long t0 = r0 * {mr}L, count = nrows * {mr}L;
      const long p0 = pg * per_group, p1 = p0 + per_group < {panels}L ? p0 + per_group : {panels}L;
      {name}_input(x, vbuf, t0, count);
      for (long pos = 0; pos < {a2}L; ++pos)
        for (long p = p0; p < p1; ++p) {{
          const float* FC_RESTRICT bp = upack + (pos * {panels}L + p) * {cin * nr}L;
          float* FC_RESTRICT mout = mbuf + (pos * {panels}L + p) * {tbp * nr}L;{pf_setup}
          for (long r = 0; r < nrows; ++r)
            {name}_ukr({cin}L, vbuf + (pos * {tbp}L + r * {mr}L) * {cinp}L, {cinp}L, bp, mout + r * {mr * nr}L{pf_of});
        }}
      {name}_output(args, mbuf, t0, count, p0, p1);
    }}
  }}
}}
"""
