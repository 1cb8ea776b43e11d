"""Block fusion: which residual blocks become one kernel, why others are
refused, and that the block kernels compute what eager does (fp32 1e-4)."""

import pytest
import torch
from torch import nn

from conftest import check_against_eager
from fusecc.bench.blocks import BasicBlock, Bottleneck, InvertedResidual, Stem, _randomize_bn
from fusecc.compiler import collect_reports


def _nhwc(*shape):
    """Blocks sit between channels-last layers inside a network."""
    return torch.randn(*shape).to(memory_format=torch.channels_last)


def _compile_report(model, x, **options):
    with torch.no_grad(), collect_reports() as reports:
        check_against_eager(model, x, **options)
    return reports[-1]  # the model's graph (measuring peaks compiles a GEMM of its own first)


def _block_kernels(report):
    return [k for k in report.kernels if k["kind"] == "block"]


@pytest.mark.parametrize(
    "cin, cout, expand, stride, hw, batch",
    [
        (24, 24, 6, 1, (14, 14), 1),  # residual, channels a multiple of the vector width
        (16, 24, 6, 2, (15, 13), 2),  # stride 2, odd sizes, no residual
        (10, 10, 3, 1, (9, 7), 3),  # channel counts that leave partial vectors everywhere
        (32, 16, 1, 1, (8, 8), 1),  # no expand layer (MobileNetV2's first block)
        (8, 8, 6, 1, (1, 1), 2),  # 1x1 spatial: all padding
    ],
)
def test_inverted_residual_is_one_kernel_and_matches_eager(cin, cout, expand, stride, hw, batch):
    torch.manual_seed(0)
    model = _randomize_bn(InvertedResidual(cin, cout, expand, stride))
    report = _compile_report(model, _nhwc(batch, cin, *hw), target="c")
    blocks = _block_kernels(report)
    assert len(blocks) == 1, [k["kind"] for k in report.kernels]
    layers = 3 if expand != 1 else 2
    assert [layer["kind"] for layer in blocks[0]["spec"]["attrs"]["layers"]] == ["conv2d"] * layers
    (decision,) = [d for d in report.decisions if d.pass_name == "block_fusion" and d.accepted]
    assert "inverted residual" in decision.message
    assert ("+ residual" in decision.message) == (stride == 1 and cin == cout)
    # the block replaced all its convolutions: no conv kernel of its own is left
    assert not [k for k in report.kernels if k["kind"] == "conv"]


def test_tf_padding_blocks_of_a_real_model_fuse():
    """Hugging Face MobileNetV2 pads TF-style (asymmetric, a separate pad op)."""
    from fusecc.bench import zoo

    entry = zoo.get("mobilenet_v2")
    report = _compile_report(entry.model("tiny"), entry.example_input("tiny", 1), target="c", tol=1e-3)
    assert len(_block_kernels(report)) >= 10
    assert _block_kernels(report)[0]["spec"]["attrs"]["pattern"] == "stem"  # with its first block
    assert not [d for d in report.decisions if d.pass_name == "lower" and "block" in d.message]


@pytest.mark.parametrize(
    "cin, mid, cout, stride, tf_padding, hw, batch, channels_last",
    [
        (3, 32, 16, 2, True, (17, 15), 1, False),  # MobileNetV2's: TF padding, an RGB image, odd sizes
        (3, 32, 16, 2, False, (16, 16), 2, False),  # symmetric padding, a batch
        (3, 24, 24, 1, False, (9, 7), 1, True),  # stride 1, a channels-last input, partial vectors
        (7, 20, 10, 2, False, (11, 12), 3, False),  # 63 im2col values a pixel, at the limit
    ],
)
def test_a_stem_joins_the_block_it_feeds_and_matches_eager(
    cin, mid, cout, stride, tf_padding, hw, batch, channels_last
):
    torch.manual_seed(0)
    model = _randomize_bn(Stem(cin, mid, cout, stride, tf_padding))
    x = _nhwc(batch, cin, *hw) if channels_last else torch.randn(batch, cin, *hw)
    report = _compile_report(model, x, target="c")
    (block,) = _block_kernels(report)
    assert block["spec"]["attrs"]["pattern"] == "stem"
    assert not [k for k in report.kernels if k["kind"] != "block"]  # the stem has no kernel of its own
    (decision,) = [d for d in report.decisions if d.pass_name == "block_fusion" and d.accepted]
    assert decision.message == f"stem [3x3 {cin}->{mid}, dw3x3/s1 {mid}, 1x1 {mid}->{cout}]"


@pytest.mark.parametrize("band", [1, 3])
def test_stem_bands_match_eager_on_any_thread_count(band, tmp_path):
    model = _randomize_bn(Stem(3, 20, 12, 2, tf_padding=True))
    _block_matches_on_any_thread_count(model, torch.randn(2, 3, 13, 19), tmp_path, band=band)


def test_a_stem_over_many_channels_stays_a_convolution_of_its_own(monkeypatch):
    """Past `STEM_MAX_K` im2col values a pixel (8 channels x 3 x 3 = 72) the
    first layer is an ordinary convolution, and the block keeps its two
    layers; so does every stem with the switch off."""
    from fusecc.passes import block_fusion

    def fused(model, x):
        report = _compile_report(_randomize_bn(model), x, target="c")
        (decision,) = [d for d in report.decisions if d.pass_name == "block_fusion" and d.accepted]
        return decision.message, [k["kind"] for k in report.kernels]

    x = torch.randn(1, 8, 12, 12)
    assert fused(Stem(8, 16, 8), x) == ("inverted residual [dw3x3/s1 16, 1x1 16->8]", ["conv", "block"])
    monkeypatch.setattr(block_fusion, "FUSE_STEMS", False)
    x = torch.randn(1, 3, 12, 12)
    assert fused(Stem(3, 16, 8), x) == ("inverted residual [dw3x3/s1 16, 1x1 16->8]", ["conv", "block"])


def test_block_fusion_off_runs_every_layer_alone():
    model = _randomize_bn(InvertedResidual(16, 16, 4))
    report = _compile_report(model, _nhwc(1, 16, 8, 8), target="c", passes={"block_fusion": False})
    assert not _block_kernels(report) and len([k for k in report.kernels if k["kind"] == "conv"]) == 3


def test_residual_blocks_the_kernels_do_not_take_are_refused_with_the_reason():
    """A residual add closing over a 1x1 then a 3x3 convolution: no block pattern."""

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))

        def forward(self, x):
            return x + self.body(x)

    report = _compile_report(Odd().eval(), _nhwc(1, 8, 8, 8), target="c")
    assert not _block_kernels(report)
    refused = [d for d in report.decisions if d.pass_name == "block_fusion" and not d.accepted]
    assert refused and "not an inverted residual, bottleneck or basic block" in refused[0].message
    assert "1x1 8->8, 3x3 8->8" in refused[0].message


def test_a_block_fed_a_channels_first_graph_input_runs_its_layers():
    """The layout pass converts such an input inside the first layer's
    group, so the block has no channels-last input to read."""
    torch.manual_seed(0)
    model = _randomize_bn(InvertedResidual(16, 16, 4))
    report = _compile_report(model, torch.randn(1, 16, 8, 8), target="c")
    assert not _block_kernels(report)
    refused = [d.message for d in report.decisions if d.pass_name == "block_fusion" and not d.accepted]
    assert "layer 1 (1x1 16->64) converts its input inside its own kernel" in refused


def test_basic_blocks_fuse_but_run_as_their_layers_untuned():
    report = _compile_report(_randomize_bn(BasicBlock(8)), _nhwc(1, 8, 8, 8), target="c")
    (decision,) = [d for d in report.decisions if d.pass_name == "block_fusion" and d.accepted]
    assert decision.message == "basic [3x3 8->8, 3x3 8->8] + residual"
    assert not _block_kernels(report) and [k["kind"] for k in report.kernels] == ["conv", "conv"]
    assert any("untuned, two dense convolutions" in d.message for d in report.decisions if d.pass_name == "lower")


@pytest.mark.parametrize("band", [1, 2])
@pytest.mark.parametrize("c, hw, batch", [(16, (9, 7), 2), (20, (5, 6), 1), (8, (1, 1), 2)])
def test_basic_block_kernel_matches_eager_on_any_thread_count(c, hw, batch, band, tmp_path):
    """The block kernel itself (the tuner's choice where it wins): odd sizes,
    partial vectors, a 1x1 map that is all padding."""
    model = _randomize_bn(BasicBlock(c))
    _block_matches_on_any_thread_count(model, _nhwc(batch, c, *hw), tmp_path, band=band)


def test_an_intermediate_used_outside_stays_out_of_the_block():
    class Leaky(nn.Module):
        def __init__(self, escape: int):
            super().__init__()
            self.block = _randomize_bn(InvertedResidual(8, 8, 4))
            self.escape = escape

        def forward(self, x):
            inner = self.block.body[: self.escape](x)  # an intermediate escapes the block
            return self.block(x), inner.mean()

    # the expand output escapes: depthwise + project still fuse, without it
    report = _compile_report(Leaky(3).eval(), _nhwc(1, 8, 6, 6), target="c")
    (decision,) = [d for d in report.decisions if d.pass_name == "block_fusion" and d.accepted]
    assert "[dw3x3/s1 32, 1x1 32->8]" in decision.message
    # the depthwise output escapes: no block, and the dump says why
    report = _compile_report(Leaky(6).eval(), _nhwc(1, 8, 6, 6), target="c")
    assert not _block_kernels(report)
    refused = [d for d in report.decisions if d.pass_name == "block_fusion" and not d.accepted]
    assert any("is used outside the block" in d.message for d in refused), refused


@pytest.mark.parametrize("target", ["aten", "tvm-llvm"])
def test_targets_without_block_kernels_run_the_layers(target):
    if target == "tvm-llvm":
        pytest.importorskip("tvm")
    model = _randomize_bn(InvertedResidual(8, 8, 2))
    report = _compile_report(model, _nhwc(1, 8, 6, 6), target=target, kernels_required=False)
    assert not _block_kernels(report)
    assert any(d.pass_name == "lower" and "layers compiled separately" in d.message for d in report.decisions)


def test_profile_records_the_roofline_of_blocks_and_their_layers(tmp_path):
    """options profile=True: every kernel timed against measured peaks; a
    block also against its layers as separate kernels; inspect shows it."""
    from rich.console import Console

    from fusecc.inspect import inspect_dump

    model = _randomize_bn(InvertedResidual(16, 16, 6))
    report = _compile_report(
        model, _nhwc(1, 16, 28, 28), target="c", profile=True, dump_dir=str(tmp_path / "dump"),
        cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    (block,) = _block_kernels(report)
    profile = block["profile"]
    assert profile["peaks"]["gflops"] > 1 and profile["peaks"]["gbps"] > 0.1
    assert len(profile["layers"]) == 3 and profile["unfused_us"] > 0
    # 2 * pixels * (16*96 + 9*96 + 96*16) flops (plus the epilogues), whatever the time
    assert profile["mflop"] == pytest.approx(2 * 28 * 28 * (16 * 96 + 9 * 96 + 96 * 16) / 1e6, rel=0.15)
    # the block moves less than its layers together (the expanded tensor stays inside)
    assert profile["mbytes"] < sum(layer["mbytes"] for layer in profile["layers"])
    assert 0 < profile["efficiency"] and profile["bound"] in ("compute", "memory")
    console = Console(record=True, width=200)
    inspect_dump(tmp_path / "dump", console=console)
    text = console.export_text()
    assert "efficiency (peaks measured here" in text and "fusion gain" in text and "layer" in text


@pytest.mark.parametrize(
    "cin, cout, expand, stride, hw, batch",
    [
        (24, 24, 6, 1, (7, 7), 1),  # residual; 144 expanded channels: 3 panels of 48 over the threads
        (16, 24, 6, 2, (15, 13), 2),  # stride 2, odd sizes, two images
        (10, 10, 3, 1, (9, 7), 1),  # partial vectors in every layer
        (32, 16, 1, 1, (8, 8), 1),  # no expand layer: the ranges are whole vectors of the input
    ],
)
def test_rows_and_channel_splits_match_eager_on_any_thread_count(cin, cout, expand, stride, hw, batch, tmp_path):
    """Both ways of sharing a block between threads - runs of output rows
    (halo recomputed) and ranges of expanded channels (partial project sums
    added after a barrier) - with 1, 2 and 3 threads and bands of 1-4 rows."""
    torch.manual_seed(0)
    model = _randomize_bn(InvertedResidual(cin, cout, expand, stride))
    for split in ("rows", "channels"):
        for band in (1, 4):
            _block_matches_on_any_thread_count(model, _nhwc(batch, cin, *hw), tmp_path, split=split, band=band)


@pytest.mark.parametrize(
    "block",
    [
        "inverted_residual_s1",  # 9 columns: steps of 8 + 1 (or 7 + 2, 4 + 4 + 1, ...)
        "inverted_residual_s2",  # stride 2: windows overlap by one column
        "convnext",  # 7x7, 20 channels: a partial vector
    ],
)
def test_depthwise_pixels_side_by_side_match_eager(block, tmp_path):
    """The block's depthwise middle with every choice of output pixels computed
    side by side (each filter row's weights and each input vector loaded once
    for all of them), with the remainder of a row as a shorter step."""
    from fusecc.codegen.c.common import DEPTHWISE_PIXELS

    torch.manual_seed(0)
    model, x = {
        "inverted_residual_s1": lambda: (_randomize_bn(InvertedResidual(16, 16, 3)), _nhwc(1, 16, 6, 9)),
        "inverted_residual_s2": lambda: (_randomize_bn(InvertedResidual(16, 24, 3, 2)), _nhwc(2, 16, 9, 19)),
        "convnext": lambda: (_convnext(20), _nhwc(1, 20, 5, 9)),
    }[block]()
    for pixels in DEPTHWISE_PIXELS:
        _block_matches_on_any_thread_count(model, x, tmp_path, dw_pixels=pixels)


def _block_matches_on_any_thread_count(model, x, tmp_path, **params):
    """The model's one block kernel, built with ``params`` over its defaults,
    run with 1, 2 and 3 threads against eager."""
    from fusecc.codegen import c as c_codegen
    from fusecc.targets.cpu import HostCTarget

    from conftest import assert_close, recorded_block

    _group, spec, args, ref = recorded_block(model, x)
    constants = {o.arg_index: args[o.arg_index] for o in spec.operands if o.constant}
    target = HostCTarget(cache_dir=str(tmp_path))
    params = {**c_codegen.default_params(spec, target.dialect), **params}
    kernel = target._build(spec, c_codegen.render(spec, target.dialect, params), constants, target.cache(), 3)
    for nthreads in (1, 2, 3):
        torch.set_num_threads(nthreads)
        try:
            out = kernel.run(*args)
        finally:
            torch.set_num_threads(2)
        assert_close(out, ref, 1e-4)


# -- ConvNeXt blocks ----------------------------------------------------------------------------------


def _convnext(c, **kwargs):
    from fusecc.bench.blocks import ConvNeXtBlock

    torch.manual_seed(0)
    return ConvNeXtBlock(c, **kwargs).eval()


@pytest.mark.parametrize(
    "c, hw, batch, kwargs",
    [
        (16, (9, 7), 2, {}),  # GELU, 7x7, odd sizes, two images
        (20, (5, 6), 3, {}),  # 20 and 80 channels: partial vectors in every layer
        (24, (8, 8), 1, {"act": nn.ReLU, "kernel": 3}),  # another activation and kernel size
        (16, (1, 1), 2, {}),  # 1x1 map: the 7x7 window is all padding
    ],
)
def test_convnext_block_is_one_kernel_and_matches_eager(c, hw, batch, kwargs):
    report = _compile_report(_convnext(c, **kwargs), _nhwc(batch, c, *hw), target="c")
    (block,) = _block_kernels(report)
    assert [layer["kind"] for layer in block["spec"]["attrs"]["layers"]] == ["conv2d", "reduction", "gemm", "gemm"]
    (decision,) = [d for d in report.decisions if d.pass_name == "block_fusion" and d.accepted]
    assert decision.message.startswith("ConvNeXt block [") and decision.message.endswith("+ residual")
    assert [k["kind"] for k in report.kernels] == ["block"]  # layer norm, GEMMs and the residual add are inside


def test_convnext_blocks_of_the_real_model_fuse():
    """Hugging Face's ConvNextLayer (its permutes, LayerNorm, layer scale)."""
    from fusecc.bench import zoo

    entry = zoo.get("convnext_tiny")
    report = _compile_report(entry.model("tiny"), entry.example_input("tiny", 2), target="c", tol=1e-3)
    assert len(_block_kernels(report)) == 2  # the tiny config has two stages of one block


@pytest.mark.parametrize("split", ["rows", "channels"])
@pytest.mark.parametrize("band", [1, 3])
def test_convnext_bands_and_splits_match_eager_on_any_thread_count(band, split, tmp_path):
    """Rows: each thread its runs of rows. Channels: every thread filters
    and normalizes the band, then runs its panels of the expanded channels
    (80: five panels of 16, unevenly over 3 threads) and adds partial
    project sums."""
    _block_matches_on_any_thread_count(_convnext(20), _nhwc(2, 20, 9, 7), tmp_path, band=band, split=split)


def test_convnext_block_with_weights_beyond_l2_runs_its_layers_untuned():
    """384 channels: 4.7 MB of GEMM weights, re-read per band from L3 - the
    layers one by one are the default (the tuner may still pick the block)."""
    report = _compile_report(_convnext(384), _nhwc(1, 384, 4, 4), target="c")
    assert not _block_kernels(report)
    assert any("untuned, its GEMM weights" in d.message for d in report.decisions if d.pass_name == "lower")
    assert sorted(k["kind"] for k in report.kernels) == ["conv", "gemm", "gemm", "reduction"]


def test_an_escaping_normalized_tensor_refuses_the_convnext_block():
    class Leaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = _convnext(16)

        def forward(self, x):
            b = self.block
            y = b.norm(b.dwconv(x).permute(0, 2, 3, 1))
            z = b.pwconv2(b.act(b.pwconv1(y)))
            return x + (b.gamma * z).permute(0, 3, 1, 2), y.sum()

    report = _compile_report(Leaky().eval(), _nhwc(1, 16, 6, 6), target="c")
    assert not _block_kernels(report)
    refused = [d.message for d in report.decisions if d.pass_name == "block_fusion" and not d.accepted]
    assert any(m.startswith("ConvNeXt block: no expand GEMM") and "used outside" in m for m in refused), refused


def test_a_residual_add_after_a_permute_joins_the_gemm_epilogue():
    """vertical_fusion lets a GEMM epilogue go through a permute (ConvNeXt's
    NHWC -> NCHW before its residual add); two images, so the output's index
    map onto the GEMM rows exists only in its channels-last layout."""

    class Tail(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(24, 16)

        def forward(self, x, h):
            return x + torch.relu(self.linear(h)).permute(0, 3, 1, 2)

    torch.manual_seed(0)
    x, h = _nhwc(2, 16, 5, 3), torch.randn(2, 5, 3, 24)
    with torch.no_grad(), collect_reports() as reports:
        check_against_eager(Tail().eval(), x, h, target="c")
    (report,) = reports
    assert [k["kind"] for k in report.kernels] == ["gemm"]
    (group,) = report.groups
    assert "aten.permute.default" in group["members"] and "aten.add.Tensor" in group["members"]


# -- ResNet bottlenecks -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cin, mid, stride, hw, batch",
    [
        (32, 8, 1, (9, 7), 2),  # identity shortcut, odd sizes, two images
        (16, 8, 2, (9, 8), 1),  # stride 2: the shortcut is a strided 1x1 projection (a kernel of its own)
        (40, 10, 1, (5, 6), 1),  # 10 and 40 channels: partial vectors in every layer
    ],
)
def test_bottleneck_is_one_kernel_and_matches_eager(cin, mid, stride, hw, batch):
    model = _randomize_bn(Bottleneck(cin, mid, stride))
    report = _compile_report(model, _nhwc(batch, cin, *hw), target="c")
    (block,) = _block_kernels(report)
    assert block["spec"]["attrs"]["pattern"] == "bottleneck"
    (decision,) = [d for d in report.decisions if d.pass_name == "block_fusion" and d.accepted]
    assert decision.message.startswith(f"bottleneck [1x1 {cin}->{mid}, 3x3 {mid}->{mid}, 1x1 {mid}->{4 * mid}]")
    shortcut = [k["kind"] for k in report.kernels if k["kind"] != "block"]
    assert shortcut == (["conv"] if stride != 1 else [])


@pytest.mark.parametrize("band", [1, 3])
def test_bottleneck_bands_match_eager_on_any_thread_count(band, tmp_path):
    model = _randomize_bn(Bottleneck(48, 12))  # identity shortcut: the block's only runtime input is x
    _block_matches_on_any_thread_count(model, _nhwc(2, 48, 11, 9), tmp_path, band=band)


def test_resnet50_bottlenecks_fuse():
    from fusecc.bench import zoo

    entry = zoo.get("resnet50")
    report = _compile_report(entry.model("tiny"), entry.example_input("tiny", 2), target="c", tol=1e-3)
    assert _block_kernels(report)
    assert {b["spec"]["attrs"]["pattern"] for b in _block_kernels(report)} == {"bottleneck"}


@pytest.mark.parametrize("dialect", ["avx512", "avx2", "neon", "scalar"])
def test_block_gemm_tiles_fit_the_registers_and_pad_least(dialect):
    """A block layer's register tile: MR x NV accumulators + NV loaded
    vectors + the broadcast fit the dialect's registers, the panel pads the
    channels least, and among equal padding the tile with the most FMAs per
    loaded operand wins - on 16-register AVX2 not the widest panel, whose 2
    rows ran MobileNetV2's blocks slower than their layers."""
    import math

    from fusecc.codegen.c.block.common import panel_tile
    from fusecc.codegen.c.dialects import DIALECTS

    d = DIALECTS[dialect]
    for channels in (16, 24, 32, 96, 144, 160, 320, 576, 960, 1000):
        mr, nv = panel_tile(channels, d)
        assert mr * nv + nv + 1 <= d.vector_registers
        vectors = math.ceil(channels / d.vl)
        pad = math.ceil(vectors / nv) * nv - vectors
        assert pad == min(math.ceil(vectors / v) * v - vectors for v in (1, 2, 3, 4) if v <= vectors)
    if dialect == "avx2":
        assert panel_tile(576, d) == (4, 3) and panel_tile(320, d) == (6, 2)
    if d.vector_registers == 32:
        assert panel_tile(576, d) == (6, 4)


@pytest.mark.parametrize("dialect", ["avx512", "avx2", "neon"])
def test_a_7x7_inverted_residual_with_large_1x1_layers_runs_as_its_layers_on_avx512(dialect):
    """MobileNetV2's 7x7 blocks (160-960-160 at batch 1): untuned, on AVX-512
    - where it was measured - the layers beat the block kernel; elsewhere,
    and for small channel counts on the same map, the block stays."""
    from conftest import recorded_block
    from fusecc.codegen.c import block
    from fusecc.codegen.c.dialects import DIALECTS

    large = recorded_block(_randomize_bn(InvertedResidual(160, 160, 6)), _nhwc(1, 160, 7, 7))[1]
    small = recorded_block(_randomize_bn(InvertedResidual(16, 16, 6)), _nhwc(1, 16, 7, 7))[1]
    reason = block.unfused_by_default(large, DIALECTS[dialect])
    assert (reason is not None) == (dialect == "avx512") and (reason is None or "on 49 pixels" in reason)
    assert block.unfused_by_default(small, DIALECTS[dialect]) is None


def test_a_strided_block_on_a_small_map_splits_by_rows_one_band_per_thread(tmp_path):
    """MobileNetV2's 28x28 -> 14x14 block at batch 1 on two threads: its
    expand reads 14 input rows a thread, so it splits by rows (halo: one
    input row) in one band per thread; a stride-1 14x14 block still splits
    its channels. The kernel so configured matches eager on 1-3 threads."""
    from conftest import recorded_block
    from fusecc.codegen.c.block import inverted_residual
    from fusecc.codegen.c.dialects import DIALECTS

    def block(cin, cout, stride, hw):
        return _randomize_bn(InvertedResidual(cin, cout, 6, stride)), _nhwc(1, cin, hw, hw)

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        strided = recorded_block(*block(32, 64, 2, 28))[1]
        plain = recorded_block(*block(64, 64, 1, 14))[1]
        params = inverted_residual.default_params(strided, DIALECTS["avx512"])
        assert (params["split"], params["band"]) == ("rows", 7)
        assert inverted_residual.default_params(plain, DIALECTS["avx512"])["split"] == "channels"
    finally:
        torch.set_num_threads(threads)
    _block_matches_on_any_thread_count(*block(32, 64, 2, 28), tmp_path, split="rows", band=7)


def test_a_channel_split_that_would_leave_one_thread_more_panels_splits_by_rows(tmp_path):
    """MobileNetV2's 96-576-96 blocks at 14x14 on two threads: 576 expanded
    channels are 9 panels of 64 on AVX-512, 5 for one thread and 4 for the
    other, so the block splits by rows, in bands its L2 budget allows; the
    64-384-64 block's 6 panels divide evenly and it keeps the channel split.
    The row-split kernel matches eager on 1-3 threads."""
    from conftest import recorded_block
    from fusecc.codegen.c.block import banded, inverted_residual
    from fusecc.codegen.c.dialects import DIALECTS

    def block(cin, hw=14):
        return _randomize_bn(InvertedResidual(cin, cin, 6)), _nhwc(1, cin, hw, hw)

    avx512 = DIALECTS["avx512"]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        uneven, even = recorded_block(*block(96))[1], recorded_block(*block(64))[1]
        params = inverted_residual.default_params(uneven, avx512)
        assert banded.split_units(uneven, inverted_residual.walk(uneven), params["tiles"], avx512.vl)[2] == 9
        assert params["split"] == "rows"
        assert params["band"] == banded.band_rows(uneven, inverted_residual.walk(uneven)) < 7
        assert inverted_residual.default_params(even, avx512)["split"] == "channels"
    finally:
        torch.set_num_threads(threads)
    _block_matches_on_any_thread_count(*block(96), tmp_path, split="rows", band=params["band"])


def test_skinny_1x1_layers_run_channel_major_with_one_vector_tiles():
    """The 7x7 block's layers on this machine: where the dialect is AVX-512,
    its 1x1 layers (49 pixels, 600 KiB of weights each) run channel-major
    with 14 x 1-vector tiles; all match eager."""
    from fusecc.targets.cpu import HostCTarget

    report = _compile_report(_randomize_bn(InvertedResidual(160, 160, 6)), _nhwc(1, 160, 7, 7), target="c")
    convs = [k for k in report.kernels if k["kind"] == "conv"]
    if HostCTarget().dialect.name != "avx512":
        assert _block_kernels(report) and not convs
        return
    assert not _block_kernels(report) and len(convs) == 3
    pointwise = [k["params"] for k in convs if k["params"]["algo"] == "nhwc_gemm"]
    assert len(pointwise) == 2 and all(
        p["schedule"] == "channel_major" and tuple(p["tile"]) == (14, 1) for p in pointwise
    ), pointwise


@pytest.mark.parametrize(
    "model, shape",
    [
        (lambda: InvertedResidual(24, 24, 6), (1, 24, 12, 12)),  # 24-channel project (MobileNetV2's 56x56 blocks)
        (lambda: InvertedResidual(16, 24, 6, stride=2), (1, 16, 14, 14)),
        (lambda: BasicBlock(40), (1, 40, 9, 9)),  # dense 3x3 layers accumulating their taps, 2.5 vectors
    ],
    ids=["inverted_residual_24", "inverted_residual_s2_24", "basic_40"],
)
def test_block_gemms_compute_a_half_empty_last_vector_in_half_vectors(model, shape, tmp_path):
    """On AVX-512, a block GEMM whose one panel ends in a vector of 8
    channels or fewer (24 = 1.5 vectors, 40 = 2.5) computes that vector in
    256-bit halves; a full panel (32 channels) does not. The kernels match
    eager on 1-3 threads wherever they run."""
    from conftest import recorded_block
    from fusecc.codegen import c as c_codegen
    from fusecc.codegen.c.dialects import DIALECTS
    from fusecc.codegen.c.gemm import half_last_vector
    from fusecc.targets.cpu import HostCTarget

    assert half_last_vector(24, 2, 16) and half_last_vector(40, 3, 16) and half_last_vector(8, 1, 16)
    assert not half_last_vector(32, 2, 16) and not half_last_vector(28, 2, 16) and not half_last_vector(24, 3, 8)
    block_model, x = _randomize_bn(model()), _nhwc(*shape)
    spec = recorded_block(block_model, x)[1]
    def half_fmas(spec) -> int:  # calls, not the prelude's definition
        return c_codegen.render(spec, DIALECTS["avx512"]).text.count(" = vhfma(")

    assert half_fmas(spec) > 0
    full = recorded_block(_randomize_bn(InvertedResidual(32, 32, 6)), _nhwc(1, 32, 12, 12))[1]
    assert half_fmas(full) == 0
    if HostCTarget().dialect.name == "avx512":
        _block_matches_on_any_thread_count(block_model, x, tmp_path)


@pytest.mark.parametrize("finish", [True, False], ids=["registers", "buffered"])
def test_block_gemms_run_light_epilogues_on_their_registers(finish, tmp_path, monkeypatch):
    """An inverted residual's 1x1 layers (bias + ReLU6, K in one block) run
    their epilogue on the accumulators for panels of whole vectors and
    through the tile buffer for the rest; a ConvNeXt block's GELU layer keeps
    the buffer (its constants would take the accumulators' registers), its
    last layer (layer scale, residual) does not. Both paths match eager on
    1-3 threads."""
    from conftest import recorded_block
    from fusecc.codegen import c as c_codegen
    from fusecc.codegen.c import gemm
    from fusecc.codegen.c.dialects import DIALECTS

    monkeypatch.setattr(gemm, "FINISH_IN_REGISTERS", finish)
    block_model, x = _randomize_bn(InvertedResidual(24, 40, 6)), _nhwc(1, 24, 10, 10)  # 144 = 3 whole panels
    spec = recorded_block(block_model, x)[1]
    source = c_codegen.render(spec, DIALECTS["avx512"]).text
    assert ("_expand_f8(" in source) == finish and "_expand_u8(" in source
    convnext = c_codegen.render(recorded_block(_convnext(64), _nhwc(1, 64, 8, 8))[1], DIALECTS["avx512"]).text
    assert "_up_u1(" in convnext and "_up_f1(" not in convnext  # GELU
    assert ("_down_f1(" in convnext) == finish  # layer scale + residual
    _block_matches_on_any_thread_count(block_model, x, tmp_path)


def test_skinny_1x1_layers_take_weights_up_to_two_megabytes():
    """MobileNetV2's last 1x1 layer (320 -> 1280 at 7x7, 1.6 MB) counts as
    skinny; ResNet-50's 512 -> 2048 at 7x7 (4 MB), a 3x3 layer and a 14x14
    map do not."""
    from fusecc.codegen.c.conv import skinny_pointwise

    def geo(cin, cout, hw=7, k=1):
        return {"n": 1, "P": hw * hw, "K": cin * k * k, "cout": cout, "kh": k, "kw": k}

    assert skinny_pointwise(geo(320, 1280)) and skinny_pointwise(geo(960, 320))
    assert not skinny_pointwise(geo(512, 2048))
    assert not skinny_pointwise(geo(160, 160, k=3))
    assert not skinny_pointwise(geo(96, 576, hw=14))


def test_convnext_budget_is_this_machines_l2(tmp_path):
    """The ConvNeXt kernel sizes its bands to one core's L2 as sysfs reports
    it (skipping L1 and instruction caches), 1 MB where nothing is reported."""
    from fusecc.codegen.c.block.convnext import l2_bytes

    for name, level, kind, size in [("index0", 1, "Data", "32K"), ("index1", 1, "Instruction", "32K"),
                                    ("index2", 2, "Unified", "512K"), ("index3", 3, "Unified", "8192K")]:  # fmt: skip
        (tmp_path / name).mkdir()
        for field, value in (("level", level), ("type", kind), ("size", size)):
            (tmp_path / name / field).write_text(f"{value}\n")
    assert l2_bytes(cpu=tmp_path) == 512 * 1024
    (tmp_path / "index2" / "size").write_text("2M\n")
    assert l2_bytes(cpu=tmp_path) == 2 * 1024 * 1024
    assert l2_bytes(cpu=tmp_path / "absent") == 1024 * 1024
