"""MobileNetV2 stage by stage: each stage of the zoo model (the stem, every
inverted residual, the last 1x1 layer) exported on its own, run by ONNX
Runtime and by fusecc (`compile_exported`, channels-last input as inside
the network), timed with the benchmark's interleaved blocks. ORT's
profiler inflates its per-node times (its per-conv sum exceeds its whole
model by about 40% here), so the stages are timed as whole sessions
instead. The two biases point opposite ways: each ORT stage pays its own
layout reorders, and each lone fusecc stage pays per-call costs that a
kernel inside the model does not (the exported program's Python wrapper,
about 40 us, and in a loop of calls the wake-up of torch's sleeping
OpenMP worker). The second dominates on the small late stages: block 7's
kernel runs about 360 us in the model and 462 us as a lone stage.

    python docs/scripts/stage_profile.py [timing seconds per stage]
"""

import sys
import warnings

import torch

from fusecc.bench import peers, zoo
from fusecc.bench.timing import interleaved


def stage_inputs(model: torch.nn.Module, x: torch.Tensor, stages: list) -> dict:
    """The input each stage sees in one eager forward pass."""
    seen = {}

    def hook(name):
        def record(module, args, output):
            seen.setdefault(name, args[0].detach().clone())  # returns None: the output stays

        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in stages]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return seen


def main() -> None:
    budget = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    warnings.filterwarnings("ignore")
    entry = zoo.get("mobilenet_v2")
    model, x = entry.model("full"), entry.example_input("full", 1)
    net = model.model.mobilenet_v2
    stages = [("stem", net.conv_stem)] + [(f"block {i}", b) for i, b in enumerate(net.layer)]
    stages.append(("last 1x1", net.conv_1x1))
    inputs = stage_inputs(model, x, stages)
    totals = {"ort": 0.0, "fusecc": 0.0}
    print(f"{'stage':10s} {'input':18s} {'ORT us':>8s} {'fusecc us':>9s} {'ORT/fusecc':>10s}")
    for name, module in stages:
        xi = inputs[name]
        ort_run, _ = peers.onnxruntime(module, xi)
        fcc_run, _ = peers.fusecc_export(module, xi.contiguous(memory_format=torch.channels_last))
        stats = interleaved({"ort": ort_run, "fusecc": fcc_run}, budget_s=budget)
        ort_ms, fcc_ms = stats["ort"].median_ms, stats["fusecc"].median_ms
        totals["ort"] += ort_ms
        totals["fusecc"] += fcc_ms
        shape = "x".join(map(str, xi.shape[1:]))
        print(f"{name:10s} {shape:18s} {ort_ms * 1e3:8.0f} {fcc_ms * 1e3:9.0f} {ort_ms / fcc_ms:10.2f}", flush=True)
    print(f"{'sum':29s} {totals['ort'] * 1e3:8.0f} {totals['fusecc'] * 1e3:9.0f} {totals['ort'] / totals['fusecc']:10.2f}")


if __name__ == "__main__":
    main()
