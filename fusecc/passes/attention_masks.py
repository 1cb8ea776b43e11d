"""attention_masks: an attention op reads its mask no more than the mask's
values need - not at all where it cannot change the softmax, one row where
every query row is the same.

Hugging Face materializes masks in full, [B, 1, Lq, Lk], and the attention
kernel reads Lq x Lk mask floats per head: at 4096 tokens 64 MB a head,
768 MB a layer of MiniLM's 12 heads, which made its attention 1.27x
slower than with the same mask as one row (12 heads x 32, 2 threads).

Matches, for the float mask of a scaled-dot-product attention op:

* a mask computed from constants alone that adds one finite value to all
  keys of each query row - Hugging Face's bidirectional mask under
  ``torch.export`` (``q_idx >= 0`` and ``kv_idx < L`` broadcast to
  [1, 1, L, L] and turned into 0 / -inf, rebuilt by every layer; 16 ms a
  layer at 4097 tokens). Softmax is shift-invariant, so the op drops the
  mask, exactly. The mask is evaluated once at compile time to tell.
* a constant mask that is the causal mask (0 on and below the diagonal,
  -inf or float32's minimum above it) - GPT-2's and Llama's, where the
  padding mask is all ones or absent (``ones_like`` counts as a constant:
  it reads only its input's shape). The op runs with ``is_causal`` and no
  mask: the kernel skips the key blocks above the diagonal and computes
  the rest exactly as before (exp of the masked scores is 0 either way).
* ``where(causal AND padding, 0, -inf)`` - Hugging Face's decoder mask
  (SDPA attention) when the tokenizer's padding mask is an input: the
  AND's constant operands together are the causal pattern, the others
  have equal query rows. The op runs with ``is_causal`` and reads ``where(padding, 0,
  -inf)`` as one row: the kernel skips the key blocks above the diagonal
  and reads Lk mask floats per image instead of Lq x Lk. On and below the
  diagonal both masks are the padding mask; above it both give -inf. (Its
  eager-attention mask fills with float32's minimum instead: a query row
  with no key to see then averages all keys, which the causal flag would
  change - refused, with the reason.)
* a mask whose value provably does not change along the query rows (dim
  -2): built by elementwise ops and expands from tensors of one row there,
  or from constants whose rows are all equal - a key-padding mask. The op
  reads ``expand(slice(mask, -2, 0, 1))``, a view with stride 0 over the
  rows, so every kernel reads one row; the mask itself is still computed
  once per call.

Refuses, with the reason in the dump: masks whose rows may differ beyond
the causal pattern (sliding-window masks, per-query masks). Masks already
read as one row are left as they are.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
from torch.fx import GraphModule, Node

from ..graph.analysis import tensor_meta
from ..graph.constants import computable, constant_value, is_constant
from ..ops import SDPA_CPU, OpCategory, node_category
from .manager import PassContext

NAME = "attention_masks"
INFERENCE_ONLY = True

aten = torch.ops.aten
_ROW = -2  # the query rows of a [..., Lq, Lk] mask
# ops whose result depends on their input's shape and dtype only, not its data
_LIKE = (aten.ones_like.default, aten.zeros_like.default, aten.full_like.default)
# boolean AND, as traced from `&` and torch.logical_and
_AND = (aten.bitwise_and.Tensor, aten.logical_and.default)


def _rows_equal(gm: GraphModule, node: object, dim: int, memo: dict) -> bool:
    """Whether ``node`` (a tensor, broadcast right-aligned to the mask) is
    the same along ``dim`` (negative: counted from the last dim)."""
    if not isinstance(node, Node):
        return True  # a Python scalar
    val = tensor_meta(node)
    if val is None:
        return False
    if val.dim() < -dim or val.shape[dim] == 1:
        return True  # broadcast along dim
    key = (node, dim)
    if key not in memo:
        memo[key] = False  # no cycles in a graph, but keep recursion finite on odd input
        if is_constant(node):
            t = constant_value(gm, node)
            memo[key] = torch.equal(t, t.narrow(dim, 0, 1).expand_as(t))
        elif node.target is aten.expand.default or node_category(node) is OpCategory.POINTWISE:
            inputs: list[object] = []
            torch.fx.node.map_aggregate((node.args, node.kwargs), inputs.append)
            memo[key] = all(_rows_equal(gm, x, dim, memo) for x in inputs if isinstance(x, Node))
    return memo[key]


def _constant_value(gm: GraphModule, node: object, memo: dict) -> torch.Tensor | None:
    """``node``'s value where it depends on constants alone (computed here,
    not kept), else None."""
    if not isinstance(node, Node):
        return node
    if node not in memo:
        memo[node] = None
        if is_constant(node):
            memo[node] = constant_value(gm, node)
        elif computable(node):
            target = node.target
            like = tensor_meta(node.args[0]) if target in _LIKE else None
            if like is not None:  # the input's data is not read: any tensor of its layout will do
                with torch.no_grad():
                    memo[node] = target(torch.empty_strided(like.shape, like.stride(), dtype=like.dtype),
                                        *node.args[1:], **node.kwargs)  # fmt: skip
                return memo[node]
            inputs = [_constant_value(gm, x, memo) for x in node.all_input_nodes]
            if all(x is not None for x in inputs):
                args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda n: memo[n])
                with torch.no_grad():
                    memo[node] = target(*args, **kwargs)
    return memo[node]


def _shifts_rows_only(value: torch.Tensor) -> bool:
    """A float mask adding one finite value to every key of each row."""
    return (
        value.is_floating_point()
        and bool(torch.isfinite(value).all())
        and torch.equal(value, value.narrow(-1, 0, 1).expand_as(value))
    )


# masked scores: exp(score + this - max) is 0 in float32 for any score below 1e30
_FAR_BELOW = -1e30


def _is_causal(value: torch.Tensor) -> bool:
    """A float mask that is 0 on and below the diagonal (row i, keys j <=
    i: ATen's top-left causal alignment) and far below any score above it
    (-inf, or Hugging Face's float32 minimum: exp underflows to 0 exactly)."""
    if not value.is_floating_point():
        return False
    lq, lk = value.shape[-2:]
    above = torch.ones(lq, lk, dtype=torch.bool).triu(1)
    return bool((value.masked_select(~above.expand_as(value)) == 0).all()) and bool(
        (value.masked_select(above.expand_as(value)) <= _FAR_BELOW).all()
    )


def _drop_dead(gm: GraphModule, node: Node) -> None:
    """Erase ``node`` and whatever only it kept alive."""
    if node.users or node.op != "call_function":
        return
    inputs = node.all_input_nodes
    gm.graph.erase_node(node)
    for x in inputs:
        _drop_dead(gm, x)


def _add(graph: torch.fx.Graph, target, args: tuple, val: torch.Tensor) -> Node:
    """A call_function node with its recorded value."""
    node = graph.call_function(target, args)
    node.meta["val"] = val
    return node


def _one_row(graph: torch.fx.Graph, node: Node, shape: list[int]) -> Node:
    """``node`` (equal along the rows) as a view of its first row - sliced
    where it has more than one - expanded to ``shape``: stride 0 over the
    rows. Inserted right after ``node``."""
    val = tensor_meta(node)
    with graph.inserting_before(node.next):  # in order
        if val.dim() >= -_ROW and val.shape[_ROW] != 1:
            node = _add(graph, aten.slice.Tensor, (node, val.dim() + _ROW, 0, 1), val.narrow(_ROW, 0, 1))
        return _add(graph, aten.expand.default, (node, shape), tensor_meta(node).expand(shape))


def _is_bool(node: object) -> bool:
    val = tensor_meta(node)
    return val is not None and val.dtype is torch.bool


def _and_operands(node: object) -> list[object]:
    """The operands of a tree of boolean ANDs (and the expands broadcasting
    them) rooted at ``node``; ``[node]`` where it is no AND. Only boolean
    ANDs: `&` of integers is not a conjunction."""
    if _is_bool(node) and node.target is aten.expand.default:
        return _and_operands(node.args[0])
    if _is_bool(node) and node.target in _AND and all(_is_bool(x) for x in node.args[:2]):
        return [x for arg in node.args[:2] for x in _and_operands(arg)]
    return [node]


def _causal_and_rows(gm: GraphModule, mask: Node, memo: dict) -> list[Node] | str | None:
    """For ``mask = where(AND(...), 0, -inf)`` whose constant AND operands
    make up the causal pattern and whose other operands have equal query
    rows: those other operands. A reason (str) where only the fill value
    is in the way; else None."""
    if mask.target is not aten.where.self:
        return None
    cond, on, off = mask.args
    on_v, off_v = (_constant_value(gm, x, {}) for x in (on, off))
    if not all(isinstance(x, torch.Tensor) and x.numel() == 1 for x in (on_v, off_v)):
        return None
    if on_v.item() != 0 or not off_v.item() <= _FAR_BELOW:
        return None
    constants, varying = [], []
    for operand in _and_operands(cond):
        if not _is_bool(operand):
            return None
        value = _constant_value(gm, operand, {})
        if isinstance(value, torch.Tensor):
            constants.append(value)
        else:
            varying.append(operand)
    if not constants or not varying:
        return None
    causal = functools.reduce(torch.logical_and, constants)
    lq, lk = tensor_meta(mask).shape[-2:]
    if causal.dim() < 2 or tuple(causal.shape[-2:]) != (lq, lk):
        return None
    if not torch.equal(causal, torch.ones(lq, lk, dtype=torch.bool).tril().expand_as(causal)):
        return None
    if not all(_rows_equal(gm, x, _ROW, memo) for x in varying):
        return None
    if off_v.item() != float("-inf"):
        # a query row that sees no key (left padding) averages all Lk keys in ATen, as every
        # score is shifted alike; under the causal flag it would average only the keys up to it
        return (
            f"the mask is the causal mask AND one with equal query rows, but masks with {off_v.item():g}, not -inf: "
            "a query row with no key to see averages every key, which the causal flag would change"
        )
    return varying


def _padding_row(gm: GraphModule, mask: Node, varying: list[Node]) -> Node:
    """``where(AND(varying), 0, -inf)`` (``mask``'s own values) as one row,
    expanded to ``mask``'s shape."""
    _, on, off = mask.args
    graph = gm.graph
    with graph.inserting_before(mask.next):  # in order, after mask and so after its inputs
        cond = varying[0]
        for other in varying[1:]:
            cond = _add(graph, aten.bitwise_and.Tensor, (cond, other), tensor_meta(cond) & tensor_meta(other))
        where_val = torch.where(tensor_meta(cond), tensor_meta(on), tensor_meta(off))
        where = _add(graph, aten.where.self, (cond, on, off), where_val)
    return _one_row(graph, where, list(tensor_meta(mask).shape))


@dataclasses.dataclass(frozen=True)
class _Read:
    """What an attention op reads instead of its mask: ``mask`` (None: no
    mask at all), and whether it runs with ``is_causal``."""

    mask: Node | None
    causal: bool = False


def run(gm: GraphModule, ctx: PassContext) -> GraphModule:
    memo: dict = {}
    verdicts: dict[Node, _Read | None] = {}  # None: the mask is read as it is
    replaced: list[Node] = []
    for node in gm.graph.find_nodes(op="call_function", target=SDPA_CPU):
        mask = node.kwargs.get("attn_mask")
        val = tensor_meta(mask)
        if val is None or val.dim() < 2:
            continue
        if mask not in verdicts:
            verdicts[mask] = _verdict(gm, ctx, mask, val, memo)
        read = verdicts[mask]
        if read is None:
            continue
        kwargs = {k: v for k, v in node.kwargs.items() if k != "attn_mask"}
        if read.mask is not None:
            kwargs["attn_mask"] = read.mask
        if read.causal:  # q, k, v and dropout stay positional; is_causal by name
            node.args = node.args[:4]
            kwargs["is_causal"] = True
        node.kwargs = kwargs
        replaced.append(mask)
    for mask in dict.fromkeys(replaced):  # a mask shared by several ops: once; a one-row view still reads it
        _drop_dead(gm, mask)
    return gm


def _verdict(gm: GraphModule, ctx: PassContext, mask: Node, val: torch.Tensor, memo: dict) -> _Read | None:
    """What attention reads instead of ``mask``, or None (the mask as it is)."""
    shape = list(val.shape)
    value = _constant_value(gm, mask, {})  # a fresh memo: the values of one mask at a time
    if isinstance(value, torch.Tensor) and _shifts_rows_only(value):
        ctx.decide(NAME, mask.name, f"the constant {shape} mask shifts each row's scores by one finite value, "
                   "which softmax ignores: dropped", accepted=True)  # fmt: skip
        return _Read(None)
    if isinstance(value, torch.Tensor) and _is_causal(value):
        ctx.decide(NAME, mask.name, f"the constant {shape} mask is the causal mask: the op runs causal, "
                   "skipping the keys above the diagonal, and reads no mask", accepted=True)  # fmt: skip
        return _Read(None, causal=True)
    if val.shape[_ROW] == 1 or val.stride()[_ROW] == 0:
        return None  # read as one row already
    if _rows_equal(gm, mask, _ROW, memo):
        ctx.decide(NAME, mask.name, f"every query row of the {shape} mask is the same: attention reads one row",
                   accepted=True)  # fmt: skip
        return _Read(_one_row(gm.graph, mask, shape))
    varying = _causal_and_rows(gm, mask, memo)
    if isinstance(varying, list):
        ctx.decide(NAME, mask.name, f"the {shape} mask is the causal mask AND one with equal query rows: the op "
                   "runs causal and reads that one row", accepted=True)  # fmt: skip
        return _Read(_padding_row(gm, mask, varying), causal=True)
    if isinstance(varying, str):
        ctx.decide(NAME, mask.name, f"{varying}: attention reads the {shape} mask in full")
        return None
    ctx.decide(NAME, mask.name, f"the query rows of the {shape} mask may differ beyond the causal pattern: "
               "attention reads it in full")  # fmt: skip
    return None
