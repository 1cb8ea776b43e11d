"""Block kernels: an inverted residual (optional 1x1 expand, depthwise kxk,
1x1 project with the residual add) as one kernel, in NHWC.

Each thread owns a run of output rows of one image and walks it in bands:
  1. expand - the input rows the band's depthwise window needs go through the
     expand GEMM into a *ring* of padded rows (zero columns at the sides, so
     the depthwise loop has no bounds checks); rows already in the ring from
     the previous band are not recomputed;
  2. depthwise - the band's output rows, from the ring, into a band buffer;
  3. project - the band buffer through the project GEMM, epilogue (bias,
     residual) fused, straight to the output.
The expanded tensor (the block's largest, t x the input) never exists in
full: ring and band buffer are sized to stay in L2. This is ConvFirst's
block fusion ("temporal locality, no round trip of intermediates").

A ConvNeXt block (``pattern == "convnext"``: depthwise kxk, layer norm, 1x1
expand GEMM, 1x1 project GEMM with the residual) walks the same bands with
no expand layer: the depthwise layer fills the band buffer, the layer norm
normalizes it in place, the expand GEMM writes the band's expanded rows to
a second buffer and the project GEMM, epilogue fused (bias, layer scale,
residual), writes the output. Neither the normalized nor the 4x expanded
tensor exists in full.

A ResNet bottleneck (``pattern == "bottleneck"``) is the inverted residual
with a dense kxk middle layer, run as one GEMM per tap over the ring rows.
A basic block (``pattern == "basic"``: two dense kxk layers) keeps a ring
of padded input rows and a ring of the first layer's rows; the second
layer (+ residual) reads the latter straight into the output.

The layers are the specs of the block's nested groups (``conv2d``, and for
ConvNeXt ``reduction`` and ``gemm``); their epilogues are rendered by the
same code as a lone kernel's.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ...kernels.spec import KernelSpec, conv_geometry
from .common import SIGNATURE, vstore
from .dialects import Dialect
from .gemm import epilogue_stores, microkernel, pack_panels, tile_columns
from .reduction import row_program

L2_BUDGET = 192 * 1024  # bytes of ring + band buffer per thread
CONVNEXT_BUDGET = 1024 * 1024  # ring + band + expanded band: one core's L2 (the weights stream through)
CONVNEXT_WEIGHTS_IN_L2 = 512 * 1024  # above: the GEMM weights stream from L3 once per band


def _convnext(spec: KernelSpec) -> bool:
    return spec.attrs.get("pattern") == "convnext"


def _basic(spec: KernelSpec) -> bool:
    """ResNet's basic block: two dense kxk convolutions, the second with the residual."""
    return spec.attrs.get("pattern") == "basic"


def _bottleneck(spec: KernelSpec) -> bool:
    """ResNet's bottleneck: the middle layer is a dense kxk convolution."""
    return spec.attrs.get("pattern") == "bottleneck"


def _roles(spec: KernelSpec) -> tuple[KernelSpec | None, KernelSpec, KernelSpec]:
    """(expand or None, depthwise, last layer)."""
    layers = spec.attrs["layers"]
    if _convnext(spec):
        return None, layers[0], layers[-1]
    if len(layers) == 3:
        return layers[0], layers[1], layers[2]
    if len(layers) == 2:
        return None, layers[0], layers[1]
    raise NotImplementedError(f"block kernels have 2 or 3 layers, not {len(layers)}")


def _gemm_dims(layer: KernelSpec) -> tuple[int, int]:
    """(K, N) of a 1x1 layer: a 1x1 convolution or a GEMM over pixel rows."""
    if layer.kind == "gemm":
        return layer.attrs["K"], layer.space[2]
    g = conv_geometry(layer)
    return g["cin"], g["cout"]


def _check_convnext(spec: KernelSpec) -> None:
    dw, norm, up, down = spec.attrs["layers"]
    maps = spec.attrs["operand_maps"]
    g = conv_geometry(dw)
    c, e = g["cout"], _gemm_dims(up)[1]
    if (g["cin_g"], g["cout_g"], g["sh"], g["sw"], g["oh"], g["ow"]) != (1, 1, 1, 1, g["h"], g["w"]):
        raise NotImplementedError("a ConvNeXt block starts with a same-size stride-1 depthwise layer")
    for layer in spec.attrs["layers"]:
        if any(o.dtype != "f32" for o in layer.operands) or layer.outputs[0].dtype != "f32":
            raise NotImplementedError("block kernels are float32")
    if any(a.strides[0] or a.strides[2] or a.strides[3] for a in dw.accesses):
        raise NotImplementedError("the depthwise epilogue reads a per-pixel tensor")
    (out,) = norm.outputs
    x = maps[1].index(-1)
    x_strides = {a.strides for a in norm.accesses if a.operand == x}
    if norm.attrs["row_rank"] != 1 or norm.space[1] != c or x_strides != {(c, 1)} or out.space_strides != (c, 1):
        raise NotImplementedError("the layer norm does not normalize pixel rows of the depthwise output")
    for layer, k, n, last in ((up, c, e, False), (down, e, c, True)):
        a_i, b_i = layer.attrs["a"], layer.attrs["b"]
        if _gemm_dims(layer) != (k, n) or layer.space[0] != 1 or layer.attrs["a_strides"][1:] != (k, 1):
            raise NotImplementedError("the block's GEMMs do not read dense pixel rows")
        if not layer.operands[b_i].constant or layer.outputs[0].space_strides is not None:
            raise NotImplementedError("the block's GEMMs need constant weights and pixel-row outputs")
        if not last and any(a.strides[1] for a in layer.accesses if a.operand not in (a_i, b_i)):
            raise NotImplementedError("the expand epilogue reads a per-pixel tensor")
    fg = conv_geometry(dw)
    if not _dense_nhwc((fg["n"], c, fg["h"], fg["w"]), (fg["xsn"], fg["xsc"], fg["xsh"], fg["xsw"])):
        raise NotImplementedError("the block input is not dense channels-last")
    o = spec.outputs[0]
    if not _dense_nhwc(o.shape, o.strides or torch.empty(o.shape, device="meta").stride()):
        raise NotImplementedError("the block output is not dense channels-last")


def _check_basic(spec: KernelSpec) -> None:
    first, second = spec.attrs["layers"]
    g1, g2 = conv_geometry(first), conv_geometry(second)
    for layer in (first, second):
        if any(o.dtype != "f32" for o in layer.operands) or layer.outputs[0].dtype != "f32":
            raise NotImplementedError("block kernels are float32")
    if any(a.strides[0] or a.strides[2] or a.strides[3] for a in first.accesses):
        raise NotImplementedError("the first layer's epilogue reads a per-pixel tensor")
    if g1["g"] != 1 or g2["g"] != 1 or (g2["sh"], g2["sw"]) != (1, 1) or g2["cin"] != g2["cout"]:
        raise NotImplementedError("a basic block is a dense kxk layer and a stride-1 one keeping its channels")
    if (g2["oh"], g2["ow"]) != (g2["h"], g2["w"]) or (g1["dh"], g1["dw"], g2["dh"], g2["dw"]) != (1, 1, 1, 1):
        raise NotImplementedError("the second layer of a basic block keeps the map size, with no dilation")
    if not _dense_nhwc((g1["n"], g1["cin"], g1["h"], g1["w"]), (g1["xsn"], g1["xsc"], g1["xsh"], g1["xsw"])):
        raise NotImplementedError("the block input is not dense channels-last")
    out = spec.outputs[0]
    if not _dense_nhwc(out.shape, out.strides or torch.empty(out.shape, device="meta").stride()):
        raise NotImplementedError("the block output is not dense channels-last")


def _check(spec: KernelSpec) -> None:
    if _convnext(spec):
        return _check_convnext(spec)
    if _basic(spec):
        return _check_basic(spec)
    expand, dw, project = _roles(spec)
    for layer, m in zip(spec.attrs["layers"], spec.attrs["operand_maps"]):
        if any(o.dtype != "f32" for o in layer.operands) or layer.outputs[0].dtype != "f32":
            raise NotImplementedError("block kernels are float32")
        if any(m[a.operand] == -1 for a in layer.accesses):
            raise NotImplementedError("a layer's epilogue reads the previous layer's output")
        for a in layer.accesses:
            if layer is not project and (a.strides[0] or a.strides[2] or a.strides[3]):
                raise NotImplementedError("an inner layer's epilogue reads a per-pixel tensor")
    g = conv_geometry(dw)
    if _bottleneck(spec):
        if g["g"] != 1 or g["cin"] != g["cout"] or (g["dh"], g["dw"]) != (1, 1) or expand is None:
            raise NotImplementedError("a bottleneck's middle layer is a dense kxk convolution keeping its channels")
    elif g["cin_g"] != 1 or g["cout_g"] != 1:
        raise NotImplementedError("the middle layer of a block is not depthwise")
    for layer in (expand, project):
        if layer is not None:
            lg = conv_geometry(layer)
            if (lg["kh"], lg["kw"], lg["sh"], lg["sw"], lg["g"]) != (1, 1, 1, 1, 1) or any(
                lg[p] for p in ("pt", "pl", "pb", "pr")
            ):
                raise NotImplementedError("expand/project layers of a block are 1x1 convolutions")
    first = expand or dw
    fg = conv_geometry(first)
    c, h, w = fg["cin"], fg["h"], fg["w"]
    if not _dense_nhwc((fg["n"], c, h, w), (fg["xsn"], fg["xsc"], fg["xsh"], fg["xsw"])):
        raise NotImplementedError("the block input is not dense channels-last")
    out = spec.outputs[0]
    if not _dense_nhwc(out.shape, out.strides or torch.empty(out.shape, device="meta").stride()):
        raise NotImplementedError("the block output is not dense channels-last")


def _dense_nhwc(shape, strides) -> bool:
    """Laid out as a dense NHWC tensor (strides of size-1 dims do not matter)."""
    n, c, h, w = shape
    want = (h * w * c, 1, w * c, c)
    return all(size == 1 or s == t for size, s, t in zip(shape, strides, want))


def _panel_tile(channels: int, dialect: Dialect) -> tuple[int, int]:
    """(MR, NV) for a GEMM layer producing ``channels``: the panel width
    that pads the channels least, the most rows the registers allow."""
    vl, regs = dialect.vl, dialect.vector_registers
    vectors = math.ceil(channels / vl)
    nv = min((4, 3, 2, 1), key=lambda v: (math.ceil(vectors / v) * v - vectors, -v))
    nv = min(nv, vectors)
    mr = max(m for m in (1, 2, 4, 6, 8, 12, 14) if m * nv + nv + 1 <= regs)
    return mr, nv


# measured: 1.2 MB of GEMM weights (192 channels) still 1.4x faster fused, 4.7 MB (384) a tie
CONVNEXT_WEIGHTS_FUSED_MAX = 2 * 1024 * 1024
BOTTLENECK_WEIGHTS_FUSED_MAX = 256 * 1024  # dense middle layer: 64 channels fuse, 128 run as layers


def unfused_by_default(spec: KernelSpec) -> str | None:
    """Why, untuned, the layers one by one are the better default (None: the
    block kernel is). A ConvNeXt block walks its GEMM weights once per band
    and thread; once they outgrow L2 they stream from L3 each time, while
    the separate GEMMs read them about once. Measured here (ms, block vs layers,
    batch 1 / 8): 96 ch @56 1.30/1.44, 10.5/27.3; 192 @28 1.13/1.66,
    8.8/14.1; 384 @14 (4.7 MB of weights) 1.02/1.04, 8.2/8.1; 768 @7
    (18.9 MB) 1.30/1.01. Splitting the expanded channels over the threads
    instead (each weight read once) does not change that: 384 @14 1.03 /
    8.4 ms, 768 @7 1.07 / 8.5 ms against the layers' 1.01 / 8.2 and 0.98 /
    7.7 - these blocks are compute-bound. The tuner measures all three.

    A ResNet bottleneck is compute-bound too; fused, it saves the two
    reduced tensors' round trips, which pays only while its dense middle
    weights are small: 256-64-256 @56 (147 KB) block vs layers 0.89 / 0.89
    ms at batch 1, 8.1 / 9.3 ms at batch 8; 512-128-512 @28 (590 KB) 0.91 /
    0.89 and 7.5 / 7.5 ms.

    A basic block (both layers dense kxk, run a row at a time by
    `_conv_row`) loses to the indirect convolution kernels it replaces:
    64 @56 1.02 / 0.94 ms (batch 8: 7.6 / 7.8), 128 @28 1.03 / 0.96, 256
    @14 1.19 / 0.92, 512 @7 2.0 / 0.96 ms - so it is never the untuned
    default."""
    if _basic(spec):
        return (
            "two dense convolutions one output row at a time measured slower than the indirect convolution "
            "kernels (ResNet-18's 64 ch @56: 1.02 vs 0.94 ms); the tuner can still choose the block"
        )
    if _bottleneck(spec):
        g = conv_geometry(spec.attrs["layers"][1])
        weights = 4 * g["K"] * g["cout"]
        if weights > BOTTLENECK_WEIGHTS_FUSED_MAX:
            return f"its {g['kh']}x{g['kw']} weights ({weights / 2**10:.0f} KiB) are re-read for every band"
        return None
    if not _convnext(spec):
        return None
    weights = 8 * math.prod(_gemm_dims(spec.attrs["layers"][-1]))
    if weights > CONVNEXT_WEIGHTS_FUSED_MAX:
        return (
            f"its GEMM weights ({weights / 2**20:.1f} MiB) outgrow L2 and would be re-read for every band; "
            "the tuner can still choose the block"
        )
    return None


def tunables(spec: KernelSpec, dialect: Dialect) -> dict[str, tuple]:
    if _basic(spec):
        return {"band": (1, 2, 4), "split": ("rows",)}
    if _bottleneck(spec):  # the dense middle layer needs every channel of the ring: rows only
        return {"band": (1, 2, 4, 8, 16), "split": ("rows",)}
    return {"band": (1, 2, 4, 8, 16), "split": ("rows", "channels")}


SPLIT_ROWS_BELOW = 10  # output rows per thread under which a channel split wins


def _default_split(spec: KernelSpec) -> str:
    """Small maps with fewer images than threads: split the expanded
    channels, not the rows. Rows split an image into runs whose depthwise
    halo is recomputed by both neighbours - 2 rows of expand GEMM per 3.5
    rows of a 7x7 map - while a channel split recomputes nothing and reads
    each weight once, at the price of adding up partial project sums (which
    outweighs the halo on large maps: MobileNetV2's 112x112 block 188 us by
    rows, 328 us by channels; its 7x7 blocks 200-346 us by rows, 162-251 by
    channels)."""
    _, dw, _ = _roles(spec)
    g = conv_geometry(dw)
    threads = max(2, torch.get_num_threads())
    few_rows = g["n"] * g["oh"] / threads < SPLIT_ROWS_BELOW
    return "channels" if g["n"] < threads and few_rows else "rows"


def _band(spec: KernelSpec, nthreads: int = 2) -> int:
    _, dw, last = _roles(spec)
    g = conv_geometry(dw)
    ring_row = 4 * (g["w"] + g["pl"] + g["pr"]) * g["cout"]
    band_row = 4 * g["ow"] * g["cout"]
    budget, pixels = L2_BUDGET, 64  # >= 64 pixels per project GEMM
    if _convnext(spec):  # the expanded rows of the band too
        band_row += 4 * g["ow"] * _gemm_dims(last)[0]
        budget = CONVNEXT_BUDGET
        if 8 * math.prod(_gemm_dims(last)) > CONVNEXT_WEIGHTS_IN_L2:
            pixels = 256  # weights re-read from L3 for every band: fewer, larger bands
    band = max(1, math.ceil(pixels / g["ow"]))
    while band > 1 and ring_row * ((band - 1) * g["sh"] + g["kh"]) + band_row * band > budget:
        band -= 1
    return min(band, g["oh"])


def default_params(spec: KernelSpec, dialect: Dialect) -> dict:
    _check(spec)
    if _basic(spec):  # rows of the first layer are kept between bands: the band size changes no work
        tiles = [_panel_tile(conv_geometry(layer)["cout"], dialect) for layer in spec.attrs["layers"]]
        return {"band": 1, "tiles": tiles, "split": "rows", "vl": dialect.vl}
    if _convnext(spec):
        _, _, up, down = spec.attrs["layers"]
        tiles = [_panel_tile(_gemm_dims(layer)[1], dialect) for layer in (up, down)]
        return {"band": _band(spec), "tiles": tiles, "split": "rows", "vl": dialect.vl}
    expand, mid, project = _roles(spec)
    tiles = [
        _panel_tile(conv_geometry(layer)["cout"], dialect) if layer is not None else None for layer in (expand, project)
    ]
    if _bottleneck(spec):
        tiles.append(_panel_tile(conv_geometry(mid)["cout"], dialect))
        return {"band": _band(spec), "tiles": tiles, "split": "rows", "vl": dialect.vl}
    return {"band": _band(spec), "tiles": tiles, "split": _default_split(spec), "vl": dialect.vl}


def _ring_rows(spec: KernelSpec, params: dict) -> int:
    _, dw, _ = _roles(spec)
    g = conv_geometry(dw)
    return (params["band"] - 1) * g["sh"] + g["kh"]


def _basic_rings(spec: KernelSpec, params: dict) -> tuple[int, int, int, int]:
    """(input ring rows, floats per padded input row, first-layer ring rows,
    floats per padded first-layer row) of a basic block."""
    g1, g2 = (conv_geometry(layer) for layer in spec.attrs["layers"])
    return (
        g1["kh"],
        (g1["w"] + g1["pl"] + g1["pr"]) * g1["cin"],
        params["band"] - 1 + g2["kh"],
        (g2["w"] + g2["pl"] + g2["pr"]) * g2["cin"],
    )


def _per_thread_floats(spec: KernelSpec, params: dict) -> int:
    """Ring + zero row + band buffer (+ the partial project sums of a
    channel split: one image's output)."""
    if _basic(spec):  # two rings, each with its zero row
        in_rows, in_row, mid_rows, mid_row = _basic_rings(spec, params)
        return (in_rows + 1) * in_row + (mid_rows + 1) * mid_row + 32
    _, dw, project = _roles(spec)
    g = conv_geometry(dw)
    ring_row = (g["w"] + g["pl"] + g["pr"]) * g["cout"]
    floats = ring_row * (_ring_rows(spec, params) + 1) + params["band"] * g["ow"] * g["cout"]
    if _convnext(spec):  # the band's expanded rows
        floats += params["band"] * g["ow"] * _gemm_dims(project)[0]
    if params.get("split") == "channels":
        floats += g["oh"] * g["ow"] * _gemm_dims(project)[1] + 16
    return floats


def workspace_bytes(spec: KernelSpec, params: dict, nthreads: int) -> int:
    return nthreads * (4 * _per_thread_floats(spec, params) + 128) + 64


def _weight_key(layer: KernelSpec) -> int | None:
    """The layer operand the kernel re-lays out (conv weight, GEMM B)."""
    return {"conv2d": layer.attrs.get("weight"), "gemm": layer.attrs.get("b")}.get(layer.kind)


def _weight_operand(spec: KernelSpec, index: int) -> int:
    layer = spec.attrs["layers"][index]
    return spec.attrs["operand_maps"][index][_weight_key(layer)]


def _prepare_convnext(spec: KernelSpec, params: dict, constants: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    out = {i: t.float() for i, t in constants.items()}
    dw, _, up, down = spec.attrs["layers"]
    for index, layer, tile in ((2, up, params["tiles"][0]), (3, down, params["tiles"][1])):
        w_i = _weight_operand(spec, index)
        out[w_i] = pack_panels(constants[w_i].float().reshape(_gemm_dims(layer)), tile[1] * params["vl"])
    g = conv_geometry(dw)
    w_i = _weight_operand(spec, 0)
    out[w_i] = constants[w_i].float().reshape(g["cout"], g["kh"] * g["kw"]).t().contiguous()
    return out


def _pack_taps(weight: torch.Tensor, nr: int) -> torch.Tensor:
    """[cout, cin, kh, kw] -> [tap][panel][cin][NR]: one GEMM weight per tap (`_conv_row`)."""
    kh, kw = weight.shape[2:]
    return torch.stack([pack_panels(weight[:, :, ky, kx].t(), nr) for ky in range(kh) for kx in range(kw)]).contiguous()


def prepare(spec: KernelSpec, params: dict, constants: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    if _convnext(spec):
        return _prepare_convnext(spec, params, constants)
    if _basic(spec):
        out = {i: t.float() for i, t in constants.items()}
        for index, tile in enumerate(params["tiles"]):
            w_i = _weight_operand(spec, index)
            out[w_i] = _pack_taps(constants[w_i].float(), tile[1] * params["vl"])
        return out
    out = {i: t.float() for i, t in constants.items()}
    expand, dw, project = _roles(spec)
    offset = 1 if expand is not None else 0
    tiles = params["tiles"]
    for index, layer, tile in ((0, expand, tiles[0]), (offset + 1, project, tiles[1])):
        if layer is None:
            continue
        w_i = _weight_operand(spec, index)
        g = conv_geometry(layer)
        out[w_i] = pack_panels(constants[w_i].float().reshape(g["cout"], g["cin"]).t(), tile[1] * params["vl"])
    g = conv_geometry(dw)
    w_i = _weight_operand(spec, offset)
    if _bottleneck(spec):
        out[w_i] = _pack_taps(constants[w_i].float(), tiles[2][1] * params["vl"])
        return out
    out[w_i] = constants[w_i].float().reshape(g["cout"], g["kh"] * g["kw"]).t().contiguous()
    return out


# -- rendering ------------------------------------------------------------------------------------


def _bind(spec: KernelSpec, index: int) -> str:
    """Declarations naming layer ``index``'s operands as in its own spec."""
    layer = spec.attrs["layers"][index]
    mapping = spec.attrs["operand_maps"][index]
    return " ".join(
        f"const float* FC_RESTRICT in{k} = (const float*)args[{m}]; (void)in{k};"
        for k, m in enumerate(mapping)
        if m >= 0 and k != _weight_key(layer)
    )


def _pixel_stride(layer: KernelSpec, access) -> int:
    """The stride of an epilogue operand over the flat (n, oh, ow) pixel index."""
    n, _, oh, ow = layer.space
    sn, _, sh, sw = access.strides
    step = sw if ow > 1 else sh if oh > 1 else sn
    if (oh > 1 and sh != step * ow) or (n > 1 and sn != step * oh * ow):
        raise NotImplementedError("an epilogue operand is not laid out pixel after pixel")
    return step


def _flat_strides(layer: KernelSpec, access) -> tuple[int, int]:
    """An epilogue access as (stride per pixel, stride per channel)."""
    if layer.kind == "gemm":  # space (1, pixels, channels)
        return access.strides[1], access.strides[2]
    return _pixel_stride(layer, access), access.strides[1]


def _epilogue(layer: KernelSpec, valid: str | None) -> list[str]:
    """The layer's epilogue at (pix, co), stored to ``dst + row * ldd + co - co_base``."""
    flat = dataclasses.replace(
        layer,
        accesses=[dataclasses.replace(a, strides=_flat_strides(layer, a)) for a in layer.accesses],
    )

    def store(j: int, o, value: str, n: str | None) -> str:
        return vstore("f32", "dst + row * ldd + (co - co_base)", value, n)

    return epilogue_stores(flat, ["pix"], "co", valid, store)


def _microkernels(
    name: str, layer: KernelSpec, tile: tuple[int, int], vl: int, k: int | None = None, accumulate: bool = False
) -> list[str]:
    k = k or _gemm_dims(layer)[0]
    return [
        microkernel(f"{name}_u{r}", r, tile[1], vl, "lda", "1", min(k, 512), inline=False, accumulate=accumulate)
        for r in range(1, tile[0] + 1)
    ]


def _dispatch(name: str, mr: int, k: str, bp: str, indent: str) -> str:
    cases = "\n".join(
        f"{indent}  case {r}: {name}_u{r}({k}, a + m0 * lda, lda, {bp}, tile); break;" for r in range(1, mr + 1)
    )
    return f"{indent}switch (r) {{\n{cases}\n{indent}  default: break;\n{indent}}}"


def _gemm_rows(spec: KernelSpec, name: str, index: int, tile: tuple[int, int], vl: int) -> str:
    """``name(args, a, lda, rows, wp, dst, ldd, pix0, p0, p1, co_base)``: columns of panels
    [p0, p1) of dst[rows][..] = epilogue(a[rows][K] @ W), stored at column co - co_base."""
    layer = spec.attrs["layers"][index]
    mr, nv = tile
    (k, c), nr = _gemm_dims(layer), nv * vl
    full, part = _epilogue(layer, None), _epilogue(layer, "rem")
    return (
        "\n".join(_microkernels(name, layer, tile, vl))
        + f"""
static void {name}(void* const* args, const float* FC_RESTRICT a, long lda, long rows,
                   const float* FC_RESTRICT wp, float* FC_RESTRICT dst, long ldd, long pix0,
                   long p0, long p1, long co_base) {{
  {_bind(spec, index)}
  float tile[{mr * nr}] __attribute__((aligned(64)));
  for (long p = p0; p < p1; ++p) {{
    const float* FC_RESTRICT bp = wp + p * {k * nr}L;
    for (long m0 = 0; m0 < rows; m0 += {mr}L) {{
      const long r = rows - m0 < {mr}L ? rows - m0 : {mr}L;
{_dispatch(name, mr, f"{k}L", "bp", "      ")}
      for (long i = 0; i < r; ++i) {{
        const long row = m0 + i, pix = pix0 + row;
{tile_columns(nr, vl, "co", f"p * {nr}L", c, full, part, "        ")}
      }}
    }}
  }}
}}
"""
    )


def _gemm_partial_sums(spec: KernelSpec, name: str, index: int, tile: tuple[int, int], vl: int) -> str:
    """``name(a, lda, rows, wp, k0, klen, dst)``: dst[rows][C] = a[rows][klen] @ W[k0 : k0 + klen]
    with no epilogue - one thread's share of a K split (the channel-split project)."""
    layer = spec.attrs["layers"][index]
    mr, nv = tile
    (k, c), nr = _gemm_dims(layer), nv * vl
    return (
        "\n".join(_microkernels(name, layer, tile, vl))
        + f"""
static void {name}(const float* FC_RESTRICT a, long lda, long rows, const float* FC_RESTRICT wp,
                   long k0, long klen, float* FC_RESTRICT dst) {{
  float tile[{mr * nr}] __attribute__((aligned(64)));
  for (long p = 0; p < {math.ceil(c / nr)}L; ++p) {{
    const float* FC_RESTRICT bp = wp + p * {k * nr}L + k0 * {nr}L;
    for (long m0 = 0; m0 < rows; m0 += {mr}L) {{
      const long r = rows - m0 < {mr}L ? rows - m0 : {mr}L;
{_dispatch(name, mr, "klen", "bp", "      ")}
      for (long i = 0; i < r; ++i)
        for (long cc = 0; cc < {nr}L; cc += {vl}) {{
          const long co = p * {nr}L + cc;
          if (co + {vl} <= {c}L) vstore(dst + (m0 + i) * {c}L + co, vload(tile + i * {nr} + cc));
          else if (co < {c}L) vstoren(dst + (m0 + i) * {c}L + co, vload(tile + i * {nr} + cc), (int)({c}L - co));
        }}
    }}
  }}
}}
"""
    )


def _depthwise_row(spec: KernelSpec, name: str, index: int, vl: int) -> str:
    """``name(args, rows_in, wts, dst, pix0, c0, c1, ld)``: channels [c0, c1) of one output
    row of the depthwise layer from ``kh`` padded input rows of ``ld`` floats per pixel
    (column 0 = image column -pad_left, channel 0 = c0)."""
    layer = spec.attrs["layers"][index]
    g = conv_geometry(layer)
    c, taps = g["cout"], g["kh"] * g["kw"]

    def body(partial: bool) -> list[str]:
        load = (lambda p: f"vloadn({p}, rem)") if partial else (lambda p: f"vload({p})")
        lines = [f"const vf w{t} = {load(f'wts + {t * c}L + co')};" for t in range(taps)]
        lines.append(f"for (long ox = 0; ox < {g['ow']}L; ++ox) {{")
        lines.append("  vf acc = vzero();")
        for ky in range(g["kh"]):
            for kx in range(g["kw"]):
                ptr = f"rows_in[{ky}] + (ox * {g['sw']}L + {kx}L) * ld + (co - c0)"
                lines.append(f"  acc = vfma(w{ky * g['kw'] + kx}, {load(ptr)}, acc);")
        lines.append("  const long row = ox, pix = pix0 + ox, ldd = ld, co_base = c0;")
        lines.extend("  " + x for x in _epilogue(layer, "rem" if partial else None))
        lines.append("}")
        return lines

    return f"""
static void {name}(void* const* args, const float* const* rows_in, const float* FC_RESTRICT wts,
                   float* FC_RESTRICT dst, long pix0, long c0, long c1, long ld) {{
  {_bind(spec, index)}
  for (long co = c0; co < c1; co += {vl}) {{
    if (co + {vl} <= c1) {{
{chr(10).join("      " + x for x in body(False))}
    }} else {{
      const int rem = (int)(c1 - co);
{chr(10).join("      " + x for x in body(True))}
    }}
  }}
}}
"""


def _conv_row(spec: KernelSpec, name: str, index: int, tile: tuple[int, int], vl: int) -> str:
    """``name(args, rows_in, wts, dst, pix0, c0, c1, ld)`` for a dense kxk
    layer (a bottleneck's middle): one output row, all channels, as a GEMM
    per tap - the A operand is the padded ring row ``ky`` shifted by ``kx``
    pixels (rows ``sw * ld`` floats apart), accumulated in the register
    tile over the kh x kw taps; the epilogue as for any layer."""
    layer = spec.attrs["layers"][index]
    g = conv_geometry(layer)
    mr, nv = tile
    nr, cin, cout, ow = nv * vl, g["cin"], g["cout"], g["ow"]
    panels = math.ceil(cout / nr)
    full, part = _epilogue(layer, None), _epilogue(layer, "rem")
    cases = "\n".join(
        f"            case {r}: {name}_u{r}({cin}L, a, {g['sw']}L * ld, bp, tile); break;" for r in range(1, mr + 1)
    )
    return (
        "\n".join(_microkernels(name, layer, tile, vl, k=cin, accumulate=True))
        + f"""
static void {name}(void* const* args, const float* const* rows_in, const float* FC_RESTRICT wts,
                   float* FC_RESTRICT dst, long pix0, long c0, long c1, long ld) {{
  {_bind(spec, index)}
  const long ldd = c1 - c0, co_base = c0;  /* output pixels are c1 - c0 floats apart */
  float tile[{mr * nr}] __attribute__((aligned(64)));
  for (long p = 0; p < {panels}L; ++p) {{
    for (long m0 = 0; m0 < {ow}L; m0 += {mr}L) {{
      const long r = {ow}L - m0 < {mr}L ? {ow}L - m0 : {mr}L;
      memset(tile, 0, sizeof tile);
      for (long ky = 0; ky < {g["kh"]}L; ++ky)
        for (long kx = 0; kx < {g["kw"]}L; ++kx) {{
          const float* a = rows_in[ky] + (m0 * {g["sw"]}L + kx) * ld;
          const float* bp = wts + ((ky * {g["kw"]}L + kx) * {panels}L + p) * {cin * nr}L;
          switch (r) {{
{cases}
            default: break;
          }}
        }}
      for (long i = 0; i < r; ++i) {{
        const long row = m0 + i, pix = pix0 + row;
{tile_columns(nr, vl, "co", f"p * {nr}L", cout, full, part, "        ")}
      }}
    }}
  }}
}}
"""
    )


def _norm_rows(spec: KernelSpec, name: str, index: int, vl: int) -> str:
    """``name(args, buf, rows)``: layer ``index`` (a row reduction: the layer
    norm) on ``rows`` pixel rows of ``buf``, in place."""
    layer = spec.attrs["layers"][index]
    x = spec.attrs["operand_maps"][index].index(-1)
    body = "\n".join("    " + line for line in row_program(layer, vl))
    return f"""
static void {name}(void* const* args, float* buf, long rows) {{
  {_bind(spec, index)}
  const float* in{x} = buf;  /* read, then overwritten: no restrict */
  float* out0 = buf;
  for (long r = 0; r < rows; ++r) {{
{body}
  }}
}}
"""


def _convnext_tail(spec: KernelSpec, name: str, vl: int, params: dict, channels: bool) -> tuple[list[str], str]:
    """The functions after the depthwise layer of a ConvNeXt block, and the
    C that runs them on one band (``dband``: the band's depthwise output,
    ``hbuf``: its expanded rows). With ``channels``, the thread's expanded
    channels ``[e0, e0 + ew)`` (panels ``[u0, u1)``) only, and the project
    GEMM writes partial sums (``partial``) for the reduction after."""
    _, _, up, down = spec.attrs["layers"]
    (c, e), g = _gemm_dims(up), conv_geometry(spec.attrs["layers"][0])
    t_up, t_down = params["tiles"]
    parts = [_norm_rows(spec, f"{name}_norm", 1, vl), _gemm_rows(spec, f"{name}_up", 2, t_up, vl)]
    if channels:
        parts.append(_gemm_partial_sums(spec, f"{name}_down", 3, t_down, vl))
        call = f"""{{
          const long rows = (oy1 - oy0) * {g["ow"]}L, pix0 = (nimg * {g["oh"]}L + oy0) * {g["ow"]}L;
          {name}_norm(args, dband, rows);
          {name}_up(args, dband, {c}L, rows, (const float*)args[{_weight_operand(spec, 2)}], hbuf, ew, pix0,
                    u0, u1, e0);
          {name}_down(hbuf, ew, rows, (const float*)args[{_weight_operand(spec, 3)}], e0, ew,
                      partial + oy0 * {g["ow"] * c}L);
        }}"""
        return parts, call
    parts.append(_gemm_rows(spec, f"{name}_down", 3, t_down, vl))
    call = f"""{{
          const long rows = (oy1 - oy0) * {g["ow"]}L, pix0 = (nimg * {g["oh"]}L + oy0) * {g["ow"]}L;
          {name}_norm(args, dband, rows);
          {name}_up(args, dband, {c}L, rows, (const float*)args[{_weight_operand(spec, 2)}], hbuf, {e}L, pix0,
                    0, {math.ceil(e / (t_up[1] * vl))}L, 0);
          {name}_down(args, hbuf, {e}L, rows, (const float*)args[{_weight_operand(spec, 3)}],
                      out + pix0 * {c}L, {c}L, pix0, 0, {math.ceil(c / (t_down[1] * vl))}L, 0);
        }}"""
    return parts, call


def _render_basic(spec: KernelSpec, name: str, vl: int, params: dict) -> str:
    """A basic block: each thread walks its rows of the output in bands; the
    first layer's rows a band needs (those of the previous band are kept)
    come from a ring of padded input rows into a ring of padded rows of
    their own, and the second layer (+ residual) reads that ring straight
    into the output. The first layer's output never exists in full."""
    first, second = spec.attrs["layers"]
    g1, g2 = conv_geometry(first), conv_geometry(second)
    in_rows, in_row, mid_rows, mid_row = _basic_rings(spec, params)
    n, h, w, cin, c = g1["n"], g1["h"], g1["w"], g1["cin"], g2["cin"]
    h2, w2, oh, ow, band = g2["h"], g2["w"], g2["oh"], g2["ow"], params["band"]
    x_i = spec.attrs["operand_maps"][0][first.attrs["input"]]
    out_i = len(spec.operands)
    per_thread = 4 * _per_thread_floats(spec, params) + 128
    t1, t2 = params["tiles"]

    def pads(slot: str, pl: int, pr: int, width: int, channels: int) -> str:
        left = f"memset({slot}, 0, {4 * pl * channels});" if pl else ""
        right = f"memset({slot} + {(pl + width) * channels}L, 0, {4 * pr * channels});" if pr else ""
        return left + " " + right

    return f"""
{_conv_row(spec, f"{name}_first", 0, t1, vl)}
{_conv_row(spec, f"{name}_second", 1, t2, vl)}
{SIGNATURE.format(name=name)} {{
  const float* FC_RESTRICT x = (const float*)args[{x_i}];
  float* FC_RESTRICT out = (float*)args[{out_i}];
  char* ws = (char*)args[{out_i + 1}];
  long chunks = ({n}L >= nthreads) ? 1 : (nthreads + {n}L - 1) / {n}L;
  if (chunks > {oh}L) chunks = {oh}L;
  const long per_chunk = ({oh}L + chunks - 1) / chunks;
  #pragma omp parallel num_threads(nthreads) if ({n}L * chunks > 1)
  {{
#ifdef _OPENMP
    const int tid = omp_get_thread_num();
#else
    const int tid = 0;
#endif
    float* FC_RESTRICT in_ring = (float*)(((uintptr_t)(ws + (size_t)tid * {per_thread}) + 63) & ~(uintptr_t)63);
    float* FC_RESTRICT in_zero = in_ring + {in_rows * in_row}L;
    float* FC_RESTRICT mid_ring = in_zero + {in_row}L;
    float* FC_RESTRICT mid_zero = mid_ring + {mid_rows * mid_row}L;
    memset(in_zero, 0, {4 * in_row});
    memset(mid_zero, 0, {4 * mid_row});
    #pragma omp for schedule(static)
    for (long task = 0; task < {n}L * chunks; ++task) {{
      const long nimg = task / chunks, y0 = (task % chunks) * per_chunk;
      const long y1 = y0 + per_chunk < {oh}L ? y0 + per_chunk : {oh}L;
      long have_in = -(1L << 40), have_mid = -(1L << 40);  /* rows [.., have) are in the rings */
      for (long oy0 = y0; oy0 < y1; oy0 += {band}L) {{
        const long oy1 = oy0 + {band}L < y1 ? oy0 + {band}L : y1;
        long r = oy0 - {g2["pt"]}L;
        if (r < have_mid) r = have_mid;
        if (r < 0) r = 0;
        long r_end = oy1 - 1 - {g2["pt"]}L + {g2["kh"]}L;
        if (r_end > {h2}L) r_end = {h2}L;
        for (; r < r_end; ++r) {{  /* first-layer row r, from its input rows */
          long iy = r * {g1["sh"]}L - {g1["pt"]}L;
          if (iy < have_in) iy = have_in;
          if (iy < 0) iy = 0;
          long iy_end = r * {g1["sh"]}L - {g1["pt"]}L + {g1["kh"]}L;
          if (iy_end > {h}L) iy_end = {h}L;
          for (; iy < iy_end; ++iy) {{
            float* FC_RESTRICT slot = in_ring + (iy % {in_rows}L) * {in_row}L;
            {pads("slot", g1["pl"], g1["pr"], w, cin)}
            memcpy(slot + {g1["pl"] * cin}L, x + (nimg * {h}L + iy) * {w * cin}L, {4 * w * cin});
          }}
          if (iy_end > have_in) have_in = iy_end;
          const float* rows_in[{g1["kh"]}];
          for (long ky = 0; ky < {g1["kh"]}L; ++ky) {{
            const long yy = r * {g1["sh"]}L - {g1["pt"]}L + ky;
            rows_in[ky] = (yy >= 0 && yy < {h}L) ? in_ring + (yy % {in_rows}L) * {in_row}L : in_zero;
          }}
          float* FC_RESTRICT mslot = mid_ring + (r % {mid_rows}L) * {mid_row}L;
          {pads("mslot", g2["pl"], g2["pr"], w2, c)}
          {name}_first(args, rows_in, (const float*)args[{_weight_operand(spec, 0)}], mslot + {g2["pl"] * c}L,
                       (nimg * {h2}L + r) * {w2}L, 0, {c}L, {cin}L);
        }}
        if (r_end > have_mid) have_mid = r_end;
        for (long oy = oy0; oy < oy1; ++oy) {{
          const float* rows_in[{g2["kh"]}];
          for (long ky = 0; ky < {g2["kh"]}L; ++ky) {{
            const long yy = oy - {g2["pt"]}L + ky;
            rows_in[ky] = (yy >= 0 && yy < {h2}L) ? mid_ring + (yy % {mid_rows}L) * {mid_row}L : mid_zero;
          }}
          {name}_second(args, rows_in, (const float*)args[{_weight_operand(spec, 1)}], out + (nimg * {oh}L + oy) * {ow * c}L,
                        (nimg * {oh}L + oy) * {ow}L, 0, {c}L, {c}L);
        }}
      }}
    }}
  }}
}}
"""


def render(spec: KernelSpec, name: str, vl: int, params: dict) -> str:
    _check(spec)
    if _basic(spec):
        return _render_basic(spec, name, vl, params)
    expand, dw, project = _roles(spec)
    convnext = _convnext(spec)
    off = 1 if expand is not None else 0
    g = conv_geometry(dw)
    first = conv_geometry(expand) if expand is not None else g
    cin, ce, h, w = first["cin"], g["cout"], g["h"], g["w"]
    oh, ow, kh, sh, pt, pl, pr = g["oh"], g["ow"], g["kh"], g["sh"], g["pt"], g["pl"], g["pr"]
    co = _gemm_dims(project)[1]
    n = g["n"]
    band, ring = params["band"], _ring_rows(spec, params)
    channels = params.get("split") == "channels" and not _bottleneck(spec)
    per_thread = _per_thread_floats(spec, params)
    x_i = spec.attrs["operand_maps"][0][(expand or dw).attrs["input"]]
    out_i = len(spec.operands)
    w_dw = _weight_operand(spec, off)
    w_pr = None if convnext else _weight_operand(spec, off + 1)
    last = len(spec.attrs["layers"]) - 1
    # channel ranges are whole panels of the expand GEMM (or whole vectors);
    # a ConvNeXt block splits the channels after its layer norm
    unit = params["tiles"][0][1] * vl if expand is not None or convnext else vl
    split_channels = _gemm_dims(spec.attrs["layers"][2])[1] if convnext else ce
    units = math.ceil(split_channels / unit)

    parts = []
    if expand is not None:
        parts.append(_gemm_rows(spec, f"{name}_expand", 0, params["tiles"][0], vl))
        fill = f"""{name}_expand(args, x + (nimg * {h}L + r) * {w * cin}L, {cin}L, {w}L, (const float*)args[{_weight_operand(spec, 0)}],
                 slot + {pl}L * cw, cw, (nimg * {h}L + r) * {w}L, u0, u1, c0);"""
    else:
        fill = f"""for (long ix = 0; ix < {w}L; ++ix)
            memcpy(slot + ({pl}L + ix) * cw, x + ((nimg * {h}L + r) * {w}L + ix) * {cin}L + c0, 4 * cw);"""
    if _bottleneck(spec):
        parts.append(_conv_row(spec, f"{name}_dw", off, params["tiles"][2], vl))
    else:
        parts.append(_depthwise_row(spec, f"{name}_dw", off, vl))
    if convnext:
        tail, project_call = _convnext_tail(spec, name, vl, params, channels)
        parts.extend(tail)
    elif channels:
        parts.append(_gemm_partial_sums(spec, f"{name}_project", off + 1, params["tiles"][1], vl))
        project_call = f"""{name}_project(dband, cw, (oy1 - oy0) * {ow}L, (const float*)args[{w_pr}], c0, cw,
                       partial + oy0 * {ow * co}L);"""
    else:
        parts.append(_gemm_rows(spec, f"{name}_project", off + 1, params["tiles"][1], vl))
        project_call = f"""{name}_project(args, dband, cw, (oy1 - oy0) * {ow}L, (const float*)args[{w_pr}],
                       out + (nimg * {oh}L + oy0) * {ow * co}L, {co}L, (nimg * {oh}L + oy0) * {ow}L,
                       0, {math.ceil(co / (params["tiles"][1][1] * vl))}L, 0);"""
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
        {project_call}
      }}"""

    # per thread: ring, zero row, band buffer, then (channel split) the partial sums
    def thread_buf(t: str) -> str:
        return f"(float*)(((uintptr_t)(ws + (size_t){t} * {4 * per_thread + 128}) + 63) & ~(uintptr_t)63)"

    partial_offset = (ring + 1) * (w + pl + pr) * ce + band * ow * ce
    if convnext:  # after the expanded rows
        partial_offset += band * ow * split_channels
    buffers = f"""
    float* FC_RESTRICT ringbuf = {thread_buf("tid")};
    float* FC_RESTRICT zero = ringbuf + {ring * (w + pl + pr) * ce}L;
    float* FC_RESTRICT dband = zero + {(w + pl + pr) * ce}L;
    memset(zero, 0, {4 * (w + pl + pr) * ce});"""
    if convnext:
        buffers += f"""
    float* FC_RESTRICT hbuf = dband + {band * ow * ce}L;"""
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
        pfull, ppart = _epilogue(project, None), _epilogue(project, "rem")
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
    for (int t = 0; t < team; ++t) part_of[t] = {thread_buf("t")} + {partial_offset}L;
    {_bind(spec, last)}
    const long u0 = tid * {units}L / team, u1 = (tid + 1) * {units}L / team;
    const long s0 = u0 * {unit}L, sw = (u1 * {unit}L < {split_channels}L ? u1 * {unit}L : {split_channels}L) - s0;
    {"const long c0 = 0, cw = " + str(ce) + "L, e0 = s0, ew = sw;" if convnext else "const long c0 = s0, cw = sw;"}
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
