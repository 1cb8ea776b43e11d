"""The work a kernel must do, from its spec alone: floating-point
operations and compulsory memory traffic (every operand read once, every
output written once - what a perfect cache would move). The roofline
report divides them by measured time.

A block's traffic is only its own inputs, weights and output: its
intermediates never reach memory, which is the point of fusing it.
"""

from __future__ import annotations

import math

from .spec import KernelSpec, conv_geometry

_BYTES = {"f32": 4, "bf16": 2, "bool": 1}


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


def bytes_moved(spec: KernelSpec) -> int:
    reads = sum(math.prod(o.shape) * _BYTES[o.dtype] for o in spec.operands)
    writes = sum(math.prod(o.shape) * _BYTES[o.dtype] for o in spec.outputs)
    return reads + writes
