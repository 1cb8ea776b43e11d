"""Attention alone: ``fusecc bench --attention``.

Scaled dot-product attention with 12 heads of 64 (BERT-base / ViT-B
shapes) at 128 to 4096 tokens, plain, causal and with a key-padding mask,
through every peer. The
module takes q, k and v stacked in one tensor (the harness feeds peers one
input); eager is PyTorch's SDPA, which is what the peers compile. The
"written out" cases compute the same attention as matmul, scale, softmax
and matmul (Hugging Face's ``attn_implementation="eager"``): eager then
stores the L x L scores, fusecc's ``attention_capture`` turns the chain
back into the kernel.
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
MASKED = {"attention L=1024 key padding": 1024}  # BERT's additive mask: the last eighth of the keys are padding
WRITTEN_OUT = {"written-out attention L=1024": 1024, "written-out attention L=4096": 4096}
PEERS = ["eager", "inductor", "onnxruntime", "fusecc"]


class StackedAttention(torch.nn.Module):
    def __init__(self, causal: bool):
        super().__init__()
        self.causal = causal

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=self.causal)


class PaddedAttention(torch.nn.Module):
    """A key-padding mask as BERT adds it: 0 for tokens, the float minimum for padding."""

    def __init__(self, tokens: int):
        super().__init__()
        padding = torch.arange(tokens) >= tokens - tokens // 8
        self.register_buffer("mask", (padding * torch.finfo(torch.float32).min).view(1, 1, 1, tokens))

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=self.mask)


class WrittenOutAttention(torch.nn.Module):
    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        q, k, v = qkv[0], qkv[1], qkv[2]
        return torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1) @ v


def _case(tokens: int, module: torch.nn.Module):
    def build(batch: int):
        return module.eval(), torch.randn(3, batch, HEADS, tokens, HEAD_DIM)

    return build


def main(argv: list[str] | None = None) -> int:
    cases = {name: _case(tokens, StackedAttention(causal)) for name, (tokens, causal) in CASES.items()}
    cases.update({name: _case(tokens, PaddedAttention(tokens)) for name, tokens in MASKED.items()})
    cases.update({name: _case(tokens, WrittenOutAttention()) for name, tokens in WRITTEN_OUT.items()})
    return cases_main(argv, "--attention", __doc__.split("\n\n")[0], cases, [1], PEERS)
