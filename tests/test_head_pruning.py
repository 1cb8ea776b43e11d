"""Skipped heads removed with their projection rows and columns
(`head_pruning`), against eager PyTorch with those heads' output-projection
columns zeroed - the same function, since a skipped head outputs zeros
(fp32: 1e-4 relative) - on BERT, GPT-2 (fused c_attn), ViT and Llama (RoPE,
GQA) from their Hugging Face configs; and calibration choosing ``skip`` for
a head the model does without."""

import pytest
import torch
from conftest import TOL, assert_close

from fusecc.bench import zoo
from fusecc.bench.head_pruning import OUTPUT_PROJECTIONS, zero_heads
from fusecc.compiler import collect_reports
from fusecc.sparsity.calibrate import calibrate


def _plan(skip, heads, others=None):
    others = others or [{"kind": "dense"}] * heads
    return {"block": 16, "layers": [{"heads": [{"kind": "skip"} if h in s else others[h] for h in range(heads)]} for s in skip]}  # fmt: skip


def _compile(model, x, plan, **options):
    torch._dynamo.reset()
    with collect_reports() as reports, torch.no_grad():
        out = torch.compile(model, backend="fusecc", options={"attention_sparsity": {"plan": plan}, **options})(x)
    torch._dynamo.reset()
    return out, reports


def _decisions(reports, accepted):
    return [d for r in reports for d in r.decisions if d.pass_name == "head_pruning" and d.accepted is accepted]


CASES = [
    ("bert_base", [{1, 3}, {0}]),
    ("gpt2", [{2}, {0, 1}]),  # one c_attn GEMM split into Q, K, V
    ("vit_small", [{0}, {3}]),
    ("llama", [{1, 3}, {2, 3}]),  # GQA 4 -> 2: the repeat shrinks; a whole key group goes
]


@pytest.mark.parametrize("name,skip", CASES, ids=[c[0] for c in CASES])
def test_skipped_heads_are_removed_and_match_eager(name, skip):
    entry = zoo.get(name)
    torch.manual_seed(0)
    model, x = entry.model("tiny").eval(), entry.example_input("tiny", 2)
    heads = 4
    out, reports = _compile(model, x, _plan(skip, heads))
    with torch.no_grad():
        ref = zero_heads(model, skip, heads)(x)
    assert_close(out, ref, TOL[torch.float32])
    assert len(_decisions(reports, True)) == len(skip)
    attention = [g for r in reports for g in r.groups if g["kind"] == "attention"]
    assert [g["attrs"]["heads"] for g in attention] == [heads - len(s) for s in skip]
    assert [g["attrs"]["kept_heads"] for g in attention] == [[h for h in range(heads) if h not in s] for s in skip]


def test_pruning_keeps_each_remaining_heads_own_strategy():
    """The plan's strategies follow the kept heads: pruned and unpruned agree."""
    entry = zoo.get("bert_base")
    torch.manual_seed(0)
    model, x = entry.model("tiny").eval(), torch.randint(0, 100, (1, 64))
    others = [
        {"kind": "local", "window": 16},
        {"kind": "dense"},
        {"kind": "vertical", "columns": [0]},
        {"kind": "dense"},
    ]
    plan = _plan([{1}, {0, 3}], 4, others)
    pruned, reports = _compile(model, x, plan)
    kernel_zeros, _ = _compile(model, x, plan, passes={"head_pruning": False})
    assert len(_decisions(reports, True)) == 2
    assert_close(pruned, kernel_zeros, TOL[torch.float32])


def test_heads_that_cannot_be_removed_stay_and_say_why():
    """GQA with one query head of a key group skipped: the heads stay (the
    kernel writes the skipped one's zeros), the dump says why; a layer
    skipping every head keeps them too."""
    entry = zoo.get("llama")
    torch.manual_seed(0)
    model, x = entry.model("tiny").eval(), entry.example_input("tiny", 2)
    skip = [{1}, {0, 1, 2, 3}]
    out, reports = _compile(model, x, _plan(skip, 4))
    with torch.no_grad():
        ref = zero_heads(model, skip, 4)(x)
    assert_close(out, ref, TOL[torch.float32])
    refused = [d.message for d in _decisions(reports, False)]
    assert any("layer 0" in m and "not one axis" in m for m in refused), refused
    assert any("layer 1 skips every head" in m for m in refused), refused
    assert not _decisions(reports, True)


def test_calibration_skips_a_head_the_model_does_without():
    """Head 2 of every layer writes nothing (its output-projection columns
    are zero): calibration skips it - the output error of zeroing it is 0 -
    and no head the model needs (the others' projections are scaled up:
    at initialization, attention barely moves the residual stream)."""
    entry = zoo.get("bert_base")
    torch.manual_seed(0)
    model = entry.model("tiny").eval()
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith(OUTPUT_PROJECTIONS):
                module.weight.mul_(50)
    model = zero_heads(model, [{2}, {2}], 4)
    samples = [(torch.randint(0, 100, (2, 32)),) for _ in range(2)]
    plan = calibrate(model, samples, budget=0.99, block=16, measure=False)
    kinds = [[h["kind"] for h in layer] for layer in plan.layers]
    assert all(layer[2] == "skip" for layer in kinds), kinds
    assert all(k != "skip" for layer in kinds for i, k in enumerate(layer) if i != 2), kinds
    assert all(layer[2]["output_error"] == 0 for layer in plan.layers)
    plan_off = calibrate(model, samples, budget=0.99, block=16, measure=False, skip=False)
    assert not any(h["kind"] == "skip" for layer in plan_off.layers for h in layer)
