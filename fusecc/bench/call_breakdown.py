"""Where one ``torch.compile(model, backend="fusecc")`` call spends its time:
``fusecc bench --call-breakdown``.

A call goes through Dynamo's guard evaluation (is the cached graph still
valid for these arguments and this module state?), Dynamo's generated
bytecode and AOTAutograd's runtime wrapper (which gather every parameter
as an argument), fusecc's prologue (the frozen-parameter check of
`CompiledGraph.runtime_inputs`) and finally the compiled graph (the
kernels). The same program compiled through ``torch.export``
(`fusecc.compile_exported`) pays only the last, so the table shows what
the capture path costs on top of fusecc's own code.

With ``--kernels`` it also times every kernel of the exported program
inside the model (a timer around each kernel call) and alone, hot (the
same kernel called again and again on the inputs it last saw): a kernel
much slower in the model than hot reads inputs or weights that the
kernels before it pushed out of the caches.

Each call is timed in the state a real call finds: the guard check is
re-run right after a call, when the kernels have pushed the module
objects it walks out of the caches, as the next call's check would find
them. Calls of the two paths alternate, so a machine that slows down
during the run slows both.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from ..export import compile_exported
from ..runtime.compiled_graph import CompiledGraph
from ..runtime.kernel import kernel_nodes
from . import zoo
from .harness import machine_info, rel_error

PARTS = ("guards", "dynamo_other", "fusecc_prologue", "compiled_graph")
GUARD_FILTERS = tuple(n for n in dir(torch.compiler) if n.startswith("skip_guard_on_"))


@contextlib.contextmanager
def _timed_compiled_graphs(log: list[tuple[float, float]]):
    """While active, every CompiledGraph call appends (prologue s, graph s)."""
    original = CompiledGraph.__call__

    def timed(self, args):
        start = time.perf_counter()
        inputs = self.runtime_inputs(args)
        mid = time.perf_counter()
        out = self.gm.forward(*inputs)
        log.append((mid - start, time.perf_counter() - mid))
        return out

    CompiledGraph.__call__ = timed
    try:
        yield
    finally:
        CompiledGraph.__call__ = original


def _guard_check(model: torch.nn.Module, x: torch.Tensor):
    """A call that evaluates the guards of Dynamo's cached entry for the
    model's forward, or None where that entry cannot be reached (more than
    one, or a Dynamo without the debug accessor)."""
    code = type(model).forward.__code__
    try:
        entries = torch._dynamo.eval_frame._debug_get_cache_entry_list(code)
    except AttributeError:
        return None
    if len(entries) != 1:
        return None
    names = code.co_varnames[: code.co_argcount]
    frame_locals = {names[0]: model, names[1]: x}
    manager = entries[0].guard_manager
    if not manager.check(frame_locals):
        return None
    return lambda: manager.check(frame_locals)


def measure(model: torch.nn.Module, x: torch.Tensor, exported, calls: int, guard_filter: str | None = None) -> dict:
    """Median microseconds of each part of a torch.compile call, and of the
    same model's ``exported`` program (`compile_exported`) called in
    alternation. ``guard_filter``: the name of one of ``torch.compiler``'s
    guard filters (e.g. ``skip_guard_on_all_nn_modules_unsafe``) to compile with."""
    torch._dynamo.reset()
    options = {"guard_filter_fn": getattr(torch.compiler, guard_filter)} if guard_filter else None
    compiled = torch.compile(model, backend="fusecc", options=options)
    with torch.no_grad():
        expected = model(x)
        got = compiled(x)
        exported(x)
        check = _guard_check(model, x)
        log: list[tuple[float, float]] = []
        rows: dict[str, list[float]] = {k: [] for k in ("total", "export", "over_export", *PARTS)}
        with _timed_compiled_graphs(log):
            for _ in range(calls):
                log.clear()
                start = time.perf_counter()
                compiled(x)
                total = time.perf_counter() - start
                guards = None
                if check is not None:
                    start = time.perf_counter()
                    check()
                    guards = time.perf_counter() - start
                start = time.perf_counter()
                exported(x)
                rows["export"].append(time.perf_counter() - start)
                rows["over_export"].append(total - rows["export"][-1])
                prologue, graph = sum(p for p, _ in log), sum(g for _, g in log)
                rows["total"].append(total)
                rows["fusecc_prologue"].append(prologue)
                rows["compiled_graph"].append(graph)
                if guards is not None:
                    rows["guards"].append(guards)
                    rows["dynamo_other"].append(total - guards - prologue - graph)
    torch._dynamo.reset()
    us = {k: statistics.median(v) * 1e6 if v else None for k, v in rows.items()}
    return {"us": us, "graphs_per_call": len(log), "rel_error": rel_error(got, expected)}


def kernel_times(exported, x: torch.Tensor, calls: int, hot_calls: int = 50) -> list[dict]:
    """Median microseconds of each generated kernel of a `compile_exported`
    program, inside the model and alone (hot), in graph order."""
    nodes = kernel_nodes(exported.gm)
    originals = {n: n.target for n in nodes}
    inside: dict[str, list[float]] = {n.target.__name__: [] for n in nodes}
    last_args: dict[str, tuple] = {}

    def timed(fn):
        name, times = fn.__name__, inside[fn.__name__]

        def call(*args):
            start = time.perf_counter()
            out = fn(*args)
            times.append(time.perf_counter() - start)
            last_args[name] = args
            return out

        return call

    try:
        for n in nodes:
            n.target = timed(n.target)
        exported.gm.recompile()
        with torch.no_grad():
            for _ in range(5):
                exported(x)
            for times in inside.values():
                times.clear()
            for _ in range(calls):
                exported(x)
            rows = []
            for n, fn in originals.items():
                args = last_args[fn.__name__]
                for _ in range(3):
                    fn(*args)
                hot = []
                for _ in range(hot_calls):
                    start = time.perf_counter()
                    fn(*args)
                    hot.append(time.perf_counter() - start)
                rows.append({"kernel": fn.__name__, "kind": fn.kernel.spec.kind,
                             "in_model_us": statistics.median(inside[fn.__name__]) * 1e6,
                             "hot_us": statistics.median(hot) * 1e6})  # fmt: skip
    finally:
        for n, fn in originals.items():
            n.target = fn
        exported.gm.recompile()
    return rows


def _kernel_table(result: dict) -> Table:
    table = Table(title=f"{result['model']}: each kernel of the exported program, median us")
    for column in ("kernel", "kind", "in the model", "hot", "in the model / hot"):
        table.add_column(column, justify="left" if column in ("kernel", "kind") else "right")
    for k in result["kernels"]:
        ratio = k["in_model_us"] / k["hot_us"]
        table.add_row(k["kernel"], k["kind"], f"{k['in_model_us']:.1f}", f"{k['hot_us']:.1f}", f"{ratio:.2f}x")
    total_in, total_hot = (sum(k[f] for k in result["kernels"]) for f in ("in_model_us", "hot_us"))
    table.add_row("all kernels", "", f"{total_in:.0f}", f"{total_hot:.0f}", f"{total_in / total_hot:.2f}x")
    return table


def _share(us: dict, part: str) -> str:
    v = us[part]
    return "n/a" if v is None else f"{v:.0f} ({v / us['total']:.0%})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fusecc bench --call-breakdown", description=__doc__.split("\n\n")[0])
    parser.add_argument("--call-breakdown", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="+", default=["mobilenet_v2", "resnet18"], choices=list(zoo.ZOO))
    parser.add_argument("--size", choices=["full", "tiny"], default="full")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--calls", type=int, default=300, help="timed calls per model")
    parser.add_argument(
        "--guard-filter",
        choices=GUARD_FILTERS,
        help="also measure with this torch.compiler guard filter (they trade safety for fewer guards)",
    )
    parser.add_argument(
        "--kernels", action="store_true", help="also time each kernel of the exported program in the model and hot"
    )
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = parser.parse_args(argv)
    console = Console(width=200 if not Console().is_terminal else None)
    info = machine_info()
    console.print(f"machine: {info}")
    results = []
    for name in args.models:
        entry = zoo.ZOO[name]
        model, x = entry.model(args.size), entry.example_input(args.size, args.batch)
        with torch.no_grad():  # one exported program per model: the guard filter changes only torch.compile
            exported = compile_exported(torch.export.export(model, (x,)))
        for guard_filter in (None, args.guard_filter) if args.guard_filter else (None,):
            label = f"{name} ({guard_filter})" if guard_filter else name
            console.print(f"[bold]{label}[/] ({args.size}, batch {args.batch}): {args.calls} calls ...")
            result = measure(model, x, exported, args.calls, guard_filter)
            results.append({"model": label, "batch": args.batch, "size": args.size, "guard_filter": guard_filter,
                            **result})  # fmt: skip
        if args.kernels:  # one graph call per kernel, so each can be timed
            with torch.no_grad():
                unchained = compile_exported(torch.export.export(model, (x,)), {"chain_kernels": False})
            results[-1]["kernels"] = kernel_times(unchained, x, args.calls)
    table = Table(title="one torch.compile call, median us (share of the call)")
    for column in ("model", "call", "Dynamo guards", "Dynamo + AOT other", "fusecc prologue",
                   "compiled graph", "compile_exported call", "call - exported"):  # fmt: skip
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in results:
        us = r["us"]
        table.add_row(r["model"], f"{us['total']:.0f}", *(_share(us, p) for p in PARTS), f"{us['export']:.0f}",
                      _share(us, "over_export"))  # fmt: skip
    console.print(table)
    for r in results:
        if "kernels" in r:
            console.print(_kernel_table(r))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": info, "command": "fusecc bench " + " ".join(argv or []), "results": results}, fh,
                      indent=2)  # fmt: skip
    return 0
