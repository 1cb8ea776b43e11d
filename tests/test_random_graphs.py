"""Randomly generated graphs (hypothesis): every program built from the op
families fusecc groups - pointwise, reductions, GEMMs with constant
weights, layer norms - must compile and match eager."""

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
