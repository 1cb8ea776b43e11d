"""Scaled dot-product attention as one generated kernel (online softmax),
against eager (fp32: 1e-4 relative): plain, causal, additive masks
broadcast over batch or heads, query and key lengths that differ and fill
no block, head sizes that fill no vector; every q-block size on 1-3
threads; and the attention of real transformer models."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import GroupRecorder, assert_close, check_against_eager

from fusecc.codegen import c as c_codegen
from fusecc.codegen.c.attention import CAUSAL_KEYS, DENSE_KEYS
from fusecc.compiler import collect_reports
from fusecc.kernels.lower import lower_group
from fusecc.targets.cpu import HostCTarget


class Attention(torch.nn.Module):
    def __init__(self, causal: bool = False):
        super().__init__()
        self.causal = causal

    def forward(self, q, k, v, mask=None):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal)


class GroupedQueryAttention(torch.nn.Module):
    """Llama's ``repeat_kv`` in front of SDPA: ``rep`` query heads share each
    key/value head; the values come in as [B, L, Hkv, D] (a transposed view)."""

    def __init__(self, rep: int, causal: bool = False):
        super().__init__()
        self.rep, self.causal = rep, causal

    def forward(self, q, k, v):
        v = v.transpose(1, 2)
        b, hkv, lk, d = k.shape
        k, v = (t[:, :, None].expand(b, hkv, self.rep, lk, d).reshape(b, hkv * self.rep, lk, d) for t in (k, v))
        return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)


def _qkv(b, h, lq, lk, d):
    torch.manual_seed(0)
    return torch.randn(b, h, lq, d), torch.randn(b, h, lk, d), torch.randn(b, h, lk, d)


@pytest.mark.parametrize(
    "b, h, lq, lk, d, causal, mask",
    [
        (1, 2, 37, 37, 16, False, None),  # one partial key block
        (2, 3, 50, 70, 32, False, None),  # more keys than queries
        (1, 2, 130, 130, 64, True, None),  # causal: blocks above the diagonal skipped
        (2, 2, 33, 47, 24, False, (2, 1, 33, 47)),  # a mask broadcast over the heads
        (2, 2, 20, 20, 8, False, (20, 20)),  # a mask broadcast over batch and heads
        (1, 4, 200, 200, 80, True, None),  # head size of two value panels, the second partial
        (2, 3, 37, 101, 24, True, None),  # causal with more keys than queries: ATen's top-left alignment
        (1, 2, 90, 40, 16, True, None),  # causal with fewer keys: rows past the keys see them all
    ],
)
def test_attention_is_one_kernel_and_matches_eager(b, h, lq, lk, d, causal, mask):
    q, k, v = _qkv(b, h, lq, lk, d)
    args = (q, k, v) + ((torch.randn(mask),) if mask else ())
    with collect_reports() as reports:
        check_against_eager(Attention(causal), *args, target="c")
    assert [k["kind"] for r in reports for k in r.kernels] == ["attention"]


@pytest.mark.parametrize("rep, causal", [(2, False), (3, True), (4, False)])
def test_gqa_reads_the_shared_key_heads(rep, causal):
    """The repeat of K and V joins the attention group: its kernel reads each
    key head for its ``rep`` query heads - no repeated copy is made."""
    torch.manual_seed(0)
    b, hkv, lq, lk, d = 2, 2, 45, 61, 16
    q, k, v = torch.randn(b, hkv * rep, lq, d), torch.randn(b, hkv, lk, d), torch.randn(b, lk, hkv, d)
    with collect_reports() as reports:
        check_against_eager(GroupedQueryAttention(rep, causal), q, k, v, target="c")
    assert [k["kind"] for r in reports for k in r.kernels] == ["attention"]
    ((group,),) = [[g for g in r.groups if g["kind"] == "attention"] for r in reports]
    assert (group["attrs"]["heads"], group["attrs"]["kv_heads"]) == (hkv * rep, hkv)
    assert not [f for r in reports for f in r.fallbacks]


def recorded_attention(model, *args):
    """(the attention group's spec, its constants, eager's output) of ``model`` compiled on ``args``."""
    with GroupRecorder() as recorder, torch.no_grad():
        torch._dynamo.reset()
        torch.compile(model, backend="fusecc", options={"target": recorder.name})(*args)
        ref = model(*args)
    ((group, constants),) = [(g, c) for g, c in recorder.items if g.kind == "attention"]
    return lower_group(group), constants, ref


def kernels_over(spec, constants, tunable: str, tmp_path, max_threads: int):
    """The attention kernel built with each value of one of its tunables (the rest at their defaults)."""
    target = HostCTarget(cache_dir=str(tmp_path))
    for value in c_codegen.tunables(spec, target.dialect)[tunable]:
        params = {**c_codegen.default_params(spec, target.dialect), tunable: value}
        yield target._build(spec, c_codegen.render(spec, target.dialect, params), constants, target.cache(), max_threads)


class ScaledAttention(torch.nn.Module):
    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, scale=self.scale)


@pytest.mark.parametrize("scale", [2.0, -0.7])
def test_explicit_scales_of_either_sign_match_eager(scale):
    """A positive scale goes into the exponent's FMA, the running max taken
    over the raw scores; a negative one turns the smallest score into the
    largest, so the kernel scales first. Large scores (near one-hot rows)
    test the base-2 softmax far from 0."""
    q, k, v = _qkv(1, 2, 70, 300, 32)
    with collect_reports() as reports:
        check_against_eager(ScaledAttention(scale), q * 3, k, v, target="c")
    assert [k["kind"] for r in reports for k in r.kernels] == ["attention"]


@pytest.mark.parametrize("causal", [False, True])
def test_every_q_block_size_matches_eager_on_any_thread_count(causal, tmp_path):
    q, k, v = _qkv(2, 3, 75, 75, 32)
    spec, constants, ref = recorded_attention(Attention(causal), q, k, v)
    for kernel in kernels_over(spec, constants, "q_tiles", tmp_path, 3):
        for nthreads in (1, 2, 3):
            torch.set_num_threads(nthreads)
            try:
                out = kernel.run(q, k, v)
            finally:
                torch.set_num_threads(2)
            assert_close(out, ref, 1e-4)


@pytest.mark.parametrize("causal", [False, True])
def test_every_key_block_width_matches_eager(causal, tmp_path):
    """Key blocks of 1 to 16 register tiles (the scores computed a tile of
    keys at a time), with 75 keys filling no block - the widest blocks are
    wider than all the keys - and a head size of 40 filling no value panel."""
    q, k, v = _qkv(1, 2, 75, 75, 40)
    spec, constants, ref = recorded_attention(Attention(causal), q, k, v)
    for kernel in kernels_over(spec, constants, "key_panels", tmp_path, 2):
        assert_close(kernel.run(q, k, v), ref, 1e-4)


@pytest.mark.parametrize("causal, keys", [(False, 1024), (False, 197), (True, 1024)])
def test_default_key_blocks_are_wide_unless_causal_and_never_wider_than_the_keys(causal, keys):
    q, k, v = _qkv(1, 1, 8, keys, 16)
    spec, _, _ = recorded_attention(Attention(causal), q, k, v)
    params = c_codegen.default_params(spec, HostCTarget().dialect)
    nr = params["tile"][1] * params["vl"]
    wanted = CAUSAL_KEYS if causal else min(DENSE_KEYS, math.ceil(keys / nr) * nr)
    assert params["key_panels"] * nr == wanted


def test_a_boolean_mask_is_honoured():
    """A boolean mask (True: attend) gets the same answer as eager, with no
    fallback, whichever way the graph hands it to attention."""
    q, k, v = _qkv(2, 2, 24, 24, 16)
    mask = torch.rand(2, 1, 24, 24) > 0.3
    mask[..., 0] = True  # no row fully masked (eager would return NaN there)
    check_against_eager(Attention(), q, k, v, mask, target="c")


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("name", ["bert_base", "vit_small", "gpt2", "llama"])
def test_transformer_attention_runs_as_generated_kernels(name, implementation):
    """BERT and ViT (no mask), GPT-2 and Llama (an additive causal mask, GQA
    heads repeated before the op) run their attention as the kernel, whether
    written as SDPA or (``attn_implementation="eager"``) as matmul, scale,
    mask add, softmax and matmul. The decoders' mask is built from constants
    (the zoo passes an all-ones padding mask), so `attention_masks` turns
    it into the causal flag: the kernel skips the keys above the diagonal."""
    from fusecc.bench import zoo

    entry = zoo.get(name)
    model = entry.model("tiny")
    model.model.set_attn_implementation(implementation)
    with collect_reports() as reports:
        check_against_eager(model, entry.example_input("tiny", 2), target="c", tol=1e-3)
    captured = [d for r in reports for d in r.decisions if d.pass_name == "attention_capture" and d.accepted]
    assert len(captured) == (2 if implementation == "eager" else 0)
    assert sum(k["kind"] == "attention" for r in reports for k in r.kernels) >= 2
    # the attention group says what it is: heads, key heads (GQA), head size, mask
    (attrs,) = {tuple(sorted(g["attrs"].items())) for r in reports for g in r.groups if g["kind"] == "attention"}
    attrs = dict(attrs)
    decoder = name in ("gpt2", "llama")
    assert attrs["mask"] == "none" and attrs["causal"] is decoder
    masks = [d for r in reports for d in r.decisions if d.pass_name == "attention_masks"]
    assert bool(masks) is decoder and all("the causal mask" in d.message for d in masks), masks
    spaces = {tuple(k["spec"]["space"]) for r in reports for k in r.kernels if k["kind"] == "attention"}
    assert {(attrs["heads"], attrs["q_len"], attrs["head_dim"])} == {s[1:] for s in spaces}
    assert (attrs["kv_heads"] < attrs["heads"]) == (name == "llama")


class WrittenOut(torch.nn.Module):
    """Attention as people write it by hand; ``variant`` bends one piece."""

    def __init__(self, variant: str = ""):
        super().__init__()
        self.variant = variant

    def forward(self, q, k, v, mask):
        if self.variant == "sdpa_math":  # SDPA's math decomposition (as traced on CUDA): sqrt(scale) on each side
            root = q.shape[-1] ** -0.25
            scores = (q * root) @ (k.transpose(-2, -1) * root)
            return torch.ops.aten._safe_softmax(scores + mask, -1) @ v
        scores = q @ k.transpose(-2, -1)
        if self.variant != "unscaled":
            scores = scores / q.shape[-1] ** 0.5
        probs = torch.softmax(scores + mask, dim=-2 if self.variant == "softmax_over_queries" else -1)
        out = probs @ v
        return (out, probs) if self.variant == "probabilities_read" else out


@pytest.mark.parametrize("variant", ["", "unscaled", "sdpa_math"])
def test_written_out_attention_becomes_the_kernel(variant):
    q, k, v = _qkv(2, 3, 40, 56, 16)
    mask = torch.randn(2, 1, 40, 56)
    with collect_reports() as reports:
        check_against_eager(WrittenOut(variant), q, k, v, mask, target="c")
    assert "attention" in [k["kind"] for r in reports for k in r.kernels]
    (decision,) = [d for r in reports for d in r.decisions if d.pass_name == "attention_capture"]
    assert decision.accepted and ("scale 1," in decision.message) == (variant == "unscaled")
    assert f"scale {16**-0.5:.4g}," in decision.message or variant == "unscaled"


@pytest.mark.parametrize(
    "variant, reason",
    [("probabilities_read", "read 2 times"), ("softmax_over_queries", "not over the keys")],
)
def test_attention_that_is_not_safe_to_capture_is_refused_with_the_reason(variant, reason):
    q, k, v = _qkv(1, 2, 24, 24, 8)
    with collect_reports() as reports:
        check_against_eager(WrittenOut(variant), q, k, v, torch.randn(24, 24), target="c")
    decisions = [d for r in reports for d in r.decisions if d.pass_name == "attention_capture"]
    assert decisions and not any(d.accepted for d in decisions)
    assert any(reason in d.message for d in decisions), [d.message for d in decisions]
    assert "attention" not in [k["kind"] for r in reports for k in r.kernels]


def test_uncaptured_attention_with_a_per_image_mask_still_runs_as_kernels():
    """Refused attention leaves bmm -> view [B, H, L, L] -> + mask [B, 1, L, L]:
    the GEMM kernel cannot read the mask over its merged batch x heads
    dimension, so the epilogue is split off into a pointwise kernel of its
    own instead of the whole group falling back to ATen."""
    q, k, v = _qkv(2, 3, 24, 24, 8)
    with collect_reports() as reports:
        check_against_eager(WrittenOut("probabilities_read"), q, k, v, torch.randn(2, 1, 24, 24), target="c")
    decisions = [d.message for r in reports for d in r.decisions if d.pass_name == "lower"]
    assert any("epilogue split off the GEMM" in m and "not expressible as strides" in m for m in decisions), decisions


class PaddedAttention(torch.nn.Module):
    """Attention under a key-padding mask built as Hugging Face builds it:
    per-key validity ANDed with a pattern over (query, key) positions and
    materialized as an additive [B, 1, L, L] mask. The pattern: ``q_idx >=
    0`` (the padding-only mask function: true on every row), ``kv_idx <=
    q_idx`` (causal; "causal_wide": with the padding operand [B, 1, L, L])
    or a causal window of 8 keys. Filled with -inf, as Hugging Face's SDPA
    masks are, or ``fill``."""

    def __init__(self, pattern: str, fill: float = float("-inf")):
        super().__init__()
        self.pattern, self.fill = pattern, fill

    def forward(self, q, k, v, keep):
        q_idx = torch.arange(q.shape[2])[None, None, :, None]
        kv_idx = torch.arange(k.shape[2])[None, None, None, :]
        pattern = {
            "padding": q_idx >= 0,
            "causal": kv_idx <= q_idx,
            "causal_wide": kv_idx <= q_idx,
            "window": (kv_idx <= q_idx) & (kv_idx > q_idx - 8),
        }[self.pattern]
        padding = keep[:, None, None, :].bool()
        if self.pattern == "causal_wide":  # the padding operand materialized over the rows (still all equal)
            padding = padding | torch.zeros(1, 1, q.shape[2], k.shape[2], dtype=torch.bool)
        mask = torch.where(padding & pattern, 0.0, self.fill)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _mask_strides(reports) -> list:
    return [k["spec"]["attrs"]["mask_strides"] for r in reports for k in r.kernels if k["kind"] == "attention"]


@pytest.mark.parametrize(
    "pattern, causal, row_stride, message",
    [
        ("padding", False, 0, "every query row"),
        ("causal", True, 0, "the causal mask AND one with equal query rows"),
        ("causal_wide", True, 0, "the causal mask AND one with equal query rows"),
        ("window", False, 40, "may differ beyond the causal pattern"),
    ],
)
def test_a_mask_with_equal_query_rows_is_read_as_one_row(pattern, causal, row_stride, message):
    """`attention_masks`: a padding mask's query rows are all the same (its row
    test folds to an all-true constant), so the kernel reads one row with
    stride 0 over the rows; a causal mask AND a padding mask becomes the
    causal flag and the padding mask's one row; a sliding window's rows
    differ, so it is read in full and the dump says why. All match eager,
    padded keys included."""
    q, k, v = _qkv(2, 3, 40, 40, 16)
    keep = torch.ones(2, 40, dtype=torch.long)
    keep[1, 29:] = 0  # the second sequence is padded
    with collect_reports() as reports:
        check_against_eager(PaddedAttention(pattern), q, k, v, keep, target="c")
    (decision,) = [d for r in reports for d in r.decisions if d.pass_name == "attention_masks"]
    assert decision.accepted is (pattern != "window") and message in decision.message, decision.message
    kernels = [k["spec"]["attrs"] for r in reports for k in r.kernels if k["kind"] == "attention"]
    assert [(a["causal"], a["mask_strides"][2]) for a in kernels] == [(causal, row_stride)]


def test_query_rows_with_every_key_masked_match_aten():
    """A query row masked everywhere by -inf outputs zeros, as ATen's kernel
    does (not 0/0); one masked everywhere by float32's minimum averages its
    values, as ATen's does (the minimum, times log2(e) in the kernel's base-2
    softmax, saturates instead of overflowing to -inf). Under the causal
    flag: `test_a_padded_batch_through_a_decoder...`."""
    q, k, v = _qkv(2, 2, 24, 24, 16)
    mask = torch.zeros(2, 1, 24, 24)
    mask[1, :, :3] = float("-inf")
    mask[1, :, 3:5] = torch.finfo(torch.float32).min
    out = check_against_eager(Attention(), q, k, v, mask, target="c")
    assert torch.isfinite(out).all() and not out[1, :, :3].any()
    assert_close(out[1, :, 3:5], v[1].mean(dim=1, keepdim=True).expand(2, 2, 16), 1e-5)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_a_padded_batch_through_a_decoder_runs_causal_with_one_mask_row(name, side, implementation):
    """GPT-2 and Llama with the tokenizer's padding mask as an input: Hugging
    Face's mask is causal AND padding. With SDPA attention (-inf fill) every
    layer's attention runs with the causal flag and reads the padding mask's
    one row. Eager attention fills with float32's minimum, where a query row
    with no key to see averages every key: that mask is read in full, and
    the dump says why. Left padding leaves such rows; all match eager."""
    from fusecc.bench import zoo

    class Padded(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lm = zoo.get(name).model("tiny").model
            self.lm.set_attn_implementation(implementation)

        def forward(self, ids, keep):
            return self.lm(ids, attention_mask=keep).logits

    ids = torch.randint(0, 100, (2, 40))
    keep = torch.ones(2, 40, dtype=torch.long)
    keep[1, :11] = 0 if side == "left" else 1
    keep[1, 29:] = 0 if side == "right" else 1
    with collect_reports() as reports:
        out = check_against_eager(Padded().eval(), ids, keep, target="c", tol=1e-3)
    assert torch.isfinite(out).all()
    split = implementation == "sdpa"
    decisions = [d for r in reports for d in r.decisions if d.pass_name == "attention_masks"]
    assert decisions and all(d.accepted is split and "causal mask AND" in d.message for d in decisions), decisions
    assert all("not -inf" in d.message for d in decisions) is not split
    kernels = [k["spec"]["attrs"] for r in reports for k in r.kernels if k["kind"] == "attention"]
    assert len(kernels) == 2, kernels
    assert all(a["causal"] is split and a["mask_strides"][2] == (0 if split else 40) for a in kernels), kernels


def test_an_exported_vit_drops_its_constant_mask():
    """Under `torch.export` Hugging Face's ViT builds an all-visible 0 / -inf
    mask from constants in every layer; it shifts no score, so
    `attention_masks` drops it (exact) and the kernels read no mask."""
    import fusecc
    from fusecc.bench import zoo

    entry = zoo.get("vit_small")
    model, x = entry.model("tiny").eval(), entry.example_input("tiny", 1)
    with torch.no_grad(), collect_reports() as reports:
        compiled = fusecc.compile_exported(torch.export.export(model, (x,)), {"target": "c"})
        assert_close(compiled(x), model(x), 1e-4)
    decisions = [d for r in reports for d in r.decisions if d.pass_name == "attention_masks"]
    assert len(decisions) == 2 and all(d.accepted and "dropped" in d.message for d in decisions), decisions
    kernels = [k for r in reports for k in r.kernels if k["kind"] == "attention"]
    assert len(kernels) == 2 and all("mask" not in k["spec"]["attrs"] for k in kernels)


def test_a_padded_batch_through_bert_reads_its_mask_as_one_row():
    """Hugging Face's own mask builder (BERT, SDPA attention, a padded
    batch): every layer's attention reads the padding mask's one row."""
    from fusecc.bench import zoo

    class Padded(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = zoo.get("bert_base").model("tiny").model

        def forward(self, ids, keep):
            return self.bert(ids, attention_mask=keep).last_hidden_state

    ids = torch.randint(0, 100, (2, 48))
    keep = torch.ones(2, 48, dtype=torch.long)
    keep[0, 40:] = 0
    with collect_reports() as reports:
        out = check_against_eager(Padded().eval(), ids, keep, target="c", tol=1e-3)
    assert torch.isfinite(out).all()
    decisions = [d for r in reports for d in r.decisions if d.pass_name == "attention_masks"]
    assert decisions and all(d.accepted for d in decisions), [d.message for d in decisions]
    strides = _mask_strides(reports)
    assert len(strides) == 2 and all(s[2] == 0 for s in strides), strides


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_captured_attention_run_as_aten_off_the_cpu_calls_a_device_neutral_op(device):
    """`attention_capture` writes ATen's CPU attention op on any device; an
    attention group inlined back to ATen off the CPU (a target that could
    not compile it, or the aten target) must not call that CPU-only op."""
    import operator

    from torch.fx import Graph, GraphModule

    from fusecc.graph.fused_group import fuse_nodes, inline_group, runnable_as_aten
    from fusecc.ops import SDPA_CPU, sdpa_any_device

    q, k, v = _qkv(1, 2, 8, 8, 4)
    mask = torch.randn(8, 8)
    graph = Graph()
    inputs = [graph.placeholder(n) for n in "qkvm"]
    sdpa = graph.call_function(SDPA_CPU, (*inputs[:3], 0.0, False), {"attn_mask": inputs[3], "scale": 0.3})
    out = graph.call_function(operator.getitem, (sdpa, 0))
    graph.output(out)
    for node, value in zip(inputs, (q, k, v, mask)):
        node.meta["val"] = value.to(device)
    sdpa.meta["val"] = tuple(t.to(device) for t in SDPA_CPU(q, k, v, 0.0, False, attn_mask=mask, scale=0.3))
    out.meta["val"] = sdpa.meta["val"][0]
    gm = GraphModule(torch.nn.Module(), graph)
    call = fuse_nodes(gm, [sdpa, out], "attention")
    # the group as ATen as it stands (the cuda target times it against its kernel)
    runnable = runnable_as_aten(gm.get_submodule(call.target))
    assert {n.target for n in runnable.graph.nodes} >= {SDPA_CPU if device == "cpu" else sdpa_any_device}
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3)
    assert_close(runnable(q, k, v, mask), expected, 1e-5)
    inline_group(gm, call)
    (call,) = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is not operator.getitem]
    assert call.target is (SDPA_CPU if device == "cpu" else sdpa_any_device)
    gm.recompile()
    assert_close(gm(q, k, v, mask), expected, 1e-5)
