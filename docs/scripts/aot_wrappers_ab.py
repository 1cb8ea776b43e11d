"""What AOTAutograd's runtime wrappers cost a `torch.compile` call: a model
compiled with fusecc's direct inference path (the default, the graph called
by Dynamo itself) against the general path (`fusecc.backend._plain_inference`
patched to refuse every graph, so AOTAutograd wraps every call).

Each variant runs in its own process (two compiled copies of one model in
one process would share Dynamo's cache entries); each process alternates
calls of the compiled model with calls of the same model's exported
program and reports the median of (compiled - exported) per call, so a
machine that slows down during a process slows both. The processes of the
two variants alternate too.

    python docs/scripts/aot_wrappers_ab.py mobilenet_v2 300 4   # model (or "block"), calls, processes per variant
"""

import statistics
import subprocess
import sys
import time

import torch

import fusecc


def measure(name: str, variant: str, calls: int) -> float:
    from fusecc import backend
    from fusecc.bench import zoo
    from fusecc.bench.blocks import InvertedResidual, _randomize_bn

    torch.set_num_threads(2)
    if name == "block":  # issue 4's inverted residual 24 -> 144 -> 24 at 56x56
        model = _randomize_bn(InvertedResidual(24, 24, 6)).eval()
        x = torch.randn(1, 24, 56, 56).to(memory_format=torch.channels_last)
    else:
        entry = zoo.ZOO[name]
        model, x = entry.model("full"), entry.example_input("full", 1)
    if variant == "wrapped":
        backend._plain_inference = lambda *args: False
    with torch.no_grad():
        exported = fusecc.compile_exported(torch.export.export(model, (x,)))
        compiled = torch.compile(model, backend="fusecc")
        compiled(x)
        exported(x)
        over = []
        for _ in range(calls):
            start = time.perf_counter()
            compiled(x)
            mid = time.perf_counter()
            exported(x)
            over.append((mid - start) - (time.perf_counter() - mid))
    return statistics.median(over) * 1e6


def main() -> None:
    name, calls, processes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    results: dict[str, list[float]] = {"direct": [], "wrapped": []}
    for p in range(processes):
        for variant in ("direct", "wrapped") if p % 2 == 0 else ("wrapped", "direct"):
            out = subprocess.run(
                [sys.executable, __file__, "--one", name, variant, str(calls)], capture_output=True, text=True, check=True
            )
            results[variant].append(float(out.stdout.strip().splitlines()[-1]))
            print(f"{variant}: compiled - exported {results[variant][-1]:.1f} us", flush=True)
    for variant, values in results.items():
        print(f"{name} {variant}: median {statistics.median(values):.1f} us over the exported call ({values})")


if __name__ == "__main__":
    if sys.argv[1] == "--one":
        print(measure(sys.argv[2], sys.argv[3], int(sys.argv[4])))
    else:
        main()
