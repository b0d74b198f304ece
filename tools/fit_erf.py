"""Fit the two polynomials behind e5np.bert.erf and report their float32 accuracy.

NumPy has no erf and SciPy is not a dependency, so e5np evaluates erf with two
least-squares polynomial fits against Python's math.erf (float64):

  |x| <= 1      erf(x) = x * P(x^2)                       (odd, like the Maclaurin series)
  1 < |x| < 4   erf(x) = 1 - exp(-x^2) * R(1 / (1 + |x|/2)) (erfc(x)·e^{x²} is smooth and slowly varying)
  |x| >= 4      erf(x) = ±1                               (1 - erf(4) = 1.5e-8 is below float32's spacing at 1)

Both fits minimise *relative* error. Run it to regenerate the coefficients:

    python tools/fit_erf.py
"""

import math

import numpy as np

SMALL_DEGREE = 6  # in x^2, so x^13
LARGE_DEGREE = 10


def chebyshev_nodes(lo, hi, n=20000):
    return lo + (hi - lo) * (0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, n)))


def relative_lstsq(t, target, degree):
    vander = np.vander(t, degree + 1, increasing=True)
    coeffs, *_ = np.linalg.lstsq(vander / target[:, None], np.ones_like(target), rcond=None)
    return coeffs


def fit():
    x = chebyshev_nodes(0.0, 1.0)[1:]
    small = relative_lstsq(x * x, np.array([math.erf(v) / v for v in x]), SMALL_DEGREE)
    x = chebyshev_nodes(1.0, 4.0)
    large = relative_lstsq(1.0 / (1.0 + x / 2.0), np.array([math.erfc(v) * math.exp(v * v) for v in x]), LARGE_DEGREE)
    return small, large


if __name__ == "__main__":
    small, large = fit()
    print("ERF_SMALL = (" + ", ".join(f"{c!r}" for c in small.tolist()) + ")")
    print("ERF_LARGE = (" + ", ".join(f"{c!r}" for c in large.tolist()) + ")")
