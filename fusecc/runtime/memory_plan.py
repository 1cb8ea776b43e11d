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
planned call allocates nothing. A kernel whose runtime inputs are planned
too has every pointer fixed for a thread: its pointer array is built once
(`CompiledKernel.fixed_function`) and the graph hands it neither its
constants nor anything to check - a call is one foreign call (MobileNetV2:
18 of its 21 kernels).
"""

from __future__ import annotations

import dataclasses
import threading

import torch
from torch.fx import GraphModule, Node

from ..targets.harness import storage_span
from .kernel import kernel_of
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


def plan_memory(gm: GraphModule) -> MemoryPlan | None:
    """Give planned outputs to the kernel calls of ``gm`` (rewritten in
    place); returns the plan, or None when no output qualifies."""
    nodes = list(gm.graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    kernels = {n for n in nodes if kernel_of(n) is not None}
    planned = [
        n
        for n in nodes
        if n in kernels and len(kernel_of(n).spec.outputs) == 1 and n.users and set(n.users) <= kernels
    ]
    if not planned:
        return None
    last_use = {n: max(index[u] for u in n.users) for n in planned}
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
    plan = MemoryPlan(list(slots.values()), alloc.top)
    slot_of = {n: j for j, n in enumerate(slots)}
    for n, j in slot_of.items():
        kernel = kernel_of(n)
        n.meta["memory_slot"] = j  # dumps and tests read the assignment
        inputs = {i: slot_of.get(n.args[i]) for i in kernel._runtime}
        fixed = kernel.fixed_function(plan, j, inputs) if None not in inputs.values() else None
        if fixed is None:
            n.target = kernel.as_function(plan, j)
            continue
        constants = [a for i, a in enumerate(n.args) if i not in inputs]
        n.target, n.args = fixed, tuple(n.args[i] for i in sorted(inputs))
        for c in constants:  # held by the kernel; the graph no longer loads them
            if isinstance(c, Node) and not c.users:
                gm.graph.erase_node(c)
    gm.memory_plan = plan
    return plan
