"""fusecc's graph passes, in the order they run.

Each pass is a module with ``NAME``, ``INFERENCE_ONLY`` and
``run(gm, ctx) -> gm``; its docstring says what it matches, what it
produces and when it refuses. Any pass can be switched off
(``options={"passes": {"fold_bn": False}}``) and the graph still runs.
"""

from . import (
    attention_capture,
    attention_masks,
    attention_sparsity,
    block_fusion,
    channels_last,
    constant_fold,
    cse,
    dce,
    fold_bn,
    head_pruning,
    horizontal_fusion,
    partition,
    pool_fusion,
    remove_noops,
    vertical_fusion,
)

PIPELINE = [
    constant_fold,
    remove_noops,
    cse,
    dce,
    fold_bn,
    channels_last,
    attention_capture,
    attention_masks,
    head_pruning,
    horizontal_fusion,
    vertical_fusion,
    partition,
    attention_sparsity,
    block_fusion,
    pool_fusion,
    dce,
]

PASS_NAMES = list(dict.fromkeys(p.NAME for p in PIPELINE))
