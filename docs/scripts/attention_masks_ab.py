"""Pass `attention_masks` on and off, paired in one process: the pretrained
MiniLM-L6 at TOKENS tokens of real text (positions copied out as in
minilm_long_context.py), whose key-padding mask Hugging Face materializes
as [1, 1, TOKENS, TOKENS].

    python docs/scripts/attention_masks_ab.py 4096 5    # tokens, rounds
"""

import sys

import torch
from minilm_long_context import model_and_text
from pass_ab import pass_on_off


def main() -> None:
    tokens, rounds = int(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(2)
    model, inputs = model_and_text(tokens)
    pass_on_off(model, inputs, "attention_masks", ("attention_masks", "full_mask"), rounds, calls=1)


if __name__ == "__main__":
    main()
