"""attention_capture: attention written out as matmul-softmax-matmul
becomes one scaled-dot-product attention op.

Matches (inference graphs), as Hugging Face's ``attn_implementation="eager"``
and most hand-written attention lower to ATen:

    S = bmm(Q', K')                   Q' = [B*H, Lq, D] reshaped from Q [B, H, Lq, D]
                                      K' = [B*H, D, Lk] reshaped from K [B, H, Lk, D]^T
    S = view(S, [B, H, Lq, Lk])
    S = S * scale  |  S / scale       (optional)
    S = S + mask                      (optional, a float mask broadcast to S)
    P = softmax(S, -1)                (or _safe_softmax: SDPA's own decomposition)
    O = view(bmm(view(P, [B*H, Lq, Lk]), V'), [B, H, Lq, Dv])    V' from V [B, H, Lk, Dv]

and, as SDPA's math decomposition writes it (what CUDA traces give),
with the scale split as Q * sqrt(scale) and K^T * sqrt(scale) before the
first matmul; where every intermediate has no other reader (shape-metadata asserts are
dropped with them). Looks through the views, clones and same-shape
expands between the 4-d tensors and the batched matmuls; Q, K, V are the
4-d tensors themselves (under GQA, the repeated K/V: partition's
``kv_heads`` sees through the repeat).

Produces: ``_scaled_dot_product_flash_attention_for_cpu(Q, K, V,
attn_mask=mask, scale=scale)`` and its output in place of O - the op
`partition` makes an ``attention`` group of, so the chain runs as one
generated kernel with an online softmax and the Lq x Lk scores are never
stored. The rewrite is exact up to rounding (the same softmax of the same
scores). Refuses, with the reason in the dump: scores or probabilities
read elsewhere (``output_attentions``), a softmax over another dim, other
dtypes than float32, masks of another dtype or shape, reshapes that do
not just merge batch and heads.
"""

from __future__ import annotations

import operator

import torch
from torch.fx import GraphModule, Node

from ..graph.analysis import positions, same_sizes, tensor_meta
from ..ops import SDPA_CPU
from .manager import PassContext

NAME = "attention_capture"
INFERENCE_ONLY = True

aten = torch.ops.aten
_RESHAPES = (aten.view.default, aten._unsafe_view.default, aten.reshape.default)
# _safe_softmax gives 0 (not NaN) on rows masked out entirely - as the attention op does
_SOFTMAX = (aten._softmax.default, aten.softmax.int, aten._safe_softmax.default)
_SCALES = (aten.mul.Tensor, aten.mul.Scalar)
_ASSERTS = (aten._assert_tensor_metadata.default,)


class Refused(Exception):
    """A candidate chain that is not (safely) attention; the message says why."""


def _shape(node) -> tuple | None:
    meta = tensor_meta(node) if isinstance(node, Node) else None
    return tuple(meta.shape) if meta is not None else None


def _readers(node: Node) -> list[Node]:
    return [u for u in node.users if u.target not in _ASSERTS]


def _only_reader(node: Node, what: str) -> Node:
    readers = _readers(node)
    if len(readers) != 1:
        raise Refused(f"the {what} ({node.name}) is read {len(readers)} times; attention would hide it")
    return readers[0]


def _operand(node: Node, want: tuple, chain: list[Node]) -> tuple[Node, float]:
    """The 4-d tensor a bmm operand was reshaped from, and the constant it
    was scaled by on the way: back through reshapes to the first node of
    shape ``want``, then through clones (copies that change no value),
    same-shape expands and one multiplication by a constant read by the
    chain alone."""
    cur = node
    while not same_sizes(_shape(cur), want):
        if not (isinstance(cur, Node) and cur.target in _RESHAPES):
            raise Refused(f"{node.name} is not a merge of batch and heads of a {list(want)} tensor")
        chain.append(cur)
        cur = cur.args[0]
    factor = 1.0
    while True:
        if cur.target in (aten.clone.default, aten.expand.default) and same_sizes(_shape(cur.args[0]), want):
            if cur.target is aten.clone.default and len(cur.users) == 1:
                chain.append(cur)
            cur = cur.args[0]
        elif factor == 1.0 and cur.target in _SCALES and isinstance(cur.args[0], Node) and _scalar(cur.args[1]):
            if len(_readers(cur)) != 1 or not same_sizes(_shape(cur.args[0]), want):
                return cur, factor
            factor = _scalar(cur.args[1])
            chain.append(cur)
            cur = cur.args[0]
        else:
            return cur, factor


def _key(kt: Node) -> Node:
    """K from K^T: a transpose (or permute) of the last two dims."""
    if kt.target is aten.transpose.int:
        dims = {d % 4 for d in kt.args[1:3]}
        if dims == {2, 3}:
            return kt.args[0]
    if kt.target is aten.permute.default and [d % 4 for d in kt.args[1]] == [0, 1, 3, 2]:
        return kt.args[0]
    raise Refused(f"the keys' operand {kt.name} is not a transpose of the last two dims")


def _scalar(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _match(softmax: Node) -> tuple[dict, list[Node], Node]:
    """(SDPA arguments, nodes replaced, the output node) of the chain around ``softmax``."""
    scores = softmax.args[0]
    shape = _shape(scores)
    if shape is None or len(shape) != 4:
        raise Refused("the softmax input is not 4-d [batch, heads, queries, keys]")
    half_to_float = softmax.target is aten._softmax.default and softmax.args[2]
    if softmax.args[1] not in (-1, 3) or half_to_float or softmax.kwargs.get("dtype") is not None:
        raise Refused("the softmax is not over the keys in float32")
    if tensor_meta(scores).dtype is not torch.float32:
        raise Refused(f"scores are {tensor_meta(scores).dtype}, not float32")
    b, h, lq, lk = shape
    chain = [softmax]
    mask = None
    cur = _read_only_by(scores, softmax)
    if cur.target is aten.add.Tensor:
        lhs, rhs = cur.args
        first, other = (lhs, rhs) if same_sizes(_shape(lhs), shape) and isinstance(lhs, Node) else (rhs, lhs)
        if not isinstance(other, Node) or tensor_meta(other) is None:
            raise Refused("the scores' addend is not a tensor mask")
        mval = tensor_meta(other)
        if mval.dtype is not torch.float32 or len(mval.shape) > 4:
            raise Refused(f"the mask is {mval.dtype} of {len(mval.shape)} dims, not a float32 mask")
        try:
            torch.broadcast_shapes(tuple(mval.shape), (b, h, lq, lk))
        except RuntimeError:
            raise Refused(f"the mask {list(mval.shape)} does not broadcast to the scores") from None
        mask = other
        chain.append(cur)
        cur = _read_only_by(first, cur)
    scale = 1.0
    if cur.target in (*_SCALES, aten.div.Tensor, aten.div.Scalar):
        lhs, rhs = cur.args
        multiply = cur.target in _SCALES
        s = _scalar(rhs) if isinstance(lhs, Node) else _scalar(lhs) if multiply else None
        if s is None or s == 0:
            raise Refused(f"the scores are scaled by {rhs!r}, not a constant")
        scale = s if multiply else 1.0 / s
        chain.append(cur)
        cur = _read_only_by(lhs if isinstance(lhs, Node) else rhs, cur)
    if cur.target not in _RESHAPES:
        raise Refused(f"the scores come from {cur.name}, not a batched matmul")
    chain.append(cur)
    qk = cur.args[0]
    if qk.target is not aten.bmm.default:
        raise Refused(f"the scores come from {qk.name}, not a batched matmul")
    _only_reader(qk, "score matmul")
    chain.append(qk)
    d = _shape(qk.args[0])[-1]
    q, q_scale = _operand(qk.args[0], (b, h, lq, d), chain)
    kt, k_scale = _operand(qk.args[1], (b, h, d, lk), chain)
    if q_scale == 0 or k_scale == 0:
        raise Refused("the queries or keys are scaled by zero")
    scale *= q_scale * k_scale
    k = _key(kt)
    chain.append(kt)
    # the probabilities' way to the second matmul
    cur = _only_reader(softmax, "attention probabilities")
    while cur.target in _RESHAPES or cur.target is aten.expand.default:
        chain.append(cur)
        cur = _only_reader(cur, "attention probabilities")
    pv = cur
    if pv.target is not aten.bmm.default or pv.args[0] is not chain[-1]:
        raise Refused("the probabilities do not feed a batched matmul with the values")
    chain.append(pv)
    dv = _shape(pv)[-1]
    v, v_scale = _operand(pv.args[1], (b, h, lk, dv), chain)
    if v_scale != 1.0:
        raise Refused("the values are scaled inside the chain")
    out = _only_reader(pv, "attention output")
    if out.target not in _RESHAPES or not same_sizes(_shape(out), (b, h, lq, dv)):
        raise Refused("the output matmul is not reshaped back to [batch, heads, queries, dim]")
    for t in (q, k, v):
        if tensor_meta(t).dtype is not torch.float32:
            raise Refused("queries, keys and values are not float32")
    return {"q": q, "k": k, "v": v, "mask": mask, "scale": scale}, chain, out


def _read_only_by(node: Node, expected: Node) -> Node:
    """``node``, checked to feed nothing but ``expected`` (for walking backwards)."""
    if _readers(node) != [expected]:
        raise Refused(f"{node.name} is read outside the attention chain")
    return node


def _rewrite(gm: GraphModule, found: dict, chain: list[Node], out: Node) -> Node:
    graph = gm.graph
    kwargs = {"attn_mask": found["mask"], "scale": found["scale"]}
    with graph.inserting_before(out):
        sdpa = graph.call_function(SDPA_CPU, (found["q"], found["k"], found["v"], 0.0, False), kwargs)
        result = graph.call_function(operator.getitem, (sdpa, 0))
    vals = [tensor_meta(found[n]) for n in ("q", "k", "v")]
    mask_val = tensor_meta(found["mask"]) if found["mask"] is not None else None
    sdpa.meta["val"] = SDPA_CPU(*vals, 0.0, False, attn_mask=mask_val, scale=found["scale"])
    result.meta["val"] = sdpa.meta["val"][0]
    out.replace_all_uses_with(result)
    graph.erase_node(out)
    order = positions(graph)
    for node in sorted(set(chain), key=order.__getitem__, reverse=True):
        for user in list(node.users):
            if user.target in _ASSERTS:
                graph.erase_node(user)
        if not node.users:
            graph.erase_node(node)
    return sdpa


def run(gm: GraphModule, ctx: PassContext) -> GraphModule:
    captured = 0
    for softmax in [n for t in _SOFTMAX for n in gm.graph.find_nodes(op="call_function", target=t)]:
        try:
            found, chain, out = _match(softmax)
        except Refused as e:
            ctx.decide(NAME, softmax.name, str(e))
            continue
        sdpa = _rewrite(gm, found, chain, out)
        captured += 1
        mask = "no mask" if found["mask"] is None else f"mask {found['mask'].name}"
        ctx.decide(NAME, sdpa.name, f"matmul-softmax-matmul -> attention (scale {found['scale']:.4g}, {mask})", True)
    if captured:
        gm.graph.lint()
        gm.recompile()
    return gm
