"""2-d convolution kernels (NCHW), with the fused epilogue of their group.

* General convolution as an implicit GEMM: per task (image, group, block
  of output pixels, chunk of output channels) the block's im2col columns
  are packed straight into NR-wide panels in per-thread scratch, and the
  weights - packed once at compile time into MR-row panels - are the
  broadcast operand of the same register-tiled micro-kernel the GEMM uses.
  A 1x1 stride-1 convolution packs by plain copies.
* Channels-last layers (the graph's default layout) by the indirect
  convolution algorithm (`conv_indirect.py`) or, for 3x3 stride-1 ones,
  Winograd F(m, 3) (`conv_winograd.py`); the tuner measures both.
* Depthwise convolution directly: per (image, channel) the zero-padded
  input plane is split by the horizontal stride into phase planes in
  scratch, so every tap of every output vector is one contiguous load.
"""

from __future__ import annotations

import math

import torch

from ...kernels.spec import KernelSpec, conv_geometry
from . import conv_indirect, conv_winograd, gemm
from .common import (
    DEPTHWISE_PIXELS,
    SIGNATURE,
    declarations,
    depthwise_chains,
    depthwise_filter_row,
    depthwise_finish,
    depthwise_pixels,
    sum_chains,
    thread_scratch,
    thread_workspace,
    vload,
    vstore,
)
from .dialects import Dialect
from .gemm import epilogue_stores, microkernel, pack_panels, tile_columns

B_BLOCK_FLOATS = 1 << 15  # packed im2col block: 128 KiB, sized for L2


def is_depthwise(spec: KernelSpec) -> bool:
    geo = conv_geometry(spec)
    return geo["cin_g"] == 1 and geo["cout_g"] == 1


def _pixels_linear(strides: tuple[int, ...], geo: dict) -> bool:
    """(N, OH, OW) of a [N, C, OH, OW] layout walk as one pixel dim."""
    sn, _, sh, sw = strides
    return (geo["oh"] == 1 or sh == sw * geo["ow"]) and (geo["n"] == 1 or sn == sh * geo["oh"])


def is_nhwc(spec: KernelSpec) -> bool:
    """Input and outputs channels-last (the channel stride is 1)."""
    geo = conv_geometry(spec)
    if geo["xsc"] != 1 and geo["cin"] > 1:
        return False
    return nhwc_outputs(spec)


def copies_input(spec: KernelSpec) -> bool:
    """Channels-last outputs from an input in another layout (the network's
    NCHW input, its layout change folded into the convolution): the
    indirect kernel with row segments, which reads the input through its
    own zero-padded channels-last copy."""
    geo = conv_geometry(spec)
    return not is_nhwc(spec) and nhwc_outputs(spec) and geo["g"] == 1 and geo["dw"] == 1 and not _runtime_weights(spec)


def pooled(spec: KernelSpec) -> bool:
    """Some output is averaged over the pixels in the kernel (pool_fusion)."""
    return any(o.pool for o in spec.outputs)


def nhwc_outputs(spec: KernelSpec) -> bool:
    geo = conv_geometry(spec)
    for o in spec.outputs:
        if o.pool:  # one value per (image, channel): no pixel layout
            continue
        strides = o.strides or torch.empty(o.shape, device="meta").stride()
        if (strides[1] != 1 and geo["cout"] > 1) or not _pixels_linear(tuple(strides), geo):
            return False
    return all(_pixels_linear(a.strides, geo) for a in spec.accesses)


def _runtime_weights(spec: KernelSpec) -> bool:
    return not spec.operands[spec.attrs["weight"]].constant


def _algorithms(spec: KernelSpec) -> tuple[str, ...]:
    geo = conv_geometry(spec)
    if pooled(spec):
        # only the GEMM kernel's channel-major schedule gives each task whole
        # channels over all pixels: race-free, deterministic sums
        if is_nhwc(spec) and geo["g"] == 1 and _nhwc_direct(geo) and not _runtime_weights(spec):
            return ("nhwc_gemm",)
        raise NotImplementedError("a pooled convolution needs a channels-last 1x1 stride-1 layer with constant weights")
    if copies_input(spec):
        return ("nhwc_indirect",)
    if is_nhwc(spec) and not _runtime_weights(spec):
        if is_depthwise(spec):
            return ("nhwc_depthwise", "depthwise")
        if geo["g"] == 1 and _nhwc_direct(geo):  # a plain GEMM over the input in place
            return ("nhwc_gemm", "nhwc_indirect", "im2col")
        if geo["g"] == 1 and conv_winograd.applicable(geo):
            if conv_winograd.preferred(geo):
                return ("nhwc_winograd", "nhwc_indirect", "nhwc_gemm", "im2col")
            return ("nhwc_indirect", "nhwc_winograd", "nhwc_gemm", "im2col")
        if geo["g"] == 1:
            return ("nhwc_indirect", "nhwc_gemm", "im2col")
    return ("depthwise",) if is_depthwise(spec) else ("im2col",)


def _tiles(dialect: Dialect) -> tuple:
    regs = dialect.vector_registers
    return tuple((mr, nv) for mr in (4, 6, 8, 12, 14) for nv in (1, 2, 3, 4) if mr * nv + nv + 1 <= regs)


def tunables(spec: KernelSpec, dialect: Dialect) -> dict[str, tuple]:
    algos = _algorithms(spec)
    out = {"algo": algos}
    if any(a in ("im2col", "nhwc_gemm", "nhwc_indirect", "nhwc_winograd") for a in algos):
        out["tile"] = _tiles(dialect)
    if "nhwc_winograd" in algos:
        out["m"] = conv_winograd.TILE_SIZES
    if "nhwc_depthwise" in algos:
        out["pixels"] = DEPTHWISE_PIXELS
    if "nhwc_indirect" in algos:
        out["segment"] = ("rows",) if copies_input(spec) else conv_indirect.segment_choices(conv_geometry(spec))
        out["schedule"] = ("pixel_major", "channel_major")
        out["kc"] = (64, 128, 256, 512, 1 << 30)
    return out


def default_params(spec: KernelSpec, dialect: Dialect) -> dict:
    geo = conv_geometry(spec)
    algo = _algorithms(spec)[0]
    params = {"algo": algo, "vl": dialect.vl}
    if algo == "nhwc_depthwise":
        return {**params, "pixels": depthwise_pixels(geo["ow"], geo["kw"], dialect.vector_registers)}
    if algo == "depthwise":
        return params
    mr, nv = {"avx512": (6, 4), "avx2": (6, 2), "neon": (6, 4), "scalar": (4, 4)}[dialect.name]
    nhwc = algo in ("nhwc_gemm", "nhwc_indirect", "nhwc_winograd")
    vector_extent = geo["cout"] if nhwc else geo["P"]
    row_extent = geo["n"] * geo["P"] if nhwc else geo["cout_g"]
    nv = max(1, min(nv, math.ceil(vector_extent / dialect.vl)))
    mr = max(1, min(mr, row_extent))
    if nhwc:
        params["schedule"] = "channel_major" if pooled(spec) else nhwc_schedule(geo)
    if algo == "nhwc_gemm" and dialect.name == "avx512" and skinny_pointwise(geo):
        params["schedule"], mr, nv = "channel_major", min(14, row_extent), 1
    if algo == "nhwc_indirect":
        params["segment"] = "rows" if copies_input(spec) else conv_indirect.default_segment(geo)
    if algo == "nhwc_gemm":
        params["kc"] = 256
    if algo == "nhwc_winograd":
        params["m"] = conv_winograd.default_m(geo)
    return {**params, "tile": (mr, nv)}


SKINNY_PIXELS = 64  # output pixels: a 7x7 map at batch 1
SKINNY_WEIGHTS = 2 << 20


def skinny_pointwise(geo: dict) -> bool:
    """A 1x1 layer with a few dozen pixels and weights that two threads'
    L2s hold, which runs fastest as tasks over one-vector weight panels, 14
    pixels a tile: more tasks for the threads, every weight read once. The
    tuner measured MobileNetV2's 7x7 layers on a Zen 4 (AVX-512) at
    1.19-1.33x pixel-major 6 x 64 tiles; its last two (1.2 and 1.6 MB of
    weights) ran 16 us faster in the model. Larger weights are left as they
    were: ResNet-50's 4 MB layers at 7x7 made the whole model 1.2% slower."""
    small = geo["n"] * geo["P"] <= SKINNY_PIXELS and 4 * geo["K"] * geo["cout"] <= SKINNY_WEIGHTS
    return geo["kh"] == geo["kw"] == 1 and small


def _block_panels(geo: dict, nr: int) -> int:
    return max(1, min(math.ceil(geo["P"] / nr), B_BLOCK_FLOATS // max(1, geo["K"] * nr)))


def _check_pixels(spec: KernelSpec, geo: dict) -> None:
    for acc in spec.accesses:
        s_oh, s_ow = acc.strides[2], acc.strides[3]
        if s_oh != s_ow * geo["ow"]:
            raise NotImplementedError("an epilogue operand is not laid out row-major over the output pixels")


def workspace_bytes(spec: KernelSpec, params: dict, nthreads: int) -> int:
    geo = conv_geometry(spec)
    vl = params["vl"]
    if params["algo"] == "nhwc_depthwise":
        return 64
    if params["algo"] == "nhwc_indirect":
        return conv_indirect.workspace_bytes(geo, params, nthreads)
    if params["algo"] == "nhwc_winograd":
        return conv_winograd.workspace_bytes(geo, params, nthreads)
    if params["algo"] == "nhwc_gemm":
        mr, _ = params["tile"]
        if params.get("schedule") == "channel_major":
            return 0 if _nhwc_direct(geo) else 4 * math.ceil(geo["n"] * geo["P"] / mr) * mr * geo["K"] + 128
        return thread_workspace(nthreads, 4 * mr * geo["K"] + 128)
    if params["algo"] == "depthwise":
        hp = geo["h"] + geo["pt"] + geo["pb"]
        wq = math.ceil((geo["w"] + geo["pl"] + geo["pr"]) / geo["sw"]) + 2 * vl + geo["kw"] * geo["dw"]
        per_thread = geo["sw"] * hp * wq
    else:
        mr, nv = params["tile"]
        nr = nv * vl
        per_thread = geo["K"] * nr * _block_panels(geo, nr)
        if _runtime_weights(spec):  # weights packed per call, shared by the threads
            return _weight_pack_bytes(geo, mr) + thread_workspace(nthreads, 4 * per_thread + 64)
    return thread_workspace(nthreads, 4 * per_thread + 64)


def _weight_pack_bytes(geo: dict, mr: int) -> int:
    return 4 * geo["g"] * math.ceil(geo["cout_g"] / mr) * mr * geo["K"] + 64


def prepare(spec: KernelSpec, params: dict, constants: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    out = dict(constants)
    w_i = spec.attrs["weight"]
    geo = conv_geometry(spec)
    if w_i not in constants:  # runtime weights: the kernel packs them per call
        return out
    if params["algo"] == "depthwise":  # read in place, with its own strides
        out[w_i] = constants[w_i].float()
        return out
    if params["algo"] == "nhwc_depthwise":  # [taps][C]: one channel vector per tap
        out[w_i] = constants[w_i].float().reshape(geo["cout"], geo["kh"] * geo["kw"]).t().contiguous()
        return out
    if params["algo"] == "nhwc_winograd":  # transformed filters, [pos][panel][Cin][NR]
        out[w_i] = conv_winograd.prepare_weights(constants[w_i], geo, params)
        return out
    if params["algo"] in ("nhwc_gemm", "nhwc_indirect"):  # [K = (ky, kx, ci)][Cout] in NR-wide panels
        _, nv = params["tile"]
        w = constants[w_i].float().permute(2, 3, 1, 0).reshape(geo["K"], geo["cout"])
        out[w_i] = pack_panels(w, nv * params["vl"])
        return out
    mr, _ = params["tile"]
    w = constants[w_i].float().reshape(geo["g"], geo["cout_g"], geo["K"])
    mt = math.ceil(geo["cout_g"] / mr)
    padded = torch.zeros(geo["g"], mt * mr, geo["K"])
    padded[:, : geo["cout_g"]] = w
    # [g][m tile][K][MR]: for each k, the MR weights of the tile's rows side by side
    out[w_i] = padded.view(geo["g"], mt, mr, geo["K"]).permute(0, 1, 3, 2).contiguous()
    return out


def render(spec: KernelSpec, name: str, vl: int, params: dict) -> str:
    if any(o.dtype != "f32" for o in spec.operands) or any(o.dtype != "f32" for o in spec.outputs):
        raise NotImplementedError("bfloat16 convolution kernels are not generated yet")
    geo = conv_geometry(spec)
    if copies_input(spec) and (params["algo"], params.get("segment")) != ("nhwc_indirect", "rows"):
        raise NotImplementedError(
            "a convolution from a non-channels-last input to channels-last outputs reads the input through "
            f"the row-segment copy: algo 'nhwc_indirect' with segment 'rows', not {params['algo']!r}"
        )
    if params["algo"] == "nhwc_indirect":
        return conv_indirect.render(spec, name, vl, params, geo, _nhwc_epilogue(spec, geo))
    if params["algo"] == "nhwc_winograd":
        if not conv_winograd.applicable(geo):
            raise NotImplementedError("Winograd convolution needs a 3x3, stride-1, undilated, ungrouped layer")
        return conv_winograd.render(spec, name, vl, params, geo, _nhwc_epilogue(spec, geo))
    if pooled(spec) and (params["algo"], params.get("schedule")) != ("nhwc_gemm", "channel_major"):
        raise NotImplementedError(
            "a pooled convolution runs as algo 'nhwc_gemm' with schedule 'channel_major', "
            f"not {params['algo']!r} / {params.get('schedule')!r}"
        )
    if params["algo"] == "nhwc_gemm":
        return _render_nhwc_gemm(spec, name, vl, params, geo)
    if params["algo"] == "nhwc_depthwise":
        return _render_nhwc_depthwise(spec, name, vl, params, geo)
    _check_pixels(spec, geo)
    if params["algo"] == "depthwise":
        return _render_depthwise(spec, name, vl, params, geo)
    return _render_im2col(spec, name, vl, params, geo)


def _store(spec: KernelSpec, geo: dict):
    def store(j: int, o, value: str, valid: str | None) -> str:
        if o.strides is None:
            ptr = f"out{j} + nimg * {geo['cout'] * geo['P']}L + co * {geo['P']}L + pix"
            return vstore(o.dtype, ptr, value, valid)
        sn, sc, sh, sw = o.strides
        if sh != sw * geo["ow"] and geo["oh"] > 1:
            raise NotImplementedError("output layout does not walk the pixels as one dim")
        ptr = f"out{j} + nimg * {sn}L + co * {sc}L + pix * {sw}L"
        return f"vscatter({ptr}, {sw}L, {value}, {valid or 'VL'});"

    return store


def _epilogue(spec: KernelSpec, geo: dict) -> tuple[list[str], list[str]]:
    """Epilogue over (image, channel, pixel): OH and OW walk as one dim."""
    # the access strides are over (N, C, OH, OW); with OH = OW-stride * OW checked,
    # (nimg, co, pix) indexes them with the OW stride for pix.
    import dataclasses

    flat = dataclasses.replace(
        spec,
        accesses=[dataclasses.replace(a, strides=(a.strides[0], a.strides[1], a.strides[3])) for a in spec.accesses],
    )
    full = epilogue_stores(flat, ["nimg", "co"], "pix", None, _store(spec, geo))
    part = epilogue_stores(flat, ["nimg", "co"], "pix", "rem", _store(spec, geo))
    return full, part


def _render_im2col(spec: KernelSpec, name: str, vl: int, params: dict, geo: dict) -> str:
    mr, nv = params["tile"]
    nr = nv * vl
    k = geo["K"]
    npan = _block_panels(geo, nr)
    pblock = npan * nr
    pblocks = math.ceil(geo["P"] / pblock)
    mtiles = math.ceil(geo["cout_g"] / mr)
    x_i, w_i = spec.attrs["input"], spec.attrs["weight"]
    pointwise = (
        geo["kh"] == geo["kw"] == 1
        and geo["sh"] == geo["sw"] == 1
        and not any(geo[p] for p in ("pt", "pl", "pb", "pr"))
        and (geo["xsw"] == 1 and geo["xsh"] == geo["w"] or geo["h"] * geo["w"] == 1)
    )
    if pointwise:
        pack_row = f"""
          const float* FC_RESTRICT src = xin + kk * {geo["xsc"]}L + p0;
          long l = 0;
          for (; l + {vl} <= {nr}L && p0 + l + {vl} <= {geo["P"]}L; l += {vl}) vstore(dst + l, vload(src + l));
          for (; l < {nr}L; ++l) dst[l] = p0 + l < {geo["P"]}L ? src[l] : 0.0f;"""
    else:
        pack_row = f"""
          const long ci = kk / {geo["kh"] * geo["kw"]}L, rr = kk % {geo["kh"] * geo["kw"]}L;
          const long ky = rr / {geo["kw"]}L, kx = rr % {geo["kw"]}L;
          const float* FC_RESTRICT plane = xin + ci * {geo["xsc"]}L;
          long oy = p0 / {geo["ow"]}L, ox = p0 % {geo["ow"]}L;
          for (long l = 0; l < {nr}L; ++l) {{
            float v = 0.0f;
            if (p0 + l < {geo["P"]}L) {{
              const long iy = oy * {geo["sh"]}L - {geo["pt"]}L + ky * {geo["dh"]}L;
              const long ix = ox * {geo["sw"]}L - {geo["pl"]}L + kx * {geo["dw"]}L;
              if (iy >= 0 && iy < {geo["h"]}L && ix >= 0 && ix < {geo["w"]}L) v = plane[iy * {geo["xsh"]}L + ix * {geo["xsw"]}L];
            }}
            dst[l] = v;
            if (++ox == {geo["ow"]}L) {{ ox = 0; ++oy; }}
          }}"""
    full, part = _epilogue(spec, geo)
    ws_per_thread = k * pblock + 16
    if _runtime_weights(spec):
        ws0, ws1, ws2, ws3 = spec.operands[w_i].strides
        wbytes = _weight_pack_bytes(geo, mr)
        wsetup = f"""  const float* FC_RESTRICT wraw = (const float*)args[{w_i}];
  float* FC_RESTRICT wpack_rt = (float*)(((uintptr_t)ws + 63) & ~(uintptr_t)63);
  const float* FC_RESTRICT wpack = wpack_rt;
  ws += {wbytes};"""
        wpack_loop = f"""    #pragma omp for collapse(2) schedule(static)
    for (long grp = 0; grp < {geo["g"]}L; ++grp)
      for (long t = 0; t < {mtiles}L; ++t)
        for (long kk = 0; kk < {k}L; ++kk) {{
          const long ci = kk / {geo["kh"] * geo["kw"]}L, rr = kk % {geo["kh"] * geo["kw"]}L;
          const long ky = rr / {geo["kw"]}L, kx = rr % {geo["kw"]}L;
          for (long i = 0; i < {mr}L; ++i) {{
            const long co = t * {mr}L + i;
            wpack_rt[((grp * {mtiles}L + t) * {k}L + kk) * {mr}L + i] = co < {geo["cout_g"]}L
              ? wraw[(grp * {geo["cout_g"]}L + co) * {ws0}L + ci * {ws1}L + ky * {ws2}L + kx * {ws3}L] : 0.0f;
          }}
        }}"""
    else:
        wsetup = f"  const float* FC_RESTRICT wpack = (const float*)args[{w_i}];"
        wpack_loop = ""
    return f"""
{microkernel(f"{name}_ukr", mr, nv, vl, "1", str(mr))}
static void {name}_tile(void* const* args, const float* FC_RESTRICT a, const float* FC_RESTRICT bp,
                        long nimg, long co0, long rows, long pix0) {{
{declarations(spec, in_entry=False)}
  float tile[{mr * nr}] __attribute__((aligned(64)));
  {name}_ukr({k}L, a, 0, bp, tile);
  for (long i = 0; i < rows; ++i) {{
    const long co = co0 + i;
    for (long c = 0; c < {nr}; c += {vl}) {{
      const long pix = pix0 + c;
      const vf acc = vload(tile + i * {nr} + c);
      if (pix + {vl} <= {geo["P"]}L) {{
{chr(10).join("        " + x for x in full)}
      }} else if (pix < {geo["P"]}L) {{
        const int rem = (int)({geo["P"]}L - pix);
{chr(10).join("        " + x for x in part)}
      }}
    }}
  }}
}}

{SIGNATURE.format(name=name)} {{
  const float* FC_RESTRICT x = (const float*)args[{x_i}];
  char* ws = (char*)args[{len(spec.operands) + len(spec.outputs)}];
{wsetup}
  const long tasks0 = {geo["n"] * geo["g"] * pblocks}L;
  const long mchunks = fc_task_chunks(tasks0, {mtiles}L, nthreads);
  #pragma omp parallel num_threads(nthreads) if (tasks0 * mchunks > 1)
  {{
#ifdef _OPENMP
    const int tid = omp_get_thread_num();
#else
    const int tid = 0;
#endif
    float* FC_RESTRICT bblk = {thread_scratch("tid", 4 * ws_per_thread)};
{wpack_loop}
    #pragma omp for schedule(static)
    for (long task = 0; task < tasks0 * mchunks; ++task) {{
      const long mc = task % mchunks, rest = task / mchunks;
      const long pb = rest % {pblocks}L, ng = rest / {pblocks}L;
      const long grp = ng % {geo["g"]}L, nimg = ng / {geo["g"]}L;
      const float* FC_RESTRICT xin = x + nimg * {geo["xsn"]}L + grp * {geo["cin_g"] * geo["xsc"]}L;
      for (long pp = 0; pp < {npan}L; ++pp) {{
        const long p0 = pb * {pblock}L + pp * {nr}L;
        for (long kk = 0; kk < {k}L; ++kk) {{
          float* FC_RESTRICT dst = bblk + (pp * {k}L + kk) * {nr}L;
          {pack_row}
        }}
      }}
      const long t_end = (mc + 1) * {mtiles}L / mchunks;
      for (long t = mc * {mtiles}L / mchunks; t < t_end; ++t) {{
        const long m0 = t * {mr}L;
        const long rows = {geo["cout_g"]}L - m0 < {mr}L ? {geo["cout_g"]}L - m0 : {mr}L;
        const float* FC_RESTRICT apanel = wpack + (grp * {mtiles}L + t) * {k * mr}L;
        for (long pp = 0; pp < {npan}L; ++pp) {{
          const long p0 = pb * {pblock}L + pp * {nr}L;
          if (p0 >= {geo["P"]}L) break;
          {name}_tile(args, apanel, bblk + pp * {k * nr}L, nimg, grp * {geo["cout_g"]}L + m0, rows, p0);
        }}
      }}
    }}
  }}
}}
"""


def _render_depthwise(spec: KernelSpec, name: str, vl: int, params: dict, geo: dict) -> str:
    wstr = spec.operands[spec.attrs["weight"]].strides
    hp = geo["h"] + geo["pt"] + geo["pb"]
    wq = math.ceil((geo["w"] + geo["pl"] + geo["pr"]) / geo["sw"]) + 2 * vl + geo["kw"] * geo["dw"]
    plane = geo["sw"] * hp * wq
    x_i, w_i = spec.attrs["input"], spec.attrs["weight"]
    taps = []
    for ky in range(geo["kh"]):
        for kx in range(geo["kw"]):
            q, off = divmod(kx * geo["dw"], geo["sw"])
            phase, shift = off, q  # column x = ox*sw + kx*dw -> phase (kx*dw) % sw, index ox + (kx*dw) // sw
            taps.append(
                f"acc = vfma(vset1(wc[{ky * wstr[2] + kx * wstr[3]}]), "
                f"vload(phases + {phase * hp * wq}L + (oy * {geo['sh']}L + {ky * geo['dh']}L) * {wq}L + ox + {shift}L), acc);"
            )
    full, part = _epilogue(spec, geo)
    return f"""
{SIGNATURE.format(name=name)} {{
{declarations(spec)}
  const float* FC_RESTRICT x = in{x_i};
  const float* FC_RESTRICT wts = in{w_i};
  #pragma omp parallel num_threads(nthreads) if ({geo["n"] * geo["cout"]}L > 1)
  {{
#ifdef _OPENMP
    const int tid = omp_get_thread_num();
#else
    const int tid = 0;
#endif
    float* FC_RESTRICT phases = {thread_scratch("tid", 4 * plane + 64)};
    #pragma omp for schedule(static)
    for (long task = 0; task < {geo["n"] * geo["cout"]}L; ++task) {{
      const long nimg = task / {geo["cout"]}L, co = task % {geo["cout"]}L;
      const float* FC_RESTRICT src = x + nimg * {geo["xsn"]}L + co * {geo["xsc"]}L;
      const float* FC_RESTRICT wc = wts + co * {geo["kh"] * geo["kw"]}L;
      memset(phases, 0, {4 * plane});
      for (long iy = 0; iy < {geo["h"]}L; ++iy)
        for (long ix = 0; ix < {geo["w"]}L; ++ix) {{
          const long px = ix + {geo["pl"]}L;
          phases[(px % {geo["sw"]}L) * {hp * wq}L + (iy + {geo["pt"]}L) * {wq}L + px / {geo["sw"]}L] = src[iy * {geo["xsh"]}L + ix * {geo["xsw"]}L];
        }}
      for (long oy = 0; oy < {geo["oh"]}L; ++oy)
        for (long ox = 0; ox < {geo["ow"]}L; ox += {vl}) {{
          vf acc = vzero();
{chr(10).join("          " + t for t in taps)}
          const long pix = oy * {geo["ow"]}L + ox;
          if (ox + {vl} <= {geo["ow"]}L) {{
{chr(10).join("            " + x for x in full)}
          }} else {{
            const int rem = (int)({geo["ow"]}L - ox);
{chr(10).join("            " + x for x in part)}
          }}
        }}
    }}
  }}
}}
"""


# -- channels-last (NHWC) kernels ------------------------------------------------------------------


def _nhwc_epilogue(spec: KernelSpec, geo: dict, ahead: int = 0) -> tuple[list[str], list[str]]:
    """Epilogue at (pixel over all images, output channel), vector along channels.
    ``ahead`` > 0: whole vectors also prefetch the residual's and the
    output's lines that many pixels on (the next pixel tile's)."""
    import dataclasses

    flat = dataclasses.replace(
        spec, accesses=[dataclasses.replace(a, strides=(a.strides[3], a.strides[1])) for a in spec.accesses]
    )

    def store(j: int, o, value: str, valid: str | None) -> str:
        strides = o.strides or torch.empty(o.shape, device="meta").stride()
        if o.pool:  # add into the channel sums of the pixel's image (see _pool_sums)
            ptr = f"out{j} + (pix / {geo['P']}L) * {strides[0]}L + co"
            return vstore(o.dtype, ptr, f"vadd({vload(o.dtype, ptr, 1, valid)}, {value})", valid)
        ptr = f"out{j} + pix * {strides[3]}L + co"
        store = vstore(o.dtype, ptr, value, valid)
        if ahead and valid is None and o.dtype == "f32":
            return f"__builtin_prefetch({ptr} + {ahead * strides[3]}L, 1, 2); {store}"
        return store

    return (
        epilogue_stores(flat, ["pix"], "co", None, store, ahead),
        epilogue_stores(flat, ["pix"], "co", "rem", store),
    )


def _nhwc_direct(geo: dict) -> bool:
    """1x1, stride 1, no padding, dense NHWC input: the GEMM reads pixels in place."""
    return (
        geo["kh"] == geo["kw"] == 1
        and geo["sh"] == geo["sw"] == 1
        and not any(geo[p] for p in ("pt", "pl", "pb", "pr"))
        and _pixels_linear((geo["xsn"], geo["xsc"], geo["xsh"], geo["xsw"]), {**geo, "oh": geo["h"], "ow": geo["w"]})
    )


def nhwc_schedule(geo: dict) -> str:
    """pixel_major: tasks are pixel tiles sweeping all weights (weights small
    enough to stay in L2); channel_major: the activations are packed once and
    tasks are weight panels sweeping all pixels (deep layers: few pixels,
    megabytes of weights that should be read once)."""
    weights = 4 * geo["K"] * geo["cout"]
    acts = 4 * geo["K"] * geo["n"] * geo["P"]
    if weights > (1 << 20) and (acts <= (8 << 20) or _nhwc_direct(geo)):
        return "channel_major"
    # a megabyte of weights swept again by every pixel tile loads L2 more than
    # activations that stay in it swept once per panel (ResNet-50's 1 MB
    # layers at 14x14, batch 1: 1.02x the whole model; at batch 8 their 1.6-6.4
    # MB of activations keep them pixel-major: 0.97-0.98x otherwise)
    return "channel_major" if weights >= (1 << 20) and acts <= (1 << 20) else "pixel_major"


def _pack_rows(geo: dict, dst: str) -> str:
    """Copy the im2col rows of pixels [pix0, pix0 + rows) to ``dst`` ([rows][K])."""
    k, cin = geo["K"], geo["cin"]
    return f"""for (long i = 0; i < rows; ++i) {{
          const long p = pix0 + i, nimg = p / {geo["P"]}L, rest = p % {geo["P"]}L;
          const long oy = rest / {geo["ow"]}L, ox = rest % {geo["ow"]}L;
          for (long ky = 0; ky < {geo["kh"]}L; ++ky) {{
            const long iy = oy * {geo["sh"]}L - {geo["pt"]}L + ky * {geo["dh"]}L;
            for (long kx = 0; kx < {geo["kw"]}L; ++kx) {{
              const long ix = ox * {geo["sw"]}L - {geo["pl"]}L + kx * {geo["dw"]}L;
              float* FC_RESTRICT d = {dst} + i * {k}L + (ky * {geo["kw"]}L + kx) * {cin}L;
              if (iy < 0 || iy >= {geo["h"]}L || ix < 0 || ix >= {geo["w"]}L) {{ memset(d, 0, {4 * cin}); continue; }}
              memcpy(d, x + nimg * {geo["xsn"]}L + iy * {geo["xsh"]}L + ix * {geo["xsw"]}L, {4 * cin});
            }}
          }}
        }}"""


def _render_nhwc_gemm(spec: KernelSpec, name: str, vl: int, params: dict, geo: dict) -> str:
    mr, nv = params["tile"]
    nr = nv * vl
    k, cout = geo["K"], geo["cout"]
    pixels = geo["n"] * geo["P"]
    mtiles = math.ceil(pixels / mr)
    panels = math.ceil(cout / nr)
    x_i, w_i = spec.attrs["input"], spec.attrs["weight"]
    direct = _nhwc_direct(geo)
    schedule = params.get("schedule", "pixel_major")
    # While a task computes, it prefetches what it reads next. Channel-major:
    # the next weight panel - deep layers read megabytes of weights from
    # memory, and fetched on demand by the first pixel tile a panel arrives
    # at the memory's speed with little arithmetic to hide it (ResNet-50's
    # 512 -> 2048 layers at 7x7: 489-591 -> 395-506 us in the model, 326-339
    # hot). Pixel-major over a dense channels-last input: the next pixel
    # tile's rows, which the layer before left in L3 (ResNet-50's 256 -> 64
    # layers at 56x56: 515 -> 337-344 us)
    stream_rows = schedule != "channel_major" and direct and geo["xsw"] == k and gemm.STREAM_OPERANDS
    stream = (schedule == "channel_major" and gemm.STREAM_OPERANDS) or stream_rows
    # ... and its epilogue the next tile's residual and output lines (the
    # 64 -> 256 layers adding the residual at 56x56: 544-592 -> 440-485 us)
    full, part = _nhwc_epilogue(spec, geo, mr if stream_rows else 0)
    half = gemm.half_last_vector(geo["cout"], nv, vl)
    kc = params.get("kc", 256)
    kernels = [
        microkernel(f"{name}_ukr{r}", r, nv, vl, "lda", "1", kc, stream=stream, half_last=half)
        for r in range(1, mr + 1)
    ]
    pf_param, pf_arg = (gemm.STREAM_PARAMS, gemm.STREAM_ARGS) if stream else ("", "")
    finishing = ""
    if gemm.finishes_in_registers(full, k, kc):  # for panels of whole vectors
        finish = (declarations(spec, in_entry=False), full)
        kernels += [
            microkernel(f"{name}_fin{r}", r, nv, vl, "lda", "1", kc, stream=stream, finish=finish)
            for r in range(1, mr + 1)
        ]
        calls = "\n".join(
            f"      case {r}: {name}_fin{r}({k}L, a, lda, bp, tile, args, 0, 0, 0, pix0, co0, 0{pf_arg}); break;"
            for r in range(1, mr + 1)
        )
        finishing = f"""
  if (co0 + {nr}L <= {cout}L) {{
    switch (rows) {{
{calls}
      default: break;
    }}
    return;
  }}"""
    tile_fn = f"""
static void {name}_tile(void* const* args, const float* FC_RESTRICT a, long lda, const float* FC_RESTRICT bp,
                        long pix0, long rows, long co0{pf_param}) {{
{declarations(spec, in_entry=False)}
  float tile[{mr * nr}] __attribute__((aligned(64)));{finishing}
  switch (rows) {{
{chr(10).join(f"    case {r}: {name}_ukr{r}({k}L, a, lda, bp, tile{pf_arg}); break;" for r in range(1, mr + 1))}
    default: return;
  }}
  for (long i = 0; i < rows; ++i) {{
    const long pix = pix0 + i;
{tile_columns(nr, vl, "co", "co0", cout, full, part, "    ")}
  }}
}}
"""
    head = f"""
{SIGNATURE.format(name=name)} {{
  const float* FC_RESTRICT x = (const float*)args[{x_i}];
  const float* FC_RESTRICT wpack = (const float*)args[{w_i}];
  char* ws = (char*)args[{len(spec.operands) + len(spec.outputs)}];
  (void)ws;"""
    tile_rows = f"const long rows = {pixels}L - pix0 < {mr}L ? {pixels}L - pix0 : {mr}L;"
    if schedule == "channel_major":
        if direct:
            pack, a_of = "", f"x + pix0 * {geo['xsw']}L, {geo['xsw']}L"
        else:
            pack = f"""
    #pragma omp for schedule(static)
    for (long mt = 0; mt < {mtiles}L; ++mt) {{
      const long pix0 = mt * {mr}L;
      {tile_rows}
      {_pack_rows(geo, "(apack + pix0 * " + str(k) + "L)")}
    }}"""
            a_of = f"apack + pix0 * {k}L, {k}L"
        zero_sums, average_sums = _pool_sums(spec, geo, nr)
        stream_setup = (
            f"""
      const float* FC_RESTRICT next = wpack + (task + 1 < last ? (task + 1) / mchunks : p) * {k * nr}L;
      const long rate = fc_stream_rate({-(-k * nr // 16)}L, (t_end - t_begin) * {k}L);"""
            if stream
            else ""
        )
        pf_of = f", fc_stream_at(next, mt - t_begin, {k}L, rate), rate" if stream else ""
        body = f"""
  float* FC_RESTRICT apack = (float*)(((uintptr_t)ws + 63) & ~(uintptr_t)63);
  (void)apack;
  const long mchunks = {"1L" if pooled(spec) else f"fc_task_chunks({panels}L, {mtiles}L, nthreads)"};
  #pragma omp parallel num_threads(nthreads)
  {{{pack}
    long first, last;  // the panel of a thread's next task is known: the tiles of this one stream it
    fc_thread_range({panels}L * mchunks, &first, &last);
    for (long task = first; task < last; ++task) {{
      const long p = task / mchunks, mc = task % mchunks;
      const long t_begin = mc * {mtiles}L / mchunks, t_end = (mc + 1) * {mtiles}L / mchunks;{zero_sums}{stream_setup}
      for (long mt = t_begin; mt < t_end; ++mt) {{
        const long pix0 = mt * {mr}L;
        {tile_rows}
        {name}_tile(args, {a_of}, wpack + p * {k * nr}L, pix0, rows, p * {nr}L{pf_of});
      }}{average_sums}
    }}
  }}
}}
"""
    else:
        if direct:
            rows_code = f"const float* FC_RESTRICT a = x + pix0 * {geo['xsw']}L; const long lda = {geo['xsw']}L;"
        else:
            rows_code = f"float* FC_RESTRICT a = atile; const long lda = {k}L;\n        " + _pack_rows(geo, "atile")
        rows_stream, rows_pf = "", ""
        if stream_rows:
            rows_stream = f"""
      const float* FC_RESTRICT next = x + (pix0 + {mr}L) * {k}L;
      const long rate = fc_stream_rate({-(-mr * k // 16)}L, (p_end - p_begin) * {k}L);"""
            rows_pf = f", fc_stream_at(next, p - p_begin, {k}L, rate), rate"
        body = f"""
  const long pchunks = fc_task_chunks({mtiles}L, {panels}L, nthreads);
  #pragma omp parallel num_threads(nthreads) if ({mtiles}L * pchunks > 1)
  {{
#ifdef _OPENMP
    const int tid = omp_get_thread_num();
#else
    const int tid = 0;
#endif
    float* FC_RESTRICT atile = {thread_scratch("tid", 4 * mr * k + 128)};
    (void)atile;
    #pragma omp for schedule(static)
    for (long task = 0; task < {mtiles}L * pchunks; ++task) {{
      const long mt = task / pchunks, pc = task % pchunks;
      const long pix0 = mt * {mr}L;
      {tile_rows}
      {rows_code}
      const long p_begin = pc * {panels}L / pchunks, p_end = (pc + 1) * {panels}L / pchunks;{rows_stream}
      for (long p = p_begin; p < p_end; ++p)
        {name}_tile(args, a, lda, wpack + p * {k * nr}L, pix0, rows, p * {nr}L{rows_pf});
    }}
  }}
}}
"""
    return "\n".join(kernels) + tile_fn + head + body


def _pool_sums(spec: KernelSpec, geo: dict, nr: int) -> tuple[str, str]:
    """C code run by the task that owns panel ``p`` (all pixels of its NR
    channels) before and after its tiles: zero the pooled outputs' sums of
    those channels, then divide them by the pixel count. Empty strings when
    no output is pooled."""
    sums = [
        f"((float*)args[{len(spec.operands) + j}])[nimg * {o.strides[0] if o.strides else geo['cout']}L + c]"
        for j, o in enumerate(spec.outputs)
        if o.pool
    ]
    if not sums:
        return "", ""

    def each(statement: str) -> str:
        loop = f"for (long nimg = 0; nimg < {geo['n']}L; ++nimg) for (long c = p * {nr}L; c < c_end; ++c)"
        return "".join(f"\n      {loop} {s} {statement};" for s in sums)

    c_end = f"\n      const long c_end = (p + 1) * {nr}L < {geo['cout']}L ? (p + 1) * {nr}L : {geo['cout']}L;"
    return c_end + each("= 0.0f"), each(f"/= {float(geo['P'])}f")


def _interior_columns(geo: dict) -> tuple[int, int]:
    """[lo, hi): the output columns whose whole window lies inside the image row."""
    lo = -(-geo["pl"] // geo["sw"])
    hi = (geo["w"] - 1 - (geo["kw"] - 1) * geo["dw"] + geo["pl"]) // geo["sw"] + 1
    return lo, max(lo, min(hi, geo["ow"]))


def _render_nhwc_depthwise(spec: KernelSpec, name: str, vl: int, params: dict, geo: dict) -> str:
    c, kh, kw, sw, xsw = geo["cout"], geo["kh"], geo["kw"], geo["sw"], geo["xsw"]
    pixels = params["pixels"]
    lo, hi = _interior_columns(geo)
    x_i, w_i = spec.attrs["input"], spec.attrs["weight"]
    full, part = _nhwc_epilogue(spec, geo)

    def filter_rows(per_row) -> list[str]:
        """``per_row(ky)``'s lines for each filter row inside the image."""
        lines = []
        for ky in range(kh):
            lines.append(f"{{ const long iy = oy * {geo['sh']}L - {geo['pt']}L + {ky * geo['dh']}L;")
            lines.append(f"  if (iy >= 0 && iy < {geo['h']}L) {{")
            lines.append(f"    const float* FC_RESTRICT row = x + nimg * {geo['xsn']}L + iy * {geo['xsh']}L + co;")
            lines.extend("    " + x for x in per_row(ky))
            lines.append("  }")
            lines.append("}")
        return lines

    def one_at_a_time(valid: str | None, epilogue: list[str]) -> list[str]:
        """Every column alone, each tap checked against the image's sides."""
        chains = depthwise_chains(kh, kw)
        lines = [f"vf wv{t} = {vload('f32', f'wts + {t * c}L + co', 1, valid)};" for t in range(kh * kw)]
        lines.append(f"for (long ox = 0; ox < {geo['ow']}L; ++ox) {{")
        lines.extend(f"  vf acc{a} = vzero();" for a in range(chains))
        lines.extend(
            "  " + x
            for x in filter_rows(
                lambda ky: [
                    f"{{ const long ix = ox * {sw}L - {geo['pl']}L + {kx * geo['dw']}L; "
                    f"if (ix >= 0 && ix < {geo['w']}L) acc{ky % chains} = vfma(wv{ky * kw + kx}, "
                    f"{vload('f32', f'row + ix * {xsw}L', 1, valid)}, acc{ky % chains}); }}"
                    for kx in range(kw)
                ]
            )
        )
        lines.append(f"  const vf acc = {sum_chains(chains)};")
        lines.append(f"  const long pix = (nimg * {geo['oh']}L + oy) * {geo['ow']}L + ox;")
        lines.extend("  " + x for x in epilogue)
        return lines + ["}"]

    def side_by_side(valid: str | None, epilogue: list[str], count: int, checked: bool) -> list[str]:
        """``count`` columns from ox on, their input columns checked against
        the image's sides if ``checked``."""
        first = f"ox * {sw}L - {geo['pl']}L"
        inside = (lambda off: f"{first} + {off}L >= 0 && {first} + {off}L < {geo['w']}L") if checked else None
        lines = [f"vf acc{p} = vzero();" for p in range(count)]
        lines.extend(
            filter_rows(
                lambda ky: depthwise_filter_row(
                    kw, sw, geo["dw"], count,
                    lambda kx: f"wts + {(ky * kw + kx) * c}L + co",
                    lambda off: f"row + ({first} + {off}L) * {xsw}L",
                    valid, inside,
                )  # fmt: skip
            )
        )
        return lines + depthwise_finish(
            count, lambda p: f"const long pix = (nimg * {geo['oh']}L + oy) * {geo['ow']}L + ox + {p}L;", epilogue
        )

    def body(partial: bool) -> str:
        valid, epilogue = ("rem", part) if partial else (None, full)
        if pixels == 1:
            return "\n".join("        " + x for x in one_at_a_time(valid, epilogue))
        step = min(pixels, geo["ow"])
        lines = ["long ox = 0;", f"for (; ox + {step}L <= {geo['ow']}L; ox += {step}L) {{"]
        if hi - lo >= step:  # interior columns need no checks
            lines.append(f"  if (ox >= {lo}L && ox + {step}L <= {hi}L) {{")
            lines.extend("    " + x for x in side_by_side(valid, epilogue, step, False))
            lines.append("    continue;")
            lines.append("  }")
        lines.extend("  " + x for x in side_by_side(valid, epilogue, step, True))
        lines.append("}")
        if geo["ow"] % step:  # the columns left over, as one shorter step
            lines.extend(side_by_side(valid, epilogue, geo["ow"] % step, True))
        return "\n".join("        " + x for x in ["{"] + ["  " + x for x in lines] + ["}"])

    return f"""
{SIGNATURE.format(name=name)} {{
{declarations(spec)}
  const float* FC_RESTRICT x = in{x_i};
  const float* FC_RESTRICT wts = in{w_i};
  /* (row, channel vector) tasks: a 7-row map splits evenly over 2 threads */
  #pragma omp parallel for collapse(2) num_threads(nthreads) schedule(static) \
      if ({geo["n"] * geo["oh"]}L * {c}L > {vl}L)
  for (long row_task = 0; row_task < {geo["n"] * geo["oh"]}L; ++row_task) {{
    for (long co = 0; co < {c}L; co += {vl}) {{
      const long nimg = row_task / {geo["oh"]}L, oy = row_task % {geo["oh"]}L;
      if (co + {vl} <= {c}L) {{
{body(False)}
      }} else {{
        const int rem = (int)({c}L - co);
{body(True)}
      }}
    }}
  }}
}}
"""
