"""The host CPU target ("c"): groups become generated C kernels, built with
gcc for this machine's best dialect (AVX-512, AVX2, NEON or portable C),
cached on disk, and called in-process."""

from __future__ import annotations

import os

import torch

from ..codegen import c as c_codegen
from ..codegen.c.dialects import DIALECTS
from ..graph.fused_group import FusedGroup
from ..kernels.lower import lower_group
from ..runtime.cache import CompileCache
from ..runtime.kernel import CompiledKernel, load_symbol
from ..runtime.memory import move_constants
from ..errors import KeepUnfused, UnsupportedError, UseLibrary
from ..tuner.database import canonical
from . import Target
from .evict import evictor
from .toolchain import Toolchain, build_in_parallel, cpu_model, host_dialect_and_flags


class HostCTarget(Target):
    name = "c"
    description = "generated C kernels for this CPU (AVX-512 / AVX2 / NEON / portable), OpenMP, gcc"
    sparse_attention = True
    pooled_convolutions = True

    def __init__(self, dialect: str | None = None, cache_dir: str | None = None):
        detected, flags = host_dialect_and_flags()
        self.dialect = DIALECTS[dialect or detected]
        self.toolchain = Toolchain(os.environ.get("CC", "gcc"), flags, machine=f"{cpu_model()} {self.dialect.name}")
        self._cache_dir = cache_dir

    def cache(self, cache_dir: str | None = None) -> CompileCache:
        return CompileCache(cache_dir or self._cache_dir)

    def chain_launcher(self, options):
        from ..runtime.chain import launcher

        return launcher(self.toolchain, self.cache(options.cache_dir)) if self.toolchain.available() else None

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
                params, tuning = chooser(group, spec, constants)
                # no measurement decided: the block or its layers were never timed
                if spec.kind == "block" and ("layers_us" not in (tuning or {}) or "best_us" not in tuning):
                    reason = c_codegen.block.unfused_by_default(spec, self.dialect)
                    if reason:
                        raise KeepUnfused(f"untuned, {reason}")
                source = c_codegen.render(spec, self.dialect, params)
                prepared.append((group, constants, spec, source, tuning))
            except Exception as e:  # noqa: BLE001 - reported as this group's fallback
                prepared.append(e)

        def build(entry):
            group, constants, spec, source, tuning = entry
            kernel = self._build(spec, source, constants, cache, nthreads)
            if tuning:
                kernel.info["tuning"] = tuning
            return kernel

        built = build_in_parallel(build, prepared)
        move_constants([k for k in built if isinstance(k, CompiledKernel)])
        if options.profile:
            self._profile(prepared, built, cache, nthreads)
        return built

    def _profile(self, prepared: list, built: list, cache: CompileCache, nthreads: int) -> None:
        """Time each kernel alone (one at a time: measurements must not
        overlap) and record its roofline numbers; a block is also compared
        with its layers compiled as separate kernels."""
        from ..tuner.measure import median_us
        from .roofline import efficiency, machine_peaks
        from .tuning import random_runtime_args

        peaks = machine_peaks(self.tuning_key(nthreads), cache.root)

        def timed(spec, kernel, constants) -> dict:
            args = random_runtime_args(spec, constants)
            return efficiency(spec, median_us(lambda: kernel.run(*args)), peaks, kernel.info.get("params"))

        for entry, kernel in zip(prepared, built):
            if isinstance(entry, Exception) or isinstance(kernel, Exception):
                continue
            group, constants, spec, _source, _tuning = entry
            profile = {**timed(spec, kernel, constants), "peaks": peaks}
            layers = [
                {"group": name, **timed(layer_spec, layer_kernel, layer_constants)}
                for name, layer_spec, layer_kernel, layer_constants in self._layer_kernels(
                    group, constants, cache, nthreads
                )
            ]
            if layers:
                profile["layers"] = layers
                profile["unfused_us"] = sum(layer["time_us"] for layer in layers)
            kernel.info["profile"] = profile

    def _layer_kernels(self, group, constants, cache: CompileCache, nthreads: int, params_of=None) -> list:
        """A block's layers as kernels of their own: (name, spec, kernel,
        constants by the layer's argument index) each; ``params_of(spec)``
        picks their parameters (default: the renderer's defaults)."""
        from ..graph.fused_group import nested_groups

        block_index = {ph: i for i, ph in enumerate(group.graph.find_nodes(op="placeholder"))}
        out = []
        for call, layer_group in nested_groups(group):
            layer_constants = {
                i: constants[block_index[a]] for i, a in enumerate(call.args) if block_index.get(a) in constants
            }
            spec = lower_group(layer_group)
            params = params_of(spec, layer_constants) if params_of else None
            source = c_codegen.render(spec, self.dialect, params)
            kernel = self._build(spec, source, layer_constants, cache, nthreads)
            out.append((layer_group.group_name, spec, kernel, layer_constants))
        return out

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

    def tuner_key(self, nthreads: int) -> str:
        """The tuning database's target: candidates are timed with their
        weights evicted from the caches (`evict.py`), so records timed hot
        by earlier versions are not mixed in; and records of kernels that
        another version of the renderer generated are not replayed."""
        return self.tuning_key(nthreads) + f"|weights=cold|renderer={c_codegen.source_fingerprint()}"

    def _parameter_chooser(self, options, cache: CompileCache, nthreads: int):
        """(spec, constants) -> (params, tuning record or None), per options.tune."""
        if options.tune == "off":
            return lambda group, spec, constants: (None, None)
        from ..tuner import KernelTuner, TuningDatabase, database_path
        from ..tuner.features import kernel_features
        from .tuning import TuningProgress, random_runtime_args

        tuner = KernelTuner(
            TuningDatabase(database_path(options.cache_dir)),
            self.tuner_key(nthreads),
            options.tune_trials,
            TuningProgress() if options.tune == "tune" else None,
        )

        measure = options.tune == "tune"
        evict = evictor(self.toolchain, cache) if measure else None

        def cold(call, tensors):
            """``call`` timed as in a model: ``tensors`` (weights) evicted before each run."""
            tensors = list(tensors)
            call.prepare = lambda: evict(tensors)
            return call

        def kernel_call(spec, constants, params):
            """One run of the kernel rendered with ``params``, timed as in a model."""
            source = c_codegen.render(spec, self.dialect, params)
            kernel = self._build(spec, source, constants, cache, nthreads)
            args = random_runtime_args(spec, constants)
            return cold(lambda: kernel.run(*args), kernel.constants())

        def params_of(spec, constants):
            default = c_codegen.default_params(spec, self.dialect)
            space = c_codegen.tunables(spec, self.dialect)
            try:
                return tuner.choose(
                    spec.signature(), default, space, lambda params: kernel_call(spec, constants, params),
                    measure=measure, kind=spec.kind, features=kernel_features(spec),
                )  # fmt: skip
            except Exception as e:  # noqa: BLE001 - tuning trouble (e.g. a locked database) keeps the defaults
                return default, {"source": "default", "error": f"{type(e).__name__}: {e}"[:300]}

        def choose(group, spec, constants):
            params, info = params_of(spec, constants)
            chosen = _Weighing(spec, params, info, tuner, measure, lambda: kernel_call(spec, constants, params))
            if spec.kind == "block":
                self._block_or_layers(group, constants, chosen, cache, nthreads, params_of, cold)
            else:
                self._kernel_or_library(group, spec, constants, chosen, cold)
            return params, info

        return choose

    def _kernel_or_library(self, group, spec, constants, chosen: _Weighing, cold) -> None:
        """Implementation choice: the generated kernel, or the group's own
        ATen ops (oneDNN / MKL underneath), whichever measured faster."""
        from .tuning import LIBRARY, group_call_args

        def library_call():
            args = group_call_args(spec, constants)

            def run():
                with torch.no_grad():
                    group(*args)

            return cold(run, constants.values())

        chosen.against(LIBRARY, library_call, UseLibrary, "its ATen ops", "the generated kernel")

    def _block_or_layers(self, group, constants, chosen: _Weighing, cache, nthreads, params_of, cold) -> None:
        """Implementation choice: keep the block kernel only where it beats
        its layers run one by one (each with its own tuned parameters)."""
        from .tuning import LAYERS, random_runtime_args

        def layers_call():
            runs, weights = [], []
            for _name, layer_spec, kernel, layer_constants in self._layer_kernels(
                group, constants, cache, nthreads, lambda s, c: params_of(s, c)[0]
            ):
                args = random_runtime_args(layer_spec, layer_constants)
                runs.append(lambda kernel=kernel, args=args: kernel.run(*args))
                weights.extend(kernel.constants())

            def run():
                for layer in runs:
                    layer()

            return cold(run, weights)

        chosen.against(LAYERS, layers_call, KeepUnfused, "the layers one by one", "the block")


class _Weighing:
    """A kernel with its chosen parameters, weighed against other
    implementations of its group. An alternative's time is a database
    record of the kernel's own signature (e.g. ``{"impl": "layers"}``):
    measured now when tuning, read back otherwise - so "use" decides without
    measuring. Where its median beats the kernel's, the two are timed again
    paired (`KernelTuner.paired`) and the alternative wins only at
    ``CONFIRM_MIN`` or more; a record without a paired result (older
    databases, or "use") is decided by the medians."""

    def __init__(self, spec, params: dict, info: dict, tuner, measure: bool, kernel_call):
        self.signature, self.params, self.info = spec.signature(), params, info
        self.tuner, self.measure, self.kernel_call = tuner, measure, kernel_call

    def against(self, record: dict, alternative_call, choice: type, what: str, kernel: str) -> None:
        """Stores ``info["<impl>_us"]`` (and ``"<impl>_paired_speedup"``);
        raises ``choice`` when the alternative is faster."""
        from ..tuner import CONFIRM_MIN
        from ..tuner.measure import median_us

        impl, db, target = record["impl"], self.tuner.db, self.tuner.target_key
        measured = db.measured(target, self.signature)
        if self.measure and canonical(record) not in measured:
            try:
                alternative = median_us(alternative_call())
            except Exception as e:  # noqa: BLE001 - nothing to weigh against: keep the kernel
                self.info[f"{impl}_error"] = f"{type(e).__name__}: {e}"[:300]
                return
            db.record(target, self.signature, record, alternative)
            measured[canonical(record)] = alternative
        alternative = measured.get(canonical(record))
        kernel_us = self.info.get("best_us")
        if alternative is not None:
            self.info[f"{impl}_us"] = alternative
        if alternative is None or kernel_us is None or alternative >= kernel_us:
            return
        calls = (lambda: (self.kernel_call(), alternative_call())) if self.measure else None
        speedup = self.tuner.paired(self.signature, record, self.params, calls)
        if speedup is not None:
            self.info[f"{impl}_paired_speedup"] = speedup
            if speedup < CONFIRM_MIN:
                return
            raise choice(f"the tuner measured {what} {speedup:.2f}x as fast as {kernel}, paired")
        raise choice(f"the tuner measured {what} faster ({alternative:.1f} us) than {kernel} ({kernel_us:.1f} us)")


