"""2-d pooling kernels (max, average), ATen semantics.

Channels-last: one task per output row; every output pixel is a max (or
sum) of whole channel vectors over the window's in-bounds taps, so a 3x3
stride-2 max pool reads each input pixel's channels with full-width loads.
Other layouts: the same loops over scalars with the tensors' strides.

Window bounds follow ATen: taps outside the input are skipped (a max
pool's padding is -inf); an average divides by ``divisor_override``, else
by the window clipped to the padded input (``count_include_pad``) or to
the input.
"""

from __future__ import annotations

from ...kernels.spec import KernelSpec
from .common import SIGNATURE
from .dialects import Dialect


def tunables(spec: KernelSpec, dialect: Dialect) -> dict[str, tuple]:
    return {}


def default_params(spec: KernelSpec, dialect: Dialect) -> dict:
    return {}


def _geometry(spec: KernelSpec) -> dict:
    n, c, oh, ow = spec.space
    a = spec.attrs
    out = spec.outputs[0]
    return {
        "n": n, "c": c, "oh": oh, "ow": ow, "h": a["in_hw"][0], "w": a["in_hw"][1],
        "kh": a["kernel"][0], "kw": a["kernel"][1], "sh": a["stride"][0], "sw": a["stride"][1],
        "pt": a["padding"][0], "pl": a["padding"][1], "dh": a["dilation"][0], "dw": a["dilation"][1],
        "xs": a["in_strides"], "os": out.strides,
    }  # fmt: skip


def _divisor(spec: KernelSpec, g: dict) -> str:
    """C expression of the average's divisor at (oy, ox)."""
    if spec.attrs["divisor_override"]:
        return f"(float){int(spec.attrs['divisor_override'])}"
    if spec.attrs["count_include_pad"]:
        return "(float)((y_pad_end - y0) * (x_pad_end - x0))"
    return "(float)((y1 - y0c) * (x1 - x0c))"


def render(spec: KernelSpec, name: str, vl: int, params: dict) -> str:
    if spec.outputs[0].dtype != "f32" or spec.operands[0].dtype != "f32":
        raise NotImplementedError("pooling kernels are float32")
    g = _geometry(spec)
    is_max = spec.attrs["op"] == "max"
    xsn, xsc, xsh, xsw = g["xs"]
    osn, osc, osh, osw = g["os"]
    nhwc = (xsc == 1 or g["c"] == 1) and (osc == 1 or g["c"] == 1)
    init = "vset1(-INFINITY)" if is_max else "vzero()"
    combine = "vmax" if is_max else "vadd"
    scalar_init = "-INFINITY" if is_max else "0.0f"
    scalar_combine = "acc = v > acc || v != v ? v : acc;" if is_max else "acc += v;"
    finish = "" if is_max else f"const float inv = 1.0f / {_divisor(spec, g)};"
    vfinish = "" if is_max else "acc = vmul(acc, vset1(inv));"
    sfinish = "" if is_max else "acc *= inv;"
    if nhwc:
        channel_loop = f"""
        for (long c = 0; c < {g["c"]}L; c += {vl}) {{
          const int rem = (int)({g["c"]}L - c < {vl}L ? {g["c"]}L - c : {vl}L);
          vf acc = {init};
          for (long iy = y0c; iy < y1; iy += {g["dh"]}L)
            for (long ix = x0c; ix < x1; ix += {g["dw"]}L)
              acc = {combine}(acc, rem == {vl} ? vload(src + iy * {xsh}L + ix * {xsw}L + c)
                                             : vloadn(src + iy * {xsh}L + ix * {xsw}L + c, rem));
          {vfinish}
          if (rem == {vl}) vstore(dst + c, acc); else vstoren(dst + c, acc, rem);
        }}"""
    else:
        channel_loop = f"""
        for (long c = 0; c < {g["c"]}L; ++c) {{
          float acc = {scalar_init};
          for (long iy = y0c; iy < y1; iy += {g["dh"]}L)
            for (long ix = x0c; ix < x1; ix += {g["dw"]}L) {{
              const float v = src[c * {xsc}L + iy * {xsh}L + ix * {xsw}L];
              {scalar_combine}
            }}
          {sfinish}
          dst[c * {osc}L] = acc;
        }}"""
    return f"""
#include <math.h>
{SIGNATURE.format(name=name)} {{
  const float* FC_RESTRICT x = (const float*)args[0];
  float* FC_RESTRICT out = (float*)args[1];
  #pragma omp parallel for schedule(static) num_threads(nthreads) if ({g["n"] * g["oh"]}L > 1)
  for (long task = 0; task < {g["n"] * g["oh"]}L; ++task) {{
    const long nimg = task / {g["oh"]}L, oy = task % {g["oh"]}L;
    const float* FC_RESTRICT src = x + nimg * {xsn}L;
    /* rows of the window: the first tap at or after row 0 (stepping by the dilation) up to the input's end */
    const long y0 = oy * {g["sh"]}L - {g["pt"]}L, y_pad_end = y0 + {(g["kh"] - 1) * g["dh"] + 1}L < {g["h"] + g["pt"]}L ? y0 + {(g["kh"] - 1) * g["dh"] + 1}L : {g["h"] + g["pt"]}L;
    const long y0c = y0 >= 0 ? y0 : y0 + ((-y0 + {g["dh"] - 1}L) / {g["dh"]}L) * {g["dh"]}L;
    const long y1 = y0 + {(g["kh"] - 1) * g["dh"] + 1}L < {g["h"]}L ? y0 + {(g["kh"] - 1) * g["dh"] + 1}L : {g["h"]}L;
    (void)y_pad_end;
    for (long ox = 0; ox < {g["ow"]}L; ++ox) {{
      const long x0 = ox * {g["sw"]}L - {g["pl"]}L, x_pad_end = x0 + {(g["kw"] - 1) * g["dw"] + 1}L < {g["w"] + g["pl"]}L ? x0 + {(g["kw"] - 1) * g["dw"] + 1}L : {g["w"] + g["pl"]}L;
      const long x0c = x0 >= 0 ? x0 : x0 + ((-x0 + {g["dw"] - 1}L) / {g["dw"]}L) * {g["dw"]}L;
      const long x1 = x0 + {(g["kw"] - 1) * g["dw"] + 1}L < {g["w"]}L ? x0 + {(g["kw"] - 1) * g["dw"] + 1}L : {g["w"]}L;
      (void)x_pad_end;
      {finish}
      float* FC_RESTRICT dst = out + nimg * {osn}L + oy * {osh}L + ox * {osw}L;{channel_loop}
    }}
  }}
}}
"""
