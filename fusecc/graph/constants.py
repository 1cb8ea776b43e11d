"""Constants in a graph: frozen parameters and values computed at compile
time live as buffers of the GraphModule, read by ``get_attr`` nodes."""

from __future__ import annotations

import torch
from torch._guards import detect_fake_mode
from torch.fx import GraphModule, Node

from ..ops import OpCategory, node_category


def is_constant(node: object) -> bool:
    return isinstance(node, Node) and node.op == "get_attr"


def computable(node: Node) -> bool:
    """An op that can run at compile time on constant inputs: a known
    category, neither random nor mutating."""
    if node.op != "call_function" or node_category(node) in (None, OpCategory.UNKNOWN):
        return False
    target = node.target
    return not (
        isinstance(target, torch._ops.OpOverload)
        and (torch.Tag.nondeterministic_seeded in target.tags or target._schema.is_mutable)
    )


def constant_value(gm: GraphModule, node: Node) -> torch.Tensor:
    obj = gm
    for part in node.target.split("."):
        obj = getattr(obj, part)
    return obj


def register_constant(gm: GraphModule, value: torch.Tensor, prefix: str) -> str:
    """Store ``value`` on ``gm`` under a fresh name; return the name."""
    i = 0
    while hasattr(gm, f"{prefix}{i}"):
        i += 1
    name = f"{prefix}{i}"
    gm.register_buffer(name, value, persistent=False)
    return name


def fake_value(gm: GraphModule, value: torch.Tensor) -> torch.Tensor:
    """A fake tensor for ``meta['val']`` in the graph's own fake mode."""
    mode = detect_fake_mode([p.meta.get("val") for p in gm.graph.find_nodes(op="placeholder")])
    if mode is None:
        return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device="meta")
    return mode.from_tensor(value, static_shapes=True)


def insert_constant(gm: GraphModule, value: torch.Tensor, prefix: str, before: Node) -> Node:
    """Register ``value`` and add a ``get_attr`` for it before ``before``."""
    value = value.contiguous()
    name = register_constant(gm, value, prefix)
    with gm.graph.inserting_before(before):
        node = gm.graph.get_attr(name)
    node.meta["val"] = fake_value(gm, value)
    return node
