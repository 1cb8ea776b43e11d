"""CUDA kernels: rendered for real zoo groups, compiled with nvcc for sm_80
and sm_90 everywhere, and run against eager kernel by kernel and as whole
models - on the CPU by the emulator everywhere (the "cuda-emulated"
target), and on the GPU where one is present (the "cuda" target)."""

import dataclasses
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import assert_close, recorded_block
from fusecc.bench.blocks import BasicBlock, Bottleneck, ConvNeXtBlock, InvertedResidual, Stem, _randomize_bn
from fusecc.codegen.cuda import KINDS, emulate, render
from fusecc.runtime.cache import CompileCache
from fusecc.targets.cuda import CudaTarget, nvcc_toolchain, run_on_gpu
from fusecc.targets.toolchain import build_in_parallel
from test_attention import Attention
from test_dialects import _inputs, groups

needs_nvcc = pytest.mark.skipif(
    not (shutil.which("nvcc") or Path("/usr/local/cuda/bin/nvcc").exists()), reason="nvcc not installed"
)
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


class KernelRunner:
    """Runs rendered kernels on CPU operands, one tensor per spec operand:
    under the emulator ("emulator") or on the GPU ("gpu"); outputs come
    back on the CPU."""

    def __init__(self, where: str, directory: str):
        self.where, self.directory = where, directory

    def prepare(self, kernels: list[tuple]) -> None:
        """Build many (spec, source) pairs in parallel ahead of running them."""
        if self.where == "gpu":
            target, cache = CudaTarget(), CompileCache(self.directory)
            build_in_parallel(lambda k: target.build(k[0], k[1], cache), kernels)
        else:
            build_in_parallel(lambda k: emulate.build(k[0], k[1], self.directory), kernels)

    def __call__(self, spec, source, inputs):
        if self.where == "gpu":
            return run_on_gpu(spec, source, inputs, self.directory)
        return emulate.run(spec, source, inputs, self.directory)


@pytest.fixture(params=["emulator", pytest.param("gpu", marks=[needs_gpu, needs_nvcc])])
def run_kernel(request, tmp_path) -> KernelRunner:
    return KernelRunner(request.param, str(tmp_path))


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
    assert {k[2] for k in kinds} >= {"inverted_residual", "stem", "bottleneck", "convnext", "basic"}
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


def test_cuda_kernels_match_eager(run_kernel):
    """Every CUDA kernel of the zoo groups, run by the emulator (a coroutine
    per CUDA thread, barriers honoured) or on the GPU, against the group's
    own ATen subgraph (fp32 1e-4)."""
    kinds = set()
    renderable = _renderable()
    run_kernel.prepare([(spec, source) for _, _, spec, source in renderable])
    for group, constants, spec, source in renderable:
        args = _inputs(group, constants, spec)
        with torch.no_grad():
            ref = group(*args)
        ref = list(ref) if isinstance(ref, (tuple, list)) else [ref]
        out = run_kernel(spec, source, [args[o.arg_index] for o in spec.operands])
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
        (lambda: Stem(3, 32, 16, 2, tf_padding=True), (1, 3, 19, 17)),  # a stem: 3x3/s2 over a channels-first image
        (lambda: Stem(3, 24, 24, 1), (2, 3, 11, 9)),  # stride 1, symmetric padding, halos across tiles
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
def test_cuda_block_kernels_match_eager(block, shape, run_kernel):
    torch.manual_seed(0)
    model = _randomize_bn(block()).eval()  # (ConvNeXt blocks have no batch norm)
    x = torch.randn(shape)
    x = x if getattr(model, "image_input", False) else x.contiguous(memory_format=torch.channels_last)
    _group, spec, args, ref = recorded_block(model, x)
    source = render(spec)
    assert_close(run_kernel(spec, source, [args[o.arg_index] for o in spec.operands]), ref, 1e-4)


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
def test_cuda_attention_matches_eager(case, run_kernel):
    """The CUDA attention kernel (dense, causal, masked; and the kept blocks
    of a sparsity plan against a dense masked reference)."""
    from test_sparse_attention import masked_reference

    spec, args = _attention_case(*case)
    out = run_kernel(spec, render(spec), list(args))
    if case[-1]:
        ref = masked_reference(*args, SPARSE_HEADS[: case[1]], case[-1], case[5])
    else:
        with torch.no_grad():
            ref = Attention(case[5])(*args)
    assert_close(out, ref, 1e-5)


def test_cuda_attention_reads_shared_gqa_heads(run_kernel):
    """GQA: each key head serves 3 query heads, read past the group's repeat."""
    from test_attention import GroupedQueryAttention, recorded_attention

    torch.manual_seed(0)
    q, k, v = torch.randn(1, 6, 40, 16), torch.randn(1, 2, 40, 16), torch.randn(1, 40, 2, 16)
    spec, _, ref = recorded_attention(GroupedQueryAttention(3, causal=True), q, k, v)
    assert spec.attrs["kv_repeat"] == 3
    out = run_kernel(spec, render(spec), [q, k, v.transpose(1, 2)])  # v as the group reads it
    assert_close(out, ref, 1e-5)


def test_cuda_attention_rows_with_every_key_masked_match_eager(run_kernel):
    """A query row masked everywhere by -inf outputs zeros, one masked
    everywhere by float32's minimum averages its values: both as ATen's."""
    from test_attention import Attention, recorded_attention

    torch.manual_seed(0)
    q, k, v = torch.randn(2, 2, 24, 16), torch.randn(2, 2, 24, 16), torch.randn(2, 2, 24, 16)
    mask = torch.zeros(2, 1, 24, 24)
    mask[1, :, :3] = float("-inf")
    mask[1, :, 3:5] = torch.finfo(torch.float32).min
    spec, _, ref = recorded_attention(Attention(), q, k, v, mask)
    out = run_kernel(spec, render(spec), [q, k, v, mask])
    assert_close(out, ref, 1e-5)
    assert not out[1, :, :3].any() and out[1, :, 3:5].abs().sum() > 0


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


@pytest.mark.parametrize(
    "target", [pytest.param("cuda-emulated", id="emulator"), pytest.param("cuda", marks=[needs_gpu, needs_nvcc], id="gpu")]
)
@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2", "convnext_tiny", "bert_base", "gpt2"])
def test_cuda_target_matches_eager(name, target):
    """The whole cuda target - lowering, rendering, block kernels of every
    pattern, constants, output layouts - against eager: with its kernels
    run on the CPU by the emulator ("cuda-emulated"), or on the GPU."""
    from fusecc.bench import zoo
    from fusecc.compiler import collect_reports

    device = "cuda" if target == "cuda" else "cpu"
    entry = zoo.get(name)
    model = entry.model("tiny").to(device)
    x = entry.example_input("tiny", 2).to(device)
    torch._dynamo.reset()
    # cuDNN convolutions default to TF32 (10-bit mantissas): the reference must be fp32
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        ref = model(x)
    with torch.no_grad(), collect_reports() as reports:
        # every group as fusecc's kernel, none left to PyTorch's faster ones
        options = {"target": target, "fallback": "error", "library_check": False}
        out = torch.compile(model, backend="fusecc", options=options)(x)
    assert_close(out.cpu(), ref.cpu(), 1e-4 if target == "cuda-emulated" else 1e-3)
    kinds = {k["kind"] for r in reports for k in r.kernels}
    assert kinds and all(k["dialect"] == target for r in reports for k in r.kernels)
    # residual blocks ran as one CUDA kernel each: every pattern under emulation, inverted residuals on the GPU
    if name == "mobilenet_v2" or (target == "cuda-emulated" and name in ("resnet18", "resnet50", "convnext_tiny")):
        assert "block" in kinds, kinds
    if name == "bert_base":
        assert "attention" in kinds, kinds  # captured on either device (CUDA traces SDPA's math decomposition)


@needs_gpu
@needs_nvcc
def test_cuda_kernels_launch_from_a_thread_that_never_touched_cuda():
    """The driver API needs a current context per thread; a kernel compiled
    on the main thread is called from a fresh one."""
    from fusecc.bench import zoo

    entry = zoo.get("resnet18")
    model, x = entry.model("tiny").cuda(), entry.example_input("tiny", 1).cuda()
    torch._dynamo.reset()
    with torch.no_grad():
        compiled = torch.compile(model, backend="fusecc", options={"target": "cuda", "fallback": "error"})
        ref = compiled(x)
    results = []

    def call():
        with torch.no_grad():
            results.append(compiled(x))
        torch.cuda.synchronize()

    thread = threading.Thread(target=call)
    thread.start()
    thread.join()
    assert len(results) == 1
    assert_close(results[0].cpu(), ref.cpu(), 1e-5)


def test_cuda_target_fuses_only_the_block_patterns_measured_to_win(tmp_path):
    """Blocks with dense layers lost to their own layers on an H100; the
    cuda target keeps them unfused (the reason is the group's decision),
    inverted residuals run as one kernel."""
    from fusecc.errors import KeepUnfused
    from fusecc.options import Options
    from fusecc.targets.cuda import FUSED_BY_DEFAULT, EmulatedCudaTarget

    class DefaultBlocks(EmulatedCudaTarget):
        fused_blocks = FUSED_BY_DEFAULT

    by_pattern = {}
    for group, constants, spec in groups():
        if spec.kind == "block":
            by_pattern.setdefault(spec.attrs["pattern"], (group, constants))
    assert {"inverted_residual", "stem", "bottleneck", "basic", "convnext"} <= set(by_pattern)
    patterns = sorted(by_pattern)
    results = DefaultBlocks().compile_groups([by_pattern[p] for p in patterns], Options(cache_dir=str(tmp_path)))
    for pattern, result in zip(patterns, results):
        if pattern in FUSED_BY_DEFAULT:
            assert isinstance(result, torch.nn.Module), result
        else:
            assert isinstance(result, KeepUnfused) and pattern in str(result), result


class _TimedEmulation:
    """The emulated cuda target with made-up times: PyTorch's kernels take
    ``aten_us`` and a generated one ``kernel_us[kind]``, so the choice between
    them runs without a GPU."""

    def __init__(self, kernel_us: dict, aten_us: float):
        from fusecc import targets
        from fusecc.targets.cuda import EmulatedCudaTarget

        class Timed(EmulatedCudaTarget):
            name = "test-cuda-timed"
            weighs_against_library = True

            def device(self):
                return torch.device("cpu")

            def _weigh(inner, group, constants, kernel):
                inner._kind = kernel.spec.kind
                return super()._weigh(group, constants, kernel)

            def time_us(inner, fn):
                fn()  # both callables must run on the arguments made for them
                inner._calls = getattr(inner, "_calls", 0) + 1
                return kernel_us[inner._kind] if inner._calls % 2 else aten_us

        self.target = Timed()
        targets.register(self.target)


@pytest.mark.parametrize("kernel_us, chosen", [(1.0, "kernels"), (100.0, "aten")])
def test_cuda_target_runs_pytorchs_kernels_where_they_measure_faster(kernel_us, chosen, tmp_path, capsys):
    """With `library_check`, each generated kernel is timed against its
    group's ATen ops while compiling; the slower one is dropped, a block
    that loses is unfused into layers (each weighed in turn), and the result
    matches eager either way."""
    from fusecc.bench import zoo
    from fusecc.compiler import collect_reports

    timed = _TimedEmulation({"block": kernel_us, "conv2d": kernel_us, "gemm": kernel_us, "reduction": kernel_us,
                             "elementwise": kernel_us}, aten_us=10.0)  # fmt: skip
    entry = zoo.get("mobilenet_v2")
    model, x = entry.model("tiny"), entry.example_input("tiny", 1)
    torch._dynamo.reset()
    with torch.no_grad(), collect_reports() as reports:
        ref = model(x)
        options = {"target": timed.target.name, "fallback": "error", "dump_dir": str(tmp_path)}
        out = torch.compile(model, backend="fusecc", options=options)(x)
    assert_close(out, ref, 1e-4)
    kernels = [k for r in reports for k in r.kernels]
    decisions = [d.message for r in reports for d in r.decisions if d.pass_name == "lower"]
    if chosen == "kernels":
        assert kernels and all(k["library_check"] == {"kernel_us": 1.0, "aten_us": 10.0} for k in kernels)
        assert "block" in {k["kind"] for k in kernels}
        from rich.console import Console

        from fusecc.inspect import inspect_dump

        inspect_dump(tmp_path, console=Console(width=250, file=sys.stdout))
        assert "vs ATen" in capsys.readouterr().out  # `fusecc inspect` shows what the check measured
    else:
        assert not kernels
        assert any("block kernel on" in m and "measured faster on this GPU" in m for m in decisions), decisions
        assert any(m.startswith("runs as ATen: PyTorch's own kernels measured faster") for m in decisions), decisions


@needs_gpu
@needs_nvcc
def test_cuda_target_with_default_options_matches_eager_on_gpu():
    """Default options: each kernel weighed against PyTorch's on the GPU
    (`library_check`); whichever runs, the model matches eager."""
    from fusecc.bench import zoo
    from fusecc.compiler import collect_reports

    entry = zoo.get("mobilenet_v2")
    model, x = entry.model("tiny").cuda(), entry.example_input("tiny", 2).cuda()
    torch._dynamo.reset()
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        ref = model(x)
        with collect_reports() as reports:
            out = torch.compile(model, backend="fusecc", options={"target": "cuda"})(x)
    assert_close(out.cpu(), ref.cpu(), 1e-3)
    assert all("library_check" in k for r in reports for k in r.kernels)
