"""Compact vectors: float embeddings as int8 / uint8 (one byte a dimension) or binary / ubinary (one bit), byte for
byte what sentence-transformers' quantize_embeddings gives for the same inputs and ranges; and the search over them
(Hamming distances, int8 dot products, top-k, rescoring with the float query) that docs/compact-vectors.md measures.

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


def code_layout(precision, dim):
    """(row width, .npy dtype) of `precision` codes of dim-dimensional vectors: a byte (or a float) a dimension, or
    a bit a dimension packed 8 to a byte."""
    width = -(-dim // 8) if check_precision(precision) in ("binary", "ubinary") else dim
    return width, {"int8": "i1", "uint8": "u1", "binary": "i1", "ubinary": "u1"}.get(precision, "<f4")


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
    """The set bits of each element of x (uint8 or uint64), as uint8."""
    if hasattr(np, "bitwise_count"):                                   # NumPy >= 2.0
        return np.bitwise_count(x)
    x = np.asarray(x)
    counts = _POPCOUNT[x.view(np.uint8)]
    return counts if x.dtype == np.uint8 else counts.reshape(*x.shape, x.dtype.itemsize).sum(axis=-1, dtype=np.uint8)


def as_ubinary(codes, precision):
    """binary codes (int8, each byte - 128) as the ubinary bytes they stand for; ubinary ones as they are."""
    codes = np.asarray(codes)
    return (codes.astype(np.int16) + 128).astype(np.uint8) if precision == "binary" else codes.astype(np.uint8)


def bit_words(codes, precision="ubinary"):
    """binary / ubinary codes [m, B] -> [ceil(B / 8), m] uint64: the codes' bytes as 64-bit words (zero-padded), one
    contiguous row for each word, the layout hamming() scans: each step XORs and counts one long row."""
    codes = as_ubinary(codes, precision)
    width = -(-codes.shape[1] // 8) * 8
    padded = np.zeros((len(codes), width), np.uint8)
    padded[:, :codes.shape[1]] = codes
    return np.ascontiguousarray(padded.view(np.uint64).T)


def hamming(query_bits, words, block=65536):
    """[q, m] Hamming distances (uint16) between ubinary codes query_bits [q, B] and a corpus's bit_words [W, m]:
    XOR and popcount, word by word, `block` corpus rows at a time (small buffers, reused; a block serves every
    query while it is in cache)."""
    query_words = bit_words(np.atleast_2d(query_bits)).T                # [q, W]
    m = words.shape[1]
    out = np.zeros((len(query_words), m), np.uint16)
    xor, counts = np.empty(min(block, m), np.uint64), np.empty(min(block, m), np.uint8)
    for start in range(0, m, block):
        end = min(start + block, m)
        x, c = xor[:end - start], counts[:end - start]
        for i, q in enumerate(query_words):
            total = out[i, start:end]
            for w in range(len(q)):
                np.bitwise_xor(words[w, start:end], q[w], out=x)
                if hasattr(np, "bitwise_count"):
                    np.bitwise_count(x, out=c)
                else:
                    c[:] = popcount(x)
                np.add(total, c, out=total)
    return out


def select(values, k, keep, largest):
    """(indices [q, k], values [q, k]) of each row's k largest (or smallest) values, best first, of equal ones the
    lower index first: keep(row, k) gives the row's candidates, the k best and any ties with the k-th."""
    values = np.asarray(values)
    k = min(k, values.shape[1])
    indices = np.empty((len(values), k), np.int64)
    for i, row in enumerate(values if k else ()):
        kept = keep(row, k)
        indices[i] = kept[np.lexsort((kept, -row[kept] if largest else row[kept]))][:k]
    return indices, np.take_along_axis(values, indices, axis=1)


def smallest_k(distances, k):
    """(indices [q, k], distances [q, k]) of each row's k smallest integer distances, nearest first, of equal ones
    the lower index first: a count of each distance finds the k-th (distances are small: at most the bits)."""
    def keep(row, k):
        kth = np.searchsorted(np.cumsum(np.bincount(row)), k)          # the smallest d with k rows at most d away
        return np.flatnonzero(row <= kth)
    return select(distances, k, keep, largest=False)


def top_k(scores, k):
    """(indices [q, k], scores [q, k]) of each row's k highest scores, best first; of equal scores the lower index
    first (at the k-th place too: which rows are kept does not hang on the sort)."""
    def keep(row, k):
        kth = -np.partition(-row, k - 1)[k - 1] if k < len(row) else row.min()
        above = np.flatnonzero(row > kth)
        return np.concatenate([above, np.flatnonzero(row == kth)[:k - len(above)]])
    return select(scores, k, keep, largest=True)


def int8_scores(queries, codes, precision, ranges, block=1024):
    """[q, m] dot products of the queries' int8 codes (quantized with the corpus's ranges) with the corpus's int8
    codes (uint8 ones less 128, the same thing), computed in float32 a block of rows at a time (converted into one
    reused buffer that stays in cache; 1,024 rows also keep a single query's product on one BLAS thread, which a
    busy machine does not stall the way it stalls several, measured 40x slower at 2,048): exact integers
    (|sum| <= 128 * 128 * H <= 2^24 for H <= 1024; float64 beyond)."""
    exact = np.float32 if codes.shape[1] <= 1024 else np.float64
    q = quantize(queries, "int8", ranges).astype(exact)
    out = np.empty((len(q), len(codes)), exact)
    buffer = np.empty((min(block, len(codes)), codes.shape[1]), exact)
    for start in range(0, len(codes), block):
        part = buffer[:len(codes[start:start + block])]
        part[...] = codes[start:start + block]
        if precision == "uint8":
            part -= 128
        out[:, start:start + len(part)] = q @ part.T
    return out


def rescore(queries, candidates, corpus, precision, k, ranges=None):
    """Top-k again among each query's candidate rows [q, c] of the compact corpus, by the float query's dot product
    with the candidates' float form (int8 / uint8 dequantized, binary unpacked to +-1) -> (indices, scores)."""
    queries = np.asarray(queries, np.float32)
    candidates = np.asarray(candidates)
    rows = np.asarray(corpus)[candidates]                               # [q, c, B]
    if precision in ("binary", "ubinary"):
        rows = unpack_signs(rows, queries.shape[1], precision)
    elif precision in ("int8", "uint8"):
        rows = dequantize(rows, precision, ranges)
    scores = np.einsum("qd,qcd->qc", queries, rows.astype(np.float32, copy=False))
    order, best = top_k(scores, k)
    return np.take_along_axis(candidates, order, axis=1), best


def search(queries, corpus, precision, k, ranges=None, rescore_multiplier=None, words=None):
    """(indices [q, k], scores [q, k]) of the k best corpus rows for each float query [q, H]: by Hamming distance of
    the queries' bits for binary / ubinary codes (scores: minus the distance; words: the corpus's bit_words, made
    here if not given), by int8_scores for int8 / uint8 ones, by dot product for float32 ones. With
    rescore_multiplier m: the best m * k so, then rescored with the float queries (see rescore)."""
    check_precision(precision)
    queries = np.atleast_2d(float_vectors(queries, "queries"))
    wanted = k * rescore_multiplier if rescore_multiplier else k
    if precision in ("binary", "ubinary"):
        words = bit_words(corpus, precision) if words is None else words
        indices, distances = smallest_k(hamming(quantize(queries, "ubinary"), words), wanted)
        scores = -distances.astype(np.int32)
    elif precision in ("int8", "uint8"):
        indices, scores = top_k(int8_scores(queries, np.asarray(corpus), precision, ranges), wanted)
    else:
        indices, scores = top_k(queries.astype(np.float32) @ np.asarray(corpus, np.float32).T, wanted)
    if not rescore_multiplier:
        return indices, scores
    return rescore(queries, indices, corpus, precision, k, ranges)
