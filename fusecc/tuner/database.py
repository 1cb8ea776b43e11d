"""The tuning database: measured kernel parameters, per (target, kernel signature).

One SQLite file (``<cache dir>/tuning.sqlite3``), written by any number of
processes at once (WAL journal, busy timeout; every write is one
transaction). A record is trusted only if it still parses and its
parameters are inside the kernel's current search space; a file SQLite
cannot read is moved aside (``.corrupt-<time>``) with a warning and a new
one is started - tuning results are a cache of measurements, never a
reason to fail a compile.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS measurements (
    target TEXT NOT NULL,
    signature TEXT NOT NULL,
    params TEXT NOT NULL,          -- canonical JSON
    median_us REAL,                -- NULL: the candidate failed to build or run
    error TEXT,
    created REAL NOT NULL,
    PRIMARY KEY (target, signature, params)
);
CREATE TABLE IF NOT EXISTS confirmations (  -- paired re-timings: a candidate against the default
    target TEXT NOT NULL,
    signature TEXT NOT NULL,
    candidate TEXT NOT NULL,       -- canonical JSON
    baseline TEXT NOT NULL,        -- canonical JSON
    speedup REAL NOT NULL,         -- baseline time / candidate time, measure.paired_speedup
    created REAL NOT NULL,
    PRIMARY KEY (target, signature, candidate, baseline)
);
CREATE TABLE IF NOT EXISTS kernels (  -- what the cross-kernel cost model learns from
    target TEXT NOT NULL,
    signature TEXT NOT NULL,
    kind TEXT NOT NULL,
    features TEXT NOT NULL,        -- JSON: tuner.features.kernel_features
    PRIMARY KEY (target, signature)
);
"""


class TuningWarning(UserWarning):
    """The tuning database was unusable and has been replaced."""


def canonical(params: dict) -> str:
    return json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in sorted(params.items())}, sort_keys=True)


def _decode(text: str) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(text).items()}


class TuningDatabase:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._ensure_usable()

    # -- opening, and surviving a damaged file ----------------------------

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=30.0)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            yield conn
            conn.commit()
        finally:
            conn.close()

    def _ensure_usable(self) -> None:
        try:
            with self._connect() as conn:
                conn.executescript(SCHEMA)
                ok = conn.execute("PRAGMA quick_check").fetchone()
                if not ok or ok[0] != "ok":
                    raise sqlite3.DatabaseError(f"quick_check: {ok}")
        except sqlite3.DatabaseError as e:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(self.path) + suffix)
                if src.exists():
                    os.replace(src, str(aside) + suffix)
            warnings.warn(
                f"fusecc: tuning database {self.path} was unreadable ({e}); moved to {aside.name}, starting a new one",
                TuningWarning,
                stacklevel=3,
            )
            with self._connect() as conn:
                conn.executescript(SCHEMA)

    # -- records ----------------------------------------------------------

    def record(self, target: str, signature: str, params: dict, median_us: float | None, error: str = "") -> None:
        """A measurement; it supersedes the paired confirmations ``params`` took part in."""
        key = canonical(params)
        with self._connect() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO measurements VALUES (?, ?, ?, ?, ?, ?)",
                (target, signature, key, median_us, error or None, time.time()),
            )
            conn.execute(
                "DELETE FROM confirmations WHERE target = ? AND signature = ? AND (candidate = ? OR baseline = ?)",
                (target, signature, key, key),
            )

    def confirm(self, target: str, signature: str, candidate: dict, baseline: dict, speedup: float) -> None:
        """Record a paired comparison: ``candidate`` ran ``speedup`` times as fast as ``baseline``."""
        with self._connect() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO confirmations VALUES (?, ?, ?, ?, ?, ?)",
                (target, signature, canonical(candidate), canonical(baseline), float(speedup), time.time()),
            )

    def confirmation(self, target: str, signature: str, candidate: dict, baseline: dict) -> float | None:
        """The recorded paired speedup of ``candidate`` over ``baseline`` (None: never compared)."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT speedup FROM confirmations"
                " WHERE target = ? AND signature = ? AND candidate = ? AND baseline = ?",
                (target, signature, canonical(candidate), canonical(baseline)),
            ).fetchone()
        return row[0] if row and row[0] is not None and row[0] > 0 else None

    def measured(self, target: str, signature: str) -> dict[str, float | None]:
        """canonical params -> median microseconds (None: failed)."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT params, median_us FROM measurements WHERE target = ? AND signature = ?", (target, signature)
            ).fetchall()
        return dict(rows)

    def describe(self, target: str, signature: str, kind: str, features: dict[str, float]) -> None:
        """Remember what kernel ``signature`` is, for the cross-kernel cost model."""
        with self._connect() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO kernels VALUES (?, ?, ?, ?)",
                (target, signature, kind, json.dumps(features, sort_keys=True)),
            )

    def history(self, target: str, kind: str, exclude: str = "") -> list[tuple[dict[str, float], dict, float]]:
        """(kernel features, parameters, us) of every successful measurement of
        the other described kernels of ``kind`` on ``target``; records that no
        longer parse are skipped."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT k.features, m.params, m.median_us FROM measurements m JOIN kernels k"
                " ON k.target = m.target AND k.signature = m.signature"
                " WHERE m.target = ? AND k.kind = ? AND m.signature != ? AND m.median_us > 0",
                (target, kind, exclude),
            ).fetchall()
        out = []
        for features, params, us in rows:
            try:
                decoded_features, decoded = json.loads(features), _decode(params)
            except (ValueError, AttributeError):
                continue
            if isinstance(decoded_features, dict) and "impl" not in decoded:
                out.append((decoded_features, decoded, us))
        return out

    def best(self, target: str, signature: str, space: dict[str, tuple] | None = None) -> tuple[dict, float] | None:
        return best_record(self.measured(target, signature), space)

    def count(self) -> int:
        with self._connect() as conn:
            return conn.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]


def best_record(measured: dict[str, float | None], space: dict[str, tuple] | None = None) -> tuple[dict, float] | None:
    """The fastest valid record of ``measured`` (canonical params -> us): its
    parameters must parse and, when ``space`` is given, every value must be
    one the space still offers."""
    for text, us in sorted(((p, us) for p, us in measured.items() if us is not None and us > 0), key=lambda i: i[1]):
        try:
            params = _decode(text)
        except (ValueError, AttributeError):
            continue
        if space is not None and any(
            k not in params or _freeze(params[k]) not in {_freeze(v) for v in vals} for k, vals in space.items()
        ):
            continue
        return params, us
    return None


def _freeze(value):
    return tuple(_freeze(v) for v in value) if isinstance(value, (list, tuple)) else value
