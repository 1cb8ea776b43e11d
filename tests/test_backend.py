"""The Dynamo entry: backend by name, options, dynamic shapes, freezing,
fallbacks, and explain."""

import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn

from conftest import assert_close, check_against_eager, compile_fusecc
import fusecc
from fusecc import targets
from fusecc.compiler import collect_reports


def test_backend_by_name_in_fresh_interpreter_without_import():
    code = textwrap.dedent(
        """
        import sys, torch
        m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU())
        x = torch.randn(3, 4)
        with torch.no_grad():
            out = torch.compile(m, backend="fusecc")(x)
        assert torch.allclose(out, m(x), atol=1e-6)
        assert "fusecc" in sys.modules, "backend did not come from the fusecc entry point"
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        return self.fc(h.mean((2, 3)))


def test_changed_input_shape_never_gives_a_wrong_answer():
    m = SmallNet().eval()
    compiled = compile_fusecc(m)
    with torch.no_grad():
        for shape in [(2, 3, 8, 8), (3, 3, 8, 8), (5, 3, 12, 10), (2, 3, 8, 8)]:
            x = torch.randn(shape)
            assert_close(compiled(x), m(x), 1e-4)


def test_dynamic_shapes_run_shape_generic_graphs():
    m = SmallNet().eval()
    compiled = torch.compile(m, backend="fusecc", dynamic=True, options={"debug": True})
    with torch.no_grad(), collect_reports() as reports:
        for batch in (2, 7, 4):
            x = torch.randn(batch, 3, 9, 9)
            assert_close(compiled(x), m(x), 1e-4)
    assert len(reports) == 1, "a dynamic graph must serve every batch size without recompiling"


def test_frozen_parameter_changed_in_place_recompiles():
    m = SmallNet().eval()
    compiled = compile_fusecc(m)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        compiled(x)
        m.conv.weight.mul_(2.0)  # in-place update of a frozen (BN-folded) weight
        m.bn.running_var.fill_(4.0)
        assert_close(compiled(x), m(x), 1e-4)


def test_frozen_parameter_replaced_recompiles():
    m = SmallNet().eval()
    compiled = compile_fusecc(m)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        compiled(x)
        m.fc.weight = nn.Parameter(torch.randn_like(m.fc.weight))
        assert_close(compiled(x), m(x), 1e-4)


def test_freeze_off_keeps_parameters_as_inputs():
    m = SmallNet().eval()
    with collect_reports() as reports:
        check_against_eager(m, torch.randn(2, 3, 8, 8), freeze=False)
    assert reports[0].frozen_constants == 0
    assert any(d.pass_name == "fold_bn" and not d.accepted for d in reports[0].decisions)


def test_plain_inference_graphs_are_called_without_aotautograd_wrappers():
    m = SmallNet().eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad(), collect_reports() as reports:
        assert_close(compile_fusecc(m)(x), m(x), 1e-4)
    assert [(r.kind, r.capture) for r in reports] == [("inference", "aot_export")]
    assert reports[0].frozen_constants > 0
    torch._dynamo.reset()
    with collect_reports() as reports:  # grad enabled, parameters need it: forward and backward
        compile_fusecc(m)(x).sum().backward()
    assert {(r.kind, r.capture) for r in reports} == {("forward", "aot_autograd"), ("backward", "aot_autograd")}


def test_graphs_needing_aotautograd_wrappers_keep_them():
    class CountsCalls(nn.Module):  # mutates a buffer: AOTAutograd's wrapper writes it back
        def __init__(self):
            super().__init__()
            self.register_buffer("calls", torch.zeros(1))

        def forward(self, x):
            self.calls.add_(1)
            return x * 2 + self.calls

    def alias(x):  # an output aliasing an input: the wrapper rebuilds the view
        return x.t(), (x * 3).exp()

    counter, x = CountsCalls(), torch.randn(4, 5)
    compiled = compile_fusecc(counter)
    with torch.no_grad(), collect_reports() as reports:
        first, second = compiled(x), compiled(x)
        view, out = compile_fusecc(alias)(x)
    assert_close(first, x * 2 + 1, 1e-6)
    assert_close(second, x * 2 + 2, 1e-6)
    assert counter.calls.item() == 2
    assert view.data_ptr() == x.data_ptr() and torch.equal(view, x.t())
    assert_close(out, (x * 3).exp(), 1e-5)
    assert [r.capture for r in reports] == ["aot_autograd", "aot_autograd"]


def test_unsupported_op_falls_back_with_one_warning_naming_it():
    def f(x):
        values, _ = torch.sort(x.sin(), dim=-1)
        return values.cos() * 2

    x = torch.randn(4, 6)
    with pytest.warns(
        fusecc.FallbackWarning, match=r"aten\.sort\.default x1 \(fusecc has no lowering for this op\)"
    ) as rec:
        out = compile_fusecc(f)(x)
    assert len([w for w in rec if issubclass(w.category, fusecc.FallbackWarning)]) == 1
    assert_close(out, f(x), 1e-6)


def test_fallback_error_mode_raises_naming_the_op():
    with pytest.raises(Exception, match=r"unsupported ops in graph .*aten\.sort\.default"):
        compile_fusecc(lambda x: torch.sort(x)[0], fallback="error")(torch.randn(5))


def test_fallback_silent_mode_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", fusecc.FallbackWarning)
        compile_fusecc(lambda x: torch.sort(x)[0], fallback="silent")(torch.randn(5))


class _FailingTarget(targets.Target):
    """Compiles every group except reductions, whose compile always fails."""

    name = "test-failing-reductions"
    description = "test target: reduction groups fail to compile"

    def compile_group(self, group):
        if group.kind == "reduction":
            raise RuntimeError("simulated code generation failure")
        return group.forward  # run the group's own subgraph


@pytest.fixture
def failing_target():
    targets.register(_FailingTarget())
    yield _FailingTarget.name
    del targets.TARGETS[_FailingTarget.name]


class GemmAndNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)

    def forward(self, x):
        h = torch.nn.functional.gelu(self.fc(x))  # a gemm group
        return self.norm(x.tanh() * 2) + h  # a reduction group with prologue and epilogue


def test_failing_group_runs_as_aten_with_warning(failing_target):
    m = GemmAndNorm().eval()
    x = torch.randn(3, 8)
    with pytest.warns(
        fusecc.FallbackWarning, match=r"fused_reduction_\d+ x1 \(target 'test-failing-reductions' failed"
    ) as rec:
        with collect_reports() as reports:
            out = check_against_eager(m, x, target=failing_target, kernels_required=False)
    assert len([w for w in rec if issubclass(w.category, fusecc.FallbackWarning)]) == 1
    (report,) = reports
    failed = [f.subject for f in report.fallbacks]
    assert failed and all(s.startswith("fused_reduction_") for s in failed)
    assert {g["kind"] for g in report.groups} >= {"gemm", "reduction"}
    assert out.shape == (3, 8)


def test_failing_group_with_fallback_error_raises(failing_target):
    m = GemmAndNorm().eval()
    with pytest.raises(Exception, match=r"failed to compile group fused_reduction_\d+ \(reduction\)"):
        with torch.no_grad():
            compile_fusecc(m, target=failing_target, fallback="error")(torch.randn(2, 8))


def test_explain_reports_groups_fallbacks_and_refusals():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            h = torch.relu(self.fc(x))
            return torch.sort(h, dim=-1)[0].softmax(-1)

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", fusecc.FallbackWarning)
        exp = fusecc.explain(M().eval(), torch.randn(2, 8))
    assert len(exp.graphs) == 1 and exp.graph_breaks == 0
    assert [g["kind"] for g in exp.groups if not g["attrs"].get("single")] == ["gemm"]
    assert [f.subject for f in exp.fallbacks] == ["aten.sort.default"]
    text = str(exp)
    assert "fused group" in text and "aten.sort.default" in text and "fusecc has no lowering" in text


def test_explain_counts_graph_breaks():
    def f(x):
        x = x.sin()
        print("side effect")  # forces a graph break
        return x.cos()

    with torch.no_grad():
        exp = fusecc.explain(f, torch.randn(3))
    assert exp.graph_breaks == 1 and len(exp.graphs) == 2
