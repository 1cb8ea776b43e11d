"""Pass `attention_masks` on and off, paired in one process, on GPT-2 small
(random weights) at TOKENS tokens. The zoo passes an all-ones padding mask,
so the causal mask is built from constants and the pass makes it the op's
causal flag: the kernel skips the keys above the diagonal.

    python docs/scripts/causal_mask_ab.py 1024 6    # tokens, rounds
"""

import statistics
import sys

import torch

from fusecc.bench import zoo
from fusecc.bench.timing import alternated_rounds, paired_ratio


def main() -> None:
    tokens, rounds = int(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(2)
    model = zoo.get("gpt2").model("full").eval()
    x = torch.randint(0, 50000, (1, tokens))
    runs = {}
    with torch.no_grad():
        reference = model(x)
        for label, on in (("causal_flag", True), ("mask", False)):
            torch._dynamo.reset()
            compiled = torch.compile(model, backend="fusecc", options={"passes": {"attention_masks": on}})
            print(f"{label}: max abs error to eager {(compiled(x) - reference).abs().max().item():.2e}")
            runs[label] = lambda c=compiled: c(x)
        times = alternated_rounds(runs, rounds, calls=2)
    median, q1, q3 = paired_ratio(times["mask"], times["causal_flag"])
    ms = {label: round(statistics.median(t) * 1e3, 1) for label, t in times.items()}
    print(f"{ms} ms; mask / causal_flag {median:.3f}x (quartiles {q1:.3f}-{q3:.3f})")


if __name__ == "__main__":
    main()
