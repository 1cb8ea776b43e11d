"""dce: dead-code elimination.

Matches: nodes whose results nobody uses and that have no side effects,
and constants no node reads any more (e.g. a weight whose transposed copy
was folded). Produces: the graph without them; the constants' memory is
released.
"""

from __future__ import annotations

from torch.fx import GraphModule

from .manager import PassContext

NAME = "dce"
INFERENCE_ONLY = False


def run(gm: GraphModule, ctx: PassContext) -> GraphModule:
    before = len(gm.graph.nodes)
    gm.graph.eliminate_dead_code()
    removed = before - len(gm.graph.nodes)
    used = {n.target for n in gm.graph.find_nodes(op="get_attr")}
    dropped = [name for name, _ in list(gm.named_buffers(recurse=False)) if name not in used]
    for name in dropped:
        delattr(gm, name)
    gm.delete_all_unused_submodules()
    if removed or dropped:
        ctx.decide(NAME, "graph", f"removed {removed} dead nodes and {len(dropped)} unused constants", accepted=True)
    return gm
