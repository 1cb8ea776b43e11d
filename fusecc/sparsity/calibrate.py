"""Calibration: where each head's attention mass goes, and the cheapest
strategy per head that keeps enough of it.

``fusecc.calibrate(model, samples, budget=0.95)`` exports the model, runs
fusecc's passes up to `attention_capture` (so attention written out as
matmul-softmax-matmul is found too) and interprets the graph on every
sample. At each attention op it recomputes the probabilities, head by head
in chunks of query rows, and accumulates their mass per (query block, key
block) - the pattern, which for most heads depends on the layer and head,
not on the input (Sparse-vDiT, MInference). Per head it then scores every
candidate strategy (`strategies.py`: bands, sinks + band, strided
diagonals, global columns, the calibrated blocks themselves; dense
always qualifies):

* recall - the share of the attention mass the kept blocks hold, for the
  worst query block (its rows averaged); the worst sample counts;
* cost - the kernel's measured time per kept block on this machine times
  the blocks kept (latency, not FLOPs: fixed per-call costs included).

and picks the cheapest whose recall stays at or above the budget (the
simpler strategy on ties). A layer whose heads together would take longer
than the dense kernel (measured too) stays dense - exact and faster.

The plan records each head's recall, kept share and predicted time, and
is saved as JSON for review and reuse.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.fx import Interpreter

from ..ops import SDPA_CPU, sdpa_options
from .plan import BLOCKS, Plan
from .strategies import ORDER, block_mask

CHUNK_ROWS = 512  # query rows whose probabilities exist at once, per head


@dataclasses.dataclass
class LayerMass:
    """Attention mass per (head, query block, key block), one array per sample."""

    lq: int
    lk: int
    head_dim: int
    causal: bool
    samples: list[np.ndarray] = dataclasses.field(default_factory=list)

    def add(self, q, k, mask, scale: float, causal: bool, block: int) -> None:
        b, h, lq, _ = q.shape
        lk = k.shape[2]
        qn, kn = math.ceil(lq / block), math.ceil(lk / block)
        mass = np.zeros((h, qn, kn))
        allowed = None
        if causal:
            allowed = torch.ones(lq, lk, dtype=torch.bool).tril()  # ATen's causal alignment: top-left
        for r0 in range(0, lq, CHUNK_ROWS):
            r1 = min(lq, r0 + CHUNK_ROWS)
            scores = (q[:, :, r0:r1] @ k.transpose(-2, -1)).float() * scale
            if mask is not None:
                m = mask.expand(b, h, lq, lk)[:, :, r0:r1]
                scores = scores.masked_fill(~m, float("-inf")) if m.dtype is torch.bool else scores + m
            if allowed is not None:
                scores = scores.masked_fill(~allowed[r0:r1], float("-inf"))
            probs = torch.softmax(scores, -1).nan_to_num(0.0).sum(0)  # [H, rows, Lk], batch summed
            pad_k = kn * block - lk
            probs = torch.nn.functional.pad(probs, (0, pad_k)).reshape(h, r1 - r0, kn, block).sum(-1)
            rows = torch.arange(r0, r1) // block
            mass_chunk = torch.zeros(h, qn, kn, dtype=torch.float64)
            mass_chunk.index_add_(1, rows, probs.double())
            mass += mass_chunk.numpy()
        self.samples.append(mass / b)


def _attention_graph(model: torch.nn.Module, sample: tuple):
    """The frozen ATen graph with attention as SDPA ops (as the compiler would see it)."""
    from ..capture import export_decompositions, freeze_placeholders
    from ..export import split_inputs
    from ..options import Options
    from ..passes import attention_capture, constant_fold, cse, dce, remove_noops
    from ..passes.manager import PassContext, PassManager
    from ..report import GraphReport

    ep = torch.export.export(model.eval(), tuple(sample)).run_decompositions(export_decompositions())
    gm = freeze_placeholders(ep.graph_module, split_inputs(ep)[0])
    ctx = PassContext(Options.resolve({}, environ={}), True, GraphReport("calibrate", "inference"))
    return PassManager([constant_fold, remove_noops, cse, dce, attention_capture]).run(gm, ctx)


class _Recorder(Interpreter):
    def __init__(self, gm, layers: list[LayerMass], block: int):
        super().__init__(gm)
        self.layers, self.block, self.index = layers, block, 0

    def run_node(self, n):
        out = super().run_node(n)
        if n.op == "call_function" and n.target is SDPA_CPU:
            q, k = self.env[n.args[0]], self.env[n.args[1]]
            options = sdpa_options(n)
            mask = self.env[options["mask"]] if options["mask"] is not None else None
            scale = options["scale"] or 1.0 / math.sqrt(q.shape[-1])
            if self.index == len(self.layers):
                self.layers.append(LayerMass(q.shape[2], k.shape[2], q.shape[3], options["causal"]))
            self.layers[self.index].add(q, k, mask, scale, options["causal"], self.block)
            self.index += 1
        return out


def _candidates(mass: np.ndarray, lq: int, lk: int, block: int, causal: bool, budget: float) -> list[dict]:
    """Strategies worth scoring for one head, from its mean block mass [Qb, Kb]."""
    kn = mass.shape[1]
    out: list[dict] = [{"kind": "dense"}]
    windows = sorted({w * block for w in (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64) if w < kn})
    out += [{"kind": "local", "window": w} for w in windows]
    out += [{"kind": "a_shape", "sink": s * block, "window": w} for s in (1, 2) for w in windows if s < kn]
    out += [{"kind": "strided", "stride": s * block} for s in (2, 3, 4, 8) if s < kn]
    by_column = np.argsort(-mass.sum(0))
    for c in (1, 2, 4, 8, 16, 32):
        if c < kn:
            out.append({"kind": "vertical", "columns": sorted(int(i) * block for i in by_column[:c])})
    # the calibrated blocks: per query block, the heaviest key blocks until the
    # row keeps a little more than the budget (margin for unseen inputs)
    target = budget + (1 - budget) / 2
    blocks = []
    for qb, row in enumerate(mass):
        total = row.sum()
        if total <= 0:
            continue
        kept = 0.0
        for kb in np.argsort(-row):
            blocks.append([qb, int(kb)])
            kept += row[kb]
            if kept >= target * total:
                break
    out.append({"kind": "block_sparse", "blocks": blocks})
    return out


def _recall(keep: np.ndarray, mass: np.ndarray) -> float:
    """The attention mass kept by the worst query block (its rows averaged):
    every query keeps about the budget, not just the average one."""
    total = mass.sum(1)
    live = total > 0
    if not live.any():
        return 1.0
    return float(((mass * keep).sum(1)[live] / total[live]).min())


def _measure_costs(lq: int, lk: int, heads: int, head_dim: int, block: int, causal: bool) -> tuple[float, float, float]:
    """(fixed ms, ms per kept block over all heads' blocks) of the sparse kernel
    at this layer's shape - from two measured plans, every block and one block
    per query row - and the dense kernel's ms (no plan), batch 1."""
    from ..tuner.measure import median_us

    q, k, v = (torch.randn(1, heads, n, head_dim) for n in (lq, lk, lk))

    class _SDPA(torch.nn.Module):
        def forward(self, q, k, v):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)

    def timed(options: dict) -> float:
        torch._dynamo.reset()
        fn = torch.compile(_SDPA(), backend="fusecc", options=options)
        with torch.no_grad():
            fn(q, k, v)
            return median_us(lambda: fn(q, k, v)) / 1e3

    times, counts = [], []
    for strategy in ({"kind": "local", "window": lq + lk}, {"kind": "local", "window": 0}):  # all blocks, fewest
        times.append(
            timed({"attention_sparsity": {"plan": {"block": block, "layers": [{"heads": [strategy] * heads}]}}})
        )
        counts.append(int(block_mask(strategy, lq, lk, block, causal).sum()) * heads)
    dense = timed({})
    torch._dynamo.reset()
    per_block = max(0.0, (times[0] - times[1]) / max(1, counts[0] - counts[1]))
    return max(0.0, times[1] - per_block * counts[1]), per_block, dense


def calibrate(
    model: torch.nn.Module,
    samples: Sequence[tuple] | tuple,
    budget: float = 0.95,
    block: int = 64,
    path: str | Path | None = None,
    measure: bool = True,
) -> Plan:
    """A sparsity plan for ``model``'s attention from its behaviour on
    ``samples`` (one input tuple, or a list of them). ``budget`` is the
    attention mass (recall) every head must keep; ``path`` saves the plan."""
    if not 0.0 < budget <= 1.0:
        raise ValueError(f"budget is the attention mass to keep, in (0, 1]; got {budget!r}")
    if block not in BLOCKS:
        raise ValueError(f"block must be one of {BLOCKS}, got {block!r}")
    if isinstance(samples, tuple) and samples and isinstance(samples[0], torch.Tensor):
        samples = [samples]
    samples = [tuple(s) if isinstance(s, (tuple, list)) else (s,) for s in samples]
    if not samples:
        raise ValueError("calibrate needs at least one sample input")
    graphs: dict[tuple, object] = {}
    layers: list[LayerMass] = []
    with torch.no_grad():
        for sample in samples:
            key = tuple((tuple(t.shape), t.dtype) for t in sample)
            if key not in graphs:
                graphs[key] = _attention_graph(model, sample)
            recorder = _Recorder(graphs[key], layers, block)
            recorder.run(*sample)
    if not layers:
        raise ValueError("the model has no attention ops fusecc recognizes (SDPA or matmul-softmax-matmul)")
    plan_layers = []
    costs: dict[tuple, tuple[float, float, float]] = {}  # layers of one shape are measured once
    for layer in layers:
        heads = layer.samples[0].shape[0]
        shape = (layer.lq, layer.lk, heads, layer.head_dim, block, layer.causal)
        if shape not in costs:
            costs[shape] = _measure_costs(*shape) if measure else (0.0, 1.0, math.inf)
        fixed, per_block, dense_ms = costs[shape]
        chosen = [_choose(layer, h, block, budget, fixed / heads, per_block) for h in range(heads)]
        if sum(h["predicted_ms"] for h in chosen) >= dense_ms:  # the dense kernel is faster: keep the layer exact
            chosen = [{"kind": "dense", "recall": 1.0, "kept": 1.0, "predicted_ms": round(dense_ms / heads, 4)}] * heads
        plan_layers.append(chosen)
    plan = Plan(plan_layers, block, budget)
    if path is not None:
        plan.save(path)
    return plan


def _choose(layer: LayerMass, head: int, block: int, budget: float, fixed_ms: float, block_ms: float) -> dict:
    masses = [s[head] for s in layer.samples]
    mean = np.mean(masses, axis=0)
    best = None
    for strategy in _candidates(mean, layer.lq, layer.lk, block, layer.causal, budget):
        keep = block_mask(strategy, layer.lq, layer.lk, block, layer.causal)
        recall = min(_recall(keep, m) for m in masses)
        if recall < budget:
            continue
        cost = fixed_ms + block_ms * int(keep.sum())
        rank = (round(cost, 9), ORDER.index(strategy["kind"]))
        if best is None or rank < best[0]:
            dense = block_mask({"kind": "dense"}, layer.lq, layer.lk, block, layer.causal).sum()
            best = (rank, {**strategy, "recall": round(recall, 4), "kept": round(float(keep.sum() / dense), 4),
                           "predicted_ms": round(cost, 4)})  # fmt: skip
    return best[1]
