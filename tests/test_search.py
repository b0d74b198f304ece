"""Exact chunked top-k against a brute-force full sort."""

import tracemalloc

import numpy as np
import pytest

from e5np.search import top_k


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
