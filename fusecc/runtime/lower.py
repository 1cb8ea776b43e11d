"""Lowering: turn a passed graph into the graph that runs.

Each FusedGroup goes to the target. A target may return a compiled module
(it replaces the group), None (the group runs as its ATen ops, inlined), or
raise (the compile failed: the group runs as ATen and a fallback is
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


def lower(gm: GraphModule, target: Target, report: GraphReport, options: Options) -> GraphModule:
    for node, group in groups(gm):
        try:
            compiled = target.compile_group(group)
        except Exception as e:  # noqa: BLE001 - any compile failure falls back to ATen
            if options.fallback == "error":
                raise UnsupportedError(
                    f"target {target.name!r} failed to compile group {group.group_name} ({group.kind}): {e}"
                ) from e
            report.fallbacks.append(
                Fallback(
                    group.group_name,
                    f"target {target.name!r} failed to compile this {group.kind} group: {type(e).__name__}: {e}",
                )
            )
            compiled = None
        if compiled is None:
            inline_group(gm, node)
        else:
            setattr(gm, node.target, compiled if isinstance(compiled, torch.nn.Module) else _KernelModule(compiled))

    unknown = Counter(op_name(n.target) for n in gm.graph.nodes if node_category(n) is OpCategory.UNKNOWN)
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
