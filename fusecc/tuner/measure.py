"""Robust timing of one kernel on the machine it will run on.

Warm-up calls first (page faults, caches, OpenMP pool), then repeated
calls until both a minimum count and a minimum time are reached; samples
further than 5 median absolute deviations above the median (a preempted
run, an interrupt) are dropped and the median of the rest is the result.
A call with a ``prepare`` attribute has it run, untimed, before each call
(the CPU target evicts the kernel's weights from the caches there).

Two medians taken one after the other compare badly on a busy or
frequency-scaling machine: a 15-25% gap between two sequential medians of
the same kernel was measured as noise on a 2-core cloud VM.
``paired_speedup`` is the comparison that decides: the two calls
alternate in short runs, and the result is the median of the per-round
ratios, so a slow phase of the machine slows both sides of a round.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

WARMUP = 2
MIN_RUNS = 10
MIN_SECONDS = 0.05
MAX_RUNS = 200
PAIRED_ROUNDS = 12  # rounds of a paired comparison
PAIRED_CALLS = 3  # timed calls of each side per round


def _prepared(call: Callable[[], object]) -> Callable[[], object]:
    return getattr(call, "prepare", None) or (lambda: None)


def median_us(call: Callable[[], object]) -> float:
    prepare = _prepared(call)
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


def paired_speedup(
    baseline: Callable[[], object], candidate: Callable[[], object], rounds: int = PAIRED_ROUNDS
) -> float:
    """How many times faster ``candidate`` runs than ``baseline`` (> 1:
    faster), timed alternately: per round, the median of ``PAIRED_CALLS``
    calls of each, the side going first swapping every round; the result is
    the median of the rounds' ratios baseline / candidate."""
    sides = [(baseline, _prepared(baseline)), (candidate, _prepared(candidate))]
    for call, prepare in sides:
        for _ in range(WARMUP):
            prepare()
            call()

    def run(call, prepare) -> float:
        samples = []
        for _ in range(PAIRED_CALLS):
            prepare()
            t0 = time.perf_counter()
            call()
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples)

    ratios = []
    for r in range(rounds):
        times = [0.0, 0.0]
        for side in (0, 1) if r % 2 == 0 else (1, 0):
            times[side] = run(*sides[side])
        ratios.append(times[0] / max(times[1], 1e-12))
    return statistics.median(ratios)
