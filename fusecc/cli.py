"""The ``fusecc`` command."""

from __future__ import annotations

import argparse
import sys

from . import options as options_mod


def _options_epilog() -> str:
    from . import targets
    from .passes import PASS_NAMES

    lines = ["options (torch.compile(..., backend='fusecc', options={...}) or environment variables):"]
    for row in options_mod.describe():
        lines.append(f"  {row['name']:<10} {row['env']:<18} default {row['default']:<8} {row['help']}")
    lines.append("")
    lines.append("passes, in order: " + ", ".join(PASS_NAMES))
    lines.append("targets: " + "; ".join(f"{t.name} ({t.description})" for t in targets.TARGETS.values()))
    return "\n".join(lines)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .inspect import inspect_dump

    try:
        inspect_dump(args.dump_dir, show_all=args.all, diff=args.diff)
    except (FileNotFoundError, ValueError) as e:
        print(f"fusecc inspect: {e}", file=sys.stderr)
        return 2
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    import torch

    from .bench import zoo
    from .explain import explain

    entry = zoo.get(args.model)
    model = entry.model(args.size)
    with torch.no_grad():
        print(explain(model, entry.example_input(args.size, args.batch)).format(verbose=args.verbose))
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table

    from .bench import zoo
    from .compiler import collect_reports

    entry = zoo.get(args.model)
    model, x = entry.model(args.size), entry.example_input(args.size, args.batch)
    options = {"tune": "tune", "tune_trials": args.trials, "cache_dir": args.cache_dir}
    with torch.no_grad(), collect_reports() as reports:
        torch.compile(model, backend="fusecc", options=options)(x)
    table = Table(title=f"fusecc tune {args.model} (batch {args.batch}): microseconds per call, median")
    columns = ("kernel", "kind", "default", "best", "speedup", "paired", "measured now", "records", "parameters")
    for column in columns:
        table.add_column(column, justify="left" if column in ("kernel", "kind", "parameters") else "right")
    for report in reports:
        for k in report.kernels:
            t = k.get("tuning") or {}
            default, best = t.get("default_us"), t.get("best_us")
            if "unconfirmed" in t:  # the search's best, which the paired re-timing turned down
                best = t["unconfirmed"]["us"]
            shown = {p: v for p, v in k["params"].items() if p != "vl"}
            table.add_row(
                k["group"], k["kind"], f"{default:.1f}" if default else "-", f"{best:.1f}" if best else "-",
                f"{default / best:.2f}x" if default and best else "-", _paired(t), str(t.get("measured_now", 0)),
                str(t.get("records", 0)), str(shown),
            )  # fmt: skip
    console = Console()
    if not console.is_terminal:  # a log or a pipe: the parameters need the width
        console = Console(width=200)
    console.print(table)
    return 0


def _paired(tuning: dict) -> str:
    """The paired re-timing of the search's best against the default, and its verdict."""
    speedup = tuning.get("paired_speedup")
    if speedup is None:
        return "-"
    return f"{speedup:.2f}x " + ("default kept" if "unconfirmed" in tuning else "taken")


def _cmd_calibrate(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table

    from .sparsity import minilm
    from .sparsity.calibrate import calibrate

    console = Console()
    quality = None
    if args.model == "minilm":  # real weights and real text
        result = minilm.quality(args.budget, args.block, args.out, skip=args.skip)
        plan, quality = result["plan"], result["cosine"]
    else:
        from .bench import zoo

        entry = zoo.get(args.model)
        model = entry.model(args.size)
        samples = [(entry.example_input(args.size, 1),) for _ in range(args.samples)]
        with torch.no_grad():
            plan = calibrate(model, samples, budget=args.budget, block=args.block, path=args.out, skip=args.skip)
    table = Table(title=f"attention plan for {args.model} (budget {args.budget}, blocks of {args.block})")
    for column in ("layer", "head", "strategy", "sizes", "recall", "kept", "predicted ms"):
        table.add_column(column, justify="left" if column in ("strategy", "sizes") else "right")
    for i, heads in enumerate(plan.layers):
        for j, h in enumerate(heads):
            sizes = {k: (v if k not in ("blocks", "columns") else f"{len(v)} listed") for k, v in h.items()
                     if k not in ("kind", "recall", "kept", "predicted_ms", "output_error")}  # fmt: skip
            recall = f"output error {h['output_error']:.4f}" if h["kind"] == "skip" else f"{h['recall']:.3f}"
            table.add_row(str(i), str(j), h["kind"], str(sizes) if sizes else "", recall, f"{100 * h['kept']:.0f}%",
                          f"{h['predicted_ms']:.3f}")  # fmt: skip
    console.print(table)
    console.print(f"plan: {plan.summary()}" + (f"; written to {args.out}" if args.out else ""))
    if quality is not None:
        console.print(f"held-apart passages, cosine similarity to the dense model: min {min(quality):.5f}, "
                      f"mean {sum(quality) / len(quality):.5f}")  # fmt: skip
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench.harness import main as bench_main

    return bench_main(args.rest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fusecc",
        description="fusecc: a deep-learning graph compiler (torch.compile backend 'fusecc').",
        epilog=_options_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="print a readable report of an IR dump directory")
    p.add_argument("dump_dir")
    p.add_argument("--all", action="store_true", help="list every group and refused candidate")
    p.add_argument("--diff", metavar="PASS", help="show what PASS changed in each graph")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("explain", help="compile a zoo model and explain groups, fallbacks and refusals")
    from .bench.zoo import ZOO

    p.add_argument("model", choices=list(ZOO))
    p.add_argument("--size", choices=["full", "tiny"], default="tiny")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=_cmd_explain)

    p = sub.add_parser("tune", help="tune the kernels of a zoo model on this machine (results go to the database)")
    p.add_argument("model", choices=list(ZOO))
    p.add_argument("--size", choices=["full", "tiny"], default="full")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--trials", type=int, default=16, help="measurements per kernel (earlier ones count)")
    p.add_argument("--cache-dir", default=None, help="kernel cache and tuning database folder")
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser("calibrate", help="find each attention head's sparsity pattern and write a plan")
    transformers = [name for name, e in ZOO.items() if e.family == "transformer"]
    p.add_argument("model", choices=["minilm", *transformers], help="minilm: pretrained MiniLM-L6 on real text")
    p.add_argument("--size", choices=["full", "tiny"], default="tiny")
    p.add_argument("--samples", type=int, default=2, help="sample inputs (zoo models: random tokens or images)")
    p.add_argument("--budget", type=float, default=0.95,
                   help="attention mass every head keeps; 1 - budget: the output error skipped heads may cause")  # fmt: skip
    p.add_argument("--block", type=int, default=16, help="block size of the plan (16, 32, 64, 128)")
    p.add_argument("--out", default=None, help="write the plan (JSON) here")
    p.add_argument("--no-skip", dest="skip", action="store_false",
                   help="never skip heads (skipping zeroes each head in turn to measure what it contributes)")  # fmt: skip
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser("bench", help="benchmark the model zoo against eager, inductor and ONNX Runtime", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_bench)

    # `bench` forwards everything after it to the harness's own parser, before
    # argparse sees it: REMAINDER refuses a remainder that starts with an option.
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        return _cmd_bench(argparse.Namespace(rest=argv[1:]))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
