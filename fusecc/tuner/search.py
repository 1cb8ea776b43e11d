"""Choosing which parameter sets of one kernel to measure.

The candidates are the product of the kernel's tunables (its search space,
from the renderer) laid over its default parameters; the default is always
measured first, so tuning never ends worse than not tuning. Until the
kernel has a few measurements of its own, a *prior* ranks the candidates:
an xgboost model fitted on every other kernel of the same kind measured on
this target before (kernel features + parameter features -> log time per
flop, as TVM's cross-task cost models do), so a new kernel starts from what
similar ones taught. After that an xgboost regressor over this kernel's own
measurements (numeric parameter values, categorical ones by position; log
time as the target) ranks the rest. Either way the tuner measures the
predicted best - with a random pick now and then so the models see outside
their own guesses.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable

from .database import canonical
from .features import MISSING, param_features

MODEL_AFTER = 4  # measurements before the kernel's own cost model starts choosing
PRIOR_AFTER = 8  # measurements of other kernels before the prior ranks anything
EXPLORE = 0.2  # share of random picks once a model chooses
_XGB = {"max_depth": 4, "eta": 0.3, "nthread": 1, "verbosity": 0, "objective": "reg:squarederror"}


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


class Prior:
    """The cross-kernel cost model of one kernel kind on one target."""

    def __init__(self, booster, kernel_keys: list[str], param_keys: list[str]):
        self._booster, self.kernel_keys, self.param_keys = booster, kernel_keys, param_keys

    @classmethod
    def fit(cls, history: list[tuple[dict[str, float], dict, float]]) -> Prior | None:
        """From (kernel features, parameters, us) records; None when there are
        too few, or xgboost is missing."""
        if len(history) < PRIOR_AFTER:
            return None
        try:
            import numpy as np
            import xgboost
        except ImportError:
            return None
        kernel_keys = sorted(set().union(*(k for k, _, _ in history)))
        param_keys = sorted(set().union(*(p for _, p, _ in history)))
        prior = cls(None, kernel_keys, param_keys)
        x = np.array([prior._row(k, p) for k, p, _ in history], dtype=np.float32)
        # time per unit of work: kernels of different sizes on one scale
        y = np.array([math.log(us) - math.log(2) * k.get("log_flops", 0.0) for k, _, us in history], dtype=np.float32)
        prior._booster = xgboost.train(_XGB, xgboost.DMatrix(x, label=y), num_boost_round=60)
        return prior

    def _row(self, kernel: dict[str, float], params: dict) -> list[float]:
        return [kernel.get(k, MISSING) for k in self.kernel_keys] + param_features(params, self.param_keys)

    def predict(self, kernel: dict[str, float], params: list[dict]) -> list[float]:
        """Predicted log time per flop of each parameter set (lower is better)."""
        import numpy as np
        import xgboost

        x = np.array([self._row(kernel, p) for p in params], dtype=np.float32)
        return list(self._booster.predict(xgboost.DMatrix(x)))


class Search:
    def __init__(
        self,
        default: dict,
        space: dict[str, tuple],
        seed: int = 0,
        prior: Prior | None = None,
        kernel: dict[str, float] | None = None,
    ):
        self.space = space
        self.pool = candidates(default, space)
        self.rng = random.Random(seed)
        self.prior, self.kernel = (prior, kernel) if kernel is not None else (None, None)

    def next(self, measured: dict[str, float | None]) -> dict | None:
        """The next candidate to measure, given canonical params -> us (None: failed)."""
        left = [p for p in self.pool if canonical(p) not in measured]
        if not left:
            return None
        if canonical(self.pool[0]) not in measured:
            return self.pool[0]
        ok = [(p, us) for p in self.pool if (us := measured.get(canonical(p))) is not None]
        if self.rng.random() < EXPLORE:
            return self.rng.choice(left)
        if len(ok) < MODEL_AFTER:
            if self.prior is None:
                return self.rng.choice(left)
            try:
                scores = self.prior.predict(self.kernel, left)
            except Exception:  # noqa: BLE001 - a prior that fails leaves the search random
                return self.rng.choice(left)
            return left[min(range(len(left)), key=scores.__getitem__)]
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
        booster = xgboost.train({**_XGB, "max_depth": 3}, xgboost.DMatrix(x, label=y), num_boost_round=50)
        return lambda rows: list(booster.predict(xgboost.DMatrix(np.array(rows, dtype=np.float32))))
