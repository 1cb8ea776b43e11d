"""What happened to one compiled graph: passes run, groups formed, ops that
fell back to ATen and why, and every decision a pass made or refused.

The same record feeds the dump's ``summary.json``, ``fusecc inspect`` and
``fusecc.explain``.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any


@dataclasses.dataclass
class PassRecord:
    name: str
    seconds: float = 0.0
    nodes_before: int = 0
    nodes_after: int = 0
    changed: bool = False
    skipped: str | None = None  # why the pass did not run


@dataclasses.dataclass
class Fallback:
    subject: str  # an op ("aten.sort.default") or a group ("fused_gemm_3")
    reason: str
    count: int = 1


@dataclasses.dataclass
class Decision:
    pass_name: str
    subject: str
    message: str
    accepted: bool


@dataclasses.dataclass
class GraphReport:
    name: str
    kind: str  # inference | forward | backward | export
    target: str = "aten"
    # how the graph reached fusecc: "aot_autograd" (Dynamo, called through
    # AOTAutograd's runtime wrappers), "aot_export" (Dynamo, called directly)
    # or "torch.export"
    capture: str = ""
    frozen_constants: int = 0
    passes: list[PassRecord] = dataclasses.field(default_factory=list)
    groups: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    fallbacks: list[Fallback] = dataclasses.field(default_factory=list)
    decisions: list[Decision] = dataclasses.field(default_factory=list)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    kernels: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # generated kernels (dumps, inspect)
    nodes_captured: int = 0
    nodes_final: int = 0
    dump_path: str | None = None

    def decide(self, pass_name: str, subject: str, message: str, accepted: bool) -> None:
        self.decisions.append(Decision(pass_name, subject, message, accepted))

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        # kernel sources go to their own files in the dump, not into the summary
        data["kernels"] = [{k: v for k, v in kern.items() if k != "source"} for kern in self.kernels]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GraphReport:
        data = dict(data)
        data["passes"] = [PassRecord(**p) for p in data.get("passes", [])]
        data["fallbacks"] = [Fallback(**f) for f in data.get("fallbacks", [])]
        data["decisions"] = [Decision(**d) for d in data.get("decisions", [])]
        return cls(**data)

    def format(self, verbose: bool = False) -> str:
        lines = [
            f"graph {self.name} ({self.kind}{', ' + self.capture if self.capture else ''}, target {self.target}): "
            f"{self.nodes_captured} nodes captured -> {self.nodes_final} after passes, "
            f"{len(self.groups)} fused groups, {self.frozen_constants} frozen constants"
        ]
        kinds = Counter(g["kind"] for g in self.groups)
        if kinds:
            lines.append("  groups by kind: " + ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items())))
        for g in self.groups if verbose else []:
            lines.append(f"    {g['name']}: {' -> '.join(g['members'])}")
        if self.fallbacks:
            lines.append("  fallbacks to ATen:")
            lines.extend(f"    {f.subject} (x{f.count}): {f.reason}" for f in self.fallbacks)
        else:
            lines.append("  fallbacks to ATen: none")
        refused = [d for d in self.decisions if not d.accepted]
        if refused:
            lines.append(f"  refused candidates ({len(refused)}):")
            shown = refused if verbose else refused[:10]
            lines.extend(f"    [{d.pass_name}] {d.subject}: {d.message}" for d in shown)
            if len(shown) < len(refused):
                lines.append(f"    ... {len(refused) - len(shown)} more (see the dump's summary.json)")
        ran = [p for p in self.passes if p.skipped is None]
        lines.append(
            "  passes: "
            + ", ".join(f"{p.name} {p.seconds * 1e3:.1f}ms{'*' if p.changed else ''}" for p in ran)
            + "  (* changed the graph)"
        )
        skipped = [p for p in self.passes if p.skipped is not None]
        if skipped:
            lines.append("  skipped: " + ", ".join(f"{p.name} ({p.skipped})" for p in skipped))
        return "\n".join(lines)
