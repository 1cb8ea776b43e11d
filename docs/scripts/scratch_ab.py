"""Shared scratch (`fusecc/runtime/scratch.py`) against a scratch buffer
per kernel, in one process: a zoo model exported twice, the second
program's kernels given buffers of their own (as before session 18), the
two timed in alternation. Prints each median and the paired per-round
ratio own / shared with its quartiles.

    python docs/scripts/scratch_ab.py mobilenet_v2 30    # zoo model, rounds
"""

import statistics
import sys
import time

import torch

import fusecc
from fusecc.bench import zoo
from fusecc.bench.timing import alternated_rounds, paired_ratio


def own_buffers(program) -> int:
    """Give every kernel of ``program`` a scratch buffer of its own; returns how many."""
    kernels = []
    for node in program.gm.graph.nodes:
        target = node.target if node.op == "call_function" else None
        kernels += getattr(target, "kernels", None) or ([target.kernel] if hasattr(target, "kernel") else [])
    users = [k for k in kernels if k.workspace]
    for k in users:
        buf = torch.empty(k.workspace, dtype=torch.uint8)
        k._workspace_ptr = lambda buf=buf: buf.data_ptr()
    return len(users)


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "mobilenet_v2"
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    entry = zoo.get(name)
    model, x = entry.model("full"), entry.example_input("full", 1)
    with torch.no_grad():
        shared = fusecc.compile_exported(torch.export.export(model, (x,)))
        own = fusecc.compile_exported(torch.export.export(model, (x,)))
        print(f"{name}: {own_buffers(own)} kernels with scratch")
        ref = model(x)
        for program in (shared, own):
            torch.testing.assert_close(program(x), ref, rtol=1e-3, atol=1e-3)
        calls = max(3, int(0.3 / _time(shared, x)))
        times = alternated_rounds({"shared": lambda: shared(x), "own": lambda: own(x)}, rounds, calls)
    ratio, q1, q3 = paired_ratio(times["own"], times["shared"])
    print(f"median ms: shared {statistics.median(times['shared']) * 1e3:.3f}, own {statistics.median(times['own']) * 1e3:.3f}")
    print(f"own / shared per round: median {ratio:.3f} (quartiles {q1:.3f}-{q3:.3f}), {rounds} rounds")


def _time(program, x) -> float:
    start = time.perf_counter()
    program(x)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
