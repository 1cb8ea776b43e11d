"""Shared test helpers.

Tolerances (max abs error, relative to the reference's largest magnitude):
fp32 1e-4 for single ops and small graphs, 1e-3 for whole models (fusion
and BN folding reorder float sums); bf16 3e-2 (8 mantissa bits).
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}
MODEL_TOL = {torch.float32: 1e-3, torch.bfloat16: 5e-2}


def assert_close(out, ref, tol: float) -> None:
    """Max abs error, scaled by the reference's magnitude, below ``tol``."""
    if isinstance(ref, (tuple, list)):
        assert isinstance(out, (tuple, list)) and len(out) == len(ref)
        for o, r in zip(out, ref):
            assert_close(o, r, tol)
        return
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert out.dtype == ref.dtype, f"dtype {out.dtype} != {ref.dtype}"
    scale = ref.float().abs().max().clamp_min(1.0)
    err = ((out.float() - ref.float()).abs().max() / scale).item()
    assert err <= tol, f"relative error {err:.3g} > {tol:g}"


# Targets every differential test runs on: the ATen reference and generated C.
TARGETS = ["aten", "c"]


def compile_fusecc(fn, **options):
    options.setdefault("debug", True)  # every test also runs the per-pass verifier
    return torch.compile(fn, backend="fusecc", options=options)


def check_against_eager(fn, *inputs, tol=None, grad: bool = False, kernels_required: bool = True, **options):
    """Compile ``fn`` with fusecc and compare outputs to eager on ``inputs``.

    On a kernel-generating target, float32 graphs must actually run
    generated kernels with no fallback (``kernels_required``), so a
    regression in lowering cannot hide behind the ATen fallback."""
    from fusecc.compiler import collect_reports

    compiled = compile_fusecc(fn, **options)
    ctx = torch.enable_grad() if grad else torch.no_grad()
    with ctx, collect_reports() as reports:
        ref = fn(*inputs)
        out = compiled(*inputs)
    dtype = (ref[0] if isinstance(ref, (tuple, list)) else ref).dtype
    assert_close(out, ref, tol if tol is not None else TOL.get(dtype, 1e-4))
    if options.get("target", "aten") != "aten" and kernels_required and dtype is torch.float32:
        assert any(r.kernels for r in reports), "no generated kernel ran"
        fallbacks = [f for r in reports for f in r.fallbacks]
        assert not fallbacks, fallbacks
    return out


@pytest.fixture(autouse=True, scope="session")
def _kernel_cache(tmp_path_factory):
    """Kernels built by the tests go to a private cache, not the user's."""
    os.environ["FUSECC_CACHE_DIR"] = str(tmp_path_factory.mktemp("fusecc-cache"))
    yield


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def capture(module: torch.nn.Module, *inputs: torch.Tensor):
    """The frozen ATen graph fusecc's passes see for ``module`` (via torch.export)."""
    from torch.export.graph_signature import InputKind

    from fusecc.capture import export_decompositions, freeze_placeholders

    ep = torch.export.export(module.eval(), inputs).run_decompositions(export_decompositions())
    placeholders = ep.graph_module.graph.find_nodes(op="placeholder")
    values = {
        i: ep.state_dict.get(spec.target, ep.constants.get(spec.target))
        for i, spec in enumerate(ep.graph_signature.input_specs)
        if spec.kind is not InputKind.USER_INPUT
    }
    assert len(placeholders) == len(ep.graph_signature.input_specs)
    return freeze_placeholders(ep.graph_module, values)


def pass_context(inference: bool = True, **options):
    from fusecc.options import Options
    from fusecc.passes.manager import PassContext
    from fusecc.report import GraphReport

    return PassContext(Options.resolve(options, environ={}), inference, GraphReport("test", "inference"))


def targets_of(gm) -> list[str]:
    return [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]


class GroupRecorder:
    """A target that records the fused groups a compile hands it (and runs
    them as ATen): ``with GroupRecorder() as rec: torch.compile(m,
    backend="fusecc", options={"target": rec.name})(x)``; ``rec.items``
    holds (group, constants) pairs. With ``capture_args``, each group runs
    as itself (blocks are not unfused) and ``rec.args[group]`` holds the
    arguments of its first call."""

    name = "test-record"

    def __init__(self, capture_args: bool = False):
        from fusecc import targets

        recorder = self

        class _Replay(torch.nn.Module):
            def __init__(self, group):
                super().__init__()
                self.group = group

            def forward(self, *args):
                recorder.args.setdefault(self.group, list(args))
                return self.group(*args)

        class _Target(targets.Target):
            name = GroupRecorder.name
            description = "records fused groups"
            pooled_convolutions = True  # is handed what the C target is

            def compile_groups(inner, items, options):
                self.items.extend(items)
                return [_Replay(g) for g, _ in items] if capture_args else [None] * len(items)

        self.items = []
        self.args: dict = {}
        self._target = _Target()

    def __enter__(self) -> GroupRecorder:
        from fusecc import targets

        targets.register(self._target)
        return self

    def __exit__(self, *exc) -> None:
        from fusecc import targets

        del targets.TARGETS[self.name]


def recorded_block(model, x):
    """The one block group compiling ``model`` on ``x`` yields: (group, its
    spec, the arguments it was called with, the model's eager output)."""
    from fusecc.kernels.lower import lower_group

    with GroupRecorder(capture_args=True) as recorder, torch.no_grad():
        torch._dynamo.reset()
        torch.compile(model, backend="fusecc", options={"target": recorder.name})(x)
        ref = model(x)
    (group,) = [g for g, _ in recorder.items if g.kind == "block"]
    return group, lower_group(group), recorder.args[group], ref
