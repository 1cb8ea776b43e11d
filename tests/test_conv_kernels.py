"""Every channels-last convolution algorithm and schedule, differential
against eager: the groups of small conv layers (odd sizes, strides,
padding, dilation, batch 2, bias + activation + residual epilogues) are
rendered with explicit parameters - each algorithm, segment kind, schedule,
tile (full and partial row tiles, partial channel vectors) and K blocking
(one block, or several so the accumulators are carried between blocks) -
and compared with the group's ATen subgraph (fp32: 1e-4 relative)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import GroupRecorder, assert_close
from fusecc.codegen import c as c_codegen
from fusecc.codegen.c import conv_indirect
from fusecc.kernels.lower import lower_group
from fusecc.kernels.spec import conv_geometry
from fusecc.targets.cpu import HostCTarget


class ConvLayer(nn.Module):
    def __init__(self, cin, cout, k, stride, padding, dilation=1, residual=False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding, dilation)
        self.residual = residual

    def forward(self, x):
        y = self.conv(x)
        return torch.relu(y + y.flip(-1)) if self.residual else torch.relu(y)


LAYERS = {
    "3x3_s1": (ConvLayer(16, 24, 3, 1, 1), (2, 16, 9, 11)),
    "7x7_s2_cin3": (ConvLayer(3, 20, 7, 2, 3), (2, 3, 17, 15)),
    "3x3_dilated": (ConvLayer(8, 40, 3, 1, 2, dilation=2), (1, 8, 10, 10)),
    "1x1_residual": (ConvLayer(24, 36, 1, 1, 0, residual=True), (2, 24, 7, 5)),
    "3x3_s2_wide": (ConvLayer(64, 72, 3, 2, 1), (1, 64, 12, 12)),
}


def _conv_group(name, memory_format=torch.channels_last):
    """The layer's one conv group; with a contiguous (NCHW) input the
    conversion to channels-last folds into it."""
    model, shape = LAYERS[name]
    torch.manual_seed(0)
    model.eval()
    x = torch.randn(shape).contiguous(memory_format=memory_format)
    with GroupRecorder() as recorder:
        torch._dynamo.reset()
        with torch.no_grad():
            torch.compile(model, backend="fusecc", options={"target": recorder.name})(x)
    convs = [(g, c) for g, c in recorder.items if g.kind == "conv"]
    assert len(convs) == 1
    return convs[0]


def _variants(geo) -> list[dict]:
    out = []
    for segment in conv_indirect.segment_choices(geo):
        for schedule in ("pixel_major", "channel_major"):
            for tile, kc in (((6, 4), None), ((5, 3), 64), ((14, 2), None), ((4, 1), 32)):
                params = {"algo": "nhwc_indirect", "segment": segment, "schedule": schedule, "tile": tile}
                if kc:
                    params["kc"] = kc
                out.append(params)
    out.append({"algo": "nhwc_gemm", "schedule": "channel_major", "tile": (6, 2), "kc": 64})
    out.append({"algo": "nhwc_gemm", "schedule": "pixel_major", "tile": (4, 3), "kc": 256})
    return out


@pytest.fixture(scope="module")
def cpu(tmp_path_factory):
    return HostCTarget(cache_dir=str(tmp_path_factory.mktemp("conv-cache")))


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_every_nhwc_conv_algorithm_matches_eager(layer, cpu):
    group, constants = _conv_group(layer)
    spec = lower_group(group)
    geo = conv_geometry(spec)
    assert "nhwc_indirect" in c_codegen.tunables(spec, cpu.dialect)["algo"]
    torch.manual_seed(1)
    args = []
    for i, ph in enumerate(group.graph.find_nodes(op="placeholder")):
        if i in constants:
            args.append(constants[i])
        else:
            val = ph.meta["val"]
            args.append(torch.empty_strided(tuple(val.shape), tuple(val.stride())).copy_(torch.randn(val.shape)))
    with torch.no_grad():
        ref = group(*args)
    variants = _variants(geo)
    assert any(v.get("segment") == "rows" for v in variants) == (geo["dw"] == 1)
    for params in variants:
        source = c_codegen.render(spec, cpu.dialect, params)
        kernel = cpu._build(spec, source, constants, cpu.cache(), 2)
        for nthreads in (1, 2):
            torch.set_num_threads(nthreads)
            try:
                out = kernel.run(*args)
            finally:
                torch.set_num_threads(2)
            assert_close(out, ref, 1e-4), params


@pytest.mark.parametrize("layer", ["7x7_s2_cin3", "3x3_s2_wide", "1x1_residual"])
def test_an_nchw_input_is_read_through_the_row_segment_copy(layer, cpu):
    """The network input's conversion to channels-last is not a copy of its
    own: the first convolution reads NCHW into its padded channels-last
    copy (row segments; every schedule, tile and K blocking), and refuses
    parameters that would read the input in place."""
    group, constants = _conv_group(layer, torch.contiguous_format)
    assert [n.target for n in group.graph.nodes if n.op == "call_function"][0] is torch.ops.aten.clone.default
    spec = lower_group(group)
    geo = conv_geometry(spec)
    assert geo["xsw"] == 1 and geo["xsc"] == geo["h"] * geo["w"]  # the kernel reads the NCHW tensor itself
    tunables = c_codegen.tunables(spec, cpu.dialect)
    assert tunables["algo"] == ("nhwc_indirect",) and tunables["segment"] == ("rows",)
    x = torch.randn(tuple(spec.operands[spec.attrs["input"]].shape))
    args = [constants[i] if i in constants else x for i in range(len(group.graph.find_nodes(op="placeholder")))]
    with torch.no_grad():
        ref = group(*args)
    for params in [v for v in _variants(geo) if v.get("segment") == "rows"]:
        kernel = cpu._build(spec, c_codegen.render(spec, cpu.dialect, params), constants, cpu.cache(), 2)
        assert_close(kernel.run(*args), ref, 1e-4)
    with pytest.raises(NotImplementedError, match="row-segment copy"):
        c_codegen.render(spec, cpu.dialect, {"algo": "nhwc_indirect", "segment": "taps", "tile": (6, 2)})


def test_row_segments_are_the_default_for_few_input_channels():
    group, _ = _conv_group("7x7_s2_cin3")
    spec = lower_group(group)
    params = c_codegen.default_params(spec, HostCTarget().dialect)
    assert params["algo"] == "nhwc_indirect" and params["segment"] == "rows"
    group, _ = _conv_group("3x3_s1")
    assert c_codegen.default_params(lower_group(group), HostCTarget().dialect)["segment"] == "taps"
