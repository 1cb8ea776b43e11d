"""MobileNetV2's inverted residual as one kernel: an optional 1x1 expand
filling the ring, the depthwise kxk layer on the band, the 1x1 project
(+ residual) as the tail. The expanded tensor, t x the input and the
block's largest, never exists in full."""

from __future__ import annotations

import math

import torch

from ....kernels.spec import KernelSpec, conv_geometry
from ..common import DEPTHWISE_PIXELS
from ..conv import SKINNY_PIXELS
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
from .rows import depthwise_row

SPLIT_ROWS_BELOW = 10  # output rows per thread under which a channel split wins
BALANCED_SHARES = 1.05  # a channel split's largest thread share over the mean, at most
SKINNY_BLOCK_WEIGHTS = 512 * 1024  # 1x1 weights from which a block on a skinny map runs as layers


def walk(spec: KernelSpec) -> banded.Walk:
    """[expand?, middle, project]."""
    count = len(layers(spec))
    if count not in (2, 3):
        raise NotImplementedError(f"an inverted residual kernel has 2 or 3 layers, not {count}")
    return banded.Walk(expand=0 if count == 3 else None, middle=count - 2, last=count - 1)


def check_epilogues(spec: KernelSpec, last: int) -> None:
    """Each layer's epilogue reads only block operands, per channel but in the ``last`` layer."""
    for index, (layer, m) in enumerate(zip(layers(spec), spec.attrs["operand_maps"])):
        if any(m[a.operand] == -1 for a in layer.accesses):
            raise NotImplementedError("a layer's epilogue reads the previous layer's output")
        if index != last and not per_channel_epilogue(layer):
            raise NotImplementedError("an inner layer's epilogue reads a per-pixel tensor")


def check_pointwise(layer: KernelSpec) -> None:
    lg = conv_geometry(layer)
    if (lg["kh"], lg["kw"], lg["sh"], lg["sw"], lg["g"]) != (1, 1, 1, 1, 1) or any(
        lg[p] for p in ("pt", "pl", "pb", "pr")
    ):
        raise NotImplementedError("expand/project layers of a block are 1x1 convolutions")


def check_pointwise_ends(spec: KernelSpec) -> None:
    """The part of the check an inverted residual shares with a bottleneck:
    float32 layers, 1x1 expand/project, per-channel inner epilogues, dense
    channels-last ends."""
    check_f32(spec)
    w = walk(spec)
    check_epilogues(spec, w.last)
    for index in (w.expand, w.last):
        if index is not None:
            check_pointwise(layers(spec)[index])
    check_channels_last(spec, layers(spec)[0])


def check(spec: KernelSpec) -> None:
    check_pointwise_ends(spec)
    g = banded.middle_geometry(spec, walk(spec))
    if g["cin_g"] != 1 or g["cout_g"] != 1:
        raise NotImplementedError("the middle layer of a block is not depthwise")


def unfused_reason(spec: KernelSpec, dialect: Dialect) -> str | None:
    """Memory-bound, the block kernel wins on MobileNetV2's larger maps. On a
    map of a few dozen pixels with large 1x1 layers (its 7x7 blocks at batch
    1: 0.6-1.8 MB of 1x1 weights) the layers run faster alone, as
    channel-major GEMMs with one-vector tiles (`conv.skinny_pointwise`).
    Only where that was measured - AVX-512, a Zen 4: the exported model
    2.3-2.7% faster, where the same layers with the old tiles gained 0.2%."""
    w = walk(spec)
    g = banded.middle_geometry(spec, w)
    pixels = g["n"] * g["oh"] * g["ow"]
    weights = sum(4 * math.prod(gemm_dims(layers(spec)[i])) for i in (w.expand, w.last) if i is not None)
    if dialect.name == "avx512" and pixels <= SKINNY_PIXELS and weights >= SKINNY_BLOCK_WEIGHTS:
        return (f"on {pixels} pixels its 1x1 layers ({weights / 2**10:.0f} KiB of weights) run faster alone, "
                "as channel-major GEMMs")  # fmt: skip
    return None


def tunables(spec: KernelSpec, dialect: Dialect) -> dict[str, tuple]:
    return {"band": (1, 2, 4, 8, 16), "split": ("rows", "channels"), "dw_pixels": DEPTHWISE_PIXELS}


def _threads() -> int:
    return max(2, torch.get_num_threads())


def _rows_per_thread(g: dict) -> float:
    return g["n"] * g["oh"] / _threads()


def _default_split(spec: KernelSpec, dialect: Dialect) -> str:
    """Small maps with fewer images than threads: split the expanded
    channels, not the rows. Rows split an image into runs whose depthwise
    halo is recomputed by both neighbours - 2 rows of expand GEMM per 3.5
    rows of a 7x7 map - while a channel split recomputes nothing and reads
    each weight once, at the price of adding up partial project sums (which
    outweighs the halo on large maps: MobileNetV2's 112x112 block 188 us by
    rows, 328 us by channels; its 7x7 blocks 200-346 us by rows, 162-251 by
    channels). The expand runs on the input rows, stride times the output
    rows, so a strided block counts those: MobileNetV2's 28x28 -> 14x14
    block (14 input rows a thread) splits by rows. A channel split hands out
    whole expand panels, so it also needs them to divide evenly: 576
    channels are 9 panels of 64, 5 for one thread and 4 for the other, and
    MobileNetV2's two 96-576-96 blocks ran 1.5% of the model faster split by
    rows (Zen 4), as the tuner had chosen."""
    w = walk(spec)
    g = banded.middle_geometry(spec, w)
    few_rows = _rows_per_thread(g) * g["sh"] < SPLIT_ROWS_BELOW
    if g["n"] >= _threads() or not few_rows:
        return "rows"
    _, _, units = banded.split_units(spec, w, pointwise_tiles(spec, dialect), dialect.vl)
    largest_share = math.ceil(units / _threads())
    return "channels" if largest_share * _threads() <= units * BALANCED_SHARES else "rows"


def _default_band(spec: KernelSpec, split: str) -> int:
    """`banded.band_rows`, except for a strided map split by rows for its
    stride alone (fewer output rows a thread than the threshold): one band per
    thread, so its project GEMM gets the thread's pixels in one call (98 for
    MobileNetV2's 14x14 block against 42 with the L2 budget's 3 rows; its
    ring of 15 rows, 345 KB, still fits a 1 MB L2). The tuner found that
    block 1.39x faster split so (band 16); the exported model ran 0.8-1.5%
    faster in paired runs on a Zen 4."""
    g = banded.middle_geometry(spec, walk(spec))
    rows = _rows_per_thread(g)
    if split == "rows" and g["n"] < _threads() and rows < SPLIT_ROWS_BELOW and g["sh"] > 1:
        return math.ceil(rows)
    return banded.band_rows(spec, walk(spec))


def pointwise_tiles(spec: KernelSpec, dialect: Dialect) -> list:
    """[expand tile or None, project tile]."""
    w = walk(spec)
    return [
        panel_tile(conv_geometry(layers(spec)[i])["cout"], dialect) if i is not None else None
        for i in (w.expand, w.last)
    ]


def default_params(spec: KernelSpec, dialect: Dialect) -> dict:
    split = _default_split(spec, dialect)
    return {
        "band": _default_band(spec, split),
        "tiles": pointwise_tiles(spec, dialect),
        "split": split,
        "dw_pixels": banded.default_dw_pixels(spec, walk(spec), dialect),
        "vl": dialect.vl,
    }


def per_thread_floats(spec: KernelSpec, params: dict) -> int:
    return banded.per_thread_floats(spec, walk(spec), params)


def prepare_pointwise(spec: KernelSpec, params: dict, constants: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Constants as float32, the expand and project weights packed as GEMM panels."""
    out = {i: t.float() for i, t in constants.items()}
    w = walk(spec)
    for index, tile in ((w.expand, params["tiles"][0]), (w.last, params["tiles"][1])):
        if index is not None:
            w_i = weight_operand(spec, index)
            out[w_i] = pack_pointwise(layers(spec)[index], constants[w_i], tile[1] * params["vl"])
    return out


def prepare(spec: KernelSpec, params: dict, constants: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    out = prepare_pointwise(spec, params, constants)
    w = walk(spec)
    w_i = weight_operand(spec, w.middle)
    out[w_i] = pack_depthwise(layers(spec)[w.middle], constants[w_i])
    return out


def render(spec: KernelSpec, name: str, vl: int, params: dict) -> str:
    w = walk(spec)
    return banded.render(
        spec, w, name, vl, params,
        depthwise_row(spec, f"{name}_dw", w.middle, vl, params["dw_pixels"]),
        lambda channels: banded.project_tail(spec, w, name, vl, params, channels),
    )  # fmt: skip
