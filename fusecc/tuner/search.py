"""Choosing which parameter sets of one kernel to measure.

The candidates are the product of the kernel's tunables (its search space,
from the renderer) laid over its default parameters; the default is always
measured first, so tuning never ends worse than not tuning. After a few
measurements an xgboost regressor over the candidates' features (numeric
parameter values, categorical ones by position; log time as the target)
ranks the rest, and the tuner measures the predicted best - with a random
pick now and then so the model sees outside its own guesses.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable

from .database import canonical

MODEL_AFTER = 4  # measurements before the cost model starts choosing
EXPLORE = 0.2  # share of random picks once the model chooses


def candidates(default: dict, space: dict[str, tuple]) -> list[dict]:
    """Default first, then every combination of the tunables (deduplicated)."""
    keys = list(space)
    out, seen = [default], {canonical(default)}
    for combo in itertools.product(*(space[k] for k in keys)):
        params = {**default, **dict(zip(keys, combo))}
        key = canonical(params)
        if key not in seen:
            seen.add(key)
            out.append(params)
    return out


def features(params: dict, space: dict[str, tuple]) -> list[float]:
    row: list[float] = []
    for key in sorted(space):
        value = params.get(key)
        values = list(space[key])
        if isinstance(value, (tuple, list)):
            row.extend(float(v) for v in value)
            row.append(float(math.prod(value)))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            row.append(math.log2(max(1.0, float(value))))
        else:  # categorical: its position in the space
            row.append(float(values.index(value)) if value in values else -1.0)
    return row


class Search:
    def __init__(self, default: dict, space: dict[str, tuple], seed: int = 0):
        self.space = space
        self.pool = candidates(default, space)
        self.rng = random.Random(seed)

    def next(self, measured: dict[str, float | None]) -> dict | None:
        """The next candidate to measure, given canonical params -> us (None: failed)."""
        left = [p for p in self.pool if canonical(p) not in measured]
        if not left:
            return None
        if canonical(self.pool[0]) not in measured:
            return self.pool[0]
        ok = [(p, us) for p in self.pool if (us := measured.get(canonical(p))) is not None]
        if len(ok) < MODEL_AFTER or self.rng.random() < EXPLORE:
            return self.rng.choice(left)
        try:
            predict = self._fit(ok)
            scores = predict([features(p, self.space) for p in left]) if predict else None
        except Exception:  # noqa: BLE001 - a cost model that fails leaves the search random
            scores = None
        if scores is None:
            return self.rng.choice(left)
        return left[min(range(len(left)), key=scores.__getitem__)]

    def _fit(self, ok: list[tuple[dict, float]]) -> Callable[[list[list[float]]], list[float]] | None:
        try:
            import numpy as np
            import xgboost
        except ImportError:  # the cost model is an accelerator, not a requirement
            return None
        x = np.array([features(p, self.space) for p, _ in ok], dtype=np.float32)
        y = np.log(np.array([us for _, us in ok], dtype=np.float32))
        config = {"max_depth": 3, "eta": 0.3, "nthread": 1, "verbosity": 0, "objective": "reg:squarederror"}
        booster = xgboost.train(config, xgboost.DMatrix(x, label=y), num_boost_round=50)
        return lambda rows: list(booster.predict(xgboost.DMatrix(np.array(rows, dtype=np.float32))))
