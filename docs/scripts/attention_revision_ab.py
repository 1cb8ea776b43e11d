"""The C attention kernel as rendered at a past git revision against
today's, in one process: both exported, timed alternately, with SDPA
(eager) beside them when the workload is attention alone. Prints each
median and the paired per-round ratio old / new with its quartiles.

    python docs/scripts/attention_revision_ab.py c6c3dea vit_small 12      # revision, zoo model, rounds
    python docs/scripts/attention_revision_ab.py c6c3dea 4096x64 5         # revision, L x head dim (12 heads), rounds

The old renderer is loaded from `git show REV:fusecc/codegen/c/attention.py`
as a sibling module, so it uses today's prelude, GEMM micro-kernel and
runtime: only the attention kernel's own code differs.
"""

import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import fusecc
from fusecc.bench import zoo
from fusecc.codegen.c import attention

ROOT = Path(__file__).resolve().parents[2]


class SDPA(torch.nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


def renderer_at(revision: str):
    source = subprocess.run(
        ["git", "show", f"{revision}:fusecc/codegen/c/attention.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "attention_old.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("fusecc.codegen.c.attention_old", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.render


def workload(name: str):
    if name in zoo.ZOO:
        entry = zoo.ZOO[name]
        return entry.model("full"), (entry.example_input("full", 1),)
    length, head_dim = (int(v) for v in name.split("x"))
    torch.manual_seed(0)
    return SDPA(), tuple(torch.randn(1, 12, length, head_dim) for _ in range(3))


def main() -> None:
    revision, name, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(2)
    model, inputs = workload(name)
    new_render = attention.render
    runs = {}
    with torch.no_grad():
        for label, render in ((revision, renderer_at(revision)), ("today", new_render)):
            attention.render = render
            try:
                runs[label] = fusecc.compile_exported(torch.export.export(model, inputs))
            finally:
                attention.render = new_render
        reference = model(*inputs)  # zoo models return one tensor (LogitsOnly)
        if isinstance(model, SDPA):
            runs["sdpa"] = model
        for label, run in runs.items():
            print(f"{label}: max abs error against eager {float((run(*inputs) - reference).abs().max()):.2e}")
        medians = {label: [] for label in runs}
        ratios = []
        for r in range(rounds):
            this_round = {}
            for label in list(runs) if r % 2 else list(runs)[::-1]:
                runs[label](*inputs)
                times = []
                for _ in range(3):
                    start = time.perf_counter()
                    runs[label](*inputs)
                    times.append(time.perf_counter() - start)
                this_round[label] = statistics.median(times)
                medians[label].append(this_round[label])
            ratios.append(this_round[revision] / this_round["today"])
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    ms = {label: round(statistics.median(t) * 1e3, 2) for label, t in medians.items()}
    print(f"{name}: {ms} ms; {revision} / today, paired: {statistics.median(ratios):.3f} ({q1:.3f}-{q3:.3f})")


if __name__ == "__main__":
    main()
