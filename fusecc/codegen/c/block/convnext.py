"""A ConvNeXt block as one kernel (depthwise kxk, layer norm, 1x1 expand
GEMM, 1x1 project GEMM with the residual): the band walk with no expand
layer - the ring holds input rows, the depthwise layer fills the band
buffer - and a tail of three layers: the layer norm normalizes the band in
place, the expand GEMM writes the band's expanded rows to a second buffer
(``hbuf``) and the project GEMM, epilogue fused (bias, layer scale,
residual), writes the output. Neither the normalized nor the 4x expanded
tensor exists in full."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ....kernels.spec import KernelSpec, conv_geometry
from ..common import DEPTHWISE_PIXELS
from ..dialects import Dialect
from . import banded
from .common import (
    check_channels_last,
    check_f32,
    gemm_dims,
    layers,
    pack_depthwise,
    pack_pointwise,
    panel_tile,
    per_channel_epilogue,
    weight_operand,
)
from .rows import depthwise_row, gemm_partial_sums, gemm_rows, norm_rows

def l2_bytes(default: int = 1024 * 1024, cpu: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int:
    """One core's L2 cache as Linux reports it; ``default`` where it does not."""
    for index in sorted(cpu.glob("index*")):
        try:
            if (index / "level").read_text().strip() != "2" or (index / "type").read_text().strip() == "Instruction":
                continue
            size = (index / "size").read_text().strip().upper()
            scale = {"K": 1024, "M": 1024 * 1024}.get(size[-1:], 1)
            return int(size.rstrip("KM")) * scale
        except (OSError, ValueError):
            break
    return default


# ring + band + expanded band: one core's L2 (the weights stream through). The
# host's: cross-compiled kernels get it too. Session 19, a Zen 1 with 512 KB:
# its ConvNeXt 192 @ 28 block ran 1.4% faster than with a 1 MB budget.
BUDGET = l2_bytes()
WEIGHTS_IN_L2 = 512 * 1024  # above: the GEMM weights stream from L3 once per band
# measured: 1.2 MB of GEMM weights (192 channels) still 1.4x faster fused, 4.7 MB (384) a tie
WEIGHTS_FUSED_MAX = 2 * 1024 * 1024
DW, NORM, UP, DOWN = range(4)


def _weights(spec: KernelSpec) -> int:
    """Bytes of both GEMMs' weights."""
    return 8 * math.prod(gemm_dims(layers(spec)[DOWN]))


def walk(spec: KernelSpec) -> banded.Walk:
    e = gemm_dims(layers(spec)[DOWN])[0]
    pixels = 256 if _weights(spec) > WEIGHTS_IN_L2 else banded.MIN_BAND_PIXELS  # fewer, larger bands
    return banded.Walk(
        expand=None, middle=DW, last=DOWN, tail_floats=e, split_layer=UP, budget=BUDGET, band_pixels=pixels
    )


def check(spec: KernelSpec) -> None:
    if len(layers(spec)) != 4:
        raise NotImplementedError("a ConvNeXt kernel has 4 layers")
    dw, norm, up, down = layers(spec)
    maps = spec.attrs["operand_maps"]
    g = conv_geometry(dw)
    c, e = g["cout"], gemm_dims(up)[1]
    if (g["cin_g"], g["cout_g"], g["sh"], g["sw"], g["oh"], g["ow"]) != (1, 1, 1, 1, g["h"], g["w"]):
        raise NotImplementedError("a ConvNeXt block starts with a same-size stride-1 depthwise layer")
    check_f32(spec)
    if not per_channel_epilogue(dw):
        raise NotImplementedError("the depthwise epilogue reads a per-pixel tensor")
    (out,) = norm.outputs
    x = maps[NORM].index(-1)
    x_strides = {a.strides for a in norm.accesses if a.operand == x}
    if norm.attrs["row_rank"] != 1 or norm.space[1] != c or x_strides != {(c, 1)} or out.space_strides != (c, 1):
        raise NotImplementedError("the layer norm does not normalize pixel rows of the depthwise output")
    for layer, k, n, last in ((up, c, e, False), (down, e, c, True)):
        a_i, b_i = layer.attrs["a"], layer.attrs["b"]
        if gemm_dims(layer) != (k, n) or layer.space[0] != 1 or layer.attrs["a_strides"][1:] != (k, 1):
            raise NotImplementedError("the block's GEMMs do not read dense pixel rows")
        if not layer.operands[b_i].constant or layer.outputs[0].space_strides is not None:
            raise NotImplementedError("the block's GEMMs need constant weights and pixel-row outputs")
        if not last and any(a.strides[1] for a in layer.accesses if a.operand not in (a_i, b_i)):
            raise NotImplementedError("the expand epilogue reads a per-pixel tensor")
    check_channels_last(spec, dw)


def unfused_reason(spec: KernelSpec, dialect: Dialect) -> str | None:
    """A ConvNeXt block walks its GEMM weights once per band and thread;
    once they outgrow L2 they stream from L3 each time, while the separate
    GEMMs read them about once. Measured here (ms, block vs layers, batch 1
    / 8): 96 ch @56 1.30/1.44, 10.5/27.3; 192 @28 1.13/1.66, 8.8/14.1; 384
    @14 (4.7 MB of weights) 1.02/1.04, 8.2/8.1; 768 @7 (18.9 MB) 1.30/1.01.
    Splitting the expanded channels over the threads instead (each weight
    read once) does not change that: 384 @14 1.03 / 8.4 ms, 768 @7 1.07 /
    8.5 ms against the layers' 1.01 / 8.2 and 0.98 / 7.7 - these blocks are
    compute-bound. The tuner measures all three."""
    weights = _weights(spec)
    if weights > WEIGHTS_FUSED_MAX:
        return (
            f"its GEMM weights ({weights / 2**20:.1f} MiB) outgrow L2 and would be re-read for every band; "
            "the tuner can still choose the block"
        )
    return None


def tunables(spec: KernelSpec, dialect: Dialect) -> dict[str, tuple]:
    return {"band": (1, 2, 4, 8, 16), "split": ("rows", "channels"), "dw_pixels": DEPTHWISE_PIXELS}


def default_params(spec: KernelSpec, dialect: Dialect) -> dict:
    tiles = [panel_tile(gemm_dims(layers(spec)[i])[1], dialect) for i in (UP, DOWN)]
    return {
        "band": banded.band_rows(spec, walk(spec)),
        "tiles": tiles,
        "split": "rows",
        "dw_pixels": banded.default_dw_pixels(spec, walk(spec), dialect),
        "vl": dialect.vl,
    }


def per_thread_floats(spec: KernelSpec, params: dict) -> int:
    return banded.per_thread_floats(spec, walk(spec), params)


def prepare(spec: KernelSpec, params: dict, constants: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    out = {i: t.float() for i, t in constants.items()}
    for index, tile in ((UP, params["tiles"][0]), (DOWN, params["tiles"][1])):
        w_i = weight_operand(spec, index)
        out[w_i] = pack_pointwise(layers(spec)[index], constants[w_i], tile[1] * params["vl"])
    w_i = weight_operand(spec, DW)
    out[w_i] = pack_depthwise(layers(spec)[DW], constants[w_i])
    return out


def _tail(spec: KernelSpec, name: str, vl: int, params: dict, channels: bool) -> tuple[list[str], str]:
    """The functions after the depthwise layer and the C that runs them on
    one band (``dband``: the band's depthwise output, ``hbuf``: its expanded
    rows). With ``channels``, the thread's expanded channels ``[e0, e0 +
    ew)`` (panels ``[u0, u1)``) only, and the project GEMM writes partial
    sums (``partial``) for the reduction after."""
    (c, e), g = gemm_dims(layers(spec)[UP]), conv_geometry(layers(spec)[DW])
    t_up, t_down = params["tiles"]
    parts = [norm_rows(spec, f"{name}_norm", NORM, vl), gemm_rows(spec, f"{name}_up", UP, t_up, vl)]
    rows = f"const long rows = (oy1 - oy0) * {g['ow']}L, pix0 = (nimg * {g['oh']}L + oy0) * {g['ow']}L;"
    w_up, w_down = weight_operand(spec, UP), weight_operand(spec, DOWN)
    if channels:
        parts.append(gemm_partial_sums(spec, f"{name}_down", DOWN, t_down, vl))
        call = f"""{{
          {rows}
          {name}_norm(args, dband, rows);
          {name}_up(args, dband, {c}L, rows, (const float*)args[{w_up}], hbuf, ew, pix0,
                    u0, u1, e0);
          {name}_down(hbuf, ew, rows, (const float*)args[{w_down}], e0, ew,
                      partial + oy0 * {g["ow"] * c}L);
        }}"""
        return parts, call
    parts.append(gemm_rows(spec, f"{name}_down", DOWN, t_down, vl))
    call = f"""{{
          {rows}
          {name}_norm(args, dband, rows);
          {name}_up(args, dband, {c}L, rows, (const float*)args[{w_up}], hbuf, {e}L, pix0,
                    0, {math.ceil(e / (t_up[1] * vl))}L, 0);
          {name}_down(args, hbuf, {e}L, rows, (const float*)args[{w_down}],
                      out + pix0 * {c}L, {c}L, pix0, 0, {math.ceil(c / (t_down[1] * vl))}L, 0);
        }}"""
    return parts, call


def render(spec: KernelSpec, name: str, vl: int, params: dict) -> str:
    return banded.render(
        spec, walk(spec), name, vl, params,
        depthwise_row(spec, f"{name}_dw", DW, vl, params["dw_pixels"]),
        lambda channels: _tail(spec, name, vl, params, channels),
    )  # fmt: skip
