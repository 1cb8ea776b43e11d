"""`FusedGroup`: how a fused region lives inside an FX graph.

A pass that fuses a set of nodes replaces them with one ``call_module`` node
whose module is a `FusedGroup`: a `torch.fx.GraphModule` holding the member
ops as its own subgraph, plus the group's *kind* ("gemm", "reduction", ...)
and attributes. Because it is a GraphModule the parent graph stays valid and
runnable after every pass (the group simply runs its subgraph), and
``print_readable`` shows the group's body inline.
"""

from __future__ import annotations

import heapq
import itertools
import operator
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch.fx import Graph, GraphModule, Node

from ..ops import op_name, runs_off_cpu_as_sdpa, sdpa_any_device


class FusedGroup(GraphModule):
    """A fused region: subgraph + kind + attributes.

    ``members`` lists the ATen ops it contains (for dumps and explain);
    ``constant_inputs`` marks which inputs are frozen constants in the parent
    graph, so a later lowering can pre-pack them.
    """

    def __init__(
        self,
        root: torch.nn.Module,
        graph: Graph,
        name: str,
        kind: str,
        attrs: dict[str, Any] | None = None,
        members: Sequence[str] = (),
        constant_inputs: Sequence[bool] = (),
    ):
        super().__init__(root, graph, class_name=name)
        self.group_name = name
        self.kind = kind
        self.attrs = dict(attrs or {})
        self.members = list(members)
        self.constant_inputs = list(constant_inputs)

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary (dumps, explain, inspect)."""
        placeholders = self.graph.find_nodes(op="placeholder")
        outputs = self.graph.output_node().args[0]
        outputs = outputs if isinstance(outputs, (tuple, list)) else [outputs]
        return {
            "name": self.group_name,
            "kind": self.kind,
            "members": self.members,
            "attrs": {k: _jsonable(v) for k, v in self.attrs.items()},
            "inputs": [_describe_value(p) for p in placeholders],
            "outputs": [_describe_value(o) for o in outputs if isinstance(o, Node)],
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):  # e.g. an attention group's sparsity plan, head by head
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def _describe_value(node: Node) -> str:
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        return f"{node.name}: {str(val.dtype).removeprefix('torch.')}{list(val.shape)}"
    return node.name


def groups(gm: GraphModule) -> list[tuple[Node, FusedGroup]]:
    """The FusedGroup call nodes of ``gm`` in graph order."""
    out = []
    for node in gm.graph.find_nodes(op="call_module"):
        mod = gm.get_submodule(node.target)
        if isinstance(mod, FusedGroup):
            out.append((node, mod))
    return out


def _unique_name(gm: GraphModule, kind: str) -> str:
    for i in itertools.count():
        name = f"fused_{kind}_{i}"
        if not hasattr(gm, name):
            return name
    raise AssertionError("unreachable")


def fuse_nodes(
    gm: GraphModule,
    nodes: Iterable[Node],
    kind: str,
    attrs: dict[str, Any] | None = None,
    name: str | None = None,
) -> Node:
    """Replace ``nodes`` (a convex set; callers check) with one FusedGroup call
    (named ``name``, which must be free, or the next free ``fused_<kind>_<i>``).

    Returns the new call_module node. Values used outside the group become
    its outputs: a single output is returned directly, several as a tuple
    that the parent graph unpacks with getitem.
    """
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    members = sorted(set(nodes), key=order.__getitem__)
    member_set = set(members)

    sub = Graph()
    env: dict[Node, Node] = {}
    inputs: list[Node] = []

    def remap(x: Node) -> Node:
        if x in member_set:
            return env[x]
        if x not in env:
            ph = sub.placeholder(x.name)
            ph.meta = dict(x.meta)
            env[x] = ph
            inputs.append(x)
        return env[x]

    for n in members:
        env[n] = sub.node_copy(n, remap)

    outputs = [n for n in members if any(u not in member_set for u in n.users)]
    if not outputs:
        raise ValueError(f"fusing {[n.name for n in members]}: no member is used outside the group")
    sub.output(env[outputs[0]] if len(outputs) == 1 else tuple(env[o] for o in outputs))
    sub.lint()

    if name is None:
        name = _unique_name(gm, kind)
    elif hasattr(gm, name):
        raise ValueError(f"fusing into {name}: the graph module already has an attribute of that name")
    module = FusedGroup(
        gm,
        sub,
        name,
        kind,
        attrs,
        members=_member_ops(gm, members),
        constant_inputs=[x.op == "get_attr" for x in inputs],
    )
    gm.add_submodule(name, module)

    with gm.graph.inserting_after(members[-1]):
        call = gm.graph.call_module(name, tuple(inputs))
    if len(outputs) == 1:
        call.meta = dict(outputs[0].meta)
        outputs[0].replace_all_uses_with(call)
    else:
        call.meta["val"] = tuple(o.meta.get("val") for o in outputs)
        with gm.graph.inserting_after(call):
            for i, out in reversed(list(enumerate(outputs))):
                item = gm.graph.call_function(operator.getitem, (call, i))
                item.meta = dict(out.meta)
                out.replace_all_uses_with(item)
    for n in reversed(members):
        gm.graph.erase_node(n)
    if not _is_topologically_ordered(gm.graph):
        _stable_topological_sort_in_place(gm.graph)
    return call


def _member_ops(gm: GraphModule, nodes: list[Node]) -> list[str]:
    """ATen op names of the members, looking through nested groups (blocks)."""
    ops: list[str] = []
    for n in nodes:
        if n.op == "call_function" and n.target is not operator.getitem:
            ops.append(op_name(n.target))
        elif n.op == "call_module" and isinstance(inner := gm.get_submodule(n.target), FusedGroup):
            ops.extend(inner.members)
    return ops


def nested_groups(group: FusedGroup) -> list[tuple[Node, FusedGroup]]:
    """The FusedGroups a group's body calls (the layers of a block)."""
    return groups(group)


def _stable_topological_sort_in_place(graph: Graph) -> None:
    """Reorder nodes so every input precedes its users, keeping the current
    order where dependencies allow. Moves the existing Node objects (unlike
    torch.fx's stable_topological_sort, which copies them), so callers may
    keep holding nodes across fusions."""
    nodes = list(graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    pending = {n: len(set(n.all_input_nodes)) for n in nodes}
    ready = [(index[n], n) for n in nodes if pending[n] == 0]
    heapq.heapify(ready)
    order: list[Node] = []
    while ready:
        _, node = heapq.heappop(ready)
        order.append(node)
        for user in node.users:
            pending[user] -= 1
            if pending[user] == 0:
                heapq.heappush(ready, (index[user], user))
    if len(order) != len(nodes):
        raise AssertionError("graph has a cycle after fusion (a non-convex group slipped through)")
    anchor = graph._root
    for node in order:
        anchor.append(node)
        anchor = node


def _is_topologically_ordered(graph: Graph) -> bool:
    seen: set[Node] = set()
    for n in graph.nodes:
        if any(a not in seen for a in n.all_input_nodes):
            return False
        seen.add(n)
    return True


def runnable_as_aten(group: GraphModule) -> GraphModule:
    """``group`` as a module that runs its ATen ops on its own device: a
    copy whose captured attention ops off the CPU call `sdpa_any_device`
    (``group`` itself where there are none)."""
    if not any(runs_off_cpu_as_sdpa(n) for n in group.graph.nodes):
        return group
    graph = Graph()
    graph.output(graph.graph_copy(group.graph, {}))
    copy = GraphModule(group, graph)
    for node in copy.graph.nodes:
        if runs_off_cpu_as_sdpa(node):
            node.target = sdpa_any_device
    copy.recompile()
    return copy


def inline_group(gm: GraphModule, call: Node) -> list[Node]:
    """Replace a FusedGroup call by the group's own nodes (the inverse of
    `fuse_nodes`); used to run a group as plain ATen with no call overhead.
    Returns the nodes it put in the parent graph, in order."""
    group = gm.get_submodule(call.target)
    for node, inner in nested_groups(group):  # a block's layers become the parent's groups
        gm.add_submodule(node.target, inner)
    env: dict[Node, object] = {}
    placeholders = group.graph.find_nodes(op="placeholder")
    env.update(zip(placeholders, call.args))
    result = None
    copied: list[Node] = []
    with gm.graph.inserting_before(call):
        for n in group.graph.nodes:
            if n.op == "placeholder":
                continue
            if n.op == "output":
                result = torch.fx.node.map_arg(n.args[0], env.__getitem__)
                continue
            env[n] = gm.graph.node_copy(n, env.__getitem__)
            if runs_off_cpu_as_sdpa(n):
                env[n].target = sdpa_any_device
            copied.append(env[n])
    if isinstance(result, (tuple, list)):
        for user in list(call.users):
            assert user.target is operator.getitem, f"group output used by {user.format_node()}"
            user.replace_all_uses_with(result[user.args[1]])
            gm.graph.erase_node(user)
    else:
        call.replace_all_uses_with(result)
    gm.graph.erase_node(call)
    delattr(gm, call.target)
    return copied
