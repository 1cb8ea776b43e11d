"""Differential tests against eager for every op family the passes touch,
in fp32 and bf16 (tolerances in conftest: fp32 1e-4, bf16 3e-2 relative to
the output's magnitude), including broadcasting."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import TARGETS, TOL, check_against_eager

DTYPES = [torch.float32, torch.bfloat16]

UNARY = {
    "relu": torch.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "exp": lambda x: torch.exp(x.clamp(max=4)),
    "relu6": F.relu6,
    "rsqrt": lambda x: torch.rsqrt(x.abs() + 1),
    "erf": torch.erf,
    "neg_abs": lambda x: -x.abs(),
}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(UNARY))
def test_unary_chains(name, dtype, target):
    op = UNARY[name]
    check_against_eager(lambda x: op(op(x) * 1.5 + 0.25), torch.randn(3, 17, dtype=dtype), target=target)


BINARY_SHAPES = [((4, 1, 8), (1, 5, 8)), ((6, 8), (8,)), ((2, 3, 4), ()), ((5, 1), (1, 7))]
BINARY = {
    "add": torch.add,
    "mul": torch.mul,
    "sub": torch.sub,
    "div": lambda a, b: a / (b.abs() + 0.5),
    "maximum": torch.maximum,
    "where": lambda a, b: torch.where(a > b, a, b * 2),
}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shapes", BINARY_SHAPES, ids=str)
@pytest.mark.parametrize("name", list(BINARY))
def test_binary_broadcasting(name, shapes, dtype, target):
    op = BINARY[name]
    a, b = (torch.randn(s, dtype=dtype) for s in shapes)
    check_against_eager(lambda a, b: op(a.sigmoid(), b) + 1, a, b, target=target)


REDUCTIONS = {
    "softmax": lambda x: (x * 2).softmax(-1),
    "log_softmax": lambda x: torch.log_softmax(x + 1, dim=1),
    "layer_norm": lambda x: F.layer_norm(x.tanh(), x.shape[-1:]) * 3,
    "rms_norm": lambda x: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6),
    "mean_var": lambda x: (x - x.mean(0, keepdim=True)) / (x.var(0, keepdim=True) + 1).sqrt(),
    "sum": lambda x: x.exp().sum(-1),
    "amax": lambda x: x.relu().amax(dim=(0, 1)),
}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(REDUCTIONS))
def test_reductions_with_prologue_and_epilogue(name, dtype, target):
    check_against_eager(
        REDUCTIONS[name], torch.randn(4, 6, 33, dtype=dtype), target=target, kernels_required=name != "mean_var"
    )


class LinearEpilogue(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.fc = nn.Linear(24, 40)
        self.act = act

    def forward(self, x, residual):
        return self.act(self.fc(x)) + residual


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act", [F.gelu, torch.relu, F.silu], ids=["gelu", "relu", "silu"])
@pytest.mark.parametrize("lead", [(5,), (2, 7)], ids=["2d", "3d"])
def test_gemm_with_epilogue(act, lead, dtype, target):
    m = LinearEpilogue(act).to(dtype).eval()
    check_against_eager(m, torch.randn(*lead, 24, dtype=dtype), torch.randn(*lead, 40, dtype=dtype), target=target)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_batched_matmul_with_scale_and_softmax(dtype, target):
    def attention(q, k, v):
        return ((q @ k.transpose(-1, -2)) * 0.125).softmax(-1) @ v

    q, k, v = (torch.randn(2, 3, 16, 8, dtype=dtype) for _ in range(3))
    check_against_eager(attention, q, k, v, target=target)


class ConvBlock(nn.Module):
    def __init__(self, depthwise: bool):
        super().__init__()
        groups = 8 if depthwise else 1
        self.conv = nn.Conv2d(8, 8, 3, padding=1, groups=groups)
        self.bn = nn.BatchNorm2d(8)
        with torch.no_grad():
            self.bn.running_var.uniform_(0.5, 2)
            self.bn.running_mean.uniform_(-1, 1)

    def forward(self, x):
        return F.relu6(self.bn(self.conv(x))) + x


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("depthwise", [False, True], ids=["dense", "depthwise"])
def test_conv_bn_activation_residual(depthwise, dtype, target):
    m = ConvBlock(depthwise).to(dtype).eval()
    tol = 5e-2 if dtype is torch.bfloat16 else TOL[dtype]  # BN folding rounds folded weights to bf16
    check_against_eager(m, torch.randn(2, 8, 10, 10, dtype=dtype), tol=tol, target=target)


class QKV(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 16, bias=False)

    def forward(self, x):
        b, s, _ = x.shape
        q = self.q(x).view(b, s, 4, 8).transpose(1, 2)
        k = self.k(x).view(b, s, 4, 8).transpose(1, 2)
        return F.scaled_dot_product_attention(q, k, k), self.v(x).relu()


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_horizontal_gemms(dtype, target):
    check_against_eager(QKV().to(dtype).eval(), torch.randn(2, 9, 32, dtype=dtype), target=target)
