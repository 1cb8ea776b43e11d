"""Block kernels: a whole residual block as one C kernel, in NHWC, one
module per block pattern (the ``pattern`` the block-fusion pass found):

* ``inverted_residual`` - MobileNetV2: optional 1x1 expand, depthwise kxk,
  1x1 project (+ residual);
* ``stem`` - a network's first dense kxk layer over a few channels, then
  the depthwise kxk and 1x1 project of the block it feeds;
* ``bottleneck`` - ResNet: 1x1 reduce, dense kxk, 1x1 expand + residual;
* ``convnext`` - depthwise kxk, layer norm, expand GEMM, project GEMM +
  layer scale + residual;
* ``basic`` - ResNet: two dense kxk layers, the second + residual.

The first four share the band walk of `banded.py` (a ring of padded rows
feeding the kxk layer, a band buffer feeding the tail); the basic block
keeps two rings of its own. Each layer is the spec of one of the block's
nested groups (``conv2d``; for ConvNeXt also ``reduction`` and ``gemm``),
run on rows by the functions of `rows.py`, its epilogue rendered by the
same code as a lone kernel's.

This module is the kernel-kind interface of `fusecc.codegen.c`; every
function hands the spec to its pattern's module.
"""

from __future__ import annotations

from types import ModuleType

import torch

from ....kernels.spec import KernelSpec
from ..common import thread_workspace
from ..dialects import Dialect
from . import basic, bottleneck, convnext, inverted_residual, stem

PATTERNS: dict[str, ModuleType] = {
    "inverted_residual": inverted_residual,
    "stem": stem,
    "bottleneck": bottleneck,
    "basic": basic,
    "convnext": convnext,
}


def _pattern(spec: KernelSpec) -> ModuleType:
    pattern = spec.attrs.get("pattern")
    try:
        return PATTERNS[pattern]
    except KeyError:
        raise NotImplementedError(f"no block kernel for pattern {pattern!r} (known: {', '.join(PATTERNS)})") from None


def unfused_by_default(spec: KernelSpec, dialect: Dialect) -> str | None:
    """Why, untuned, the layers one by one are the better default (None: the
    block kernel is). The tuner measures both either way."""
    return _pattern(spec).unfused_reason(spec, dialect)


def tunables(spec: KernelSpec, dialect: Dialect) -> dict[str, tuple]:
    return _pattern(spec).tunables(spec, dialect)


def default_params(spec: KernelSpec, dialect: Dialect) -> dict:
    pattern = _pattern(spec)
    pattern.check(spec)
    return pattern.default_params(spec, dialect)


def workspace_bytes(spec: KernelSpec, params: dict, nthreads: int) -> int:
    """Per thread: its buffers, 64-byte aligned."""
    return thread_workspace(nthreads, 4 * _pattern(spec).per_thread_floats(spec, params) + 128)


def prepare(spec: KernelSpec, params: dict, constants: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    return _pattern(spec).prepare(spec, params, constants)


def render(spec: KernelSpec, name: str, vl: int, params: dict) -> str:
    pattern = _pattern(spec)
    pattern.check(spec)
    return pattern.render(spec, name, vl, params)
