"""ResNet's basic block (two dense kxk convolutions, the second stride 1
with the residual) as one kernel. Both layers run an output row at a time
as one GEMM per tap (`rows.conv_row`)."""

from __future__ import annotations

import torch

from ....kernels.spec import KernelSpec, conv_geometry
from ..common import SIGNATURE, thread_scratch
from ..dialects import Dialect
from .common import check_channels_last, check_f32, layers, pack_taps, panel_tile, per_channel_epilogue, weight_operand
from .rows import conv_row


def check(spec: KernelSpec) -> None:
    if len(layers(spec)) != 2:
        raise NotImplementedError("a basic block kernel has 2 layers")
    first, second = layers(spec)
    g1, g2 = conv_geometry(first), conv_geometry(second)
    check_f32(spec)
    if not per_channel_epilogue(first):
        raise NotImplementedError("the first layer's epilogue reads a per-pixel tensor")
    if g1["g"] != 1 or g2["g"] != 1 or (g2["sh"], g2["sw"]) != (1, 1) or g2["cin"] != g2["cout"]:
        raise NotImplementedError("a basic block is a dense kxk layer and a stride-1 one keeping its channels")
    if (g2["oh"], g2["ow"]) != (g2["h"], g2["w"]) or (g1["dh"], g1["dw"], g2["dh"], g2["dw"]) != (1, 1, 1, 1):
        raise NotImplementedError("the second layer of a basic block keeps the map size, with no dilation")
    check_channels_last(spec, first)


def unfused_reason(spec: KernelSpec, dialect: Dialect) -> str:
    """A basic block (both layers dense kxk, run a row at a time by
    `rows.conv_row`) loses to the indirect convolution kernels it replaces:
    64 @56 1.02 / 0.94 ms (batch 8: 7.6 / 7.8), 128 @28 1.03 / 0.96, 256
    @14 1.19 / 0.92, 512 @7 2.0 / 0.96 ms - so it is never the untuned
    default."""
    return (
        "two dense convolutions one output row at a time measured slower than the indirect convolution "
        "kernels (ResNet-18's 64 ch @56: 1.02 vs 0.94 ms); the tuner can still choose the block"
    )


def tunables(spec: KernelSpec, dialect: Dialect) -> dict[str, tuple]:
    return {"band": (1, 2, 4), "split": ("rows",)}


def default_params(spec: KernelSpec, dialect: Dialect) -> dict:
    """Rows of the first layer are kept between bands: the band size changes no work."""
    tiles = [panel_tile(conv_geometry(layer)["cout"], dialect) for layer in layers(spec)]
    return {"band": 1, "tiles": tiles, "split": "rows", "vl": dialect.vl}


def _rings(spec: KernelSpec, params: dict) -> tuple[int, int, int, int]:
    """(input ring rows, floats per padded input row, first-layer ring rows,
    floats per padded first-layer row)."""
    g1, g2 = (conv_geometry(layer) for layer in layers(spec))
    return (
        g1["kh"],
        (g1["w"] + g1["pl"] + g1["pr"]) * g1["cin"],
        params["band"] - 1 + g2["kh"],
        (g2["w"] + g2["pl"] + g2["pr"]) * g2["cin"],
    )


def per_thread_floats(spec: KernelSpec, params: dict) -> int:
    """Two rings, each with its zero row."""
    in_rows, in_row, mid_rows, mid_row = _rings(spec, params)
    return (in_rows + 1) * in_row + (mid_rows + 1) * mid_row + 32


def prepare(spec: KernelSpec, params: dict, constants: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    out = {i: t.float() for i, t in constants.items()}
    for index, tile in enumerate(params["tiles"]):
        w_i = weight_operand(spec, index)
        out[w_i] = pack_taps(constants[w_i], tile[1] * params["vl"])
    return out


def render(spec: KernelSpec, name: str, vl: int, params: dict) -> str:
    """A basic block: each thread walks its rows of the output in bands; the
    first layer's rows a band needs (those of the previous band are kept)
    come from a ring of padded input rows into a ring of padded rows of
    their own, and the second layer (+ residual) reads that ring straight
    into the output. The first layer's output never exists in full."""
    first, second = spec.attrs["layers"]
    g1, g2 = conv_geometry(first), conv_geometry(second)
    in_rows, in_row, mid_rows, mid_row = _rings(spec, params)
    n, h, w, cin, c = g1["n"], g1["h"], g1["w"], g1["cin"], g2["cin"]
    h2, w2, oh, ow, band = g2["h"], g2["w"], g2["oh"], g2["ow"], params["band"]
    x_i = spec.attrs["operand_maps"][0][first.attrs["input"]]
    out_i = len(spec.operands)
    per_thread = 4 * per_thread_floats(spec, params) + 128
    t1, t2 = params["tiles"]

    def pads(slot: str, pl: int, pr: int, width: int, channels: int) -> str:
        left = f"memset({slot}, 0, {4 * pl * channels});" if pl else ""
        right = f"memset({slot} + {(pl + width) * channels}L, 0, {4 * pr * channels});" if pr else ""
        return left + " " + right

    return f"""
{conv_row(spec, f"{name}_first", 0, t1, vl)}
{conv_row(spec, f"{name}_second", 1, t2, vl)}
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
    float* FC_RESTRICT in_ring = {thread_scratch("tid", per_thread)};
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
          {name}_first(args, rows_in, (const float*)args[{weight_operand(spec, 0)}], mslot + {g2["pl"] * c}L,
                       (nimg * {h2}L + r) * {w2}L, 0, {c}L, {cin}L);
        }}
        if (r_end > have_mid) have_mid = r_end;
        for (long oy = oy0; oy < oy1; ++oy) {{
          const float* rows_in[{g2["kh"]}];
          for (long ky = 0; ky < {g2["kh"]}L; ++ky) {{
            const long yy = oy - {g2["pt"]}L + ky;
            rows_in[ky] = (yy >= 0 && yy < {h2}L) ? mid_ring + (yy % {mid_rows}L) * {mid_row}L : mid_zero;
          }}
          {name}_second(args, rows_in, (const float*)args[{weight_operand(spec, 1)}], out + (nimg * {oh}L + oy) * {ow * c}L,
                        (nimg * {oh}L + oy) * {ow}L, 0, {c}L, {c}L);
        }}
      }}
    }}
  }}
}}
"""
