"""Search indexes: their files, how a build writes them and replaces them, and exact top-k over them; e5np.Index.

An index is a directory: vectors.npy ([n, H] float32, unit rows; or their compact codes, see below),
passages.jsonl (one JSON object per row, in the same order: {"text": ...} for a corpus of plain lines, the corpus's
own records for JSON lines) and index.json (the model, its dimension, how many rows, whether its build finished, the
records' text field, the precision; see write_meta).

A compact index stores e5np.quantize's codes of the unit vectors instead: precision "int8" ([n, H] int8, with
ranges.npy, the [2, H] per-dimension ranges every code was made with), "binary" ([n, ceil(H / 8)] int8, the sign
bits packed as sentence-transformers' "binary": np.packbits(x > 0) - 128), or "binary+int8" (each row the binary
codes, then the int8 codes, with ranges.npy: searched by the bits, which are all a query holds in memory, and
rescored with the int8 codes of the candidates alone, read from the memory map). Its queries rank by the compact
scores, optionally rescoring candidates with the float query (compact_top_k).

A build writes each chunk's passages and then its vectors (IndexWriter), so an unfinished build holds at least as
many passages as vectors: its index is the passages that have vectors.

A build into a directory that holds a complete index writes the new index into its .rebuild folder, and moves
those files over the old ones only when it is complete (replace_index): until then the old index is whole.
A build holds the directory's lock (runtime.lock_directory) from its first look at it until it ends.

    index = e5np.Index.build("my-index", ["Pandas eat bamboo.", "Paris is in France."], model)
    index.query("what do pandas eat?", top_k=1)   # [{"rank": 1, "index": 0, "score": ..., "text": ...}]
"""

import contextlib
import hashlib
import itertools
import json
import os
import shlex
import shutil
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .reference import l2_normalize
from .checkpoint import WEIGHTS_FILE
from .formats import (CHUNK, FormatError, Input, NpyWriter, WriteError, cannot_write, json_line,
                      refuse_to_overwrite_input, with_chunk, write_stream)
from .model import caller_stacklevel, load
from .options import check_positive_int
from .quantize import (bit_words, calibration_ranges, check_ranges, code_layout, quantize, rescore as rescore_rows,
                       search as compact_search)
from .runtime import LockedError, lock_directory, unlock_directory
from .tokenizer import lowercases_first, tokenizer_files

DEFAULT_MODEL = "intfloat/e5-small"  # what a new index is built with when no model is given


class IndexFormatError(ValueError):
    """An index directory whose files are missing, damaged, or not one build's: the message names the file."""


class IndexStateError(ValueError):
    """A build or a query that what the directory holds does not allow: nothing to resume or append to,
    unfinished work in the way, a model, weights, recipe, kind of corpus, precision or int8 ranges other than the
    index's, a corpus that is not the one an unfinished build began with; rescoring a float32 index's exact scores."""


class IndexLockedError(LockedError):
    """Another process is building the index (it holds the directory's lock)."""


class IndexWarning(UserWarning):
    """An index answering from less than it should: unfinished, empty, a rebuild waiting beside it; or a build
    that first finished moving in a rebuild a kill had stopped."""


class ModelMismatchWarning(IndexWarning):
    """A query embedded by weights, or a recipe (see passage_recipe), other than those that made the index."""


VECTORS, PASSAGES, META, RANGES = "vectors.npy", "passages.jsonl", "index.json", "ranges.npy"
INDEX_PRECISIONS = ("float32", "int8", "binary", "binary+int8")  # vectors.npy's rows (uint8 / ubinary: another layout)
# How a do_lower_case checkpoint's texts are lowercased (see tokenizer.lowercases_first), as an index's recipe records
# it. Indexes from older e5np record True there, for Python's str.lower, whose vectors differ on a word-final
# capital sigma.
LOWERCASING = "Lowercase normalizer"
REBUILD = ".rebuild"  # inside an index directory: the index that will replace it, while it is being built


def top_k(vectors, queries, k, chunk_rows=None, block_scores=1 << 20, unit_rows=True):
    """Indices and cosine scores of the k best rows of `vectors` for each query: best first, equal scores by
    lower row. Duplicate passages (equal vectors, equal scores) are hits in corpus order, the first of them if not
    all fit, whatever the chunks the vectors are read in.

    vectors [n, H] (may be a memory map), queries [q, H] L2-normalized; so are the vectors unless unit_rows is
    false (an index built by an e5np that stored a non-normalizing model's vectors as they came): then each chunk
    is normalized as it is read. The vectors are read chunk_rows at a time (default: 65,536, fewer when there are
    many queries, so that a chunk's [q, chunk] block of scores stays within block_scores numbers): a million
    vectors, or a file of queries, need no million-sized intermediate.
    """
    n, q = len(vectors), len(queries)
    k = min(k, n)
    chunk_rows = chunk_rows or max(k, min(65536, block_scores // max(q, 1)))
    best_scores = np.full((q, 0), -np.inf, dtype=np.float32)
    best_index = np.zeros((q, 0), dtype=np.int64)
    for start in range(0, n, chunk_rows):
        block = np.asarray(vectors[start:start + chunk_rows], dtype=np.float32)   # [chunk, H]
        if not unit_rows:
            block = l2_normalize(block)                                            # a copy: the map is read-only
        scores = np.concatenate([best_scores, queries @ block.T], axis=1)          # [q, kept + chunk]
        rows = np.arange(start, start + len(block))
        index = np.concatenate([best_index, np.broadcast_to(rows, (q, len(rows)))], axis=1)
        best_scores, best_index = best_first(scores, index, k)
    return best_index, best_scores


def compact_top_k(codes, queries, k, precision, ranges=None, rescore=None, words=None, block_scores=1 << 24):
    """(indices [q, k], scores [q, k]) of the k best rows of a compact index's codes [n, W] (may be a memory map)
    for unit queries [q, H], by e5np.quantize.search: by the compact scores (int8: the dot product of the query's
    int8 codes, made with the index's ranges, with the row's; binary and binary+int8: minus the Hamming distance of
    the sign bits, words: the bits' bit_words), or with rescore m the best m * k so, rescored by the float query's
    dot product with the rows dequantized (int8, and binary+int8's int8 codes) or unpacked to +-1 (binary). Best
    first, equal scores by lower row. The queries go a batch at a time, so that a batch's [batch, n] scores stay
    within block_scores numbers."""
    n, q = len(codes), len(queries)
    if n == 0 or q == 0:                                               # (an int8 index without rows has no ranges)
        return np.zeros((q, min(k, n)), np.int64), np.zeros((q, min(k, n)), np.float32)
    batch = max(1, block_scores // n)
    search = compact_search if precision != "binary+int8" else bits_then_int8
    found = [search(queries[start:start + batch], codes, precision, k, ranges, rescore, words)
             for start in range(0, q, batch)]
    return np.concatenate([i for i, _ in found]), np.concatenate([s for _, s in found])


def bits_then_int8(queries, codes, precision, k, ranges, rescore, words):
    """compact_top_k's search of binary+int8 rows: the best (rescore or 1) * k by the bits' Hamming distance, and
    with rescore those rescored with their int8 codes (the only int8 rows read)."""
    bits, int8_codes = split_rows(codes, queries.shape[1])
    indices, scores = compact_search(queries, bits, "binary", k * (rescore or 1), words=words)
    return rescore_rows(queries, indices, int8_codes, "int8", k, ranges) if rescore else (indices, scores)


def split_rows(codes, dim):
    """binary+int8 rows [n, ceil(dim / 8) + dim] -> (their binary codes, their int8 codes): views, nothing read."""
    width = code_layout("binary", dim)[0]
    return codes[:, :width], codes[:, width:]


def best_first(scores, index, k):
    """The k best of each row of scores [q, m] and their index [q, m], highest score first, equal scores by lower
    index. Where scores tie, index must rise along the row (top_k's kept best, then a chunk's rows, do): the first
    ties then have the lowest indices. NaN (a damaged vector) ranks below every number."""
    if scores.shape[1] > k:
        kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1:k]       # [q, 1]: each row's k-th highest (NaN last)
        if np.isnan(kth).any():                                        # a row with fewer than k numbers
            return best_first(np.fmax(scores, -np.inf), index, k)     # NaN -> -inf: comparable
        keep = scores >= kth                                           # [q, m]: k a row, unless the k-th score ties
        if (tied := np.flatnonzero(keep.sum(axis=1) > k)).size:       # then the first ties, as many as fit
            rows, cut = scores[tied], kth[tied]
            above, ties = rows > cut, rows == cut
            keep[tied] = above | (ties & (np.cumsum(ties, axis=1) <= k - above.sum(axis=1, keepdims=True)))
        scores, index = scores[keep].reshape(-1, k), index[keep].reshape(-1, k)  # k a row, in row order
    order = np.argsort(-scores, axis=1, kind="stable")                 # ties keep their (index) order
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(index, order, axis=1)


def weights_identity(model_directory, known=None):
    """{"sha256", "size", "mtime_ns"} of a checkpoint's weights file: which weights made an index's vectors.

    `known`, an identity taken earlier of the same file, is returned as it is when the file's size and mtime
    have not changed (hashing takes ~0.2 s for e5-small's 130 MB, seconds for the large models).
    """
    path = Path(model_directory) / WEIGHTS_FILE
    status = path.stat()
    if known and (known.get("size"), known.get("mtime_ns")) == (status.st_size, status.st_mtime_ns):
        return dict(known)
    return {"sha256": file_sha256(path), "size": status.st_size, "mtime_ns": status.st_mtime_ns}


def file_sha256(*paths):
    """The sha256 of the files' bytes, one after the other."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while block := f.read(1 << 24):
                digest.update(block)
    return digest.hexdigest()


def embed_passages(model, texts, **options):
    """The vectors an index stores for passages: the model's passage prefix added, and L2-normalized whether or
    not the model normalizes (a sentence-transformers model without a Normalize module), so that a score is a
    cosine as `search query` says, not a dot product that favours long vectors."""
    return model.embed(texts, kind="passage", normalize=True, **options).vectors


def passage_recipe(model):
    """What besides the weights decides the vector embed_passages gives a text: the token limit, the
    tokenizer (its files' sha256) and whether texts are lowercased before it, the prefix, the pooling, and that
    the vectors are normalized (always; indexes from older e5np may hold a non-normalizing model's vectors as they
    came, and record normalize false). index.json records it, so that an index is not continued with vectors made
    another way: after the checkpoint's files were edited, or by an e5np that reads them otherwise (as when e5np
    came to take sentence-transformers' max_seq_length, 256 for all-MiniLM-L6-v2, over the tokenizer's 512)."""
    return {"max_length": model.max_length, "tokenizer_sha256": file_sha256(*tokenizer_files(model.directory)),
            "lowercase": LOWERCASING if lowercases_first(model.directory) else False,
            "prefix": model.prefixes.get("passage", ""),
            "pooling": model.pooling, "normalize": True}


def recipe_changes(recorded, recipe):
    """"max_length 512 then, 256 now; ..." for each setting of a recorded recipe that differs, "" if none does."""
    return "; ".join(f"{key} {value!r} then, {recipe.get(key)!r} now" for key, value in recorded.items()
                     if recipe.get(key) != value)


def write_meta(directory, meta):
    """index.json, written whole or not at all. `e5np search build` keeps in it: the model, its dimension (dim),
    the rows, whether the build finished (complete), the field of the passages' records that holds the text when
    the corpus was JSON lines (field; null for plain text), what vectors.npy holds (precision: float32, int8,
    binary or binary+int8; none recorded: float32, an index from before compact ones) and for int8 codes the file
    of their ranges (ranges: "ranges.npy"), the row where the last build's corpus begins (build_start: after the
    passages it was appended to; what --resume compares its corpus with), the identity of the weights that made
    the vectors (weights; see weights_identity) and how texts became vectors besides (recipe; see
    passage_recipe)."""
    spare = Path(directory) / (META + ".new")
    spare.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(spare, Path(directory) / META)                          # whole or not at all, even if killed


def replace_index(staged, directory):
    """Moves a complete index's files from `staged` over those of the index in `directory`, and removes `staged`.

    The vectors go first: once they have, `staged` holds an index.json but no vectors, which is how load_index
    tells an index whose move stopped half way (see stopped_moving_in) and refuses it; finish_moving_in completes
    it. Ctrl-C waits for the three renames, in the main thread.
    """
    staged, directory = Path(staged), Path(directory)
    in_main_thread = threading.current_thread() is threading.main_thread()
    ctrl_c = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main_thread else None
    try:
        for name in (VECTORS, RANGES, PASSAGES, META):
            if (staged / name).is_file():                              # (a move that stopped: those not moved yet)
                os.replace(staged / name, directory / name)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, ctrl_c)
    shutil.rmtree(staged)


def drop_stale_ranges(directory, meta):
    """Removes the ranges.npy an index of int8 codes left when another kind replaced it (meta: the new index's): only
    those read one, but a file beside the index that is not its own would only mislead."""
    if meta.get("ranges") is None:
        with contextlib.suppress(OSError):                             # (the index is whole without it)
            (Path(directory) / RANGES).unlink(missing_ok=True)


MOVE_SETTLES = 0.5  # seconds: a build moving its rebuild in as a query looks is done by then; a killed one is not


def rebuild_meta(directory):
    """The index.json of the rebuild in directory/.rebuild, or None if there is none."""
    staged = Path(directory) / REBUILD
    return read_meta(staged) if (staged / META).is_file() else None


def unfinished_rebuild(directory):
    """The index.json of the unfinished rebuild in directory/.rebuild, or None if there is none."""
    meta = rebuild_meta(directory)
    return None if meta is None or meta.get("complete", True) else meta


def complete_rebuild(directory):
    """The index.json of a complete rebuild in directory/.rebuild, not moved in or not all of it (replace_index
    stopped: a kill or a power cut between two renames, a rename that failed; or never began: a kill just before),
    or None if there is none."""
    meta = rebuild_meta(directory)
    return meta if meta is not None and meta.get("complete", True) else None


def stopped_moving_in(directory):
    """Whether replace_index stopped after moving some of a complete rebuild's files in: the index's vectors,
    passages and index.json may then be of two builds, the vectors new and the passages old (as many rows: counts
    cannot tell). The vectors go first, so this is a complete rebuild whose vectors are no longer in .rebuild."""
    return not (Path(directory) / REBUILD / VECTORS).is_file() and complete_rebuild(directory) is not None


def finish_moving_in(directory):
    """Moves a complete rebuild's files in over the index's, those not moved yet, and returns its row count; None if
    directory holds no complete rebuild."""
    meta = complete_rebuild(directory)
    if meta is None:
        return None
    replace_index(Path(directory) / REBUILD, directory)
    drop_stale_ranges(directory, meta)
    return meta["rows"]


def read_meta(directory):
    """index.json as a dict; IndexFormatError naming it if it is not one an index build wrote."""
    path = Path(directory) / META
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IndexFormatError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), str) or not isinstance(meta.get("dim"), int):
        raise IndexFormatError(f"{path}: not an index description (no model or dim)")
    if index_precision(meta) not in INDEX_PRECISIONS:
        raise IndexFormatError(f"{path}: precision {meta['precision']!r}, not one of {list(INDEX_PRECISIONS)}")
    return meta


def index_precision(meta):
    """What an index's vectors.npy holds: its index.json's precision, float32 where it records none (an index from
    before compact ones)."""
    return meta.get("precision", "float32")


def has_int8_codes(precision):
    """Whether an index of this precision stores int8 codes, and so keeps the ranges they are made with."""
    return precision in ("int8", "binary+int8")


def row_layout(precision, dim):
    """(row width, .npy dtype) of an index's vectors.npy: e5np.quantize.code_layout's, or for binary+int8 the binary
    codes' bytes and the int8 codes' side by side (both int8)."""
    if precision == "binary+int8":
        return code_layout("binary", dim)[0] + dim, "i1"
    return code_layout(precision, dim)


def read_ranges(directory, meta, rows):
    """The ranges [2, dim] float32 (ranges.npy) of an index with int8 codes, None for another precision or for one
    with no rows yet (its ranges come with its first passages); IndexFormatError if they are missing or damaged."""
    if not has_int8_codes(index_precision(meta)):
        return None
    path = Path(directory) / RANGES
    if not path.is_file():
        if rows == 0:
            return None
        raise IndexFormatError(f"{path}: not found; an index of int8 codes keeps there the ranges they were made "
                               "with")
    try:
        return check_ranges(np.load(path, allow_pickle=False), meta["dim"])
    except (OSError, ValueError, TypeError) as e:
        raise IndexFormatError(f"{path}: not the index's ranges ({e})") from None


def save_ranges(directory, ranges):
    """ranges.npy, written whole or not at all: before the first code made with them (see Compactor)."""
    spare = Path(directory) / (RANGES + ".new")
    try:
        with open(spare, "wb") as f:
            np.save(f, np.asarray(ranges, np.float32))
        os.replace(spare, Path(directory) / RANGES)
    except OSError as e:
        raise cannot_write(Path(directory) / RANGES, e) from None


def passage_record(line, path, number, field="text"):
    """The record on line `number` of passages.jsonl; IndexFormatError naming it if it is not an object whose `field` is
    a string."""
    try:
        record = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        record = None
    if not isinstance(record, dict) or not isinstance(record.get(field), str):
        raise IndexFormatError(f"{path}:{number}: not a passage line (an object with a string field {field!r})")
    return record


def passage_lines(directory, rows, start=0):
    """Lines start..rows-1 of passages.jsonl as they are on disk, bytes (IndexFormatError if there are fewer)."""
    path, count = Path(directory) / PASSAGES, 0
    with open(path, "rb") as f:
        for line in f:
            if count == rows:
                return
            count += 1
            if count > start:
                yield line
    if count < rows:
        raise IndexFormatError(f"{path}: {count} passages, fewer than the {rows} vectors of {VECTORS}")


def load_index(directory):
    """(vectors memory-mapped, meta, passages.jsonl open for reading, int8 ranges or None) of an index directory;
    IndexFormatError naming the file on any inconsistency.

    The passages stay on disk: `passages_at` reads the ones a search returns, so a million-passage index
    costs a query its vectors' pages, not a million strings. The file is opened here, right after the vectors are
    mapped, so that a rebuild moving its files in while the query runs cannot pair these vectors with its passages.
    """
    directory = Path(directory)
    if stopped_moving_in(directory):
        time.sleep(MOVE_SETTLES)                                       # or is it moving in right now?
        if stopped_moving_in(directory):
            raise IndexFormatError(f"{directory}: a rebuild stopped while its files were moving in over the index's (a "
                             "kill between two renames, or a rename that failed), so they may be of two builds; "
                             f"`e5np search build --resume CORPUS {directory}` finishes moving it in")
    for name in (VECTORS, PASSAGES, META):
        if not (directory / name).is_file():
            raise IndexFormatError(f"{directory / name}: not found; is {directory} an index made by `e5np search build`?")
    meta = read_meta(directory)
    vectors = np.load(directory / VECTORS, mmap_mode="r")
    precision = index_precision(meta)
    width, dtype = row_layout(precision, meta["dim"])
    if vectors.ndim != 2 or vectors.shape[1] != width:
        raise IndexFormatError(f"{directory / VECTORS} has shape {vectors.shape} but {META} says dim {meta['dim']}"
                               + ("" if precision == "float32" else f", {precision}: rows of {width}"))
    if precision != "float32" and vectors.dtype != np.dtype(dtype):  # (float32 ones are read as float32 whatever)
        raise IndexFormatError(f"{directory / VECTORS} holds {vectors.dtype} but {META} says precision {precision}")
    if meta.get("complete", True) and meta.get("rows", len(vectors)) != len(vectors):   # (unfinished: may be ahead)
        raise IndexFormatError(f"{directory / VECTORS} has {len(vectors)} rows but {META} says {meta['rows']}")
    ranges = read_ranges(directory, meta, len(vectors))
    return vectors, meta, open(directory / PASSAGES, "rb"), ranges


def passages_at(passages, indices, rows, complete=True, field="text"):
    """{i: the record of passage i} for the given indices, in one pass over passages.jsonl (open, binary) that also
    checks it holds `rows` passages, one per vector (IndexFormatError if not). An unfinished build (complete false) may
    hold more: a build killed mid-chunk writes the next chunk's passages, or part of them, before their vectors."""
    path, wanted, found, lines = Path(passages.name), set(indices), {}, 0
    for line in passages:
        if lines == rows and not complete:
            break
        if lines in wanted:
            found[lines] = passage_record(line, path, lines + 1, field)
        lines += 1
    if lines != rows:
        raise IndexFormatError(f"{path.parent}: {VECTORS} has {rows} rows but {PASSAGES} has {lines}")
    return found


# --- writing: an index as it grows ------------------------------------------------------------------
class IndexWriter(NpyWriter):
    """An index directory written as it grows: each chunk's passages, then its vectors, whose .npy header is the
    commit point. After Ctrl-C, an error or even a kill the directory is an index of the passages committed so
    far, marked unfinished, which a build with resume continues. `replacing`: the index whose .rebuild folder
    `directory` is (named in what kept() says); resume_command: how kept() says to continue."""

    def __init__(self, directory, model_name, dim, resume_command, made_by, field=None, build_start=None,
                 append=False, replacing=None, precision="float32"):
        self.directory, self.resume_command, self.replacing = Path(directory), resume_command, replacing
        width, dtype = row_layout(precision, dim)                      # vectors.npy's rows: floats, or codes
        super().__init__(str(self.directory / VECTORS), width, append=append, dtype=dtype)
        self.build_start = self.rows if build_start is None else build_start   # the first row of this corpus
        self.meta = {"model": model_name, "dim": dim, "rows": self.rows, "complete": False, "field": field,
                     "precision": precision, **({"ranges": RANGES} if has_int8_codes(precision) else {}),
                     "build_start": self.build_start, **made_by}     # index.json: see write_meta
        self.passages = self.open(self.directory / PASSAGES, "r+b" if append else "wb")
        for number in range(1, self.rows + 1):                        # keep the committed passages, drop the rest
            if not self.passages.readline().endswith(b"\n"):
                raise IndexFormatError(f"{self.directory / PASSAGES}: {number - 1} passages, but {VECTORS} has "
                                       f"{self.rows}")
        self.passage_ends = {self.rows: self.passages.tell()}          # rows committed -> passages.jsonl's length
        self.passages.truncate(self.passage_ends[self.rows])
        self.write_meta(complete=False)

    def write_meta(self, complete):
        try:
            write_meta(self.directory, {**self.meta, "rows": self.rows, "complete": complete})
        except OSError as e:
            raise cannot_write(self.directory / META, e) from None

    def write(self, records, vectors):
        lines = b"".join(json_line(record) for _, record in records)
        try:
            self.passages.write(lines)
            self.passages.flush()
        except OSError as e:
            raise cannot_write(self.directory / PASSAGES, e) from None
        self.passage_ends = with_chunk(self.passage_ends, self.rows, len(records), len(lines))
        super().write(records, vectors)                                # the vectors, then the header: the commit

    def kept(self):
        if self.replacing:                                             # a rebuild, in the index's .rebuild folder
            return (f"{self.replacing} is as it was; {self.directory} holds its unfinished rebuild, the first "
                    f"{self.rows} passages; {self.resume_command} continues it")
        return (f"{self.directory} holds an unfinished index of the first {self.rows} passages; "
                f"{self.resume_command} continues it")

    def close(self, complete):
        try:
            super().close(complete)
        except (FormatError, OSError):
            complete = False
            raise
        finally:
            try:
                self.passages.truncate(self.passage_ends[self.rows])   # passages of a chunk whose vectors never came
                self.passages.close()
            except OSError as e:
                raise cannot_write(self.directory / PASSAGES, e) from None
            self.write_meta(complete)


# --- building: the lifecycle ----------------------------------------------------------------------
@dataclass
class Built:
    """What Index.build did (index.built): `rows` the index holds, `added` by this build (after the `start`
    rows it was appended to, 0 for a new index), whether it `replaced` a complete index (a rebuild), and
    `moved_in`: the rows of a rebuild a kill had stopped moving in, which the build first finished (else None)."""

    rows: int
    added: int
    start: int
    replaced: bool
    moved_in: int = None


def passages_word(n):
    return f"{n} passage" if n == 1 else f"{n} passages"


def lock(directory):
    """The lock that keeps two builds out of one index (see runtime.lock_directory), until build() ends."""
    try:
        lock_directory(directory)
    except LockedError:
        raise IndexLockedError(f"{directory} is being built by another `e5np search build`: wait for it, or build "
                               "into another directory") from None
    except OSError as e:
        raise cannot_write(Path(directory) / ".lock", e) from None


class Passages:
    """What Index.build was given, as (text, record) pairs and the field its records hold the text in (None: plain
    text). An e5np.formats.Input is opened once the index says which field its records have (a build continuing a
    JSON-lines index reads its corpus as JSON lines, with the index's field); texts, records (dicts) and
    (text, record) pairs are taken as they come, the first one telling which they are."""

    def __init__(self, passages, field=None):
        self.field = field
        if isinstance(passages, Input):
            self.input, self.name = passages, passages.path
            return
        self.input, self.name = None, None
        if isinstance(passages, (str, bytes)):
            raise TypeError("passages: an iterable of texts, records or (text, record) pairs, or an "
                            "e5np.formats.Input for a file; not one str")
        self.items = iter(passages)
        self.first = next(self.items, None)
        self.texts = isinstance(self.first, str)
        if self.texts and field is not None:
            raise ValueError(f"field={field!r} names the text's field of records, but the passages are texts")

    def field_for(self, default_field=None):
        """The field of the records (None: plain text), default_field where the passages do not say."""
        if self.input is not None:
            cls, field = self.input.choose(default_field)
            return field if cls.has_fields else None
        if self.first is None:
            return self.field if self.field is not None else default_field
        return None if self.texts else self.field or default_field or "text"

    def open(self, default_field=None):
        """(text, record) pairs; FormatError naming the passage that is not of the kind the first is."""
        if self.input is not None:
            return iter(self.input.open(default_field))
        field = self.field_for(default_field)
        items = itertools.chain([self.first], self.items) if self.first is not None else self.items
        return (self.pair(number, item, field) for number, item in enumerate(items, 1))

    def pair(self, number, item, field):
        if self.texts and isinstance(item, str):
            return item, {"text": item}
        if not self.texts and isinstance(item, dict) and isinstance(item.get(field), str):
            return item[field], item
        if (not self.texts and isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
                and isinstance(item[1], dict)):
            return item
        kind = "a text (str)" if self.texts else f"a record (a dict with a string field {field!r}) or a (text, record) pair"
        raise FormatError(f"passage {number}: expected {kind}, as the first passage is; got {type(item).__name__}")


def model_name(model):
    """How index.json names a model: a local directory as an absolute path (so that queries from anywhere load
    it), a hub id as it is."""
    if hasattr(model, "directory"):                                    # a loaded e5np.Model
        model = model.name or str(model.directory)
    name = model
    if name is not None and os.path.isdir(os.path.expanduser(name)):
        return os.path.abspath(os.path.expanduser(name))
    return name


def build(directory, passages, model=None, **options):
    """Index.build: see there. The directory's lock is held while it runs."""
    try:
        return build_locked(directory, passages, model, **options)
    finally:
        unlock_directory(directory)


def build_locked(directory, passages, model=None, *, append=False, resume=False, field=None, precision=None,
                 ranges=None, calibration=None, batch_size=32, threads=None, progress=None):
    if append and resume:
        raise ValueError("append or resume, not both")
    if precision is not None and precision not in INDEX_PRECISIONS:
        raise ValueError(f"precision must be one of {list(INDEX_PRECISIONS)}, got {precision!r}")
    if ranges is not None and calibration is not None:
        raise ValueError("ranges or calibration, not both (ranges are made from calibration vectors)")
    out, named = Path(directory), os.fspath(directory)
    source = Passages(passages, field)
    resume_command = f"`e5np search build --resume {shlex.quote(source.name or 'CORPUS')} {shlex.quote(named)}`"
    moved = None
    if out.is_dir():                                                   # first: a build running there is unfinished
        lock(out)
        try:
            moved = finish_moving_in(out)                              # whatever the build: its index is one build's
        except OSError as e:
            raise cannot_move(out / REBUILD, out, e) from None
        if moved is not None:
            warnings.warn(IndexWarning(f"finished replacing {out} with its rebuild ({passages_word(moved)})"),
                          stacklevel=caller_stacklevel())
            if resume:                                                 # the move was all there was left to do
                return Index.open(directory, Built(moved, 0, 0, True, moved))
    name = model_name(model)
    continuing = resume or append                                      # after the passages the index holds
    where, meta, replacing = build_target(out, resume, append, resume_command)
    if continuing:
        name = check_continuable(where, meta, resume, name, source)
        precision = check_same_precision(where, meta, resume, precision)
    precision = precision or "float32"                                 # a new index, a rebuild too: unless asked
    if not has_int8_codes(precision) and (ranges is not None or calibration is not None):
        raise ValueError(f"ranges and calibration are for an index of int8 codes (int8, binary+int8), not a "
                         f"{precision} one")
    if source.input is not None:                                       # (a rebuild from its own passages: allowed)
        refuse_to_overwrite_input([where / file for file in (VECTORS, PASSAGES, META)], source.input.path)
    name = name or DEFAULT_MODEL
    index_field = meta.get("field") if continuing else None
    records = source.open(index_field)                                 # a corpus that cannot be read stops it here
    if not resume:                     # so does a bad line in its first chunk: the index is changed only after it
        first_chunk = list(itertools.islice(records, CHUNK))
        records = itertools.chain(first_chunk, records)
    if isinstance(model, str) or model is None:
        model = load(name, threads=threads)
    made_by = {"weights": weights_identity(model.directory, meta.get("weights") if continuing else None),
               "recipe": passage_recipe(model)}                        # what decides the vectors: index.json keeps it
    if continuing:
        check_same_model(name, where, meta, model.dim, made_by)
    kept = continued_ranges(where, meta) if continuing and has_int8_codes(precision) else None
    ranges = starting_ranges(where, kept, model.dim, ranges, calibration, resume)
    if has_int8_codes(precision) and ranges is None and not resume and len(first_chunk) == 1:
        raise ValueError(ONE_PASSAGE)
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"cannot make {where}: {e.strerror}") from None
    lock(out)
    field = source.field_for(index_field)
    if continuing and "field" not in meta:                             # begun by an e5np that stored texts, not records
        field, records = None, ((text, {"text": text}) for text, _ in records)
    build_start = meta.get("build_start", 0) if resume else None       # where this corpus's passages begin
    writer = IndexWriter(where, name, model.dim, resume_command, made_by, field, build_start, append=continuing,
                         replacing=out if replacing else None, precision=precision)
    if ranges is not None and kept is None:                            # given: saved before any code is written
        save_ranges(where, ranges)
    compact = Compactor(precision, where, ranges)
    if resume:                                         # (stopped here, the index is as it was: nothing to say)
        try:
            skip_indexed(records, passage_lines(where, writer.rows, writer.build_start), source.name, where,
                         writer.build_start)
        except BaseException:
            with contextlib.suppress(FormatError, OSError):
                writer.close(complete=False)
            raise

    def embed(texts):
        return compact(embed_passages(model, texts, batch_size=batch_size, threads=threads, progress=progress))
    try:
        write_stream(embed, records, writer)
    except BaseException as error:
        with contextlib.suppress(AttributeError):                      # (an exception without a __dict__)
            error.index_state = writer.kept()
        raise
    if replacing:
        try:
            replace_index(where, out)
        except OSError as e:
            raise cannot_move(where, out, e) from None
        drop_stale_ranges(out, writer.meta)
    return Index.open(directory, Built(writer.rows, writer.rows - writer.build_start, writer.build_start,
                                       bool(replacing), moved))


def cannot_move(staged, directory, error):
    return WriteError(f"cannot move the new index from {staged} into {directory}: {error.strerror}")


def build_target(out, resume, append, resume_command):
    """(where, meta, replacing): the directory this build writes, the index.json it continues (None unless
    resume or append), and whether it rebuilds a complete index, in INDEX/.rebuild. IndexStateError if the build
    would throw away unfinished work, or cannot continue what the directory holds."""
    meta = read_meta(out) if (out / META).is_file() else None
    rebuild = unfinished_rebuild(out)
    staged = out / REBUILD
    if rebuild is not None and resume:
        return staged, check_state(staged, rebuild, resume, append), True
    if rebuild is not None:
        raise IndexStateError(f"{out} has an unfinished rebuild in {staged}: " + (
            f"finish it first (`e5np search build --resume CORPUS {out}` with the corpus it was begun with), or "
            f"delete {staged}" if append else f"{resume_command} continues it; delete {staged} to start over"))
    if resume or append:
        return out, check_state(out, meta, resume, append), False
    if meta is not None and not meta.get("complete", True):
        raise IndexStateError(f"{out} holds an unfinished build: {resume_command} continues it; delete {out} to "
                              "start over")
    if meta is not None:                                               # the old index stays whole until the new one is
        return staged, None, True
    return out, None, False


def check_state(out, meta, resume, append):
    """meta, unless the index cannot be resumed (resume: its build is unfinished) or appended to (append: it is
    complete): then IndexStateError."""
    complete = meta is not None and meta.get("complete", True)
    if resume and not (meta and not complete):
        raise IndexStateError(f"{out}: no unfinished build to resume" + (" (its build is complete)" if meta else ""))
    if append and not complete:
        raise IndexStateError(f"{out}: no index to append to; `e5np search build CORPUS {out}` makes one"
                              if meta is None else f"{out} holds an unfinished build: finish it first (`e5np search "
                              f"build --resume CORPUS {out}` with the corpus it was begun with)")
    return meta


def check_continuable(out, meta, resume, name, source):
    """The model to continue the index with (name, else the index's); IndexStateError if it is another, or if
    the passages are not of the index's kind (plain text, or records with its field)."""
    built, verb = ("is being built", "resume it") if resume else ("is built", "append to it")
    if name not in (None, meta["model"]):
        raise IndexStateError(f"{out} {built} with --model {meta['model']}: {verb} with that model")
    if "field" in meta and source.field_for(meta["field"]) != meta["field"]:  # (older indexes: texts only)
        built_from = f"JSON lines, field {meta['field']!r}" if meta.get("field") else "lines of plain text"
        raise IndexStateError(f"{out} {built} from {built_from}: {verb} with a corpus of those"
                              + (f" (--field {meta['field']})" if meta.get("field") else ""))
    return meta["model"]


def check_same_precision(out, meta, resume, precision):
    """The index's precision, which a build continuing it keeps (precision None: the index's); IndexStateError if
    another is asked for: one vectors.npy holds one kind of rows."""
    kept = index_precision(meta)
    if precision not in (None, kept):
        built, verb = ("is being built", "resume it") if resume else ("is built", "append to it")
        raise IndexStateError(f"{out} {built} with precision {kept}, not {precision}: {verb} with precision {kept}")
    return kept


def continued_ranges(where, meta):
    """The ranges an int8 index being continued keeps (read_ranges, for the rows its vectors.npy holds: an unfinished
    build's index.json may count fewer)."""
    try:
        rows = len(np.load(where / VECTORS, mmap_mode="r")) if (where / VECTORS).is_file() else 0
    except (OSError, ValueError):
        rows = 0                                                       # (IndexWriter says what is wrong with it)
    return read_ranges(where, meta, rows)


def starting_ranges(out, kept, dim, ranges, calibration, resume):
    """The int8 ranges a build starts with: those the index it continues keeps (kept), else those given or made from
    calibration vectors, else None (the first chunk's: see Compactor). ValueError for given ranges not of shape
    (2, dim); IndexStateError for given ones other than those kept: the index's codes are made with those, and codes
    of two scales do not compare."""
    given = None
    if ranges is not None or calibration is not None:
        given = check_ranges(calibration_ranges(calibration) if ranges is None else ranges, dim)
    if kept is not None and given is not None and not np.array_equal(kept, given):
        raise IndexStateError(f"{out} keeps the int8 ranges its codes were made with ({out / RANGES}), and these "
                              f"differ: {'resume' if resume else 'append'} without ranges or calibration")
    return kept if kept is not None else given


ONE_PASSAGE = ("an index of int8 codes takes its ranges from its first passages, and a single passage has none: "
               "give ranges or calibration vectors")


class Compactor:
    """Float vectors -> what an index's vectors.npy stores: the vectors (float32), or e5np.quantize's codes (for
    binary+int8, the binary codes and the int8 codes side by side). The int8 codes' ranges are set once: given, kept by
    the index, or else made from the first vectors compacted (a build's first chunk, CHUNK passages) and saved to
    ranges.npy before any code made with them is written."""

    def __init__(self, precision, directory, ranges=None):
        self.precision, self.directory, self.ranges = precision, directory, ranges

    def __call__(self, vectors):
        if self.precision == "float32":
            return vectors
        if has_int8_codes(self.precision) and self.ranges is None:
            if len(vectors) < 2:
                raise ValueError(ONE_PASSAGE)
            self.ranges = calibration_ranges(vectors).astype(np.float32)   # as ranges.npy keeps them
            save_ranges(self.directory, self.ranges)
        if self.precision == "binary+int8":
            return np.concatenate([quantize(vectors, "binary"), quantize(vectors, "int8", self.ranges)], axis=1)
        return quantize(vectors, self.precision, self.ranges)


def check_same_model(name, out, meta, dim, made_by):
    """IndexStateError unless the model makes vectors of the index's size, with the weights and the recipe (see
    passage_recipe) that made its vectors."""
    weights = made_by["weights"]
    if dim != meta["dim"]:
        raise IndexStateError(f"{name} makes {dim}-dim vectors but {out} holds {meta['dim']}-dim ones")
    if meta.get("weights") and weights["sha256"] != meta["weights"]["sha256"]:
        raise IndexStateError(f"the weights of {name} changed since {out} was begun (sha256 "
                              f"{meta['weights']['sha256'][:12]}... then, {weights['sha256'][:12]}... now): one index "
                              f"cannot mix two models' vectors; delete {out} and build it again")
    if changes := recipe_changes(meta.get("recipe", {}), made_by["recipe"]):   # (none recorded in older indexes)
        raise IndexStateError(f"{name} now embeds passages otherwise than it did for {out} ({changes}): one index "
                              f"cannot mix two kinds of vectors; delete {out} and build it again")


def skip_indexed(records, passages, corpus, index, start=0):
    """Reads past the corpus's passages that the index already holds, checking each is the passage stored for it
    (passages: passages.jsonl's lines from `start`, the row where the corpus begins; the record is compared, not
    only its text). corpus: the corpus's name, None for passages given otherwise."""
    corpus = corpus or "the passages given"
    for number, passage in enumerate(passages, 1):
        _, record = next(records, (None, None))
        if record is None:
            problem = f"{corpus} ends after {number - 1} texts, but {index} holds more passages"
        elif json_line(record) != passage:
            problem = f"{corpus}: text {number} is not passage {start + number} of {index}"
        else:
            continue
        raise IndexStateError(f"{problem}: resume with the corpus {index} was built from")


# --- the index, from Python ---------------------------------------------------------------------
class Index:
    """A search index directory, open for queries: its vectors memory-mapped, its passages read only for the hits.

    Index.open(directory) opens one; Index.build(directory, passages, model) builds one (also appending to it, or
    resuming a build stopped by Ctrl-C, an error or a kill) and opens it. index.query(texts) ranks the passages
    by cosine similarity to each query (a compact index: by its codes' scores, see query); index.search(vectors)
    does for query vectors made elsewhere.

    Attributes: directory, model_name (the model it was built with), dim, len(index) (passages with vectors), precision
    (what it stores: "float32", or compact "int8" / "binary" / "binary+int8" codes), ranges (the int8 codes' [2, dim],
    else None), complete (false: an unfinished build's first passages), field (the records' text field; None for plain
    text), meta (index.json), notices (what a query answers with an IndexWarning: an unfinished or empty index, a
    rebuild waiting beside it), built (for an index Index.build returned: what the build did, see Built; else None).
    Close it (or use it as a context manager) to close passages.jsonl; the vectors' map goes with the object.
    """

    def __init__(self, directory, vectors, meta, passages_file, ranges=None, built=None):
        self.directory, self.vectors, self.meta, self.passages_file = os.fspath(directory), vectors, meta, passages_file
        self.ranges, self.words = ranges, None                         # words: a binary index's bit_words, once
        self.built, self.models, self.warned = built, {}, False
        self.notices = state_notices(self.directory, meta, len(vectors))

    @classmethod
    def open(cls, directory, built=None):
        """The index in directory; IndexFormatError naming the file if it is not one (missing, damaged, of two
        builds: a rebuild stopped while it moved in)."""
        return cls(directory, *load_index(directory), built=built)

    @classmethod
    def build(cls, directory, passages, model=None, *, append=False, resume=False, field=None, precision=None,
              ranges=None, calibration=None, batch_size=32, threads=None, progress=None):
        """Embeds passages into the index in directory, and returns it opened (index.built says what was done).

        passages: texts (str), records (dicts whose `field`, "text" by default, holds the text; passages.jsonl keeps
        them whole and queries return them), (text, record) pairs, or an e5np.formats.Input (a text or JSON-lines
        file, with its own field). Continuing a JSON-lines index, records are read with its field unless another
        is given. model: a loaded e5np.Model, or a hub id or directory to load (default: with append or resume the
        index's model, else intfloat/e5-small). Streams: CHUNK passages at a time.

        A directory holding a complete index is rebuilt in its .rebuild folder, moved in over it once complete:
        until then the old index answers queries. append=True adds the passages after a complete index's;
        resume=True continues an unfinished build (or rebuild, or append) from where it stopped, after checking
        that the passages begin with those it holds. progress(n) is called as each batch of n passages is embedded.

        precision: what vectors.npy stores, "float32" (the default for a new index or a rebuild), "int8" (4x
        smaller), "binary" (32x) or "binary+int8" (both codes: a query searches the bits, 32x smaller in memory, and
        rescores with the int8 codes on disk); appending and resuming keep the index's (None), another is an
        IndexStateError. int8 codes are made with per-dimension ranges [2, dim], saved in ranges.npy: `ranges`, else
        made from `calibration` vectors [n, dim] (e5np.calibration_ranges), else from the first chunk's passages
        (values beyond them clip to the end levels). An index of int8 codes continued keeps its own: ranges or
        calibration giving others are an IndexStateError.

        Raises IndexStateError for a build what the directory holds does not allow (see it), IndexFormatError for
        damaged files, IndexLockedError while another process builds there, e5np.formats.FormatError for a passage
        or file that cannot be read, WriteError for a file that cannot be written. An error or Ctrl-C mid-build
        leaves an unfinished index that resume=True continues (a rebuild: the old index whole, beside it); the
        exception goes on, with `index_state` saying what the directory holds.
        """
        return build(directory, passages, model, append=append, resume=resume, field=field, precision=precision,
                     ranges=ranges, calibration=calibration, batch_size=batch_size, threads=threads, progress=progress)

    @property
    def model_name(self):
        return self.meta["model"]

    @property
    def dim(self):
        return self.meta["dim"]

    @property
    def precision(self):
        return index_precision(self.meta)

    @property
    def complete(self):
        return self.meta.get("complete", True)                         # indexes from before the flag are complete

    @property
    def field(self):
        return self.meta.get("field")

    def __len__(self):
        return len(self.vectors)

    def __repr__(self):
        return (f"e5np.Index({self.directory!r}, model={self.model_name!r}, dim={self.dim}, passages={len(self)}"
                f"{'' if self.precision == 'float32' else f', precision={self.precision!r}'}"
                f"{'' if self.complete else ', unfinished'})")

    def close(self):
        self.passages_file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def query(self, queries, top_k=10, model=None, rescore=None):
        """The top_k passages for each query, best first (equal scores in corpus order): a list of hits for one
        query (a str), a list of such lists for a list of them. A hit is {"rank", "index" (the passage's row),
        "score", "text"}, and "record" (the passage's record) for an index of JSON lines.

        The score is the cosine for a float32 index. A compact one ranks by its codes' scores (see compact_top_k):
        int8, the dot product of the query's int8 codes with the passage's (an integer); binary and binary+int8, minus
        the Hamming distance of their sign bits. rescore=m (a compact index; a float32 index's scores are exact,
        and it raises IndexStateError) takes the best m * top_k so and ranks them by the float query's dot product
        with the passage's int8 codes dequantized (int8, binary+int8: about the cosine) or its bits as +-1 (binary),
        which is then the score.

        model: a loaded e5np.Model, or a name to load (default: the index's model, loaded once). IndexStateError
        if its vectors are not of the index's size; a ModelMismatchWarning if its weights or recipe are not the
        index's; an IndexWarning for each of the index's notices, on its first search."""
        single = isinstance(queries, str)
        queries = [queries] if single else list(queries)
        model = self.query_model(model)
        hits = self.search(model.encode_queries(queries), top_k, rescore)   # normalized there: scores are cosines
        return hits[0] if single else hits

    def query_model(self, model=None):
        """The model for queries (see query), checked against the index once."""
        name = self.model_name if model is None else model if isinstance(model, str) else model.name
        key = name if model is None or isinstance(model, str) else id(model)
        if key in self.models:
            return self.models[key]
        if model is None or isinstance(model, str):
            model = load(name)
        if model.dim != self.dim:
            raise IndexStateError(f"{name} makes {model.dim}-dim vectors but the index holds {self.dim}-dim ones")
        for problem in model_mismatches(name, self.directory, self.meta, model):
            warnings.warn(ModelMismatchWarning(problem), stacklevel=caller_stacklevel())
        self.models[key] = model
        return model

    def search(self, vectors, top_k=10, rescore=None):
        """As query, for query vectors ([H] for one query, [q, H]) made elsewhere; they are L2-normalized here."""
        vectors = np.asarray(vectors, dtype=np.float32)
        single = vectors.ndim == 1
        queries = vectors.reshape(1, -1) if single else vectors
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"query vectors of shape {vectors.shape}: the index holds {self.dim}-dim vectors")
        hits = self.ranked(l2_normalize(queries), top_k, rescore)
        return hits[0] if single else hits

    def ranked(self, queries, k, rescore=None):
        """The hits of unit query vectors [q, H], per query (see query)."""
        k = check_positive_int("top_k", k)
        rescore = self.check_rescore(rescore)
        if not self.warned:
            self.warned = True
            for notice in self.notices:
                warnings.warn(IndexWarning(notice), stacklevel=caller_stacklevel())
        indices, scores = self.top_k(queries, k, rescore)
        self.passages_file.seek(0)
        field = self.field or "text"
        passages = passages_at(self.passages_file, indices.ravel().tolist(), len(self), self.complete, field)

        def hit(rank, i, score):
            record = passages[i]
            found = {"rank": rank, "index": i, "score": score, "text": record[field]}
            return {**found, "record": record} if self.field else found
        return [[hit(r + 1, int(i), float(s)) for r, (i, s) in enumerate(zip(row_i, row_s))]
                for row_i, row_s in zip(indices, scores)]

    def check_rescore(self, rescore):
        """rescore, checked: None, or a positive integer for a compact index (ValueError, IndexStateError)."""
        if rescore is None:
            return None
        rescore = check_positive_int("rescore", rescore)
        if self.precision == "float32":
            raise IndexStateError(f"{self.directory} holds float32 vectors, whose scores are exact: rescoring is for "
                                  "an int8, binary or binary+int8 index")
        return rescore

    def top_k(self, queries, k, rescore=None):
        """(indices, scores) of the k best rows for unit queries: top_k for float32 vectors, else compact_top_k."""
        if self.precision == "float32":
            unit_rows = self.meta.get("recipe", {}).get("normalize", True)  # false: a model's raw vectors, see top_k
            return top_k(self.vectors, queries, k, unit_rows=unit_rows is not False)
        if self.precision in ("binary", "binary+int8") and self.words is None:   # the layout hamming() scans: once
            bits = split_rows(self.vectors, self.dim)[0] if self.precision == "binary+int8" else self.vectors
            self.words = bit_words(bits, "binary")
        return compact_top_k(self.vectors, queries, k, self.precision, self.ranges, rescore, self.words)


def state_notices(directory, meta, rows):
    """What a query should say about the index it answers from: unfinished, empty, a rebuild beside it."""
    notices, quoted = [], shlex.quote(directory)
    if not meta.get("complete", True):
        notices.append(f"{directory} is unfinished: it holds the first {rows} passages of its corpus (`e5np search "
                       f"build --resume CORPUS {quoted}` continues it)")
    if rows == 0:
        notices.append(f"{directory} holds no passages: no results")
    with contextlib.suppress(ValueError):                              # a damaged rebuild is no reason not to answer
        if unfinished_rebuild(directory):
            notices.append(f"{Path(directory) / REBUILD} holds an unfinished rebuild of {directory}: these results "
                           "are from the index as it was")
        elif complete_rebuild(directory):                              # (load_index refused one moved in half way)
            notices.append(f"{Path(directory) / REBUILD} holds a complete rebuild of {directory}, not moved in: "
                           f"these results are from the index as it was; `e5np search build --resume CORPUS "
                           f"{quoted}` moves it in")
    return notices


def model_mismatches(name, directory, meta, model):
    """What differs between the model and the one that built the index: its weights, its recipe."""
    problems = []
    built_with = meta.get("weights")                                   # none in indexes from before it was recorded
    if built_with and weights_identity(model.directory, built_with)["sha256"] != built_with["sha256"]:
        problems.append(f"{name} is not the model {directory} was built with (its weights' sha256 differs): the "
                        "scores compare two models' vectors")
    recorded = dict(meta.get("recipe", {}))
    recorded.pop("normalize", None)                                    # (the vectors are normalized as read)
    if changes := recipe_changes(recorded, passage_recipe(model)):
        problems.append(f"{name} now embeds texts otherwise than it did for {directory} ({changes}): the scores "
                        "compare two kinds of vectors")
    return problems
