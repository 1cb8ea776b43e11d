"""The CUDA target ("cuda"): groups become CUDA C kernels, built with nvcc
into fat binaries for sm_80 and sm_90 (plus PTX), cached like the C
kernels, loaded with the CUDA driver API and launched on PyTorch's current
stream. "cuda-emulated" takes the same path but runs every kernel on the
CPU under the emulator (`codegen.cuda.emulate`), so the whole target is
checked against eager where there is no GPU."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import shutil

import torch

from ..codegen.cuda import CudaSource, emulate, render
from ..errors import KeepUnfused, UnsupportedError
from ..graph.fused_group import FusedGroup
from ..kernels.lower import lower_group
from ..kernels.spec import KernelSpec
from ..runtime.cache import CompileCache
from . import Target
from .toolchain import Toolchain

ARCHS = ("80", "90")


def nvcc_toolchain(archs: tuple[str, ...] = ARCHS, output: str = "-fatbin") -> Toolchain:
    nvcc = os.environ.get("NVCC") or shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    gencode = []
    for arch in archs:
        gencode += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    gencode += ["-gencode", f"arch=compute_{archs[-1]},code=compute_{archs[-1]}"]  # PTX for newer GPUs
    return Toolchain(nvcc, ("-O3", "-std=c++17", *gencode, output), machine="cuda " + ",".join(archs))


def build_cuda(toolchain: Toolchain, source_path, output_path) -> dict:
    """nvcc wants .cu: copy the cache's .c source aside and compile that."""
    cu = source_path.with_suffix(".cu")
    cu.write_text(source_path.read_text())
    return toolchain.build(cu, output_path, shared=False)


@functools.lru_cache(maxsize=1)
def _driver():
    name = ctypes.util.find_library("cuda") or "libcuda.so.1"
    lib = ctypes.CDLL(name)
    lib.cuModuleLoadData.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p]
    lib.cuModuleGetFunction.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p, ctypes.c_char_p]
    lib.cuLaunchKernel.argtypes = [
        ctypes.c_void_p, *[ctypes.c_uint] * 6, ctypes.c_uint, ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p,
    ]  # fmt: skip
    return lib


def _check(result: int, what: str) -> None:
    if result != 0:
        raise RuntimeError(f"CUDA driver call {what} failed with error {result}")


class CudaKernel(torch.nn.Module):
    """A loaded CUDA kernel; arguments are CUDA tensors."""

    def __init__(self, spec: KernelSpec, source: CudaSource, binary: bytes, prepared: dict, info: dict):
        super().__init__()
        self.spec, self.source, self.info = spec, source, info
        torch.cuda.init()
        lib = _driver()
        self._binary = ctypes.create_string_buffer(binary)
        module, fn = ctypes.c_void_p(), ctypes.c_void_p()
        _check(lib.cuModuleLoadData(ctypes.byref(module), self._binary), "cuModuleLoadData")
        _check(lib.cuModuleGetFunction(ctypes.byref(fn), module, source.symbol.encode()), "cuModuleGetFunction")
        self._module, self._fn = module, fn
        self._consts = {i: t.cuda() for i, t in prepared.items()}
        self._dtypes = {"f32": torch.float32, "bf16": torch.bfloat16, "bool": torch.bool}

    def run(self, *args: torch.Tensor):
        ops = self.spec.operands
        values = [self._consts[i] if o.constant else args[o.arg_index] for i, o in enumerate(ops)]
        outs = [
            torch.empty_strided(o.shape, o.strides or torch.empty(o.shape, device="meta").stride(),
                                dtype=self._dtypes[o.dtype], device=values[0].device)
            for o in self.spec.outputs
        ]  # fmt: skip
        holders = [ctypes.c_void_p(t.data_ptr()) for t in values + outs] + [ctypes.c_void_p(0)]
        params = (ctypes.c_void_p * len(holders))(*[ctypes.addressof(h) for h in holders])
        stream = torch.cuda.current_stream().cuda_stream
        (gx, gy, gz), (bx, by, bz) = self.source.grid, self.source.block
        _check(_driver().cuLaunchKernel(self._fn, gx, gy, gz, bx, by, bz, 0, stream, params, None), "cuLaunchKernel")
        return outs[0] if len(outs) == 1 else tuple(outs)

    forward = run


class CudaTarget(Target):
    name = "cuda"
    description = "generated CUDA kernels (nvcc, sm_80/sm_90 + PTX), launched on the current stream"
    group_kinds = frozenset({"pointwise", "reduction", "gemm", "conv", "block", "attention"})  # no pooling yet
    sparse_attention = True

    def __init__(self):
        self.toolchain = nvcc_toolchain()

    def unavailable(self) -> str | None:
        """Why this target cannot compile here, or None."""
        if not torch.cuda.is_available():
            return "target 'cuda' needs a CUDA device; none is available"
        if not self.toolchain.available():
            return f"target 'cuda' needs nvcc ({self.toolchain.cc} not found)"
        return None

    def compile_groups(self, items: list[tuple[FusedGroup, dict]], options) -> list:
        if (why := self.unavailable()) is not None:
            return [UnsupportedError(why)] * len(items)
        cache = CompileCache(options.cache_dir)
        results = []
        for group, constants in items:
            try:
                spec = lower_group(group)
                source = render(spec)
                by_operand = {i: constants[o.arg_index] for i, o in enumerate(spec.operands) if o.constant}
                results.append(self._load(spec, source, by_operand, cache))
            except NotImplementedError as e:
                # a block pattern with no CUDA kernel: its layers are compiled instead
                results.append(KeepUnfused(str(e)) if group.kind == "block" else e)
            except Exception as e:  # noqa: BLE001 - that group's fallback
                results.append(e)
        return results

    def _load(self, spec: KernelSpec, source: CudaSource, constants: dict, cache: CompileCache) -> torch.nn.Module:
        path, cached, details = cache.get_or_build(
            source.text, self.toolchain.fingerprint(), functools.partial(build_cuda, self.toolchain)
        )
        return CudaKernel(spec, source, path.read_bytes(), constants, _info(spec, source, "cuda", cached, details))


def _info(spec: KernelSpec, source: CudaSource, dialect: str, cached: bool, details: dict) -> dict:
    """What the report records of a CUDA kernel."""
    return {"symbol": source.symbol, "params": source.params, "cached": cached, "source": source.text,
            "spec": spec.describe(), "dialect": dialect, **details}  # fmt: skip


class EmulatedCudaKernel(torch.nn.Module):
    """A rendered CUDA kernel run on the CPU by `codegen.cuda.emulate`; called
    like `CudaKernel`, with CPU tensors."""

    def __init__(self, spec: KernelSpec, source: CudaSource, constants: dict, info: dict, directory: str):
        super().__init__()
        self.spec, self.source, self.info, self._consts = spec, source, info, constants
        # built and loaded now: a kernel that does not compile is that group's compile error
        self._launch = emulate.launcher(spec, source, directory)

    def run(self, *args: torch.Tensor):
        return self._launch(
            [self._consts[i] if o.constant else args[o.arg_index] for i, o in enumerate(self.spec.operands)]
        )

    forward = run


class EmulatedCudaTarget(CudaTarget):
    """The cuda target's whole path - lowering, the CUDA renderer, block
    unfusing, constants, output layouts - with each kernel run on the CPU by
    the emulator instead of a GPU: slow, for checking CUDA numerics on
    machines without one."""

    name = "cuda-emulated"
    description = "the cuda target's kernels run on the CPU by an emulator (slow; checks numerics without a GPU)"

    def unavailable(self) -> str | None:
        return None

    def _load(self, spec: KernelSpec, source: CudaSource, constants: dict, cache: CompileCache) -> torch.nn.Module:
        info = _info(spec, source, "cuda-emulated", False, {})
        return EmulatedCudaKernel(spec, source, constants, info, str(cache.root / "cuda-emulated"))
