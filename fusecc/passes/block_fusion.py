"""block_fusion: a whole residual block in one kernel.

Runs after `partition`, when every convolution sits in a ``conv`` group
with its epilogue (bias, activation, residual add). It looks at chains of
those groups.

Matches (by structure, never by module names): the inverted residual of
MobileNetV2 and its relatives - an optional 1x1 *expand* convolution, a
depthwise kxk convolution (any stride and padding) and a 1x1 *project*
convolution, each with its epilogue; the project's epilogue may add a
residual (any runtime tensor shaped like the block's output). Weights must
be constants, tensors float32 and channels-last (the `channels_last` pass
gives that).
Produces: one FusedGroup of kind ``block`` whose body calls the layers'
conv groups in order; the targets that know the kind run it as a single
kernel that keeps the expanded intermediate in cache-sized row bands
(it is never written to memory in full), the others unfuse it again.
Proves: the group is convex (no path leaves it and comes back), and each
intermediate has the next layer as its only consumer.
Refuses, with the reason in the dump: intermediates used elsewhere,
non-constant weights, layouts or dtypes the kernel does not handle, layer
epilogues that read runtime tensors before the last layer, and residual
blocks built from full (non-depthwise) kxk convolutions (ResNet basic and
bottleneck blocks), which this pass does not fuse yet.
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from ..graph.analysis import leaves_and_reenters, positions
from ..graph.fused_group import FusedGroup, fuse_nodes
from .manager import PassContext

NAME = "block_fusion"
INFERENCE_ONLY = True

aten = torch.ops.aten


class _Layer:
    """A conv group call in the parent graph, seen from outside."""

    def __init__(self, gm: GraphModule, call: Node):
        self.call = call
        self.group: FusedGroup = gm.get_submodule(call.target)
        convs = [n for n in self.group.graph.nodes if n.target is aten.convolution.default]
        self.conv = convs[0] if len(convs) == 1 else None
        self.placeholders = list(self.group.graph.find_nodes(op="placeholder"))

    def _arg(self, inner: object) -> object:
        """The parent-graph node behind one of the group's placeholders."""
        return self.call.args[self.placeholders.index(inner)] if inner in self.placeholders else None

    @property
    def input(self) -> object:
        x = self.conv.args[0]
        if isinstance(x, Node) and x.target is aten.constant_pad_nd.default:  # zero padding folded in
            x = x.args[0]
        return self._arg(x)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return tuple(self.conv.args[1].meta["val"].shape)

    @property
    def geometry(self) -> tuple:
        _, _, _, stride, padding, dilation, transposed, _, groups = self.conv.args
        return tuple(stride), tuple(padding), tuple(dilation), bool(transposed), groups

    def is_pointwise(self) -> bool:
        stride, padding, dilation, transposed, groups = self.geometry
        kh, kw = self.weight_shape[2:]
        return (kh, kw) == (1, 1) and stride == (1, 1) and padding == (0, 0) and groups == 1 and not transposed

    def is_depthwise(self) -> bool:
        _, _, dilation, transposed, groups = self.geometry
        cout, cin_g = self.weight_shape[:2]
        return cin_g == 1 and groups == cout and groups > 1 and dilation == (1, 1) and not transposed

    def runtime_inputs(self) -> list[Node]:
        """Runtime tensors the layer reads besides its convolution input."""
        return [a for a in self.call.args if isinstance(a, Node) and a.op != "get_attr" and a is not self.input]

    def describe(self) -> str:
        cout, cin_g, kh, kw = self.weight_shape
        stride = self.geometry[0]
        if self.is_depthwise():
            return f"dw{kh}x{kw}/s{stride[0]} {cout}"
        return f"{kh}x{kw} {cin_g * self.geometry[4]}->{cout}"


def _conv_layer(gm: GraphModule, node: object) -> _Layer | None:
    if not (isinstance(node, Node) and node.op == "call_module"):
        return None
    group = gm.get_submodule(node.target)
    if not (isinstance(group, FusedGroup) and group.kind == "conv"):
        return None
    layer = _Layer(gm, node)
    return layer if layer.conv is not None else None


def _channels_last_f32(node: Node) -> bool:
    val = node.meta.get("val")
    return (
        isinstance(val, torch.Tensor)
        and val.dtype == torch.float32
        and val.dim() == 4
        and val.is_contiguous(memory_format=torch.channels_last)
    )


def _why_not(chain: list[_Layer]) -> str | None:
    """Why this chain cannot be one block kernel (None: it can)."""
    for i, layer in enumerate(chain):
        weight = layer._arg(layer.conv.args[1])
        if not (isinstance(weight, Node) and weight.op == "get_attr"):
            return f"layer {i + 1} ({layer.describe()}) has runtime weights"
        if not _channels_last_f32(layer.call) or not _channels_last_f32(layer.input):
            return f"layer {i + 1} ({layer.describe()}) is not float32 channels-last"
        if i < len(chain) - 1:
            if len(layer.call.users) != 1:
                return f"the output of layer {i + 1} ({layer.describe()}) is used outside the block"
            if layer.runtime_inputs():
                return f"layer {i + 1} ({layer.describe()}) reads a runtime tensor in its epilogue"
    out_shape = tuple(chain[-1].call.meta["val"].shape)
    for extra in chain[-1].runtime_inputs():
        if tuple(extra.meta["val"].shape) != out_shape or not _channels_last_f32(extra):
            return f"the residual {extra.name} is not a channels-last tensor shaped like the output"
    return None


def _inverted_residual(gm: GraphModule, project: _Layer) -> list[_Layer] | None:
    """[expand?, depthwise, project] ending at ``project``, or None."""
    if not project.is_pointwise():
        return None
    dw = _conv_layer(gm, project.input)
    if dw is None or not dw.is_depthwise():
        return None
    expand = _conv_layer(gm, dw.input)
    if expand is not None and expand.is_pointwise() and len(expand.call.users) == 1:
        return [expand, dw, project]
    return [dw, project]


def _residual_chain(gm: GraphModule, last: _Layer) -> list[_Layer]:
    """The convolutions a residual add closes over (for refusal reports)."""
    chain = [last]
    while (prev := _conv_layer(gm, chain[0].input)) is not None and len(chain) < 4:
        chain.insert(0, prev)
    return chain


def run(gm: GraphModule, ctx: PassContext) -> GraphModule:
    layers = [layer for n in list(gm.graph.nodes) if (layer := _conv_layer(gm, n)) is not None]
    taken: set[Node] = set()
    for project in layers:
        if project.call in taken:  # fused into an earlier block (and erased from the graph)
            continue
        chain = _inverted_residual(gm, project)
        if chain is None:
            if project.runtime_inputs():  # a residual add closing over something else
                kinds = ", ".join(layer.describe() for layer in _residual_chain(gm, project))
                ctx.decide(
                    NAME,
                    project.call.name,
                    f"residual block [{kinds}]: full kxk convolutions inside a block are not fused yet "
                    "(block kernels take 1x1 and depthwise layers)",
                )
            continue
        subject = "/".join(layer.call.name for layer in chain)
        reason = _why_not(chain)
        members = {layer.call for layer in chain}
        if reason is None and members & taken:
            reason = "a layer already belongs to another block"
        if reason is None and leaves_and_reenters(members, positions(gm.graph)):
            reason = "not convex: a path leaves the block and comes back"
        if reason is not None:
            ctx.decide(NAME, subject, reason)
            continue
        residual = bool(chain[-1].runtime_inputs())
        attrs = {
            "pattern": "inverted_residual",
            "layers": [layer.describe() for layer in chain],
            "residual": residual,
        }
        call = fuse_nodes(gm, [layer.call for layer in chain], "block", attrs)
        taken |= members
        ctx.decide(
            NAME,
            call.target,
            f"inverted residual [{', '.join(attrs['layers'])}]{' + residual' if residual else ''}",
            True,
        )
    return gm
