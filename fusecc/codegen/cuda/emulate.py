"""Run a rendered CUDA kernel on the CPU, for checking the CUDA renderer's
numerics on machines without a GPU.

The kernel's own source is compiled as host C++ under a small emulation
header: ``__shared__`` arrays become function statics (one thread block
runs at a time, so all its threads share them), and every CUDA thread of a
block is a coroutine (``ucontext``) with a stack of its own. ``__syncthreads``
yields to a scheduler that runs each thread of the block up to its next
barrier in turn, so no thread passes barrier k before all have reached it -
CUDA's semantics. A block whose threads disagree about a barrier (some
finish while others wait) is reported as an error, as it would hang or
corrupt a real GPU.

Slow (a context switch per thread per barrier) and not a performance
model; use small grids.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import subprocess
import tempfile
from pathlib import Path

import torch

from ...kernels.spec import TORCH_DTYPES, KernelSpec
from .common import CTYPE, CudaSource

_HEADER = r"""
#define FC_CUDA_EMULATION 1
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>
struct fc_dim3 { unsigned x, y, z; };
static fc_dim3 fc_grid, fc_block, fc_block_idx;
static fc_dim3* fc_thread_idx;
static int fc_cur;
static ucontext_t fc_sched;
static ucontext_t* fc_ctx;
#define gridDim fc_grid
#define blockDim fc_block
#define blockIdx fc_block_idx
#define threadIdx (fc_thread_idx[fc_cur])
#define __global__
#define __launch_bounds__(n)
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __constant__ static
#define __restrict__ __restrict
static inline void __syncthreads() { swapcontext(&fc_ctx[fc_cur], &fc_sched); }
static inline float __uint_as_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t __float_as_uint(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
"""

_DRIVER = r"""
static void** fc_args;
static unsigned char* fc_done;
static void fc_entry() {
  {call};
  fc_done[fc_cur] = 1;
}
extern "C" int fc_emulate(void** args, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz) {
  const int n = (int)(bx * by * bz);
  const size_t stack = 256 * 1024;
  fc_args = args;
  fc_grid = {gx, gy, gz};
  fc_block = {bx, by, bz};
  fc_ctx = (ucontext_t*)calloc(n, sizeof(ucontext_t));
  fc_thread_idx = (fc_dim3*)calloc(n, sizeof(fc_dim3));
  fc_done = (unsigned char*)calloc(n, 1);
  char* stacks = (char*)malloc(stack * n);
  int status = 0;
  for (int t = 0; t < n; ++t) fc_thread_idx[t] = {(unsigned)(t % bx), (unsigned)(t / bx % by), (unsigned)(t / (bx * by))};
  for (unsigned z = 0; z < gz && !status; ++z)
    for (unsigned y = 0; y < gy && !status; ++y)
      for (unsigned x = 0; x < gx && !status; ++x) {
        fc_block_idx = {x, y, z};
        for (int t = 0; t < n; ++t) {
          getcontext(&fc_ctx[t]);
          fc_ctx[t].uc_stack.ss_sp = stacks + (size_t)t * stack;
          fc_ctx[t].uc_stack.ss_size = stack;
          fc_ctx[t].uc_link = &fc_sched;
          makecontext(&fc_ctx[t], fc_entry, 0);
          fc_done[t] = 0;
        }
        for (;;) {  /* one round: every live thread runs to its next barrier or its end */
          int waiting = 0, finished = 0;
          for (int t = 0; t < n; ++t) {
            if (fc_done[t]) continue;
            fc_cur = t;
            swapcontext(&fc_sched, &fc_ctx[t]);
            if (fc_done[t]) ++finished; else ++waiting;
          }
          if (!waiting) break;
          if (finished) { status = 1; break; }  /* barrier divergence */
        }
      }
  free(stacks); free(fc_done); free(fc_thread_idx); free(fc_ctx);
  return status;
}
"""


def _call(spec: KernelSpec, symbol: str) -> str:
    args = [f"(const {CTYPE[o.dtype]}*)fc_args[{i}]" for i, o in enumerate(spec.operands)]
    base = len(spec.operands)
    args += [f"({CTYPE[o.dtype]}*)fc_args[{base + j}]" for j, o in enumerate(spec.outputs)]
    args.append(f"(char*)fc_args[{base + len(spec.outputs)}]")
    return f"{symbol}({', '.join(args)})"


def build(spec: KernelSpec, source: CudaSource, directory: str | None = None) -> Path:
    """The kernel and its driver as a host shared library (cached by source)."""
    text = _HEADER + source.text + _DRIVER.replace("{call}", _call(spec, source.symbol))
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    out_dir = Path(directory or tempfile.gettempdir()) / "fusecc-cuda-emulation"
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / f"{source.symbol}_{key}.so"
    if not lib.exists():
        # a private folder per build: the same kernel may be built by two threads at once
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".build-") as tmp:
            src, out = Path(tmp) / f"{source.symbol}.cpp", Path(tmp) / "out.so"
            src.write_text(text)
            cmd = ["g++", "-O1", "-std=c++17", "-shared", "-fPIC", "-w", str(src), "-o", str(out), "-lm"]
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
            if result.returncode != 0:
                raise RuntimeError(f"emulated CUDA kernel {source.symbol} did not compile:\n{result.stderr[-3000:]}")
            os.replace(out, lib)
    return lib


def launcher(spec: KernelSpec, source: CudaSource, directory: str | None = None):
    """``inputs -> outputs`` for the kernel: built (or found in the cache) and
    loaded once; ``inputs`` is one CPU tensor per spec operand, constants as
    the CUDA target passes them (not re-laid-out)."""
    if math.prod(source.block) > 1024:
        raise ValueError(f"{source.symbol}: {math.prod(source.block)} threads per block; CUDA allows 1024")
    fn = ctypes.CDLL(str(build(spec, source, directory))).fc_emulate
    fn.restype = ctypes.c_int
    (gx, gy, gz), (bx, by, bz) = source.grid, source.block

    def launch(inputs: list[torch.Tensor]):
        outs = [
            torch.empty_strided(o.shape, o.strides or torch.empty(o.shape, device="meta").stride(),
                                dtype=TORCH_DTYPES[o.dtype])
            for o in spec.outputs
        ]  # fmt: skip
        tensors = [t.contiguous() if t.dim() == 0 else t for t in inputs] + outs
        ptrs = (ctypes.c_void_p * (len(tensors) + 1))(*[t.data_ptr() for t in tensors], None)
        if fn(ptrs, gx, gy, gz, bx, by, bz):
            raise RuntimeError(f"{source.symbol}: threads of a block disagree about a __syncthreads barrier")
        return outs[0] if len(outs) == 1 else tuple(outs)

    return launch


def run(spec: KernelSpec, source: CudaSource, inputs: list[torch.Tensor], directory: str | None = None):
    """The kernel's outputs for ``inputs`` (see `launcher`), built and loaded for this one call."""
    return launcher(spec, source, directory)(inputs)
