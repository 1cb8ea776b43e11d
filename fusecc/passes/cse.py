"""cse: common-subexpression elimination.

Matches: two call_function nodes with the same target and the same
arguments (after earlier duplicates were merged), e.g. the same mask
computed in every layer, or ``t(weight)`` of a tied weight taken twice.
Produces: the later node's uses redirected to the earlier one.
Refuses: random ops and ops that mutate their inputs.
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from .manager import PassContext

NAME = "cse"
INFERENCE_ONLY = False


def _pure(node: Node) -> bool:
    if node.op != "call_function":
        return False
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        return torch.Tag.nondeterministic_seeded not in target.tags and not target._schema.is_mutable
    return not node.is_impure()


def _key(node: Node) -> object:
    def freeze(a: object) -> object:
        if isinstance(a, (list, tuple)):
            return (type(a).__name__, tuple(freeze(x) for x in a))
        if isinstance(a, dict):
            return ("dict", tuple(sorted((k, freeze(v)) for k, v in a.items())))
        if isinstance(a, (torch.SymInt, torch.SymFloat, torch.SymBool)):
            return ("sym", str(a))
        if isinstance(
            a, (Node, int, float, bool, str, type(None), torch.dtype, torch.device, torch.layout, torch.memory_format)
        ):
            return (type(a).__name__, a)
        return ("id", id(a))  # unhashable oddities only match themselves

    return (node.target, freeze(node.args), freeze(node.kwargs))


def run(gm: GraphModule, ctx: PassContext) -> GraphModule:
    seen: dict[object, Node] = {}
    merged = 0
    for node in list(gm.graph.nodes):
        if not _pure(node):
            continue
        key = _key(node)
        earlier = seen.get(key)
        if earlier is None:
            seen[key] = node
            continue
        node.replace_all_uses_with(earlier)
        gm.graph.erase_node(node)
        merged += 1
    if merged:
        ctx.decide(NAME, "graph", f"merged {merged} duplicate ops", accepted=True)
    return gm
