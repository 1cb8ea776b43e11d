"""`KernelSpec`: the target-independent description of one kernel.

It is the only thing that crosses from the graph side (passes, lowering)
to the code generators: a kind, an iteration space, the tensors read
(operands) and how each iteration point maps to their memory (accesses),
the expression computing every output element, kind-specific attributes,
and the tunable parameters with the values a tuner may try.

Kinds and their iteration spaces:

* ``elementwise`` - ``space`` is the output shape (coalesced).
* ``reduction`` - ``space = (rows, cols)``: every row is reduced over its
  cols by the ``stages`` (each ``(op, expr)`` yields ``Stat(i)``); outputs
  are per element or per row.
* ``gemm`` - ``space = (batch, M, N)``, ``attrs["K"]``; operand
  ``attrs["a"]`` is [batch, M, K], ``attrs["b"]`` is [batch, K, N] (packed at
  compile time when constant); outputs are epilogue expressions of ``Acc``.
* ``conv2d`` - ``space = (N, C_out, OH, OW)``; ``attrs`` holds the input and
  weight operands and the geometry; outputs are epilogues of ``Acc``, or
  their mean over the output pixels (``Output.pool``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import torch

from .expr import Expr, walk

# The element types a spec names, and the torch dtypes they stand for.
TORCH_DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "bool": torch.bool}
DTYPES = tuple(TORCH_DTYPES)


@dataclasses.dataclass(frozen=True)
class Operand:
    """A tensor the kernel reads: a runtime input, or a constant the kernel
    owns (frozen weights; may be re-laid-out at compile time)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    constant: bool
    arg_index: int  # position among the group's call arguments


@dataclasses.dataclass(frozen=True)
class Access:
    """Element offset of ``operand`` at iteration point i: sum(i[d] * strides[d])."""

    operand: int
    strides: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Output:
    name: str
    dtype: str
    shape: tuple[int, ...]
    expr: Expr
    per_row: bool = False  # reduction kernels: one value per row
    col_range: tuple[int, int] | None = None  # gemm: this output holds columns [lo, hi) (horizontal fusion)
    strides: tuple[int, ...] | None = None  # memory layout when not contiguous (elementwise follows eager's)
    # element offset per iteration-space dim: reductions; gemm outputs reached through a permute
    space_strides: tuple[int, ...] | None = None
    # conv2d: "mean" - the output is ``expr`` averaged over the output pixels
    # (OH, OW), one value per (image, channel); the full result is never stored
    pool: str | None = None


@dataclasses.dataclass
class KernelSpec:
    kind: str
    name: str
    space: tuple[int, ...]
    operands: list[Operand]
    accesses: list[Access]
    outputs: list[Output]
    attrs: dict[str, Any] = dataclasses.field(default_factory=dict)
    stages: list[tuple[str, Expr]] = dataclasses.field(default_factory=list)
    tunables: dict[str, tuple] = dataclasses.field(default_factory=dict)

    def runtime_operands(self) -> list[int]:
        return [i for i, o in enumerate(self.operands) if not o.constant]

    def exprs(self) -> list[Expr]:
        return [e for _, e in self.stages] + [o.expr for o in self.outputs]

    def flops_per_point(self) -> int:
        from .expr import Op

        return sum(1 for n in walk(self.exprs()) if isinstance(n, Op))

    def signature(self) -> str:
        """Stable hash of everything that determines the generated code
        (not names, not constant values): the tuning and cache key."""
        return hashlib.sha256(repr(self._payload()).encode()).hexdigest()[:16]

    def _payload(self) -> tuple:
        """The signature's content. A block's layers (``attrs["layers"]``, the
        specs of its nested groups) enter by their own payloads: their names
        depend on where the block sits in the graph, so equal blocks at two
        places (and in two compiles) must not hash apart."""
        return (
            self.kind,
            self.space,
            [(o.dtype, o.shape, o.strides, o.constant) for o in self.operands],
            self.accesses,
            # a pool joins the key only where set: other kernels keep their cached builds
            [
                (o.dtype, o.shape, o.expr, o.per_row, o.col_range, o.strides, o.space_strides)
                + ((o.pool,) if o.pool else ())
                for o in self.outputs
            ],
            sorted((k, _name_free(v)) for k, v in self.attrs.items()),
            self.stages,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "space": list(self.space),
            "operands": [
                f"{o.name}: {o.dtype}{list(o.shape)}{' const' if o.constant else ''} strides={list(o.strides)}"
                for o in self.operands
            ],
            "outputs": [
                f"{o.name}: {o.dtype}{list(o.shape)}{' per-row' if o.per_row else ''}{f' {o.pool}-pooled' if o.pool else ''}"
                for o in self.outputs
            ],
            "attrs": {
                k: _describe_attr(v)
                for k, v in self.attrs.items()
                if isinstance(v, (int, float, str, list, tuple, bool))
            },
            "stages": [s for s, _ in self.stages],
            "signature": self.signature(),
        }


def conv_geometry(spec: KernelSpec) -> dict:
    """A ``conv2d`` spec's geometry by name, for every renderer: sizes, groups,
    per-group channels, kernel, stride, padding (top/left/bottom/right),
    dilation, K = (cin/g)*kh*kw, P = oh*ow, and the input strides."""
    a = spec.attrs
    n, cout, oh, ow = spec.space
    g = a["groups"]
    cin = a["in_channels"]
    kh, kw = a["kernel"]
    return {
        "n": n, "cout": cout, "oh": oh, "ow": ow, "g": g, "cin": cin,
        "cin_g": cin // g, "cout_g": cout // g, "h": a["in_hw"][0], "w": a["in_hw"][1],
        "kh": kh, "kw": kw, "sh": a["stride"][0], "sw": a["stride"][1],
        "pt": a["padding"][0], "pl": a["padding"][1], "pb": a["padding"][2], "pr": a["padding"][3],
        "dh": a["dilation"][0], "dw": a["dilation"][1], "K": (cin // g) * kh * kw, "P": oh * ow,
        "xsn": a["in_strides"][0], "xsc": a["in_strides"][1], "xsh": a["in_strides"][2], "xsw": a["in_strides"][3],
    }  # fmt: skip


def _describe_attr(value: Any) -> Any:
    """Attributes for dumps; nested specs (a block's layers) described in turn."""
    if isinstance(value, (list, tuple)):
        return [_describe_attr(v) for v in value]
    return value.describe() if isinstance(value, KernelSpec) else value


def _name_free(value: Any) -> Any:
    """``value`` with every nested KernelSpec replaced by its payload."""
    if isinstance(value, KernelSpec):
        return value._payload()
    if isinstance(value, (list, tuple)):
        return type(value)(_name_free(v) for v in value)
    return value
