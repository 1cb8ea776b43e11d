"""Where the dense attention kernel's time goes: the kernel rendered with
one part cut out at a time (its output is then wrong; only the time
counts), against the whole kernel and SDPA, interleaved in one process
(`fusecc.bench.timing.interleaved`, the benchmarks' timer).

    python docs/scripts/attention_ablation.py 2048 64 5    # L, head dim (12 heads), rounds at least

Cuts: `no_exp` (the softmax's exponential replaced by its argument),
`no_softmax` (the whole per-row softmax pass), `no_pv` and `no_qk` (the
two GEMMs), `no_pack` (the key and value packing loops). whole - cut is
the part's cost.
"""

import re
import sys

import torch
import torch.nn.functional as F

import fusecc
from fusecc.bench.timing import interleaved
from fusecc.codegen.c import attention

render = attention.render


def _no_exp(src: str) -> str:
    return src.replace("const vf e = vsoftmax_exp2(", "const vf e = (")


def _no_softmax(src: str) -> str:
    start = src.index("for (long i = ra; i < rb; ++i) {  /* online softmax")
    end = src.index("for (long r0 = ra; r0 < rb; r0 += ", start)
    return src[:start] + "\n" + src[end:]


def _no_gemm(operand: str):
    return lambda src: re.sub(rf"(\w+_gemm\(r, \w+, {operand})", r"if (0) \1", src)


def _no_pack(src: str) -> str:
    for what in ("keys", "values"):
        src = src.replace(f"for (long j = 0; j < kn; ++j) {{  /* {what}", f"for (long j = 0; j < 0; ++j) {{  /* {what}")
    return src


CUTS = {
    "whole": lambda src: src,
    "no_exp": _no_exp,
    "no_softmax": _no_softmax,
    "no_pv": _no_gemm("sc"),
    "no_qk": _no_gemm("qh"),
    "no_pack": _no_pack,
}


class SDPA(torch.nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


def main() -> None:
    length, head_dim, rounds = (int(a) for a in sys.argv[1:4])
    torch.set_num_threads(2)
    q, k, v = (torch.randn(1, 12, length, head_dim) for _ in range(3))
    runs = {}
    with torch.no_grad():
        for name, cut in CUTS.items():
            attention.render = lambda spec, kname, vl, params, cut=cut: cut(render(spec, kname, vl, params))
            try:
                runs[name] = fusecc.compile_exported(torch.export.export(SDPA(), (q, k, v)))
            finally:
                attention.render = render
        runs["sdpa"] = SDPA()
        stats = interleaved({name: lambda run=run: run(q, k, v) for name, run in runs.items()}, min_rounds=rounds)
    ms = {name: round(s.median_ms, 1) for name, s in stats.items()}
    print(f"L={length} d={head_dim}: {ms} ms")


if __name__ == "__main__":
    main()
