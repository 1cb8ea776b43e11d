"""The work a kernel must do, from its spec alone: floating-point
operations and compulsory memory traffic (every operand read once, every
output written once - what a perfect cache would move). The roofline
report divides them by measured time.

A block's traffic is only its own inputs, weights and output: its
intermediates never reach memory, which is the point of fusing it.
"""

from __future__ import annotations

import math

from .spec import TORCH_DTYPES, KernelSpec, conv_geometry


def _conv_flops(spec: KernelSpec) -> int:
    geo = conv_geometry(spec)
    return 2 * geo["n"] * geo["cout"] * geo["P"] * geo["K"]


def flops(spec: KernelSpec) -> int:
    points = math.prod(spec.space)
    epilogue = spec.flops_per_point() * points
    if spec.kind == "gemm":
        return 2 * points * spec.attrs["K"] + epilogue
    if spec.kind == "conv2d":
        return _conv_flops(spec) + epilogue
    if spec.kind == "block":
        return sum(flops(layer) for layer in spec.attrs["layers"])
    if spec.kind == "reduction":
        return points * max(1, len(spec.stages)) + epilogue
    return epilogue


def executed_flops(spec: KernelSpec, params: dict | None) -> int:
    """The arithmetic the chosen algorithm runs: a Winograd convolution's
    alpha^2 channel GEMMs over its tiles instead of the direct count (the
    transforms' adds are left out, as the epilogue's are in a GEMM) - what
    the roofline efficiency should compare with the peak, while `flops`
    (the direct count) stays the effective rate users compare across
    algorithms."""
    if spec.kind == "conv2d" and params and params.get("algo") == "nhwc_winograd":
        geo = conv_geometry(spec)
        m = params["m"]
        tiles = geo["n"] * math.ceil(geo["oh"] / m) * math.ceil(geo["ow"] / m)
        return 2 * tiles * (m + 2) ** 2 * geo["cin"] * geo["cout"]
    return flops(spec)


def bytes_moved(spec: KernelSpec) -> int:
    reads = sum(math.prod(o.shape) * TORCH_DTYPES[o.dtype].itemsize for o in spec.operands)
    writes = sum(math.prod(o.shape) * TORCH_DTYPES[o.dtype].itemsize for o in spec.outputs)
    return reads + writes
