"""Fit the polynomial behind e5np.numerics.gelu (float32) and report its accuracy.

GELU(x) = x Φ(x), Φ the standard normal CDF. With Q(z) = 1 - Φ(z) = erfc(z/√2)/2, the upper tail,
Φ(x) = 1 - Q(|x|) for x >= 0 and Q(|x|) for x < 0, so for every x

    GELU(x) = relu(x) - |x| Q(|x|)

NumPy has no erfc. erfc(a) e^{a²} is smooth and slowly varying on a >= 0 (1 at 0, ~1/(a√π) far out),
so it is a polynomial in s = a / (2 + a) ∈ [0, 1):

    Q(|x|) = e^{-x²/2} R(s),   a = |x|/√2,   R(s) ≈ erfc(a) e^{a²} / 2

fitted here on a ∈ [0, 6] (Q(6√2) ≈ 1e-17; beyond that |x| Q(|x|) is far below float32 resolution of
x), minimising relative error divided by 1 + x²/2 (iteratively reweighted least squares towards
minimax) against math.erfc in float64. The divisor is float32's own: rounding x² inside e^{-x²/2}
costs x²/2 ulps of relative error, so a fit error growing the same way is invisible beside it, and
degree 8 does what degree 9 did with an unweighted fit. Run it to regenerate the coefficients and see
the float32 error of GELU:

    python tools/fit_gelu.py
"""

import math
import sys
from pathlib import Path

import numpy as np

DEGREE = 8
A_MAX = 6.0


def target(s):
    a = 2 * s / (1 - s)
    return np.array([math.erfc(v) * math.exp(v * v) / 2 for v in a])


def fit(degree=DEGREE, a_max=A_MAX, nodes=4000, rounds=40):
    s_max = a_max / (2 + a_max)
    s = s_max * (0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, nodes)))   # Chebyshev nodes on [0, s_max]
    y = target(s)
    x = 2 * s / (1 - s) * math.sqrt(2)
    allowance = 1 + x * x / 2                                              # float32's own error growth, in ulps
    vander = np.vander(s, degree + 1, increasing=True)
    weights = np.ones_like(s)
    for _ in range(rounds):
        coeffs, *_ = np.linalg.lstsq(vander * (weights / (y * allowance))[:, None], weights / allowance, rcond=None)
        scaled_error = (vander @ coeffs / y - 1) / allowance
        weights *= np.sqrt(np.abs(scaled_error)) + 1e-300                 # Lawson: weight the worst nodes up
        weights /= weights.max()
    return coeffs, np.abs(scaled_error).max()


def report():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from e5np import numerics

    x = np.concatenate([np.linspace(-12, 12, 2_000_001), np.geomspace(1e-30, 1, 20_000),
                        -np.geomspace(1e-30, 1, 20_000)]).astype(np.float32)
    x64 = x.astype(np.float64)
    want = np.array([v * math.erfc(-v / math.sqrt(2)) / 2 for v in x64])
    error = np.abs(numerics.gelu(x).astype(np.float64) - want)
    print(f"float32 GELU, max error in ulps of x: {(error / np.spacing(np.abs(x))).max():.2f}")


if __name__ == "__main__":
    coeffs, error = fit()
    print(f"max relative error of R / (1 + x²/2) on a in [0, {A_MAX}]: {error:.1e}")
    print("NORMAL_TAIL = (" + ", ".join(f"{c!r}" for c in coeffs.tolist()) + ")")
    report()
