"""CUDA kernels: rendered for real zoo groups, compiled with nvcc for sm_80
and sm_90 everywhere, run on the CPU by the emulator against eager
everywhere (kernel by kernel, and whole models through the
"cuda-emulated" target), and run on the GPU against eager where one is
present."""

import dataclasses
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import assert_close, recorded_block
from fusecc.bench.blocks import BasicBlock, Bottleneck, ConvNeXtBlock, InvertedResidual, _randomize_bn
from fusecc.codegen.cuda import KINDS, emulate, render
from fusecc.targets.cuda import nvcc_toolchain
from test_attention import Attention
from test_dialects import _inputs, groups

needs_nvcc = pytest.mark.skipif(
    not (shutil.which("nvcc") or Path("/usr/local/cuda/bin/nvcc").exists()), reason="nvcc not installed"
)


def _renderable():
    """One CUDA source per zoo group the CUDA renderer takes (every kind but
    pooling, every block pattern)."""
    out = []
    for group, constants, spec in groups():
        if spec.kind not in KINDS:  # pools run as ATen on this target (`CudaTarget.group_kinds`)
            continue
        out.append((group, constants, spec, render(spec)))
    return out


@needs_nvcc
def test_cuda_kernels_compile_for_sm80_and_sm90():
    kinds = set()
    sources = []
    for _group, _constants, spec, source in _renderable():
        key = (spec.kind, len(spec.outputs), spec.attrs.get("pattern"))
        if key in kinds and len(sources) > 12:
            continue
        kinds.add(key)
        sources.append(source)
    # one translation unit per kernel, built in one nvcc call each for both architectures
    toolchain = nvcc_toolchain(output="-cubin")
    sources += [render(spec) for spec in _attention_specs()]  # dense, causal, masked, sparse
    assert {s.symbol.split("_")[2] for s in sources} >= {"elementwise", "reduction", "gemm", "conv2d", "block",
                                                        "attention"}  # fmt: skip
    assert {k[2] for k in kinds} >= {"inverted_residual", "bottleneck", "convnext", "basic"}
    with tempfile.TemporaryDirectory() as tmp:
        for i, src in enumerate(sources):
            cu = Path(tmp) / f"k{i}.cu"
            cu.write_text(src.text)
            for arch in ("80", "90"):
                out = Path(tmp) / f"k{i}_{arch}.cubin"
                tc = nvcc_toolchain(archs=(arch,), output="-cubin")
                cmd = [tc.cc, "-O3", "-std=c++17", f"-arch=sm_{arch}", "-cubin", str(cu), "-o", str(out)]
                result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
                assert result.returncode == 0, f"{src.symbol} for sm_{arch}:\n{result.stderr[-3000:]}"
                assert out.stat().st_size > 0
    assert toolchain.fingerprint()


def test_cuda_kernels_match_eager_under_emulation(tmp_path):
    """Every CUDA kernel of the zoo groups, run on the CPU by the emulator
    (a coroutine per CUDA thread, barriers honoured), against the group's
    own ATen subgraph (fp32 1e-4)."""
    kinds = set()
    for group, constants, spec, source in _renderable():
        args = _inputs(group, constants, spec)
        with torch.no_grad():
            ref = group(*args)
        ref = list(ref) if isinstance(ref, (tuple, list)) else [ref]
        out = emulate.run(spec, source, [args[o.arg_index] for o in spec.operands], str(tmp_path))
        out = list(out) if isinstance(out, tuple) else [out]
        for o, r in zip(out, ref):
            assert_close(o, r, 1e-4)
        kinds.add(spec.kind)
    assert kinds == {"elementwise", "reduction", "gemm", "conv2d", "block", "attention"}


@pytest.mark.parametrize(
    "block, shape",
    [
        (lambda: InvertedResidual(24, 24, 6, 1), (1, 24, 7, 7)),  # residual, one tile
        (lambda: InvertedResidual(16, 24, 6, 2), (2, 16, 33, 31)),  # stride 2, tiles cut by the edge, two images
        (lambda: InvertedResidual(10, 10, 3, 1), (1, 10, 9, 7)),  # 30 expanded channels: one short chunk
        (lambda: InvertedResidual(32, 16, 1, 1), (1, 32, 8, 8)),  # no expand layer
        (lambda: InvertedResidual(16, 16, 6, 1), (1, 16, 17, 10)),  # 96 channels: three chunks; halos across tiles
        (lambda: Bottleneck(64, 16), (1, 64, 9, 11)),  # dense 3x3 middle, identity shortcut
        (lambda: Bottleneck(48, 24, 2), (2, 48, 13, 12)),  # stride 2 with the projection shortcut
        (lambda: Bottleneck(256, 64), (1, 256, 7, 9)),  # 64 reduced channels: a smaller tile
        (lambda: ConvNeXtBlock(16), (2, 16, 9, 7)),  # 7x7 depthwise, layer norm, GELU GEMMs, layer scale
        (lambda: ConvNeXtBlock(20), (3, 20, 5, 6)),  # 80 expanded channels: a short chunk
        (lambda: ConvNeXtBlock(24, act=nn.ReLU, kernel=3), (1, 24, 8, 8)),  # another activation and kernel
        (lambda: ConvNeXtBlock(96), (1, 96, 12, 10)),  # several tiles, halos across them
        (lambda: BasicBlock(16), (1, 16, 10, 10)),  # two dense 3x3 layers, identity shortcut
        (lambda: BasicBlock(24), (2, 24, 9, 7)),  # tiles cut by the map's edge, two images
        (lambda: BasicBlock(48), (1, 48, 7, 7)),  # 48 input channels: two chunks, the second short
    ],
)
def test_cuda_block_kernels_match_eager_under_emulation(block, shape, tmp_path):
    torch.manual_seed(0)
    model = _randomize_bn(block()).eval()  # (ConvNeXt blocks have no batch norm)
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    _group, spec, args, ref = recorded_block(model, x)
    source = render(spec)
    assert_close(emulate.run(spec, source, [args[o.arg_index] for o in spec.operands], str(tmp_path)), ref, 1e-4)


ATTENTION_CASES = [  # (b, h, lq, lk, d, causal, mask shape, plan block)
    (2, 3, 37, 45, 24, False, None, None),  # tiles cut by the lengths
    (1, 2, 70, 70, 16, True, None, None),  # causal: tiles above the diagonal skipped
    (2, 3, 37, 101, 8, True, None, None),  # causal, more keys than queries (top-left, as ATen)
    (2, 2, 33, 47, 32, False, (2, 1, 33, 47), None),  # a mask broadcast over the heads
    (1, 4, 100, 100, 16, True, None, 32),  # a sparsity plan: band, sinks, columns, skip
]
SPARSE_HEADS = [
    {"kind": "local", "window": 20},
    {"kind": "a_shape", "sink": 8, "window": 10},
    {"kind": "vertical", "columns": [40]},
    {"kind": "skip"},
]


def _attention_case(b, h, lq, lk, d, causal, mask, block):
    from conftest import GroupRecorder

    from fusecc.kernels.lower import lower_group

    torch.manual_seed(lq + lk)
    args = (torch.randn(b, h, lq, d), torch.randn(b, h, lk, d), torch.randn(b, h, lk, d))
    args += (torch.randn(mask),) if mask else ()
    recorder = GroupRecorder()
    recorder._target.sparse_attention = True
    options = {"target": recorder.name}
    if block:
        options["attention_sparsity"] = {"plan": {"block": block, "layers": [{"heads": SPARSE_HEADS[:h]}]}}
    with recorder, torch.no_grad():
        torch._dynamo.reset()
        torch.compile(Attention(causal), backend="fusecc", options=options)(*args)
    ((group, _),) = [(g, c) for g, c in recorder.items if g.kind == "attention"]
    return lower_group(group), args


def _attention_specs():
    return [_attention_case(*case)[0] for case in ATTENTION_CASES]


@pytest.mark.parametrize("case", ATTENTION_CASES, ids=lambda c: f"L{c[2]}x{c[3]}{'c' if c[5] else ''}")
def test_cuda_attention_matches_eager_under_emulation(case, tmp_path):
    """The CUDA attention kernel (dense, causal, masked; and the kept blocks
    of a sparsity plan against a dense masked reference), run by the emulator."""
    from test_sparse_attention import masked_reference

    spec, args = _attention_case(*case)
    out = emulate.run(spec, render(spec), list(args), str(tmp_path))
    if case[-1]:
        ref = masked_reference(*args, SPARSE_HEADS[: case[1]], case[-1], case[5])
    else:
        with torch.no_grad():
            ref = Attention(case[5])(*args)
    assert_close(out, ref, 1e-5)


def test_cuda_attention_reads_shared_gqa_heads_under_emulation(tmp_path):
    """GQA: each key head serves 3 query heads, read past the group's repeat."""
    from test_attention import GroupedQueryAttention, recorded_attention

    torch.manual_seed(0)
    q, k, v = torch.randn(1, 6, 40, 16), torch.randn(1, 2, 40, 16), torch.randn(1, 40, 2, 16)
    spec, _, ref = recorded_attention(GroupedQueryAttention(3, causal=True), q, k, v)
    assert spec.attrs["kv_repeat"] == 3
    out = emulate.run(spec, render(spec), [q, k, v.transpose(1, 2)], str(tmp_path))  # v as the group reads it
    assert_close(out, ref, 1e-5)


def test_emulator_reports_a_barrier_only_some_threads_reach(tmp_path):
    """A kernel whose threads disagree about __syncthreads would hang a GPU;
    the emulator says so instead of returning numbers."""
    spec = next(s for _, _, s in groups() if s.kind == "elementwise")
    good = render(spec)
    body = good.text.replace(
        "  for (long idx", "  if (threadIdx.x < 7) return;\n  __syncthreads();\n  for (long idx", 1
    )
    bad = dataclasses.replace(good, text=body)
    args = [torch.randn(o.shape) for o in spec.operands]
    with pytest.raises(RuntimeError, match="disagree about a __syncthreads barrier"):
        emulate.run(spec, bad, args, str(tmp_path))


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2", "convnext_tiny", "bert_base", "gpt2"])
def test_cuda_target_matches_eager_under_emulation(name):
    """The whole cuda target - lowering, rendering, block kernels of every
    pattern, constants, output layouts - with its kernels run on the CPU by
    the emulator ("cuda-emulated"), against eager."""
    from fusecc.bench import zoo
    from fusecc.compiler import collect_reports

    entry = zoo.get(name)
    model = entry.model("tiny")
    x = entry.example_input("tiny", 2)
    torch._dynamo.reset()
    with torch.no_grad(), collect_reports() as reports:
        ref = model(x)
        out = torch.compile(model, backend="fusecc", options={"target": "cuda-emulated", "fallback": "error"})(x)
    assert_close(out, ref, 1e-4)
    kinds = {k["kind"] for r in reports for k in r.kernels}
    assert all(k["dialect"] == "cuda-emulated" for r in reports for k in r.kernels)
    if name in ("resnet18", "resnet50", "mobilenet_v2", "convnext_tiny"):
        assert "block" in kinds, kinds  # residual blocks ran as one CUDA kernel each


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "bert_base", "gpt2"])
def test_cuda_target_matches_eager_on_gpu(name):
    from fusecc.bench import zoo

    entry = zoo.get(name)
    model = entry.model("tiny").cuda()
    x = entry.example_input("tiny", 2).cuda()
    with torch.no_grad():
        ref = model(x)
        out = torch.compile(model, backend="fusecc", options={"target": "cuda", "fallback": "error"})(x)
    assert_close(out.cpu(), ref.cpu(), 1e-3)
