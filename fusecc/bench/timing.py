"""Paired timing: every configuration is timed in the same process, in
interleaved blocks so machine drift hits all of them alike; medians are
reported.

Runtimes keep their worker threads spinning after a call: ONNX Runtime's
pool burns up to 1.6 cores for about 45 ms, OpenMP's about 8 ms (measured
from ``/proc/self/task/*/schedstat`` on this project's 2-vCPU guest).
A block started while the previous runtime still spins shares the cores
with it: with a fixed 30 ms pause, fusecc's MobileNetV2 timed 10% slower
in blocks that followed ONNX Runtime's than in identical blocks that
followed its own (5.53 vs 5.00 ms). So each block waits until the other
threads of the process are quiet (`wait_until_quiet`), its first call is
not counted, and the block order of the rounds is a Williams design
(`block_orders`: every runner follows every other equally often), so no
configuration always inherits one neighbour's leftovers. Every
configuration is measured the way a service runs it - repeatedly, alone on
the machine.
"""

from __future__ import annotations

import math
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

_QUIET_WINDOW_S = 0.01  # longer than a 4 ms scheduler tick: a spinning thread's CPU time shows in every window
_QUIET_FRACTION = 0.1  # of one core, over a window: what counts as quiet
_QUIET_MAX_S = 1.0  # a thread that never stops (not a runtime's pool) is not waited for longer
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


def _other_threads_cpu_ns() -> int | None:
    """CPU time the process's threads other than the caller have run, in
    ns; None where ``/proc`` has no schedstat (not Linux)."""
    me, total = str(threading.get_native_id()), 0
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return None
    for tid in tids:
        if tid == me:
            continue
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended while we looked
    return total


def wait_until_quiet(max_s: float = _QUIET_MAX_S) -> float:
    """Sleep until the other threads of this process (runtimes' worker
    pools spinning after a call) use under a tenth of a core, at most
    ``max_s``; returns the seconds waited. Off Linux: one window."""
    start = time.perf_counter()
    before = _other_threads_cpu_ns()
    while True:
        time.sleep(_QUIET_WINDOW_S)
        waited = time.perf_counter() - start
        now = _other_threads_cpu_ns()
        if before is None or now is None or waited >= max_s:
            return waited
        if now - before < _QUIET_FRACTION * _QUIET_WINDOW_S * 1e9:
            return waited
        before = now


def block_orders(n: int) -> list[list[int]]:
    """A Williams design over ``n`` runners: orders in which every runner
    follows every other runner equally often (once each for even ``n``,
    twice for odd ``n``, whose design is the rows and their mirrors)."""
    first, low, high = [0], 1, n - 1
    while low <= high:
        first.append(low)
        low += 1
        if low <= high:
            first.append(high)
            high -= 1
    rows = [[(f + r) % n for f in first] for r in range(n)]
    return rows + [row[::-1] for row in rows] if n % 2 and n > 1 else rows


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
    per_round = sum(block[n] * per_call[n] + 2 * _QUIET_WINDOW_S for n in runners)
    rounds = int(min(max_rounds, max(min_rounds, budget_s / per_round)))
    names = list(runners)
    orders = block_orders(len(names))
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in (names[i] for i in orders[r % len(orders)]):
            wait_until_quiet()
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
