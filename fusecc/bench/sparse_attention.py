"""Sparse attention alone: ``fusecc bench --sparse-attention``.

12 heads x 64 at 1k-16k tokens under a fixed plan that keeps about 22%
of the blocks at every length (a third of the heads a diagonal band, a
third attention sinks + band, a third global columns + the diagonal;
blocks of 64). Peers, timed interleaved in one process:

* ``sdpa`` - PyTorch's dense SDPA (what the model computes without a plan);
* ``flex`` - PyTorch FlexAttention compiled, given the same block mask
  (the peer that needs the mask written by hand);
* ``fusecc_dense`` - fusecc's dense attention kernel;
* ``fusecc`` - fusecc with the plan (``options={"attention_sparsity": ...}``):
  every head, whatever its strategy, in one kernel call;
* ``fusecc_per_head`` - the same strategies with each head its own
  attention op and kernel call (what fusing the heads saves).

The error column of ``fusecc`` is against ``flex``: both compute exactly
the kept blocks, so they must agree to rounding.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console

from ..sparsity.strategies import block_mask
from .harness import report, start, time_peers

HEADS, HEAD_DIM, BLOCK = 12, 64, 64
LENGTHS = (1024, 4096, 8192, 16384)
PEERS = ["sdpa", "flex", "fusecc_dense", "fusecc_per_head", "fusecc"]


def plan_for(tokens: int) -> list[dict]:
    """About 22% of the blocks at any length: r key blocks of each query block's row."""
    r = max(3, int(0.22 * tokens / BLOCK))
    band = {"kind": "local", "window": (r - 1) // 2 * BLOCK}  # 2 w / BLOCK + 1 blocks
    sinks = {"kind": "a_shape", "sink": BLOCK, "window": max(BLOCK // 2, (r - 2) // 2 * BLOCK)}
    columns = {"kind": "vertical", "columns": [i * tokens // (r - 1) for i in range(r - 1)]}
    third = HEADS // 3
    return [band] * third + [sinks] * third + [columns] * (HEADS - 2 * third)


class SDPA(torch.nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


class PerHeadSDPA(torch.nn.Module):
    def forward(self, q, k, v):
        heads = [
            F.scaled_dot_product_attention(q[:, h : h + 1], k[:, h : h + 1], v[:, h : h + 1]) for h in range(HEADS)
        ]
        return torch.cat(heads, 1)


def _compiled(options: dict | None, module: torch.nn.Module | None = None):
    torch._dynamo.reset()
    return torch.compile(module or SDPA(), backend="fusecc", options=options or {})


def _flex(masks: np.ndarray):
    """FlexAttention given the plan's blocks as full blocks (no per-element mask to evaluate)."""
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    kept = torch.from_numpy(masks)[None]  # [1, H, Q blocks, K blocks]
    counts = kept.sum(-1).to(torch.int32)
    order = torch.argsort((~kept).to(torch.int8), dim=-1, stable=True).to(torch.int32)  # kept blocks first
    none = torch.zeros_like(counts)
    bm = BlockMask.from_kv_blocks(none, torch.zeros_like(order), counts, order, BLOCK_SIZE=BLOCK)
    flex = torch.compile(flex_attention)
    return lambda q, k, v: flex(q, k, v, block_mask=bm)


def bench_length(tokens: int, peers: list[str], budget_s: float, console: Console) -> dict:
    heads = plan_for(tokens)
    masks = np.stack([block_mask(h, tokens, tokens, BLOCK, False) for h in heads])
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, HEADS, tokens, HEAD_DIM) for _ in range(3))
    plan = {"block": BLOCK, "layers": [{"heads": heads}]}
    builders = {
        "sdpa": lambda: SDPA(),
        "flex": lambda: _flex(masks),
        "fusecc_dense": lambda: _compiled(None),
        "fusecc_per_head": lambda: _compiled(
            {"attention_sparsity": {"plan": {"block": BLOCK, "layers": [{"heads": [h]} for h in heads]}}}, PerHeadSDPA()
        ),
        "fusecc": lambda: _compiled({"attention_sparsity": {"plan": plan}}),
    }
    name = f"sparse attention L={tokens} ({100 * masks.mean():.0f}% blocks)"
    reference = "flex" if "flex" in peers else "sdpa"
    result = time_peers(name, builders, (q, k, v), peers, budget_s, console, reference)
    result["kept"] = float(masks.mean())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fusecc bench --sparse-attention", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sparse-attention", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--lengths", nargs="+", type=int, default=list(LENGTHS))
    parser.add_argument("--budget", type=float, default=5.0, help="timing seconds per length")
    parser.add_argument("--peers", nargs="+", default=PEERS, choices=PEERS)
    args, console, info = start(parser, argv)
    results = [bench_length(n, args.peers, args.budget, console) for n in args.lengths]
    report(results, args, info, console, argv)
    return 0
