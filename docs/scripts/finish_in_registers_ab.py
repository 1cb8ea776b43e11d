"""A zoo model exported twice - the indirect convolution's epilogue on the
accumulator registers (default) and through the tile buffer
(`conv_indirect.FINISH_IN_REGISTERS = False`) - timed alternately.

    python docs/scripts/finish_in_registers_ab.py resnet18 30 5   # model, rounds, calls per round
"""
import torch, time, statistics, sys
import fusecc
from fusecc.bench import zoo
from fusecc.codegen.c import conv_indirect as CI
torch.set_num_threads(2)
name = sys.argv[1]
e = zoo.ZOO[name]; model, x = e.model("full"), e.example_input("full", 1)
def build(flag):
    CI.FINISH_IN_REGISTERS = flag
    try:
        with torch.no_grad():
            return fusecc.compile_exported(torch.export.export(model, (x,)))
    finally:
        CI.FINISH_IN_REGISTERS = True
v = {"acc": build(False), "registers": build(True)}
with torch.no_grad():
    ref = model(x)
    for k, c in v.items(): print(k, "err", (c(x) - ref).abs().max().item())
    res = {k: [] for k in v}; ratios = []
    rounds = int(sys.argv[2]); calls = int(sys.argv[3])
    for r in range(rounds):
        m = {}
        for k in (list(v) if r % 2 else list(v)[::-1]):
            f = v[k]; f(x)
            ts = []
            for _ in range(calls):
                s = time.perf_counter(); f(x); ts.append(time.perf_counter() - s)
            m[k] = statistics.median(ts); res[k].append(m[k])
        ratios.append(m["acc"] / m["registers"])
for k, val in res.items(): print(k, "%.3f ms" % (statistics.median(val) * 1e3))
print(name, "acc/registers paired %.3f q1 %.3f q3 %.3f" % (statistics.median(ratios), *statistics.quantiles(ratios, n=4)[::2]))
