"""fusecc quickstart: compile a real model with ``backend="fusecc"``, check
it against eager PyTorch, and time it against eager and TorchInductor.

    python examples/quickstart.py                  # ResNet-50, batch 1
    python examples/quickstart.py --model bert_base --batch 8

The model is built from a Hugging Face `transformers` config with random
weights (nothing is downloaded).
"""

from __future__ import annotations

import argparse
import time

import torch

from fusecc.bench import zoo
from fusecc.bench.harness import machine_info
from fusecc.bench.timing import interleaved

TOLERANCE = 1e-3  # max abs error relative to the output's magnitude, fp32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50", choices=list(zoo.ZOO))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--budget", type=float, default=6.0, help="seconds of timing")
    args = parser.parse_args()

    entry = zoo.get(args.model)
    model = entry.model("full")
    x = entry.example_input("full", args.batch)
    params = sum(p.numel() for p in model.parameters())
    print(f"model {args.model}: {params / 1e6:.1f}M parameters, input {tuple(x.shape)}")
    print(f"machine: {machine_info()}")

    compiled = torch.compile(model, backend="fusecc")
    with torch.no_grad():
        ref = model(x)
        start = time.perf_counter()
        out = compiled(x)
        fusecc_compile_s = time.perf_counter() - start
        error = ((out - ref).abs().max() / ref.abs().max()).item()
    print(f"fusecc compiled in {fusecc_compile_s:.1f} s; max error vs eager {error:.2e} (tolerance {TOLERANCE:g})")
    if not error <= TOLERANCE:
        raise SystemExit(f"fusecc output differs from eager: {error:.3g} > {TOLERANCE:g}")

    print("compiling with TorchInductor (torch.compile default) for comparison ...")
    inductor = torch.compile(model)
    with torch.no_grad():
        start = time.perf_counter()
        inductor(x)
        inductor_compile_s = time.perf_counter() - start

    def runner(fn):
        def run():
            with torch.no_grad():
                return fn(x)

        return run

    print(f"timing (interleaved, median, {args.budget:.0f} s budget) ...")
    stats = interleaved(
        {"eager": runner(model), "inductor": runner(inductor), "fusecc": runner(compiled)}, budget_s=args.budget
    )
    fusecc_ms = stats["fusecc"].median_ms
    print(f"\n{'':10}{'median ms':>12}{'vs fusecc':>12}{'compile s':>12}")
    for name, compile_s in (("eager", 0.0), ("inductor", inductor_compile_s), ("fusecc", fusecc_compile_s)):
        ms = stats[name].median_ms
        print(f"{name:10}{ms:12.2f}{ms / fusecc_ms:11.2f}x{compile_s:12.1f}")
    print(
        "\n(vs fusecc > 1 means fusecc is faster.) Next: `fusecc explain resnet50 --size full` shows the "
        "fused groups; options={'dump_dir': 'dump'} then `fusecc inspect dump` shows every pass."
    )


if __name__ == "__main__":
    main()
