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
from fusecc.codegen.c import conv_indirect, conv_winograd, gemm
from fusecc.codegen.c.common import DEPTHWISE_PIXELS
from fusecc.kernels import winograd
from fusecc.kernels.lower import lower_group
from fusecc.kernels.spec import conv_geometry
from fusecc.runtime.kernel import kernel_nodes, kernel_of
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
    # Winograd's: channels filling no vector, tiles crossing the map's edge, no padding
    "3x3_odd_residual": (ConvLayer(20, 36, 3, 1, 1, residual=True), (2, 20, 13, 7)),
    "3x3_unpadded": (ConvLayer(16, 24, 3, 1, 0), (1, 16, 10, 9)),
}


def _conv_group(name, memory_format=torch.channels_last, layers=LAYERS):
    """The layer's one conv group; with a contiguous (NCHW) input the
    conversion to channels-last folds into it."""
    model, shape = layers[name]
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
    if conv_winograd.applicable(geo):
        for m in conv_winograd.TILE_SIZES:
            for tile, chunk in (((6, 4), None), ((5, 3), 1), ((4, 1), None)):
                out.append({"algo": "nhwc_winograd", "m": m, "tile": tile, **({"chunk": chunk} if chunk else {})})
            # filters over 1 MB: each (position, panel) block streams the next
            out.append({"algo": "nhwc_winograd", "m": m, "tile": (6, 4), "schedule": "channel_major"})
    out.append({"algo": "nhwc_gemm", "schedule": "channel_major", "tile": (6, 2), "kc": 64})
    out.append({"algo": "nhwc_gemm", "schedule": "pixel_major", "tile": (4, 3), "kc": 256})
    return out


@pytest.fixture(scope="module")
def cpu(tmp_path_factory):
    return HostCTarget(cache_dir=str(tmp_path_factory.mktemp("conv-cache")))


def _group_args(group, constants) -> tuple[list, torch.Tensor]:
    """Random inputs in the strides the group was traced with, and its ATen output."""
    torch.manual_seed(1)
    args = []
    for i, ph in enumerate(group.graph.find_nodes(op="placeholder")):
        if i in constants:
            args.append(constants[i])
        else:
            val = ph.meta["val"]
            args.append(torch.empty_strided(tuple(val.shape), tuple(val.stride())).copy_(torch.randn(val.shape)))
    with torch.no_grad():
        return args, group(*args)


def _check_variants(layer, cpu):
    group, constants = _conv_group(layer)
    spec = lower_group(group)
    geo = conv_geometry(spec)
    assert "nhwc_indirect" in c_codegen.tunables(spec, cpu.dialect)["algo"]
    args, ref = _group_args(group, constants)
    variants = _variants(geo)
    assert any(v.get("segment") == "rows" for v in variants) == (geo["dw"] == 1)
    _check_params(spec, constants, args, ref, variants, cpu)


def _check_params(spec, constants, args, ref, variants, cpu):
    """Each parameter set's kernel, on 1 and 2 threads, against ``ref``."""
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


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_every_nhwc_conv_algorithm_matches_eager(layer, cpu):
    _check_variants(layer, cpu)


class DepthwiseLayer(nn.Module):
    def __init__(self, c, k, stride, padding, dilation=1):
        super().__init__()
        self.conv = nn.Conv2d(c, c, k, stride, padding, dilation, groups=c)

    def forward(self, x):
        return torch.relu(self.conv(x))


DEPTHWISE_LAYERS = {
    # 20 channels: a partial vector; 17 columns: interior, border and remainder steps
    "7x7_odd": (DepthwiseLayer(20, 7, 1, 3), (2, 20, 9, 17)),
    "3x3_s2": (DepthwiseLayer(16, 3, 2, 1), (1, 16, 15, 13)),
    "5x5_dilated": (DepthwiseLayer(8, 5, 1, 4, dilation=2), (1, 8, 11, 12)),
    "7x7_narrow": (DepthwiseLayer(8, 7, 1, 3), (1, 8, 5, 3)),  # no column sees its whole window
}


@pytest.mark.parametrize("layer", sorted(DEPTHWISE_LAYERS))
def test_depthwise_pixels_side_by_side_match_eager(layer, cpu):
    """The channels-last depthwise kernel with every choice of output pixels
    computed side by side: border columns load their inputs checked, interior
    ones unchecked, and a row's last step takes the columns left over."""
    group, constants = _conv_group(layer, layers=DEPTHWISE_LAYERS)
    spec = lower_group(group)
    space = c_codegen.tunables(spec, cpu.dialect)
    assert space["algo"][0] == "nhwc_depthwise" and space["pixels"] == DEPTHWISE_PIXELS
    args, ref = _group_args(group, constants)
    variants = [{"algo": "nhwc_depthwise", "pixels": pixels} for pixels in DEPTHWISE_PIXELS]
    _check_params(spec, constants, args, ref, variants, cpu)


@pytest.mark.parametrize("layer", ["1x1_residual", "3x3_odd_residual", "3x3_s2_wide"])
def test_the_kernels_without_operand_streaming_match_eager(layer, cpu, monkeypatch):
    """Streaming (prefetching the next weight panel or pixel tile) is on by
    default; the kernels it leaves out of the source are still whole."""
    monkeypatch.setattr(gemm, "STREAM_OPERANDS", False)
    _check_variants(layer, cpu)


@pytest.mark.parametrize("layer", ["7x7_s2_cin3", "3x3_odd_residual"])
def test_indirect_kernels_finishing_through_the_tile_buffer_match_eager(layer, cpu, monkeypatch):
    """The indirect kernel runs a panel's epilogue on its accumulator
    registers when the panel is whole vectors and its last block is done;
    the buffered epilogue it replaced (still used for partial panels) is
    checked here on every panel."""
    monkeypatch.setattr(conv_indirect, "FINISH_IN_REGISTERS", False)
    _check_variants(layer, cpu)


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
    group, _ = _conv_group("3x3_s2_wide")
    assert c_codegen.default_params(lower_group(group), HostCTarget().dialect)["segment"] == "taps"


@pytest.mark.parametrize("m", sorted(winograd.POINTS))
def test_winograd_matrices_compute_the_correlation(m):
    """Cook-Toom's A^T, G, B^T give a 3x3 correlation of every (m+2)^2 tile
    exactly (float64), and the run-time transforms are small integers."""
    a_t, g, b_t = (winograd.as_tensor(x) for x in winograd.matrices(m))
    assert a_t.shape == (m, m + 2) and g.shape == (m + 2, 3) and b_t.shape == (m + 2, m + 2)
    assert torch.equal(b_t, b_t.round())
    torch.manual_seed(m)
    d, w = torch.randn(m + 2, m + 2, dtype=torch.float64), torch.randn(3, 3, dtype=torch.float64)
    y = a_t @ ((g @ w @ g.T) * (b_t @ d @ b_t.T)) @ a_t.T
    torch.testing.assert_close(y, torch.nn.functional.conv2d(d[None, None], w[None, None])[0, 0], rtol=0, atol=1e-12)


def test_winograd_is_the_default_where_it_was_measured_faster():
    group, _ = _conv_group("3x3_odd_residual")
    spec = lower_group(group)
    params = c_codegen.default_params(spec, HostCTarget().dialect)
    assert params["algo"] == "nhwc_winograd" and params["m"] == 2  # 13 x 7: F(4, 3) tiles would be 40% padding
    assert c_codegen.tunables(spec, HostCTarget().dialect)["m"] == conv_winograd.TILE_SIZES
    resnet = {"n": 1, "oh": 56, "ow": 56, "cin": 64, "cout": 64}
    assert conv_winograd.preferred(resnet) and conv_winograd.default_m(resnet) == 4
    assert not conv_winograd.preferred({**resnet, "oh": 7, "ow": 7, "cin": 512, "cout": 512})  # weight-bound
    assert conv_winograd.preferred({**resnet, "n": 8, "oh": 7, "ow": 7, "cin": 512, "cout": 512})
    assert conv_winograd.default_m({**resnet, "oh": 28, "ow": 28, "cin": 128, "cout": 128}) == 4  # 2.4 MB of filters
    # 9.4 MB of F(4, 3) filters, read from memory in a network: F(2, 3) at batch 1, F(4, 3) at batch 8
    assert conv_winograd.default_m({**resnet, "oh": 14, "ow": 14, "cin": 256, "cout": 256}) == 2
    assert conv_winograd.default_m({**resnet, "n": 8, "oh": 14, "ow": 14, "cin": 256, "cout": 256}) == 4
    assert conv_winograd.default_m({**resnet, "n": 8, "oh": 7, "ow": 7, "cin": 512, "cout": 512}) == 2  # 38 MB


def test_winograd_is_refused_where_it_does_not_apply(cpu):
    group, _ = _conv_group("3x3_s2_wide")
    spec = lower_group(group)
    assert "nhwc_winograd" not in c_codegen.tunables(spec, cpu.dialect)["algo"]
    with pytest.raises(NotImplementedError, match="3x3, stride-1"):
        c_codegen.render(spec, cpu.dialect, {"algo": "nhwc_winograd", "m": 4, "tile": (6, 2)})


def test_the_roofline_counts_what_winograd_executes():
    """The effective rate stays the direct count over the time (comparable
    across algorithms); the efficiency against the peak uses the multiplies
    Winograd runs: 16 per 2x2 tile instead of 36."""
    from fusecc.kernels.cost import executed_flops, flops
    from fusecc.targets.roofline import efficiency

    spec = lower_group(_conv_group("3x3_odd_residual")[0])
    geo = conv_geometry(spec)
    params = {"algo": "nhwc_winograd", "m": 2, "tile": (6, 2)}
    tiles = geo["n"] * 7 * 4  # 13 x 7 in 2 x 2 tiles
    assert executed_flops(spec, params) == 2 * tiles * 16 * geo["cin"] * geo["cout"] < flops(spec)
    assert executed_flops(spec, {**params, "algo": "nhwc_indirect"}) == flops(spec)
    peaks = {"gflops": 1000.0, "gbps": 1e6}  # compute-bound
    direct, wino = efficiency(spec, 10.0, peaks), efficiency(spec, 10.0, peaks, params)
    assert wino["gflops"] == direct["gflops"] and wino["efficiency"] < direct["efficiency"]
    assert wino["executed_mflop"] == pytest.approx(executed_flops(spec, params) / 1e6)


@pytest.mark.parametrize("act, in_registers", [(nn.ReLU6(), True), (nn.GELU(), False), (nn.SiLU(), False)])
def test_light_epilogues_finish_in_registers_heavy_ones_through_the_buffer(act, in_registers):
    """A math function's hoisted constants would take the accumulators'
    registers in the tap loop: those epilogues keep the buffered path.
    Either way the result matches eager."""
    from fusecc import compile_exported

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 24, 3, 2, 1), act).eval()
    x = torch.randn(1, 16, 12, 12).to(memory_format=torch.channels_last)
    with torch.no_grad():
        compiled = compile_exported(torch.export.export(model, (x,)), {"target": "c"})
        assert_close(compiled(x), model(x), 1e-4)
    (kernel,) = [kernel_of(n) for n in kernel_nodes(compiled.gm)]
    assert kernel.info["params"]["algo"] == "nhwc_indirect"
    assert ("  if (finish) {" in kernel.info["source"]) == in_registers
