"""What every block pattern checks and packs: float32 layers, dense
channels-last ends, register tiles per GEMM layer and the weight layouts
the row functions (`rows.py`) read."""

from __future__ import annotations

import math

import torch

from ....kernels.spec import KernelSpec, conv_geometry
from ..dialects import Dialect
from ..gemm import pack_panels


def layers(spec: KernelSpec) -> tuple[KernelSpec, ...]:
    return spec.attrs["layers"]


def gemm_dims(layer: KernelSpec) -> tuple[int, int]:
    """(K, N) of a layer run as one GEMM: a GEMM over pixel rows, a 1x1
    convolution, or a dense kxk one over its im2col rows (K ordered
    channel, filter row, filter column, as the weight is)."""
    if layer.kind == "gemm":
        return layer.attrs["K"], layer.space[2]
    g = conv_geometry(layer)
    return g["cin_g"] * g["kh"] * g["kw"], g["cout"]


def check_f32(spec: KernelSpec) -> None:
    for layer in layers(spec):
        if any(o.dtype != "f32" for o in layer.operands) or layer.outputs[0].dtype != "f32":
            raise NotImplementedError("block kernels are float32")


def dense_nhwc(shape, strides) -> bool:
    """Laid out as a dense NHWC tensor (strides of size-1 dims do not matter)."""
    n, c, h, w = shape
    want = (h * w * c, 1, w * c, c)
    return all(size == 1 or s == t for size, s, t in zip(shape, strides, want))


def check_channels_last(spec: KernelSpec, first: KernelSpec) -> None:
    """The block reads its input (``first``'s input) and writes its output as dense NHWC."""
    g = conv_geometry(first)
    if not dense_nhwc((g["n"], g["cin"], g["h"], g["w"]), (g["xsn"], g["xsc"], g["xsh"], g["xsw"])):
        raise NotImplementedError("the block input is not dense channels-last")
    check_output_channels_last(spec)


def check_output_channels_last(spec: KernelSpec) -> None:
    out = spec.outputs[0]
    if not dense_nhwc(out.shape, out.strides or torch.empty(out.shape, device="meta").stride()):
        raise NotImplementedError("the block output is not dense channels-last")


def per_channel_epilogue(layer: KernelSpec) -> bool:
    """The layer's epilogue reads nothing per pixel (bias, folded norm scale)."""
    return not any(a.strides[0] or a.strides[2] or a.strides[3] for a in layer.accesses)


def panel_tile(channels: int, dialect: Dialect) -> tuple[int, int]:
    """(MR, NV) for a GEMM layer producing ``channels``: the panel width
    that pads the channels least, then the tile that does the most FMAs
    per operand it loads (MR * NV / (MR + NV)) in the registers there are.
    With 32 registers that is the widest panel (6 x 4 vectors); with 16
    (AVX2) the widest panel leaves room for 2 rows only, and a 2 x 4 tile
    ran MobileNetV2's and ConvNeXt's blocks 1.1-1.3x slower than their
    layers' 6 x 2 tiles on a Zen 1 core (4 x 3 and 6 x 2 do 1.7x and 1.5x
    the FMAs per load of 2 x 4)."""
    vl, regs = dialect.vl, dialect.vector_registers
    vectors = math.ceil(channels / vl)

    def rows(nv: int) -> int:
        return max(m for m in (1, 2, 4, 6, 8, 12, 14) if m * nv + nv + 1 <= regs)

    def rank(nv: int) -> tuple:
        mr = rows(nv)
        return math.ceil(vectors / nv) * nv - vectors, -mr * nv / (mr + nv), -nv

    nv = min((v for v in (4, 3, 2, 1) if v <= vectors), key=rank)
    return rows(nv), nv


def weight_key(layer: KernelSpec) -> int | None:
    """The layer operand the kernel re-lays out (conv weight, GEMM B)."""
    return {"conv2d": layer.attrs.get("weight"), "gemm": layer.attrs.get("b")}.get(layer.kind)


def weight_operand(spec: KernelSpec, index: int) -> int:
    """The block operand holding layer ``index``'s weight."""
    return spec.attrs["operand_maps"][index][weight_key(layers(spec)[index])]


def pack_pointwise(layer: KernelSpec, weight: torch.Tensor, nr: int) -> torch.Tensor:
    """A layer's weight as the GEMM panels of `rows.gemm_rows` (K as `gemm_dims`)."""
    k, n = gemm_dims(layer)
    matrix = weight.float().reshape(n, k).t() if layer.kind == "conv2d" else weight.float().reshape(k, n)
    return pack_panels(matrix, nr)


def pack_depthwise(layer: KernelSpec, weight: torch.Tensor) -> torch.Tensor:
    """[c, 1, kh, kw] -> [tap][c]: one vector of weights per tap (`rows.depthwise_row`)."""
    g = conv_geometry(layer)
    return weight.float().reshape(g["cout"], g["kh"] * g["kw"]).t().contiguous()


def pack_taps(weight: torch.Tensor, nr: int) -> torch.Tensor:
    """[cout, cin, kh, kw] -> [tap][panel][cin][NR]: one GEMM weight per tap (`rows.conv_row`)."""
    weight = weight.float()
    kh, kw = weight.shape[2:]
    return torch.stack([pack_panels(weight[:, :, ky, kx].t(), nr) for ky in range(kh) for kx in range(kw)]).contiguous()
