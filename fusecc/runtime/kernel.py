"""A compiled kernel as the graph calls it.

`CompiledKernel` replaces a FusedGroup's call in the graph. ``run`` takes
the group's arguments (constant ones are ignored - the kernel holds its own,
possibly re-laid-out, copies), allocates the outputs, and calls the C
function through ctypes with one pointer array. Everything that does not
change between calls (constant pointers, the argument-array type, expected
layouts) is computed once; the per-call path is a few list operations, one
foreign call and one ``torch.empty_strided`` per output. Scratch memory is
the calling thread's buffer that every kernel shares (`scratch`).
"""

from __future__ import annotations

import ctypes
import logging
import threading
from pathlib import Path

import torch

from ..kernels.spec import KernelSpec
from . import scratch

log = logging.getLogger("fusecc")
_TORCH_DTYPE = {"f32": torch.float32, "bf16": torch.bfloat16, "bool": torch.bool}
_loaded: dict[str, ctypes.CDLL] = {}
_loaded_lock = threading.Lock()


def load_symbol(path: Path, symbol: str):
    with _loaded_lock:
        lib = _loaded.get(str(path))
        if lib is None:
            lib = _loaded[str(path)] = ctypes.CDLL(str(path))
    fn = getattr(lib, symbol)
    fn.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int]
    fn.restype = None
    return fn


def _contiguous(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(torch.empty(shape, device="meta").stride())


def _same_layout(shape: tuple[int, ...], a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return all(x == y for n, x, y in zip(shape, a, b) if n > 1)


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
        self.info = info  # source, command, parameters, timings (dumps / inspect)
        self.workspace = workspace
        # scratch was sized for this many threads; never hand the kernel more
        self.max_threads = max_threads
        ops = spec.operands
        self._runtime = [o.arg_index for o in ops if not o.constant]
        self._expected = [(o.shape, o.strides, _TORCH_DTYPE[o.dtype]) for o in ops if not o.constant]
        self._outputs = [(o.shape, o.strides or _contiguous(o.shape), _TORCH_DTYPE[o.dtype]) for o in spec.outputs]
        self._array = ctypes.c_void_p * (len(ops) + len(spec.outputs) + 1)
        self._bind({i: prepared[i] for i, o in enumerate(ops) if o.constant})
        self._all_runtime_first = all(p is None for p in self._order[: len(self._runtime)]) and all(
            p is not None for p in self._order[len(self._runtime) :]
        )
        self._single = len(spec.outputs) == 1
        self._warned = False

    def _bind(self, constants: dict[int, torch.Tensor], owner: object = None) -> None:
        self._consts = constants  # kept alive: the kernel holds raw pointers into them
        self._owner = owner
        self._generation = getattr(self, "_generation", 0) + 1  # pointer arrays built before are stale
        # operand slots: None for a runtime input (filled per call), else the constant's pointer
        self._order = [constants[i].data_ptr() if i in constants else None for i in range(len(self.spec.operands))]

    def constants(self) -> list[torch.Tensor]:
        """The prepared constants the kernel reads."""
        return list(self._consts.values())

    def rebind_constants(self, copies: dict[int, torch.Tensor], owner: object) -> None:
        """Read moved copies of the constants (keyed by ``id`` of the
        original, see `memory.move_constants`); ``owner`` keeps them alive."""
        self._bind({i: copies.get(id(t), t) for i, t in self._consts.items()}, owner)

    def _conform(self, t: torch.Tensor, shape, strides, dtype) -> torch.Tensor:
        """``t`` as the kernel reads it: an input whose layout differs from
        the compiled one (an ATen op whose real strides differ from its fake
        ones) is copied into the expected layout and logged once; a wrong
        shape or dtype is an error."""
        if t.stride() == strides and t.dtype is dtype:
            return t
        if tuple(t.shape) != shape or t.dtype != dtype:
            raise RuntimeError(
                f"kernel {self.spec.name}: got {t.dtype}{list(t.shape)}, compiled for {dtype}{list(shape)}"
            )
        if _same_layout(shape, t.stride(), strides):
            return t
        if not self._warned:
            log.warning(
                "fusecc: kernel %s got an input with strides %s, compiled for %s; copying",
                self.spec.name,
                t.stride(),
                strides,
            )
            self._warned = True
        return torch.empty_strided(shape, strides, dtype=dtype).copy_(t)

    def _workspace_ptr(self) -> int | None:
        return scratch.pointer(self.workspace)

    def output_layouts(self) -> list[tuple[tuple[int, ...], tuple[int, ...], torch.dtype]]:
        """(shape, strides, dtype) of each output."""
        return list(self._outputs)

    def run(self, *args: torch.Tensor):
        outs = [torch.empty_strided(shape, strides, dtype=dtype) for shape, strides, dtype in self._outputs]
        self._call(outs, args)
        return outs[0] if self._single else tuple(outs)

    def _call(self, outs: list[torch.Tensor], args) -> None:
        inputs = []
        for index, (shape, strides, dtype) in zip(self._runtime, self._expected):
            inputs.append(self._conform(args[index], shape, strides, dtype))
        if self._all_runtime_first:
            ptrs = [t.data_ptr() for t in inputs] + self._order[len(inputs) :]
        else:
            it = iter(inputs)
            ptrs = [next(it).data_ptr() if p is None else p for p in self._order]
        ptrs += [o.data_ptr() for o in outs]
        ptrs.append(self._workspace_ptr())
        self.fn(self._array(*ptrs), min(torch.get_num_threads(), self.max_threads))

    forward = run

    def as_function(self):
        """``run`` as a plain function named after the kernel: the graph
        calls it directly (no nn.Module call machinery), and dumped graphs
        read ``kernel_fused_conv_3(x, w)``."""
        run = self.run

        def call(*args):
            return run(*args)

        return self._named(call)

    def _named(self, call):
        """``call`` named after the kernel, so the graph reads ``kernel.<name>(...)``."""
        call.__name__ = call.__qualname__ = self.spec.name
        call.__module__ = "kernel"
        call.kernel = self
        return call

    def bound_function(self, plan, slot: int | None, input_slots: dict[int, int | None]) -> BoundKernel:
        """The kernel with a memory plan (`memory_plan`): its pointer array
        is built once per thread, holding its constants, its planned runtime
        inputs (``input_slots``: argument position -> plan slot) and its
        output (plan slot ``slot``). The rest are *holes* filled on each
        call: a runtime input with no slot (None), or whose planned layout
        differs from the compiled one, comes from the call's arguments; with
        ``slot`` None the output is a fresh tensor."""
        planned = dict(input_slots)
        for index, (shape, strides, dtype) in zip(self._runtime, self._expected):
            j = planned[index]
            if j is None:
                continue
            p = plan.slots[j]
            if p.dtype is not dtype or tuple(p.shape) != tuple(shape) or not _same_layout(shape, p.strides, strides):
                planned[index] = None
        return BoundKernel(self, plan, slot, planned)


class BoundKernel:
    """The graph's call of a kernel bound to a memory plan (see
    `CompiledKernel.bound_function`). The graph passes it its runtime
    inputs in argument order (planned ones only for the dataflow: they are
    where their producers wrote); it holds its constants itself. A call
    fills the holes of this thread's pointer array and makes one foreign
    call. `chain.py` calls runs of these from C, filling their holes first."""

    def __init__(self, kernel: CompiledKernel, plan, slot: int | None, input_slots: dict[int, int | None]):
        self.kernel, self.plan, self.slot = kernel, plan, slot
        ops = kernel.spec.operands
        position = {o.arg_index: i for i, o in enumerate(ops) if not o.constant}  # argument -> pointer slot
        self._input_slots = {position[a]: j for a, j in input_slots.items()}
        order = sorted(input_slots)  # the graph passes the runtime inputs in this order
        self.holes = [
            (position[a], order.index(a), layout)
            for a, layout in zip(kernel._runtime, kernel._expected)
            if input_slots[a] is None
        ]
        self.hole_arguments = {k for _, k, _ in self.holes}  # the call's argument positions that are holes
        self._output_position = len(ops)
        self.fresh_output = kernel._outputs[0] if slot is None else None
        self._local = threading.local()
        self.__name__ = self.__qualname__ = kernel.spec.name
        self.__module__ = "kernel"

    @property
    def fixed(self) -> bool:
        """Every pointer is fixed for a thread: nothing to fill per call."""
        return not self.holes and self.fresh_output is None

    def _pointers(self):
        k, views = self.kernel, self.plan.tensors()
        planned = {pos: views[j].data_ptr() for pos, j in self._input_slots.items() if j is not None}
        ptrs = [planned.get(i, 0) if p is None else p for i, p in enumerate(k._order)]
        ptrs += [views[self.slot].data_ptr() if self.slot is not None else 0, k._workspace_ptr()]
        out = views[self.slot] if self.slot is not None else None
        self._local.state = ((k._generation, scratch.generation()), k._array(*ptrs), out)
        return self._local.state

    def state(self):
        """(generations, pointer array, planned output or None) of the calling
        thread; rebuilt when the constants or the thread's scratch moved."""
        current = getattr(self._local, "state", None)
        fresh = current is not None and current[0] == (self.kernel._generation, scratch.generation())
        return current if fresh else self._pointers()

    def fill(self, array, inputs, keep: list) -> torch.Tensor | None:
        """Fill ``array``'s holes from ``inputs`` (this kernel's runtime
        inputs, in argument order); returns the fresh output, if any.
        ``keep`` holds the tensors whose pointers went in until the call."""
        for position, k, (shape, strides, dtype) in self.holes:
            t = self.kernel._conform(inputs[k], shape, strides, dtype)
            keep.append(t)
            array[position] = t.data_ptr()
        if self.fresh_output is None:
            return None
        shape, strides, dtype = self.fresh_output
        out = torch.empty_strided(shape, strides, dtype=dtype)
        array[self._output_position] = out.data_ptr()
        return out

    def __call__(self, *inputs) -> torch.Tensor:
        _, array, out = self.state()
        keep: list = []
        fresh = self.fill(array, inputs, keep) if not self.fixed else None
        self.kernel.fn(array, min(torch.get_num_threads(), self.kernel.max_threads))
        return out if fresh is None else fresh


def kernel_of(node) -> CompiledKernel | None:
    """The compiled C kernel a node of a lowered graph calls (its target is
    a `BoundKernel` or `CompiledKernel.as_function`), or None."""
    return getattr(node.target, "kernel", None) if node.op == "call_function" else None


def kernel_nodes(gm) -> list:
    """The nodes of a lowered graph that call compiled C kernels, in order."""
    return [n for n in gm.graph.nodes if kernel_of(n) is not None]
