"""C toolchains: the compiler a target builds with, its flags, and a
fingerprint that goes into every cache key."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import UnsupportedError


@functools.lru_cache(maxsize=None)
def compiler_version(cc: str) -> str:
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UnsupportedError(f"C compiler {cc!r} cannot be run: {e}") from e
    return out.stdout.splitlines()[0] if out.stdout else cc


@dataclasses.dataclass(frozen=True)
class Toolchain:
    cc: str
    flags: tuple[str, ...]
    machine: str = ""  # what the flags were chosen for (part of the fingerprint)

    def available(self) -> bool:
        return shutil.which(self.cc) is not None

    def fingerprint(self) -> str:
        return f"{compiler_version(self.cc)}|{' '.join(self.flags)}|{self.machine}"

    def command(self, source: Path, output: Path, shared: bool = True, extra: tuple[str, ...] = ()) -> list[str]:
        kind = ["-shared", "-fPIC"] if shared else []
        # extra (link options, libraries) after the source: a static link
        # resolves a library only for the objects named before it
        return [self.cc, *self.flags, *kind, str(source), "-o", str(output), *extra]

    def build(self, source: Path, output: Path, shared: bool = True, extra: tuple[str, ...] = ()) -> dict:
        cmd = self.command(source, output, shared, extra)
        start = time.perf_counter()
        result = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if result.returncode != 0:
            errors = [line for line in result.stderr.splitlines() if "error" in line]
            first = errors[0] if errors else (result.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise RuntimeError(
                f"{Path(cmd[0]).name} failed: {first.strip()}\ncommand: {' '.join(cmd)}\n{result.stderr[-4000:]}"
            )
        return {"command": " ".join(cmd), "seconds": round(seconds, 4)}


def build_in_parallel(build: Callable, entries: list) -> list:
    """``build`` over ``entries`` on one thread per core (compilers are
    separate processes); an entry that is already an exception passes
    through, and a build's exception becomes that entry's result."""

    def one(entry):
        if isinstance(entry, Exception):
            return entry
        try:
            return build(entry)
        except Exception as e:  # noqa: BLE001 - that entry's result
            return e

    workers = max(1, min(len(entries), os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, entries))


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "CPU part")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


_COMMON = ("-O3", "-fopenmp", "-ffp-contract=fast", "-fno-math-errno", "-std=gnu11", "-w")


def host_dialect_and_flags() -> tuple[str, tuple[str, ...]]:
    """The best dialect this machine runs, and the flags that enable it."""
    machine = platform.machine()
    flags = cpu_flags()
    if machine in ("x86_64", "AMD64"):
        if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
            return "avx512", (*_COMMON, "-march=x86-64-v4", "-mtune=native")
        if {"avx2", "fma"} <= flags:
            return "avx2", (*_COMMON, "-march=x86-64-v3", "-mtune=native")
        return "scalar", _COMMON
    if machine in ("aarch64", "arm64"):
        extra = "+dotprod" if "asimddp" in flags else ""
        return "neon", (*_COMMON, f"-march=armv8.2-a{extra}")
    return "scalar", _COMMON


def aarch64_cross(dotprod: bool = True) -> Toolchain:
    """Cross compiler for 64-bit ARM boards (NEON; dot-product when asked)."""
    march = "armv8.2-a+dotprod" if dotprod else "armv8-a"
    return Toolchain("aarch64-linux-gnu-gcc", (*_COMMON, f"-march={march}"), machine=f"aarch64 {march}")
