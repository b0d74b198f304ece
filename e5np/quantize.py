"""Compact vectors: float embeddings as int8 / uint8 (one byte a dimension) or binary / ubinary (one bit), byte for
byte what sentence-transformers' quantize_embeddings gives for the same inputs and ranges; and the search over them
(scores, top-k, rescoring) that docs/compact-vectors.md measures.

    int8 / uint8   each dimension d cut into 255 equal steps over [ranges[0, d], ranges[1, d]] (its min and max over
                   calibration vectors): q = clip(floor((x - min) / step), 0, 255), step = (max - min) / 255 (1 where
                   max == min), in float32 arithmetic (float64 for float64 vectors); uint8 is q, int8 is q - 128.
    binary/ubinary each dimension one bit, 1 where x > 0, packed 8 to a byte, first dimension in the high bit
                   (np.packbits): [n, ceil(H / 8)]; ubinary is the bytes as uint8, binary each byte - 128 as int8.
    float32        the vectors as float32.

Pure NumPy (>= 1.24): popcounts use np.bitwise_count where NumPy has it (2.0+), else a 256-entry table.
"""

import numpy as np

PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")


def check_precision(precision):
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    return precision


def float_vectors(vectors, name="vectors"):
    """vectors as a float NumPy array of 1 or 2 dimensions (a vector, or rows of them)."""
    array = np.asarray(vectors)
    if array.dtype.kind != "f":
        raise TypeError(f"{name} must be float vectors, got dtype {array.dtype}")
    if array.ndim not in (1, 2):
        raise ValueError(f"{name} must be a vector [H] or rows of vectors [n, H], got shape {array.shape}")
    return array


def calibration_ranges(vectors):
    """[2, H]: each dimension's min and max over calibration vectors [n, H] (n >= 2), the `ranges` int8 / uint8 take
    (sentence-transformers' calibration_embeddings make the same)."""
    vectors = float_vectors(vectors, "calibration vectors")
    if vectors.ndim != 2 or len(vectors) < 2:
        raise ValueError(f"calibration vectors must be rows [n, H] with n >= 2, got shape {vectors.shape}")
    return np.stack([vectors.min(axis=0), vectors.max(axis=0)])


def check_ranges(ranges, dim):
    """ranges as a float32 [2, dim] array of (min, max) per dimension."""
    array = np.asarray(ranges)
    if array.dtype.kind not in "fiu":
        raise TypeError(f"ranges must be numbers, got dtype {array.dtype}")
    if array.shape != (2, dim):
        raise ValueError(f"ranges must have shape (2, {dim}) (each dimension's min and max), got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("ranges must be finite")
    return array.astype(np.float32)


def quantize(vectors, precision, ranges=None, calibration=None):
    """Float vectors [n, H] (or one [H]) -> their `precision` form (see the module's doc).

    int8 / uint8 need ranges [2, H] (each dimension's min and max): given, else calibration_ranges(calibration),
    else those of the vectors themselves (n >= 2; as sentence-transformers does, though ranges from a
    representative calibration set are better, and the same ranges must quantize every vector compared).
    """
    check_precision(precision)
    vectors = float_vectors(vectors)
    if precision == "float32":
        return vectors.astype(np.float32)
    if precision in ("binary", "ubinary"):
        packed = np.packbits(vectors > 0, axis=-1)
        return packed if precision == "ubinary" else (packed.astype(np.int16) - 128).astype(np.int8)
    if vectors.ndim == 2 and len(vectors) == 0 and ranges is None and calibration is None:
        return np.zeros(vectors.shape, np.int8 if precision == "int8" else np.uint8)
    if ranges is None:
        if calibration is None and (vectors.ndim == 1 or len(vectors) < 2):
            raise ValueError(f"{precision} needs ranges (or calibration vectors): a single vector has none")
        ranges = calibration_ranges(vectors if calibration is None else calibration)
    ranges = check_ranges(ranges, vectors.shape[-1])
    low, steps = ranges[0], (ranges[1] - ranges[0]) / np.float32(255)
    steps = np.where(steps == 0, np.float32(1), steps)
    levels = np.clip(np.floor((vectors - low) / steps), 0, 255)       # float32 for float32 vectors
    return levels.astype(np.uint8) if precision == "uint8" else (levels - 128).astype(np.int8)


def dequantize(codes, precision, ranges):
    """int8 / uint8 codes [n, H] -> float32 vectors at each step's low end (min + level * step): what rescoring
    scores a float query against."""
    if precision not in ("int8", "uint8"):
        raise ValueError(f"dequantize takes int8 or uint8 codes, got precision {precision!r}")
    codes = np.asarray(codes)
    ranges = check_ranges(ranges, codes.shape[-1])
    steps = (ranges[1] - ranges[0]) / np.float32(255)
    steps = np.where(steps == 0, np.float32(1), steps)
    levels = codes.astype(np.float32) + (128 if precision == "int8" else 0)
    return levels * steps + ranges[0]


def unpack_signs(bits, dim, precision="ubinary"):
    """binary / ubinary codes [n, ceil(dim / 8)] -> float32 [n, dim] of +1 (bit set) and -1."""
    bits = np.asarray(bits)
    if precision == "binary":
        bits = (bits.astype(np.int16) + 128).astype(np.uint8)
    unpacked = np.unpackbits(bits.astype(np.uint8, copy=False), axis=-1)[..., :dim]
    return unpacked.astype(np.float32) * 2 - 1


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount(x):
    """Set bits of each uint8 in x (uint8)."""
    if hasattr(np, "bitwise_count"):                                   # NumPy >= 2.0
        return np.bitwise_count(x)
    return _POPCOUNT[x]


def hamming(query_bits, corpus_bits, block=65536):
    """[q, m] Hamming distances (int32) between ubinary codes query_bits [q, B] and corpus_bits [m, B]: XOR and
    popcount, a block of corpus rows at a time (bounded memory)."""
    query_bits, corpus_bits = np.asarray(query_bits, np.uint8), np.asarray(corpus_bits, np.uint8)
    out = np.empty((len(query_bits), len(corpus_bits)), np.int32)
    for start in range(0, len(corpus_bits), block):
        part = corpus_bits[start:start + block]
        for i, q in enumerate(query_bits):
            out[i, start:start + len(part)] = popcount(np.bitwise_xor(part, q)).sum(axis=1, dtype=np.int32)
    return out


def top_k(scores, k):
    """(indices [q, k], scores [q, k]) of each row's k highest scores, best first; of equal scores the lower index
    first (at the k-th place too: which rows are kept does not hang on the sort)."""
    scores = np.asarray(scores)
    k = min(k, scores.shape[1])
    indices = np.empty((len(scores), k), np.int64)
    for i, row in enumerate(scores):
        if k == 0:
            break
        kth = -np.partition(-row, k - 1)[k - 1] if k < len(row) else row.min()
        above = np.flatnonzero(row > kth)
        kept = np.concatenate([above, np.flatnonzero(row == kth)[:k - len(above)]])
        indices[i] = kept[np.lexsort((kept, -row[kept]))]
    return indices, np.take_along_axis(scores, indices, axis=1)


def compact_scores(queries, corpus, precision, ranges=None):
    """Scores of float queries [q, H] against compact corpus codes, higher is closer: for int8 / uint8, the dot
    product with the dequantized codes; for binary / ubinary, minus the Hamming distance between the queries'
    bits and the codes (the queries binarized the same way)."""
    queries = float_vectors(queries, "queries")
    if precision in ("binary", "ubinary"):
        corpus = np.asarray(corpus)
        if precision == "binary":
            corpus = (corpus.astype(np.int16) + 128).astype(np.uint8)
        return -hamming(quantize(queries, "ubinary"), corpus)
    if precision in ("int8", "uint8"):
        return queries.astype(np.float32) @ dequantize(corpus, precision, ranges).T
    return queries.astype(np.float32) @ np.asarray(corpus, np.float32).T


def rescore(queries, candidates, corpus, precision, k, ranges=None, dim=None):
    """Top-k again among each query's candidate rows [q, c] of the compact corpus, by the float query's dot product
    with the candidates' float form (int8 / uint8 dequantized, binary unpacked to +-1) -> (indices, scores)."""
    queries = np.asarray(queries, np.float32)
    candidates = np.asarray(candidates)
    rows = np.asarray(corpus)[candidates]                               # [q, c, B]
    if precision in ("binary", "ubinary"):
        rows = unpack_signs(rows, dim or queries.shape[1], precision)
    elif precision in ("int8", "uint8"):
        rows = dequantize(rows, precision, ranges)
    scores = np.einsum("qd,qcd->qc", queries, rows.astype(np.float32, copy=False))
    order, best = top_k(scores, k)
    return np.take_along_axis(candidates, order, axis=1), best


def search(queries, corpus, precision, k, ranges=None, rescore_multiplier=None, dim=None):
    """(indices [q, k], scores [q, k]) of the k best corpus rows for each float query, by compact_scores; with
    rescore_multiplier m, the best m * k by those, then rescored (see rescore)."""
    scores = compact_scores(queries, corpus, precision, ranges)
    if not rescore_multiplier:
        return top_k(scores, k)
    candidates, _ = top_k(scores, k * rescore_multiplier)
    return rescore(queries, candidates, corpus, precision, k, ranges, dim)
