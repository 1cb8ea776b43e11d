"""CUDA kernels: rendered for real zoo groups and compiled with nvcc for
sm_80 and sm_90 everywhere; run against eager where a GPU is present."""

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

from conftest import assert_close
from fusecc.codegen.cuda import KINDS, render
from fusecc.targets.cuda import nvcc_toolchain
from test_dialects import groups

needs_nvcc = pytest.mark.skipif(
    not (shutil.which("nvcc") or Path("/usr/local/cuda/bin/nvcc").exists()), reason="nvcc not installed"
)


@needs_nvcc
def test_cuda_kernels_compile_for_sm80_and_sm90():
    kinds = set()
    sources = []
    for _group, _constants, spec in groups():
        if spec.kind not in KINDS:  # blocks: the cuda target runs their layers
            continue
        if (spec.kind, len(spec.outputs)) in kinds and len(sources) > 12:
            continue
        kinds.add((spec.kind, len(spec.outputs)))
        sources.append(render(spec))
    # one translation unit per kernel, built in one nvcc call each for both architectures
    toolchain = nvcc_toolchain(output="-cubin")
    assert {s.symbol.split("_")[2] for s in sources} >= {"elementwise", "reduction", "gemm", "conv2d"}
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
