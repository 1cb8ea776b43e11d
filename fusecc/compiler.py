"""The middle of the pipeline, shared by every entry point:
captured ATen graph -> passes -> lowering -> the graph that runs.

Entry points (the Dynamo backend, ``compile_exported``) capture and freeze;
this module does the rest and returns the runnable graph with its report.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Iterator

from torch.fx import Graph, GraphModule

from . import targets
from .dump import DumpWriter
from .graph.fused_group import groups
from .options import Options
from .passes import PIPELINE
from .passes.manager import PassContext, PassManager
from .passes.verify import DebugVerifier
from .report import GraphReport
from .runtime.lower import lower

_graph_ids = itertools.count()
_collectors: list[list[GraphReport]] = []
_collectors_lock = threading.Lock()


@contextlib.contextmanager
def collect_reports() -> Iterator[list[GraphReport]]:
    """Collect the report of every graph compiled inside the block
    (``fusecc.explain`` uses this)."""
    sink: list[GraphReport] = []
    with _collectors_lock:
        _collectors.append(sink)
    try:
        yield sink
    finally:
        with _collectors_lock:
            _collectors.remove(sink)


def _enable_verbose_logging() -> None:
    """``options.verbose``: fusecc's log messages go to stderr."""
    log = logging.getLogger("fusecc")
    if not any(getattr(h, "_fusecc", False) for h in log.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[fusecc] %(message)s"))
        handler._fusecc = True
        log.addHandler(handler)
    log.setLevel(logging.INFO)


def new_graph_name(kind: str) -> str:
    return f"graph_{next(_graph_ids):03d}_{kind}"


def copy_graph_module(gm: GraphModule) -> GraphModule:
    """A GraphModule with a fresh copy of ``gm``'s graph (node metadata is
    shared, not deep-copied), so passes can rewrite it freely."""
    graph = Graph()
    out = graph.graph_copy(gm.graph, {})
    graph.output(out)
    return GraphModule(gm, graph)


def compile_graph(
    gm: GraphModule,
    *,
    kind: str,
    options: Options,
    name: str | None = None,
    frozen_constants: int = 0,
    capture: str = "",
) -> tuple[GraphModule, GraphReport]:
    """Run the pass pipeline and lowering over a captured graph (in place)."""
    name = name or new_graph_name(kind)
    if options.verbose:
        _enable_verbose_logging()
    report = GraphReport(
        name=name, kind=kind, target=options.target, frozen_constants=frozen_constants, capture=capture
    )
    report.nodes_captured = len(gm.graph.nodes)
    start = time.perf_counter()
    dump = DumpWriter(options.dump_dir, name) if options.dump_dir else None
    instruments = []
    if dump:
        dump.captured(gm)
        instruments.append(dump)
    if options.debug:
        instruments.append(DebugVerifier())
    ctx = PassContext(options, is_inference=kind in ("inference", "export"), report=report)
    gm = PassManager(PIPELINE, instruments).run(gm, ctx)
    report.groups = [g.describe() for _, g in groups(gm)]
    report.nodes_final = len(gm.graph.nodes)
    passes_done = time.perf_counter()
    if dump:
        dump.groups(gm)
    gm = lower(gm, targets.get(options.target), report, options)
    report.timings = {"passes_s": passes_done - start, "lower_s": time.perf_counter() - passes_done}
    if dump:
        dump.final(gm, report)
    if options.verbose:
        logging.getLogger("fusecc").info("%s", report.format())
    with _collectors_lock:
        for sink in _collectors:
            sink.append(report)
    return gm, report
