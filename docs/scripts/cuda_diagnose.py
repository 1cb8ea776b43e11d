"""Where a model's cuda-target result departs from eager, kernel by kernel.

Compiles a zoo model (tiny) for the cuda target and, on every kernel call,
records the operands whose layout differs from the one the kernel was
compiled for, and the kernel's error against the same kernel run on the
CPU by the emulator with the very same inputs. A graph that fails to
compile is dumped (`--dump DIR`) for reading.

  python docs/scripts/cuda_diagnose.py MODEL [--dump DIR]
"""

import argparse

import torch

from fusecc.bench import zoo
from fusecc.codegen.cuda import emulate
from fusecc.targets import cuda as cuda_target


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", choices=list(zoo.ZOO))
    parser.add_argument("--dump", default=None)
    args = parser.parse_args()
    records = []
    launch = cuda_target.CudaKernel.launch

    def recording_launch(self, values):
        layouts = [(i, tuple(v.shape), tuple(v.stride()), o.strides) for i, (v, o) in enumerate(zip(values, self.spec.operands))
                   if cuda_target._layout(v.shape, v.stride()) != cuda_target._layout(o.shape, o.strides)]  # fmt: skip
        out = launch(self, values)
        gpu = out if isinstance(out, tuple) else (out,)
        emu = emulate.run(self.spec, self.source, [v.cpu() for v in values])
        emu = emu if isinstance(emu, tuple) else (emu,)
        err = max(((g.cpu() - e).abs().max() / e.abs().max().clamp_min(1)).item() for g, e in zip(gpu, emu))
        records.append((self.source.symbol, err, layouts))
        return out

    cuda_target.CudaKernel.launch = recording_launch
    entry = zoo.get(args.model)
    model, x = entry.model("tiny").cuda().eval(), entry.example_input("tiny", 2).cuda()
    options = {"target": "cuda", "fallback": "warn"}
    if args.dump:
        options["dump_dir"] = args.dump
    with torch.no_grad():
        ref = model(x)
        out = torch.compile(model, backend="fusecc", options=options)(x)
    print(f"{args.model}: model error {((out - ref).abs().max() / ref.abs().max().clamp_min(1)).item():.3g}")
    for symbol, err, layouts in records:
        print(f"  {symbol}: vs emulator {err:.2g}" + (f"; other layouts {layouts}" if layouts else ""))


if __name__ == "__main__":
    main()
