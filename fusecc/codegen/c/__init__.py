"""The C renderer: `KernelSpec` + dialect + parameters -> a self-contained C file.

One renderer, several dialects (`dialects.py`); one module per kernel kind
(elementwise, reduction, gemm, conv2d, block, pool2d, attention), each exposing the same functions:

* ``tunables(spec)`` - parameter name -> candidate values;
* ``default_params(spec, dialect)`` - a good choice without tuning;
* ``render(spec, name, vl, params)`` - the kernel function's C code;
* ``workspace_bytes(spec, params, nthreads)`` - scratch memory it needs;
* ``prepare(spec, params, constants)`` - constants re-laid-out for the
  kernel (packed GEMM/conv weights), once at compile time.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from pathlib import Path
from types import ModuleType

import torch

from ...kernels.spec import KernelSpec
from . import attention, block, conv, elementwise, gemm, pool, reduction
from .dialects import DIALECTS, Dialect
from .prelude import prelude

KINDS: dict[str, ModuleType] = {
    "elementwise": elementwise,
    "reduction": reduction,
    "gemm": gemm,
    "conv2d": conv,
    "block": block,
    "pool2d": pool,
    "attention": attention,
}


@dataclasses.dataclass
class CSource:
    symbol: str
    text: str
    params: dict


def _kind(spec: KernelSpec) -> ModuleType:
    try:
        return KINDS[spec.kind]
    except KeyError:
        raise NotImplementedError(f"the C renderer has no {spec.kind!r} kernels") from None


@functools.cache
def source_fingerprint(root: Path = Path(__file__).parent) -> str:
    """A hash of the renderer's own sources (every ``.py`` under ``root``).
    A tuning record measures the code that this renderer generated, so the
    tuner keys its records by it: after a renderer change (a new microkernel,
    another epilogue path) the old timings no longer describe the kernels and
    are not replayed."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def tunables(spec: KernelSpec, dialect: Dialect) -> dict[str, tuple]:
    return _kind(spec).tunables(spec, dialect)


def default_params(spec: KernelSpec, dialect: Dialect) -> dict:
    """Parameters that work well untuned; always include the vector width."""
    module = _kind(spec)
    if hasattr(module, "default_params"):
        params = module.default_params(spec, dialect)
    else:
        params = {k: v[len(v) // 2] for k, v in tunables(spec, dialect).items()}
    return {**params, "vl": dialect.vl}


def render(spec: KernelSpec, dialect: Dialect | str, params: dict | None = None) -> CSource:
    dialect = DIALECTS[dialect] if isinstance(dialect, str) else dialect
    params = {**(params if params is not None else default_params(spec, dialect)), "vl": dialect.vl}
    symbol = f"fc_{spec.kind}_{spec.signature()}"
    body = _kind(spec).render(spec, symbol, dialect.vl, params)
    # no group name in the text: identical kernels of different groups (the
    # layers of a transformer) share one source, one build and one cache entry
    text = f"/* {spec.kind} kernel, space {list(spec.space)}, params {params} */\n"
    text += f"/* dialect {dialect.name} */\n" + prelude(dialect) + body
    return CSource(symbol, text, params)


def workspace_bytes(spec: KernelSpec, params: dict, nthreads: int) -> int:
    module = _kind(spec)
    return module.workspace_bytes(spec, params, nthreads) if hasattr(module, "workspace_bytes") else 0


def prepare(spec: KernelSpec, params: dict, constants: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Per constant operand, the buffer the kernel reads (the constant itself
    unless the kind re-lays it out, like packed GEMM weights)."""
    module = _kind(spec)
    return module.prepare(spec, params, constants) if hasattr(module, "prepare") else dict(constants)
