"""Render an expression DAG as C statements, in vector or scalar form.

Shared by every C kernel kind. A kind renderer supplies how a `Load`, the
accumulator (`Acc`) and a reduction result (`Stat`) read in its loops; this
module emits one temporary per distinct subexpression.
"""

from __future__ import annotations

from collections.abc import Callable

from ...kernels.expr import Acc, Const, Expr, Load, Op, Stat, walk

_BINARY = {"add", "sub", "mul", "div", "max", "min", "pow"}
_CALLS = {
    "neg": "neg",
    "abs": "abs",
    "exp": "exp",
    "log": "log",
    "sqrt": "sqrt",
    "rsqrt": "rsqrt",
    "tanh": "tanh",
    "erf": "erf",
    "sigmoid": "sigmoid",
    "relu": "relu",
    "silu": "silu",
    "gelu": "gelu",
    "gelu_tanh": "gelu_tanh",
    "recip": "recip",
    "round_bf16": "round_bf16",
    "sin": "sin",
    "cos": "cos",
}
_COMPARE = {"lt", "le", "gt", "ge", "eq", "ne"}


def c_float(value: float) -> str:
    if value != value:
        return "NAN"
    if value in (float("inf"), float("-inf")):
        return "INFINITY" if value > 0 else "-INFINITY"
    text = repr(float(value))
    return text + "f" if ("e" in text or "." in text) else text + ".0f"


class ExprEmitter:
    """Emits C for expressions; ``vector`` picks the v*/s* vocabulary."""

    def __init__(
        self,
        vector: bool,
        load: Callable[[Load], str],
        acc: Callable[[], str] | None = None,
        stat: Callable[[Stat], str] | None = None,
        prefix: str = "t",
    ):
        self.p = "v" if vector else "s"
        self.type = "vf" if vector else "float"
        self.load_fn, self.acc_fn, self.stat_fn = load, acc, stat
        self.prefix = prefix
        self.names: dict[Expr, str] = {}
        self.lines: list[str] = []

    def _new(self, code: str) -> str:
        name = f"{self.prefix}{len(self.names)}"
        self.lines.append(f"{self.type} {name} = {code};")
        return name

    def _cond(self, e: Expr) -> str:
        """A select condition as a mask (comparisons feed vselect directly)."""
        p = self.p
        if isinstance(e, Op) and e.name in _COMPARE:
            a, b = (self.emit(x) for x in e.args)
            return f"{p}{e.name}({a}, {b})"
        return f"{p}ne({self.emit(e)}, {p}set1(0.0f))"

    def emit(self, e: Expr) -> str:
        if e in self.names:
            return self.names[e]
        p = self.p
        for node in walk([e]):
            if node in self.names:
                continue
            if isinstance(node, Const):
                code = f"{p}set1({c_float(node.value)})"
            elif isinstance(node, Load):
                code = self.load_fn(node)
            elif isinstance(node, Acc):
                code = self.acc_fn()
            elif isinstance(node, Stat):
                code = self.stat_fn(node)
            elif isinstance(node, Op):
                code = self._op(node)
            else:
                raise TypeError(f"unknown expression node {node!r}")
            self.names[node] = self._new(code)
        return self.names[e]

    def _op(self, node: Op) -> str:
        p = self.p
        if node.name == "select":
            cond = self._cond(node.args[0])
            a, b = (self.names[x] for x in node.args[1:])
            return f"{p}select({cond}, {a}, {b})"
        args = [self.names[x] for x in node.args]
        if node.name in _BINARY:
            return f"{p}{node.name}({args[0]}, {args[1]})"
        if node.name in _COMPARE:
            return f"{p}select({p}{node.name}({args[0]}, {args[1]}), {p}set1(1.0f), {p}set1(0.0f))"
        if node.name in _CALLS:
            return f"{p}{_CALLS[node.name]}({args[0]})"
        raise ValueError(f"no C rendering for op {node.name!r}")

    def take_lines(self, indent: str) -> str:
        text = "\n".join(indent + line for line in self.lines)
        self.lines = []
        return text
