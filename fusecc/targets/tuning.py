"""What a CPU target needs to tune its kernels: inputs to run a kernel on,
and progress output while measuring."""

from __future__ import annotations

import sys

import torch

from ..kernels.spec import KernelSpec

# tuning records of the other implementations a kernel is weighed against:
# a block run as its layers, a group run as its ATen ops (vendor libraries)
LAYERS = {"impl": "layers"}
LIBRARY = {"impl": "library"}

_DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "bool": torch.bool}


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
        dtype = _DTYPES[o.dtype]
        t = torch.empty_strided(o.shape, o.strides, dtype=dtype)
        values = torch.randn(o.shape, generator=gen)
        t.copy_(values > 0 if dtype is torch.bool else values)
        args[o.arg_index] = t
    return args


def tuning_progress():
    """A callback printing one line per measured candidate (stderr)."""
    count = {"n": 0}

    def report(signature: str, params: dict, us: float | None) -> None:
        count["n"] += 1
        shown = {k: v for k, v in params.items() if k != "vl"}
        result = f"{us:9.1f} us" if us is not None else "   failed"
        print(f"fusecc tune [{count['n']:4d}] {signature[:10]} {result}  {shown}", file=sys.stderr, flush=True)

    return report
