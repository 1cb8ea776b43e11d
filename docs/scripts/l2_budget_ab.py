"""The ConvNeXt block kernel's L2 budget (`codegen/c/block/convnext.BUDGET`,
the bytes of ring + band + expanded band a thread keeps) at two sizes, in
one process: a model or block compiled twice, the programs timed in
alternation. Prints each median and the paired per-round ratio.

    python docs/scripts/l2_budget_ab.py convnext_tiny 20 524288   # zoo model, rounds, the other budget
    python docs/scripts/l2_budget_ab.py block192 30 524288         # ConvNeXt block 192 @ 28x28 alone
"""

import statistics
import sys
import time

import torch

import fusecc
from fusecc.bench import zoo
from fusecc.bench.blocks import ConvNeXtBlock
from fusecc.bench.timing import alternated_rounds, paired_ratio
from fusecc.codegen.c.block import convnext


def build(name: str):
    if name == "block192":
        return ConvNeXtBlock(192).eval(), torch.randn(1, 192, 28, 28).to(memory_format=torch.channels_last)
    entry = zoo.get(name)
    return entry.model("full"), entry.example_input("full", 1)


def main() -> None:
    name, rounds, other = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    model, x = build(name)
    programs = {}
    with torch.no_grad():
        for budget in (convnext.BUDGET, other):
            convnext.BUDGET, saved = budget, convnext.BUDGET
            programs[budget] = fusecc.compile_exported(torch.export.export(model, (x,)))
            convnext.BUDGET = saved
        ref = model(x)
        for program in programs.values():
            torch.testing.assert_close(program(x), ref, rtol=1e-3, atol=1e-3)
        (base, first), (alt, second) = programs.items()
        calls = max(3, int(0.3 / _time(first, x)))
        times = alternated_rounds({base: lambda: first(x), alt: lambda: second(x)}, rounds, calls)
    ratio, q1, q3 = paired_ratio(times[alt], times[base])
    for budget in programs:
        print(f"budget {budget // 1024} KB: median {statistics.median(times[budget]) * 1e3:.3f} ms")
    print(f"{alt // 1024} KB / {base // 1024} KB per round: {ratio:.3f} (quartiles {q1:.3f}-{q3:.3f}), {rounds} rounds")


def _time(program, x) -> float:
    start = time.perf_counter()
    program(x)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
