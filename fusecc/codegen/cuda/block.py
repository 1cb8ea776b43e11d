"""CUDA block kernels: an inverted residual (optional 1x1 expand, depthwise
kxk, 1x1 project + residual) as one kernel, the same `KernelSpec` the C
renderer takes, with shared memory where the C kernel keeps its ring in
cache.

One thread block owns a TH x TW tile of output pixels of one image, for
every output channel. It walks the expanded channels in chunks of CE:

  1. expand - the tile's input window (the tile plus the depthwise halo)
     through the expand layer and its epilogue into shared memory, zero
     outside the image (the depthwise layer's padding);
  2. depthwise - the tile's depthwise outputs of the chunk, from shared
     memory, into a second shared buffer;
  3. project - each thread adds the chunk's share to the project sums it
     owns (registers: TH*TW*C_out / 256 per thread).

After the last chunk the project epilogue (bias, residual) is applied and
the tile stored. The expanded tensor never goes to global memory. The
halo is recomputed by neighbouring tiles, the price of independent blocks.
"""

from __future__ import annotations

import math

from ...kernels.expr import Load
from ...kernels.spec import KernelSpec, conv_geometry
from ..c.block import inverted_residual
from ..c.common import sload as _load
from ..c.common import sstore as _store
from ..c.expr import ExprEmitter
from .common import PRELUDE, THREADS, CudaSource, offset, parameters

TILE = 8  # output tile edge
SHARED_BYTES = 40 * 1024  # of the 48 KB a block may declare statically


def _layer_value(spec: KernelSpec, index: int, point: list[str], acc: str, prefix: str) -> tuple[list[str], str]:
    """Layer ``index``'s epilogue at ``point`` (its own space: image, channel,
    y, x) of the accumulator ``acc``; its operands are the block's."""
    layer = spec.attrs["layers"][index]
    mapping = spec.attrs["operand_maps"][index]

    def load(node: Load) -> str:
        a = layer.accesses[node.access]
        return _load(layer.operands[node.operand].dtype, f"in{mapping[node.operand]} + {offset(point, a.strides)}")

    em = ExprEmitter(False, load, acc=lambda: acc, prefix=prefix)
    value = em.emit(layer.outputs[0].expr)
    return em.lines, value


def _weight(spec: KernelSpec, index: int) -> tuple[str, tuple[int, ...]]:
    """(block operand pointer, strides) of layer ``index``'s weight."""
    layer = spec.attrs["layers"][index]
    w = layer.attrs["weight"]
    return f"in{spec.attrs['operand_maps'][index][w]}", layer.operands[w].strides


def _tiles(g: dict) -> tuple[int, int, int, int, int]:
    """(TH, TW, IH, IW, CE): the output tile, its input window, the channel chunk."""
    th, tw = min(TILE, g["oh"]), min(TILE, g["ow"])
    ih = (th - 1) * g["sh"] + (g["kh"] - 1) * g["dh"] + 1
    iw = (tw - 1) * g["sw"] + (g["kw"] - 1) * g["dw"] + 1
    ce = next((c for c in (32, 16, 8, 4, 2) if 4 * c * (ih * iw + th * tw) <= SHARED_BYTES), 1)
    return th, tw, ih, iw, min(ce, g["cout"])


def render(spec: KernelSpec, name: str) -> CudaSource:
    if spec.attrs.get("pattern") != "inverted_residual":
        raise NotImplementedError(
            f"the CUDA renderer has block kernels for inverted residuals only, not {spec.attrs.get('pattern')!r} blocks"
        )
    inverted_residual.check(spec)
    walk = inverted_residual.walk(spec)
    layers = spec.attrs["layers"]
    g = conv_geometry(layers[walk.middle])
    first = conv_geometry(layers[0])
    n, cin, h, w, cexp = g["n"], first["cin"], g["h"], g["w"], g["cout"]
    oh, ow, cout = g["oh"], g["ow"], conv_geometry(layers[walk.last])["cout"]
    th, tw, ih, iw, ce = _tiles(g)
    per_thread = math.ceil(th * tw * cout / THREADS)
    x = f"in{spec.attrs['operand_maps'][0][layers[0].attrs['input']]}"
    xs = (first["xsn"], first["xsc"], first["xsh"], first["xsw"])
    wd, wds = _weight(spec, walk.middle)
    wp, wps = _weight(spec, walk.last)
    out = spec.outputs[0]
    ost = out.strides or (cout * oh * ow, oh * ow, ow, 1)

    def x_at(ch: str) -> str:
        return f"{x}[nimg * {xs[0]}L + {ch} * {xs[1]}L + iy * {xs[2]}L + ix * {xs[3]}L]"

    if walk.expand is not None:
        we, wes = _weight(spec, walk.expand)
        lines, value = _layer_value(spec, walk.expand, ["nimg", "ch", "iy", "ix"], "accv", "ex")
        fill = f"""float accv = 0.0f;
        for (long ci = 0; ci < {cin}L; ++ci)
          accv += {x_at("ci")} * {we}[ch * {wes[0]}L + ci * {wes[1]}L];
{chr(10).join("        " + s for s in lines)}
        v = {value};"""
    else:
        fill = f"v = {x_at('ch')};"
    dw_lines, dw_value = _layer_value(spec, walk.middle, ["nimg", "ch", "oy", "ox"], "accv", "dw")
    pr_lines, pr_value = _layer_value(spec, walk.last, ["nimg", "co", "oy", "ox"], "accv", "pr")
    store = _store(out.dtype, f"out0 + nimg * {ost[0]}L + co * {ost[1]}L + oy * {ost[2]}L + ox * {ost[3]}L", pr_value)
    text = f"""
extern "C" __global__ void __launch_bounds__({THREADS}) {name}({parameters(spec)}) {{
  __shared__ float ebuf[{ih * iw * ce}];  /* expanded input window, [pixel][chunk channel] */
  __shared__ float dbuf[{th * tw * ce}];  /* depthwise outputs of the tile */
  const long nimg = blockIdx.z, oy0 = (long)blockIdx.y * {th}, ox0 = (long)blockIdx.x * {tw};
  const long iy0 = oy0 * {g["sh"]}L - {g["pt"]}L, ix0 = ox0 * {g["sw"]}L - {g["pl"]}L;
  float acc[{per_thread}];
#pragma unroll
  for (int k = 0; k < {per_thread}; ++k) acc[k] = 0.0f;
  for (long c0 = 0; c0 < {cexp}L; c0 += {ce}) {{
    for (int t = threadIdx.x; t < {ih * iw * ce}; t += blockDim.x) {{
      const int p = t / {ce}, e = t % {ce};
      const long iy = iy0 + p / {iw}, ix = ix0 + p % {iw}, ch = c0 + e;
      float v = 0.0f;
      if (ch < {cexp}L && iy >= 0 && iy < {h}L && ix >= 0 && ix < {w}L) {{
        {fill}
      }}
      ebuf[t] = v;
    }}
    __syncthreads();
    for (int t = threadIdx.x; t < {th * tw * ce}; t += blockDim.x) {{
      const int q = t / {ce}, e = t % {ce};
      const long oy = oy0 + q / {tw}, ox = ox0 + q % {tw}, ch = c0 + e;
      float v = 0.0f;
      if (ch < {cexp}L && oy < {oh}L && ox < {ow}L) {{
        float accv = 0.0f;
        for (int ky = 0; ky < {g["kh"]}; ++ky)
          for (int kx = 0; kx < {g["kw"]}; ++kx)
            accv += ebuf[(((q / {tw}) * {g["sh"]} + ky * {g["dh"]}) * {iw} + (q % {tw}) * {g["sw"]} + kx * {g["dw"]}) * {ce} + e]
                    * {wd}[ch * {wds[0]}L + ky * {wds[2]}L + kx * {wds[3]}L];
{chr(10).join("        " + s for s in dw_lines)}
        v = {dw_value};
      }}
      dbuf[t] = v;
    }}
    __syncthreads();
    const int chunk = {cexp}L - c0 < {ce} ? (int)({cexp}L - c0) : {ce};
#pragma unroll
    for (int k = 0; k < {per_thread}; ++k) {{
      const int j = threadIdx.x + k * {THREADS};
      if (j >= {th * tw * cout}) break;
      const int q = j / {cout}, co = j % {cout};
      float s = acc[k];
      for (int e = 0; e < chunk; ++e) s += dbuf[q * {ce} + e] * {wp}[co * {wps[0]}L + (c0 + e) * {wps[1]}L];
      acc[k] = s;
    }}
    __syncthreads();
  }}
#pragma unroll
  for (int k = 0; k < {per_thread}; ++k) {{
    const int j = threadIdx.x + k * {THREADS};
    if (j >= {th * tw * cout}) break;
    const long q = j / {cout}, co = j % {cout}, oy = oy0 + q / {tw}, ox = ox0 + q % {tw};
    if (oy >= {oh}L || ox >= {ow}L) continue;
    const float accv = acc[k];
{chr(10).join("    " + s for s in pr_lines)}
    {store}
  }}
}}
"""
    grid = (math.ceil(ow / tw), math.ceil(oh / th), n)
    return CudaSource(name, PRELUDE + text, grid, (THREADS, 1, 1), {"tile": (th, tw), "chunk": ce})
