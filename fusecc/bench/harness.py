"""The model-zoo benchmark: ``fusecc bench`` / ``python -m fusecc.bench``.

For every (model, batch) it builds each peer, checks its output against
eager, times all peers interleaved in one process, and prints median
latency with fusecc's ratio to each peer. ``--json`` writes everything.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict

import torch
from rich.console import Console
from rich.table import Table

from . import peers as peer_builders
from . import zoo
from .timing import interleaved

DEFAULT_PEERS = ["eager", "inductor", "inductor_freeze", "onnxruntime", "fusecc"]


def machine_info() -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "asimd", "asimddp") if f in flags]
    return {
        "cpu": cpu,
        "isa": " ".join(isa),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.float(), ref.float()
    return ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


def time_peers(
    label: str, builders: dict[str, Callable], inputs: tuple, peers: list[str], budget_s: float, console: Console,
    reference: str | None = None,
) -> dict:  # fmt: skip
    """Build each peer (``builders[peer]()`` -> a callable on ``inputs``),
    time them interleaved, and give each its error against ``reference``'s
    output: ``{"model": label, "batch": 1, "peers": {peer: {...}}}``."""
    result = {"model": label, "batch": 1, "peers": {}}
    runners, outputs = {}, {}
    for peer in peers:
        console.print(f"  [{label}] building {peer} ...", end="")
        began = time.perf_counter()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            fn = builders[peer]()
            outputs[peer] = fn(*inputs)
        runners[peer] = functools.partial(fn, *inputs)
        result["peers"][peer] = {"compile_s": time.perf_counter() - began}
        console.print(f" {result['peers'][peer]['compile_s']:.1f}s")
    if reference in outputs:
        for peer, out in outputs.items():
            result["peers"][peer]["rel_error"] = rel_error(out, outputs[reference])
    with torch.no_grad():
        stats = interleaved(runners, budget_s=budget_s)
    for peer, st in stats.items():
        result["peers"][peer].update(vars(st))
    torch._dynamo.reset()
    return result


def bench_one(
    name: str,
    batch: int,
    peer_names: list[str],
    budget_s: float,
    console: Console,
    fusecc_options: dict | None = None,
    size: str = "full",
) -> dict[str, object]:
    entry = zoo.get(name)
    return bench_module(name, entry.model(size), entry.example_input(size, batch), batch, peer_names, budget_s,
                        console, fusecc_options)  # fmt: skip


def bench_module(
    name: str,
    model: torch.nn.Module,
    x: torch.Tensor,
    batch: int,
    peer_names: list[str],
    budget_s: float,
    console: Console,
    fusecc_options: dict | None = None,
) -> dict[str, object]:
    """Build every peer on (model, x), check it against eager, time them
    interleaved in this process."""
    with torch.no_grad():
        ref = model(x)
    result: dict[str, object] = {"model": name, "batch": batch, "peers": {}}
    runners = {}
    for peer in peer_names:
        builder = peer_builders.PEERS[peer]
        console.print(f"  [{name} b{batch}] building {peer} ...", end="")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if peer.startswith("fusecc"):
                    run, compile_s = builder(model, x, fusecc_options)
                else:
                    run, compile_s = builder(model, x)
            err = rel_error(run(), ref)
            runners[peer] = run
            result["peers"][peer] = {"compile_s": compile_s, "rel_error": err}
            console.print(f" {compile_s:.1f}s, rel. error {err:.1e}")
        except Exception as e:  # noqa: BLE001 - a peer that fails is reported, not fatal
            result["peers"][peer] = {"error": f"{type(e).__name__}: {e}"[:300]}
            console.print(f" [red]failed[/]: {type(e).__name__}: {str(e)[:200]}")
    stats = interleaved(runners, budget_s=budget_s)
    for peer, s in stats.items():
        result["peers"][peer].update(asdict(s))
    torch._dynamo.reset()  # keep Dynamo's per-code cache small across models
    return result


def _ms(result: dict, peer: str) -> float | None:
    return result["peers"].get(peer, {}).get("median_ms")


def print_table(results: list[dict], peer_names: list[str], console: Console) -> None:
    for batch in sorted({r["batch"] for r in results}):
        table = Table(title=f"median latency (ms), batch {batch}; ratio = peer time / fusecc time (>1: fusecc faster)")
        table.add_column("model")
        for p in peer_names:
            table.add_column(p, justify="right")
        others = [p for p in peer_names if p != "fusecc"]
        if "fusecc" in peer_names:
            for p in others:
                table.add_column(f"{p}/fusecc", justify="right")
        rows = [r for r in results if r["batch"] == batch]
        ratios: dict[str, list[float]] = {p: [] for p in others}
        for r in rows:
            cells = [r["model"]]
            cells += [f"{v:.2f}" if (v := _ms(r, p)) is not None else "-" for p in peer_names]
            f = _ms(r, "fusecc")
            for p in others if "fusecc" in peer_names else []:
                v = _ms(r, p)
                if v is not None and f:
                    ratios[p].append(v / f)
                    cells.append(f"{v / f:.2f}x")
                else:
                    cells.append("-")
            table.add_row(*cells)
        if "fusecc" in peer_names:
            geo = ["geomean"] + [""] * len(peer_names)
            for p in others:
                xs = ratios[p]
                geo.append(f"{math.exp(sum(map(math.log, xs)) / len(xs)):.2f}x" if xs else "-")
            table.add_row(*geo)
        console.print(table)


def to_markdown(results: list[dict], peer_names: list[str], info: dict, command: str) -> str:
    """The result tables as Markdown (for docs/benchmarks.md)."""
    lines = [
        f"Machine: {info['cpu']} ({info.get('isa', '')}), {info['threads']} threads, torch {info['torch']}, {info['date']}.",
        f"Command: `{command}`",
        "",
    ]
    others = [p for p in peer_names if p != "fusecc"]
    for batch in sorted({r["batch"] for r in results}):
        lines.append(f"Batch {batch}: median latency in ms (ratio = peer / fusecc, >1 means fusecc is faster)")
        lines.append("")
        head = ["model", *peer_names] + ([f"{p}/fusecc" for p in others] if "fusecc" in peer_names else [])
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        ratios: dict[str, list[float]] = {p: [] for p in others}
        for r in (r for r in results if r["batch"] == batch):
            cells = [r["model"]] + [f"{v:.2f}" if (v := _ms(r, p)) is not None else "failed" for p in peer_names]
            f = _ms(r, "fusecc")
            for p in others if "fusecc" in peer_names else []:
                v = _ms(r, p)
                ok = v is not None and f
                if ok:
                    ratios[p].append(v / f)
                cells.append(f"{v / f:.2f}" if ok else "-")
            lines.append("| " + " | ".join(cells) + " |")
        if "fusecc" in peer_names:
            geo = [f"{math.exp(sum(map(math.log, x)) / len(x)):.2f}" if (x := ratios[p]) else "-" for p in others]
            lines.append("| **geomean** |" + " |" * len(peer_names) + " " + " | ".join(geo) + " |")
        lines.append("")
    return "\n".join(lines)


def cases_main(
    argv: list[str] | None,
    flag: str,
    description: str,
    cases: dict[str, Callable[[int], tuple[torch.nn.Module, torch.Tensor]]],
    default_batch: list[int],
    default_peers: list[str],
) -> int:
    """The command line of a benchmark of named cases (``fusecc bench
    --blocks``, ``--attention``): each case builds (model, input) for a
    batch size; every peer is timed on it by `bench_module`; the table is
    printed and optionally written as JSON and Markdown."""
    parser = argparse.ArgumentParser(prog=f"fusecc bench {flag}", description=description)
    parser.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch", nargs="+", type=int, default=default_batch)
    parser.add_argument("--budget", type=float, default=3.0, help="timing seconds per (case, batch)")
    parser.add_argument("--only", nargs="+", choices=list(cases), help="a subset of the cases")
    parser.add_argument("--peers", nargs="+", default=default_peers)
    args, console, info = start(parser, argv)
    results = []
    for name in args.only or list(cases):
        for batch in args.batch:
            torch.manual_seed(0)
            model, x = cases[name](batch)
            results.append(bench_module(name, model, x, batch, args.peers, args.budget, console))
    report(results, args, info, console, argv)
    return 0


def start(parser: argparse.ArgumentParser, argv) -> tuple[argparse.Namespace, Console, dict]:
    """Add the output options, parse, and print the machine: (args, console, machine info)."""
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--markdown", metavar="PATH")
    args = parser.parse_args(argv)
    console = Console(width=200 if not Console().is_terminal else None)
    info = machine_info()
    console.print(f"machine: {info}")
    return args, console, info


def report(results: list[dict], args: argparse.Namespace, info: dict, console: Console, argv) -> None:
    """Print the table; write JSON (``args.json``) and Markdown (``args.markdown``) when asked."""
    print_table(results, args.peers, console)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": info, "results": results}, fh, indent=2)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(to_markdown(results, args.peers, info, "fusecc bench " + " ".join(argv or [])))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--gemm" in argv:
        from .gemm import main as gemm_main

        return gemm_main(argv)
    if "--cuda" in argv:
        from .cuda import main as cuda_main

        return cuda_main(argv)
    if "--blocks" in argv:
        from .blocks import main as blocks_main

        return blocks_main(argv)
    if "--attention" in argv:
        from .attention import main as attention_main

        return attention_main(argv)
    if "--sparse-attention" in argv:
        from .sparse_attention import main as sparse_main

        return sparse_main(argv)
    if "--head-pruning" in argv:
        from .head_pruning import main as pruning_main

        return pruning_main(argv)
    if "--overhead" in argv:
        from .overhead import main as overhead_main

        return overhead_main(argv)
    if "--call-breakdown" in argv:
        from .call_breakdown import main as breakdown_main

        return breakdown_main(argv)
    parser = argparse.ArgumentParser(prog="fusecc bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gemm", action="store_true", help="benchmark the generated GEMM against MLAS and MKL")
    parser.add_argument("--overhead", action="store_true", help="per-call overhead of a one-op graph")
    parser.add_argument(
        "--call-breakdown",
        action="store_true",
        help="a model's torch.compile call split into guards, wrappers, kernels",
    )
    parser.add_argument("--blocks", action="store_true", help="residual blocks alone (fused, unfused, peers)")
    parser.add_argument("--cuda", action="store_true", help="the cuda target on a GPU: blocks and models vs eager, inductor")
    parser.add_argument("--attention", action="store_true", help="scaled dot-product attention alone, 128-4096 tokens")
    parser.add_argument(
        "--sparse-attention", action="store_true", help="attention under a sparsity plan vs SDPA and FlexAttention"
    )
    parser.add_argument(
        "--head-pruning", action="store_true", help="a plan's skipped heads removed with their projections vs kept"
    )
    parser.add_argument("--models", nargs="+", default=list(zoo.ZOO), choices=list(zoo.ZOO))
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--peers", nargs="+", default=DEFAULT_PEERS, choices=list(peer_builders.PEERS))
    parser.add_argument("--budget", type=float, default=8.0, help="timing seconds per (model, batch)")
    parser.add_argument(
        "--size",
        choices=["full", "tiny"],
        default="full",
        help="full: the published architectures; tiny: smoke-test sizes",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch/ORT threads (default: torch's)")
    parser.add_argument("--json", metavar="PATH", help="write all results as JSON")
    parser.add_argument("--markdown", metavar="PATH", help="write the tables as Markdown")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console(width=200 if not Console().is_terminal else None)
    info = machine_info()
    console.print(f"machine: {info}")
    results = []
    for name in args.models:
        for batch in args.batch:
            results.append(bench_one(name, batch, args.peers, args.budget, console, size=args.size))
    print_table(results, args.peers, console)
    command = " ".join(["fusecc bench", *(argv if argv is not None else sys.argv[1:])])
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "command": command, "results": results}, f, indent=2)
        console.print(f"wrote {os.path.abspath(args.json)}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(to_markdown(results, args.peers, info, command))
        console.print(f"wrote {os.path.abspath(args.markdown)}")
    return 0
