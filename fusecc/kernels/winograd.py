"""Winograd minimal filtering F(m x m, r x r), built by Cook-Toom.

A correlation of an ``alpha = m + r - 1`` input tile ``d`` with an r x r
filter ``g`` giving an m x m output tile is

    Y = A^T [ (G g G^T) * (B^T d B) ] A                    (* elementwise)

so a 3x3 convolution's alpha^2 products per tile replace m^2 * 9 (F(4x4,
3x3): 36 instead of 144). The filter transform runs once at compile time;
the convolution becomes alpha^2 independent GEMMs over channels between an
input transform and an output transform. After Lavin and Gray, "Fast
Algorithms for Convolutional Neural Networks" (2016).

The matrices come from polynomial interpolation at ``alpha - 1`` finite
points and infinity. Linear convolution s = g * h evaluates as
V s = (V_r g) * (V_m h) with V_k the (alpha x k) Vandermonde matrix of the
points (the point at infinity picks the leading coefficient); correlation
is its transpose, so A^T = V_m^T, G = V_r and B^T = V^-T. Each row of B^T
is then scaled to small integers, the inverse scale moving into G - the
run-time transforms (A^T, B^T) need only adds and small-integer multiplies,
the fractions stay in the compile-time filter transform. Exact rational
arithmetic (``fractions``) keeps the construction free of rounding.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import torch

# Interpolation points per output tile size: small magnitudes keep fp32 error
# low (F(2,3) and F(4,3) as in Lavin and Gray; larger m needs +-1/2 and
# loses about a digit per step).
POINTS = {2: (0, 1, -1), 4: (0, 1, -1, 2, -2), 6: (0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2))}

Matrix = tuple[tuple[Fraction, ...], ...]


def _vandermonde(points: tuple, cols: int) -> list[list[Fraction]]:
    rows = [[Fraction(p) ** i for i in range(cols)] for p in points]
    rows.append([Fraction(0)] * (cols - 1) + [Fraction(1)])  # the point at infinity
    return rows


def _inverse(a: list[list[Fraction]]) -> list[list[Fraction]]:
    """Gauss-Jordan over the rationals (the matrices are at most 8 x 8)."""
    n = len(a)
    m = [row[:] + [Fraction(int(i == j)) for j in range(n)] for i, row in enumerate(a)]
    for col in range(n):
        pivot = next(r for r in range(col, n) if m[r][col] != 0)
        m[col], m[pivot] = m[pivot], m[col]
        inv = 1 / m[col][col]
        m[col] = [v * inv for v in m[col]]
        for r in range(n):
            if r != col and m[r][col] != 0:
                f = m[r][col]
                m[r] = [v - f * w for v, w in zip(m[r], m[col])]
    return [row[n:] for row in m]


def _integer_scale(row: list[Fraction]) -> Fraction:
    """The factor that turns a rational row into coprime integers."""
    nonzero = [v for v in row if v != 0]
    denominators = math.lcm(*(v.denominator for v in nonzero))
    numerators = math.gcd(*(int(v * denominators) for v in nonzero))
    return Fraction(denominators, numerators)


@functools.cache
def matrices(m: int, r: int = 3) -> tuple[Matrix, Matrix, Matrix]:
    """(A^T [m x alpha], G [alpha x r], B^T [alpha x alpha]) of F(m, r)."""
    if m not in POINTS:
        raise ValueError(f"no Winograd interpolation points for output tiles of {m} (have {sorted(POINTS)})")
    alpha = m + r - 1
    points = POINTS[m][: alpha - 1]
    vm, vr, v = _vandermonde(points, m), _vandermonde(points, r), _vandermonde(points, alpha)
    b_t = [list(col) for col in zip(*_inverse(v))]  # V^-T
    g = [row[:] for row in vr]
    for j in range(alpha):
        s = _integer_scale(b_t[j])
        b_t[j] = [x * s for x in b_t[j]]
        g[j] = [x / s for x in g[j]]
    a_t = [list(col) for col in zip(*vm)]
    return tuple(map(tuple, a_t)), tuple(map(tuple, g)), tuple(map(tuple, b_t))


def as_tensor(matrix: Matrix) -> torch.Tensor:
    return torch.tensor([[float(x) for x in row] for row in matrix], dtype=torch.float64)


def transform_filters(weight: torch.Tensor, m: int) -> torch.Tensor:
    """[Cout, Cin, r, r] -> U = G g G^T as [alpha, alpha, Cin, Cout] (float64
    arithmetic, float32 result): one Cin x Cout GEMM operand per position."""
    _, g, _ = matrices(m, weight.shape[-1])
    gm = as_tensor(g)
    u = torch.einsum("ak,oikl,bl->abio", gm, weight.double(), gm)
    return u.float().contiguous()
