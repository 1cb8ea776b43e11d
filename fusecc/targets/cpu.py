"""The host CPU target ("c"): groups become generated C kernels, built with
gcc for this machine's best dialect (AVX-512, AVX2, NEON or portable C),
cached on disk, and called in-process."""

from __future__ import annotations

import concurrent.futures
import os

import torch

from ..codegen import c as c_codegen
from ..codegen.c.dialects import DIALECTS
from ..graph.fused_group import FusedGroup
from ..kernels.lower import lower_group
from ..runtime.cache import CompileCache
from ..runtime.kernel import CompiledKernel, load_symbol
from ..errors import UnsupportedError
from . import Target
from .toolchain import Toolchain, cpu_model, host_dialect_and_flags


class HostCTarget(Target):
    name = "c"
    description = "generated C kernels for this CPU (AVX-512 / AVX2 / NEON / portable), OpenMP, gcc"

    def __init__(self, dialect: str | None = None, cache_dir: str | None = None):
        detected, flags = host_dialect_and_flags()
        self.dialect = DIALECTS[dialect or detected]
        self.toolchain = Toolchain(os.environ.get("CC", "gcc"), flags, machine=f"{cpu_model()} {self.dialect.name}")
        self._cache_dir = cache_dir

    def cache(self, cache_dir: str | None = None) -> CompileCache:
        return CompileCache(cache_dir or self._cache_dir)

    def compile_groups(self, items: list[tuple[FusedGroup, dict[int, torch.Tensor]]], options) -> list:
        """Lower, render and build every group (builds run in parallel)."""
        if not self.toolchain.available():
            error = UnsupportedError(
                f"target 'c' needs a C compiler: {self.toolchain.cc!r} was not found "
                "(install gcc, set CC, or use options={'target': 'aten'})"
            )
            return [error] * len(items)
        cache = self.cache(options.cache_dir)
        nthreads = torch.get_num_threads()
        chooser = self._parameter_chooser(options, cache, nthreads)
        prepared = []
        for group, constants in items:
            try:
                spec = lower_group(group)
                params, tuning = chooser(spec, constants)
                source = c_codegen.render(spec, self.dialect, params)
                prepared.append((group, constants, spec, source, tuning))
            except Exception as e:  # noqa: BLE001 - reported as this group's fallback
                prepared.append(e)

        def build(entry):
            if isinstance(entry, Exception):
                return entry
            group, constants, spec, source, tuning = entry
            try:
                kernel = self._build(spec, source, constants, cache, nthreads)
                if tuning:
                    kernel.info["tuning"] = tuning
                return kernel
            except Exception as e:  # noqa: BLE001
                return e

        workers = max(1, min(len(prepared), os.cpu_count() or 1))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            return list(pool.map(build, prepared))

    def _build(self, spec, source, constants: dict[int, torch.Tensor], cache: CompileCache, nthreads: int):
        """Compile (or fetch from the cache) one rendered kernel and load it."""
        path, cached, details = cache.get_or_build(source.text, self.toolchain.fingerprint(), self.toolchain.build)
        fn = load_symbol(path, source.symbol)
        by_operand = {i: constants[o.arg_index] for i, o in enumerate(spec.operands) if o.constant}
        consts = c_codegen.prepare(spec, source.params, by_operand)
        ws = c_codegen.workspace_bytes(spec, source.params, nthreads)
        info = {
            "symbol": source.symbol,
            "params": source.params,
            "cached": cached,
            "library": str(path),
            "source": source.text,
            "spec": spec.describe(),
            "dialect": self.dialect.name,
            **details,
        }
        return CompiledKernel(spec, fn, consts, ws, info, nthreads)

    def tuning_key(self, nthreads: int) -> str:
        """What a measurement depends on: CPU, dialect, compiler, threads."""
        return f"c|{self.toolchain.fingerprint()}|threads={nthreads}"

    def _parameter_chooser(self, options, cache: CompileCache, nthreads: int):
        """(spec, constants) -> (params, tuning record or None), per options.tune."""
        if options.tune == "off":
            return lambda spec, constants: (None, None)
        from ..tuner import KernelTuner, TuningDatabase, database_path
        from .tuning import random_runtime_args, tuning_progress

        tuner = KernelTuner(
            TuningDatabase(database_path(options.cache_dir)),
            self.tuning_key(nthreads),
            options.tune_trials,
            tuning_progress() if options.tune == "tune" else None,
        )

        def choose(spec, constants):
            default = c_codegen.default_params(spec, self.dialect)
            space = c_codegen.tunables(spec, self.dialect)

            def build(params):
                source = c_codegen.render(spec, self.dialect, params)
                kernel = self._build(spec, source, constants, cache, nthreads)
                args = random_runtime_args(spec, constants)
                return lambda: kernel.run(*args)

            try:
                return tuner.choose(spec.signature(), default, space, build, measure=options.tune == "tune")
            except Exception as e:  # noqa: BLE001 - tuning trouble (e.g. a locked database) keeps the defaults
                return default, {"source": "default", "error": f"{type(e).__name__}: {e}"[:300]}

        return choose
