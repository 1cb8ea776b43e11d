"""The `fusecc` command."""

import subprocess
import sys

from fusecc import options


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "fusecc.cli", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_every_option_with_its_env_var_passes_and_targets():
    result = run_cli("--help")
    assert result.returncode == 0
    for row in options.describe():
        assert row["name"] in result.stdout and row["env"] in result.stdout
    assert "passes, in order: constant_fold" in result.stdout and "targets: aten" in result.stdout


def test_explain_command_on_a_zoo_model():
    result = run_cli("explain", "resnet18", "--size", "tiny", "--verbose")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "fused group" in result.stdout and "conv x" in result.stdout
    assert "aten.convolution.default -> aten.add.Tensor -> aten.relu.default" in result.stdout


def test_unknown_model_is_rejected():
    result = run_cli("explain", "resnet1000")
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_bench_forwards_its_options_to_the_harness():
    # options after `bench` belong to the harness (argparse.REMAINDER alone rejects them)
    result = run_cli("bench", "--overhead")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "fusecc (c kernel)" in result.stdout and "overhead vs eager" in result.stdout


def test_calibrate_command_writes_a_plan_and_prints_every_head(tmp_path):
    plan_path = tmp_path / "plan.json"
    result = run_cli("calibrate", "bert_base", "--size", "tiny", "--samples", "1", "--out", str(plan_path))
    assert result.returncode == 0, result.stderr[-2000:]
    from fusecc.sparsity.plan import Plan

    plan = Plan.load(plan_path)
    assert len(plan.layers) == 2 and all(len(heads) == 4 for heads in plan.layers)  # the tiny BERT
    assert "attention plan for bert_base" in result.stdout and "written to" in result.stdout
