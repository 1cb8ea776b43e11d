"""Graph analyses the passes share: positions, convexity, constants."""

from __future__ import annotations

from collections.abc import Iterable

import networkx as nx
import torch
from torch.fx import Graph, Node


def positions(graph: Graph) -> dict[Node, int]:
    """Each node's index in the (topologically ordered) node list."""
    return {n: i for i, n in enumerate(graph.nodes)}


def leaves_and_reenters(members: set[Node], pos: dict[Node, int]) -> bool:
    """True if some path leaves ``members`` and comes back in, i.e. fusing
    them into one node would create a cycle (the set is not convex).

    Any such path runs forward in the topological order and ends at a member,
    so the search never needs to look past the last member's position.
    """
    last = max(pos[m] for m in members)
    stack = [u for m in members for u in m.users if u not in members and pos[u] < last]
    seen: set[Node] = set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        for u in n.users:
            if u in members:
                return True
            if pos[u] < last:
                stack.append(u)
    return False


def same_sizes(xs, ys) -> bool:
    """Equal sizes (or strides), symbolic ones only when provably equal
    (comparing adds no guards); None equals nothing."""
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    if xs is None or ys is None or len(xs) != len(ys):
        return False
    return all(statically_known_true(x == y) for x, y in zip(xs, ys))


def tensor_meta(node: object) -> torch.Tensor | None:
    """The fake tensor recorded on a node during capture (``meta["val"]``)."""
    if isinstance(node, Node):
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor):
            return val
    return None


def to_networkx(graph: Graph) -> nx.DiGraph:
    """The dataflow graph as networkx (for reports and structural queries)."""
    g = nx.DiGraph()
    for n in graph.nodes:
        g.add_node(n.name, op=n.op, target=str(n.target))
        for a in n.all_input_nodes:
            g.add_edge(a.name, n.name)
    return g


def count_compute_nodes(nodes: Iterable[Node]) -> int:
    from ..ops import OpCategory, node_category

    return sum(1 for n in nodes if node_category(n) not in (None, OpCategory.VIEW, OpCategory.GETITEM))
