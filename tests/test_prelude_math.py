"""The prelude's math functions against double precision, as the prelude's
docstring states them, in the host's vector dialect and in the scalar one."""

import ctypes
import math

import numpy as np
import pytest

from fusecc.codegen.c.dialects import DIALECTS
from fusecc.codegen.c.prelude import prelude
from fusecc.targets.toolchain import Toolchain, host_dialect_and_flags

HOST, HOST_FLAGS = host_dialect_and_flags()

# name: (reference, inputs, bound, kind of bound)
FUNCTIONS = {
    "exp": (np.exp, np.linspace(-80, 80, 40000), 3e-7, "relative"),
    "softmax_exp2": (np.exp2, np.linspace(-126, 0, 40000), 3e-7, "relative"),
    "tanh": (np.tanh, np.linspace(-9, 9, 40000), 2e-7, "absolute"),
    "erf": (np.vectorize(math.erf), np.linspace(-5, 5, 40000), 4e-7, "absolute"),
}


def _library(dialect: str, tmp_path):
    d = DIALECTS[dialect]
    body = "\n".join(
        f"void apply_{f}(const float* x, float* y, long n) {{\n"
        f"  for (long i = 0; i < n; i += VL) vstore(y + i, v{f}(vload(x + i)));\n}}"
        for f in FUNCTIONS
    )
    source = tmp_path / f"math_{dialect}.c"
    source.write_text(prelude(d) + "\n" + body)
    flags = HOST_FLAGS if dialect == HOST else tuple(f for f in HOST_FLAGS if not f.startswith(("-march", "-mtune")))
    lib = tmp_path / f"math_{dialect}.so"
    Toolchain("cc", flags).build(source, lib)
    return ctypes.CDLL(str(lib))


def _apply(lib, name: str, values) -> np.ndarray:
    x = np.ascontiguousarray(values, dtype=np.float32)  # a whole number of vectors
    y = np.full_like(x, 12345.0)
    fn = getattr(lib, f"apply_{name}")
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long]
    fn(x.ctypes.data, y.ctypes.data, len(x))
    return y


@pytest.mark.parametrize("dialect", sorted({HOST, "scalar"}))
def test_math_functions_meet_their_stated_accuracy(dialect, tmp_path):
    lib = _library(dialect, tmp_path)
    for name, (reference, xs, bound, kind) in FUNCTIONS.items():
        y = _apply(lib, name, xs)  # 40000 points
        x = xs.astype(np.float32).astype(np.float64)
        exact = reference(x)
        error = np.abs(y - exact) / (np.abs(exact) if kind == "relative" else 1.0)
        assert error.max() <= bound, f"{name} ({dialect}): {kind} error {error.max():.3g} at x = {x[error.argmax()]}"


@pytest.mark.parametrize("dialect", sorted({HOST, "scalar"}))
def test_math_functions_pass_nan_through_and_saturate_at_infinity(dialect, tmp_path):
    lib = _library(dialect, tmp_path)
    for name in FUNCTIONS:
        assert np.isnan(_apply(lib, name, [np.nan] * 16)).all(), f"{name}({dialect}) of NaN is not NaN"
    for name in ("tanh", "erf"):
        y = _apply(lib, name, [np.inf, -np.inf] * 8)
        assert (y == np.array([1.0, -1.0] * 8, dtype=np.float32)).all(), f"{name}({dialect}) of +-inf: {y[:2]}"


def test_softmax_exp2_flushes_below_its_range_to_zero(tmp_path):
    """Masked keys reach it as -inf, far-away scores as large negatives: 0, never NaN."""
    lib = _library(HOST, tmp_path)
    y = _apply(lib, "softmax_exp2", [-np.inf, -1e30, -500.0, -127.0, -200.5, -130.0, -127.0, -1e9] * 2)
    assert (y == 0).all(), y
