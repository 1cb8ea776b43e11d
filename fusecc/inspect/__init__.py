"""``fusecc inspect DUMP_DIR``: read IR dumps back into a readable report."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..report import GraphReport


def find_graph_dumps(root: str | Path) -> list[Path]:
    """Graph dump folders under ``root`` (or ``root`` itself), in order."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"dump directory {root} does not exist")
    if (root / "summary.json").exists():
        return [root]
    found = sorted(p.parent for p in root.glob("*/summary.json"))
    if not found:
        raise FileNotFoundError(
            f"no graph dumps (*/summary.json) under {root}; compile with options={{'dump_dir': ...}}"
        )
    return found


def load_reports(root: str | Path) -> list[tuple[Path, GraphReport]]:
    out = []
    for folder in find_graph_dumps(root):
        try:
            data = json.loads((folder / "summary.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{folder / 'summary.json'} is not a readable fusecc summary: {e}") from e
        out.append((folder, GraphReport.from_json(data)))
    return out


def _graph_section(console: Console, folder: Path, report: GraphReport, show_all: bool) -> None:
    total = sum(p.seconds for p in report.passes)
    console.rule(f"[bold]{report.name}[/] ({report.kind}, target {report.target})")
    console.print(
        f"folder {folder}\n{report.nodes_captured} nodes captured -> {report.nodes_final} after passes; "
        f"{len(report.groups)} fused groups; {report.frozen_constants} frozen constants; "
        f"passes {total * 1e3:.1f} ms, lowering {report.timings.get('lower_s', 0) * 1e3:.1f} ms"
    )

    passes = Table(title="passes", title_justify="left")
    for col in ("#", "pass", "ms", "nodes", "what it did"):
        passes.add_column(col)
    for i, p in enumerate(report.passes, 1):
        if p.skipped:
            passes.add_row(str(i), p.name, "-", "-", f"skipped: {p.skipped}")
            continue
        did = [d.message for d in report.decisions if d.pass_name == p.name and d.accepted]
        summary = "; ".join(dict.fromkeys(did)) if len(did) <= 2 else f"{len(did)} rewrites"
        nodes = f"{p.nodes_before} -> {p.nodes_after}"
        passes.add_row(str(i), p.name, f"{p.seconds * 1e3:.1f}", nodes, summary if p.changed else "no change")
    console.print(passes)

    if report.groups:
        table = Table(title="fused groups", title_justify="left")
        for col in ("group", "kind", "member ops", "in", "out"):
            table.add_column(col)
        shown = report.groups if show_all else report.groups[:30]
        for g in shown:
            kind = g["kind"]
            if g.get("attrs", {}).get("strategies"):  # an attention group under a sparsity plan
                kind += f" ({g['attrs']['strategies']})"
            table.add_row(g["name"], kind, " -> ".join(g["members"]), str(len(g["inputs"])), str(len(g["outputs"])))
        console.print(table)
        if len(shown) < len(report.groups):
            console.print(f"... {len(report.groups) - len(shown)} more groups (--all shows them)")

    if report.kernels:
        table = Table(title=f"generated kernels ({report.kernels[0].get('dialect', '')})", title_justify="left")
        # the cuda target's library_check: the kernel's speed against its group's ATen ops
        weighed = any("library_check" in k for k in report.kernels)
        for col in ("group", "kind", "space", "parameters", "build s", "cache", *(["vs ATen"] if weighed else []),
                    "source"):  # fmt: skip
            table.add_column(col)
        shown = report.kernels if show_all else report.kernels[:30]
        for kern in shown:
            params = {k: v for k, v in kern.get("params", {}).items() if k != "vl"}
            table.add_row(
                kern["group"],
                kern.get("spec", {}).get("kind", kern["kind"]),
                str(kern.get("spec", {}).get("space", "")),
                ", ".join(f"{k}={v}" for k, v in params.items()),
                f"{kern.get('seconds', 0):.2f}",
                "hit" if kern.get("cached") else "built",
                *([_versus_aten(kern.get("library_check"))] if weighed else []),
                kern.get("source_file", ""),
            )
        console.print(table)
        if len(shown) < len(report.kernels):
            console.print(f"... {len(report.kernels) - len(shown)} more kernels (--all shows them)")

    profiled = [k for k in report.kernels if k.get("profile")]
    if profiled:
        _efficiency_table(console, profiled, show_all)

    # what lowering decided for the graph as a whole (memory plan, kernel
    # chains, shared scratch): accepted decisions of no pass in the table
    pass_names = {p.name for p in report.passes}
    runtime = [d for d in report.decisions if d.accepted and d.pass_name not in pass_names]
    if runtime:
        console.print("[bold]runtime[/]")
        for d in runtime:
            console.print(escape(f"  [{d.pass_name}] {d.message}"))

    if report.fallbacks:
        console.print("[bold]fallbacks to ATen[/]")
        for f in report.fallbacks:
            console.print(f"  {f.subject} x{f.count}: {f.reason}")
    else:
        console.print("fallbacks to ATen: none")
    refused = [d for d in report.decisions if not d.accepted]
    if refused:
        console.print(f"[bold]refused candidates[/] ({len(refused)})")
        for d in refused if show_all else refused[:10]:
            console.print(escape(f"  [{d.pass_name}] {d.subject}: {d.message}"))


def _versus_aten(check: dict | None) -> str:
    """``1.8x (12.0 / 21.6 us)``: how much faster the kernel ran than its group's ATen ops."""
    if not check:
        return ""
    if "error" in check:
        return f"not weighed: {check['error'][:40]}"
    return f"{check['aten_us'] / check['kernel_us']:.2f}x ({check['kernel_us']:.1f} / {check['aten_us']:.1f} us)"


def _efficiency_table(console: Console, kernels: list[dict], show_all: bool) -> None:
    """The roofline view: each kernel (and each layer of a block, run as a
    kernel of its own) against the machine's measured peaks."""
    peaks = kernels[0]["profile"]["peaks"]
    table = Table(
        title=f"efficiency (peaks measured here: {peaks['gflops']:.0f} GFLOP/s, {peaks['gbps']:.0f} GB/s)",
        title_justify="left",
    )
    for col in ("kernel", "kind", "us", "MFLOP", "GFLOP/s", "GB/s", "bound", "of roof", "unfused us", "fusion gain"):
        table.add_column(col, justify="left" if col in ("kernel", "kind", "bound") else "right")

    def row(name: str, kind: str, p: dict, unfused: str = "", gain: str = "") -> None:
        if "executed_mflop" in p:  # GFLOP/s counts the direct algorithm's work; the roof what ran
            kind = f"{kind} ({p['executed_mflop']:.0f} MFLOP run)"
        table.add_row(
            name, kind, f"{p['time_us']:.1f}", f"{p['mflop']:.1f}", f"{p['gflops']:.1f}", f"{p['gbps']:.1f}",
            p["bound"], f"{100 * p['efficiency']:.0f}%", unfused, gain,
        )  # fmt: skip

    for k in kernels if show_all else kernels[:40]:
        p = k["profile"]
        if "unfused_us" in p:
            row(k["group"], k["kind"], p, f"{p['unfused_us']:.1f}", f"{p['unfused_us'] / p['time_us']:.2f}x")
            for layer in p["layers"]:
                row(f"  {layer['group']}", "layer", layer)
        else:
            row(k["group"], k["kind"], p)
    console.print(table)


def inspect_dump(
    root: str | Path, *, show_all: bool = False, diff: str | None = None, console: Console | None = None
) -> None:
    console = console or Console(width=160 if not Console().is_terminal else None)
    reports = load_reports(root)
    for folder, report in reports:
        if diff:
            diffs = sorted(folder.glob(f"*_{diff}.diff"))
            console.rule(f"{report.name}: {diff}")
            if not diffs:
                console.print(f"pass {diff!r} did not change this graph (or is not a pass name)")
            for d in diffs:
                console.print(d.read_text(), markup=False, highlight=False)
            continue
        _graph_section(console, folder, report, show_all)
