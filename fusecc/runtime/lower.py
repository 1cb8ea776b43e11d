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
from torch.fx import GraphModule, Node

from ..errors import FallbackWarning, KeepUnfused, UnsupportedError, UseLibrary
from ..graph.constants import constant_value
from ..graph.fused_group import fuse_nodes, groups, inline_group, nested_groups
from ..kernels.lower import NotLowerable
from ..ops import OpCategory, node_category, op_name
from ..options import Options
from ..passes import pool_fusion
from ..report import Fallback, GraphReport
from ..targets import Target
from . import scratch
from .chain import chain_kernels
from .kernel import kernel_nodes, kernel_of
from .memory_plan import plan_memory


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
    # global pools over a block's output wait for the block's fate: if the
    # target runs it as its layers, the last layer's kernel takes the pool
    pools = _pools_after_blocks(gm, found, options)
    found = [f for f in found if f[0] not in pools]
    while found or pools:
        found = _place_pools(gm, pools, _lower_groups(gm, found, target, report, options), target, report)
        pools = {}
    _reserve_scratch(gm, report)
    plan = plan_memory(gm)
    if plan is not None:
        separate = sum(s.nbytes for s in plan.slots)
        report.decide(
            "memory_plan",
            "graph",
            f"{len(plan.slots)} kernel outputs in one {plan.size / 2**20:.1f} MiB arena "
            f"({separate / 2**20:.1f} MiB as separate buffers)",
            True,
        )
        launch = target.chain_launcher(options) if options.chain_kernels else None
        chains = chain_kernels(gm, launch) if launch is not None else []
        if chains:
            report.decide(
                "kernel_chains",
                "graph",
                f"{sum(map(len, chains))} kernels in {len(chains)} chain(s) called from C: "
                + "; ".join(f"{c[0]} .. {c[-1]} ({len(c)})" for c in chains),
                True,
            )
    _report_unknown_ops(gm, report, options)
    return gm


def _reserve_scratch(gm: GraphModule, report: GraphReport) -> None:
    """Size this thread's shared scratch (`scratch`) for the graph's largest
    need now, so no kernel's pointer array is built against a smaller one."""
    needs = {n.target.__name__: kernel_of(n).workspace for n in kernel_nodes(gm) if kernel_of(n).workspace}
    if not needs:
        return
    largest = max(needs, key=needs.get)
    scratch.reserve(needs[largest])
    report.decide(
        "scratch",
        "graph",
        (f"{len(needs)} kernels share one scratch buffer per thread" if len(needs) > 1 else "1 kernel uses scratch")
        + f"; the largest need is {largest}'s {needs[largest] / 2**10:.0f} KiB",
        True,
    )


def _pools_after_blocks(gm: GraphModule, found: list, options: Options) -> dict[Node, str]:
    """The pool groups over a block's output (pool call -> block name)."""
    if not options.pass_enabled(pool_fusion.NAME):
        return {}
    pools = {}
    for node, _ in found:
        producer = pool_fusion.pool_candidate(gm, node)
        if producer is not None and gm.get_submodule(producer.target).kind == "block":
            pools[node] = producer.target
    return pools


def _place_pools(gm: GraphModule, pools: dict[Node, str], found: list, target: Target, report: GraphReport) -> list:
    """``found`` (the groups of the next round) with the deferred pools: each
    folded into its block's last layer where the block was unfused (the
    layer's group is replaced), else to compile as it is."""
    if not pools:
        return found
    extra = []
    for call, block in pools.items():

        def decide(subject: str, message: str, accepted: bool, block=block) -> None:
            if accepted:
                message += f" (the last layer of {block}, which runs as its layers)"
            report.decide(pool_fusion.NAME, subject, message, accepted)

        fused = pool_fusion.fuse_pool(gm, call, target, decide)
        extra.append(fused if fused is not None else call)
    live = {n for n, _ in groups(gm)}  # a folded layer's call is gone (its name lives on in the pooled group)
    return [f for f in found if f[0] in live] + [(n, gm.get_submodule(n.target)) for n in extra]


def _lower_groups(gm, found, target: Target, report: GraphReport, options: Options) -> list:
    """Compile ``found`` and put the kernels in the graph; returns the groups
    that need another round: the layers of a block the target could not run
    as one kernel (they are compiled one by one - unfused, not fallbacks)."""
    again = []
    kinds = target.group_kinds
    for node, group in [(n, g) for n, g in found if kinds is not None and g.kind not in kinds]:
        report.decide(
            "lower", group.group_name, f"target {target.name} has no {group.kind} kernels; runs as ATen", False
        )
        inline_group(gm, node)
    found = [(n, g) for n, g in found if kinds is None or g.kind in kinds]
    results = target.compile_groups([(g, _constants(gm, node)) for node, g in found], options)
    for (node, group), compiled in zip(found, results):
        layers = nested_groups(group)
        if layers and (compiled is None or isinstance(compiled, Exception)):
            if compiled is None:
                why = "runs its layers inline"
            elif isinstance(compiled, KeepUnfused):
                why = f"not used: {_first_line(compiled)}"
            else:
                why = f"failed: {_first_line(compiled)}"
            report.decide(
                "lower", group.group_name, f"block kernel on {target.name} {why}; layers compiled separately", False
            )
            names = {n.target for n, _ in layers}
            inline_group(gm, node)
            again.extend((n, g) for n, g in groups(gm) if n.target in names)
            continue
        if isinstance(compiled, NotLowerable) and group.kind == "gemm" and group.attrs.get("epilogue"):
            split = _split_off_epilogue(gm, node)
            if split:
                report.decide(
                    "lower", group.group_name,
                    f"epilogue split off the GEMM into its own group: {_first_line(compiled)}", False,
                )  # fmt: skip
                again.extend(split)
                continue
        if isinstance(compiled, UseLibrary):
            report.decide("lower", group.group_name, f"runs as ATen: {_first_line(compiled)}", False)
            inline_group(gm, node)
            continue
        if isinstance(compiled, Exception):
            if options.fallback == "error":
                raise UnsupportedError(
                    f"target {target.name!r} failed to compile group {group.group_name} ({group.kind}): {compiled}"
                ) from compiled
            reason = _first_line(compiled)
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

    return again


def _split_off_epilogue(gm: GraphModule, node: Node) -> list:
    """A GEMM group whose epilogue its kernel cannot express (e.g. a mask
    broadcast over heads, read across the merged batch x heads dimension of
    a bmm): the matrix product and the epilogue become groups of their own,
    both still compiled. Returns them, or [] (then the group runs as ATen)."""
    group = gm.get_submodule(node.target)
    members = [n for n in group.graph.nodes if n.op == "call_function"]
    anchors = [n for n in members if node_category(n) is OpCategory.GEMM]
    rest = [n for n in members if n not in anchors]
    if len(anchors) != 1 or not rest or any(node_category(n) not in _EPILOGUE for n in rest):
        return []
    copied = inline_group(gm, node)
    anchor, rest = copied[members.index(anchors[0])], [c for c, m in zip(copied, members) if m in rest]
    split = [fuse_nodes(gm, [anchor], "gemm", {"anchor": op_name(anchor.target), "epilogue": [], "single": True})]
    split.append(fuse_nodes(gm, rest, "pointwise", {"ops": len(rest)}))
    return [(n, gm.get_submodule(n.target)) for n in split]


_EPILOGUE = (OpCategory.POINTWISE, OpCategory.VIEW)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _report_unknown_ops(gm: GraphModule, report: GraphReport, options: Options) -> None:
    unknown = Counter(
        op_name(n.target)
        for n in gm.graph.nodes
        if node_category(n) is OpCategory.UNKNOWN and kernel_of(n) is None and "chain" not in n.meta
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
