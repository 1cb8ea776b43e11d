"""The scalar expression IR inside a kernel: what one output element is,
as a DAG of loads, constants and operations.

Every renderer (C dialects, CUDA, TVM) walks these few node types; none of
them sees ATen. Nodes are frozen dataclasses, so structurally equal
subexpressions are equal and hash alike - renderers emit each once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator


@dataclasses.dataclass(frozen=True)
class Expr:
    def children(self) -> tuple[Expr, ...]:
        return ()


@dataclasses.dataclass(frozen=True)
class Load(Expr):
    """Element of operand ``operand`` at the current iteration point; the
    kernel spec says how the point maps to memory (``access``)."""

    operand: int
    access: int  # index into KernelSpec.accesses


@dataclasses.dataclass(frozen=True)
class Acc(Expr):
    """The anchor's result at this point: a GEMM/conv accumulator."""


@dataclasses.dataclass(frozen=True)
class Stat(Expr):
    """Result of reduction stage ``index`` for the current row."""

    index: int


@dataclasses.dataclass(frozen=True)
class Const(Expr):
    value: float


@dataclasses.dataclass(frozen=True)
class Op(Expr):
    name: str
    args: tuple[Expr, ...]

    def children(self) -> tuple[Expr, ...]:
        return self.args


# name -> (arity, reference implementation on Python floats). The reference
# gives the exact meaning every renderer must implement; tests use it.
def _gelu(x: float) -> float:
    return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))


def _gelu_tanh(x: float) -> float:
    return 0.5 * x * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


OPS: dict[str, tuple[int, Callable[..., float]]] = {
    "add": (2, lambda a, b: a + b),
    "sub": (2, lambda a, b: a - b),
    "mul": (2, lambda a, b: a * b),
    "div": (2, lambda a, b: a / b),
    "max": (2, max),
    "min": (2, min),
    "neg": (1, lambda a: -a),
    "abs": (1, abs),
    "exp": (1, math.exp),
    "log": (1, math.log),
    "sqrt": (1, math.sqrt),
    "rsqrt": (1, lambda a: 1.0 / math.sqrt(a)),
    "tanh": (1, math.tanh),
    "erf": (1, math.erf),
    "sigmoid": (1, _sigmoid),
    "relu": (1, lambda a: max(a, 0.0)),
    "silu": (1, lambda a: a * _sigmoid(a)),
    "gelu": (1, _gelu),
    "gelu_tanh": (1, _gelu_tanh),
    "recip": (1, lambda a: 1.0 / a),
    "sin": (1, math.sin),
    "cos": (1, math.cos),
    "pow": (2, lambda a, b: a**b),
    # comparisons yield 1.0 / 0.0; select picks by "cond != 0"
    "lt": (2, lambda a, b: float(a < b)),
    "le": (2, lambda a, b: float(a <= b)),
    "gt": (2, lambda a, b: float(a > b)),
    "ge": (2, lambda a, b: float(a >= b)),
    "eq": (2, lambda a, b: float(a == b)),
    "ne": (2, lambda a, b: float(a != b)),
    "select": (3, lambda c, a, b: a if c != 0 else b),
    "round_bf16": (1, lambda a: a),  # rounding to bfloat16 (an explicit cast inside a group)
}


def op(name: str, *args: Expr) -> Op:
    arity, _ = OPS[name]
    if len(args) != arity:
        raise ValueError(f"op {name!r} takes {arity} arguments, got {len(args)}")
    return Op(name, tuple(args))


def walk(roots: list[Expr]) -> Iterator[Expr]:
    """Every node reachable from ``roots``, children before parents, once."""
    seen: set[Expr] = set()
    stack: list[tuple[Expr, bool]] = [(r, False) for r in reversed(roots)]
    while stack:
        node, expanded = stack.pop()
        if node in seen:
            continue
        if expanded:
            seen.add(node)
            yield node
            continue
        stack.append((node, True))
        stack.extend((c, False) for c in reversed(node.children()) if c not in seen)


def count_ops(roots: list[Expr]) -> int:
    return sum(1 for n in walk(roots) if isinstance(n, Op))
