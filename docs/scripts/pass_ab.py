"""One fusecc pass on and off, paired in one process: both programs
compiled through `torch.compile`, checked against eager, then timed in
alternated rounds (`fusecc.bench.timing`)."""

import statistics

import torch

from fusecc.bench.timing import alternated_rounds, paired_ratio


def pass_on_off(model, inputs: tuple, pass_name: str, labels: tuple[str, str], rounds: int, calls: int) -> None:
    """Prints each program's error to eager, the median ms of each and the
    paired ratio off / on; ``labels``: (on, off)."""
    on_label, off_label = labels
    runs = {}
    with torch.no_grad():
        reference = model(*inputs)
        for label, on in ((on_label, True), (off_label, False)):
            torch._dynamo.reset()
            compiled = torch.compile(model, backend="fusecc", options={"passes": {pass_name: on}})
            print(f"{label}: max abs error to eager {(compiled(*inputs) - reference).abs().max().item():.2e}")
            runs[label] = lambda c=compiled: c(*inputs)
        times = alternated_rounds(runs, rounds, calls=calls)
    median, q1, q3 = paired_ratio(times[off_label], times[on_label])
    ms = {label: round(statistics.median(t) * 1e3, 1) for label, t in times.items()}
    print(f"{ms} ms; {off_label} / {on_label} {median:.3f}x (quartiles {q1:.3f}-{q3:.3f})")
