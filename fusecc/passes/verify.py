"""Debug-mode checks after every pass: the graph lints, shape propagation
runs through it with fake tensors, and its outputs keep the shapes and
dtypes they had before the pass. A failure names the pass."""

from __future__ import annotations

import unittest.mock

import torch
from torch._guards import detect_fake_mode
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx import GraphModule
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from ..errors import PassError
from ..report import PassRecord
from .manager import PassContext


def propagate_shapes(gm: GraphModule) -> None:
    """Re-run shape/dtype propagation with fake tensors, refreshing every
    node's ``meta["val"]``. Constants (real tensors) are allowed in."""
    inputs = [p.meta.get("val") for p in gm.graph.find_nodes(op="placeholder")]
    if any(v is None for v in inputs):
        raise ValueError("a placeholder has no recorded value (meta['val']) to propagate from")
    mode = detect_fake_mode(inputs) or FakeTensorMode(allow_non_fake_inputs=True)
    with unittest.mock.patch.object(mode, "allow_non_fake_inputs", True):
        FakeTensorProp(gm, mode).propagate_dont_convert_inputs(*inputs)


def output_signature(gm: GraphModule) -> list[tuple[tuple[int, ...], torch.dtype] | None]:
    outs = gm.graph.output_node().args[0]
    sig = []
    for o in outs if isinstance(outs, (list, tuple)) else [outs]:
        val = o.meta.get("val") if isinstance(o, torch.fx.Node) else None
        sig.append((tuple(val.shape), val.dtype) if isinstance(val, torch.Tensor) else None)
    return sig


class DebugVerifier:
    """Pass instrument: lint + shape propagation + output check after each pass."""

    def __init__(self) -> None:
        self._expected: list | None = None

    def before_pass(self, name: str, gm: GraphModule, ctx: PassContext) -> None:
        if self._expected is None:
            self._expected = output_signature(gm)

    def after_pass(self, name: str, gm: GraphModule, ctx: PassContext, record: PassRecord) -> None:
        # checks only: the recorded values go back afterwards, so debug mode
        # compiles the same program (re-propagated, a fused group's outputs
        # can get other strides than its kernel writes)
        recorded = {node: node.meta.get("val") for node in gm.graph.nodes}
        try:
            gm.graph.lint()
            propagate_shapes(gm)
            got = output_signature(gm)
        except Exception as e:  # noqa: BLE001 - any failure here means the pass broke the graph
            raise PassError(name, f"{type(e).__name__}: {e}") from e
        finally:
            for node, val in recorded.items():
                if val is None:
                    node.meta.pop("val", None)
                else:
                    node.meta["val"] = val
        if got != self._expected:
            raise PassError(name, f"graph outputs changed from {self._expected} to {got}")
