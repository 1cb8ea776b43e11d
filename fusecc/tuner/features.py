"""What the cost models see: a kernel as numbers (its shape and work,
comparable across kernels of one kind) and a parameter set as numbers
(the same columns for every kernel of that kind, whatever its own search
space offers).

The per-kernel model (`search.Search`) only needs the parameters; the
cross-kernel prior (`search.Prior`) learns from every kernel of the kind
measured on the target before, so it needs both.
"""

from __future__ import annotations

import math
import zlib

from ..kernels.cost import bytes_moved, flops
from ..kernels.spec import KernelSpec, conv_geometry

SPACE_DIMS = 4  # leading iteration-space dims described (padded with zeros)
TUPLE_LEN = 2  # tuple parameters (tiles) described by their first entries and product
MISSING = -1.0


def _log2(value: float) -> float:
    return math.log2(max(1.0, float(value)))


def category(value: object) -> float:
    """A stable number for a categorical value (the same string, the same
    number in every process and kernel), for trees to split on."""
    return (zlib.crc32(repr(value).encode()) % 100_003) / 100_003.0


def kernel_features(spec: KernelSpec) -> dict[str, float]:
    """Shape and work of a kernel: log2 sizes, so kernels a few times larger
    or smaller look alike to the model."""
    out = {"log_flops": _log2(flops(spec)), "log_bytes": _log2(bytes_moved(spec))}
    space = list(spec.space)[:SPACE_DIMS]
    for i in range(SPACE_DIMS):
        out[f"space{i}"] = _log2(space[i]) if i < len(space) else 0.0
    if spec.kind == "gemm":
        out["log_k"] = _log2(spec.attrs["K"])
    elif spec.kind == "conv2d":
        g = conv_geometry(spec)
        out.update(log_k=_log2(g["K"]), cin=_log2(g["cin"]), kh=float(g["kh"]), kw=float(g["kw"]),
                   stride=float(g["sh"]), groups=_log2(g["g"]))  # fmt: skip
    elif spec.kind == "block":
        out["pattern"] = category(spec.attrs.get("pattern"))
        for i, layer in enumerate(spec.attrs["layers"][:4]):
            out[f"layer{i}_flops"] = _log2(flops(layer))
    return out


def param_features(params: dict, keys: list[str]) -> list[float]:
    """One column group per key (sorted): numbers as log2, tuples as their
    first entries and their product, anything else as a category; a key the
    kernel does not have is ``MISSING``."""
    row: list[float] = []
    for key in keys:
        value = params.get(key, None)
        if isinstance(value, (tuple, list)):
            head = [float(v) for v in value[:TUPLE_LEN]]
            row.extend(head + [MISSING] * (TUPLE_LEN - len(head)))
            row.append(_log2(math.prod(value)))
        elif isinstance(value, bool) or value is None or not isinstance(value, (int, float)):
            row.extend([category(value) if value is not None else MISSING] + [MISSING] * TUPLE_LEN)
        else:
            row.extend([_log2(value)] + [MISSING] * TUPLE_LEN)
    return row
