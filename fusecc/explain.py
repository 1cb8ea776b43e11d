"""``fusecc.explain(model, *inputs)``: what fusecc does with a model - the
graphs Dynamo captured and where it broke them, the fused groups, every
fallback to ATen and every candidate a pass refused, with reasons."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from .backend import fusecc_backend
from .compiler import collect_reports
from .options import Options
from .report import Fallback, GraphReport


@dataclasses.dataclass
class Explanation:
    graphs: list[GraphReport]
    graph_breaks: int
    break_reasons: list[str]

    @property
    def groups(self) -> list[dict[str, Any]]:
        return [g for r in self.graphs for g in r.groups]

    @property
    def fallbacks(self) -> list[Fallback]:
        return [f for r in self.graphs for f in r.fallbacks]

    def format(self, verbose: bool = False) -> str:
        lines = [
            f"fusecc explain: {len(self.graphs)} graph(s) compiled, {self.graph_breaks} Dynamo graph break(s), "
            f"{len(self.groups)} fused group(s), {len(self.fallbacks)} fallback(s) to ATen"
        ]
        lines += [f"  graph break: {reason}" for reason in self.break_reasons]
        lines += [r.format(verbose=verbose) for r in self.graphs]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def explain(
    model: torch.nn.Module | Any,
    *inputs: Any,
    options: Options | Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Explanation:
    """Compile ``model`` with fusecc on ``inputs`` (under the current grad
    mode, as a real call would be) and report what happened."""
    model = getattr(model, "_orig_mod", model)  # unwrap an earlier torch.compile
    opts = Options.resolve(options)

    def backend(gm, example_inputs):
        return fusecc_backend(gm, example_inputs, options=opts)

    with collect_reports() as reports:
        torch.compile(model, backend=backend)(*inputs, **kwargs)
    dynamo = torch._dynamo.explain(model)(*inputs, **kwargs)
    reasons = [str(getattr(b, "reason", b)).strip().splitlines()[0] for b in dynamo.break_reasons]
    return Explanation(list(reports), dynamo.graph_break_count, reasons)
