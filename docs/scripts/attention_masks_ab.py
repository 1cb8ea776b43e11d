"""Pass `attention_masks` on and off, paired in one process: the pretrained
MiniLM-L6 at TOKENS tokens of real text (positions copied out as in
minilm_long_context.py), whose key-padding mask Hugging Face materializes
as [1, 1, TOKENS, TOKENS].

    python docs/scripts/attention_masks_ab.py 4096 5    # tokens, rounds
"""

import statistics
import sys

import torch
from minilm_long_context import model_and_text

from fusecc.bench.timing import alternated_rounds, paired_ratio


def main() -> None:
    tokens, rounds = int(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(2)
    model, inputs = model_and_text(tokens)
    runs = {}
    with torch.no_grad():
        reference = model(*inputs)
        for label, on in (("attention_masks", True), ("full_mask", False)):
            torch._dynamo.reset()
            compiled = torch.compile(model, backend="fusecc", options={"passes": {"attention_masks": on}})
            print(f"{label}: max abs error to eager {(compiled(*inputs) - reference).abs().max().item():.2e}")
            runs[label] = lambda c=compiled: c(*inputs)
        times = alternated_rounds(runs, rounds, calls=1)
    median, q1, q3 = paired_ratio(times["full_mask"], times["attention_masks"])
    ms = {label: round(statistics.median(t) * 1e3) for label, t in times.items()}
    print(f"{ms} ms; full_mask / attention_masks {median:.3f}x (quartiles {q1:.3f}-{q3:.3f})")


if __name__ == "__main__":
    main()
