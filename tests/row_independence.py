"""Does this machine's BLAS give a row of a matrix product the same bits whatever other rows share it?

A text's vector comes out of products whose rows are its tokens, stacked with its batch-mates' tokens.
OpenBLAS's AVX-512 kernels (this machine's) round each row of a product the same way whatever else is
in it (products of two rows or more, and a text is at least [CLS] and [SEP]), so the same text gets
the same bits in any batch. Its AVX2 kernels (Haswell, Zen), which most x86 CPUs without AVX-512 get,
do not: how a row rounds depends on how many rows the product has and how its threads split them, so
a text's vector moves with its batch-mates within float32 rounding (~1e-7 measured). Tests comparing a
text's vector across batches are therefore exact where the BLAS allows it and held to the parity bar
elsewhere. CI runs the suite both ways (OPENBLAS_CORETYPE=Haswell forces the AVX2 kernels).
"""

import numpy as np

PARITY_BAR = 1e-6  # max-abs per component, the same bar e5np's vectors meet against transformers


def _probe():
    rng = np.random.RandomState(0)
    rows = rng.standard_normal((67, 384)).astype(np.float32)
    for width in (384, 1536):                                          # e5-small's projection widths
        w = rng.standard_normal((384, width)).astype(np.float32)
        whole = rows @ w
        for start, stop in [(0, 2), (0, 5), (3, 16), (7, 40), (60, 67), (0, 66)]:
            if not np.array_equal(rows[start:stop] @ w, whole[start:stop]):
                return False
    return True


BLAS_ROWS_INDEPENDENT = _probe()


def assert_same_vectors(actual, desired):
    """Bit-identical where this BLAS rounds rows independently of each other, else within the parity bar."""
    actual, desired = np.asarray(actual), np.asarray(desired)
    assert actual.shape == desired.shape, (actual.shape, desired.shape)
    if BLAS_ROWS_INDEPENDENT:
        np.testing.assert_array_equal(actual, desired)
    else:
        difference = np.abs(actual.astype(np.float64) - desired).max(initial=0)
        assert difference <= PARITY_BAR, f"max-abs difference {difference:.2e} > {PARITY_BAR:g}"
