"""channels_last: run convolutional networks in NHWC memory order.

Matches: inference graphs with 2-d convolutions whose weights are
constants. Produces: a ``clone(memory_format=channels_last)`` in front of
every such convolution whose input is not already channels-last; shape
propagation then carries the layout through the graph (convolutions, the
pointwise ops and residual adds after them keep it), and graph outputs
that changed layout are copied back to the layout they had. Logical shapes
and values are unchanged - only strides. The conversion in front of the
first convolution does not run as a copy of its own: vertical fusion puts
it in that convolution's group, whose kernel reads the NCHW input into the
padded channels-last copy it makes anyway (`conv_indirect` row segments).

Why: with channels innermost, a convolution is a GEMM over (pixels x
output channels) whose vector dimension is the channel count (no waste on
7x7 feature maps), 1x1 convolutions read their input in place, and
depthwise convolutions load whole channel vectors - the layout XNNPACK,
oneDNN and ONNX Runtime use on CPUs.
Refuses: training graphs, graphs with no such convolution, and graphs
whose shape propagation fails after the change (then nothing changes).
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from ..graph.analysis import tensor_meta
from ..graph.constants import is_constant
from .manager import PassContext
from .verify import propagate_shapes

NAME = "channels_last"
INFERENCE_ONLY = True

aten = torch.ops.aten


def _is_channels_last(val: torch.Tensor) -> bool:
    return (
        val.dim() == 4
        and val.is_contiguous(memory_format=torch.channels_last)
        and not (val.is_contiguous() and val.shape[1] > 1 and val.shape[2] * val.shape[3] > 1)
    )


def _candidates(gm: GraphModule) -> list[Node]:
    convs = []
    for node in gm.graph.find_nodes(op="call_function", target=aten.convolution.default):
        x, w = node.args[0], node.args[1]
        val = tensor_meta(x)
        if val is None or val.dim() != 4 or node.args[6] or not is_constant(w):
            continue
        convs.append(node)
    return convs


def _zero_pad_of(conv: Node) -> Node | None:
    pad = conv.args[0]
    if not (isinstance(pad, Node) and pad.target is aten.constant_pad_nd.default and len(pad.users) == 1):
        return None
    value = pad.args[2] if len(pad.args) > 2 else 0
    return pad if value == 0 and len(pad.args[1]) <= 4 else None


def run(gm: GraphModule, ctx: PassContext) -> GraphModule:
    convs = _candidates(gm)
    if not convs:
        return gm
    output = gm.graph.output_node()
    outs = output.args[0]
    before = [tuple(tensor_meta(o).stride()) if tensor_meta(o) is not None else None for o in outs]
    inserted = 0
    # Convert in front of the first convolution still reading NCHW, re-propagate
    # (the layout then flows downstream), repeat: usually once per network.
    for _ in range(len(convs)):
        pending = [c for c in convs if not _is_channels_last(tensor_meta(c.args[0]))]
        if not pending:
            break
        conv = pending[0]
        # convert above a zero pad that only feeds this convolution (TF-style
        # "same" padding): the pad keeps the layout and then folds into the
        # convolution's own padding instead of running as an ATen op
        site = _zero_pad_of(conv) or conv
        x = site.args[0]
        with gm.graph.inserting_before(site):
            cl = gm.graph.call_function(aten.clone.default, (x,), {"memory_format": torch.channels_last})
        site.replace_input_with(x, cl)
        inserted += 1
        try:
            propagate_shapes(gm)
        except Exception as e:  # noqa: BLE001 - undo what we cannot re-propagate
            site.replace_input_with(cl, x)
            gm.graph.erase_node(cl)
            propagate_shapes(gm)
            ctx.decide(NAME, conv.name, f"shape propagation failed after the layout change ({e}); not converted")
            inserted -= 1
            break
    if not inserted:
        return gm
    # outputs keep the strides callers saw at capture
    restored = 0
    for o, strides in zip(outs, before):
        val = tensor_meta(o)
        if strides is None or val is None or tuple(val.stride()) == strides:
            continue
        with gm.graph.inserting_before(output):
            back = gm.graph.call_function(aten.clone.default, (o,), {"memory_format": torch.contiguous_format})
        output.replace_input_with(o, back)
        restored += 1
    if restored:
        propagate_shapes(gm)
    ctx.decide(
        NAME,
        "graph",
        f"{inserted} conversion(s) to channels-last before convolutions, {restored} back at outputs",
        accepted=True,
    )
    return gm
