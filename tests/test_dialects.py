"""Every C dialect on real kernels: groups lowered from the zoo models are
rendered for NEON (cross-compiled for aarch64 and run under qemu-aarch64),
AVX2 and portable C (run natively), fed the same inputs, and compared to
the group's own ATen subgraph (fp32: 1e-4 relative to the output's magnitude).
"""

import shutil

import pytest
import torch

from conftest import GroupRecorder, assert_close
from fusecc.bench import zoo
from fusecc.codegen import c as c_codegen
from fusecc.codegen.c.dialects import DIALECTS
from fusecc.kernels.lower import lower_group
from fusecc.targets.harness import run_standalone
from fusecc.targets.toolchain import Toolchain, aarch64_cross, host_dialect_and_flags


def _groups(models):
    with GroupRecorder() as recorder:
        for name in models:
            entry = zoo.get(name)
            torch._dynamo.reset()
            with torch.no_grad():
                torch.compile(entry.model("tiny"), backend="fusecc", options={"target": recorder.name})(
                    entry.example_input("tiny", 2)
                )
    # one representative group per distinct kernel shape
    seen, picked = set(), []
    for group, constants in recorder.items:
        spec = lower_group(group)
        algo = spec.attrs.get("algo") or c_codegen.default_params(spec, DIALECTS["scalar"]).get("algo")
        key = (spec.kind, spec.attrs.get("reduction") or spec.attrs.get("pattern"), algo,
               tuple(o.pool for o in spec.outputs), spec.signature())  # fmt: skip
        if key[:4] in seen and len(picked) > 40:
            continue
        seen.add(key[:4])
        picked.append((group, constants, spec))
    return picked


GROUPS = None


def groups():
    global GROUPS
    if GROUPS is None:
        GROUPS = _groups(["mobilenet_v2", "resnet18", "resnet50", "convnext_tiny", "bert_base", "gpt2", "llama"])
    return GROUPS


def _inputs(group, constants, spec):
    torch.manual_seed(0)
    args = []
    for i, ph in enumerate(group.graph.find_nodes(op="placeholder")):
        if i in constants:
            args.append(constants[i])
            continue
        val = ph.meta["val"]
        t = torch.empty_strided(tuple(val.shape), tuple(val.stride()), dtype=val.dtype)
        t.copy_(torch.rand(val.shape) > 0.5 if val.dtype is torch.bool else torch.randn(val.shape))
        args.append(t)
    return args


def _check(dialect: str, toolchain: Toolchain, runner: tuple[str, ...]):
    checked = 0
    for group, constants, spec in groups():
        args = _inputs(group, constants, spec)
        with torch.no_grad():
            ref = group(*args)
        ref = list(ref) if isinstance(ref, (tuple, list)) else [ref]
        variants = [None]
        if spec.kind == "block":  # every way of sharing a block between threads
            default = c_codegen.default_params(spec, DIALECTS[dialect])
            splits = c_codegen.tunables(spec, DIALECTS[dialect])["split"]
            variants = [{**default, "split": split} for split in splits]
        for params in variants:
            source = c_codegen.render(spec, dialect, params)
            by_operand = {i: args[o.arg_index] for i, o in enumerate(spec.operands)}
            consts = c_codegen.prepare(
                spec, source.params, {i: t for i, t in by_operand.items() if spec.operands[i].constant}
            )
            by_operand.update(consts)
            ws = c_codegen.workspace_bytes(spec, source.params, 2)
            run = run_standalone(spec, source, toolchain, by_operand, ws, runner=runner)
            assert run.stdout.strip() == "ok"
            for out, expected in zip(run.outputs, ref):
                assert_close(out, expected, 1e-4)
        checked += 1
    assert checked >= 10


have_cross = shutil.which("aarch64-linux-gnu-gcc") and shutil.which("qemu-aarch64")


@pytest.mark.skipif(not have_cross, reason="needs gcc-aarch64-linux-gnu and qemu-user (.ci/run installs them)")
def test_neon_kernels_under_qemu_match_eager():
    _check("neon", aarch64_cross(dotprod=True), ("qemu-aarch64", "-cpu", "max"))


@pytest.mark.parametrize("dialect", ["avx2", "scalar"])
def test_host_dialects_match_eager(dialect):
    best, flags = host_dialect_and_flags()
    if dialect == "avx2" and best not in ("avx512", "avx2"):
        pytest.skip("this CPU has no AVX2")
    flags = tuple(f for f in flags if not f.startswith(("-march", "-mtune")))
    if dialect == "avx2":
        flags += ("-march=x86-64-v3",)
    _check(dialect, Toolchain("gcc", flags), ())


def test_every_block_pattern_is_among_the_checked_kernels():
    patterns = {spec.attrs["pattern"] for _, _, spec in groups() if spec.kind == "block"}
    assert patterns == {"inverted_residual", "stem", "convnext", "bottleneck", "basic"}


def test_winograd_convolutions_are_among_the_checked_kernels():
    algos = {c_codegen.default_params(spec, DIALECTS["neon"]).get("algo") for _, _, spec in groups()}
    assert "nhwc_winograd" in algos


def test_pooled_convolutions_are_among_the_checked_kernels():
    assert any(o.pool == "mean" for _, _, spec in groups() for o in spec.outputs)
