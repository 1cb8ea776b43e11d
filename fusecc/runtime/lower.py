"""Lowering: turn a passed graph into the graph that runs.

All FusedGroups go to the target together (so it can build in parallel).
Per group the target returns a compiled module (it replaces the group's
call), None (the group runs as its ATen ops, inlined), or the exception
that made its compile fail (the group runs as ATen and a fallback is
recorded). Ops fusecc has no category for are recorded as fallbacks too.
All fallbacks of a graph produce one warning that names them.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable

import torch
from torch.fx import GraphModule

from ..errors import FallbackWarning, UnsupportedError
from ..graph.constants import constant_value
from ..graph.fused_group import groups, inline_group
from ..ops import OpCategory, node_category, op_name
from ..options import Options
from ..report import Fallback, GraphReport
from ..targets import Target


class _KernelModule(torch.nn.Module):
    """Adapts a plain callable returned by a target to a call_module slot."""

    def __init__(self, fn: Callable):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def _constants(gm: GraphModule, call) -> dict[int, torch.Tensor]:
    return {
        i: constant_value(gm, a) for i, a in enumerate(call.args) if isinstance(a, torch.fx.Node) and a.op == "get_attr"
    }


def lower(gm: GraphModule, target: Target, report: GraphReport, options: Options) -> GraphModule:
    found = groups(gm)
    results = target.compile_groups([(g, _constants(gm, node)) for node, g in found], options)
    for (node, group), compiled in zip(found, results):
        if isinstance(compiled, Exception):
            if options.fallback == "error":
                raise UnsupportedError(
                    f"target {target.name!r} failed to compile group {group.group_name} ({group.kind}): {compiled}"
                ) from compiled
            reason = str(compiled).strip().splitlines()[0] if str(compiled).strip() else type(compiled).__name__
            report.fallbacks.append(
                Fallback(
                    group.group_name, f"target {target.name!r} failed to compile this {group.kind} group: {reason}"
                )
            )
            compiled = None
        if compiled is None:
            inline_group(gm, node)
            continue
        info = getattr(compiled, "info", None)
        if info is not None:
            report.kernels.append({"group": group.group_name, "kind": group.kind, **info})
        if hasattr(compiled, "as_function"):  # call the kernel directly from the graph
            with gm.graph.inserting_before(node):
                direct = gm.graph.call_function(compiled.as_function(), tuple(node.args))
            direct.meta = dict(node.meta)
            node.replace_all_uses_with(direct)
            gm.graph.erase_node(node)
            delattr(gm, node.target)
        else:
            setattr(gm, node.target, compiled if isinstance(compiled, torch.nn.Module) else _KernelModule(compiled))

    unknown = Counter(
        op_name(n.target)
        for n in gm.graph.nodes
        if node_category(n) is OpCategory.UNKNOWN and not hasattr(n.target, "kernel")
    )
    for name, count in sorted(unknown.items()):
        report.fallbacks.append(Fallback(name, "fusecc has no lowering for this op", count))
    if unknown and options.fallback == "error":
        raise UnsupportedError(f"unsupported ops in graph {report.name}: {', '.join(sorted(unknown))}")
    if report.fallbacks and options.fallback == "warn":
        listed = "; ".join(f"{f.subject} x{f.count} ({f.reason})" for f in report.fallbacks)
        warnings.warn(
            f"fusecc: {report.name}: {len(report.fallbacks)} part(s) run as plain ATen: {listed}. "
            "fusecc.explain(model, *inputs) lists every fallback.",
            FallbackWarning,
            stacklevel=2,
        )
    gm.graph.lint()
    gm.recompile()
    return gm
