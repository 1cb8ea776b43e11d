"""Attention alone: ``fusecc bench --attention``.

Scaled dot-product attention with 12 heads of 64 (BERT-base / ViT-B
shapes) at 128 to 4096 tokens, plain and causal, through every peer. The
module takes q, k and v stacked in one tensor (the harness feeds peers one
input); eager is PyTorch's SDPA, which is what the peers compile.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .harness import cases_main

HEADS, HEAD_DIM = 12, 64
CASES = {  # name -> (tokens, causal)
    "attention L=128": (128, False),
    "attention L=1024": (1024, False),
    "attention L=1024 causal": (1024, True),
    "attention L=4096": (4096, False),
}
PEERS = ["eager", "inductor", "onnxruntime", "fusecc"]


class StackedAttention(torch.nn.Module):
    def __init__(self, causal: bool):
        super().__init__()
        self.causal = causal

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=self.causal)


def _case(tokens: int, causal: bool):
    def build(batch: int):
        return StackedAttention(causal).eval(), torch.randn(3, batch, HEADS, tokens, HEAD_DIM)

    return build


def main(argv: list[str] | None = None) -> int:
    cases = {name: _case(tokens, causal) for name, (tokens, causal) in CASES.items()}
    return cases_main(argv, "--attention", __doc__.split("\n\n")[0], cases, [1], PEERS)
