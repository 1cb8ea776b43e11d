"""A zoo model exported twice - the dense attention kernel with 64-key
blocks (the old default) and with today's default - and timed
alternately: the median per-round ratio old / new with its quartiles.

    python docs/scripts/key_blocks_model_ab.py vit_small 12   # model, rounds
"""

import statistics
import sys

import torch

import fusecc
from fusecc.bench import zoo
from fusecc.bench.timing import alternated_rounds, paired_ratio
from fusecc.codegen.c import attention


def main() -> None:
    name, rounds = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(2)
    entry = zoo.ZOO[name]
    model, x = entry.model("full"), entry.example_input("full", 1)
    runs = {}
    with torch.no_grad():
        for label, keys in (("64 keys", 64), ("default", attention.DENSE_KEYS)):
            saved, attention.DENSE_KEYS = attention.DENSE_KEYS, keys
            runs[label] = fusecc.compile_exported(torch.export.export(model, (x,)))
            attention.DENSE_KEYS = saved
        rounds_s = alternated_rounds({label: lambda run=run: run(x) for label, run in runs.items()}, rounds)
    ratio, q1, q3 = paired_ratio(rounds_s["64 keys"], rounds_s["default"])
    ms = {label: round(statistics.median(t) * 1e3, 2) for label, t in rounds_s.items()}
    print(f"{name}: {ms} ms; 64 keys / default, paired: {ratio:.3f} ({q1:.3f}-{q3:.3f})")


if __name__ == "__main__":
    main()
