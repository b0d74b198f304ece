"""Exact chunked top-k against a brute-force full sort."""

import tracemalloc

import numpy as np
import pytest

from e5np.index import top_k


@pytest.mark.parametrize("n, k, chunk", [(1000, 5, 77), (1000, 5, 65536), (10, 20, 3), (257, 1, 256), (64, 64, 8)])
def test_top_k_equals_full_sort(n, k, chunk):
    rng = np.random.RandomState(n + k)
    vectors = rng.standard_normal((n, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[rng.randint(0, n, 4)] + 0.1 * rng.standard_normal((4, 16)).astype(np.float32)
    index, scores = top_k(vectors, queries, k, chunk_rows=chunk)
    full = queries @ vectors.T
    expected = np.argsort(-full, axis=1, kind="stable")[:, :min(k, n)]
    np.testing.assert_array_equal(index, expected)
    # Cosines of unit vectors: float32 rounds them to ~1e-7 absolute, so the bar is absolute (a relative one
    # fails near 0 where a chunk's product rounds differently from the full one, as on AVX2 OpenBLAS kernels).
    np.testing.assert_allclose(scores, np.take_along_axis(full, expected, axis=1), rtol=0, atol=1e-6)


@pytest.mark.parametrize("k", [1, 5, 40, 300])
def test_equal_scores_rank_by_row_in_any_chunks(k):
    """Duplicate passages score the same: the first rows of them are the hits, in row order, for any chunking and
    whether a query comes alone or with others (argpartition alone picks among equal scores as it happens to).
    Each vector is four entries of ±1/2, so every score is a multiple of 1/4, exact in float32 whatever the order a
    BLAS kernel sums in: ties are real, and many."""
    rng = np.random.RandomState(k)
    def unit_rows(n):                                                  # [n, 16], four entries ±1/2 a row
        rows = np.zeros((n, 16), np.float32)
        for row in rows:
            row[rng.choice(16, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
        return rows
    vectors, queries = unit_rows(300), unit_rows(6)
    exact = queries.astype(np.float64) @ vectors.T.astype(np.float64)
    want = np.array([sorted(range(300), key=lambda i: (-row[i], i))[:k] for row in exact])
    for chunk in (None, 1, 7, 64, 299):
        index, scores = top_k(vectors, queries, k, chunk_rows=chunk)
        np.testing.assert_array_equal(index, want)
        np.testing.assert_array_equal(scores, np.take_along_axis(exact, want, axis=1))
        for q in range(len(queries)):
            np.testing.assert_array_equal(top_k(vectors, queries[q:q + 1], k, chunk_rows=chunk)[0], want[q:q + 1])


def test_nan_scores_rank_last():
    """A damaged vector (NaN) is never a hit ahead of a number, however many hits are asked for."""
    vectors = np.eye(6, 4, dtype=np.float32)
    vectors[2] = np.nan
    for k in (2, 5, 6):
        for chunk in (None, 1, 4):
            index, _ = top_k(vectors, np.eye(4, dtype=np.float32)[[1]], k, chunk_rows=chunk)
            np.testing.assert_array_equal(index[0], [1, 0, 3, 4, 5, 2][:k])


def test_top_k_reads_a_memory_map_in_chunks(tmp_path):
    vectors = np.eye(300, 8, dtype=np.float32)
    np.save(tmp_path / "v.npy", vectors)
    mapped = np.load(tmp_path / "v.npy", mmap_mode="r")
    index, scores = top_k(mapped, np.eye(8, dtype=np.float32)[[3]], k=2, chunk_rows=50)
    assert index[0, 0] == 3 and scores[0, 0] == 1 and scores[0, 1] == 0


def test_many_queries_keep_the_score_block_small():
    """A file of queries shrinks the chunks: 2,000 queries over 70,000 vectors made a [2000, 65536]
    block of scores and its indices with fixed 65,536-row chunks, a 3 GB peak; now ~32 MB."""
    rng = np.random.RandomState(0)
    vectors = rng.standard_normal((70_000, 8)).astype(np.float32)
    queries = rng.standard_normal((2000, 8)).astype(np.float32)
    tracemalloc.start()
    try:
        index, scores = top_k(vectors, queries, 3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MB"
    np.testing.assert_array_equal(index[:5], np.argsort(-(queries[:5] @ vectors.T), axis=1, kind="stable")[:, :3])


def test_top_k_normalizes_rows_that_are_not_unit(tmp_path):
    """An index an earlier e5np built from a non-normalizing model holds raw vectors: unit_rows=False ranks them by
    cosine (the same hits and scores as their unit rows give), where a dot product favours the longest vectors."""
    rng = np.random.RandomState(7)
    unit = rng.standard_normal((500, 16)).astype(np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    raw = unit * rng.uniform(0.1, 30, (500, 1)).astype(np.float32)      # lengths 0.1 to 30
    np.save(tmp_path / "raw.npy", raw)
    mapped = np.load(tmp_path / "raw.npy", mmap_mode="r")               # read-only: normalized as a copy
    queries = unit[[3, 99]] + 0.2 * rng.standard_normal((2, 16)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    expected_index, expected_scores = top_k(unit, queries, 10)
    index, scores = top_k(mapped, queries, 10, chunk_rows=64, unit_rows=False)
    np.testing.assert_array_equal(index, expected_index)
    np.testing.assert_allclose(scores, expected_scores, rtol=0, atol=1e-6)
    assert not np.array_equal(top_k(raw, queries, 10)[0], expected_index)  # what a dot product would have ranked
