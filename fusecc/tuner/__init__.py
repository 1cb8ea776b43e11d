"""The auto-tuner: per target, measured kernel parameters.

``options={"tune": "off" | "use" | "tune"}``: ``use`` takes the best record
of the tuning database for each kernel (and the default parameters where
there is none); ``tune`` first measures candidates until the kernel has
``tune_trials`` measurements in the database (so tuning a model again with
the same budget measures nothing; a larger budget measures only the rest). The search space is the renderer's ``tunables(spec)``,
the order comes from `search.Search` (default first, then xgboost cost
models: one fitted on earlier kernels of the kind, then the kernel's own), timing from `measure.median_us`, and every measurement - failures
included - goes to the `database.TuningDatabase`, so tuning the same model
again measures nothing new.

The search's medians are taken one after another, and on a noisy machine
the fastest of a dozen such medians is often luck. So before a winner
replaces the default, the two are timed again *paired*
(`measure.paired_speedup`: alternated, median of per-round ratios), and
the winner is kept only at ``CONFIRM_MIN`` or more. The paired result is a
database record too ("use" reads it back); a record without one (a
database written before confirmations existed) is trusted as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .database import TuningDatabase, best_record, canonical
from .measure import median_us, paired_speedup
from .search import Prior, Search

__all__ = ["CONFIRM_MIN", "KernelTuner", "Progress", "TuningDatabase", "database_path"]

CONFIRM_MIN = 1.02  # paired speedup a candidate needs to replace the default


class Progress:
    """What the tuner reports while it works (silent by default)."""

    def measured(self, signature: str, params: dict, us: float | None) -> None:
        pass

    def confirmed(self, signature: str, candidate: dict, speedup: float, kept: bool) -> None:
        pass


def database_path(cache_dir: str | None) -> Path:
    from ..runtime.cache import default_cache_dir

    return Path(cache_dir or default_cache_dir()) / "tuning.sqlite3"


class KernelTuner:
    def __init__(self, db: TuningDatabase, target_key: str, trials: int, progress: Progress | None = None):
        self.db = db
        self.target_key = target_key
        self.trials = trials
        self.progress = progress or Progress()

    def choose(
        self,
        signature: str,
        default: dict,
        space: dict[str, tuple],
        build: Callable[[dict], Callable[[], object]],
        measure: bool,
        kind: str | None = None,
        features: dict[str, float] | None = None,
    ) -> tuple[dict, dict]:
        """Parameters for one kernel, and a record of how they were chosen.
        ``build(params)`` returns a call that runs the kernel once (or raises).
        With the kernel's ``kind`` and ``features`` (`features.kernel_features`),
        the search starts from what earlier kernels of that kind taught (`Prior`)."""
        valid = {k: tuple(v) + ((default[k],) if k in default else ()) for k, v in space.items()}
        new = 0
        measured = _parameter_records(self.db.measured(self.target_key, signature))
        prior_records = 0
        if measure and space:
            prior = None
            if kind is not None and features is not None:
                self.db.describe(self.target_key, signature, kind, features)
                if len(measured) < self.trials:
                    history = self.db.history(self.target_key, kind, exclude=signature)
                    prior, prior_records = Prior.fit(history), len(history)
            search = Search(default, space, prior=prior, kernel=features)
            while len(measured) < self.trials and (params := search.next(measured)) is not None:
                self._measure(signature, params, build, measured)
                new += 1
        elif measure and canonical(default) not in measured:
            # nothing to search, but the kernel is still weighed against other
            # implementations (a block against its layers): that needs its time
            self._measure(signature, default, build, measured)
            new += 1
        best = best_record(measured, valid)
        info = {"measured_now": new, "records": len(measured), "default_us": measured.get(canonical(default))}
        if prior_records:
            info["prior_records"] = prior_records  # other kernels' measurements the search started from
        if best is None:
            return default, {**info, "source": "default"}
        params, us = best
        default_us = info["default_us"]
        if canonical(params) != canonical(default) and default_us is not None:
            calls = (lambda: (build(default), build(params))) if measure else None
            speedup = self.paired(signature, params, default, calls)
            if speedup is not None:
                info["paired_speedup"] = speedup
                if speedup < CONFIRM_MIN:  # the search's gap was noise: the default stays
                    info["unconfirmed"] = {"params": canonical(params), "us": us}
                    return default, {**info, "source": "database", "best_us": default_us}
        return params, {**info, "source": "database", "best_us": us}

    def paired(
        self, signature: str, candidate: dict, baseline: dict, calls: Callable[[], tuple[Callable, Callable]] | None
    ) -> float | None:
        """The paired speedup of ``candidate`` over ``baseline``: the recorded
        one, else - with ``calls()`` giving (baseline call, candidate call) -
        timed now and recorded; None when neither (or the timing failed)."""
        speedup = self.db.confirmation(self.target_key, signature, candidate, baseline)
        if speedup is not None or calls is None:
            return speedup
        try:
            speedup = paired_speedup(*calls())
        except Exception:  # noqa: BLE001 - a comparison that cannot run leaves the medians to decide
            return None
        self.db.confirm(self.target_key, signature, candidate, baseline, speedup)
        self.progress.confirmed(signature, candidate, speedup, speedup >= CONFIRM_MIN)
        return speedup

    def _measure(self, signature: str, params: dict, build, measured: dict) -> None:
        try:
            us, error = median_us(build(params)), ""
        except Exception as e:  # noqa: BLE001 - a candidate that fails is recorded, not fatal
            us, error = None, f"{type(e).__name__}: {e}"[:500]
        self.db.record(self.target_key, signature, params, us, error)
        measured[canonical(params)] = us
        self.progress.measured(signature, params, us)


def _parameter_records(measured: dict[str, float | None]) -> dict[str, float | None]:
    """The kernel's parameter measurements, without the records of the other
    implementations it is weighed against (``{"impl": ...}``): those do not
    count towards the trial budget."""
    return {text: us for text, us in measured.items() if not text.startswith('{"impl"')}
