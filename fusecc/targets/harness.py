"""Run one generated kernel as a standalone program - on another ISA.

The kernel's C file plus a small ``main`` that reads every argument buffer
from a file, calls the kernel and writes the outputs back. Built with any
`Toolchain` (the aarch64 cross compiler for NEON) and run through a runner
prefix (``qemu-aarch64 -cpu max``, or nothing for the host), so kernels
for a board are checked on exactly the inputs the host kernels see. The
same program shape is what an ahead-of-time bundle's runner grows from.
"""

from __future__ import annotations

import dataclasses
import subprocess
import tempfile
from pathlib import Path

import torch

from ..codegen.c import CSource
from ..kernels.spec import KernelSpec
from .toolchain import Toolchain

_TORCH_DTYPE = {"f32": torch.float32, "bf16": torch.bfloat16, "bool": torch.bool}


def storage_span(shape: tuple[int, ...], strides: tuple[int, ...] | None) -> int:
    """Elements a strided tensor's memory covers (1 + max offset)."""
    if strides is None:
        return max(1, int(torch.Size(shape).numel()))
    return 1 + sum((size - 1) * stride for size, stride in zip(shape, strides) if size > 0)


def _flat(t: torch.Tensor, strides: tuple[int, ...]) -> torch.Tensor:
    """``t`` copied into a flat buffer laid out with ``strides``."""
    flat = torch.zeros(storage_span(tuple(t.shape), strides), dtype=t.dtype)
    flat.as_strided(t.shape, strides).copy_(t)
    return flat


@dataclasses.dataclass
class StandaloneRun:
    outputs: list[torch.Tensor]
    build_command: str
    stdout: str


_MAIN = r"""
#include <stdio.h>
#include <stdlib.h>
static void* fc_read(const char* path, size_t bytes) {
  void* p = aligned_alloc(64, bytes < 64 ? 64 : (bytes + 63) / 64 * 64);
  FILE* f = fopen(path, "rb");
  if (!f || fread(p, 1, bytes, f) != bytes) { fprintf(stderr, "cannot read %s\n", path); exit(2); }
  fclose(f);
  return p;
}
static void fc_write(const char* path, const void* p, size_t bytes) {
  FILE* f = fopen(path, "wb");
  if (!f || fwrite(p, 1, bytes, f) != bytes) { fprintf(stderr, "cannot write %s\n", path); exit(2); }
  fclose(f);
}
int main(int argc, char** argv) {
  if (argc != @ARGC@) { fprintf(stderr, "usage: %s NTHREADS @USAGE@\n", argv[0]); return 2; }
  const int nthreads = atoi(argv[1]);
  void* args[@NARGS@];
@LOADS@
  @SYMBOL@(args, nthreads);
@STORES@
  printf("ok\n");
  return 0;
}
"""


def _element_size(dtype: str) -> int:
    return torch.tensor([], dtype=_TORCH_DTYPE[dtype]).element_size()


def program_source(spec: KernelSpec, source: CSource, workspace: int, operand_bytes: list[int]) -> str:
    """The kernel file plus a main() taking one file per operand and output.
    ``operand_bytes``: size of each operand's buffer (prepared constants may
    be laid out differently from the operand they came from)."""
    loads, stores, usage = [], [], []
    argi = 2
    for i, o in enumerate(spec.operands):
        loads.append(f"  args[{i}] = fc_read(argv[{argi}], {operand_bytes[i]});  /* {o.name} */")
        usage.append(f"IN_{o.name}")
        argi += 1
    nops = len(spec.operands)
    for j, o in enumerate(spec.outputs):
        nbytes = storage_span(o.shape, o.strides) * _element_size(o.dtype)
        loads.append(f"  args[{nops + j}] = calloc(1, {nbytes} + 64);  /* {o.name} */")
        stores.append(f"  fc_write(argv[{argi}], args[{nops + j}], {nbytes});")
        usage.append(f"OUT_{o.name}")
        argi += 1
    loads.append(
        f"  args[{nops + len(spec.outputs)}] = {'aligned_alloc(64, ' + str((workspace + 63) // 64 * 64) + ')' if workspace else 'NULL'};"
    )
    main = _MAIN
    for key, value in {
        "@ARGC@": argi,
        "@USAGE@": " ".join(usage),
        "@NARGS@": nops + len(spec.outputs) + 1,
        "@LOADS@": "\n".join(loads),
        "@STORES@": "\n".join(stores),
        "@SYMBOL@": source.symbol,
    }.items():
        main = main.replace(key, str(value))
    return source.text + main


def run_standalone(
    spec: KernelSpec,
    source: CSource,
    toolchain: Toolchain,
    operands: dict[int, torch.Tensor],
    workspace: int,
    runner: tuple[str, ...] = (),
    nthreads: int = 2,
    timeout: float = 600,
) -> StandaloneRun:
    """Build the kernel as a static program, run it on ``operands`` (runtime
    inputs and prepared constants, by operand index) and return its outputs."""
    with tempfile.TemporaryDirectory(prefix="fusecc-harness-") as tmp:
        tmp_path = Path(tmp)
        buffers = []
        for i, o in enumerate(spec.operands):
            value = operands[i]
            # constants are passed as prepared (their own layout), inputs with the compiled strides
            flat = _flat(value, tuple(value.stride()) if o.constant else o.strides)
            buffers.append(flat.view(torch.int16) if flat.dtype is torch.bfloat16 else flat)
        src = tmp_path / "kernel_main.c"
        src.write_text(program_source(spec, source, workspace, [b.numel() * b.element_size() for b in buffers]))
        exe = tmp_path / "kernel"
        build = toolchain.build(src, exe, shared=False, extra=("-static", "-lm"))
        argv = [*runner, str(exe), str(nthreads)]
        for i, flat in enumerate(buffers):
            path = tmp_path / f"in{i}.bin"
            flat.numpy().tofile(path)
            argv.append(str(path))
        out_paths = []
        for j in range(len(spec.outputs)):
            out_paths.append(tmp_path / f"out{j}.bin")
            argv.append(str(out_paths[-1]))
        run = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if run.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:3])} ... failed ({run.returncode}): {run.stderr[-2000:]}")
        outputs = []
        for o, path in zip(spec.outputs, out_paths):
            dtype = _TORCH_DTYPE[o.dtype]
            raw = torch.from_file(
                str(path),
                size=storage_span(o.shape, o.strides),
                dtype=dtype if dtype is not torch.bfloat16 else torch.int16,
            )
            if dtype is torch.bfloat16:
                raw = raw.view(torch.bfloat16)
            strides = o.strides or tuple(torch.empty(o.shape, device="meta").stride())
            outputs.append(raw.as_strided(o.shape, strides).clone())
        return StandaloneRun(outputs, build["command"], run.stdout)
