"""The dense attention kernel at several key-block widths against SDPA,
all built in one process and alternated round by round.

    python docs/scripts/attention_key_blocks.py 4096 64 6 [causal]   # L, head dim, rounds
"""

import statistics
import sys
import time

import torch
import torch.nn.functional as F

import fusecc
from fusecc.codegen.c import attention

WIDTHS = (64, 128, 256, 512)


class Attention(torch.nn.Module):
    def __init__(self, causal: bool):
        super().__init__()
        self.causal = causal

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)


def main() -> None:
    length, head_dim, rounds = (int(a) for a in sys.argv[1:4])
    causal = len(sys.argv) > 4 and sys.argv[4] == "causal"
    torch.set_num_threads(2)
    q, k, v = (torch.randn(1, 12, length, head_dim) for _ in range(3))
    model = Attention(causal)
    runs = {}
    saved = attention.DENSE_KEYS, attention.CAUSAL_KEYS
    default = saved[1] if causal else saved[0]
    with torch.no_grad():
        for keys in WIDTHS:
            attention.CAUSAL_KEYS = attention.DENSE_KEYS = keys
            runs[f"{keys} keys"] = fusecc.compile_exported(torch.export.export(model, (q, k, v)))
        attention.DENSE_KEYS, attention.CAUSAL_KEYS = saved
        runs["sdpa"] = model
        times = {name: [] for name in runs}
        for r in range(rounds):
            for name in list(runs) if r % 2 else list(runs)[::-1]:
                start = time.perf_counter()
                runs[name](q, k, v)
                times[name].append(time.perf_counter() - start)
    medians = {name: round(statistics.median(t) * 1e3, 1) for name, t in times.items()}
    print(f"L={length} d={head_dim}{' causal' if causal else ''} (default {default} keys): {medians} ms")


if __name__ == "__main__":
    main()
