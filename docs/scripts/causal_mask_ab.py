"""Pass `attention_masks` on and off, paired in one process, on GPT-2 small
(random weights) at TOKENS tokens.

By default the zoo model runs one sequence and passes an all-ones padding
mask, so the causal mask is built from constants and the pass makes it the
op's causal flag: the kernel skips the keys above the diagonal.

With ``--mask-input`` the padding mask is an input of the call, as a server
passes the tokenizer's: two sequences, the second left-padded by a quarter.
Hugging Face's mask is then causal AND padding; the pass runs the op causal
and reads the padding mask's one row per image.

    python docs/scripts/causal_mask_ab.py 1024 6                # tokens, rounds
    python docs/scripts/causal_mask_ab.py 1024 6 --mask-input
"""

import sys

import torch
from pass_ab import pass_on_off

from fusecc.bench import zoo


class WithMaskInput(torch.nn.Module):
    def __init__(self, lm: torch.nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return self.lm(ids, attention_mask=keep).logits


def main() -> None:
    tokens, rounds = int(sys.argv[1]), int(sys.argv[2])
    mask_input = "--mask-input" in sys.argv[3:]
    torch.set_num_threads(2)
    model = zoo.get("gpt2").model("full").eval()
    if mask_input:
        model = WithMaskInput(model.model).eval()
        keep = torch.ones(2, tokens, dtype=torch.long)
        keep[1, : tokens // 4] = 0
        inputs = (torch.randint(0, 50000, (2, tokens)), keep)
    else:
        inputs = (torch.randint(0, 50000, (1, tokens)),)
    pass_on_off(model, inputs, "attention_masks", ("causal_flag", "mask"), rounds, calls=2)


if __name__ == "__main__":
    main()
