"""Compact indexes (e5np.Index.build(precision="int8" | "binary" | "binary+int8"), `e5np search build --precision`):
what they store, their top-k against a brute force written here on the same codes, rescoring against exact float32
search, the bytes, the CLI against the API, append / resume / rebuild keeping the precision and the ranges, and the
errors."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

import e5np
from e5np.formats import NPY_HEADER_BYTES
from e5np.reference import l2_normalize
from tests.checkpoints import TINY_DIR
from tests.row_independence import BLAS_ROWS_INDEPENDENT

CORPUS = [f"{who} {verb} {what}" for who in ("the cat", "a dog", "my neighbour", "the children", "an old man")
          for verb in ("likes", "sells", "paints", "finds", "repairs", "draws")
          for what in ("a red bicycle", "the garden", "old books", "fresh bread")]              # 120, distinct
QUERIES = ["who fixes bikes", "someone painting", "buying bread", "a pet in the garden", "kids drawing"]
MANY = [f"passage {i} is about topic {i % 13}" for i in range(2100)]       # two chunks of formats.CHUNK


@pytest.fixture(scope="module")
def tiny():
    return e5np.load(TINY_DIR)


def unit_passages(model, texts):
    """The unit vectors an index stores for passages (before any quantization)."""
    return model.encode_passages(texts, normalize=True)


# --- the brute force: each compact score written out from its definition ---------------------------------------
def int8_codes(vectors, ranges):
    """Each dimension's level among 255 equal steps of [min, max], less 128 (float32 arithmetic, as e5np and
    sentence-transformers compute it)."""
    low, step = ranges[0].astype(np.float32), ((ranges[1] - ranges[0]) / np.float32(255)).astype(np.float32)
    return (np.clip(np.floor((vectors.astype(np.float32) - low) / step), 0, 255) - 128).astype(np.int8)


def dequantized(codes, ranges):
    step = (ranges[1] - ranges[0]) / np.float32(255)
    return (codes.astype(np.float32) + 128) * step + ranges[0]


def signs(codes, dim):
    """binary codes (packed bits less 128) as +-1."""
    bits = np.unpackbits((codes.astype(np.int16) + 128).astype(np.uint8), axis=1)[:, :dim]
    return bits.astype(np.float32) * 2 - 1


def best(scores, k):
    """Each row's k highest scores' indices, equal ones by lower index: a sort of every pair."""
    return np.array([sorted(range(len(row)), key=lambda i: (-row[i], i))[:k] for row in scores])


def split(codes, dim):
    """binary+int8 rows: (the binary codes, the int8 codes)."""
    return codes[:, :dim // 8], codes[:, dim // 8:]


def compact_scores(queries, codes, precision, ranges, dim):
    """[q, n]: the int8 dot products of the queries' codes with the corpus's, or minus the bits that differ."""
    if precision == "binary+int8":
        codes = split(codes, dim)[0]
    if precision == "int8":
        return int8_codes(queries, ranges).astype(np.int64) @ codes.astype(np.int64).T
    query_bits = (queries > 0).astype(np.int64)
    corpus_bits = (signs(codes, dim) > 0).astype(np.int64)
    return -(query_bits[:, None, :] != corpus_bits[None, :, :]).sum(axis=2)


def brute_force(queries, codes, precision, ranges, dim, k, rescore=None):
    """(indices, scores) of the k best rows for unit queries, by compact scores, or rescored from rescore * k."""
    scores = compact_scores(queries, codes, precision, ranges, dim)
    order = best(scores, k if rescore is None else rescore * k)
    if rescore is None:
        return order, np.take_along_axis(scores, order, axis=1)
    floats = {"int8": lambda: dequantized(codes, ranges), "binary": lambda: signs(codes, dim),
              "binary+int8": lambda: dequantized(split(codes, dim)[1], ranges)}[precision]()
    rescored = np.array([[q @ floats[i] for i in row] for q, row in zip(queries, order)])
    again = best(rescored, k)
    return np.take_along_axis(order, again, axis=1), np.take_along_axis(rescored, again, axis=1)


def hits_of(found):
    return [[hit["index"] for hit in hits] for hits in found], [[hit["score"] for hit in hits] for hits in found]


def recall(found, exact):
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact)]))


def assert_same_codes(actual, desired):
    """Equal where this BLAS rounds rows independently (see tests/row_independence.py); else a vector may move
    by ~1e-7 with its batch-mates, across a step's edge now and then: a level apart at most, and rarely."""
    if BLAS_ROWS_INDEPENDENT:
        np.testing.assert_array_equal(actual, desired)
    else:
        difference = np.abs(actual.astype(np.int16) - desired)
        assert difference.max(initial=0) <= 1 and (difference > 0).mean() < 0.01


# --- what is stored, and the search -----------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["int8", "binary", "binary+int8"])
def test_top_k_equals_a_brute_force_on_the_stored_codes(tiny, tmp_path, precision):
    passages = unit_passages(tiny, (CORPUS))
    with e5np.Index.build(tmp_path / "index", CORPUS, tiny, precision=precision) as index:
        assert (index.precision, len(index), index.meta["precision"]) == (precision, len(CORPUS), precision)
        codes = np.load(tmp_path / "index" / "vectors.npy")
        bits = (np.packbits(passages > 0, axis=1).astype(np.int16) - 128).astype(np.int8)
        if precision != "binary":                                      # ranges: the first chunk's, here all of it
            ranges = np.load(tmp_path / "index" / "ranges.npy")
            assert index.meta["ranges"] == "ranges.npy" and ranges.dtype == np.float32
            np.testing.assert_array_equal(ranges, np.stack([passages.min(0), passages.max(0)]).astype(np.float32))
            np.testing.assert_array_equal(index.ranges, ranges)
        else:
            ranges = None
            assert "ranges" not in index.meta and not (tmp_path / "index" / "ranges.npy").exists()
        expected_codes = {"int8": lambda: int8_codes(passages, ranges), "binary": lambda: bits,
                          "binary+int8": lambda: np.concatenate([bits, int8_codes(passages, ranges)], axis=1)}
        assert codes.dtype == np.int8
        assert_same_codes(codes, expected_codes[precision]())          # (shapes too)
        raw = tiny.encode_queries(QUERIES)
        queries = l2_normalize(raw)                                    # what search does with query vectors
        for rescore in (None, 1, 3):
            expected, expected_scores = brute_force(queries, codes, precision, ranges, tiny.dim, 10, rescore)
            indices, scores = hits_of(index.search(raw, top_k=10, rescore=rescore))
            assert indices == expected.tolist(), rescore
            np.testing.assert_allclose(scores, expected_scores, rtol=0, atol=1e-5)
        assert index.query(QUERIES, top_k=10, rescore=3) == index.search(tiny.encode_queries(QUERIES), 10, 3)
        assert len(index.search(queries[0], top_k=500)) == len(CORPUS)   # more than it holds: all of it


def test_rescoring_is_never_worse_than_none_against_exact_search(minilm, tmp_path):
    """The real all-MiniLM-L6-v2 weights on a small corpus: recall@10 of each compact index against the float32
    index's top 10, with and without rescoring."""
    exact_index = e5np.Index.build(tmp_path / "float32", CORPUS, minilm)
    exact, exact_scores = hits_of(exact_index.query(QUERIES, top_k=10))
    measured, found_by = {}, {}
    for precision in ("int8", "binary", "binary+int8"):
        with e5np.Index.build(tmp_path / precision, CORPUS, minilm, precision=precision) as index:
            for rescore in (None, 4, 10):
                found, scores = hits_of(index.query(QUERIES, top_k=10, rescore=rescore))
                measured[precision, rescore], found_by[precision, rescore] = recall(found, exact), found
                assert all(np.diff(row).max() <= 0 for row in scores)   # best first
    for precision in ("int8", "binary", "binary+int8"):
        assert measured[precision, 4] >= measured[precision, None], measured
        assert measured[precision, 10] >= measured[precision, None], measured
    assert measured["int8", 4] >= 0.9 and measured["int8", 4] > measured["binary", None], measured
    assert measured["binary", None] < 1                                # the bits lose some: the test can tell
    assert found_by["binary+int8", None] == found_by["binary", None]   # the same bits, searched the same way
    assert measured["binary+int8", 10] > measured["binary", 10], measured   # int8 codes rescore better than bits
    with e5np.Index.open(tmp_path / "int8") as index:                  # rescored int8 scores: about the cosine
        found = index.query(QUERIES, top_k=10, rescore=10)
    cosine = {(q, i): s for q, (row, scores) in enumerate(zip(exact, exact_scores)) for i, s in zip(row, scores)}
    close = [abs(hit["score"] - cosine[q, hit["index"]]) for q, hits in enumerate(found) for hit in hits
             if (q, hit["index"]) in cosine]
    assert close and max(close) < 0.02
    exact_index.close()


def test_the_vector_file_is_4x_and_32x_smaller(tiny, tmp_path):
    sizes = {}
    for precision in ("float32", "int8", "binary", "binary+int8"):
        e5np.Index.build(tmp_path / precision, CORPUS, tiny, precision=precision).close()
        sizes[precision] = (tmp_path / precision / "vectors.npy").stat().st_size - NPY_HEADER_BYTES
    assert sizes == {"float32": len(CORPUS) * tiny.dim * 4, "int8": len(CORPUS) * tiny.dim,
                     "binary": len(CORPUS) * tiny.dim // 8, "binary+int8": len(CORPUS) * tiny.dim * 9 // 8}
    assert sizes["float32"] / sizes["int8"] == 4 and sizes["float32"] / sizes["binary"] == 32
    assert (tmp_path / "int8" / "ranges.npy").stat().st_size == NPY_HEADER_BYTES + 2 * tiny.dim * 4


def test_an_index_from_before_compact_ones_opens_as_float32(tiny, tmp_path):
    index = tmp_path / "index"
    with e5np.Index.build(index, CORPUS[:6], tiny) as new:
        assert new.meta["precision"] == "float32"
        before = new.query(QUERIES, top_k=3)
    meta = json.loads((index / "index.json").read_text())
    del meta["precision"]                                              # as older e5np wrote it
    (index / "index.json").write_text(json.dumps(meta))
    with e5np.Index.open(index) as old:
        assert (old.precision, old.ranges) == ("float32", None) and old.query(QUERIES, top_k=3) == before
    with e5np.Index.build(index, CORPUS[6:8], append=True) as appended:
        assert (appended.precision, len(appended), appended.meta["precision"]) == ("float32", 8, "float32")


# --- append, resume, rebuild --------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["int8", "binary+int8"])
def test_append_keeps_the_stored_ranges(tiny, tmp_path, precision):
    index = tmp_path / "index"
    e5np.Index.build(index, CORPUS[:10], tiny, precision=precision).close()
    ranges = (index / "ranges.npy").read_bytes()
    first = np.load(index / "vectors.npy")
    with e5np.Index.build(index, CORPUS[10:], append=True) as appended:       # precision: the index's
        assert (appended.precision, len(appended), appended.built.start) == (precision, len(CORPUS), 10)
        stored = np.load(index / "ranges.npy")
        assert (index / "ranges.npy").read_bytes() == ranges                 # never recomputed
        codes = np.load(index / "vectors.npy")
        np.testing.assert_array_equal(codes[:10], first)
        later = unit_passages(tiny, (CORPUS[10:]))
        int8_part = codes[10:] if precision == "int8" else split(codes[10:], tiny.dim)[1]
        assert_same_codes(int8_part, int8_codes(later, stored))             # the stored scale, clipped beyond it
        assert np.any(later < stored[0]) or np.any(later > stored[1])       # (the new passages do go beyond it)
    e5np.Index.build(index, CORPUS[:2], append=True, ranges=stored).close()  # the same ranges: allowed
    with pytest.raises(e5np.IndexStateError, match="keeps the int8 ranges its codes were made with .* append "
                                                   "without ranges or calibration"):
        e5np.Index.build(index, CORPUS[:2], append=True, ranges=stored * 2)
    for asked in {"binary", "float32", "int8", "binary+int8"} - {precision}:
        with pytest.raises(e5np.IndexStateError, match=re.escape(f"is built with precision {precision}, not "
                                                                 f"{asked}: append to it with precision {precision}")):
            e5np.Index.build(index, CORPUS[:2], append=True, precision=asked)
    assert (index / "ranges.npy").read_bytes() == ranges and len(np.load(index / "vectors.npy")) == len(CORPUS) + 2


def interrupted_after(passages, n):
    yield from passages[:n]
    raise KeyboardInterrupt


@pytest.mark.parametrize("precision", ["int8", "binary+int8"])
def test_resume_after_an_interruption_keeps_the_ranges(tiny, tmp_path, precision):
    straight = tmp_path / "straight"
    e5np.Index.build(straight, MANY, tiny, precision=precision).close()
    index = tmp_path / "index"
    with pytest.raises(KeyboardInterrupt):
        e5np.Index.build(index, interrupted_after(MANY, 2060), tiny, precision=precision)
    ranges = (index / "ranges.npy").read_bytes()                       # saved before the first chunk's codes
    with e5np.Index.open(index) as unfinished:
        assert (unfinished.complete, len(unfinished), unfinished.precision) == (False, 2048, precision)
    with pytest.raises(e5np.IndexStateError,
                       match=re.escape(f"being built with precision {precision}, not binary: resume")):
        e5np.Index.build(index, MANY, resume=True, precision="binary")
    with e5np.Index.build(index, MANY, resume=True) as resumed:
        assert resumed.complete and len(resumed) == 2100 and resumed.precision == precision
    assert (index / "ranges.npy").read_bytes() == ranges
    np.testing.assert_allclose(np.load(index / "ranges.npy"), np.load(straight / "ranges.npy"), rtol=0, atol=1e-6)
    assert_same_codes(np.load(index / "vectors.npy"), np.load(straight / "vectors.npy"))
    assert json.loads((index / "index.json").read_text()) == json.loads((straight / "index.json").read_text())


def test_a_rebuild_chooses_its_own_precision(tiny, tmp_path):
    index = tmp_path / "index"
    e5np.Index.build(index, CORPUS, tiny, precision="int8").close()
    with e5np.Index.build(index, CORPUS[:20], tiny, precision="binary") as rebuilt:
        assert rebuilt.built.replaced and rebuilt.precision == "binary" and rebuilt.ranges is None
    assert sorted(p.name for p in index.iterdir()) == [".lock", "index.json", "passages.jsonl", "vectors.npy"]
    with e5np.Index.build(index, CORPUS[:30], tiny, precision="int8") as rebuilt:
        assert rebuilt.precision == "int8" and (index / "ranges.npy").is_file() and len(rebuilt) == 30
    with e5np.Index.build(index, CORPUS[:40], tiny, precision="binary+int8") as rebuilt:   # its own ranges
        assert rebuilt.precision == "binary+int8" and len(rebuilt) == 40
        passages = unit_passages(tiny, CORPUS[:40])
        np.testing.assert_array_equal(np.load(index / "ranges.npy"),
                                      np.stack([passages.min(0), passages.max(0)]).astype(np.float32))
    with e5np.Index.build(index, CORPUS[:5], tiny) as rebuilt:                # a new index: float32 unless asked
        assert rebuilt.precision == "float32" and not (index / "ranges.npy").exists()


def test_ranges_given_or_from_calibration_vectors(tiny, tmp_path):
    calibration = unit_passages(tiny, (MANY[:300]))
    with e5np.Index.build(tmp_path / "calibrated", CORPUS, tiny, precision="int8", calibration=calibration) as index:
        expected = e5np.calibration_ranges(calibration).astype(np.float32)
        np.testing.assert_array_equal(index.ranges, expected)
        np.testing.assert_array_equal(np.load(tmp_path / "calibrated" / "ranges.npy"), expected)
        assert_same_codes(np.load(tmp_path / "calibrated" / "vectors.npy"),
                          int8_codes(unit_passages(tiny, (CORPUS)), expected))
    with e5np.Index.build(tmp_path / "one", CORPUS[:1], tiny, precision="int8", ranges=expected) as index:
        np.testing.assert_array_equal(index.ranges, expected)          # one passage: ranges given, so it has some
    with e5np.Index.build(tmp_path / "empty", [], tiny, precision="int8") as index, \
            pytest.warns(e5np.IndexWarning, match="holds no passages"):
        assert index.ranges is None and index.query("q", rescore=2) == []       # ranges come with the first ones


# --- errors --------------------------------------------------------------------------------------------------------
def test_errors(tiny, tmp_path):
    out = tmp_path / "index"
    with pytest.raises(ValueError, match=r"precision must be one of \['float32', 'int8', 'binary', 'binary\+int8'\], "
                                         "got 'uint8'"):
        e5np.Index.build(out, CORPUS, tiny, precision="uint8")
    with pytest.raises(ValueError, match=r"ranges must have shape \(2, 32\) .* got \(2, 31\)"):
        e5np.Index.build(out, CORPUS, tiny, precision="int8", ranges=np.zeros((2, 31)))
    with pytest.raises(ValueError, match=r"ranges and calibration are for an index of int8 codes \(int8, "
                                         r"binary\+int8\), not a binary one"):
        e5np.Index.build(out, CORPUS, tiny, precision="binary", ranges=np.zeros((2, 32)))
    with pytest.raises(ValueError, match="ranges or calibration, not both"):
        e5np.Index.build(out, CORPUS, tiny, precision="int8", ranges=np.zeros((2, 32)), calibration=np.zeros((4, 32)))
    for precision in ("int8", "binary+int8"):
        with pytest.raises(ValueError, match="a single passage has none: give ranges or calibration vectors"):
            e5np.Index.build(out, CORPUS[:1], tiny, precision=precision)
    assert not out.exists()                                            # refused before anything was written
    e5np.Index.build(out, CORPUS, tiny).close()
    with e5np.Index.open(out) as index, pytest.raises(e5np.IndexStateError, match="holds float32 vectors, whose "
                                                      "scores are exact: rescoring is for an int8, binary or "
                                                      r"binary\+int8 index"):
        index.query("q", rescore=4)
    e5np.Index.build(tmp_path / "int8", CORPUS, tiny, precision="int8").close()
    with e5np.Index.open(tmp_path / "int8") as index:
        for bad in (0, -1, 1.5):
            with pytest.raises(ValueError, match="rescore must be a positive integer"):
                index.query("q", rescore=bad)
    (tmp_path / "int8" / "ranges.npy").unlink()
    with pytest.raises(e5np.IndexFormatError, match="ranges.npy: not found; an index of int8 codes keeps "
                                                     "there the ranges"):
        e5np.Index.open(tmp_path / "int8")
    meta = json.loads((out / "index.json").read_text())
    (out / "index.json").write_text(json.dumps({**meta, "precision": "int4"}))
    with pytest.raises(e5np.IndexFormatError, match="index.json: precision 'int4', not one of"):
        e5np.Index.open(out)
    (out / "index.json").write_text(json.dumps({**meta, "precision": "binary"}))
    with pytest.raises(e5np.IndexFormatError, match=r"has shape \(120, 32\) but index.json says dim 32, binary: "
                                                     "rows of 4"):
        e5np.Index.open(out)


# --- the command line -------------------------------------------------------------------------------------------
def cli(*args):
    return subprocess.run([sys.executable, "-m", "e5np", *map(str, args)], capture_output=True, text=True,
                          timeout=300, check=False)


def test_the_cli_gives_what_the_api_gives(tiny, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS) + "\n")
    ranges = tmp_path / "ranges.npy"
    np.save(ranges, e5np.calibration_ranges(unit_passages(tiny, (MANY[:300]))))
    for precision, extra in (("int8", ["--ranges", ranges]), ("binary", []), ("binary+int8", ["--ranges", ranges])):
        built = cli("search", "build", corpus, tmp_path / f"cli-{precision}", "--precision", precision, *extra,
                    "-m", TINY_DIR, "-q")
        assert built.returncode == 0, built.stderr
        given = {"ranges": np.load(ranges)} if extra else {}
        api = tmp_path / f"api-{precision}"
        e5np.Index.build(api, e5np.formats.Input(corpus), tiny, precision=precision, **given).close()
        for name in ("passages.jsonl", "index.json") + (("ranges.npy",) if extra else ()):
            assert (tmp_path / f"cli-{precision}" / name).read_bytes() == (api / name).read_bytes(), name
        assert_same_codes(np.load(tmp_path / f"cli-{precision}" / "vectors.npy"), np.load(api / "vectors.npy"))
        for rescore in ([], ["--rescore", "3"]):
            queried = cli("search", "query", api, *QUERIES[:2], "-k", "4", "--json", *rescore)
            assert queried.returncode == 0 and queried.stderr == "", queried.stderr
            with e5np.Index.open(api) as index:
                hits = index.query(QUERIES[:2], top_k=4, rescore=int(rescore[1]) if rescore else None)
            expected = [{"query": q, "results": found} for q, found in zip(QUERIES[:2], hits)]
            assert json.loads(queried.stdout) == json.loads(json.dumps(expected))


def test_cli_errors(tiny, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS[:8]) + "\n")
    e5np.Index.build(tmp_path / "float32", CORPUS[:8], tiny).close()
    e5np.Index.build(tmp_path / "int8", CORPUS[:8], tiny, precision="int8").close()
    np.save(tmp_path / "short.npy", np.zeros((2, 31), np.float32))
    cases = [(["search", "query", tmp_path / "float32", "q", "--rescore", "2"],
              "holds float32 vectors, whose scores are exact: rescoring is for an int8, binary or binary+int8 index"),
             (["search", "query", tmp_path / "int8", "q", "--rescore", "0"], "--rescore must be 1 or more, got 0"),
             (["search", "build", corpus, tmp_path / "int8", "--append", "--precision", "binary"],
              "is built with precision int8, not binary: append to it with precision int8"),
             (["search", "build", corpus, tmp_path / "new", "--precision", "int8", "--ranges", tmp_path / "short.npy",
               "-m", TINY_DIR], r"ranges must have shape (2, 32) (each dimension's min and max), got (2, 31)")]
    for args, message in cases:
        result = cli(*args)
        assert result.returncode == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1, (
            args, result.stderr)
