"""CUDA block kernels: an inverted residual (optional 1x1 expand, depthwise
kxk, 1x1 project + residual) or a ResNet bottleneck (1x1 reduce, dense kxk,
1x1 expand + residual) as one kernel - the same `KernelSpec` the C
renderer takes, with shared memory where the C kernel keeps its ring in
cache.

One thread block owns a TH x TW tile of output pixels of one image, for
every output channel:

  1. fill - the tile's input window (the tile plus the kxk halo) through
     the first 1x1 layer and its epilogue into shared memory, zero outside
     the image (the kxk layer's padding);
  2. middle - the tile's kxk outputs, from shared memory, into a second
     shared buffer, a chunk of channels at a time;
  3. project - each thread adds the chunk's share to the project sums it
     owns (registers: TH*TW*C_out / 256 per thread).

A depthwise middle needs only its own channel, so fill and middle walk the
expanded channels chunk by chunk together; a dense middle reads every
reduced channel, so the window is filled once with all of them (the tile
shrinks until it fits) and the middle's outputs are chunked. After the
last chunk the project epilogue (bias, residual) is applied and the tile
stored. No intermediate goes to global memory; the halo is recomputed by
neighbouring tiles, the price of independent blocks.
"""

from __future__ import annotations

import math

from ...kernels.expr import Load
from ...kernels.spec import KernelSpec, conv_geometry
from ..c.block import bottleneck, inverted_residual
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


def _window(g: dict, th: int, tw: int) -> tuple[int, int]:
    """The input window (rows, columns) of a TH x TW output tile of layer geometry ``g``."""
    return (th - 1) * g["sh"] + (g["kh"] - 1) * g["dh"] + 1, (tw - 1) * g["sw"] + (g["kw"] - 1) * g["dw"] + 1


def _depthwise_tiles(g: dict) -> tuple[int, int, int, int, int]:
    """(TH, TW, IH, IW, CE): the output tile, its input window, the chunk of
    expanded channels both shared buffers hold."""
    th, tw = min(TILE, g["oh"]), min(TILE, g["ow"])
    ih, iw = _window(g, th, tw)
    ce = next((c for c in (32, 16, 8, 4, 2) if 4 * c * (ih * iw + th * tw) <= SHARED_BYTES), 1)
    return th, tw, ih, iw, min(ce, g["cout"])


def _dense_tiles(g: dict) -> tuple[int, int, int, int, int]:
    """(TH, TW, IH, IW, CM) for a dense middle: the window holds every reduced
    channel (each middle output reads them all), so the tile shrinks with
    the channels; CM middle outputs at a time go to the second buffer."""
    cm = min(32, g["cout"])
    for edge in (TILE, 6, 4, 2, 1):
        th, tw = min(edge, g["oh"]), min(edge, g["ow"])
        ih, iw = _window(g, th, tw)
        if 4 * (ih * iw * g["cin"] + th * tw * cm) <= SHARED_BYTES:
            return th, tw, ih, iw, cm
    raise NotImplementedError(f"a {g['cin']}-channel window does not fit in shared memory")


_PATTERNS = {"inverted_residual": inverted_residual, "bottleneck": bottleneck}


def render(spec: KernelSpec, name: str) -> CudaSource:
    pattern = _PATTERNS.get(spec.attrs.get("pattern"))
    if pattern is None:
        raise NotImplementedError(
            "the CUDA renderer has block kernels for inverted residuals and bottlenecks, "
            f"not {spec.attrs.get('pattern')!r} blocks"
        )
    pattern.check(spec)
    walk = pattern.walk(spec)
    dense = pattern is bottleneck
    layers = spec.attrs["layers"]
    g = conv_geometry(layers[walk.middle])
    first = conv_geometry(layers[0])
    n, cin, h, w, cmid = g["n"], first["cin"], g["h"], g["w"], g["cin"]
    oh, ow, cout = g["oh"], g["ow"], conv_geometry(layers[walk.last])["cout"]
    th, tw, ih, iw, chunk = _dense_tiles(g) if dense else _depthwise_tiles(g)
    per_thread = math.ceil(th * tw * cout / THREADS)
    x = f"in{spec.attrs['operand_maps'][0][layers[0].attrs['input']]}"
    xs = (first["xsn"], first["xsc"], first["xsh"], first["xsw"])
    wd, wds = _weight(spec, walk.middle)
    wp, wps = _weight(spec, walk.last)
    out = spec.outputs[0]
    ost = out.strides or (cout * oh * ow, oh * ow, ow, 1)
    # the window buffer holds every middle input channel (dense) or a chunk of them
    wch = cmid if dense else chunk

    def x_at(ch: str) -> str:
        return f"{x}[nimg * {xs[0]}L + {ch} * {xs[1]}L + iy * {xs[2]}L + ix * {xs[3]}L]"

    if walk.expand is not None:
        we, wes = _weight(spec, walk.expand)
        lines, value = _layer_value(spec, walk.expand, ["nimg", "ch", "iy", "ix"], "accv", "ex")
        fill_value = f"""float accv = 0.0f;
        for (long ci = 0; ci < {cin}L; ++ci)
          accv += {x_at("ci")} * {we}[ch * {wes[0]}L + ci * {wes[1]}L];
{chr(10).join("        " + s for s in lines)}
        v = {value};"""
    else:
        fill_value = f"v = {x_at('ch')};"
    c0 = "0L" if dense else "c0"
    fill = f"""for (int t = threadIdx.x; t < {ih * iw * wch}; t += blockDim.x) {{
      const int p = t / {wch}, e = t % {wch};
      const long iy = iy0 + p / {iw}, ix = ix0 + p % {iw}, ch = {c0} + e;
      float v = 0.0f;
      if (ch < {cmid}L && iy >= 0 && iy < {h}L && ix >= 0 && ix < {w}L) {{
        {fill_value}
      }}
      ebuf[t] = v;
    }}
    __syncthreads();"""

    def window(ky: str, kx: str) -> str:
        return (
            f"(((q / {tw}) * {g['sh']} + {ky} * {g['dh']}) * {iw} + (q % {tw}) * {g['sw']} + {kx} * {g['dw']}) * {wch}"
        )

    mid_lines, mid_value = _layer_value(spec, walk.middle, ["nimg", "ch", "oy", "ox"], "accv", "md")
    if dense:  # every reduced channel of every tap
        taps = f"""for (int ky = 0; ky < {g["kh"]}; ++ky)
          for (int kx = 0; kx < {g["kw"]}; ++kx)
            for (int e = 0; e < {cmid}; ++e)
              accv += ebuf[{window("ky", "kx")} + e] * {wd}[ch * {wds[0]}L + e * {wds[1]}L + ky * {wds[2]}L + kx * {wds[3]}L];"""
    else:
        taps = f"""for (int ky = 0; ky < {g["kh"]}; ++ky)
          for (int kx = 0; kx < {g["kw"]}; ++kx)
            accv += ebuf[{window("ky", "kx")} + e] * {wd}[ch * {wds[0]}L + ky * {wds[2]}L + kx * {wds[3]}L];"""
    middle = f"""for (int t = threadIdx.x; t < {th * tw * chunk}; t += blockDim.x) {{
      const int q = t / {chunk}, e = t % {chunk};
      const long oy = oy0 + q / {tw}, ox = ox0 + q % {tw}, ch = c0 + e;
      float v = 0.0f;
      if (ch < {g["cout"]}L && oy < {oh}L && ox < {ow}L) {{
        float accv = 0.0f;
        {taps}
{chr(10).join("        " + s for s in mid_lines)}
        v = {mid_value};
      }}
      dbuf[t] = v;
    }}
    __syncthreads();"""
    project = f"""const int chunk = {g["cout"]}L - c0 < {chunk} ? (int)({g["cout"]}L - c0) : {chunk};
#pragma unroll
    for (int k = 0; k < {per_thread}; ++k) {{
      const int j = threadIdx.x + k * {THREADS};
      if (j >= {th * tw * cout}) break;
      const int q = j / {cout}, co = j % {cout};
      float s = acc[k];
      for (int e = 0; e < chunk; ++e) s += dbuf[q * {chunk} + e] * {wp}[co * {wps[0]}L + (c0 + e) * {wps[1]}L];
      acc[k] = s;
    }}
    __syncthreads();"""
    # a depthwise middle: each chunk of expanded channels is filled, filtered and
    # projected in turn; a dense one: the window once, then chunks of its outputs
    loop = f"""for (long c0 = 0; c0 < {g["cout"]}L; c0 += {chunk}) {{
    {middle}
    {project}
  }}"""
    if dense:
        body = f"{fill}\n  {loop}"
    else:
        body = loop.replace(f"{{\n    {middle}", f"{{\n    {fill}\n    {middle}", 1)
    pr_lines, pr_value = _layer_value(spec, walk.last, ["nimg", "co", "oy", "ox"], "accv", "pr")
    store = _store(out.dtype, f"out0 + nimg * {ost[0]}L + co * {ost[1]}L + oy * {ost[2]}L + ox * {ost[3]}L", pr_value)
    text = f"""
extern "C" __global__ void __launch_bounds__({THREADS}) {name}({parameters(spec)}) {{
  __shared__ float ebuf[{ih * iw * wch}];  /* the middle layer's input window, [pixel][channel] */
  __shared__ float dbuf[{th * tw * chunk}];  /* a chunk of the middle layer's outputs of the tile */
  const long nimg = blockIdx.z, oy0 = (long)blockIdx.y * {th}, ox0 = (long)blockIdx.x * {tw};
  const long iy0 = oy0 * {g["sh"]}L - {g["pt"]}L, ix0 = ox0 * {g["sw"]}L - {g["pl"]}L;
  float acc[{per_thread}];
#pragma unroll
  for (int k = 0; k < {per_thread}; ++k) acc[k] = 0.0f;
  {body}
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
    return CudaSource(name, PRELUDE + text, grid, (THREADS, 1, 1), {"tile": (th, tw), "chunk": chunk})
