"""Static memory plan for the intermediates of a compiled graph.

Every output of a generated kernel that only other kernels read (not a
graph output, not an ATen op's input, so nothing can keep a view of it) gets
a fixed offset in one arena, assigned at compile time from the tensors'
lifetimes in graph order. A freed range is handed to the next tensor that
fits, the most recently freed first, so a kernel writes into memory a
previous layer just used - still in cache - instead of wherever the
allocator points. Writing a 3.2 MB output of a 1x1 convolution into cold
memory costs 580 us on this machine against 380 us into a buffer still in
cache: every line is first read from DRAM (read-for-ownership). ONNX
Runtime plans its memory the same way.

The arena is allocated once per calling thread (so concurrent calls never
share intermediates) and the kernels' outputs are views made once, so a
planned call allocates nothing. Every single-output kernel is then bound
to the plan (`CompiledKernel.bound_function`): its pointer array is built
once per thread, the graph no longer hands it its constants, and a call
fills only the pointers that change - an input from outside the plan, a
fresh graph output - before one foreign call. A reshape of a planned
output that needs no copy becomes a second slot over the same bytes, so
MobileNetV2's flatten before its classifier costs nothing.
"""

from __future__ import annotations

import dataclasses
import threading

import torch
from torch.fx import GraphModule, Node

from ..targets.harness import storage_span
from .kernel import BoundKernel, kernel_of
from .memory import ALIGN, aligned


@dataclasses.dataclass(frozen=True)
class Slot:
    offset: int
    nbytes: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: torch.dtype


class MemoryPlan:
    def __init__(self, slots: list[Slot], size: int):
        self.slots = slots
        self.size = size
        self._local = threading.local()

    def tensors(self) -> list[torch.Tensor]:
        """This thread's arena, as one tensor per slot (made on first use)."""
        views = getattr(self._local, "views", None)
        if views is None:
            arena = torch.empty(self.size + ALIGN, dtype=torch.uint8)
            base = (-arena.data_ptr()) % ALIGN
            views = [
                arena[base + s.offset : base + s.offset + s.nbytes].view(s.dtype).as_strided(s.shape, s.strides)
                for s in self.slots
            ]
            self._local.arena, self._local.views = arena, views
        return views


class _Allocator:
    """Offsets in a growing arena; best fit among free ranges, the most
    recently freed on ties; neighbouring free ranges merge."""

    def __init__(self):
        self.free: list[list[int]] = []  # [offset, size, freed_at]
        self.top = 0

    def allocate(self, size: int) -> int:
        fits = [f for f in self.free if f[1] >= size]
        if not fits:
            if self.free and self.free[-1][0] + self.free[-1][1] == self.top:  # grow the last free range
                last = self.free.pop()
                self.top = last[0] + size
                return last[0]
            offset, self.top = self.top, self.top + size
            return offset
        best = min(fits, key=lambda f: (f[1] - size, -f[2]))
        offset = best[0]
        if best[1] == size:
            self.free.remove(best)
        else:
            best[0], best[1] = best[0] + size, best[1] - size
        return offset

    def release(self, offset: int, size: int, when: int) -> None:
        self.free.append([offset, size, when])
        self.free.sort()
        merged: list[list[int]] = []
        for f in self.free:
            if merged and merged[-1][0] + merged[-1][1] == f[0]:
                merged[-1][1] += f[1]
                merged[-1][2] = max(merged[-1][2], f[2])
            else:
                merged.append(f)
        self.free = merged


_VIEWS = (torch.ops.aten.view.default, torch.ops.aten._unsafe_view.default, torch.ops.aten.reshape.default)


def _kernel_view(node: Node, kernels: set[Node]) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(shape, strides) of ``node`` when it reshapes a kernel's output
    without a copy and only kernels read it (a flatten before a classifier):
    it becomes another slot over the same memory, and its readers read it
    there."""
    if node.op != "call_function" or node.target not in _VIEWS or node.args[0] not in kernels:
        return None
    if not node.users or not set(node.users) <= kernels or len(kernel_of(node.args[0]).spec.outputs) != 1:
        return None
    shape, strides, dtype = kernel_of(node.args[0]).output_layouts()[0]
    try:
        view = torch.empty_strided(shape, strides, dtype=dtype, device="meta").view(node.args[1])
    except RuntimeError:  # a reshape that would copy
        return None
    return tuple(view.shape), tuple(view.stride())


def plan_memory(gm: GraphModule) -> MemoryPlan | None:
    """Give planned outputs to the kernel calls of ``gm`` and bind every
    single-output kernel to the plan (`CompiledKernel.bound_function`),
    rewriting the graph in place; returns the plan, or None when no output
    qualifies."""
    nodes = list(gm.graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    kernels = {n for n in nodes if kernel_of(n) is not None}
    views = {n: layout for n in nodes if (layout := _kernel_view(n, kernels)) is not None}
    readers = kernels | set(views)
    planned = [
        n
        for n in nodes
        if n in kernels and len(kernel_of(n).spec.outputs) == 1 and n.users and set(n.users) <= readers
    ]
    if not planned:
        return None
    last_use = {n: max(index[r] for u in n.users for r in (u.users if u in views else (u,))) for n in planned}
    dying: dict[int, list[Node]] = {}
    for n in planned:
        dying.setdefault(last_use[n], []).append(n)
    alloc = _Allocator()
    slots: dict[Node, Slot] = {}
    for i, n in enumerate(nodes):
        if n in last_use:
            shape, strides, dtype = kernel_of(n).output_layouts()[0]
            nbytes = storage_span(shape, strides) * dtype.itemsize
            slots[n] = Slot(alloc.allocate(aligned(nbytes)), nbytes, shape, strides, dtype)
        for d in dying.get(i, ()):
            alloc.release(slots[d].offset, aligned(slots[d].nbytes), i)
    for v, (shape, strides) in views.items():
        base = slots.get(v.args[0])
        if base is not None:
            slots[v] = dataclasses.replace(base, shape=shape, strides=strides)
    plan = MemoryPlan(list(slots.values()), alloc.top)
    slot_of = {n: j for j, n in enumerate(slots)}
    for n in nodes:
        kernel = kernel_of(n)
        if kernel is None or len(kernel.spec.outputs) != 1:
            continue
        if n in slot_of:
            n.meta["memory_slot"] = slot_of[n]  # dumps and tests read the assignment
        bound = kernel.bound_function(plan, slot_of.get(n), {i: slot_of.get(n.args[i]) for i in kernel._runtime})
        constants = [a for i, a in enumerate(n.args) if i not in kernel._runtime]
        n.target, n.args = bound, tuple(n.args[i] for i in sorted(kernel._runtime))
        for c in constants:  # held by the kernel; the graph no longer loads them
            if isinstance(c, Node) and not c.users:
                gm.graph.erase_node(c)
    for v in views:
        if v not in slot_of:
            continue
        for user in list(v.users):  # a planned reader reads the view's slot: it needs the producer only for the order
            if not isinstance(user.target, BoundKernel):
                continue  # a multi-output kernel takes its inputs as tensors
            kept = user.target.hole_arguments
            user.args = tuple(v.args[0] if a is v and k not in kept else a for k, a in enumerate(user.args))
        if not v.users:
            gm.graph.erase_node(v)
    gm.memory_plan = plan
    return plan
