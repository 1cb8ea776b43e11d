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
simpler strategy on ties). A layer whose running heads together would take
longer than the dense kernel (measured too) runs them dense - exact and
faster.

``skip`` is chosen by what the model does without a head, not by where its
attention goes: each head's output error alone (the model's outputs with
that head's attention output zeroed, relative L2 error on the worst
sample), then greedily, smallest first, every head whose removal keeps the
error of all removed heads together within 1 - budget (Michel et al.,
"Are Sixteen Heads Really Better than One?", ablate heads the same way).
`head_pruning` then removes the skipped heads with their projection rows.

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


class _Ablated(Interpreter):
    """The graph with some heads' attention output zeroed (``zeroed``: layer ->
    heads), run from an env `_Snapshots` recorded: the nodes before it
    count as done."""

    def __init__(self, gm, layer_of: dict, zeroed: dict[int, list[int]]):
        super().__init__(gm)
        self.layer_of, self.zeroed = layer_of, zeroed

    def run_node(self, n):
        out = super().run_node(n)
        heads = self.zeroed.get(self.layer_of.get(n))
        if heads:
            first = out[0].clone()
            first[:, heads] = 0
            out = (first, *out[1:])
        return out


class _Snapshots(Interpreter):
    """One run that records, before each attention op, an env to resume
    from: the values still to be read (values are freed after their last
    reader) and every earlier node marked done."""

    def __init__(self, gm, ops: list):
        super().__init__(gm, garbage_collect_values=True)
        self.ops, self.at, self.done = set(ops), {}, []

    def run_node(self, n):
        if n in self.ops:
            self.at[n] = {**dict.fromkeys(self.done), **self.env}
        self.done.append(n)
        return super().run_node(n)


def _flat(outputs) -> torch.Tensor:
    """A model's floating-point outputs as one vector, for comparing runs."""
    leaves = torch.utils._pytree.tree_leaves(outputs)
    return torch.cat([t.detach().reshape(-1).double() for t in leaves if torch.is_tensor(t) and t.is_floating_point()])


class _SkipSearch:
    """Which heads the model does without: each head's output error alone
    (the model's outputs with that head zeroed, relative L2 error, the worst
    sample), then greedily, smallest first, the heads whose removal
    together keeps the error within 1 - budget."""

    def __init__(self, runs: list[tuple], budget: float):
        self.tolerance = 1.0 - budget
        self.runs = []  # (graph, its attention ops, layer of each op, env before each op, reference outputs)
        for gm, sample, reference in runs:
            ops = list(gm.graph.find_nodes(op="call_function", target=SDPA_CPU))
            snapshots = _Snapshots(gm, ops)
            snapshots.run(*sample)
            self.runs.append((gm, ops, {op: i for i, op in enumerate(ops)}, snapshots.at, reference))

    def error(self, zeroed: dict[int, list[int]]) -> float:
        worst = 0.0
        for gm, ops, layer_of, at, reference in self.runs:
            out = _flat(_Ablated(gm, layer_of, zeroed).run(initial_env=dict(at[ops[min(zeroed)]])))
            worst = max(worst, float((out - reference).norm() / reference.norm().clamp_min(1e-30)))
        return worst

    def search(self, heads_per_layer: list[int]) -> dict[tuple[int, int], float]:
        """(layer, head) -> its error alone, for the heads to skip."""
        if self.tolerance <= 0:
            return {}
        alone = {(l, h): self.error({l: [h]}) for l, n in enumerate(heads_per_layer) for h in range(n)}
        chosen: dict[int, list[int]] = {}
        skipped = {}
        for (l, h), err in sorted(alone.items(), key=lambda item: item[1]):
            if err > self.tolerance:
                break
            trial = {**chosen, l: [*chosen.get(l, []), h]}
            if len(trial[l]) < heads_per_layer[l] and self.error(trial) <= self.tolerance:
                chosen, skipped[(l, h)] = trial, err
        return skipped


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
    skip: bool = True,
) -> Plan:
    """A sparsity plan for ``model``'s attention from its behaviour on
    ``samples`` (one input tuple, or a list of them). ``budget`` is the
    attention mass (recall) every head must keep, and - with ``skip`` - the
    share of the model's outputs that removing heads must keep (relative
    error at most 1 - budget); ``path`` saves the plan."""
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
    runs = []
    with torch.no_grad():
        for sample in samples:
            key = tuple((tuple(t.shape), t.dtype) for t in sample)
            if key not in graphs:
                graphs[key] = _attention_graph(model, sample)
            recorder = _Recorder(graphs[key], layers, block)
            runs.append((graphs[key], sample, _flat(recorder.run(*sample))))
        if not layers:
            raise ValueError("the model has no attention ops fusecc recognizes (SDPA or matmul-softmax-matmul)")
        skipped = _SkipSearch(runs, budget).search([layer.samples[0].shape[0] for layer in layers]) if skip else {}
    plan_layers = []
    costs: dict[tuple, tuple[float, float, float]] = {}  # layers of one shape are measured once
    for index, layer in enumerate(layers):
        heads = layer.samples[0].shape[0]
        shape = (layer.lq, layer.lk, heads, layer.head_dim, block, layer.causal)
        if shape not in costs:
            costs[shape] = _measure_costs(*shape) if measure else (0.0, 1.0, math.inf)
        fixed, per_block, dense_ms = costs[shape]
        chosen = []
        for h in range(heads):
            if (index, h) in skipped:
                chosen.append(_skipped(skipped[index, h]))
            else:
                chosen.append(_choose(layer, h, block, budget, fixed / heads, per_block))
        live = [h for h in chosen if h["kind"] != "skip"]
        if sum(h["predicted_ms"] for h in live) >= dense_ms * len(live) / heads:
            # the dense kernel is faster for the heads that run: keep them exact
            dense = {"kind": "dense", "recall": 1.0, "kept": 1.0, "predicted_ms": round(dense_ms / heads, 4)}
            chosen = [h if h["kind"] == "skip" else dense for h in chosen]
        plan_layers.append(chosen)
    plan = Plan(plan_layers, block, budget)
    if path is not None:
        plan.save(path)
    return plan


def _skipped(error: float) -> dict:
    """A skipped head: ``output_error`` is what zeroing it alone changes in the model's outputs."""
    return {"kind": "skip", "recall": 0.0, "kept": 0.0, "predicted_ms": 0.0, "output_error": round(error, 5)}


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
