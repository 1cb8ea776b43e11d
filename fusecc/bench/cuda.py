"""fusecc's cuda target on a GPU against eager and torch.compile (inductor).

Residual blocks alone (`bench.blocks`) and zoo models, each peer timed with
CUDA events over a run of calls, peers alternated round by round, medians
reported with the ratio to eager; every output is checked against eager
first. Needs a CUDA device and nvcc.

  python -m fusecc.bench --cuda [--blocks NAME ...] [--models NAME ...] [--batch 1 8] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ..targets.cuda import events_ms
from . import zoo
from .blocks import BLOCKS, _case
from .harness import machine_info, rel_error
from .peers import _first_call

# fusecc: default options (each kernel weighed against PyTorch's, `library_check`);
# fusecc_kernels: every group as fusecc's kernel; fusecc_unfused: that, without block fusion
PEERS = ("eager", "inductor", "fusecc", "fusecc_kernels", "fusecc_unfused")
_OPTIONS = {
    "fusecc": {},
    "fusecc_kernels": {"library_check": False},
    "fusecc_unfused": {"library_check": False, "passes": {"block_fusion": False}},
}


def _peer(name: str, model: torch.nn.Module, x: torch.Tensor):
    if name == "eager":
        return _first_call(model, x)
    if name == "inductor":
        return _first_call(torch.compile(model), x)
    return _first_call(torch.compile(model, backend="fusecc", options={"target": "cuda", **_OPTIONS[name]}), x)


def time_on_gpu(runners: dict, rounds: int, calls: int) -> dict[str, list[float]]:
    """Per-call milliseconds of each runner, one sample per round; runners
    alternate within a round so drifting clocks hit them all alike."""
    samples = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            run()  # warm after the other peers ran
            samples[name].append(events_ms(run, calls))
    return samples


def bench_case(name: str, model: torch.nn.Module, x: torch.Tensor, peers, rounds: int, calls: int) -> dict:
    from ..compiler import collect_reports

    model, x = model.cuda().eval(), x.cuda()
    with torch.no_grad():
        ref = model(x)
    runners, result = {}, {"case": name, "batch": x.shape[0], "peers": {}}
    for peer in peers:
        torch._dynamo.reset()
        with collect_reports() as reports:
            try:
                run, compile_s = _peer(peer, model, x)
            except Exception as e:  # noqa: BLE001 - reported in the table, the others still run
                result["peers"][peer] = {"error": f"{type(e).__name__}: {e}"[:500]}
                continue
        runners[peer] = run
        entry = {"compile_s": round(compile_s, 2), "rel_error": rel_error(run(), ref)}
        if peer.startswith("fusecc"):
            kinds = [k["kind"] for r in reports for k in r.kernels]
            entry.update(kernels=len(kinds), blocks=kinds.count("block"), fallbacks=sum(len(r.fallbacks) for r in reports))
        result["peers"][peer] = entry
    samples = time_on_gpu(runners, rounds, calls)
    eager_ms = statistics.median(samples["eager"]) if "eager" in samples else None
    for peer, times in samples.items():
        ms = statistics.median(times)
        result["peers"][peer].update(ms=round(ms, 4), vs_eager=round(eager_ms / ms, 3) if eager_ms else None)
    return result


def _line(result: dict) -> str:
    cells = []
    for peer, entry in result["peers"].items():
        if "error" in entry:
            cells.append(f"{peer}: ERROR {entry['error'][:120]}")
        else:
            extra = f" k={entry['kernels']} b={entry['blocks']}" if "kernels" in entry else ""
            cells.append(f"{peer} {entry.get('ms', float('nan')):.3f} ms ({entry.get('vs_eager')}x, err {entry['rel_error']:.1e}{extra})")
    return f"{result['case']} b{result['batch']}: " + " | ".join(cells)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fusecc bench --cuda", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cuda", action="store_true")
    parser.add_argument("--blocks", nargs="*", default=None, help="block names (default: all); none for no blocks")
    parser.add_argument("--models", nargs="*", default=[], choices=list(zoo.ZOO))
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--peers", nargs="+", default=list(PEERS), choices=PEERS)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON (rewritten after every case)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("--cuda needs a CUDA device; none is available")
    info = {**machine_info(), "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    print(f"machine: {info}", flush=True)
    cases = []
    for name in BLOCKS if args.blocks is None else args.blocks:
        factory, shape = BLOCKS[name]
        cases.append((name, _case(factory, shape)))
    for name in args.models:
        entry = zoo.get(name)
        cases.append((name, lambda b, e=entry: (e.model("full"), e.example_input("full", b))))
    results = []
    for name, build in cases:
        for batch in args.batch:
            torch.manual_seed(0)
            start = time.perf_counter()
            model, x = build(batch)
            results.append(bench_case(name, model, x, args.peers, args.rounds, args.calls))
            print(f"{_line(results[-1])}  [{time.perf_counter() - start:.0f} s]", flush=True)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump({"machine": info, "results": results}, f, indent=1)
    return 0
