"""Attention sparsity strategies: which key blocks each query block keeps.

A strategy is a small dict - ``{"kind": "local", "window": 256}`` - with
its sizes in tokens, so one plan applies at any sequence length (except
``block_sparse``, whose blocks are the calibrated ones). ``block_mask``
turns it into a boolean [query blocks, key blocks] matrix at a given block
size and length; the sparse kernel iterates over exactly the kept blocks.
After the patterns of Sparse-vDiT, MInference and S2-Attention (see
../shared/design/RESEARCH.md):

* ``dense`` - every block (the causal cut still applies);
* ``local`` - a diagonal band: keys within ``window`` tokens of the query;
* ``a_shape`` - the first ``sink`` tokens (attention sinks) plus a band;
* ``vertical`` - fixed key ``columns`` (global tokens) plus the diagonal block;
* ``strided`` - every ``stride``-th block diagonal (multi-diagonal) plus the diagonal;
* ``block_sparse`` - an explicit list of kept ``[query block, key block]`` pairs;
* ``skip`` - nothing: the head's output is zero.
"""

from __future__ import annotations

import math

import numpy as np

KINDS = {
    "dense": (),
    "local": ("window",),
    "a_shape": ("sink", "window"),
    "vertical": ("columns",),
    "strided": ("stride",),
    "block_sparse": ("blocks",),
    "skip": (),
}
# simplest first: among strategies of equal measured cost the earlier one wins
ORDER = ("dense", "local", "a_shape", "strided", "vertical", "block_sparse", "skip")


class StrategyError(ValueError):
    """A strategy dict that names no known strategy or lacks its sizes."""


def validate(strategy: object, where: str) -> dict:
    if not isinstance(strategy, dict) or strategy.get("kind") not in KINDS:
        raise StrategyError(f"{where}: a strategy is a dict with 'kind' one of {', '.join(KINDS)}; got {strategy!r}")
    missing = [k for k in KINDS[strategy["kind"]] if k not in strategy]
    if missing:
        raise StrategyError(f"{where}: strategy {strategy['kind']!r} needs {', '.join(missing)}")
    for key in ("window", "sink", "stride"):
        if key in strategy and (not isinstance(strategy[key], int) or strategy[key] < (1 if key == "stride" else 0)):
            raise StrategyError(f"{where}: {key!r} must be a non-negative token count, got {strategy[key]!r}")
    return strategy


def block_mask(strategy: dict, lq: int, lk: int, block: int, causal: bool) -> np.ndarray:
    """[ceil(Lq / block), ceil(Lk / block)] booleans: the blocks the strategy keeps."""
    qn, kn = math.ceil(lq / block), math.ceil(lk / block)
    qb = np.arange(qn)[:, None]
    kb = np.arange(kn)[None, :]
    # token ranges of each block pair, in key coordinates
    q_lo, q_hi = (
        qb * block,
        np.minimum((qb + 1) * block, lq) - 1,
    )  # query i and key i coincide (top-left, as ATen's causal mask)
    k_lo, k_hi = kb * block, np.minimum((kb + 1) * block, lk) - 1
    diagonal = (k_lo <= q_hi) & (k_hi >= q_lo)
    kind = strategy["kind"]
    if kind == "dense":
        keep = np.ones((qn, kn), dtype=bool)
    elif kind == "skip":
        keep = np.zeros((qn, kn), dtype=bool)
    elif kind in ("local", "a_shape"):
        w = strategy["window"]
        keep = (k_lo <= q_hi + w) & (k_hi >= q_lo - w)
        if kind == "a_shape":
            keep |= k_lo < strategy["sink"]
    elif kind == "vertical":
        cols = np.zeros(kn, dtype=bool)
        for c in strategy["columns"]:
            if 0 <= int(c) < lk:
                cols[int(c) // block] = True
        keep = diagonal | cols[None, :]
    elif kind == "strided":
        s = max(1, strategy["stride"] // block)
        keep = diagonal | ((qb - kb) % s == 0)
    else:  # block_sparse
        keep = np.zeros((qn, kn), dtype=bool)
        for q, k in strategy["blocks"]:
            if 0 <= q < qn and 0 <= k < kn:
                keep[q, k] = True
    if causal:
        keep &= k_lo <= q_hi
    return keep


def kept_fraction(mask: np.ndarray, lq: int, lk: int, block: int, causal: bool) -> float:
    """Kept blocks over the blocks dense attention computes (causal: on or below the diagonal)."""
    dense = block_mask({"kind": "dense"}, lq, lk, block, causal)
    return float(mask.sum()) / max(1, int(dense.sum()))
