"""A zoo model exported twice - the dense attention kernel with 64-key
blocks (the old default) and with today's default - and timed
alternately: the median per-round ratio old / new with its quartiles.

    python docs/scripts/key_blocks_model_ab.py vit_small 12   # model, rounds
"""

import statistics
import sys
import time

import torch

import fusecc
from fusecc.bench import zoo
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
        medians = {label: [] for label in runs}
        ratios = []
        for r in range(rounds):
            this_round = {}
            for label in list(runs) if r % 2 else list(runs)[::-1]:
                runs[label](x)
                times = []
                for _ in range(3):
                    start = time.perf_counter()
                    runs[label](x)
                    times.append(time.perf_counter() - start)
                this_round[label] = statistics.median(times)
                medians[label].append(this_round[label])
            ratios.append(this_round["64 keys"] / this_round["default"])
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    ms = {label: round(statistics.median(t) * 1e3, 2) for label, t in medians.items()}
    print(f"{name}: {ms} ms; 64 keys / default, paired: {statistics.median(ratios):.3f} ({q1:.3f}-{q3:.3f})")


if __name__ == "__main__":
    main()
