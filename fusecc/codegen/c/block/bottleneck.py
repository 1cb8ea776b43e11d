"""ResNet's bottleneck as one kernel: the inverted residual's walk with a
dense kxk middle layer (1x1 reduce into the ring, the kxk as one GEMM per
tap over the ring rows, 1x1 expand + residual as the tail). The reduced
tensors never exist in full."""

from __future__ import annotations

import torch

from ....kernels.spec import KernelSpec
from .. import conv_winograd
from ..dialects import Dialect
from . import banded, inverted_residual
from .common import layers, pack_taps, panel_tile, weight_operand
from .rows import conv_row

WEIGHTS_FUSED_MAX = 256 * 1024  # dense middle layer: 64 channels fuse, 128 run as layers


def walk(spec: KernelSpec) -> banded.Walk:
    return banded.Walk(expand=0, middle=1, last=2)


def check(spec: KernelSpec) -> None:
    if len(layers(spec)) != 3:
        raise NotImplementedError("a bottleneck kernel has 3 layers")
    inverted_residual.check_pointwise_ends(spec)
    g = banded.middle_geometry(spec, walk(spec))
    if g["g"] != 1 or g["cin"] != g["cout"] or (g["dh"], g["dw"]) != (1, 1):
        raise NotImplementedError("a bottleneck's middle layer is a dense kxk convolution keeping its channels")


def unfused_reason(spec: KernelSpec, dialect: Dialect) -> str | None:
    """A bottleneck is compute-bound; fused, it saves the two reduced
    tensors' round trips, which pays only while its dense middle weights
    are small: 256-64-256 @56 (147 KB) block vs layers 0.89 / 0.89 ms at
    batch 1, 8.1 / 9.3 ms at batch 8; 512-128-512 @28 (590 KB) 0.91 / 0.89
    and 7.5 / 7.5 ms."""
    g = banded.middle_geometry(spec, walk(spec))
    if conv_winograd.applicable(g) and conv_winograd.preferred(g):
        # the layers then do a quarter of the middle layer's multiplies:
        # 256-64-256 @56 layers 0.66 vs block 0.97 ms (batch 8: 8.1 / 8.8)
        return f"its {g['kh']}x{g['kw']} middle layer runs faster on its own as a Winograd convolution"
    weights = 4 * g["K"] * g["cout"]
    if weights > WEIGHTS_FUSED_MAX:
        return f"its {g['kh']}x{g['kw']} weights ({weights / 2**10:.0f} KiB) are re-read for every band"
    return None


def tunables(spec: KernelSpec, dialect: Dialect) -> dict[str, tuple]:
    return {"band": (1, 2, 4, 8, 16), "split": ("rows",)}  # the dense middle needs every ring channel


def default_params(spec: KernelSpec, dialect: Dialect) -> dict:
    tiles = inverted_residual.pointwise_tiles(spec, dialect)
    tiles.append(panel_tile(banded.middle_geometry(spec, walk(spec))["cout"], dialect))
    return {"band": banded.band_rows(spec, walk(spec)), "tiles": tiles, "split": "rows", "vl": dialect.vl}


def per_thread_floats(spec: KernelSpec, params: dict) -> int:
    return banded.per_thread_floats(spec, walk(spec), {**params, "split": "rows"})


def prepare(spec: KernelSpec, params: dict, constants: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    out = inverted_residual.prepare_pointwise(spec, params, constants)
    w_i = weight_operand(spec, walk(spec).middle)
    out[w_i] = pack_taps(constants[w_i], params["tiles"][2][1] * params["vl"])
    return out


def render(spec: KernelSpec, name: str, vl: int, params: dict) -> str:
    w, params = walk(spec), {**params, "split": "rows"}
    return banded.render(
        spec, w, name, vl, params,
        conv_row(spec, f"{name}_dw", w.middle, params["tiles"][2], vl),
        lambda channels: banded.project_tail(spec, w, name, vl, params, channels),
    )  # fmt: skip
