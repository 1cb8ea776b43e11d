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
Also matches the ConvNeXt block: a depthwise kxk convolution (stride 1,
same size), a layer norm over the channels, two GEMMs (the 1x1 expand and
project convolutions written as Linear layers on NHWC, each with its
epilogue: bias, activation, layer scale) whose last epilogue adds the
block's input (the residual), with only views and permutes between them.
The depthwise output, the normalized tensor and the expanded tensor never
leave the kernel.
Also matches a network's stem feeding such a block without an expand
(MobileNetV2's 3x3/s2 over RGB, then block 0's depthwise and project): a
dense kxk convolution over at most `STEM_MAX_K` im2col values per pixel
takes the expand's place, reading its input in any layout (pattern
``stem``); its 1.6 MB output never goes to memory.
Also matches ResNet's bottleneck: 1x1 reduce, a dense kxk convolution
(any stride, same channel count), 1x1 expand with the residual add; its
reduced tensors stay in the kernel's ring and band buffers the same way.
Refuses, with the reason in the dump: intermediates used elsewhere,
non-constant weights, layouts or dtypes the kernel does not handle, layer
epilogues that read runtime tensors before the last layer, and residual
blocks of full kxk convolutions outside the bottleneck shape (ResNet's
basic block), which this pass does not fuse yet.
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from ..graph.analysis import leaves_and_reenters, positions
from ..graph.fused_group import FusedGroup, fuse_nodes
from ..ops import is_layout
from .manager import PassContext

NAME = "block_fusion"
INFERENCE_ONLY = True
STEM_MAX_K = 64  # a stem layer's cin x kh x kw: its im2col row panel stays in L1
# The stem joins the block it feeds (docs/scripts/stem_fusion_ab.py: MobileNetV2
# exported 1.7-4.5% faster on a Zen 4); False leaves it a convolution of its own.
FUSE_STEMS = True

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

    def _unpadded(self) -> object:
        x = self.conv.args[0]
        if isinstance(x, Node) and x.target is aten.constant_pad_nd.default:  # zero padding folded in
            x = x.args[0]
        return x

    @property
    def input(self) -> object:
        return self._arg(self._unpadded())

    @property
    def source(self) -> object:
        """`input`, or where the layout pass converts a graph input to
        channels-last inside this layer's group, the tensor before it."""
        x = self._unpadded()
        if isinstance(x, Node) and x.target is aten.clone.default and x.kwargs.get("memory_format") is not None:
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
        x = self.source
        return [a for a in self.call.args if isinstance(a, Node) and a.op != "get_attr" and a is not x]

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


def _f32(node: Node) -> bool:
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and val.dtype == torch.float32 and val.dim() == 4


def _channels_last_f32(node: Node) -> bool:
    return _f32(node) and node.meta["val"].is_contiguous(memory_format=torch.channels_last)


def _why_not(chain: list[_Layer], pattern: str) -> str | None:
    """Why this chain cannot be one block kernel (None: it can)."""
    for i, layer in enumerate(chain):
        weight = layer._arg(layer.conv.args[1])
        if not (isinstance(weight, Node) and weight.op == "get_attr"):
            return f"layer {i + 1} ({layer.describe()}) has runtime weights"
        if i == 0 and pattern == "stem":  # gathers its few input channels from any layout
            if not (isinstance(layer.source, Node) and _f32(layer.source)) or not _channels_last_f32(layer.call):
                return f"layer 1 ({layer.describe()}) does not map a float32 input to a channels-last output"
            continue
        if layer.input is None:  # e.g. the layout pass converts a graph input inside the layer's group
            return f"layer {i + 1} ({layer.describe()}) converts its input inside its own kernel"
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


def _is_dense(layer: _Layer) -> bool:
    """A dense kxk convolution (groups 1, k > 1, no dilation)."""
    _, _, dilation, transposed, groups = layer.geometry
    return groups == 1 and dilation == (1, 1) and not transposed and layer.weight_shape[2] > 1


def _is_full_square(layer: _Layer) -> bool:
    """A dense kxk convolution keeping its channel count."""
    cout, cin = layer.weight_shape[:2]
    return _is_dense(layer) and cin == cout


def _is_stem(layer: _Layer) -> bool:
    """A dense kxk convolution over a few input channels (a network's first
    layer: 3x3/s2 over RGB), its GEMM depth at most `STEM_MAX_K`."""
    _, cin, kh, kw = layer.weight_shape
    stride = layer.geometry[0]
    return _is_dense(layer) and cin * kh * kw <= STEM_MAX_K and stride[0] <= kh and stride[1] <= kw


def _inverted_residual(gm: GraphModule, project: _Layer) -> tuple[str, list[_Layer]] | None:
    """(pattern, [expand?, middle, project]) ending at ``project``: an
    inverted residual (depthwise middle, expand optional), a stem (the same
    with a dense kxk convolution over a few channels for the expand), a
    ResNet bottleneck (1x1 reduce, a dense kxk middle, 1x1 expand), or a
    ResNet basic block ([dense kxk, dense kxk stride 1 + residual]); or None."""
    if _is_full_square(project) and project.geometry[0] == (1, 1) and project.runtime_inputs():
        first = _conv_layer(gm, project.input)
        if first is not None and _is_dense(first) and first.weight_shape[0] == project.weight_shape[1]:
            return ("basic", [first, project])
        return None
    if not project.is_pointwise():
        return None
    mid = _conv_layer(gm, project.input)
    if mid is None:
        return None
    expand = _conv_layer(gm, mid.input)
    has_expand = expand is not None and expand.is_pointwise() and len(expand.call.users) == 1
    if mid.is_depthwise():
        if FUSE_STEMS and expand is not None and not has_expand and _is_stem(expand) and len(expand.call.users) == 1:
            return ("stem", [expand, mid, project])
        return ("inverted_residual", [expand, mid, project] if has_expand else [mid, project])
    if _is_full_square(mid) and has_expand:
        return ("bottleneck", [expand, mid, project])
    return None


def _residual_chain(gm: GraphModule, last: _Layer) -> list[_Layer]:
    """The convolutions a residual add closes over (for refusal reports)."""
    chain = [last]
    while (prev := _conv_layer(gm, chain[0].input)) is not None and len(chain) < 4:
        chain.insert(0, prev)
    return chain


def _next_group(gm: GraphModule, node: Node, kind: str) -> tuple[Node, list[Node]] | str:
    """The group of ``kind`` that is the only consumer of ``node`` - looking
    through single-use views and permutes - with those layout nodes; or
    why there is none."""
    glue: list[Node] = []
    while len(node.users) == 1:
        (user,) = node.users
        if is_layout(user):
            glue.append(user)
            node = user
            continue
        if user.op == "call_module" and isinstance(group := gm.get_submodule(user.target), FusedGroup):
            return (user, glue) if group.kind == kind else f"{node.name} feeds a {group.kind} group, not a {kind}"
        return f"{node.name} feeds {user.name}, not a {kind} group"
    return f"{node.name} is used outside the block" if node.users else f"{node.name} is unused"


def _group_of(gm: GraphModule, call: Node) -> FusedGroup:
    return gm.get_submodule(call.target)


def _convnext_block(gm: GraphModule, dw: _Layer) -> tuple[list[Node], list[Node], str | None] | None:
    """(group calls, layout nodes, refusal reason or None) of a ConvNeXt
    block starting at the depthwise layer ``dw``; None where ``dw`` does not
    feed a layer norm (not a candidate)."""
    stride, _, _, _, _ = dw.geometry
    if not dw.is_depthwise() or stride != (1, 1):
        return None
    norm = _next_group(gm, dw.call, "reduction")
    if isinstance(norm, str) or _group_of(gm, norm[0]).attrs.get("reduction") != "aten.native_layer_norm.default":
        return None
    calls, glue = [dw.call, norm[0]], list(norm[1])
    for role in ("expand", "project"):
        found = _next_group(gm, calls[-1], "gemm")
        if isinstance(found, str):
            return calls, glue, f"no {role} GEMM: {found}"
        calls.append(found[0])
        glue.extend(found[1])
    x = dw.input
    if not (isinstance(x, Node) and _channels_last_f32(x)):
        return calls, glue, "the block input is not a float32 channels-last tensor"
    if tuple(dw.call.meta["val"].shape) != tuple(x.meta["val"].shape):
        return calls, glue, "the depthwise layer changes the size of the map"
    for call in calls[1:]:
        runtime = [a for a in call.args if isinstance(a, Node) and a.op != "get_attr" and a not in glue + calls]
        if call is not calls[-1] and runtime:
            return calls, glue, f"{call.name} reads a runtime tensor besides the previous layer"
        if call is calls[-1] and any(a is not x for a in runtime):
            return calls, glue, f"{call.name} reads a runtime tensor other than the block input"
    return calls, glue, None


def _fuse_convnext_blocks(gm: GraphModule, ctx: PassContext, layers: list[_Layer], taken: set[Node]) -> None:
    for dw in layers:
        if dw.call in taken:
            continue
        found = _convnext_block(gm, dw)
        if found is None:
            continue
        calls, glue, reason = found
        members = set(calls) | set(glue)
        subject = "/".join(c.name for c in calls)
        if reason is None and leaves_and_reenters(members, positions(gm.graph)):
            reason = "not convex: a path leaves the block and comes back"
        if reason is not None:
            ctx.decide(NAME, subject, f"ConvNeXt block: {reason}")
            continue
        residual = any(a is dw.input for a in calls[-1].args)
        expanded = tuple(calls[2].meta["val"].shape)[-1]
        attrs = {
            "pattern": "convnext",
            "layers": [dw.describe(), "layer_norm", f"1x1 ->{expanded}", f"1x1 ->{dw.weight_shape[0]}"],
            "residual": residual,
        }
        call = fuse_nodes(gm, sorted(members, key=positions(gm.graph).__getitem__), "block", attrs)
        taken |= members
        message = f"ConvNeXt block [{', '.join(attrs['layers'])}]{' + residual' if residual else ''}"
        ctx.decide(NAME, call.target, message, True)


def run(gm: GraphModule, ctx: PassContext) -> GraphModule:
    layers = [layer for n in list(gm.graph.nodes) if (layer := _conv_layer(gm, n)) is not None]
    taken: set[Node] = set()
    _fuse_convnext_blocks(gm, ctx, layers, taken)
    for project in layers:
        if project.call in taken:  # fused into an earlier block (and erased from the graph)
            continue
        found = _inverted_residual(gm, project)
        if found is None:
            if project.runtime_inputs():  # a residual add closing over something else
                kinds = ", ".join(layer.describe() for layer in _residual_chain(gm, project))
                ctx.decide(
                    NAME,
                    project.call.name,
                    f"residual block [{kinds}]: not an inverted residual, bottleneck or basic block "
                    "(block kernels take 1x1 + depthwise/dense kxk + 1x1, or two dense kxk layers)",
                )
            continue
        pattern, chain = found
        subject = "/".join(layer.call.name for layer in chain)
        reason = _why_not(chain, pattern)
        members = {layer.call for layer in chain}
        if reason is None and members & taken:
            reason = "a layer already belongs to another block"
        if reason is None and leaves_and_reenters(members, positions(gm.graph)):
            reason = "not convex: a path leaves the block and comes back"
        if reason is not None:
            ctx.decide(NAME, subject, reason)
            continue
        residual = bool(chain[-1].runtime_inputs())
        attrs = {"pattern": pattern, "layers": [layer.describe() for layer in chain], "residual": residual}
        call = fuse_nodes(gm, [layer.call for layer in chain], "block", attrs)
        taken |= members
        what = pattern.replace("_", " ")
        ctx.decide(NAME, call.target, f"{what} [{', '.join(attrs['layers'])}]{' + residual' if residual else ''}", True)
    return gm
