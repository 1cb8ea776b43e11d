"""A ViT at a long context (issue 5, outcome 6): ViT-S/16 (random weights)
on a RES x RES image, (RES/16)^2 + 1 tokens: 4097 at 1024. Calibrates a
plan at the default budget, then times eager, inductor, fusecc dense and
fusecc with the plan, alternated in one process (median of per-round
medians, paired ratios against inductor).

    python docs/scripts/vit_long_context.py 1024 5    # image side, rounds
"""

import sys
import time

import torch
from transformers import ViTConfig, ViTForImageClassification

import fusecc
from fusecc.bench.timing import alternated_rounds, paired_ratio
from fusecc.bench.zoo import LogitsOnly


def main() -> None:
    side, rounds = int(sys.argv[1]), int(sys.argv[2])
    torch.manual_seed(0)
    torch.set_num_threads(2)
    cfg = ViTConfig(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536, image_size=side
    )
    model = LogitsOnly(ViTForImageClassification(cfg), "logits").eval()
    image = torch.randn(1, 3, side, side)
    print(f"ViT-S/16 at {side}x{side}: {(side // 16) ** 2 + 1} tokens")
    start = time.perf_counter()
    plan = fusecc.calibrate(model, (image,), budget=0.95, block=64, measure=True, skip=False)
    kept = [h["kept"] for layer in plan.layers for h in layer]
    kinds = sorted({h["kind"] for layer in plan.layers for h in layer})
    print(f"calibrated in {time.perf_counter() - start:.0f} s: {sum(kept) / len(kept):.0%} of blocks kept; {kinds}")
    compiles = {
        "inductor": {},
        "fusecc_dense": {"backend": "fusecc"},
        "fusecc_plan": {"backend": "fusecc", "options": {"attention_sparsity": {"plan": plan}}},
    }
    with torch.no_grad():
        reference = model(image)
        runs = {"eager": model}
        for label, kwargs in compiles.items():
            torch._dynamo.reset()
            runs[label] = torch.compile(model, **kwargs)
            err = (runs[label](image) - reference).abs().max().item()
            print(f"{label}: max abs error to eager {err:.2e}")
        times = alternated_rounds({label: (lambda r=run: r(image)) for label, run in runs.items()}, rounds, calls=1)
    for label, t in times.items():
        median, q1, q3 = paired_ratio(times["inductor"], t)
        ms = sorted(t)[len(t) // 2] * 1e3
        print(f"{label:13s} {ms:8.0f} ms   inductor / {label}: {median:.2f}x (quartiles {q1:.2f}-{q3:.2f})")


if __name__ == "__main__":
    main()
