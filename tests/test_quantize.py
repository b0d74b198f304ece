"""Compact vectors (e5np.quantize): byte for byte sentence-transformers' quantize_embeddings (live tier), the
errors, the search helpers, and encode(precision=...)."""

import numpy as np
import pytest

import e5np
from e5np.quantize import (PRECISIONS, bit_words, calibration_ranges, dequantize, hamming, int8_scores, popcount,
                           rescore, search, smallest_k, top_k, unpack_signs)
from e5np import quantize as quantize_function


def unit_rows(n, dim, seed=0, dtype=np.float32):
    x = np.random.default_rng(seed).standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)


def cases():
    """(name, vectors, keyword arguments) the live comparison runs, for every precision."""
    calibration = unit_rows(500, 20, seed=1)
    vectors = unit_rows(64, 20)
    vectors[3, :5] = 0                                                  # zeros: x > 0 is False, a low edge
    vectors[4] = calibration.max(axis=0)                                # exactly on the top edge of every step range
    vectors[5] = calibration.min(axis=0)
    constant = unit_rows(40, 16, seed=2)
    constant[:, 7] = 0.25                                               # max == min: step 1
    yield "self-calibrated", vectors, {}
    yield "calibration", vectors, {"calibration_embeddings": calibration}
    yield "ranges", vectors, {"ranges": calibration_ranges(calibration)}
    yield "float64", vectors.astype(np.float64), {"calibration_embeddings": calibration.astype(np.float64)}
    yield "float64-ranges", vectors.astype(np.float64), {"ranges": calibration_ranges(calibration.astype(np.float64))}
    yield "outside-ranges", vectors * 3, {"ranges": calibration_ranges(calibration)}  # clipped to 0 and 255
    yield "one-vector", vectors[7], {"ranges": calibration_ranges(calibration)}
    yield "constant-dim", constant, {}
    yield "dim-384", unit_rows(300, 384, seed=4), {"calibration_embeddings": unit_rows(1000, 384, seed=5)}
    yield "empty", np.zeros((0, 24), np.float32), {}


def sentence_transformers_quantize():
    """sentence-transformers' quantize_embeddings; the test skips without it (CI's transformers-floor pass has no
    sentence-transformers: 6.2 needs a newer transformers)."""
    return pytest.importorskip("sentence_transformers.util.quantization").quantize_embeddings


@pytest.mark.live
@pytest.mark.parametrize("precision", PRECISIONS)
def test_byte_for_byte_sentence_transformers(precision):
    quantize_embeddings = sentence_transformers_quantize()

    for name, vectors, kwargs in cases():
        if name == "empty" and precision == "float32":
            continue
        theirs = quantize_embeddings(vectors, precision=precision, **kwargs)
        ours = quantize_function(vectors, precision, ranges=kwargs.get("ranges"),
                                 calibration=kwargs.get("calibration_embeddings"))
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, (name, ours.dtype, ours.shape)
        assert ours.tobytes() == theirs.tobytes(), name


@pytest.mark.live
def test_encode_precision_is_sentence_transformers(minilm):
    quantize_embeddings = sentence_transformers_quantize()

    texts = ["the cat sat on the mat", "a dog ran home", "embeddings in pure NumPy", "compact vectors"]
    vectors = minilm.encode(texts)
    calibration = minilm.encode([f"calibration sentence number {i}" for i in range(50)])
    for precision in PRECISIONS:
        theirs = quantize_embeddings(vectors, precision=precision, calibration_embeddings=calibration)
        ours = minilm.encode(texts, precision=precision, ranges=calibration_ranges(calibration))
        assert ours.dtype == theirs.dtype and ours.tobytes() == theirs.tobytes(), precision


def test_encode_precision_quantizes_the_vectors(minilm):
    texts = ["the cat sat on the mat", "a dog ran home", "embeddings in pure NumPy"]
    vectors = minilm.encode(texts)
    ranges = calibration_ranges(unit_rows(100, minilm.dim))
    for precision in PRECISIONS:
        np.testing.assert_array_equal(minilm.encode(texts, precision=precision, ranges=ranges),
                                      e5np.quantize(vectors, precision, ranges=ranges))
    assert minilm.encode(texts[0], precision="ubinary").shape == (minilm.dim // 8,)
    assert minilm.encode(texts, precision="int8").dtype == np.int8            # ranges: those of the three
    assert minilm.encode(texts).dtype == np.float32 and minilm.encode(texts, precision=None).dtype == np.float32


def test_shapes_and_dtypes():
    vectors = unit_rows(10, 20)
    expected = {"float32": (np.float32, 20), "int8": (np.int8, 20), "uint8": (np.uint8, 20),
                "binary": (np.int8, 3), "ubinary": (np.uint8, 3)}
    for precision, (dtype, width) in expected.items():
        codes = e5np.quantize(vectors, precision)
        assert codes.dtype == dtype and codes.shape == (10, width), precision


def test_binary_bits_by_hand():
    vectors = np.array([[1, -1, 0, 2, -3, 0.5, 0.1, -0.1, 7]], np.float32)  # 9 dims: 2 bytes, the last padded
    bits = [1, 0, 0, 1, 0, 1, 1, 0]
    assert e5np.quantize(vectors, "ubinary").tolist() == [[int("".join(map(str, bits)), 2), 0b10000000]]
    assert e5np.quantize(vectors, "binary").tolist() == [[int("".join(map(str, bits)), 2) - 128, 0]]
    np.testing.assert_array_equal(unpack_signs(e5np.quantize(vectors, "binary"), 9, "binary"),
                                  np.where(vectors > 0, 1, -1))


def test_int8_levels_by_hand():
    ranges = np.array([[0, 0], [510, 255]], np.float32)                 # steps 2 and 1, exact in float32
    vectors = np.array([[0, 0], [510, 255], [255, 127.5], [-5, 300]], np.float32)
    assert e5np.quantize(vectors, "uint8", ranges).tolist() == [[0, 0], [255, 255], [127, 127], [0, 255]]
    assert e5np.quantize(vectors, "int8", ranges).tolist() == [[-128, -128], [127, 127], [-1, -1], [-128, 127]]
    codes = e5np.quantize(vectors, "int8", ranges)
    np.testing.assert_array_equal(dequantize(codes, "int8", ranges), [[0, 0], [510, 255], [254, 127], [0, 255]])
    np.testing.assert_array_equal(dequantize(codes, "int8", ranges),
                                  dequantize(e5np.quantize(vectors, "uint8", ranges), "uint8", ranges))


def test_calibration_ranges():
    calibration = unit_rows(30, 8)
    np.testing.assert_array_equal(calibration_ranges(calibration),
                                  np.stack([calibration.min(axis=0), calibration.max(axis=0)]))
    np.testing.assert_array_equal(e5np.quantize(unit_rows(5, 8, 3), "int8", calibration=calibration),
                                  e5np.quantize(unit_rows(5, 8, 3), "int8", ranges=calibration_ranges(calibration)))
    assert e5np.calibration_ranges is calibration_ranges


@pytest.mark.parametrize("precision", ["float16", "int4", "INT8", None, "bits"])
def test_unknown_precision(precision, minilm):
    with pytest.raises(ValueError, match="precision must be one of"):
        e5np.quantize(unit_rows(3, 8), precision)
    if precision is not None:
        with pytest.raises(ValueError, match="precision must be one of"):
            minilm.encode(["a", "b"], precision=precision)


@pytest.mark.parametrize("shape", [(2,), (3, 384), (2, 383), (384, 2), (1, 2, 384)])
def test_ranges_of_the_wrong_shape(shape, minilm):
    with pytest.raises(ValueError, match=r"ranges must have shape \(2, 384\)"):
        e5np.quantize(unit_rows(3, 384), "int8", ranges=np.zeros(shape))
    with pytest.raises(ValueError, match=r"ranges must have shape \(2, 384\)"):
        minilm.encode(["a"], precision="uint8", ranges=np.zeros(shape))


def test_other_bad_input():
    with pytest.raises(ValueError, match="a single vector has none"):
        e5np.quantize(unit_rows(1, 8), "int8")
    with pytest.raises(ValueError, match="a single vector has none"):
        e5np.quantize(unit_rows(1, 8)[0], "uint8")
    with pytest.raises(TypeError, match="must be float vectors"):
        e5np.quantize(np.ones((3, 8), np.int8), "int8")
    with pytest.raises(ValueError, match="rows of vectors"):
        e5np.quantize(np.ones((3, 8, 2)), "binary")
    with pytest.raises(ValueError, match="ranges must be finite"):
        e5np.quantize(unit_rows(3, 2), "int8", ranges=[[0, -np.inf], [1, 1]])
    with pytest.raises(ValueError, match="n >= 2"):
        calibration_ranges(unit_rows(1, 8))
    with pytest.raises(ValueError, match="dequantize takes int8 or uint8"):
        dequantize(np.zeros((2, 8), np.uint8), "binary", np.zeros((2, 8)))


@pytest.mark.parametrize("width", [48, 3, 13])
def test_popcount_and_hamming(monkeypatch, width):
    rng = np.random.default_rng(width)
    a, b = rng.integers(0, 256, (5, width), dtype=np.uint8), rng.integers(0, 256, (70, width), dtype=np.uint8)
    expected = (np.unpackbits(a, axis=1)[:, None, :] != np.unpackbits(b, axis=1)[None, :, :]).sum(axis=2)
    words = bit_words(b)
    assert words.dtype == np.uint64 and words.shape == (-(-width // 8), 70)
    np.testing.assert_array_equal(hamming(a, words, block=16), expected)
    np.testing.assert_array_equal(hamming(a[0], words), expected[:1])
    np.testing.assert_array_equal(bit_words((b.astype(np.int16) - 128).astype(np.int8), "binary"), words)
    x = np.arange(256, dtype=np.uint8)
    table = [bin(i).count("1") for i in range(256)]
    assert popcount(x).tolist() == table
    w = rng.integers(0, 2**63, 100, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    w_counts = [bin(int(v)).count("1") for v in w]
    assert popcount(w).tolist() == w_counts
    monkeypatch.delattr(np, "bitwise_count", raising=False)             # NumPy < 2.0: the lookup table
    assert popcount(x).tolist() == table and popcount(w).tolist() == w_counts
    np.testing.assert_array_equal(hamming(a, words), expected)


def test_smallest_k():
    distances = np.array([[5, 1, 3, 1, 0, 3, 7], [2, 2, 2, 2, 2, 2, 2]], np.uint16)
    indices, nearest = smallest_k(distances, 4)
    assert indices.tolist() == [[4, 1, 3, 2], [0, 1, 2, 3]] and nearest.tolist() == [[0, 1, 1, 3], [2, 2, 2, 2]]
    assert smallest_k(distances, 20)[0].tolist()[0] == [4, 1, 3, 2, 5, 0, 6]


def test_int8_scores_are_the_codes_dot_products():
    corpus, q = unit_rows(40, 24, seed=3), unit_rows(3, 24, seed=4)
    ranges = calibration_ranges(corpus)
    codes = e5np.quantize(corpus, "int8", ranges)
    expected = e5np.quantize(q, "int8", ranges).astype(np.int64) @ codes.astype(np.int64).T
    np.testing.assert_array_equal(int8_scores(q, codes, "int8", ranges, block=7), expected)
    np.testing.assert_array_equal(int8_scores(q, e5np.quantize(corpus, "uint8", ranges), "uint8", ranges), expected)


def test_top_k_ties_and_order():
    scores = np.array([[0.5, 0.9, 0.5, 0.1, 0.9]])
    indices, best = top_k(scores, 3)
    assert indices.tolist() == [[1, 4, 0]] and best.tolist() == [[0.9, 0.9, 0.5]]
    assert top_k(scores, 10)[0].tolist() == [[1, 4, 0, 2, 3]]


def test_rescoring_is_never_worse(minilm):
    """On a small real corpus: recall@10 of exact search, for int8 and binary, with and without rescoring."""
    passages = [f"{subject} {verb} {thing}" for subject in ("the cat", "a dog", "my neighbour", "the children",
                                                           "an old man", "the teacher")
                for verb in ("likes", "sells", "paints", "finds", "loses", "repairs", "draws")
                for thing in ("a red bicycle", "the garden", "old books", "fresh bread", "a small boat")]
    queries = ["who fixes bikes", "someone painting a boat", "buying bread", "a pet in the garden", "lost books",
               "kids drawing", "an elderly person selling things", "school teacher"]
    corpus, q = minilm.encode(passages), minilm.encode(queries)
    exact, _ = top_k(q @ corpus.T, 10)
    ranges = calibration_ranges(corpus)

    def recall(found):
        return np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found.tolist(), exact.tolist())])

    for precision in ("int8", "uint8", "binary", "ubinary"):
        codes = e5np.quantize(corpus, precision, ranges)
        plain, _ = search(q, codes, precision, 10, ranges)
        rescored, scores = search(q, codes, precision, 10, ranges, rescore_multiplier=4)
        assert recall(rescored) >= recall(plain), precision
        assert np.all(np.diff(scores, axis=1) <= 0)
    codes = e5np.quantize(corpus, "int8", ranges)
    assert recall(search(q, codes, "int8", 10, ranges, rescore_multiplier=4)[0]) >= 0.9


def test_rescore_uses_the_float_query():
    corpus = unit_rows(50, 16, seed=7)
    q = unit_rows(3, 16, seed=8)
    codes = e5np.quantize(corpus, "ubinary")
    candidates = np.tile(np.arange(50), (3, 1))
    indices, scores = rescore(q, candidates, codes, "ubinary", 5)
    signs = np.where(corpus > 0, 1, -1).astype(np.float32)
    expected, expected_scores = top_k(q @ signs.T, 5)
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-6)
    plain, distances = search(q, codes, "ubinary", 5)
    np.testing.assert_array_equal(-distances, np.sort(hamming(e5np.quantize(q, "ubinary"), bit_words(codes)))[:, :5])
