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
    # group kinds the target compiles; the others run as their ATen ops
    # (inlined, recorded as a decision - not a fallback). None: every kind.
    group_kinds: frozenset[str] | None = None
    # runs attention groups under an attention sparsity plan (their table of kept blocks)
    sparse_attention: bool = False
    # runs conv groups whose output is averaged over the pixels in the kernel (pool_fusion)
    pooled_convolutions: bool = False

    def compile_group(self, group: FusedGroup) -> Callable | None:
        raise NotImplementedError

    def chain_launcher(self, options) -> Callable | None:
        """A foreign function that calls a run of this target's plan-bound
        kernels (`runtime/chain.py`), or None where kernels are not C functions."""
        return None

    def compile_groups(self, items: list[tuple[FusedGroup, dict]], options) -> list:
        """Compile many groups at once (targets override this to build in
        parallel). ``items`` pairs each group with its constant inputs
        (argument index -> tensor). Returns, per group, a callable, None
        (run as ATen) or the exception that made its compile fail."""
        results = []
        for group, _constants in items:
            try:
                results.append(self.compile_group(group))
            except Exception as e:  # noqa: BLE001 - reported as that group's fallback
                results.append(e)
        return results


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


def _register_builtin() -> None:
    from .cpu import HostCTarget
    from .cuda import CudaTarget, EmulatedCudaTarget
    from .tvm_target import TvmLlvmTarget

    register(HostCTarget())
    register(CudaTarget())
    register(EmulatedCudaTarget())
    register(TvmLlvmTarget())


_register_builtin()
