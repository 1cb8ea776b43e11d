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


def _tuple_numbers(value: tuple | list) -> list[float]:
    """A tuple parameter as TUPLE_LEN rows of TUPLE_LEN numbers: a flat tuple
    (a tile) is the first row; a tuple of tuples (a block's tile per layer,
    None for a layer without one) is one row each. Short rows and missing
    rows are ``MISSING``, so every kernel's columns line up."""
    rows = list(value) if any(isinstance(v, (tuple, list)) or v is None for v in value) else [value]
    out: list[float] = []
    for row in rows[:TUPLE_LEN]:
        numbers = [float(v) for v in row[:TUPLE_LEN]] if row is not None else []
        out += numbers + [MISSING] * (TUPLE_LEN - len(numbers))
    return out + [MISSING] * (TUPLE_LEN * TUPLE_LEN - len(out))


def _product(value: object) -> float:
    """The product of every number in a (nested) tuple parameter."""
    if isinstance(value, (tuple, list)):
        return math.prod(_product(v) for v in value)
    return 1.0 if value is None else float(value)


def param_features(params: dict, keys: list[str]) -> list[float]:
    """One column group per key (sorted): numbers as log2, tuples (tiles, or
    a block's tiles per layer) as their leading entries and their product,
    anything else as a category; a key the kernel does not have is ``MISSING``."""
    pad = [MISSING] * (TUPLE_LEN * TUPLE_LEN)
    row: list[float] = []
    for key in keys:
        value = params.get(key, None)
        if isinstance(value, (tuple, list)):
            row.extend(_tuple_numbers(value))
            row.append(_log2(_product(value)))
        elif isinstance(value, bool) or value is None or not isinstance(value, (int, float)):
            row.extend([category(value) if value is not None else MISSING] + pad)
        else:
            row.extend([_log2(value)] + pad)
    return row
