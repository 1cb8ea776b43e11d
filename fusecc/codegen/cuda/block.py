"""CUDA block kernels: an inverted residual (optional 1x1 expand, depthwise
kxk, 1x1 project + residual; or a stem - a dense kxk layer over a few
channels - in the expand's place), a ResNet bottleneck (1x1 reduce, dense kxk,
1x1 expand + residual), a ConvNeXt block (`render_convnext`) or a ResNet
basic block (`render_basic`) as one kernel - the same `KernelSpec` the C renderer takes, with shared memory
where the C kernel keeps its ring and bands in cache.

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
from ..c.block import basic, bottleneck, convnext, inverted_residual, stem
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


def _owned_outputs(per_thread: int, th: int, tw: int, oh: int, ow: int, channels: int, body: list[str]) -> str:
    """The loop over the outputs a thread owns - output ``j = threadIdx.x + k
    * THREADS`` of the tile's (pixel q, channel co) - running ``body`` at
    each in-map one with ``k``, ``q``, ``co``, ``oy``, ``ox`` and the global
    pixel ``pix`` defined."""
    lines = "\n".join("    " + line for line in body)
    return f"""#pragma unroll
  for (int k = 0; k < {per_thread}; ++k) {{{{
    const int j = threadIdx.x + k * {THREADS};
    if (j >= {th * tw * channels}) break;
    const long q = j / {channels}, co = j % {channels}, oy = oy0 + q / {tw}, ox = ox0 + q % {tw};
    const long pix = (nimg * {oh}L + oy) * {ow}L + ox;
    (void)pix;
    if (oy >= {oh}L || ox >= {ow}L) continue;
{lines}
  }}}}"""


def _copy_window(buf: str, x: str, xs: tuple, ih: int, iw: int, chunk: int, channels: int, h: int, w: int) -> str:
    """The block input's window at (``iy0``, ``ix0``), channels [c0, c0 +
    ``chunk``), into shared ``buf`` as [pixel][channel]; zero outside the map."""
    return f"""for (int t = threadIdx.x; t < {ih * iw * chunk}; t += blockDim.x) {{
      const int p = t / {chunk}, k = t % {chunk};
      const long iy = iy0 + p / {iw}, ix = ix0 + p % {iw}, cc = c0 + k;
      {buf}[t] = (cc < {channels}L && iy >= 0 && iy < {h}L && ix >= 0 && ix < {w}L)
        ? {x}[nimg * {xs[0]}L + cc * {xs[1]}L + iy * {xs[2]}L + ix * {xs[3]}L] : 0.0f;
    }}"""


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


_PATTERNS = {"inverted_residual": inverted_residual, "bottleneck": bottleneck, "stem": stem}


def render(spec: KernelSpec, name: str) -> CudaSource:
    if spec.attrs.get("pattern") == "convnext":
        return render_convnext(spec, name)
    if spec.attrs.get("pattern") == "basic":
        return render_basic(spec, name)
    pattern = _PATTERNS.get(spec.attrs.get("pattern"))
    if pattern is None:
        raise NotImplementedError(f"the CUDA renderer has no kernel for {spec.attrs.get('pattern')!r} blocks")
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
        if pattern is stem:  # the stem's output at (iy, ix): its kxk window of the input
            sg = first
            accumulate = f"""for (long ci = 0; ci < {cin}L; ++ci)
          for (int ky = 0; ky < {sg["kh"]}; ++ky) {{
            const long sy = iy * {sg["sh"]}L - {sg["pt"]}L + ky * {sg["dh"]}L;
            if (sy < 0 || sy >= {sg["h"]}L) continue;
            for (int kx = 0; kx < {sg["kw"]}; ++kx) {{
              const long sx = ix * {sg["sw"]}L - {sg["pl"]}L + kx * {sg["dw"]}L;
              if (sx >= 0 && sx < {sg["w"]}L)
                accv += {x}[nimg * {xs[0]}L + ci * {xs[1]}L + sy * {xs[2]}L + sx * {xs[3]}L]
                  * {we}[ch * {wes[0]}L + ci * {wes[1]}L + ky * {wes[2]}L + kx * {wes[3]}L];
            }}
          }}"""
        else:
            accumulate = f"""for (long ci = 0; ci < {cin}L; ++ci)
          accv += {x_at("ci")} * {we}[ch * {wes[0]}L + ci * {wes[1]}L];"""
        fill_value = f"""float accv = 0.0f;
        {accumulate}
{chr(10).join("        " + line for line in lines)}
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
  {_owned_outputs(per_thread, th, tw, oh, ow, cout, ["const float accv = acc[k];", *pr_lines, store])}
}}
"""
    grid = (math.ceil(ow / tw), math.ceil(oh / th), n)
    return CudaSource(name, PRELUDE + text, grid, (THREADS, 1, 1), {"tile": (th, tw), "chunk": chunk})


# -- ConvNeXt ---------------------------------------------------------------------------------------

_INIT = {"sum": "0.0f", "max": "-INFINITY", "min": "INFINITY"}
_COMBINE = {"sum": "{a} + {b}", "max": "fc_maxf({a}, {b})", "min": "fc_minf({a}, {b})"}


def _convnext_tiles(g: dict, e: int) -> tuple[int, int, int, int, int, int]:
    """(TH, TW, IH, IW, CE, CH): the output tile, its depthwise window, the
    chunk of channels the window holds and the chunk of expanded channels;
    the tile's depthwise outputs (every channel: the layer norm needs them
    all) and both chunks share the 40 KB."""
    c = g["cout"]
    ce, ch = min(8, c), min(16, e)
    for edge in (TILE, 6, 4, 2, 1):
        th, tw = min(edge, g["oh"]), min(edge, g["ow"])
        ih, iw = _window(g, th, tw)
        if 4 * (ih * iw * ce + th * tw * (c + ch)) <= SHARED_BYTES:
            return th, tw, ih, iw, ce, ch
    raise NotImplementedError(f"a {c}-channel pixel row does not fit in shared memory")


def _norm_program(spec: KernelSpec, index: int, c: int) -> list[str]:
    """The layer norm of pixel row ``q`` of ``dbuf`` (``pix`` its global pixel), in place."""
    layer = spec.attrs["layers"][index]
    mapping = spec.attrs["operand_maps"][index]

    def load(node: Load) -> str:
        if mapping[node.operand] == -1:  # the depthwise output, in shared memory
            return f"dbuf[q * {c} + cc]"
        a = layer.accesses[node.access]
        return _load(
            layer.operands[node.operand].dtype, f"in{mapping[node.operand]} + {offset(['pix', 'cc'], a.strides)}"
        )

    lines = []
    for k, (kind, expr) in enumerate(layer.stages):
        em = ExprEmitter(False, load, stat=lambda s: f"st{s.index}", prefix=f"s{k}_")
        value = em.emit(expr)
        lines.append(f"float st{k} = {_INIT[kind]};")
        lines.append(f"for (long cc = 0; cc < {c}L; ++cc) {{")
        lines.extend("  " + x for x in em.lines)
        lines.append(f"  st{k} = {_COMBINE[kind].format(a=f'st{k}', b=value)};")
        lines.append("}")
    em = ExprEmitter(False, load, stat=lambda s: f"st{s.index}", prefix="n_")
    value = em.emit(layer.outputs[0].expr)
    # every element is read by the output expression before it is overwritten
    lines.append(f"for (long cc = 0; cc < {c}L; ++cc) {{")
    lines.extend("  " + x for x in em.lines)
    lines.append(f"  dbuf[q * {c} + cc] = {value};")
    lines.append("}")
    return lines


def _gemm_weight(spec: KernelSpec, index: int) -> tuple[str, int, int]:
    """(block operand pointer, K stride, N stride) of GEMM layer ``index``'s B."""
    layer = spec.attrs["layers"][index]
    b = layer.attrs["b"]
    _, sk, sn = layer.attrs["b_strides"]
    return f"in{spec.attrs['operand_maps'][index][b]}", sk, sn


def render_convnext(spec: KernelSpec, name: str) -> CudaSource:
    """A ConvNeXt block: per output tile, the depthwise layer chunk by chunk
    of channels (the window in shared memory) into the tile's rows of every
    channel, the layer norm on each row in place, then the expanded channels
    a chunk at a time - the expand GEMM + GELU into shared memory, its share
    of the project GEMM into the registers - and the project epilogue (bias,
    layer scale, residual) at the end."""
    convnext.check(spec)
    layers = spec.attrs["layers"]
    dw = layers[convnext.DW]
    g = conv_geometry(dw)
    n, h, w, c = g["n"], g["h"], g["w"], g["cout"]
    oh, ow = g["oh"], g["ow"]
    e = layers[convnext.UP].space[2]
    th, tw, ih, iw, ce, ch = _convnext_tiles(g, e)
    per_thread = math.ceil(th * tw * c / THREADS)
    x = f"in{spec.attrs['operand_maps'][convnext.DW][dw.attrs['input']]}"
    xs = (g["xsn"], g["xsc"], g["xsh"], g["xsw"])
    wd, wds = _weight(spec, convnext.DW)
    wu, uk, un = _gemm_weight(spec, convnext.UP)
    wdn, dk, dn = _gemm_weight(spec, convnext.DOWN)
    out = spec.outputs[0]
    ost = out.strides or (c * oh * ow, oh * ow, ow, 1)
    dw_lines, dw_value = _layer_value(spec, convnext.DW, ["nimg", "cc", "oy", "ox"], "accv", "dw")
    up_lines, up_value = _layer_value(spec, convnext.UP, ["zb", "pix", "hh"], "accv", "up")
    dn_lines, dn_value = _layer_value(spec, convnext.DOWN, ["zb", "pix", "co"], "accv", "dn")
    store = _store(out.dtype, f"out0 + nimg * {ost[0]}L + co * {ost[1]}L + oy * {ost[2]}L + ox * {ost[3]}L", dn_value)
    norm = _norm_program(spec, convnext.NORM, c)
    pixel = f"const long oy = oy0 + q / {tw}, ox = ox0 + q % {tw}, pix = (nimg * {oh}L + oy) * {ow}L + ox;"
    text = f"""
extern "C" __global__ void __launch_bounds__({THREADS}) {name}({parameters(spec)}) {{
  __shared__ float ebuf[{ih * iw * ce}];  /* the depthwise window, a chunk of channels */
  __shared__ float dbuf[{th * tw * c}];  /* the tile's depthwise outputs, then their layer norm */
  __shared__ float hbuf[{th * tw * ch}];  /* a chunk of the tile's expanded channels */
  const long nimg = blockIdx.z, oy0 = (long)blockIdx.y * {th}, ox0 = (long)blockIdx.x * {tw};
  const long iy0 = oy0 * {g["sh"]}L - {g["pt"]}L, ix0 = ox0 * {g["sw"]}L - {g["pl"]}L, zb = 0;
  (void)zb;
  for (long c0 = 0; c0 < {c}L; c0 += {ce}) {{
    {_copy_window("ebuf", x, xs, ih, iw, ce, c, h, w)}
    __syncthreads();
    for (int t = threadIdx.x; t < {th * tw * ce}; t += blockDim.x) {{
      const int q = t / {ce}, k = t % {ce};
      const long oy = oy0 + q / {tw}, ox = ox0 + q % {tw}, cc = c0 + k;
      if (cc >= {c}L) continue;
      float v = 0.0f;
      if (oy < {oh}L && ox < {ow}L) {{
        float accv = 0.0f;
        for (int ky = 0; ky < {g["kh"]}; ++ky)
          for (int kx = 0; kx < {g["kw"]}; ++kx)
            accv += ebuf[(((q / {tw}) * {g["sh"]} + ky * {g["dh"]}) * {iw} + (q % {tw}) * {g["sw"]} + kx * {g["dw"]}) * {ce} + k]
                    * {wd}[cc * {wds[0]}L + ky * {wds[2]}L + kx * {wds[3]}L];
{chr(10).join("        " + s for s in dw_lines)}
        v = {dw_value};
      }}
      dbuf[q * {c} + cc] = v;
    }}
    __syncthreads();
  }}
  for (int q = threadIdx.x; q < {th * tw}; q += blockDim.x) {{
    {pixel}
    if (oy >= {oh}L || ox >= {ow}L) continue;
{chr(10).join("    " + s for s in norm)}
  }}
  __syncthreads();
  float acc[{per_thread}];
#pragma unroll
  for (int k = 0; k < {per_thread}; ++k) acc[k] = 0.0f;
  for (long h0 = 0; h0 < {e}L; h0 += {ch}) {{
    for (int t = threadIdx.x; t < {th * tw * ch}; t += blockDim.x) {{
      const int q = t / {ch}, k = t % {ch};
      const long hh = h0 + k;
      {pixel}
      float v = 0.0f;
      if (hh < {e}L && oy < {oh}L && ox < {ow}L) {{
        float accv = 0.0f;
        for (long cc = 0; cc < {c}L; ++cc) accv += dbuf[q * {c} + cc] * {wu}[cc * {uk}L + hh * {un}L];
{chr(10).join("        " + s for s in up_lines)}
        v = {up_value};
      }}
      hbuf[t] = v;
    }}
    __syncthreads();
    const int chunk = {e}L - h0 < {ch} ? (int)({e}L - h0) : {ch};
#pragma unroll
    for (int k = 0; k < {per_thread}; ++k) {{
      const int j = threadIdx.x + k * {THREADS};
      if (j >= {th * tw * c}) break;
      const int q = j / {c}, co = j % {c};
      float s = acc[k];
      for (int m = 0; m < chunk; ++m) s += hbuf[q * {ch} + m] * {wdn}[(h0 + m) * {dk}L + co * {dn}L];
      acc[k] = s;
    }}
    __syncthreads();
  }}
  {_owned_outputs(per_thread, th, tw, oh, ow, c, ["const float accv = acc[k];", *dn_lines, store])}
}}
"""
    grid = (math.ceil(ow / tw), math.ceil(oh / th), n)
    return CudaSource(name, PRELUDE + text, grid, (THREADS, 1, 1), {"tile": (th, tw), "chunk": (ce, ch)})


# -- ResNet basic blocks ----------------------------------------------------------------------------


def _basic_tiles(g1: dict, g2: dict) -> tuple[int, int, int, int, int, int, int]:
    """(TH, TW, MH, MW, IH, IW, CI): the output tile, the first layer's rows
    it needs (the second layer's window, every channel), their input window
    and the chunk of input channels that window holds."""
    c = g2["cin"]
    ci = min(32, g1["cin"])
    for edge in (TILE, 6, 4, 2, 1):
        th, tw = min(edge, g2["oh"]), min(edge, g2["ow"])
        mh, mw = _window(g2, th, tw)
        ih, iw = _window(g1, mh, mw)
        if 4 * (mh * mw * c + ih * iw * ci) <= SHARED_BYTES:
            return th, tw, mh, mw, ih, iw, ci
    raise NotImplementedError(f"a {c}-channel window does not fit in shared memory")


def render_basic(spec: KernelSpec, name: str) -> CudaSource:
    """A ResNet basic block: per output tile, the first layer's outputs over
    the second layer's window (every channel) accumulate in shared memory
    over chunks of the input channels (each chunk's input window in shared
    memory too); then the first epilogue, zero where the window leaves the
    map (the second layer's padding), and the second layer + residual
    straight to the output."""
    basic.check(spec)
    first, second = spec.attrs["layers"]
    g1, g2 = conv_geometry(first), conv_geometry(second)
    n, cin, h, w = g1["n"], g1["cin"], g1["h"], g1["w"]
    c, h2, w2, oh, ow = g2["cin"], g2["h"], g2["w"], g2["oh"], g2["ow"]
    th, tw, mh, mw, ih, iw, ci = _basic_tiles(g1, g2)
    per_thread = math.ceil(th * tw * c / THREADS)
    x = f"in{spec.attrs['operand_maps'][0][first.attrs['input']]}"
    xs = (g1["xsn"], g1["xsc"], g1["xsh"], g1["xsw"])
    wt1, wt1s = _weight(spec, 0)
    wt2, wt2s = _weight(spec, 1)
    out = spec.outputs[0]
    ost = out.strides or (c * oh * ow, oh * ow, ow, 1)
    l1_lines, l1_value = _layer_value(spec, 0, ["nimg", "m", "my", "mx"], "accv", "f")
    l2_lines, l2_value = _layer_value(spec, 1, ["nimg", "co", "oy", "ox"], "accv", "s")
    store = _store(out.dtype, f"out0 + nimg * {ost[0]}L + co * {ost[1]}L + oy * {ost[2]}L + ox * {ost[3]}L", l2_value)
    second = [  # the second layer at (q, co), from the first layer's window
        "float accv = 0.0f;",
        f"for (int ky = 0; ky < {g2['kh']}; ++ky)",
        f"  for (int kx = 0; kx < {g2['kw']}; ++kx) {{",
        f"    const float* mv = mbuf + (((q / {tw}) + ky) * {mw} + (q % {tw}) + kx) * {c};",
        f"    for (int m = 0; m < {c}; ++m) accv += mv[m] * {wt2}[co * {wt2s[0]}L + m * {wt2s[1]}L + ky * {wt2s[2]}L + kx * {wt2s[3]}L];",
        "  }",
    ]
    text = f"""
extern "C" __global__ void __launch_bounds__({THREADS}) {name}({parameters(spec)}) {{
  __shared__ float xbuf[{ih * iw * ci}];  /* the input window, a chunk of input channels */
  __shared__ float mbuf[{mh * mw * c}];  /* the first layer over the second one's window, every channel */
  const long nimg = blockIdx.z, oy0 = (long)blockIdx.y * {th}, ox0 = (long)blockIdx.x * {tw};
  const long my0 = oy0 - {g2["pt"]}L, mx0 = ox0 - {g2["pl"]}L;  /* the window's first row and column */
  const long iy0 = my0 * {g1["sh"]}L - {g1["pt"]}L, ix0 = mx0 * {g1["sw"]}L - {g1["pl"]}L;
  for (int t = threadIdx.x; t < {mh * mw * c}; t += blockDim.x) mbuf[t] = 0.0f;
  for (long c0 = 0; c0 < {cin}L; c0 += {ci}) {{
    __syncthreads();
    {_copy_window("xbuf", x, xs, ih, iw, ci, cin, h, w)}
    __syncthreads();
    const int chunk = {cin}L - c0 < {ci} ? (int)({cin}L - c0) : {ci};
    for (int t = threadIdx.x; t < {mh * mw * c}; t += blockDim.x) {{
      const int p = t / {c}, m = t % {c};
      float s = mbuf[t];
      for (int ky = 0; ky < {g1["kh"]}; ++ky)
        for (int kx = 0; kx < {g1["kw"]}; ++kx) {{
          const float* xv = xbuf + (((p / {mw}) * {g1["sh"]} + ky * {g1["dh"]}) * {iw} + (p % {mw}) * {g1["sw"]} + kx * {g1["dw"]}) * {ci};
          for (int k = 0; k < chunk; ++k)
            s += xv[k] * {wt1}[m * {wt1s[0]}L + (c0 + k) * {wt1s[1]}L + ky * {wt1s[2]}L + kx * {wt1s[3]}L];
        }}
      mbuf[t] = s;
    }}
  }}
  __syncthreads();
  for (int t = threadIdx.x; t < {mh * mw * c}; t += blockDim.x) {{
    const int p = t / {c};
    const long m = t % {c}, my = my0 + p / {mw}, mx = mx0 + p % {mw};
    float v = 0.0f;
    if (my >= 0 && my < {h2}L && mx >= 0 && mx < {w2}L) {{
      const float accv = mbuf[t];
{chr(10).join("      " + s for s in l1_lines)}
      v = {l1_value};
    }}
    mbuf[t] = v;
  }}
  __syncthreads();
  {_owned_outputs(per_thread, th, tw, oh, ow, c, [*second, *l2_lines, store])}
}}
"""
    grid = (math.ceil(ow / tw), math.ceil(oh / th), n)
    return CudaSource(name, PRELUDE + text, grid, (THREADS, 1, 1), {"tile": (th, tw), "chunk": ci})
