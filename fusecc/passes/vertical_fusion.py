"""vertical_fusion: group producer->consumer chains that one kernel can run
without writing the intermediates to memory.

Matches, in this order (an op joins at most one group):
  1. epilogues: a GEMM or convolution followed by the pointwise ops that
     consume its result (bias, activation - also multi-use ones like
     GPT-2's tanh-GELU -, residual add, scale) - kind ``gemm`` / ``conv``;
  2. reductions (softmax, layer norm, mean/var, sum, max...) with the
     pointwise ops that feed only them (prologue) and the pointwise chain
     after them (epilogue) - kind ``reduction``;
  3. what is left: connected pointwise ops, merged along edges whose
     producer has a single consumer - kind ``pointwise``.
Reshape-only views (view, unsqueeze, ...) may sit inside a chain.
Produces: one FusedGroup per match with at least two compute ops.
Refuses: a candidate that is not convex (a path leaves the group and comes
back, so no single kernel could run it); the refusal is recorded.
"""

from __future__ import annotations

import operator

import torch
from torch.fx import GraphModule, Node

from ..graph.analysis import count_compute_nodes, leaves_and_reenters, positions
from ..graph.fused_group import fuse_nodes
from ..ops import RESHAPE_OPS, OpCategory, is_pointwise, node_category, op_name
from .manager import PassContext

NAME = "vertical_fusion"
INFERENCE_ONLY = False

aten = torch.ops.aten


def _is_reshape(node: Node) -> bool:
    return node.op == "call_function" and node.target in RESHAPE_OPS


def _is_permute(node: Node) -> bool:
    return node.op == "call_function" and node.target is aten.permute.default


_FLOATS = (torch.float32, torch.bfloat16, torch.float16)


def _dtype(node: Node):
    val = node.meta.get("val")
    return val.dtype if isinstance(val, torch.Tensor) else None


def _computes_on_floats(node: Node) -> bool:
    """Float results, or a mask computed from floats (a comparison feeding
    a select): integer and index arithmetic stays out of kernels."""
    dtype = _dtype(node)
    if dtype in _FLOATS:
        return True
    return dtype is torch.bool and all(_dtype(a) in _FLOATS for a in node.all_input_nodes)


def _output_count(members: set[Node]) -> int:
    return sum(1 for n in members if any(u not in members for u in n.users))


class _Grouper:
    def __init__(self, gm: GraphModule, ctx: PassContext):
        self.gm = gm
        self.ctx = ctx
        self.pos = positions(gm.graph)
        self.taken: set[Node] = set()
        self.groups: list[tuple[list[Node], str, dict]] = []

    def free(self, node: Node) -> bool:
        return node.op == "call_function" and node not in self.taken

    def chainable(self, node: Node, permutes: bool = False) -> bool:
        layout = _is_reshape(node) or (permutes and _is_permute(node))
        return self.free(node) and (is_pointwise(node) or layout) and _computes_on_floats(node)

    def grow_epilogue(self, members: set[Node], root: Node, permutes: bool = False) -> list[Node]:
        """Absorb the pointwise DAG hanging off ``root``: consumers are taken
        in graph order while the group stays convex (an input computed from
        the group outside it - a path out and back - stops that consumer).
        With ``permutes`` (GEMM epilogues), a permute may sit in the chain
        when pointwise ops follow it - ConvNeXt's residual add after its
        ``permute(0, 3, 1, 2)``."""
        added: list[Node] = []
        frontier = set(root.users)
        while frontier:
            user = min(frontier, key=self.pos.__getitem__)
            frontier.discard(user)
            if user in members or not self.chainable(user, permutes):
                continue
            if leaves_and_reenters(members | {user}, self.pos):
                continue
            members.add(user)
            added.append(user)
            frontier.update(user.users)
        # Drop leaves that only add outputs: a consumer whose input must be
        # written anyway (it has other users outside) saves nothing by
        # joining - e.g. the RMSNorm ``pow`` after a residual add belongs to
        # the norm's prologue, not to the GEMM's epilogue.
        pruned = True
        while pruned:
            pruned = False
            for node in reversed(added):
                if node not in members or any(u in members for u in node.users):
                    continue
                if _output_count(members - {node}) < _output_count(members) or _is_reshape(node) or _is_permute(node):
                    members.discard(node)
                    pruned = True
        return [n for n in added if n in members]

    def grow_prologue(self, members: set[Node], root: Node) -> list[Node]:
        """Pull in pointwise producers whose every consumer is in the group."""
        added: list[Node] = []
        work = list(root.all_input_nodes)
        while work:
            producer = work.pop()
            if producer in members or not self.chainable(producer):
                continue
            if any(u not in members for u in producer.users):
                continue
            if leaves_and_reenters(members | {producer}, self.pos):
                continue
            members.add(producer)
            added.append(producer)
            work.extend(producer.all_input_nodes)
        return added

    def add(self, members: set[Node], kind: str, attrs: dict) -> None:
        if count_compute_nodes(members) < 2:
            return
        self.taken |= members
        self.groups.append((sorted(members, key=self.pos.__getitem__), kind, attrs))

    # -- the three phases -------------------------------------------------

    def zero_pad_prologue(self, conv: Node) -> Node | None:
        """A zero ``constant_pad_nd`` of H/W feeding only this convolution:
        it folds into the convolution's (possibly asymmetric) padding."""
        pad = conv.args[0]
        if not (isinstance(pad, Node) and pad.target is aten.constant_pad_nd.default and self.free(pad)):
            return None
        value = pad.args[2] if len(pad.args) > 2 else 0
        if len(pad.users) != 1 or value != 0 or len(pad.args[1]) > 4:
            return None
        return pad

    def layout_copy_prologue(self, consumer: Node) -> Node | None:
        """A ``clone`` that only changes the memory format of the
        convolution's input (the channels-last conversion of a network's
        input), feeding nothing else: the convolution reads the source in
        its own layout instead (C: through the copy its row segments make)."""
        copy = consumer.args[0]
        if not (isinstance(copy, Node) and copy.target is aten.clone.default and self.free(copy)):
            return None
        if len(copy.users) != 1 or set(copy.kwargs) - {"memory_format"}:
            return None
        return copy

    def conv_prologue(self, conv: Node) -> list[Node]:
        """[zero pad?, layout copy?] in front of a 2-d convolution with constant
        weights, dense and undilated (what the kernels read through)."""
        _, weight, _, _, _, dilation, transposed, _, groups = conv.args
        prologue = []
        pad = self.zero_pad_prologue(conv)
        if pad is not None:
            prologue.append(pad)
        simple = groups == 1 and not transposed and tuple(dilation) == (1, 1) and weight.op == "get_attr"
        copy = self.layout_copy_prologue(pad or conv) if simple else None
        if copy is not None:
            prologue.append(copy)
        return prologue

    def epilogues(self) -> None:
        for node in list(self.gm.graph.nodes):
            cat = node_category(node)
            if cat not in (OpCategory.GEMM, OpCategory.CONV) or not self.free(node):
                continue
            members = {node}
            prologue = self.conv_prologue(node) if cat is OpCategory.CONV else []
            members.update(prologue)
            chain = self.grow_epilogue(members, node, permutes=cat is OpCategory.GEMM)
            attrs = {"anchor": op_name(node.target), "epilogue": [op_name(n.target) for n in chain]}
            if prologue:
                attrs["prologue"] = [op_name(n.target) for n in prologue]
            self.add(members, cat.value, attrs)

    def reductions(self) -> None:
        for node in list(self.gm.graph.nodes):
            if node_category(node) is not OpCategory.REDUCTION or not self.free(node):
                continue
            members = {node}
            items = [u for u in node.users if u.target is operator.getitem]
            members.update(items)
            main = next((u for u in items if u.args[1] == 0), None) if items else node
            prologue = self.grow_prologue(members, node)
            epilogue = self.grow_epilogue(members, main) if main is not None else []
            attrs = {"reduction": op_name(node.target), "prologue": len(prologue), "epilogue": len(epilogue)}
            self.add(members, "reduction", attrs)

    def pointwise(self) -> None:
        group_of: dict[Node, set[Node]] = {}
        for node in self.gm.graph.nodes:
            if not self.chainable(node) or not is_pointwise(node):
                continue
            group = group_of.setdefault(node, {node})
            for producer in node.all_input_nodes:
                if not self.chainable(producer) or len(producer.users) != 1:
                    continue
                other = group_of.get(producer, {producer})
                if other is group:
                    continue
                merged = group | other
                if leaves_and_reenters(merged, self.pos):
                    self.ctx.decide(NAME, f"{producer.name}->{node.name}", "merging would make the group non-convex")
                    continue
                for n in merged:
                    group_of[n] = merged
                group = merged
        seen: set[int] = set()
        for group in group_of.values():
            if id(group) in seen:
                continue
            seen.add(id(group))
            self.add(group, "pointwise", {"ops": len(group)})


def run(gm: GraphModule, ctx: PassContext) -> GraphModule:
    grouper = _Grouper(gm, ctx)
    grouper.epilogues()
    grouper.reductions()
    grouper.pointwise()
    for members, kind, attrs in grouper.groups:
        # Earlier fusions contracted other groups; re-check on the current graph.
        pos = positions(gm.graph)
        if leaves_and_reenters(set(members), pos):
            ctx.decide(NAME, members[0].name, f"{kind} group became non-convex after earlier fusions")
            continue
        call = fuse_nodes(gm, members, kind, attrs)
        ctx.decide(NAME, call.target, f"{kind} group of {len(members)} nodes", accepted=True)
    return gm
