"""The TVM target ("tvm-llvm"): groups become TVM PrimFuncs (via
`fusecc.codegen.tvm`), built by TVM's LLVM backend for this CPU, cached as
shared libraries, and called through DLPack (no copies of inputs).

Untuned TVM code is far slower than the generated C kernels, so this target
is never the default; it exists for TVM's portability and for tuning with
MetaSchedule.
"""

from __future__ import annotations

import time

import torch

from ..codegen import tvm as tvm_codegen
from ..errors import UnsupportedError
from ..graph.fused_group import FusedGroup
from ..kernels.lower import lower_group
from ..kernels.spec import KernelSpec
from ..runtime.cache import CompileCache
from . import Target
from .toolchain import cpu_flags, cpu_model

_TORCH_DTYPE = {"f32": torch.float32, "bf16": torch.bfloat16, "bool": torch.bool}


def llvm_target(num_cores: int | None = None):
    import tvm

    flags = cpu_flags()
    mcpu = "skylake-avx512" if "avx512f" in flags else ("haswell" if "avx2" in flags else "generic")
    return tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "num-cores": num_cores or torch.get_num_threads()})


def _flat_view(t: torch.Tensor) -> torch.Tensor:
    """The storage a strided tensor covers, as a flat tensor (no copy unless
    it starts off TVM's required 64-byte alignment, e.g. a slice)."""
    span = 1 + sum((s - 1) * st for s, st in zip(t.shape, t.stride())) if t.dim() else 1
    flat = t.as_strided((span,), (1,))
    return flat if flat.data_ptr() % 64 == 0 else flat.clone()


class TvmKernel(torch.nn.Module):
    def __init__(self, spec: KernelSpec, module, constants: dict[int, torch.Tensor], info: dict):
        super().__init__()
        import tvm

        self.spec, self.info = spec, info
        self._fn = module
        self._from_dlpack = tvm.runtime.from_dlpack
        self._consts = {i: _flat_view(t) for i, t in constants.items()}
        self._shapes = tvm_codegen.output_shapes(spec)

    def run(self, *args: torch.Tensor):
        spec = self.spec
        ins = []
        for i, o in enumerate(spec.operands):
            if o.constant:
                ins.append(self._consts[i])
                continue
            t = args[o.arg_index]
            if tuple(t.stride()) != o.strides and t.numel() > 1:
                t = torch.empty_strided(o.shape, o.strides, dtype=t.dtype).copy_(t)
            ins.append(_flat_view(t))
        compact = [torch.empty(s, dtype=_TORCH_DTYPE[o.dtype]) for s, o in zip(self._shapes, spec.outputs)]
        self._fn(*[self._from_dlpack(t) for t in ins + compact])
        outs = []
        for o, c in zip(spec.outputs, compact):
            strides = o.strides or tuple(torch.empty(o.shape, device="meta").stride())
            final = torch.empty_strided(o.shape, strides, dtype=c.dtype)
            if spec.kind == "reduction" and not o.per_row:
                final.as_strided(tuple(spec.space), o.space_strides).copy_(c)
            elif spec.kind == "gemm" and o.col_range is None:  # memory offsets over (batch, M, N)
                final.as_strided(tuple(c.shape), o.space_strides or tuple(c.stride())).copy_(c)
            elif spec.kind == "elementwise":
                final.as_strided(tuple(spec.space), c.stride()).copy_(c)
            else:
                final.copy_(c.view(o.shape) if c.numel() == final.numel() and spec.kind != "conv2d" else c)
            outs.append(final)
        return outs[0] if len(outs) == 1 else tuple(outs)

    forward = run


class TvmLlvmTarget(Target):
    name = "tvm-llvm"
    description = "TVM PrimFuncs built by TVM's LLVM backend for this CPU (untuned; never the default)"
    group_kinds = frozenset({"pointwise", "reduction", "gemm", "conv", "block"})  # no pooling kernels yet

    def compile_groups(self, items: list[tuple[FusedGroup, dict]], options) -> list:
        try:
            import tvm
        except ImportError as e:  # pragma: no cover - apache-tvm is a dependency
            return [UnsupportedError(f"target 'tvm-llvm' needs apache-tvm: {e}")] * len(items)
        target = llvm_target()
        cache = CompileCache(options.cache_dir)
        fingerprint = f"tvm {tvm.__version__} {target} {cpu_model()}"
        results = []
        for group, constants in items:
            try:
                spec = lower_group(group)
                func = tvm_codegen.primfunc(spec)
                script = func.script()

                def build(_source_path, output_path, func=func):
                    start = time.perf_counter()
                    tvm.compile(func, target=target).export_library(str(output_path))
                    return {
                        "command": f"tvm.compile(target={target})",
                        "seconds": round(time.perf_counter() - start, 4),
                    }

                path, cached, details = cache.get_or_build(script, fingerprint, build)
                module = tvm.runtime.load_module(str(path))
                by_operand = {i: constants[o.arg_index] for i, o in enumerate(spec.operands) if o.constant}
                info = {"symbol": "main", "params": {}, "cached": cached, "source": script, "spec": spec.describe(),
                        "dialect": "tvm-llvm", **details}  # fmt: skip
                results.append(TvmKernel(spec, module, by_operand, info))
            except Exception as e:  # noqa: BLE001 - that group's fallback
                results.append(e)
        return results
