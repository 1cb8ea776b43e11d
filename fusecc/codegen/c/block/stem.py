"""A network's stem as one kernel: a dense kxk convolution over a few input
channels (MobileNetV2's 3x3/s2 over RGB) filling the ring, then the
depthwise kxk layer and the 1x1 project of the block it feeds.

The stem's output is the largest tensor of such a network (MobileNetV2:
112x112x32, 1.6 MB). Apart, the stem writes it to memory and the block
reads it back, copying each row into its ring. Here each ring row is
computed in place: its im2col panel (K = cin x kh x kw rows of one output
row's pixels, gathered from the input in any layout - a channels-first
image needs no conversion) feeds the stem's GEMM, whose epilogue stores
into the ring. The image is read once, in rows, by the thread that needs
them."""

from __future__ import annotations

from ....kernels.spec import KernelSpec, conv_geometry
from ..common import DEPTHWISE_PIXELS
from ..dialects import Dialect
from . import banded, inverted_residual
from .common import check_f32, check_output_channels_last, gemm_dims, layers, panel_tile, weight_operand
from .rows import MAX_KC, depthwise_row, gemm_rows

STEM, MIDDLE, LAST = 0, 1, 2
# Pixels a band should hold (as the L2 budget allows): MobileNetV2's stem
# block ran 265 us in bands of 1 row of 112 pixels, 224-226 in bands of 4-16
# (hot, 2 threads, Zen 4)
BAND_PIXELS = 448


def _panel_width(spec: KernelSpec) -> int:
    """Pixels per row of the im2col panel: the stem's output row."""
    return conv_geometry(layers(spec)[STEM])["ow"]


def walk(spec: KernelSpec) -> banded.Walk:
    if len(layers(spec)) != 3:
        raise NotImplementedError(f"a stem kernel has 3 layers, not {len(layers(spec))}")
    k = gemm_dims(layers(spec)[STEM])[0]
    return banded.Walk(
        expand=STEM, middle=MIDDLE, last=LAST, fill_floats=k * _panel_width(spec), band_pixels=BAND_PIXELS
    )


def check(spec: KernelSpec) -> None:
    """float32 layers; a dense stem reading its input in any layout, a
    depthwise middle, a 1x1 project; per-channel inner epilogues; a dense
    channels-last output."""
    check_f32(spec)
    stem, middle, last = layers(spec)
    s, g = conv_geometry(stem), conv_geometry(middle)
    if s["g"] != 1 or s["sh"] > s["kh"] or s["sw"] > s["kw"]:
        raise NotImplementedError("a stem layer is a dense convolution whose stride is at most its kernel")
    if gemm_dims(stem)[0] > MAX_KC:
        raise NotImplementedError(f"a stem layer's im2col depth {gemm_dims(stem)[0]} is over {MAX_KC}")
    if g["cin_g"] != 1 or g["cout_g"] != 1:
        raise NotImplementedError("the middle layer of a stem block is not depthwise")
    inverted_residual.check_pointwise(last)
    inverted_residual.check_epilogues(spec, walk(spec).last)
    check_output_channels_last(spec)


def unfused_reason(spec: KernelSpec, dialect: Dialect) -> str | None:
    return None


def tunables(spec: KernelSpec, dialect: Dialect) -> dict[str, tuple]:
    # rows only: a channel split would run the stem's im2col once per thread
    return {"band": (1, 2, 4, 8, 16), "split": ("rows",), "dw_pixels": DEPTHWISE_PIXELS}


def default_params(spec: KernelSpec, dialect: Dialect) -> dict:
    w = walk(spec)
    return {
        "band": banded.band_rows(spec, w),
        "tiles": [panel_tile(gemm_dims(layers(spec)[i])[1], dialect) for i in (STEM, LAST)],
        "split": "rows",
        "dw_pixels": banded.default_dw_pixels(spec, w, dialect),
        "vl": dialect.vl,
    }


def per_thread_floats(spec: KernelSpec, params: dict) -> int:
    return banded.per_thread_floats(spec, walk(spec), params)


prepare = inverted_residual.prepare  # the stem's weight packs as a GEMM over (channel, filter row, column)


def _im2col_row(spec: KernelSpec) -> str:
    """C filling ``fillbuf`` with the im2col panel of the stem's output row
    ``r`` of image ``nimg``: row k = (c * kh + ky) * kw + kx holds that tap's
    input for every output pixel, zero where it falls in the padding."""
    s = conv_geometry(layers(spec)[STEM])
    ld = _panel_width(spec)
    columns = []
    for kx in range(s["kw"]):
        offset = kx * s["dw"] - s["pl"]  # input column of output pixel ox: ox * sw + offset
        lo = min(s["ow"], max(0, -(offset // s["sw"]) if offset < 0 else 0))
        hi = max(lo, min(s["ow"], (s["w"] - 1 - offset) // s["sw"] + 1))
        columns.append(f"""        {{
          float* FC_RESTRICT dk = d + {kx * ld}L;
          for (long ox = 0; ox < {lo}L; ++ox) dk[ox] = 0.f;
          for (long ox = {lo}L; ox < {hi}L; ++ox) dk[ox] = src[(ox * {s["sw"]}L + {offset}L) * {s["xsw"]}L];
          for (long ox = {hi}L; ox < {s["ow"]}L; ++ox) dk[ox] = 0.f;
        }}""")
    return f"""for (long c = 0; c < {s["cin"]}L; ++c)
      for (long ky = 0; ky < {s["kh"]}L; ++ky) {{
        const long iy = r * {s["sh"]}L - {s["pt"]}L + ky * {s["dh"]}L;
        float* FC_RESTRICT d = fillbuf + (c * {s["kh"]}L + ky) * {s["kw"] * ld}L;
        if (iy < 0 || iy >= {s["h"]}L) {{
          memset(d, 0, {4 * s["kw"] * ld});
          continue;
        }}
        const float* FC_RESTRICT src = x + nimg * {s["xsn"]}L + c * {s["xsc"]}L + iy * {s["xsh"]}L;
{chr(10).join(columns)}
      }}"""


def render(spec: KernelSpec, name: str, vl: int, params: dict) -> str:
    w = walk(spec)
    g = banded.middle_geometry(spec, w)
    ld = _panel_width(spec)
    stem_gemm = gemm_rows(spec, f"{name}_expand", STEM, params["tiles"][0], vl, k_major=True)
    fill = f"""{_im2col_row(spec)}
          {name}_expand(args, fillbuf, {ld}L, {ld}L, (const float*)args[{weight_operand(spec, STEM)}],
                 slot + {g["pl"]}L * cw, cw, (nimg * {g["h"]}L + r) * {g["w"]}L, u0, u1, c0);"""
    return banded.render(
        spec, w, name, vl, params,
        depthwise_row(spec, f"{name}_dw", w.middle, vl, params["dw_pixels"]),
        lambda channels: banded.project_tail(spec, w, name, vl, params, channels),
        fill=([stem_gemm], fill),
    )  # fmt: skip
