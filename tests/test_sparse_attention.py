"""Attention sparsity plans: the strategies' block masks, the plan file,
and the sparse kernel against a dense masked reference - exact for the
kept blocks (fp32: 1e-5 relative) - for every strategy, causal or not,
every plan block size, on 1-3 threads; errors that name the problem."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close

from fusecc.compiler import collect_reports
from fusecc.errors import OptionError
from fusecc.sparsity.plan import Plan
from fusecc.sparsity.strategies import block_mask, kept_fraction

HEADS = [
    {"kind": "local", "window": 40},
    {"kind": "a_shape", "sink": 16, "window": 20},
    {"kind": "vertical", "columns": [3, 150]},
    {"kind": "strided", "stride": 64},
    {"kind": "block_sparse", "blocks": [[0, 0], [1, 0], [2, 2], [3, 1]]},
    {"kind": "skip"},
    {"kind": "dense"},
]


class Attention(torch.nn.Module):
    def __init__(self, causal=False):
        super().__init__()
        self.causal = causal

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)


def masked_reference(q, k, v, heads, block, causal):
    """Dense attention with -inf outside each head's kept blocks; rows that keep nothing are zeros."""
    _, h, lq, d = q.shape
    lk = k.shape[2]
    allowed = torch.zeros(h, lq, lk, dtype=torch.bool)
    for i, strategy in enumerate(heads):
        m = block_mask(strategy, lq, lk, block, causal)
        allowed[i] = torch.from_numpy(np.kron(m, np.ones((block, block), dtype=bool))[:lq, :lk])
    if causal:
        allowed &= torch.ones(lq, lk, dtype=torch.bool).tril()  # ATen's causal alignment: top-left
    scores = (q @ k.transpose(-2, -1)) / d**0.5
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1).nan_to_num(0.0)
    return probs @ v


def _run(heads, block, causal, q, k, v, **options):
    plan = {"block": block, "layers": [{"heads": heads}]}
    torch._dynamo.reset()
    with collect_reports() as reports, torch.no_grad():
        fn = torch.compile(
            Attention(causal), backend="fusecc", options={"attention_sparsity": {"plan": plan}, **options}
        )
        out = fn(q, k, v)
    return out, reports


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("block", [16, 32, 64])
def test_sparse_kernel_is_exact_on_the_kept_blocks(block, causal):
    torch.manual_seed(0)
    lq = lk = 300 if not causal else 257  # blocks and vectors left partial
    q, k, v = (torch.randn(2, len(HEADS), n, 24) for n in (lq, lk, lk))
    out, reports = _run(HEADS, block, causal, q, k, v)
    assert [kern["kind"] for r in reports for kern in r.kernels] == ["attention"]
    assert_close(out, masked_reference(q, k, v, HEADS, block, causal), 1e-5)
    assert out[:, HEADS.index({"kind": "skip"})].abs().max() == 0  # a skipped head outputs zeros


def test_more_keys_than_queries_and_every_thread_count():
    torch.manual_seed(1)
    q, k, v = torch.randn(1, 3, 70, 16), torch.randn(1, 3, 200, 16), torch.randn(1, 3, 200, 16)
    heads = HEADS[:3]
    ref = masked_reference(q, k, v, heads, 32, False)
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        try:
            out, _ = _run(heads, 32, False, q, k, v)
        finally:
            torch.set_num_threads(2)
        assert_close(out, ref, 1e-5)


def test_strategy_masks():
    L, B = 512, 64  # 8 x 8 blocks
    band = block_mask({"kind": "local", "window": 64}, L, L, B, False)
    assert band.sum(1).tolist() == [2, 3, 3, 3, 3, 3, 3, 2]  # the diagonal block and one each side
    causal = block_mask({"kind": "local", "window": 64}, L, L, B, True)
    assert not np.triu(causal, 1).any() and causal.sum(1).tolist() == [1, 2, 2, 2, 2, 2, 2, 2]
    sinks = block_mask({"kind": "a_shape", "sink": 64, "window": 0}, L, L, B, False)
    assert sinks[:, 0].all() and sinks.sum() == 8 + 7  # the sink column and the diagonal
    cols = block_mask({"kind": "vertical", "columns": [130]}, L, L, B, False)
    assert cols[:, 2].all() and cols.sum() == 8 + 7
    assert kept_fraction(block_mask({"kind": "dense"}, L, L, B, True), L, L, B, True) == 1.0
    assert block_mask({"kind": "skip"}, L, L, B, False).sum() == 0


def test_a_plan_round_trips_through_its_file(tmp_path):
    plan = Plan([HEADS[:2], HEADS[2:4]], block=32, budget=0.9)
    path = plan.save(tmp_path / "plan.json")
    loaded = Plan.load(str(path))
    assert loaded == plan and json.loads(path.read_text())["version"] == 1
    assert "local" in loaded.summary()


@pytest.mark.parametrize(
    "plan, message",
    [
        ({"layers": [{"heads": [{"kind": "diagonal"}]}]}, "layer 0 head 0: a strategy is a dict with 'kind'"),
        ({"layers": [{"heads": [{"kind": "local"}]}]}, "strategy 'local' needs window"),
        ({"layers": [{"heads": [{"kind": "local", "window": -3}]}]}, "'window' must be a non-negative"),
        ({"block": 48, "layers": [{"heads": [{"kind": "dense"}]}]}, "block size 48"),
        ({"layers": []}, "has 0 attention layers, this graph has 1"),
        ({"layers": [{"heads": [{"kind": "dense"}] * 3}]}, "plan layer 0 has 3 heads"),
    ],
)
def test_a_wrong_plan_is_a_clear_error(plan, message):
    q = k = v = torch.randn(1, 2, 32, 8)
    torch._dynamo.reset()
    fn = torch.compile(Attention(), backend="fusecc", options={"attention_sparsity": {"plan": plan}})
    with pytest.raises(Exception, match=message):
        fn(q, k, v)


def test_sparsity_options_are_checked(tmp_path):
    from fusecc.options import Options

    with pytest.raises(OptionError, match="needs a 'plan'"):
        Options.resolve({"attention_sparsity": {"budget": 0.9}}, environ={})
    with pytest.raises(OptionError, match="unknown fusecc attention_sparsity key 'plans'"):
        Options.resolve({"attention_sparsity": {"plans": "x"}}, environ={})
    env = Options.resolve(None, environ={"FUSECC_ATTENTION_SPARSITY": str(tmp_path / "p.json")})
    assert env.attention_sparsity == {"plan": str(tmp_path / "p.json")}
    with pytest.raises(OptionError, match="cannot be read"):
        Plan.load(tmp_path / "missing.json")


def test_without_a_plan_attention_stays_exact_and_other_targets_refuse_plans():
    torch.manual_seed(2)
    q, k, v = (torch.randn(1, 2, 64, 8) for _ in range(3))
    torch._dynamo.reset()
    with collect_reports() as reports, torch.no_grad():
        out = torch.compile(Attention(), backend="fusecc")(q, k, v)
    assert_close(out, F.scaled_dot_product_attention(q, k, v), 1e-5)
    assert not any(d.pass_name == "attention_sparsity" for r in reports for d in r.decisions)
    torch._dynamo.reset()
    plan = {"layers": [{"heads": [{"kind": "dense"}] * 2}]}
    fn = torch.compile(Attention(), backend="fusecc", options={"target": "aten", "attention_sparsity": {"plan": plan}})
    with pytest.raises(Exception, match="target 'aten' has no sparse attention kernels"):
        fn(q, k, v)


@pytest.mark.parametrize("dialect", ["neon", "scalar"])
def test_the_sparse_kernel_in_other_dialects(dialect):
    """The sparse table walk under NEON (qemu-aarch64) and portable C: key
    blocks of 16 tile the plan's blocks of 32."""
    import shutil

    from conftest import GroupRecorder

    from fusecc.codegen import c as c_codegen
    from fusecc.kernels.lower import lower_group
    from fusecc.targets.harness import run_standalone
    from fusecc.targets.toolchain import Toolchain, aarch64_cross, host_dialect_and_flags

    if dialect == "neon" and not (shutil.which("aarch64-linux-gnu-gcc") and shutil.which("qemu-aarch64")):
        pytest.skip("needs gcc-aarch64-linux-gnu and qemu-user (.ci/run installs them)")
    torch.manual_seed(3)
    heads = HEADS[:4] + HEADS[5:6]
    q, k, v = (torch.randn(1, len(heads), 100, 20) for _ in range(3))
    recorder = GroupRecorder()
    recorder._target.sparse_attention = True
    with recorder:
        _run(heads, 32, True, q, k, v, target=recorder.name)
    ((group, _),) = [(g, c) for g, c in recorder.items if g.kind == "attention"]
    spec = lower_group(group)
    assert spec.attrs["sparse"]["block"] == 32
    source = c_codegen.render(spec, dialect)
    if dialect == "neon":
        toolchain, runner = aarch64_cross(dotprod=True), ("qemu-aarch64", "-cpu", "max")
    else:
        _, flags = host_dialect_and_flags()
        toolchain, runner = Toolchain("gcc", tuple(f for f in flags if not f.startswith(("-march", "-mtune")))), ()
    by_operand = {i: (q, k, v)[i] for i in range(3)}
    run = run_standalone(spec, source, toolchain, by_operand, c_codegen.workspace_bytes(spec, source.params, 2),
                         runner=runner)  # fmt: skip
    assert run.stdout.strip() == "ok"
    assert_close(run.outputs[0], masked_reference(q, k, v, heads, 32, True), 1e-5)


def test_the_dump_records_each_heads_strategy(tmp_path, capsys):
    heads = [{"kind": "local", "window": 32, "recall": 0.97}, {"kind": "skip"}]
    q, k, v = (torch.randn(1, 2, 64, 8) for _ in range(3))
    _run(heads, 16, False, q, k, v, dump_dir=str(tmp_path))
    summary = json.loads(next(tmp_path.glob("*/summary.json")).read_text())
    (group,) = [g for g in summary["groups"] if g["kind"] == "attention"]
    assert group["attrs"]["strategies"] in ("1 local, 1 skip", "1 skip, 1 local")
    assert group["attrs"]["sparsity"]["heads"][0]["recall"] == 0.97
    decisions = [d for d in summary["decisions"] if d["pass_name"] == "attention_sparsity"]
    assert decisions and decisions[0]["accepted"]
    from fusecc.cli import main

    capsys.readouterr()
    assert main(["inspect", str(tmp_path)]) == 0
    assert "attention (1 local, 1 skip)" in capsys.readouterr().out
