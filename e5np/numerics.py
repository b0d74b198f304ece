"""The numerical tricks behind e5np's fast float32 engine, each with its accuracy bound.

`e5np.reference` computes GELU from erf and softmax with e^x, in float64; `e5np.engine` calls these instead. Each
function here is pure (arrays in, arrays out) and holds to the bound its docstring gives; tests/test_ops.py
asserts each one.
"""

import math

import numpy as np

from . import reference


# --- exponentials --------------------------------------------------------------------------------
def exp2_is_vectorized(dispatch=None):
    """Whether NumPy's float32 exp2 runs a SIMD loop on this CPU. dispatch: numpy.lib.introspect.opt_func_info's
    answer for it (NumPy >= 2.0), which names the loop in use; "baseline" is the plain C loop."""
    if dispatch is None:
        try:
            from numpy.lib.introspect import opt_func_info
        except ImportError:                                            # NumPy 1: no way to tell, and exp is safe
            return False
        dispatch = opt_func_info(func_name="^exp2$", signature="float32")
    return not dispatch.get("exp2", {}).get("ff", {}).get("current", "baseline").startswith("baseline")


# EXP(y * EXP_UNITS) = e^y: GELU's Gaussian and softmax take their exponentials this way, the scale folded into
# the constants they already multiply by. NumPy vectorizes float32 exp2 only in its AVX-512 loops, where it is
# twice as fast as exp and more accurate (within 1 ulp, against exp's 2.5): there e^y = 2^(y log2 e). Elsewhere
# exp2 is a scalar loop at half exp's speed, and e^y is exp(y).
EXP, EXP_UNITS = (np.exp2, math.log2(math.e)) if exp2_is_vectorized() else (np.exp, 1.0)


# --- GELU ----------------------------------------------------------------------------------------
# GELU(x) = x Φ(x), Φ the standard normal CDF. Writing Q(z) = 1 - Φ(z) for the upper tail,
# Φ(x) = 1 - Q(|x|) when x >= 0 and Q(|x|) when x < 0, so for every x
#     GELU(x) = relu(x) - |x| Q(|x|)
# one formula for both signs, and no cancellation: |x| Q(|x|) <= relu(x) / 2 where they meet.
# NumPy has no erf or erfc. Q(|x|) = e^{-x²/2} R(s), s = a / (2 + a), a = |x|/√2, where
# R(s) ≈ erfc(a) e^{a²} / 2 is a polynomial fitted by tools/fit_gelu.py on a in [0, 6] (relative error
# within 1.3e-8 (1 + x²/2): float32's own rounding of x² in e^{-x²/2} grows like x²/2, so the fit may
# too; further out |x| Q(|x|) is far below float32's resolution of x).
NORMAL_TAIL = (0.500000006344287, -1.128380333248073, 0.8716570350396993, -0.13781769210671013,
               -0.15301548176850888, -0.003474641613179023, 0.04969099389613947, 0.023543697567671596,
               -0.022362426687394358)


def polynomial(coefficients, t):
    """c0 + c1 t + c2 t^2 + ..., by Horner's rule in t's dtype."""
    result = t * coefficients[-1]                                      # the first step's product: no fill pass
    result += coefficients[-2]
    for c in coefficients[-3::-1]:
        result *= t
        result += c
    return result


def normal_tail(x):
    """Q(x) = P(Z > x) = erfc(x/√2) / 2 for x >= 0, in float32.

    Relative error within 4 ulps * (1 + x²/2): the x²/2 part is float32 rounding x² inside e^{-x²/2}. 0, not NaN,
    far out (x² overflowing to inf gives e^-inf = 0).
    """
    s = x + 2 * math.sqrt(2)
    np.divide(x, s, out=s)                                             # a / (2 + a) with a = x/√2, in [0, 1)
    with np.errstate(over="ignore"):                                   # x² = inf past 1.8e19; 2^-inf = 0 is right
        gaussian = x * (-0.5 * EXP_UNITS)
        gaussian *= x                                                  # -x²/2, in EXP's units
        EXP(gaussian, out=gaussian)                                    # e^{-x²/2}
    gaussian *= polynomial(NORMAL_TAIL, s)
    return gaussian                                                    # e^{-x²/2} R(s)


def gelu(x):
    """Exact GELU, x Φ(x) (BERT's "gelu"), to the precision of x's dtype.

    float32: relu(x) - |x| Q(|x|), within 2 ulps of x of the float64 definition, and for x < 0 within
    4 ulps * (1 + x²/2) of GELU(x) itself (no cancellation as Φ(x) goes to 0). float64: the definition,
    `reference.gelu`, with the C library's erf.
    """
    if x.dtype == np.float64:
        return reference.gelu(x)
    magnitude = np.abs(x)
    tail = normal_tail(magnitude)                                      # Q(|x|), a new array: scaled in place
    tail *= magnitude                                                  # |x| Q(|x|)
    relu = np.add(x, magnitude, out=magnitude)                         # magnitude's last use: reuse its memory
    relu *= 0.5                                                        # (x + |x|) / 2 = relu(x), exactly
    relu -= tail
    return relu                                                        # relu(x) - |x| Q(|x|)


# --- softmax -------------------------------------------------------------------------------------
def row_max(x):
    """x.max(axis=-1, keepdims=True), exactly (the same numbers, NaN aside). NumPy's reduction along rows pays a
    fixed cost per row, more than the arithmetic when rows are short, as a short query's scores are: short rows
    are reduced one column at a time instead, each step a vectorized maximum across all the rows."""
    if x.shape[-1] > 24:                                               # past 24 columns the row reduction wins
        return x.max(axis=-1, keepdims=True)
    peak = x[..., :1].copy()                                           # [..., 1]
    for j in range(1, x.shape[-1]):
        np.maximum(peak, x[..., j:j + 1], out=peak)
    return peak


def softmax_in_exp_units(x):
    """EXP(x) / Σ EXP(x) along the last axis: the softmax of x / EXP_UNITS. Attention measures its scores
    in EXP's units (see EXP), the scale folded into its 1/√D. float32: within 1e-6 of the float64 softmax of
    the same scores, overflow-safe (the exact row max is subtracted first)."""
    e = x - row_max(x)                                                 # shift for overflow safety
    EXP(e, out=e)                                                      # in place: e is ours
    e /= e.sum(axis=-1, keepdims=True)
    return e
