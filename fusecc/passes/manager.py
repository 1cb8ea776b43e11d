"""The pass manager: runs an ordered list of passes over an FX graph.

A pass is a module with ``NAME``, ``INFERENCE_ONLY`` and one entry point
``run(gm, ctx) -> gm``. The manager decides whether each pass runs (options,
inference vs training), times it, records whether it changed the graph, and
hands the graph to *instruments* before and after every pass - the dump
writer and the debug verifier are instruments, in the spirit of TVM's
``PassInstrument``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from types import ModuleType
from typing import Protocol

from torch.fx import GraphModule

from ..options import Options
from ..report import GraphReport, PassRecord

log = logging.getLogger("fusecc.passes")


@dataclasses.dataclass
class PassContext:
    """What a pass may read (options, graph kind) and write (the report)."""

    options: Options
    is_inference: bool
    report: GraphReport

    def decide(self, pass_name: str, subject: str, message: str, accepted: bool = False) -> None:
        """Record a decision - most usefully a refused candidate and why."""
        self.report.decide(pass_name, subject, message, accepted)
        if self.options.verbose:
            log.info("[%s] %s %s: %s", pass_name, "took" if accepted else "refused", subject, message)


class PassInstrument(Protocol):
    def before_pass(self, name: str, gm: GraphModule, ctx: PassContext) -> None: ...

    def after_pass(self, name: str, gm: GraphModule, ctx: PassContext, record: PassRecord) -> None: ...


class PassManager:
    def __init__(self, passes: list[ModuleType], instruments: list[PassInstrument] = ()):
        self.passes = list(passes)
        self.instruments = list(instruments)

    def run(self, gm: GraphModule, ctx: PassContext) -> GraphModule:
        for p in self.passes:
            record = PassRecord(p.NAME)
            ctx.report.passes.append(record)
            if not ctx.options.pass_enabled(p.NAME):
                record.skipped = "disabled by options"
                continue
            if p.INFERENCE_ONLY and not ctx.is_inference:
                record.skipped = "inference-only pass on a training graph"
                continue
            for inst in self.instruments:
                inst.before_pass(p.NAME, gm, ctx)
            before = gm.code
            record.nodes_before = len(gm.graph.nodes)
            start = time.perf_counter()
            gm = p.run(gm, ctx)
            gm.recompile()
            record.seconds = time.perf_counter() - start
            record.nodes_after = len(gm.graph.nodes)
            record.changed = gm.code != before
            if ctx.options.verbose:
                log.info(
                    "%s: %-18s %7.1f ms  %4d -> %4d nodes%s",
                    ctx.report.name,
                    p.NAME,
                    record.seconds * 1e3,
                    record.nodes_before,
                    record.nodes_after,
                    "" if record.changed else "  (no change)",
                )
            for inst in self.instruments:
                inst.after_pass(p.NAME, gm, ctx, record)
        return gm
