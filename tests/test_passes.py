"""Each pass on its own: what it matches, what it produces, when it refuses."""

import types
import warnings

import pytest
import torch
from torch import nn

from conftest import assert_close, capture, check_against_eager, pass_context, targets_of
import fusecc
from fusecc import PassError
from fusecc.graph.fused_group import groups
from fusecc.passes import (
    PASS_NAMES,
    PIPELINE,
    constant_fold,
    cse,
    dce,
    fold_bn,
    horizontal_fusion,
    remove_noops,
    vertical_fusion,
)
from fusecc.passes.manager import PassManager
from fusecc.passes.verify import DebugVerifier


def run_passes(gm, *passes, inference=True):
    ctx = pass_context(inference)
    for p in passes:
        gm = p.run(gm, ctx)
        gm.graph.lint()
        gm.recompile()
    return gm, ctx


def test_constant_fold_precomputes_weight_transpose():
    lin = nn.Linear(8, 4)
    x = torch.randn(2, 8)
    gm = capture(lin, x)
    assert "aten.permute.default" in targets_of(gm) or "aten.t.default" in targets_of(gm)
    gm, ctx = run_passes(gm, constant_fold, dce)
    assert targets_of(gm) == ["aten.addmm.default"]
    assert_close(gm(x)[0], lin(x), 1e-6)


def test_constant_fold_refuses_to_expand_constants():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.b = nn.Parameter(torch.randn(1, 512))

        def forward(self, x):
            return x + self.b.expand(512, 512)

    x = torch.randn(512, 512)
    gm, ctx = run_passes(capture(M(), x), constant_fold)
    assert "aten.expand.default" in targets_of(gm)
    assert any("much larger" in d.message for d in ctx.report.decisions)


def test_remove_noops_drops_contiguous_clone():
    def f(x):
        return (x.sin().clone() * 2).contiguous()

    x = torch.randn(4, 4)
    gm = capture(types.new_class("M", (nn.Module,), exec_body=lambda ns: ns.update(forward=lambda self, x: f(x)))(), x)
    gm, _ = run_passes(gm, remove_noops)
    assert "aten.clone.default" not in targets_of(gm)
    assert_close(gm(x)[0], f(x), 1e-6)


def test_remove_noops_drops_the_metadata_asserts_export_puts_before_to():
    class Cast(nn.Module):
        def forward(self, x):
            return (x.to(torch.float32) * 2).sin()

    x = torch.randn(4, 8)
    ep = torch.export.export(Cast(), (x,))
    assert "aten._assert_tensor_metadata.default" in targets_of(ep.graph_module)
    with warnings.catch_warnings():
        warnings.simplefilter("error", fusecc.FallbackWarning)  # the assert used to run as a reported fallback
        compiled = fusecc.compile_exported(ep, options={"target": "c"})
    assert compiled.report.fallbacks == []
    assert any("metadata asserts" in d.message for d in compiled.report.decisions)
    assert_close(compiled(x), Cast()(x), 1e-6)


class _Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def test_cse_merges_duplicates_and_dce_removes_dead_code():
    def f(x):
        _dead = x.exp()
        return x.sin() + x.sin()

    x = torch.randn(8)
    gm, _ = run_passes(capture(_Fn(f), x), cse, dce)
    assert targets_of(gm).count("aten.sin.default") == 1
    assert "aten.exp.default" not in targets_of(gm)
    assert_close(gm(x)[0], f(x), 1e-6)


def test_cse_keeps_random_ops_apart():
    def f(x):
        return torch.rand_like(x) + torch.rand_like(x)

    x = torch.randn(8)
    gm, _ = run_passes(capture(_Fn(f), x), cse)
    assert sum("rand" in t for t in targets_of(gm)) == 2


def _bn(channels, dims=2):
    bn = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(channels)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return bn.eval()


@pytest.mark.parametrize(
    "model, shape, expected",
    [
        (lambda: nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), _bn(8)), (2, 3, 9, 9), "aten.convolution.default"),
        (
            lambda: nn.Sequential(nn.Conv2d(3, 8, 3, groups=1), _bn(8), nn.ReLU()),
            (2, 3, 9, 9),
            "aten.convolution.default",
        ),
        (lambda: nn.Sequential(nn.Linear(6, 5), _bn(5, dims=1)), (4, 6), "aten.addmm.default"),
        (lambda: nn.Sequential(nn.ReLU(), _bn(4)), (2, 4, 5, 5), "aten.mul.Tensor"),
    ],
    ids=["conv", "conv-relu", "linear", "standalone"],
)
def test_fold_bn(model, shape, expected):
    m = model().eval()
    x = torch.randn(shape)
    gm, ctx = run_passes(capture(m, x), constant_fold, fold_bn, dce)
    names = targets_of(gm)
    assert not any("batch_norm" in t for t in names), names
    assert expected in names
    assert_close(gm(x)[0], m(x), 1e-5)
    assert any(d.pass_name == "fold_bn" and d.accepted for d in ctx.report.decisions)


def test_fold_bn_is_inference_only():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    from fusecc.compiler import collect_reports

    with collect_reports() as reports:
        out = torch.compile(m, backend="fusecc")(x)
        out.sum().backward()
    forward = next(r for r in reports if r.kind == "forward")
    record = next(p for p in forward.passes if p.name == "fold_bn")
    assert record.skipped == "inference-only pass on a training graph"


class _QKV(nn.Module):
    def __init__(self, d=16, bias=(True, True, True)):
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(d, d, bias=b) for b in bias)

    def forward(self, x):
        return self.q(x).relu(), self.k(x) * 2, self.v(x)


@pytest.mark.parametrize("bias", [(True, True, True), (False, False, False), (True, False, True)])
def test_horizontal_fusion_merges_sibling_gemms(bias):
    m = _QKV(bias=bias).eval()
    x = torch.randn(5, 16)
    gm, ctx = run_passes(capture(m, x), constant_fold, dce, horizontal_fusion)
    found = [g for _, g in groups(gm) if g.attrs.get("horizontal") == 3]
    assert len(found) == 1 and found[0].attrs["split_sizes"] == [16, 16, 16]
    assert sum(t in ("aten.addmm.default", "aten.mm.default") for t in targets_of(found[0])) == 1
    assert_close(gm(x), m(x), 1e-5)


def test_horizontal_fusion_refuses_trainable_weights():
    m = _QKV()
    x = torch.randn(5, 16, requires_grad=True)
    from fusecc.compiler import collect_reports

    with collect_reports() as reports:
        out = torch.compile(m, backend="fusecc")(x)
    sum(o.sum() for o in out).backward()
    refused = [d for r in reports for d in r.decisions if d.pass_name == "horizontal_fusion" and not d.accepted]
    assert refused and "not constants" in refused[0].message


def _kinds(gm):
    return sorted((g.kind, tuple(g.members)) for _, g in groups(gm))


def test_vertical_fusion_gemm_epilogue_and_reduction_prologue():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 16)
            self.norm = nn.LayerNorm(16)

        def forward(self, x, residual):
            h = torch.nn.functional.gelu(self.fc(x))
            return self.norm((x * 0.5).tanh() + residual) + h

    m = Block().eval()
    x, r = torch.randn(4, 16), torch.randn(4, 16)
    gm, _ = run_passes(capture(m, x, r), constant_fold, dce, vertical_fusion)
    kinds = {g.kind: g for _, g in groups(gm)}
    assert kinds["gemm"].members[:2] == ["aten.addmm.default", "aten.gelu.default"]
    red = kinds["reduction"]
    assert "aten.native_layer_norm.default" in red.members
    assert {"aten.mul.Tensor", "aten.tanh.default", "aten.add.Tensor"} <= set(red.members)
    assert_close(gm(x, r)[0], m(x, r), 1e-5)


def test_vertical_fusion_pointwise_chain():
    def f(x, y):
        return ((x * 2).sigmoid() + y).relu()

    x, y = torch.randn(8, 8), torch.randn(8)
    gm, _ = run_passes(capture(_Fn(f), x, y), vertical_fusion)
    assert _kinds(gm) == [
        ("pointwise", ("aten.mul.Tensor", "aten.sigmoid.default", "aten.add.Tensor", "aten.relu.default"))
    ]
    assert_close(gm(x, y)[0], f(x, y), 1e-6)


def test_vertical_fusion_refuses_non_convex_group():
    # relu(mm(x, w1)) feeds both mm(., w2) and an add with that mm's result:
    # the add cannot join the first GEMM's group without a cycle.
    w1, w2 = torch.randn(8, 8), torch.randn(8, 8)

    def f(x):
        t = (x @ w1).relu()
        return t + t @ w2

    x = torch.randn(4, 8)
    gm, _ = run_passes(capture(_Fn(f), x), constant_fold, vertical_fusion)
    first = next(g for _, g in groups(gm) if g.members[0] == "aten.mm.default" and "aten.relu.default" in g.members)
    assert first.members == ["aten.mm.default", "aten.relu.default"]
    assert_close(gm(x)[0], f(x), 1e-5)


@pytest.mark.parametrize("disabled", PASS_NAMES)
def test_every_pass_can_be_switched_off(disabled):
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = _bn(8)
            self.q, self.k = nn.Linear(8, 8), nn.Linear(8, 8)
            self.norm = nn.LayerNorm(8)

        def forward(self, x):
            h = self.bn(self.conv(x)).relu().mean((2, 3))
            h = self.norm(h + 1)
            return self.q(h).sigmoid() * self.k(h)

    from fusecc.compiler import collect_reports

    with collect_reports() as reports:
        check_against_eager(Mixed().eval(), torch.randn(2, 3, 8, 8), passes={disabled: False})
    records = [p for p in reports[0].passes if p.name == disabled]
    assert records and all(p.skipped == "disabled by options" for p in records)


def test_pass_manager_times_every_pass():
    gm = capture(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), torch.randn(2, 4))
    ctx = pass_context()
    PassManager(PIPELINE).run(gm, ctx)
    assert [p.name for p in ctx.report.passes] == [p.NAME for p in PIPELINE]
    assert all(p.seconds > 0 for p in ctx.report.passes if p.skipped is None)


def test_debug_mode_names_the_pass_that_breaks_the_graph():
    def run(gm, ctx):  # changes the output's shape: a broken rewrite
        out = gm.graph.output_node()
        value = out.args[0][0]
        with gm.graph.inserting_before(out):
            summed = gm.graph.call_function(torch.ops.aten.sum.default, (value,))
        out.args = ((summed,),)
        return gm

    broken = types.SimpleNamespace(NAME="broken_rewrite", INFERENCE_ONLY=False, run=run)
    gm = capture(nn.Linear(4, 4), torch.randn(2, 4))
    with pytest.raises(PassError, match=r"pass 'broken_rewrite' broke the graph: graph outputs changed"):
        PassManager([constant_fold, broken], [DebugVerifier()]).run(gm, pass_context(debug=True))


def test_debug_mode_catches_invalid_graphs():
    def run(gm, ctx):  # an op with arguments of the wrong shape
        node = next(n for n in gm.graph.nodes if n.target == torch.ops.aten.addmm.default)
        node.args = (node.args[0], node.args[2], node.args[1])
        return gm

    broken = types.SimpleNamespace(NAME="swap_operands", INFERENCE_ONLY=False, run=run)
    gm = capture(nn.Linear(4, 3), torch.randn(2, 4))
    with pytest.raises(PassError, match=r"pass 'swap_operands' broke the graph"):
        PassManager([constant_fold, broken], [DebugVerifier()]).run(gm, pass_context(debug=True))


def test_debug_mode_compiles_the_same_kernels():
    """The verifier checks and changes nothing: re-propagated values once
    gave a horizontally fused Q/K/V GEMM's outputs the strides of views of
    one [B, L, 3 D] tensor, so BERT's attention kernels were compiled for a
    layout they never got (and copied their inputs on every call)."""
    from fusecc.bench import zoo
    from fusecc.compiler import collect_reports

    model = zoo.get("bert_base").model("tiny")
    x = zoo.get("bert_base").example_input("tiny", 2)
    specs = {}
    for debug in (False, True):
        torch._dynamo.reset()
        with torch.no_grad(), collect_reports() as reports:
            torch.compile(model, backend="fusecc", options={"target": "c", "debug": debug})(x)
        specs[debug] = [(k["kind"], k["spec"]) for r in reports for k in r.kernels]
    assert any(kind == "attention" for kind, _ in specs[False])
    assert specs[True] == specs[False]
