"""Paired timing: every configuration is timed in the same process, in
interleaved blocks (A B C, B C A, ...) so machine drift hits all of them
alike; medians are reported.

Runtimes keep their worker threads spinning for a while after a call
(ONNX Runtime's pool, OpenMP). Calls of different runtimes back to back
would then fight over the cores, so each block starts after a short pause
and its first call is not counted: every configuration is measured the way
a service runs it - repeatedly, alone on the machine.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

_PAUSE_S = 0.03
_BLOCK_S = 0.05


@dataclass
class Stats:
    median_ms: float
    p10_ms: float
    p90_ms: float
    samples: int


def _time_one(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(
    runners: dict[str, Callable[[], object]],
    budget_s: float = 10.0,
    min_rounds: int = 5,
    max_rounds: int = 200,
    warmup: int = 3,
) -> dict[str, Stats]:
    """Median per-call latency of each runner, from interleaved blocks."""
    if not runners:
        return {}
    per_call = {}
    for name, fn in runners.items():
        for _ in range(warmup):
            fn()
        per_call[name] = min(_time_one(fn) for _ in range(2))
    block = {n: max(3, math.ceil(_BLOCK_S / max(t, 1e-6))) + 1 for n, t in per_call.items()}
    per_round = sum(block[n] * per_call[n] + _PAUSE_S for n in runners)
    rounds = int(min(max_rounds, max(min_rounds, budget_s / per_round)))
    names = list(runners)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            time.sleep(_PAUSE_S)
            fn = runners[name]
            fn()  # first call after the switch: not counted
            samples[name].extend(_time_one(fn) for _ in range(block[name] - 1))
    out = {}
    for name, xs in samples.items():
        xs.sort()
        out[name] = Stats(
            median_ms=statistics.median(xs) * 1e3,
            p10_ms=xs[len(xs) // 10] * 1e3,
            p90_ms=xs[(len(xs) * 9) // 10] * 1e3,
            samples=len(xs),
        )
    return out


def alternated_rounds(runners: dict[str, Callable[[], object]], rounds: int, calls: int = 3) -> dict[str, list[float]]:
    """Each round runs every runner once untimed, then ``calls`` timed calls,
    in an order reversed every other round; returns each runner's per-round
    medians (seconds), paired by index for `paired_ratio`."""
    out: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(rounds):
        for name in list(runners) if r % 2 else list(runners)[::-1]:
            runners[name]()
            out[name].append(statistics.median(_time_one(runners[name]) for _ in range(calls)))
    return out


def paired_ratio(first: list[float], second: list[float]) -> tuple[float, float, float]:
    """Median, lower and upper quartile of the per-round ratio first / second."""
    ratios = [a / b for a, b in zip(first, second)]
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    return statistics.median(ratios), q1, q3
