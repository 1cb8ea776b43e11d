"""attention_sparsity: apply an attention sparsity plan to the attention groups.

Runs only when asked (``options={"attention_sparsity": {"plan": ...}}``;
without it attention stays exact). Matches: the graph's ``attention``
groups in order, one plan layer each (`fusecc.calibrate` numbered them
the same way). Produces: ``sparsity`` on each group - the plan's block
size and one strategy per head (of the heads `head_pruning` kept) - which the lowering turns into the
kernel's table of kept key blocks; the dump shows the strategies. Refuses
with an error (a plan silently ignored would misreport accuracy and
speed): a plan whose layer or head count does not match the graph, or a
target without sparse attention kernels.
"""

from __future__ import annotations

from torch.fx import GraphModule

from .. import targets
from ..errors import OptionError
from ..graph.fused_group import groups
from ..sparsity.plan import Plan, count_kinds
from .manager import PassContext

NAME = "attention_sparsity"
INFERENCE_ONLY = True


def run(gm: GraphModule, ctx: PassContext) -> GraphModule:
    request = ctx.options.attention_sparsity
    if not request:
        return gm
    attention = [g for _, g in groups(gm) if g.kind == "attention"]
    if not attention:
        ctx.decide(NAME, "graph", "an attention plan was given, but this graph has no attention ops")
        return gm
    if not targets.get(ctx.options.target).sparse_attention:
        able = [name for name, t in targets.TARGETS.items() if t.sparse_attention]
        raise OptionError(
            f"option 'attention_sparsity': target {ctx.options.target!r} has no sparse attention kernels "
            f"(targets: {', '.join(able)})"
        )
    plan = Plan.load(request["plan"])
    if len(plan.layers) != len(attention):
        raise OptionError(
            f"option 'attention_sparsity': the plan has {len(plan.layers)} attention layers, "
            f"this graph has {len(attention)} attention ops"
        )
    for i, (group, heads) in enumerate(zip(attention, plan.layers)):
        if len(heads) != group.attrs.get("pruned_from", group.attrs["heads"]):
            raise OptionError(
                f"option 'attention_sparsity': plan layer {i} has {len(heads)} heads, "
                f"attention op {group.group_name} has {group.attrs['heads']}"
            )
        if "kept_heads" in group.attrs:  # head_pruning removed the skipped ones
            heads = [heads[h] for h in group.attrs["kept_heads"]]
        group.attrs["sparsity"] = {"block": plan.block, "heads": heads}
        group.attrs["strategies"] = count_kinds(heads)
        ctx.decide(NAME, group.group_name, f"layer {i}: {group.attrs['strategies']} (blocks of {plan.block})", True)
    return gm
