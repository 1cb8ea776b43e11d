"""One part of the C code generator as it was at a past git revision
against today's, in one process: the workload exported twice, timed
alternately, with SDPA (eager) beside them when the workload is attention
alone. Prints each median and the paired per-round ratio old / new with
its quartiles.

    python docs/scripts/revision_ab.py c6c3dea attention vit_small 12    # revision, part, zoo model, rounds
    python docs/scripts/revision_ab.py c6c3dea attention 4096x64 5       # L x head dim (12 heads)
    python docs/scripts/revision_ab.py 643554b prelude convnext_tiny 16  # the prelude's math functions

Parts: `attention` (the attention kernel's renderer) and `prelude` (the
vector math every kernel includes). The old part is loaded from
`git show REV:fusecc/codegen/c/PART.py` as a sibling module, and only its
renderer (`render`) or math (`_MATH`) is swapped in: everything else is
today's.
"""

import importlib
import importlib.util
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

import fusecc
from fusecc.bench import zoo
from fusecc.bench.timing import alternated_rounds, paired_ratio

ROOT = Path(__file__).resolve().parents[2]


class SDPA(torch.nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


PARTS = {"attention": "render", "prelude": "_MATH"}  # part -> the attribute swapped


def part_at(revision: str, part: str):
    """The swapped attribute of ``fusecc/codegen/c/PART.py`` at ``revision``."""
    source = subprocess.run(
        ["git", "show", f"{revision}:fusecc/codegen/c/{part}.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / f"{part}_old.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"fusecc.codegen.c.{part}_old", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, PARTS[part])


def workload(name: str):
    if name in zoo.ZOO:
        entry = zoo.ZOO[name]
        return entry.model("full"), (entry.example_input("full", 1),)
    length, head_dim = (int(v) for v in name.split("x"))
    torch.manual_seed(0)
    return SDPA(), tuple(torch.randn(1, 12, length, head_dim) for _ in range(3))


def main() -> None:
    revision, part, name, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    module = importlib.import_module(f"fusecc.codegen.c.{part}")  # the module, not what __init__ re-exports
    torch.set_num_threads(2)
    model, inputs = workload(name)
    today = getattr(module, PARTS[part])
    runs = {}
    with torch.no_grad():
        for label, value in ((revision, part_at(revision, part)), ("today", today)):
            setattr(module, PARTS[part], value)
            try:
                runs[label] = fusecc.compile_exported(torch.export.export(model, inputs))
            finally:
                setattr(module, PARTS[part], today)
        reference = model(*inputs)  # zoo models return one tensor (LogitsOnly)
        if isinstance(model, SDPA):
            runs["sdpa"] = model
        for label, run in runs.items():
            print(f"{label}: max abs error against eager {float((run(*inputs) - reference).abs().max()):.2e}")
        rounds_s = alternated_rounds({label: lambda run=run: run(*inputs) for label, run in runs.items()}, rounds)
    ratio, q1, q3 = paired_ratio(rounds_s[revision], rounds_s["today"])
    ms = {label: round(statistics.median(t) * 1e3, 2) for label, t in rounds_s.items()}
    print(f"{name}: {ms} ms; {revision} / today, paired: {ratio:.3f} ({q1:.3f}-{q3:.3f})")


if __name__ == "__main__":
    main()
