"""A compiled kernel as the graph calls it.

`CompiledKernel` replaces a FusedGroup's call in the graph: it takes the
group's arguments (constant ones are ignored - the kernel holds its own,
possibly re-laid-out, copies), allocates outputs and scratch, and calls the
C function through ctypes with one pointer array. Per call that is one
foreign call plus one ``torch.empty`` per output.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from ..kernels.spec import KernelSpec

log = logging.getLogger("fusecc")
_TORCH_DTYPE = {"f32": torch.float32, "bf16": torch.bfloat16, "bool": torch.bool}
_loaded: dict[str, ctypes.CDLL] = {}


def load_symbol(path: Path, symbol: str):
    lib = _loaded.get(str(path))
    if lib is None:
        lib = _loaded[str(path)] = ctypes.CDLL(str(path))
    fn = getattr(lib, symbol)
    fn.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int]
    fn.restype = None
    return fn


def _contiguous(shape: tuple[int, ...]) -> tuple[int, ...]:
    return torch.empty(shape, device="meta").stride()


class CompiledKernel(torch.nn.Module):
    def __init__(
        self,
        spec: KernelSpec,
        fn,
        prepared: dict[int, torch.Tensor],
        workspace: int,
        info: dict,
        max_threads: int,
    ):
        super().__init__()
        self.spec = spec
        self.fn = fn
        self.info = info  # source path, command, params, timings (dumps / inspect)
        self.workspace = workspace
        # scratch was sized for this many threads; never hand the kernel more
        self.max_threads = max_threads
        self._consts = [prepared[i] for i in range(len(spec.operands)) if spec.operands[i].constant]
        self._slots = len(spec.operands) + len(spec.outputs) + 1
        const_ptrs = iter([t.data_ptr() for t in self._consts])
        self._template = [None if not o.constant else next(const_ptrs) for o in spec.operands]
        self._runtime = [(i, o.arg_index) for i, o in enumerate(spec.operands) if not o.constant]
        self._expected = [
            (o.arg_index, o.shape, o.strides, _TORCH_DTYPE[o.dtype]) for o in spec.operands if not o.constant
        ]
        self._outputs = [(o.shape, o.strides or _contiguous(o.shape), _TORCH_DTYPE[o.dtype]) for o in spec.outputs]
        self._warned = False

    def _conform(self, args: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The runtime inputs, each in the layout the kernel was compiled for.

        Layouts come from compile-time shape propagation; an ATen op whose
        real output strides differ from its fake ones would otherwise make
        the kernel misread memory. Such an input is copied into the expected
        layout (and logged once); a wrong shape or dtype is an error."""
        inputs = []
        for index, shape, strides, dtype in self._expected:
            t = args[index]
            if tuple(t.shape) != shape or t.dtype != dtype:
                raise RuntimeError(
                    f"kernel {self.spec.name}: argument {index} is {t.dtype}{list(t.shape)}, "
                    f"compiled for {dtype}{list(shape)}"
                )
            if not all(a == b for n, a, b in zip(shape, t.stride(), strides) if n > 1):
                if not self._warned:
                    log.warning(
                        "fusecc: kernel %s got argument %d with strides %s, compiled for %s; copying",
                        self.spec.name,
                        index,
                        t.stride(),
                        strides,
                    )
                    self._warned = True
                t = torch.empty_strided(shape, strides, dtype=dtype).copy_(t)
            inputs.append(t)
        return inputs

    def forward(self, *args: torch.Tensor):
        ptrs = list(self._template)
        inputs = self._conform(args)
        for (slot, _), t in zip(self._runtime, inputs):
            ptrs[slot] = t.data_ptr()
        outs = [torch.empty_strided(shape, strides, dtype=dtype) for shape, strides, dtype in self._outputs]
        ptrs.extend(o.data_ptr() for o in outs)
        scratch = torch.empty(self.workspace, dtype=torch.uint8) if self.workspace else None
        ptrs.append(scratch.data_ptr() if scratch is not None else None)
        self.fn((ctypes.c_void_p * self._slots)(*ptrs), min(torch.get_num_threads(), self.max_threads))
        return outs[0] if len(outs) == 1 else tuple(outs)
