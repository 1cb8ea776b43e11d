"""constant_fold: evaluate, at compile time, every op whose inputs are all
constants (frozen parameters, earlier folded values, literals).

Matches: call_function nodes whose tensor inputs are all ``get_attr`` nodes,
e.g. the ``t(weight)`` in front of every linear layer or a mask built from
``arange``. Produces: one ``get_attr`` of a new contiguous constant per
folded node. Refuses: ops that are random or mutate, ops on symbolic shapes,
and results much larger than their inputs (an ``expand`` of a bias to the
activation's size would trade a free view for memory).
"""

from __future__ import annotations

import operator

import torch
from torch.fx import GraphModule, Node

from ..graph.constants import computable, constant_value, fake_value, is_constant, register_constant
from .manager import PassContext

NAME = "constant_fold"
INFERENCE_ONLY = False

# A folded result may be at most this much larger than all its inputs together.
_MAX_GROWTH_BYTES = 1 << 16


def _foldable(node: Node) -> bool:
    if not computable(node):
        return False
    if not isinstance(node.meta.get("val"), (torch.Tensor, tuple, list)):
        return False
    leaves: list[object] = []
    torch.fx.node.map_aggregate((node.args, node.kwargs), leaves.append)
    return not any(
        (isinstance(leaf, Node) and not is_constant(leaf))
        or isinstance(leaf, (torch.SymInt, torch.SymFloat, torch.SymBool))
        for leaf in leaves
    )


def _nbytes(value: object) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 0


def run(gm: GraphModule, ctx: PassContext) -> GraphModule:
    folded = 0
    for node in list(gm.graph.nodes):
        if not _foldable(node):
            continue
        args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda n: constant_value(gm, n))
        with torch.no_grad():
            value = node.target(*args, **kwargs)
        in_bytes = sum(_nbytes(constant_value(gm, n)) for n in node.all_input_nodes)
        if _nbytes(value) > in_bytes + _MAX_GROWTH_BYTES:
            ctx.decide(NAME, node.name, f"result of {_nbytes(value)} B is much larger than its inputs ({in_bytes} B)")
            continue
        if isinstance(value, torch.Tensor):
            _replace_with_constant(gm, node, value)
        elif all(u.target is operator.getitem and isinstance(value[u.args[1]], torch.Tensor) for u in node.users):
            for user in list(node.users):
                _replace_with_constant(gm, user, value[user.args[1]])
        else:
            continue
        gm.graph.erase_node(node)
        folded += 1
    if folded:
        ctx.decide(NAME, "graph", f"folded {folded} ops on constants", accepted=True)
    return gm


def _replace_with_constant(gm: GraphModule, node: Node, value: torch.Tensor) -> None:
    # Stored as computed (strides included) so the recorded metadata and the
    # tensor every kernel or ATen op will read agree exactly.
    name = register_constant(gm, value, "_folded")
    with gm.graph.inserting_before(node):
        const = gm.graph.get_attr(name)
    const.meta = {**node.meta, "val": fake_value(gm, value)}
    node.replace_all_uses_with(const)
    if node.op == "call_function" and node.target is operator.getitem:
        gm.graph.erase_node(node)
