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


@pytest.mark.parametrize("nthreads", [1, 2, 3])
@pytest.mark.parametrize("k, n", [(160, 960), (960, 160), (24, 1000)])
def test_gemm_panel_blocks_cover_every_column_on_any_thread_count(k, n, nthreads):
    """The threads share out blocks of B's panels, split evenly whatever
    the panel count (960 columns on 2 threads: 60 panels in blocks of 30 + 30)."""
    before = torch.get_num_threads()
    torch.set_num_threads(nthreads)  # the panel blocks are sized for the threads at compile time
    try:
        check_against_eager(nn.Linear(k, n).eval(), torch.randn(49, k), target="c")
    finally:
        torch.set_num_threads(before)


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


POOLS = {
    "max3x3_s2_p1": lambda x: F.max_pool2d(x, 3, 2, 1),
    "max2x2": lambda x: F.max_pool2d(x, 2),
    "max_dilated_ceil": lambda x: F.max_pool2d(x, 3, 2, 1, dilation=2, ceil_mode=True),
    "avg3x3_s2_p1": lambda x: F.avg_pool2d(x, 3, 2, 1),
    "avg_no_pad_count_ceil": lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False),
    "avg_divisor": lambda x: F.avg_pool2d(x, (2, 3), (1, 2), (1, 1), divisor_override=5),
}


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("name", list(POOLS))
def test_pooling_kernels_match_eager(name, layout):
    """Pools become generated kernels (channel vectors for NHWC, strided
    scalars otherwise) with ATen's window and divisor rules; 21 channels
    leave a partial vector, odd sizes a ragged last window."""
    from fusecc.compiler import collect_reports

    x = torch.randn(2, 21, 13, 11)
    if layout == "nhwc":
        x = x.to(memory_format=torch.channels_last)
    pool = POOLS[name]
    with collect_reports() as reports:
        check_against_eager(lambda t: pool(t) * 2.0, x, target="c")
    assert "pool" in [k["kind"] for r in reports for k in r.kernels]
