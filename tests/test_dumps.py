"""IR dumps and `fusecc inspect`."""

import json
import subprocess
import sys

import torch
from torch import nn

from fusecc.inspect import inspect_dump


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.q, self.k = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x))).mean((2, 3))
        return torch.sort(self.q(h) * self.k(h), dim=-1)[0]


def compile_with_dump(tmp_path):
    with torch.no_grad():
        torch.compile(Block().eval(), backend="fusecc", options={"dump_dir": str(tmp_path), "fallback": "silent"})(
            torch.randn(2, 3, 8, 8)
        )
    (graph_dir,) = list(tmp_path.iterdir())
    return graph_dir


def test_dump_contents(tmp_path):
    d = compile_with_dump(tmp_path)
    names = {p.name for p in d.iterdir()}
    assert {"00_captured.py", "groups.txt", "final.py", "summary.json"} <= names
    changed = sorted(n for n in names if n[:2].isdigit() and n.endswith(".py") and n != "00_captured.py")
    assert any("fold_bn" in n for n in changed) and any("vertical_fusion" in n for n in changed)
    assert all((d / n.replace(".py", ".diff")).exists() for n in changed)
    assert "_native_batch_norm_legit_no_training" in (d / "00_captured.py").read_text()
    fold = next(n for n in changed if "fold_bn" in n)
    assert "_native_batch_norm_legit_no_training" not in (d / fold).read_text()

    summary = json.loads((d / "summary.json").read_text())
    assert summary["kind"] == "inference" and summary["frozen_constants"] > 0
    assert [p["name"] for p in summary["passes"]][:2] == ["constant_fold", "remove_noops"]
    assert all("seconds" in p for p in summary["passes"])
    kinds = {g["kind"] for g in summary["groups"]}
    assert {"conv", "gemm"} <= kinds
    assert summary["fallbacks"][0]["subject"] == "aten.sort.default"

    groups = (d / "groups.txt").read_text()
    # the input's conversion to channels-last is the convolution's prologue, not a copy of its own
    assert "fused_conv_0" in groups
    assert "members: aten.clone.default -> aten.convolution.default -> aten.relu.default" in groups


def test_captured_graph_is_runnable_python(tmp_path):
    d = compile_with_dump(tmp_path)
    source = (d / "00_captured.py").read_text()
    compile(source, "00_captured.py", "exec")  # readable *and* valid Python


def test_inspect_report(tmp_path, capsys):
    compile_with_dump(tmp_path)
    from rich.console import Console

    console = Console(width=200, file=sys.stdout)
    inspect_dump(tmp_path, console=console)
    out = capsys.readouterr().out
    for expected in (
        "graph_",
        "fold_bn",
        "folded into convolution",
        "fused groups",
        "fused_conv_0",
        "aten.sort.default",
        "fusecc has no lowering",
        "horizontal_fusion",
        # lowering's graph-wide decisions, and pass names shown literally (not eaten as rich markup)
        "runtime",
        "[memory_plan] 2 kernel outputs in one",
        "[scratch] 1 kernel uses scratch; the largest need is fused_conv_0's",
        "[pool_fusion] fused_conv_0: not a 1x1 stride-1 unpadded convolution",
    ):
        assert expected in out, expected
    # a first layer reading the graph input is not a residual add
    assert "[block_fusion]" not in out


def test_inspect_cli_and_diff(tmp_path):
    compile_with_dump(tmp_path)
    run = subprocess.run(
        [sys.executable, "-m", "fusecc.cli", "inspect", str(tmp_path), "--diff", "fold_bn"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "-" in run.stdout and "_native_batch_norm_legit_no_training" in run.stdout


def test_inspect_cli_missing_dir_is_a_clear_error(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "fusecc.cli", "inspect", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "does not exist" in run.stderr


def test_verbose_logs_every_pass(capfd):
    with torch.no_grad():
        torch.compile(Block().eval(), backend="fusecc", options={"verbose": True, "fallback": "silent"})(
            torch.randn(2, 3, 8, 8)
        )
    err = capfd.readouterr().err
    assert "[fusecc]" in err and "fold_bn" in err and "vertical_fusion" in err and "fused groups" in err
