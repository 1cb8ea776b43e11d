"""Each convolution of a zoo model in ONNX Runtime (its profiler's per-node
kernel time) beside the same layer's fusecc kernel (in the model and hot,
`call_breakdown.kernel_times`), largest fusecc deficit first. ResNet only:
layers are paired by position, with each stage's shortcut moved first as
fusecc runs it.

    python docs/scripts/ort_layer_profile.py [resnet50|resnet18] [calls]
"""

import collections
import json
import os
import statistics
import sys
import tempfile

import onnx
import onnxruntime as ort
import torch

import fusecc
from fusecc.bench import zoo
from fusecc.bench.call_breakdown import kernel_times

STAGES = {"resnet50": ((3, 4, 6, 3), 3), "resnet18": ((2, 2, 2, 2), 2)}  # blocks per stage, convs per block


def ort_conv_times(model, x, calls: int) -> list[tuple[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        with torch.no_grad():
            torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17, input_names=["x"])
        proto = onnx.load(path)
        proto.ir_version = min(proto.ir_version, 10)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = torch.get_num_threads(), 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.enable_profiling, opts.profile_file_prefix = True, os.path.join(tmp, "profile")
        session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        for _ in range(calls):
            session.run(None, {"x": x.numpy()})
        with open(session.end_profiling()) as fh:
            events = json.load(fh)
    times, shapes = collections.defaultdict(list), {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["args"].get("op_name") == "Conv":
            shapes.setdefault(e["name"], e["args"]["input_type_shape"])
            times[e["name"]].append(e["dur"])
    return [(_shape(shapes[n]), statistics.median(t)) for n, t in times.items()]


def _shape(inputs: list[dict]) -> str:
    """'1x64x56x56 256x64x1x1': the input's and the weight's shapes."""
    return " ".join("x".join(map(str, next(iter(d.values())))) for d in inputs[:2])


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "resnet50"
    calls = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    entry = zoo.ZOO[name]
    model, x = entry.model("full"), entry.example_input("full", 1)
    ort_rows = ort_conv_times(model, x, calls)
    with torch.no_grad():
        exported = fusecc.compile_exported(torch.export.export(model, (x,)))
    ours = [r for r in kernel_times(exported, x, calls) if r["kind"] == "conv2d"]
    blocks, per_block = STAGES[name]
    ordered, i = [ort_rows[0]], 1
    for count in blocks:
        first = ort_rows[i : i + per_block + 1]  # the first block's shortcut runs after its middle in ORT
        ordered += [first[-2], *first[:-2], first[-1]] if per_block == 3 else [first[-1], *first[:-1]]
        i += per_block + 1
        ordered += ort_rows[i : i + per_block * (count - 1)]
        i += per_block * (count - 1)
    rows = sorted(zip(ordered, ours), key=lambda r: r[0][1] - r[1]["in_model_us"])
    print(f"{'fusecc - ORT':>12}  {'layer (input, weight)':28s} {'ORT':>6} {'fusecc':>6} {'hot':>6}  kernel")
    for (shape, us), r in rows:
        print(
            f"{r['in_model_us'] - us:+12.0f}  {shape:28s} {us:6.0f} {r['in_model_us']:6.0f} {r['hot_us']:6.0f}  {r['kernel']}"
        )
    print(
        f"all convolutions: ORT {sum(u for (_, u), _ in rows):.0f} us, fusecc {sum(r['in_model_us'] for _, r in rows):.0f} us"
    )


if __name__ == "__main__":
    main()
