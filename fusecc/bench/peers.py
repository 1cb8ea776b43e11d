"""The configurations fusecc is measured against, each built the strongest
way it can be on this machine:

* ``eager``            plain PyTorch
* ``inductor``         ``torch.compile`` default
* ``inductor_freeze``  ``torch.compile`` with inductor's freezing (weights
                       as constants, conv weight prepacking) - inductor's
                       best CPU inference configuration
* ``onnxruntime``      model exported with ``torch.onnx.export(dynamo=False)``,
                       CPU provider, all graph optimizations, same threads
* ``fusecc``           ``torch.compile(backend="fusecc")``
* ``fusecc_tuned``     the same with ``options={"tune": "use"}``: each kernel's
                       best parameters in the tuning database (`fusecc tune
                       MODEL` first; with an empty database, the defaults)
* ``fusecc_export``    ``fusecc.compile_exported(torch.export.export(...))``:
                       the same compiler without Dynamo's per-call guards -
                       deployed the way ONNX Runtime is (export, then run)

Every builder returns ``(callable, compile_seconds)``; the compile time is
the first call, which is where torch.compile does its work.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable

import torch

Runner = Callable[[], torch.Tensor]


def _first_call(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[Runner, float]:
    start = time.perf_counter()
    with torch.no_grad():
        fn(x)
    compile_s = time.perf_counter() - start

    def run() -> torch.Tensor:
        with torch.no_grad():
            return fn(x)

    return run, compile_s


def eager(model: torch.nn.Module, x: torch.Tensor) -> tuple[Runner, float]:
    run, _ = _first_call(model, x)
    return run, 0.0


def inductor(model: torch.nn.Module, x: torch.Tensor) -> tuple[Runner, float]:
    return _first_call(torch.compile(model), x)


def inductor_freeze(model: torch.nn.Module, x: torch.Tensor) -> tuple[Runner, float]:
    return _first_call(torch.compile(model, options={"freezing": True}), x)


def fusecc(model: torch.nn.Module, x: torch.Tensor, options: dict | None = None) -> tuple[Runner, float]:
    return _first_call(torch.compile(model, backend="fusecc", options=options or None), x)


def fusecc_unfused(model: torch.nn.Module, x: torch.Tensor, options: dict | None = None) -> tuple[Runner, float]:
    """fusecc with block fusion off: every layer its own kernel."""
    passes = {**(options or {}).get("passes", {}), "block_fusion": False}
    return fusecc(model, x, {**(options or {}), "passes": passes})


def fusecc_tuned(model: torch.nn.Module, x: torch.Tensor, options: dict | None = None) -> tuple[Runner, float]:
    """fusecc with what `fusecc tune` measured: block fusion or the layers, and
    each kernel's parameters, as the tuning database says."""
    return fusecc(model, x, {**(options or {}), "tune": "use"})


def fusecc_export(model: torch.nn.Module, x: torch.Tensor, options: dict | None = None) -> tuple[Runner, float]:
    from ..export import compile_exported

    start = time.perf_counter()
    compiled = compile_exported(torch.export.export(model, (x,)), options or None)
    run, _ = _first_call(compiled, x)
    return run, time.perf_counter() - start  # export, compile and the first call


def onnxruntime(model: torch.nn.Module, x: torch.Tensor) -> tuple[Runner, float]:
    import onnx
    import onnxruntime as ort

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        with torch.no_grad():
            torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17, input_names=["x"])
        proto = onnx.load(path)
        proto.ir_version = min(proto.ir_version, 10)  # ORT 1.31 refuses ir_version > 13
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed = {"x": x.numpy()}
    session.run(None, feed)
    compile_s = time.perf_counter() - start

    def run() -> torch.Tensor:
        return torch.from_numpy(session.run(None, feed)[0])

    return run, compile_s


PEERS: dict[str, Callable[..., tuple[Runner, float]]] = {
    "eager": eager,
    "inductor": inductor,
    "inductor_freeze": inductor_freeze,
    "onnxruntime": onnxruntime,
    "fusecc": fusecc,
    "fusecc_unfused": fusecc_unfused,
    "fusecc_tuned": fusecc_tuned,
    "fusecc_export": fusecc_export,
}
