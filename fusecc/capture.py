"""Capture helpers shared by the Dynamo and torch.export entry points.

Both entries end with the same thing: a functional ATen-level FX graph whose
nodes carry FakeTensor metadata (``meta["val"]``). For inference, parameters
and buffers are *frozen*: their placeholders become ``get_attr`` constants
so BN folding, weight concatenation and (later) packing happen once at
compile time - the same assumption TorchInductor's freezing makes. Unlike
plain freezing, `FrozenInputs` notices when a frozen tensor is replaced or
changed in place and the runtime then recompiles, so a stale weight can
never produce a wrong answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch.fx import GraphModule

from .graph.constants import register_constant

# ATen decompositions fusecc asks for during capture. Empty on purpose: the
# graph keeps ops at the level PyTorch's own CompositeImplicit decomposition
# leaves them (linear -> t + addmm, layer_norm -> native_layer_norm), which is
# the level the passes pattern-match and the kernels are written for.
DECOMPOSITIONS: dict = {}


def export_decompositions() -> dict:
    """The table that brings a torch.export program to the level the Dynamo
    path produces: CompositeImplicit ops decomposed (as AOTAutograd always
    does), core-ATen decompositions not applied."""
    table = torch.export.default_decompositions().materialize()
    try:
        from torch._export.utils import _collect_all_valid_cia_ops
    except ImportError:  # a newer torch moved it: core ATen is a safe superset
        return table
    cia = _collect_all_valid_cia_ops()
    return {op: fn for op, fn in table.items() if op in cia} | DECOMPOSITIONS


def readable_constant_name(source_name: str) -> str:
    """'L_self_modules_encoder_modules_layer_0_parameters_weight_' ->
    'encoder_layer_0_weight' (for readable dumps)."""
    name = re.sub(r"^(l_self_|l_)", "", source_name, flags=re.IGNORECASE)
    name = re.sub(r"(modules|parameters|buffers)_", "", name)
    name = re.sub(r"[^0-9a-zA-Z_]", "_", name).strip("_")
    return name or "const"


def freeze_placeholders(gm: GraphModule, values: dict[int, torch.Tensor], names: Sequence[str] = ()) -> GraphModule:
    """Replace the placeholders at the given input positions with constants."""
    placeholders = gm.graph.find_nodes(op="placeholder")
    for index, value in values.items():
        ph = placeholders[index]
        hint = readable_constant_name(names[index]) if index < len(names) else ph.name
        attr = register_constant(gm, value.detach(), f"frozen_{hint}_")
        with gm.graph.inserting_before(ph):
            const = gm.graph.get_attr(attr)
        const.meta = dict(ph.meta)
        ph.replace_all_uses_with(const)
        gm.graph.erase_node(ph)
    gm.graph.lint()
    gm.recompile()
    return gm


class FrozenInputs:
    """Which flat inputs are frozen, and a cheap check that they are still
    the same tensors with the same contents (identity + version counter)."""

    def __init__(self, indices: Sequence[int], args: Sequence[object]):
        self.indices = list(indices)
        self._snapshot(args)

    def _snapshot(self, args: Sequence[object]) -> None:
        self.tensors = [args[i] for i in self.indices]
        self.versions = [t._version for t in self.tensors]

    def values(self) -> dict[int, torch.Tensor]:
        return dict(zip(self.indices, self.tensors))

    def unchanged(self, args: Sequence[object]) -> bool:
        for i, t, v in zip(self.indices, self.tensors, self.versions):
            a = args[i]
            if a is not t or a._version != v:
                return False
        return True

    def refresh(self, args: Sequence[object]) -> None:
        self._snapshot(args)
