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
import statistics

import torch

from ..codegen.cuda import CudaSource, emulate, render
from ..errors import KeepUnfused, UnsupportedError, UseLibrary
from ..graph.fused_group import FusedGroup, runnable_as_aten
from ..kernels.lower import lower_group
from ..kernels.spec import TORCH_DTYPES, KernelSpec
from ..runtime.cache import CompileCache
from . import Target
from .toolchain import Toolchain, build_in_parallel
from .tuning import group_call_args

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
    ptr = ctypes.POINTER(ctypes.c_void_p)
    lib.cuModuleLoadData.argtypes = [ptr, ctypes.c_void_p]
    lib.cuModuleGetFunction.argtypes = [ptr, ctypes.c_void_p, ctypes.c_char_p]
    lib.cuLaunchKernel.argtypes = [
        ctypes.c_void_p, *[ctypes.c_uint] * 6, ctypes.c_uint, ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p,
    ]  # fmt: skip
    lib.cuGetErrorName.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
    lib.cuCtxGetCurrent.argtypes = [ptr]
    lib.cuDeviceGet.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    lib.cuDevicePrimaryCtxRetain.argtypes = [ptr, ctypes.c_int]
    lib.cuCtxSetCurrent.argtypes = [ctypes.c_void_p]
    return lib


CUDA_ERROR_INVALID_CONTEXT = 201


def _check(result: int, what: str) -> None:
    if result != 0:
        name = ctypes.c_char_p()
        _driver().cuGetErrorName(result, ctypes.byref(name))
        raise RuntimeError(f"CUDA driver call {what} failed: {(name.value or b'?').decode()} ({result})")


def _make_context_current(device: int) -> None:
    """Make ``device``'s primary context (the one PyTorch uses) current on
    this thread. The driver API needs a current context, and PyTorch makes
    it current only on threads that have made runtime calls: a kernel loaded
    or launched from another thread would find none."""
    lib = _driver()
    ctx = ctypes.c_void_p()
    _check(lib.cuCtxGetCurrent(ctypes.byref(ctx)), "cuCtxGetCurrent")
    if ctx.value:
        return
    handle = ctypes.c_int()
    _check(lib.cuDeviceGet(ctypes.byref(handle), device), "cuDeviceGet")
    _check(lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), handle), "cuDevicePrimaryCtxRetain")
    _check(lib.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")


def events_ms(fn, calls: int) -> float:
    """Milliseconds per call of ``calls`` back-to-back calls of ``fn`` on
    the current stream, timed by CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / calls


def _layout(shape, strides) -> tuple[int, ...]:
    """Strides that matter: those of dims longer than one."""
    return tuple(st for size, st in zip(shape, strides) if size != 1)


class CudaKernel(torch.nn.Module):
    """A loaded CUDA kernel; arguments are CUDA tensors."""

    def __init__(self, spec: KernelSpec, source: CudaSource, binary: bytes, prepared: dict, info: dict):
        super().__init__()
        self.spec, self.source, self.info = spec, source, info
        torch.cuda.init()
        self._device = torch.cuda.current_device()
        _make_context_current(self._device)
        lib = _driver()
        self._binary = ctypes.create_string_buffer(binary)
        module, fn = ctypes.c_void_p(), ctypes.c_void_p()
        _check(lib.cuModuleLoadData(ctypes.byref(module), self._binary), "cuModuleLoadData")
        _check(lib.cuModuleGetFunction(ctypes.byref(fn), module, source.symbol.encode()), "cuModuleGetFunction")
        self._module, self._fn = module, fn
        self._consts = {i: t.to(f"cuda:{self._device}") for i, t in prepared.items()}
        self._layouts = [_layout(o.shape, o.strides) for o in spec.operands]
        self.relayouts = 0  # inputs that arrived in another layout than compiled for

    def run(self, *args: torch.Tensor):
        ops = self.spec.operands
        return self.launch([self._consts[i] if o.constant else args[o.arg_index] for i, o in enumerate(ops)])

    forward = run

    def launch(self, values: list[torch.Tensor]):
        """Run on one CUDA tensor per operand (constants included) on the
        current stream; returns the new outputs."""
        values = list(values)
        for i, v in enumerate(values):
            if v.device.type != "cuda":
                raise ValueError(f"{self.source.symbol}: an operand is on {v.device}; the cuda target needs CUDA tensors")
            if _layout(v.shape, v.stride()) != self._layouts[i]:
                # the kernel indexes with the strides the graph's metadata
                # promised; a GPU op that returned another layout gets copied
                operand = self.spec.operands[i]
                values[i] = torch.empty_strided(operand.shape, operand.strides, dtype=v.dtype, device=v.device)
                values[i].copy_(v)
                self.relayouts += 1
        outs = [
            torch.empty_strided(o.shape, o.strides or torch.empty(o.shape, device="meta").stride(),
                                dtype=TORCH_DTYPES[o.dtype], device=values[0].device)
            for o in self.spec.outputs
        ]  # fmt: skip
        holders = [ctypes.c_void_p(t.data_ptr()) for t in values + outs] + [ctypes.c_void_p(0)]
        params = (ctypes.c_void_p * len(holders))(*[ctypes.addressof(h) for h in holders])
        stream = torch.cuda.current_stream().cuda_stream
        (gx, gy, gz), (bx, by, bz) = self.source.grid, self.source.block
        lib = _driver()
        result = lib.cuLaunchKernel(self._fn, gx, gy, gz, bx, by, bz, 0, stream, params, None)
        if result == CUDA_ERROR_INVALID_CONTEXT:  # a thread that has not touched CUDA yet
            _make_context_current(self._device)
            result = lib.cuLaunchKernel(self._fn, gx, gy, gz, bx, by, bz, 0, stream, params, None)
        _check(result, f"cuLaunchKernel({self.source.symbol}, grid {self.source.grid}, block {self.source.block})")
        return outs[0] if len(outs) == 1 else tuple(outs)


def run_on_gpu(spec: KernelSpec, source: CudaSource, inputs: list[torch.Tensor], cache_dir: str | None = None):
    """The kernel's outputs (on the CPU) for ``inputs``, one tensor per spec
    operand: built with nvcc (or found in the cache), loaded and launched
    once on the current CUDA device. `emulate.run`'s counterpart on a GPU."""
    binary = CudaTarget().build(spec, source, CompileCache(cache_dir))
    kernel = CudaKernel(spec, source, binary[0], {}, {})
    out = kernel.launch([t.cuda() for t in inputs])
    torch.cuda.synchronize()
    return tuple(o.cpu() for o in out) if isinstance(out, tuple) else out.cpu()


# Block patterns run as one kernel by default. Measured on an H100 (fp32,
# docs/benchmarks.md, session 19): the memory-bound inverted residual won
# (24-144-24 @56: 2.07x eager at batch 1, 1.00x at 8), while the block
# kernels with dense 3x3 or 7x7 layers lost 7-130x to their own layers run
# one by one; those stay unfused until a CUDA tuner can say otherwise. Stem
# blocks (session 23) have not been timed on a GPU yet: unfused too.
FUSED_BY_DEFAULT = frozenset({"inverted_residual"})


class CudaTarget(Target):
    name = "cuda"
    description = "generated CUDA kernels (nvcc, sm_80/sm_90 + PTX), launched on the current stream"
    group_kinds = frozenset({"pointwise", "reduction", "gemm", "conv", "block", "attention"})  # no pooling yet
    sparse_attention = True
    fused_blocks: frozenset[str] | None = FUSED_BY_DEFAULT  # None: every pattern
    weighs_against_library = True  # options.library_check applies

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
        """Lower and render every group, build them with nvcc in parallel,
        then load them on this thread (the one holding PyTorch's context)."""
        if (why := self.unavailable()) is not None:
            return [UnsupportedError(why)] * len(items)
        cache = CompileCache(options.cache_dir)
        rendered = []
        for group, constants in items:
            try:
                spec = lower_group(group)
                pattern = spec.attrs.get("pattern")
                if spec.kind == "block" and self.fused_blocks is not None and pattern not in self.fused_blocks:
                    raise KeepUnfused(f"{pattern} blocks run as their layers on CUDA (FUSED_BY_DEFAULT: only the "
                                      "patterns measured faster as one kernel on a GPU run fused)")
                source = render(spec)
                by_operand = {i: constants[o.arg_index] for i, o in enumerate(spec.operands) if o.constant}
                rendered.append((spec, source, by_operand))
            except NotImplementedError as e:
                # a block pattern with no CUDA kernel: its layers are compiled instead
                rendered.append(KeepUnfused(str(e)) if group.kind == "block" else e)
            except Exception as e:  # noqa: BLE001 - that group's fallback
                rendered.append(e)
        built = build_in_parallel(lambda entry: self.build(entry[0], entry[1], cache), rendered)
        results = []
        for (group, constants), entry, binary in zip(items, rendered, built):
            if isinstance(binary, Exception):
                results.append(binary)
                continue
            try:
                kernel = self._load(*entry, binary, cache)
                weigh = options.library_check and self.weighs_against_library
                results.append(self._weigh(group, constants, kernel) if weigh else kernel)
            except Exception as e:  # noqa: BLE001 - that group's fallback
                results.append(e)
        return results

    def _weigh(self, group: FusedGroup, constants: dict, kernel) -> object:
        """The kernel, or - where PyTorch's own kernels for the group (its
        ATen ops: cuDNN, cuBLAS) measure faster on this GPU - the reason to
        run those instead (a block: its layers, each weighed in turn)."""
        try:
            args = [a.to(self.device()) for a in group_call_args(kernel.spec, constants)]
            aten = runnable_as_aten(group)
            with torch.no_grad():
                ours, theirs = self.time_us(lambda: kernel.run(*args)), self.time_us(lambda: aten(*args))
        except Exception as e:  # noqa: BLE001 - nothing to weigh against: keep the kernel
            kernel.info["library_check"] = {"error": f"{type(e).__name__}: {e}"[:300]}
            return kernel
        kernel.info["library_check"] = {"kernel_us": round(ours, 2), "aten_us": round(theirs, 2)}
        if theirs * LIBRARY_MARGIN < ours:
            reason = f"PyTorch's own kernels measured faster on this GPU: {theirs:.1f} us against {ours:.1f} us"
            return KeepUnfused(reason) if kernel.spec.kind == "block" else UseLibrary(reason)
        return kernel

    def device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device())

    def time_us(self, fn) -> float:
        """Median microseconds of ``fn`` on the current stream (CUDA events;
        calls per sample sized to about a millisecond)."""
        fn()
        calls = max(1, min(50, int(1.0 / max(events_ms(fn, 1), 1e-3))))
        return statistics.median(events_ms(fn, calls) * 1000.0 for _ in range(5))

    def build(self, spec: KernelSpec, source: CudaSource, cache: CompileCache) -> tuple[bytes, bool, dict]:
        """The kernel's fat binary (built or from the cache), whether it was
        cached, and how it was built."""
        path, cached, details = cache.get_or_build(
            source.text, self.toolchain.fingerprint(), functools.partial(build_cuda, self.toolchain)
        )
        return path.read_bytes(), cached, details

    def _load(self, spec: KernelSpec, source: CudaSource, constants: dict, built, cache) -> torch.nn.Module:
        binary, cached, details = built
        return CudaKernel(spec, source, binary, constants, _info(spec, source, "cuda", cached, details))


# PyTorch's kernels replace a generated one only when clearly faster: timing
# noise must not flip the choice from compile to compile
LIBRARY_MARGIN = 1.1


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
    fused_blocks = None  # numerics of every kernel the renderer makes, not speed
    weighs_against_library = False  # the emulator's times mean nothing

    def unavailable(self) -> str | None:
        return None

    def build(self, spec: KernelSpec, source: CudaSource, cache: CompileCache):
        """The kernel as a host library for the emulator (built in parallel
        with the graph's others; loading finds it in the same folder)."""
        return emulate.build(spec, source, str(cache.root / "cuda-emulated"))

    def _load(self, spec: KernelSpec, source: CudaSource, constants: dict, built, cache) -> torch.nn.Module:
        info = _info(spec, source, "cuda-emulated", False, {})
        return EmulatedCudaKernel(spec, source, constants, info, str(cache.root / "cuda-emulated"))
