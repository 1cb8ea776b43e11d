"""The roofline ("waterline") view of compiled kernels on this CPU.

Peaks are measured, not taken from a data sheet: compute as the best of a
1024^3 fp32 GEMM by fusecc's generated kernel and by torch's BLAS;
bandwidth as a 64 MiB copy (read + write). They are cached per machine key
in the cache folder. A kernel's attainable rate is
min(peak GFLOP/s, arithmetic intensity x peak GB/s); its efficiency is
achieved / attainable, and ``bound`` says which roof limits it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..kernels.cost import bytes_moved, executed_flops, flops
from ..kernels.spec import KernelSpec
from ..tuner.measure import median_us


def _measure_peaks() -> dict[str, float]:
    from ..bench.gemm import _fusecc_kernel

    n = 1024
    a, w = torch.randn(n, n), torch.randn(n, n)
    fusecc_gemm, _ = _fusecc_kernel(w, n)
    gemm_us = min(median_us(lambda: fusecc_gemm(a)), median_us(lambda: torch.mm(a, w)))
    src, dst = torch.empty(16 << 20), torch.empty(16 << 20)  # 64 MiB each
    copy_us = median_us(lambda: dst.copy_(src))
    return {"gflops": 2 * n**3 / gemm_us / 1e3, "gbps": 2 * src.numel() * 4 / copy_us / 1e3}


def machine_peaks(key: str, cache_dir: Path) -> dict[str, float]:
    """Measured once per machine key (CPU, compiler, threads) and cached."""
    path = cache_dir / "machine_peaks.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if not (isinstance(known.get(key), dict) and {"gflops", "gbps"} <= set(known[key])):
        known[key] = _measure_peaks()
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=2))
        os.replace(tmp, path)
    return known[key]


def efficiency(
    spec: KernelSpec, time_us: float, peaks: dict[str, float], params: dict | None = None
) -> dict[str, float | str]:
    """``gflops`` is the effective rate (the direct algorithm's operation
    count over the time); the roofline compares what the chosen algorithm
    executes (``params``: a Winograd convolution does a quarter of the
    multiplies) with the peaks."""
    work, executed, traffic = flops(spec), executed_flops(spec, params), bytes_moved(spec)
    gbps = traffic / time_us / 1e3
    intensity = executed / max(1, traffic)
    attainable = min(peaks["gflops"], intensity * peaks["gbps"])
    out = {
        "time_us": time_us,
        "mflop": work / 1e6,
        "mbytes": traffic / 1e6,
        "gflops": work / time_us / 1e3,
        "gbps": gbps,
        "intensity": intensity,
        "efficiency": executed / time_us / 1e3 / attainable if attainable else 0.0,
        "bound": "compute" if peaks["gflops"] <= intensity * peaks["gbps"] else "memory",
    }
    if executed != work:
        out["executed_mflop"] = executed / 1e6
    return out
