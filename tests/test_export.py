"""The torch.export entry: fusecc.compile_exported."""

import pytest
import torch
from torch import nn

from conftest import assert_close
import fusecc


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.register_buffer("scale", torch.tensor(0.5), persistent=False)
        self.q, self.k = nn.Linear(6, 6), nn.Linear(6, 6)

    def forward(self, x, *, bias=None):
        h = torch.relu(self.bn(self.conv(x))).mean((2, 3)) * self.scale
        out = {"q": self.q(h), "k": self.k(h)}
        if bias is not None:
            out["q"] = out["q"] + bias
        return out


@pytest.mark.parametrize("freeze", [True, False])
def test_compile_exported_matches_eager(freeze):
    m = Net().eval()
    x, b = torch.randn(2, 3, 8, 8), torch.randn(6)
    ep = torch.export.export(m, (x,), {"bias": b})
    compiled = fusecc.compile_exported(ep, {"freeze": freeze, "debug": True})
    out, ref = compiled(x, bias=b), m(x, bias=b)
    assert set(out) == {"q", "k"}
    for key in out:
        assert_close(out[key], ref[key], 1e-4)
    report = compiled.report
    assert report.kind == "export"
    assert (report.frozen_constants > 0) == freeze
    assert report.groups, "expected fused groups"


def test_static_export_rejects_other_shapes_clearly():
    m = Net().eval()
    ep = torch.export.export(m, (torch.randn(2, 3, 8, 8),))
    compiled = fusecc.compile_exported(ep)
    with pytest.raises(ValueError, match=r"input 'x' has size 4 in dim 0; the program was exported for a static 2"):
        compiled(torch.randn(4, 3, 8, 8))


class TwoInputs(nn.Module):
    def forward(self, a, b):
        return a * 2 + b


def test_a_call_structured_unlike_the_export_is_refused_clearly():
    """Plain positional tensors take the call's fast path; anything else is
    checked against the exported structure."""
    a, b = torch.randn(3), torch.randn(3)
    compiled = fusecc.compile_exported(torch.export.export(TwoInputs(), (a, b)))
    assert_close(compiled(a, b), a * 2 + b, 1e-6)
    for bad_call in (lambda: compiled(a, (b,)), lambda: compiled(a), lambda: compiled(a, b=b)):
        with pytest.raises(TypeError, match="compiled program expects inputs structured as"):
            bad_call()


def test_dynamic_export_accepts_other_batch_sizes():
    m = Net().eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(m, (torch.randn(2, 3, 8, 8),), dynamic_shapes={"x": {0: batch}})
    compiled = fusecc.compile_exported(ep)
    for n in (1, 5, 9):
        x = torch.randn(n, 3, 8, 8)
        assert_close(compiled(x)["q"], m(x)["q"], 1e-4)


def test_compile_exported_rejects_non_programs():
    with pytest.raises(TypeError, match="takes a torch.export.ExportedProgram, got Net"):
        fusecc.compile_exported(Net())


def test_training_mode_export_is_refused_clearly():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    ep = torch.export.export(m, (torch.randn(2, 3, 6, 6),))
    with pytest.raises(fusecc.UnsupportedError, match="mutates .*running_mean"):
        fusecc.compile_exported(ep)
