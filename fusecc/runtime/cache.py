"""The compile cache: content-addressed shared objects on disk.

Key = sha256(source, toolchain fingerprint). An entry is ``<key>.so`` plus
``<key>.json`` recording the key and the sha256 of the .so's bytes; the
.json is written last (after both files are atomically renamed into
place), so it is the commit point. A lookup loads an object only if its
record names the same key and the bytes hash to the recorded digest: a
truncated, corrupted or foreign file is rebuilt, never loaded. Concurrent
processes may build the same entry at once; each writes to its own
temporary file and renames it, and either result is valid.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("fusecc")


def default_cache_dir() -> Path:
    env = os.environ.get("FUSECC_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fusecc"


@dataclasses.dataclass
class CacheStats:
    hits: int = 0
    builds: int = 0
    rejected: int = 0  # entries present but invalid (corrupt / foreign), rebuilt


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class CompileCache:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.stats = CacheStats()
        self._lock = threading.Lock()

    def key(self, source: str, fingerprint: str) -> str:
        return hashlib.sha256(f"{fingerprint}\n{source}".encode()).hexdigest()

    def paths(self, key: str) -> tuple[Path, Path]:
        folder = self.root / "kernels" / key[:2]
        return folder / f"{key}.so", folder / f"{key}.json"

    def lookup(self, key: str) -> Path | None:
        so, record = self.paths(key)
        if not record.exists():
            return None
        try:
            meta = json.loads(record.read_text())
            if meta.get("key") == key and so.exists() and _sha256_file(so) == meta.get("sha256"):
                return so
        except (OSError, ValueError) as e:
            log.warning("fusecc: unreadable cache record %s (%s); rebuilding", record, e)
        else:
            log.warning("fusecc: cache entry %s does not match its record; rebuilding", so)
        with self._lock:
            self.stats.rejected += 1
        return None

    def get_or_build(
        self, source: str, fingerprint: str, build: Callable[[Path, Path], dict]
    ) -> tuple[Path, bool, dict]:
        """Path of the shared object for ``source``; builds it if needed.

        ``build(source_path, output_path)`` compiles and returns details
        (command, seconds) that are stored in the record. Returns
        (path, was_cached, details).
        """
        key = self.key(source, fingerprint)
        so, record = self.paths(key)
        found = self.lookup(key)
        if found is not None:
            with self._lock:
                self.stats.hits += 1
            try:
                details = json.loads(record.read_text()).get("build", {})
            except (OSError, ValueError):
                details = {}
            return found, True, details
        so.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=so.parent, prefix=".build-") as tmp:
            src_path = Path(tmp) / f"{key[:16]}.c"
            src_path.write_text(source)
            out_path = Path(tmp) / "out.so"
            details = build(src_path, out_path)
            digest = _sha256_file(out_path)
            os.replace(out_path, so)
            rec_tmp = Path(tmp) / "record.json"
            rec_tmp.write_text(json.dumps({"key": key, "sha256": digest, "build": details}))
            os.replace(rec_tmp, record)
        with self._lock:
            self.stats.builds += 1
        return so, False, details


def helper_function(toolchain, cache: CompileCache, source: str, symbol: str, argtypes: list):
    """``symbol`` of a small helper C library (not a kernel: the tuner's cache
    evictor, the loop calling a chain of kernels), built once per toolchain
    through ``cache`` like any kernel, as a ctypes function returning nothing."""
    path, _, _ = cache.get_or_build(source, toolchain.fingerprint(), toolchain.build)
    fn = getattr(ctypes.CDLL(str(path)), symbol)
    fn.argtypes = argtypes
    fn.restype = None
    return fn
