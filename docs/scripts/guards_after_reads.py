"""Dynamo's guard check for MobileNetV2 (`torch.compile(backend="fusecc")`)
timed hot, right after the exported model ran, and right after reading
2-16 MB of other memory: how much of its cost is the caches the model's
weights left behind. Median of 100 rounds, modes alternated.

    python docs/scripts/guards_after_reads.py
"""

import torch, time, statistics
from fusecc.bench import zoo
from fusecc.bench.call_breakdown import _guard_check
from fusecc.export import compile_exported
e = zoo.get("mobilenet_v2"); m = e.model(); x = e.example_input()
with torch.no_grad():
    c = torch.compile(m, backend="fusecc"); c(x)
    ex = compile_exported(torch.export.export(m, (x,)))
    check = _guard_check(m, x)
    bufs = {mb: torch.randn(mb * 262144) for mb in (2, 4, 8, 16)}
    res = {}
    for _ in range(100):
        for label, before in [("hot", lambda: None), ("after_model", lambda: ex(x))] + [(f"after_read_{mb}MB", (lambda b=b: b.sum())) for mb, b in bufs.items()]:
            before()
            s = time.perf_counter(); check(); res.setdefault(label, []).append(time.perf_counter() - s)
for k, v in res.items(): print(f"{k:18s} {statistics.median(v)*1e6:7.1f} us")
