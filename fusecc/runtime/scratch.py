"""Scratch memory shared by every kernel a thread calls.

Kernels run one after another, so one buffer serves them all. A kernel's
scratch (a block's expanded tile, a convolution's accumulators or padded
input) then lands on cache lines the kernel before it has just used: they
are in L2 already. With a buffer of its own, last touched a whole model
call earlier, every line of it came from memory first. MobileNetV2 on a
2-vCPU Zen 1: warming each kernel's own buffer before its call took 255 us
off the 643 us its kernels lose in the model against hot; sharing one
buffer makes the model 1.02x faster (`docs/scripts/scratch_ab.py`, see
docs/benchmarks.md, session 18).

The buffer is per Python thread (two threads calling compiled graphs at
once must not share it) and only grows. Growing replaces it and bumps
``generation``: a pointer array built with the old address is stale, and
its owner (`BoundKernel`, `chain`) rebuilds it.
"""

from __future__ import annotations

import threading

from .memory import huge_page_bytes

GRANULE = 64 << 10  # grow in 64 KB steps; kernels' needs differ by a few lines


class _ThreadScratch(threading.local):
    def __init__(self):
        self.mapping = None
        self.bytes = None
        self.nbytes = 0
        self.generation = 0


_scratch = _ThreadScratch()


def pointer(nbytes: int) -> int | None:
    """Address of at least ``nbytes`` of this thread's scratch (64-byte
    aligned), or None when ``nbytes`` is 0. Valid until the buffer grows,
    that is while `generation()` returns what it returned before the call."""
    if not nbytes:
        return None
    if nbytes > _scratch.nbytes:
        size = -(-nbytes // GRANULE) * GRANULE
        mapping, data = huge_page_bytes(size)
        _scratch.mapping, _scratch.bytes, _scratch.nbytes = mapping, data, size
        _scratch.generation += 1
    return _scratch.bytes.data_ptr()


def reserve(nbytes: int) -> None:
    """Grow this thread's scratch to ``nbytes`` now, before pointer arrays
    are built with a smaller one."""
    pointer(nbytes)


def generation() -> int:
    """Changes whenever this thread's scratch moves."""
    return _scratch.generation
