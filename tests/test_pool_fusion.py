"""pool_fusion: a global average pool after a convolution becomes part of
the convolution's kernel (its full result is never written); where the
kernel cannot take it, the pool stays its own kernel and the dump says
why. Outputs against eager at fp32 1e-4 (relative to the magnitude)."""

import pytest
import torch
from torch import nn

from conftest import GroupRecorder, assert_close, check_against_eager
from fusecc.codegen import c as c_codegen
from fusecc.compiler import collect_reports
from fusecc.kernels.lower import lower_group
from fusecc.targets.cpu import HostCTarget


class ConvPool(nn.Module):
    """A 1x1 layer (so the pooled convolution reads a channels-last
    activation, as inside a network), a kxk layer with ReLU6, a global
    average pool."""

    def __init__(self, cin, cout, k, keepdim=True, groups=1):
        super().__init__()
        self.pre = nn.Conv2d(8, cin, 1)
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups)
        self.keepdim = keepdim

    def forward(self, x):
        y = nn.functional.relu6(self.conv(self.pre(x)))
        return y.mean([-1, -2], keepdim=self.keepdim)


def _nhwc(*shape):
    return torch.randn(*shape).to(memory_format=torch.channels_last)


def _report(model, x, **options):
    with torch.no_grad(), collect_reports() as reports:
        check_against_eager(model.eval(), x, **options)
    return reports[-1]


def _decisions(report, accepted):
    return [d for d in report.decisions if d.pass_name == "pool_fusion" and d.accepted == accepted]


@pytest.mark.parametrize(
    "cin, cout, k, hw, batch, keepdim",
    [
        (32, 1280, 1, (7, 7), 1, True),  # MobileNetV2's last layer: a plain GEMM over the pixels
        (24, 100, 1, (9, 7), 2, False),  # [N, C] output, odd sizes
        (16, 37, 1, (5, 5), 3, True),  # row tiles crossing images, a partial channel vector
    ],
)
def test_the_pool_runs_in_the_convolution_kernel_and_matches_eager(cin, cout, k, hw, batch, keepdim):
    torch.manual_seed(0)
    report = _report(ConvPool(cin, cout, k, keepdim), _nhwc(batch, 8, *hw), target="c")
    (decision,) = _decisions(report, accepted=True)
    assert "global average pool folded into" in decision.message
    assert [k["kind"] for k in report.kernels] == ["conv", "conv"]  # no reduction kernel left
    pooled = [g for g in report.groups if g["attrs"].get("pool") == "mean"]
    assert len(pooled) == 1 and "aten.mean.dim" in pooled[0]["members"]


@pytest.mark.parametrize("nthreads", [1, 2])
def test_pooled_sums_are_the_same_on_any_thread_count(nthreads, tmp_path):
    """Each task owns whole channels over all pixels: no race, and the sum
    order does not depend on the thread count."""
    torch.manual_seed(0)
    model = ConvPool(16, 72, 1).eval()
    with GroupRecorder() as recorder:
        torch._dynamo.reset()
        with torch.no_grad():
            torch.compile(model, backend="fusecc", options={"target": recorder.name})(_nhwc(2, 8, 6, 6))
    ((group, constants),) = [(g, c) for g, c in recorder.items if g.attrs.get("pool")]
    spec = lower_group(group)
    assert [o.pool for o in spec.outputs] == ["mean"]
    cpu = HostCTarget(cache_dir=str(tmp_path))
    params = c_codegen.default_params(spec, cpu.dialect)
    assert (params["algo"], params["schedule"]) == ("nhwc_gemm", "channel_major")
    kernel = cpu._build(spec, c_codegen.render(spec, cpu.dialect, params), constants, cpu.cache(), 2)
    x = _nhwc(2, 16, 6, 6)
    args = [constants.get(i, x) for i in range(len(group.graph.find_nodes(op="placeholder")))]
    with torch.no_grad():
        ref = group(*args)
    torch.set_num_threads(nthreads)
    try:
        outs = [kernel.run(*args) for _ in range(2)]
    finally:
        torch.set_num_threads(2)
    assert_close(outs[0], ref, 1e-4)
    assert torch.equal(outs[0], outs[1])


def test_only_the_channel_major_gemm_kernel_renders_a_pooled_convolution(tmp_path):
    torch.manual_seed(0)
    with GroupRecorder() as recorder:
        torch._dynamo.reset()
        with torch.no_grad():
            torch.compile(ConvPool(16, 40, 1).eval(), backend="fusecc", options={"target": recorder.name})(
                _nhwc(1, 8, 6, 6)
            )
    ((group, _),) = [(g, c) for g, c in recorder.items if g.attrs.get("pool")]
    spec = lower_group(group)
    dialect = HostCTarget(cache_dir=str(tmp_path)).dialect
    assert c_codegen.tunables(spec, dialect)["algo"] == ("nhwc_gemm",)
    params = {**c_codegen.default_params(spec, dialect), "schedule": "pixel_major"}
    with pytest.raises(NotImplementedError, match="schedule 'channel_major'"):
        c_codegen.render(spec, dialect, params)


def test_a_3x3_convolution_keeps_its_own_kernel_and_its_pool_apart():
    report = _report(ConvPool(16, 24, 3), _nhwc(1, 8, 6, 6), target="c")
    (refused,) = _decisions(report, accepted=False)
    assert "not a 1x1 stride-1 unpadded convolution" in refused.message
    assert "reduction" in [k["kind"] for k in report.kernels]


def test_a_depthwise_convolution_keeps_its_pool_apart_with_the_reason():
    report = _report(ConvPool(16, 16, 3, groups=16), _nhwc(1, 8, 6, 6), target="c")
    assert not _decisions(report, accepted=True)
    (refused,) = _decisions(report, accepted=False)
    assert "grouped (depthwise) convolution" in refused.message
    assert "reduction" in [k["kind"] for k in report.kernels]


def test_a_convolution_of_the_networks_nchw_input_keeps_its_pool_apart():
    """The first layer reads the NCHW input through a copy of its own (no pooled kernel)."""

    class First(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 1)

        def forward(self, x):
            return torch.relu(self.conv(x)).mean((2, 3))

    report = _report(First(), torch.randn(2, 3, 8, 8), target="c")  # check_against_eager: no fallback
    (refused,) = _decisions(report, accepted=False)
    assert "input is not channels-last" in refused.message


def test_a_convolution_result_used_besides_the_pool_is_not_pooled():
    class Both(ConvPool):
        def forward(self, x):
            y = nn.functional.relu6(self.conv(self.pre(x)))
            return y.mean([-1, -2]), y * 2

    report = _report(Both(16, 24, 1), _nhwc(1, 8, 5, 5), target="c")
    assert not _decisions(report, accepted=True)
    assert "users besides the pool" in _decisions(report, accepted=False)[0].message


def test_targets_without_pooled_convolutions_keep_the_pool_apart():
    report = _report(ConvPool(16, 24, 1), _nhwc(1, 8, 5, 5), target="aten")
    (refused,) = _decisions(report, accepted=False)
    assert "target 'aten' has no pooled convolution kernels" in refused.message


def test_pool_fusion_off_keeps_the_reduction_kernel():
    report = _report(ConvPool(16, 24, 1), _nhwc(1, 8, 5, 5), target="c", passes={"pool_fusion": False})
    assert [k["kind"] for k in report.kernels] == ["conv", "conv", "reduction"]


def test_a_pool_after_a_block_run_as_its_layers_goes_into_the_last_layer():
    """ResNet-50's end: a deep bottleneck runs as its layers untuned, so at
    lowering its last 1x1 convolution (+ residual + ReLU) takes the pool."""
    from fusecc.bench.blocks import Bottleneck, _randomize_bn

    class Tail(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = _randomize_bn(Bottleneck(128, 32))

        def forward(self, x):
            return self.block(x).mean((2, 3))

    torch.manual_seed(0)
    report = _report(Tail(), _nhwc(2, 128, 7, 7), target="c")
    (decision,) = _decisions(report, accepted=True)
    assert "the last layer of fused_block_0, which runs as its layers" in decision.message
    assert [k["kind"] for k in report.kernels] == ["conv", "conv", "conv"]  # the layers; no reduction kernel
