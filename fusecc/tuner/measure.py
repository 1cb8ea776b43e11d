"""Robust timing of one kernel on the machine it will run on.

Warm-up calls first (page faults, caches, OpenMP pool), then repeated
calls until both a minimum count and a minimum time are reached; samples
further than 5 median absolute deviations above the median (a preempted
run, an interrupt) are dropped and the median of the rest is the result.
A call with a ``prepare`` attribute has it run, untimed, before each call
(the CPU target evicts the kernel's weights from the caches there).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

WARMUP = 2
MIN_RUNS = 10
MIN_SECONDS = 0.05
MAX_RUNS = 200


def median_us(call: Callable[[], object]) -> float:
    prepare = getattr(call, "prepare", None) or (lambda: None)
    for _ in range(WARMUP):
        prepare()
        call()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < MAX_RUNS and (len(samples) < MIN_RUNS or time.perf_counter() - start < MIN_SECONDS):
        prepare()
        t0 = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t0)
    return robust_median(samples) * 1e6


def robust_median(samples: list[float]) -> float:
    """Median after dropping high outliers (> median + 5 MAD)."""
    med = statistics.median(samples)
    mad = statistics.median(abs(s - med) for s in samples) or med * 1e-3
    kept = [s for s in samples if s <= med + 5 * mad]
    return statistics.median(kept)
