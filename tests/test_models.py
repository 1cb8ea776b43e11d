"""Whole models built from `transformers` configs (random weights, small
widths) compiled with backend="fusecc" and compared to eager
(fp32: 1e-3 relative to the output's magnitude; bf16: 5e-2)."""

import pytest
import torch

from conftest import MODEL_TOL, TARGETS, assert_close, compile_fusecc
from fusecc import targets
from fusecc.bench import zoo
from fusecc.compiler import collect_reports

EXPECTED_GROUP_KINDS = {
    "resnet18": {"conv"},  # basic blocks: conv+bn(+add)+relu
    "resnet50": {"conv"},  # bottleneck blocks
    "mobilenet_v2": {"conv"},  # inverted residuals
    "convnext_tiny": {"gemm"},
    "vit_small": {"gemm"},
    "bert_base": {"gemm", "reduction"},
    "gpt2": {"gemm"},
    "llama": {"gemm", "reduction", "pointwise"},
}


@pytest.mark.parametrize("target", [*TARGETS, "tvm-llvm"])
@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_zoo_model_matches_eager(name, target):
    entry = zoo.get(name)
    model = entry.model("tiny")
    x = entry.example_input("tiny", batch=2)
    with torch.no_grad(), collect_reports() as reports:
        ref = model(x)
        out = compile_fusecc(model, target=target)(x)
    assert_close(out, ref, MODEL_TOL[torch.float32])
    (report,) = reports
    assert not report.fallbacks, report.fallbacks
    if target == "c":  # every fused group became a generated kernel (a block run as its layers: one each)
        unfused = {d.subject for d in report.decisions if "layers compiled separately" in d.message}
        expected = sum(len(g["attrs"]["layers"]) if g["name"] in unfused else 1 for g in report.groups)
        # a pool over an unfused block's output runs in its last layer's kernel
        expected -= sum(1 for d in report.decisions if d.pass_name == "pool_fusion" and "last layer of" in d.message)
        assert len(report.kernels) == expected > 0
    elif target != "aten":  # blocks run as their layers' kernels; kinds the target lacks run as ATen
        kinds = targets.get(target).group_kinds
        compiled = [g for g in report.groups if kinds is None or g["kind"] in kinds]
        assert len(report.kernels) >= len(compiled) > 0
    assert EXPECTED_GROUP_KINDS[name] <= {g["kind"] for g in report.groups}
    if entry.family == "cnn":
        assert not any("batch_norm" in m for g in report.groups for m in g["members"]), "BN was not folded"


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", ["resnet18", "bert_base"])
def test_zoo_model_bf16(name, target):
    entry = zoo.get(name)
    model = entry.model("tiny").to(torch.bfloat16)
    x = entry.example_input("tiny", batch=2)
    if x.is_floating_point():
        x = x.to(torch.bfloat16)
    with torch.no_grad():
        ref = model(x)
        out = compile_fusecc(model, target=target, fallback="silent")(x)
    assert_close(out, ref, MODEL_TOL[torch.bfloat16])


def test_resnet_basic_and_bottleneck_blocks_fuse_residual_epilogues():
    for name in ("resnet18", "resnet50"):
        entry = zoo.get(name)
        with torch.no_grad(), collect_reports() as reports:
            compile_fusecc(entry.model("tiny"))(entry.example_input("tiny", 1))
        # block fusion groups each residual block; the add and ReLU are its last layer's epilogue
        pattern = {"resnet18": "basic", "resnet50": "bottleneck"}[name]
        blocks = [g for g in reports[0].groups if g["kind"] == "block" and g["attrs"]["pattern"] == pattern]
        assert blocks, name
        assert all({"aten.add.Tensor", "aten.relu.default"} <= set(b["members"]) for b in blocks), name
        torch._dynamo.reset()
