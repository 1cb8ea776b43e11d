"""Randomly generated graphs (hypothesis): every program built from the op
families fusecc groups - pointwise, reductions, GEMMs with constant
weights, layer norms - must compile and match eager; so must attention
under random shapes and masks."""

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torch import nn

from conftest import TARGETS, TOL, assert_close, compile_fusecc

UNARY = [torch.relu, torch.sigmoid, torch.tanh, F.gelu, F.silu, lambda x: x * 0.5, lambda x: -x]
BINARY = [torch.add, torch.mul, torch.sub, torch.maximum]
# Reductions broadcast back to the input's shape so any op can follow them.
REDUCE = [
    lambda x: x - x.sum(-1, keepdim=True),
    lambda x: x * x.mean(-1, keepdim=True),
    lambda x: x - x.amax(-1, keepdim=True),
    lambda x: x.softmax(-1),
    lambda x: F.layer_norm(x, x.shape[-1:]),
]


@st.composite
def programs(draw):
    batch = draw(st.integers(1, 5))
    width = draw(st.integers(1, 9))
    n_inputs = draw(st.integers(1, 3))
    steps = []
    n_values = n_inputs
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["unary", "binary", "reduce", "linear"]))
        a = draw(st.integers(0, n_values - 1))
        b = draw(st.integers(0, n_values - 1))
        op = draw(st.integers(0, 100))
        steps.append((kind, op, a, b))
        n_values += 1
    outputs = sorted({n_values - 1, draw(st.integers(0, n_values - 1))})
    return batch, width, n_inputs, steps, outputs


class Program(nn.Module):
    def __init__(self, width, steps, outputs):
        super().__init__()
        self.steps, self.outputs = steps, outputs
        self.linears = nn.ModuleList(
            nn.Linear(width, width, bias=op % 2 == 0) for kind, op, _, _ in steps if kind == "linear"
        )

    def forward(self, *inputs):
        values = list(inputs)
        linears = iter(self.linears)
        for kind, op, a, b in self.steps:
            x, y = values[a], values[b]
            if kind == "unary":
                values.append(UNARY[op % len(UNARY)](x))
            elif kind == "binary":
                values.append(BINARY[op % len(BINARY)](x, y))
            elif kind == "reduce":
                values.append(REDUCE[op % len(REDUCE)](x))
            else:
                values.append(next(linears)(x))
        return tuple(values[i] for i in self.outputs)


# found by hypothesis: two sibling bf16 linears fused horizontally, their
# 1-column slices stored lane by lane (once as integers, not as bf16)
_SPLIT_BF16 = (1, 1, 1, [("unary", 0, 0, 0), ("linear", 0, 0, 0), ("linear", 0, 0, 0), ("unary", 0, 3, 0)], [2, 4])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(), st.sampled_from([torch.float32, torch.bfloat16]), st.sampled_from(TARGETS))
@example(_SPLIT_BF16, torch.bfloat16, "c")
def test_random_programs_match_eager(program, dtype, target):
    batch, width, n_inputs, steps, outputs = program
    torch.manual_seed(0)
    model = Program(width, steps, outputs).to(dtype).eval()
    inputs = [torch.randn(batch, width, dtype=dtype) for _ in range(n_inputs)]
    torch._dynamo.reset()
    with torch.no_grad():
        ref = model(*inputs)
        out = compile_fusecc(model, target=target, fallback="silent")(*inputs)
    assert_close(out, ref, TOL[dtype] * (10 if dtype is torch.bfloat16 else 1))


class MaskedAttention(nn.Module):
    """SDPA under a mask of one of the kinds models hand it: none (``causal``
    or not), an input mask (``random``), or one built in the graph from
    per-key validity ``keep`` as Hugging Face builds it (``padding``;
    ``causal_padding``: ANDed with the causal pattern), filled with ``fill``."""

    def __init__(self, kind: str, fill: float, causal: bool):
        super().__init__()
        from test_attention import PaddedAttention

        self.kind, self.causal = kind, causal
        self.built = PaddedAttention("causal" if kind == "causal_padding" else "padding", fill)

    def forward(self, q, k, v, mask, keep):
        if self.kind == "none":
            return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        if self.kind == "random":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.built(q, k, v, keep)


@st.composite
def attention_cases(draw):
    b, h = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    lq, lk, d = draw(st.integers(1, 70)), draw(st.integers(1, 70)), draw(st.sampled_from([8, 16, 24, 64]))
    kind = draw(st.sampled_from(["none", "random", "padding", "causal_padding"]))
    fill = draw(st.sampled_from([float("-inf"), torch.finfo(torch.float32).min]))
    causal = kind == "none" and draw(st.booleans())
    # per image: the kept keys [start, end) - left or right padding, or none kept at all
    spans = [sorted(draw(st.tuples(st.integers(0, lk), st.integers(0, lk)))) for _ in range(b)]
    masked_fraction = draw(st.sampled_from([0.0, 0.3, 0.9, 1.0]))
    return b, h, lq, lk, d, kind, fill, causal, spans, masked_fraction, draw(st.integers(0, 2**16))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(attention_cases())
@example((2, 2, 40, 40, 16, "causal_padding", float("-inf"), False, [(0, 40), (11, 40)], 0.0, 0))  # left padding
def test_random_attention_masks_match_eager(case):
    """Attention under random shapes and masks - rows that see no key, left
    and right padding, -inf or float32's minimum - compiled by the C target
    (`attention_masks` rewriting the masks it can) must match eager."""
    b, h, lq, lk, d, kind, fill, causal, spans, masked_fraction, seed = case
    torch.manual_seed(seed)
    q, k, v = torch.randn(b, h, lq, d), torch.randn(b, h, lk, d), torch.randn(b, h, lk, d)
    mask = torch.zeros(b, 1, lq, lk).masked_fill(torch.rand(b, 1, lq, lk) < masked_fraction, fill)
    keep = torch.zeros(b, lk, dtype=torch.long)
    for image, (start, end) in enumerate(spans):
        keep[image, start:end] = 1
    model = MaskedAttention(kind, fill, causal).eval()
    torch._dynamo.reset()
    with torch.no_grad():
        ref = model(q, k, v, mask, keep)
        out = compile_fusecc(model, target="c")(q, k, v, mask, keep)
    assert_close(out, ref, TOL[torch.float32])
