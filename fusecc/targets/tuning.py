"""What a CPU target needs to tune its kernels: inputs to run a kernel on,
and progress output while measuring."""

from __future__ import annotations

import sys

import torch

from ..kernels.spec import TORCH_DTYPES, KernelSpec
from ..tuner import Progress

# tuning records of the other implementations a kernel is weighed against:
# a block run as its layers, a group run as its ATen ops (vendor libraries)
LAYERS = {"impl": "layers"}
LIBRARY = {"impl": "library"}


def random_runtime_args(spec: KernelSpec, constants: dict[int, torch.Tensor]) -> list[torch.Tensor]:
    """Call arguments for ``CompiledKernel.run``: random tensors with the
    compiled shapes, strides and dtypes for the runtime operands (constants
    are already inside the kernel; their slots get a placeholder)."""
    count = max((o.arg_index for o in spec.operands), default=-1) + 1
    args: list[torch.Tensor] = [torch.empty(0)] * count
    gen = torch.Generator().manual_seed(0)
    for o in spec.operands:
        if o.constant:
            continue
        dtype = TORCH_DTYPES[o.dtype]
        t = torch.empty_strided(o.shape, o.strides, dtype=dtype)
        values = torch.randn(o.shape, generator=gen)
        t.copy_(values > 0 if dtype is torch.bool else values)
        args[o.arg_index] = t
    return args


def group_call_args(spec: KernelSpec, constants: dict[int, torch.Tensor]) -> list[torch.Tensor]:
    """`random_runtime_args` with the constants in their slots: arguments to
    call the group itself (its ATen ops) as well as its kernel."""
    return [constants.get(i, a) for i, a in enumerate(random_runtime_args(spec, constants))]


class TuningProgress(Progress):
    """One line per measured candidate and per paired confirmation (stderr)."""

    def __init__(self):
        self.count = 0

    def measured(self, signature: str, params: dict, us: float | None) -> None:
        self.count += 1
        shown = {k: v for k, v in params.items() if k != "vl"}
        result = f"{us:9.1f} us" if us is not None else "   failed"
        print(f"fusecc tune [{self.count:4d}] {signature[:10]} {result}  {shown}", file=sys.stderr, flush=True)

    def confirmed(self, signature: str, candidate: dict, speedup: float, kept: bool) -> None:
        shown = {k: v for k, v in candidate.items() if k != "vl"}
        # an implementation record (the layers, the library) is weighed against the kernel as chosen
        against = "the kernel" if "impl" in candidate else "the default"
        verdict = "taken" if kept else f"{against} kept"
        print(
            f"fusecc tune [pair] {signature[:10]} {speedup:6.3f}x paired over {against} ({verdict})  {shown}",
            file=sys.stderr,
            flush=True,
        )
