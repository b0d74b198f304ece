"""A real, external quality check: STS Benchmark (test split) with the real all-MiniLM-L6-v2 weights.

Published for sentence-transformers/all-MiniLM-L6-v2 (no prefixes, mean pooling, cosine): Spearman 82.03.
The data lives in ../shared beside the checkout (not part of the package); the test skips without it.
"""

import csv
import os
from pathlib import Path

import numpy as np
import pytest

STSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsbenchmark" / "sts-test.csv"


def ranks(x):
    """Ranks 1..n, ties sharing their average rank (as Spearman's rho needs)."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    r = np.empty(len(x))
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or sorted_x[end] != sorted_x[start]:
            r[order[start:end]] = (start + end + 1) / 2
            start = end
    return r


def spearman(a, b):
    ra, rb = ranks(np.asarray(a, float)), ranks(np.asarray(b, float))
    return float(np.corrcoef(ra, rb)[0, 1])


def test_spearman_helper():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1)
    assert spearman([1, 2, 2, 3], [3, 2, 2, 1]) == pytest.approx(-1)
    np.testing.assert_array_equal(ranks(np.array([10.0, 20, 20, 5])), [2, 3.5, 3.5, 1])


def test_stsb_spearman_matches_published(minilm):
    if not STSB.is_file():
        if os.environ.get("CI") == "true":  # CI always has ../shared beside the checkout
            pytest.fail(f"{STSB} not present")
        pytest.skip(f"{STSB} not present")
    with open(STSB, encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert len(rows) == 1379
    gold = [float(r[4]) for r in rows]
    a = minilm.encode([r[5] for r in rows], batch_size=64)
    b = minilm.encode([r[6] for r in rows], batch_size=64)
    rho = 100 * spearman((a * b).sum(axis=1), gold)
    assert round(rho, 2) == 82.03, rho
