"""Exact chunked top-k against a brute-force full sort."""

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
