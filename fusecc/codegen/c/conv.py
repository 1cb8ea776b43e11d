"""2-d convolution kernels (NCHW), with the fused epilogue of their group.

* General convolution as an implicit GEMM: per task (image, group, block
  of output pixels, chunk of output channels) the block's im2col columns
  are packed straight into NR-wide panels in per-thread scratch, and the
  weights - packed once at compile time into MR-row panels - are the
  broadcast operand of the same register-tiled micro-kernel the GEMM uses.
  A 1x1 stride-1 convolution packs by plain copies.
* Depthwise convolution directly: per (image, channel) the zero-padded
  input plane is split by the horizontal stride into phase planes in
  scratch, so every tap of every output vector is one contiguous load.
"""

from __future__ import annotations

import math

import torch

from ...kernels.spec import KernelSpec
from .common import SIGNATURE, declarations, vstore
from .dialects import Dialect
from .gemm import epilogue_stores, microkernel

B_BLOCK_FLOATS = 1 << 15  # packed im2col block: 128 KiB, sized for L2


def _geometry(spec: KernelSpec) -> dict:
    a = spec.attrs
    n, cout, oh, ow = spec.space
    g = a["groups"]
    cin = a["in_channels"]
    kh, kw = a["kernel"]
    return {
        "n": n, "cout": cout, "oh": oh, "ow": ow, "g": g, "cin": cin,
        "cin_g": cin // g, "cout_g": cout // g, "h": a["in_hw"][0], "w": a["in_hw"][1],
        "kh": kh, "kw": kw, "sh": a["stride"][0], "sw": a["stride"][1],
        "pt": a["padding"][0], "pl": a["padding"][1], "pb": a["padding"][2], "pr": a["padding"][3],
        "dh": a["dilation"][0], "dw": a["dilation"][1], "K": (cin // g) * kh * kw, "P": oh * ow,
        "xsn": a["in_strides"][0], "xsc": a["in_strides"][1], "xsh": a["in_strides"][2], "xsw": a["in_strides"][3],
    }  # fmt: skip


def is_depthwise(spec: KernelSpec) -> bool:
    geo = _geometry(spec)
    return geo["cin_g"] == 1 and geo["cout_g"] == 1


def tunables(spec: KernelSpec, dialect: Dialect) -> dict[str, tuple]:
    if is_depthwise(spec):
        return {"algo": ("depthwise",)}
    regs = dialect.vector_registers
    return {
        "algo": ("im2col",),
        "tile": tuple((mr, nv) for mr in (4, 6, 8, 12) for nv in (1, 2, 3, 4) if mr * nv + nv + 1 <= regs),
    }


def default_params(spec: KernelSpec, dialect: Dialect) -> dict:
    if is_depthwise(spec):
        return {"algo": "depthwise", "vl": dialect.vl}
    geo = _geometry(spec)
    mr, nv = {"avx512": (6, 4), "avx2": (6, 2), "neon": (6, 4), "scalar": (4, 4)}[dialect.name]
    nv = max(1, min(nv, math.ceil(geo["P"] / dialect.vl)))
    mr = max(1, min(mr, geo["cout_g"]))
    return {"algo": "im2col", "tile": (mr, nv), "vl": dialect.vl}


def _block_panels(geo: dict, nr: int) -> int:
    return max(1, min(math.ceil(geo["P"] / nr), B_BLOCK_FLOATS // max(1, geo["K"] * nr)))


def _check_pixels(spec: KernelSpec, geo: dict) -> None:
    for acc in spec.accesses:
        s_oh, s_ow = acc.strides[2], acc.strides[3]
        if s_oh != s_ow * geo["ow"]:
            raise NotImplementedError("an epilogue operand is not laid out row-major over the output pixels")


def workspace_bytes(spec: KernelSpec, params: dict, nthreads: int) -> int:
    geo = _geometry(spec)
    vl = params["vl"]
    if params["algo"] == "depthwise":
        hp = geo["h"] + geo["pt"] + geo["pb"]
        wq = math.ceil((geo["w"] + geo["pl"] + geo["pr"]) / geo["sw"]) + 2 * vl + geo["kw"] * geo["dw"]
        per_thread = geo["sw"] * hp * wq
    else:
        _, nv = params["tile"]
        nr = nv * vl
        per_thread = geo["K"] * nr * _block_panels(geo, nr)
    return nthreads * (4 * per_thread + 64) + 64


def prepare(spec: KernelSpec, params: dict, constants: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    out = dict(constants)
    w_i = spec.attrs["weight"]
    if params["algo"] == "depthwise":
        out[w_i] = constants[w_i].float().contiguous()
        return out
    geo = _geometry(spec)
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
    geo = _geometry(spec)
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
    return f"""
{microkernel(f"{name}_ukr", mr, nv, vl, "1", str(mr))}
static void {name}_tile(void* const* args, const float* FC_RESTRICT a, const float* FC_RESTRICT bp,
                        long nimg, long co0, long rows, long pix0) {{
{declarations(spec, in_entry=False)}
  float tile[{mr * nr}] __attribute__((aligned(64)));
  {name}_ukr({k}L, a, bp, tile);
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
  const float* FC_RESTRICT wpack = (const float*)args[{w_i}];
  char* ws = (char*)args[{len(spec.operands) + len(spec.outputs)}];
  const long tasks0 = {geo["n"] * geo["g"] * pblocks}L;
  long mchunks = (2L * nthreads + tasks0 - 1) / tasks0;
  if (mchunks > {mtiles}L) mchunks = {mtiles}L;
  if (mchunks < 1) mchunks = 1;
  const long per_chunk = ({mtiles}L + mchunks - 1) / mchunks;
  #pragma omp parallel num_threads(nthreads) if (tasks0 * mchunks > 1)
  {{
#ifdef _OPENMP
    const int tid = omp_get_thread_num();
#else
    const int tid = 0;
#endif
    float* FC_RESTRICT bblk = (float*)(((uintptr_t)(ws + (size_t)tid * {4 * ws_per_thread}) + 63) & ~(uintptr_t)63);
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
      const long t_end = (mc + 1) * per_chunk < {mtiles}L ? (mc + 1) * per_chunk : {mtiles}L;
      for (long t = mc * per_chunk; t < t_end; ++t) {{
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
                f"acc = vfma(vset1(wc[{ky * geo['kw'] + kx}]), "
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
    float* FC_RESTRICT phases = (float*)(((uintptr_t)(ws + (size_t)tid * {4 * plane + 64}) + 63) & ~(uintptr_t)63);
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
