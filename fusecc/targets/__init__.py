"""Targets: where fused groups run.

A target turns one `FusedGroup` into something callable. Returning None
means "run this group as its ATen ops" (the group is inlined back into the
graph, costing nothing at run time). Raising means the compile failed: the
runtime builder then falls back to ATen for that group and warns, naming
it. Kernel-generating targets (C, CUDA, TVM) register here.
"""

from __future__ import annotations

from collections.abc import Callable

from ..graph.fused_group import FusedGroup


class Target:
    name: str = ""
    description: str = ""

    def compile_group(self, group: FusedGroup) -> Callable | None:
        raise NotImplementedError


class AtenTarget(Target):
    name = "aten"
    description = "reference: fused groups run as their member ATen ops (no generated kernels)"

    def compile_group(self, group: FusedGroup) -> Callable | None:
        return None


TARGETS: dict[str, Target] = {}


def register(target: Target) -> Target:
    if not target.name:
        raise ValueError("a target needs a name")
    TARGETS[target.name] = target
    return target


def get(name: str) -> Target:
    return TARGETS[name]  # Options already validated the name


register(AtenTarget())
