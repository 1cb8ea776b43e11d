"""What a model's `torch.compile(backend="fusecc")` call would need to be
at least as fast as ONNX Runtime, in roofline terms (issue 4's per-model
bar; docs/benchmarks.md, session 22).

In one process, timed by the benchmark's interleaved blocks: ONNX Runtime,
fusecc through `torch.compile`, and the same program through
`fusecc.compile_exported`, which runs the same kernels without Dynamo.
Their difference is what the `torch.compile` entry point costs on top of
the kernels (guards, Dynamo's bytecode gathering every parameter, the
frozen-parameter check). The model's FLOPs are torch's own count
(`FlopCounterMode`, convolutions and matmuls) and the peak is this
machine's measured fp32 GEMM rate (`targets/roofline.machine_peaks`).

The kernels' budget is ORT's call minus that entry cost; the efficiency
it asks for is FLOPs / budget / peak. Printed next to it: what fusecc's
kernels and ORT's whole call achieve.

    python docs/scripts/call_roofline.py [model] [seconds]
"""

import sys
import warnings

import torch
from torch.utils.flop_counter import FlopCounterMode

from fusecc.bench import peers, zoo
from fusecc.bench.timing import interleaved
from fusecc.runtime.cache import CompileCache
from fusecc.targets import get as get_target
from fusecc.targets.roofline import machine_peaks


def model_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "mobilenet_v2"
    budget = float(sys.argv[2]) if len(sys.argv) > 2 else 40.0
    threads = 2
    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")
    entry = zoo.get(name)
    model, x = entry.model().eval(), entry.example_input()
    flops = model_flops(model, x)
    peak = machine_peaks(get_target("c").tuning_key(threads), CompileCache().root)["gflops"]

    with torch.no_grad():
        runners = {
            "onnxruntime": peers.onnxruntime(model, x)[0],
            "fusecc": peers.fusecc(model, x)[0],
            "fusecc_export": peers.fusecc_export(model, x)[0],
        }
        ms = {n: s.median_ms for n, s in interleaved(runners, budget_s=budget).items()}

    entry_cost = ms["fusecc"] - ms["fusecc_export"]
    kernel_budget = ms["onnxruntime"] - entry_cost

    def rate(ms_: float) -> str:
        gflops = flops / ms_ / 1e6
        return f"{gflops:6.1f} GFLOP/s = {gflops / peak:4.0%} of peak"

    print(f"{name}, batch 1, {threads} threads: {flops / 1e6:.0f} MFLOP; measured fp32 GEMM peak {peak:.0f} GFLOP/s")
    print(f"  the whole model at peak:               {flops / peak / 1e6:6.3f} ms")
    print(f"  ONNX Runtime call:                     {ms['onnxruntime']:6.3f} ms  ({rate(ms['onnxruntime'])})")
    print(f"  fusecc exported call (kernels):        {ms['fusecc_export']:6.3f} ms  ({rate(ms['fusecc_export'])})")
    print(f"  fusecc torch.compile call:             {ms['fusecc']:6.3f} ms  (ORT / fusecc {ms['onnxruntime'] / ms['fusecc']:.3f}x)")
    print(f"  torch.compile entry cost:              {entry_cost:6.3f} ms")
    if kernel_budget > 0:
        print(f"  kernels' budget to tie ORT:            {kernel_budget:6.3f} ms  ({rate(kernel_budget)})")
    else:
        print("  kernels' budget to tie ORT:            none: the entry cost alone exceeds ORT's call")


if __name__ == "__main__":
    main()
