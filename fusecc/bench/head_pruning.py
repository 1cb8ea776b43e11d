"""Skipped heads removed with their projections: ``fusecc bench --head-pruning``.

A Hugging Face model from the zoo (random weights, SDPA attention) under
a plan that skips ``--skip`` of every layer's heads (``--pattern``: the
odd-numbered ones first, or the last ones) and keeps the rest dense. Peers, timed interleaved in one process:

* ``eager`` - PyTorch with the skipped heads' output-projection columns
  zeroed: the same function, and the error reference;
* ``fusecc_dense`` - fusecc without a plan (every head computed);
* ``fusecc_zeros`` - the plan with `head_pruning` off: the attention kernel
  writes the skipped heads' zeros, their projections still run;
* ``fusecc`` - the plan with the skipped heads, their Q/K/V projection rows
  and output-projection columns removed at compile time.
"""

from __future__ import annotations

import argparse
import copy

import torch

from . import zoo
from .harness import report, start, time_peers

PEERS = ["eager", "fusecc_dense", "fusecc_zeros", "fusecc"]
MODELS = ["bert_base", "vit_small", "gpt2", "llama"]
# the output projection of each zoo transformer's attention, by module name
OUTPUT_PROJECTIONS = ("attention.output.dense", "attention.o_proj", "self_attn.o_proj", "attn.c_proj")


def skipped_heads(heads: int, skip: int, pattern: str = "alternate") -> set[int]:
    """``skip`` heads. ``alternate``: the odd-numbered ones first, then the
    even ones from the top; ``last``: the last ones (under GQA, whole key
    groups when ``skip`` is a multiple of the group)."""
    if pattern == "last":
        return set(range(heads - skip, heads))
    order = list(range(1, heads, 2)) + list(range(heads - 2 if heads % 2 == 0 else heads - 1, -1, -2))
    return set(order[:skip])


def zero_heads(model: torch.nn.Module, skip: list[set[int]], heads: int) -> torch.nn.Module:
    """A copy of ``model`` whose skipped heads' output-projection inputs are zero
    (layer i skips ``skip[i]``) - what skipping them computes."""
    ref = copy.deepcopy(model)
    projections = [m for n, m in ref.named_modules() if n.endswith(OUTPUT_PROJECTIONS)]
    if len(projections) != len(skip):
        raise ValueError(f"found {len(projections)} output projections for {len(skip)} layers")
    with torch.no_grad():
        for proj, skipped in zip(projections, skip):
            weight = proj.weight
            transposed = type(proj).__name__ == "Conv1D"  # GPT-2 stores [in, out]
            d = (weight.shape[0] if transposed else weight.shape[1]) // heads
            for h in skipped:
                if transposed:
                    weight[h * d : (h + 1) * d] = 0
                else:
                    weight[:, h * d : (h + 1) * d] = 0
    return ref


def plan(skip: list[set[int]], heads: int, block: int = 64) -> dict:
    return {
        "block": block,
        "layers": [{"heads": [{"kind": "skip" if h in s else "dense"} for h in range(heads)]} for s in skip],
    }


def _shape(model: torch.nn.Module) -> tuple[int, int]:
    cfg = model.model.config
    return cfg.num_hidden_layers, cfg.num_attention_heads


def bench_model(
    name: str, size: str, tokens: int | None, skip: int, pattern: str, peers: list[str], budget_s: float, console
):
    entry = zoo.get(name)
    torch.manual_seed(0)
    model = entry.model(size).eval()
    x = entry.example_input(size, 1)
    if tokens is not None and entry.name != "vit_small":
        x = torch.randint(0, model.model.config.vocab_size, (1, tokens))
    layers, heads = _shape(model)
    skipped = [skipped_heads(heads, skip, pattern)] * layers
    the_plan = plan(skipped, heads)

    def compiled(options):
        torch._dynamo.reset()
        return torch.compile(model, backend="fusecc", options=options)

    builders = {
        "eager": lambda: zero_heads(model, skipped, heads),
        "fusecc_dense": lambda: compiled({}),
        "fusecc_zeros": lambda: compiled({"attention_sparsity": {"plan": the_plan}, "passes": {"head_pruning": False}}),
        "fusecc": lambda: compiled({"attention_sparsity": {"plan": the_plan}}),
    }
    label = f"{name} L={x.shape[-1] if x.dim() == 2 else 'img'}, {skip} of {heads} heads skipped ({pattern})"
    return time_peers(label, builders, (x,), peers, budget_s, console, "eager")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fusecc bench --head-pruning", description=__doc__.split("\n\n")[0])
    parser.add_argument("--head-pruning", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="+", default=["bert_base"], choices=MODELS)
    parser.add_argument("--size", choices=["full", "tiny"], default="full")
    parser.add_argument("--tokens", type=int, default=512, help="sequence length (token models)")
    parser.add_argument("--skip", type=int, default=6, help="heads skipped per layer")
    parser.add_argument("--pattern", choices=["alternate", "last"], default="alternate", help="which heads")
    parser.add_argument("--budget", type=float, default=5.0, help="timing seconds per model")
    parser.add_argument("--peers", nargs="+", default=PEERS, choices=PEERS)
    args, console, info = start(parser, argv)
    results = [
        bench_model(m, args.size, args.tokens, args.skip, args.pattern, args.peers, args.budget, console)
        for m in args.models
    ]
    report(results, args, info, console, argv)
    return 0
