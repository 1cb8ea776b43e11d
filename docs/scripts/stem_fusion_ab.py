"""A zoo model exported twice - its stem fused into the block it feeds
(default) and left a convolution of its own (`block_fusion.FUSE_STEMS =
False`) - the whole call timed alternately, and each kernel inside the
model (unchained programs, a timer around each kernel call).

    python docs/scripts/stem_fusion_ab.py mobilenet_v2 800   # model, rounds
"""

import statistics
import sys
import time

import torch

import fusecc
from fusecc.bench import zoo
from fusecc.passes import block_fusion
from fusecc.runtime.kernel import kernel_nodes


def build(ep, fuse: bool, chain: bool):
    block_fusion.FUSE_STEMS = fuse
    try:
        return fusecc.compile_exported(ep, options={"chain_kernels": chain})
    finally:
        block_fusion.FUSE_STEMS = True


def timed_kernels(program, into: dict) -> None:
    for node in kernel_nodes(program.gm):
        fn = node.target
        times = into.setdefault(fn.__name__, [])

        def call(*args, fn=fn, times=times):
            start = time.perf_counter()
            out = fn(*args)
            times.append(time.perf_counter() - start)
            return out

        node.target = call
    program.gm.recompile()


def main() -> None:
    name, rounds = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(2)
    entry = zoo.get(name)
    model, x = entry.model("full").eval(), entry.example_input("full", 1)
    ep = torch.export.export(model, (x,))
    variants = {
        label: (build(ep, fuse, True), build(ep, fuse, False)) for label, fuse in (("fused", True), ("apart", False))
    }
    kernels = {label: {} for label in variants}
    with torch.no_grad():
        ref = model(x)
        for label, (chained, unchained) in variants.items():
            print(label, "max abs error", (chained(x) - ref).abs().max().item())
            timed_kernels(unchained, kernels[label])
        calls = {label: [] for label in variants}
        for _ in range(10):
            for chained, unchained in variants.values():
                chained(x), unchained(x)
        for times in kernels.values():
            for t in times.values():
                t.clear()
        for _ in range(rounds):
            for label, (chained, unchained) in variants.items():
                start = time.perf_counter()
                chained(x)
                calls[label].append(time.perf_counter() - start)
                unchained(x)

    def us(v):
        return statistics.median(v) * 1e6

    fused, apart = us(calls["fused"]), us(calls["apart"])
    print(f"{name}: whole call fused {fused:.0f} us, apart {apart:.0f} us, apart / fused {apart / fused:.3f}")
    for label, times in kernels.items():
        first = ", ".join(f"{k} {us(v):.0f}" for k, v in list(times.items())[:3])
        print(f"  {label}: {first}; all kernels {sum(us(v) for v in times.values()):.0f} us")


if __name__ == "__main__":
    main()
