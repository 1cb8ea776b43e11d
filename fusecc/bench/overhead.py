"""Per-call overhead: a one-op graph (``relu`` of 64 floats), where the op
costs well under a microsecond, so what is measured is dispatch:
``fusecc bench --overhead``.

Every torch.compile backend pays Dynamo's guard check and AOTAutograd's
wrapper; the difference between ``fusecc`` (target c) and ``fusecc``
(target aten, the op inlined as ATen) is the cost of calling one generated
kernel.
"""

from __future__ import annotations

import argparse
import time

import torch


def _per_call_us(fn, x: torch.Tensor, calls: int = 3000, rounds: int = 7) -> float:
    with torch.no_grad():
        for _ in range(100):
            fn(x)
        best = float("inf")
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(calls):
                fn(x)
            best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


def measure() -> dict[str, float]:
    x = torch.randn(64)

    def f(t):
        return torch.relu(t)

    results = {"eager": _per_call_us(f, x)}
    for label, options in (("fusecc (c kernel)", {"target": "c"}), ("fusecc (aten)", {"target": "aten"})):
        torch._dynamo.reset()
        results[label] = _per_call_us(torch.compile(f, backend="fusecc", options=options), x)
    torch._dynamo.reset()
    results["inductor"] = _per_call_us(torch.compile(f), x)
    torch._dynamo.reset()
    return results


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="fusecc bench --overhead", description=__doc__.split("\n\n")[0]).parse_known_args(argv)
    results = measure()
    eager = results["eager"]
    print("per-call time of a one-op graph (best of 7 x 3000 calls)")
    for name, us in results.items():
        print(f"  {name:20s} {us:7.2f} us   overhead vs eager {us - eager:6.2f} us")
    return 0
