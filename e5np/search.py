"""Exact nearest-neighbour search over normalized vectors: a matrix product, in chunks.

An index is a directory: vectors.npy ([n, H] float32, unit rows), passages.jsonl (one JSON object per
row, in the same order: {"text": ...} for a corpus of plain lines, the corpus's own records for JSON lines)
and index.json (the model, its dimension, how many rows, whether its build finished, the records' text
field). `e5np search build` writes each chunk's passages and then its vectors, so an unfinished build
holds at least as many passages as vectors: its index is the passages that have vectors.

A build into a directory that holds a complete index writes the new index into its .rebuild folder, and moves
those files over the old ones only when it is complete (replace_index): until then the old index is whole.
"""

import hashlib
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np

from .reference import l2_normalize
from .checkpoint import WEIGHTS_FILE
from .tokenizer import lowercases_first, tokenizer_files

VECTORS, PASSAGES, META = "vectors.npy", "passages.jsonl", "index.json"
# How a do_lower_case checkpoint's texts are lowercased (see tokenizer.lowercases_first), as an index's recipe records
# it. Earlier e5np recorded True there, for Python's str.lower, whose vectors differ on a word-final capital sigma.
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
    return model.encode_passages(texts, normalize=True, **options)


def passage_recipe(model):
    """What besides the weights decides the vector embed_passages gives a text: the token limit, the
    tokenizer (its files' sha256) and whether texts are lowercased before it, the prefix, the pooling, and that
    the vectors are normalized (always, now: earlier e5np stored a non-normalizing model's vectors as they came,
    and recorded normalize false). index.json records it, so that an index is not continued with vectors made
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
    the corpus was JSON lines (field; null for plain text), the row where the last build's corpus begins
    (build_start: after the passages it was appended to; what --resume compares its corpus with), the identity
    of the weights that made the vectors (weights; see weights_identity) and how texts became vectors besides
    (recipe; see passage_recipe)."""
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
        for name in (VECTORS, PASSAGES, META):
            if (staged / name).is_file():                              # (a move that stopped: those not moved yet)
                os.replace(staged / name, directory / name)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, ctrl_c)
    shutil.rmtree(staged)


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
    return meta["rows"]


def read_meta(directory):
    """index.json as a dict; ValueError naming it if it is not one an index build wrote."""
    path = Path(directory) / META
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), str) or not isinstance(meta.get("dim"), int):
        raise ValueError(f"{path}: not an index description (no model or dim)")
    return meta


def passage_record(line, path, number, field="text"):
    """The record on line `number` of passages.jsonl; ValueError naming it if it is not an object whose `field` is
    a string."""
    try:
        record = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        record = None
    if not isinstance(record, dict) or not isinstance(record.get(field), str):
        raise ValueError(f"{path}:{number}: not a passage line (an object with a string field {field!r})")
    return record


def passage_lines(directory, rows, start=0):
    """Lines start..rows-1 of passages.jsonl as they are on disk, bytes (ValueError if there are fewer)."""
    path, count = Path(directory) / PASSAGES, 0
    with open(path, "rb") as f:
        for line in f:
            if count == rows:
                return
            count += 1
            if count > start:
                yield line
    if count < rows:
        raise ValueError(f"{path}: {count} passages, fewer than the {rows} vectors of {VECTORS}")


def load_index(directory):
    """(vectors memory-mapped, meta, passages.jsonl open for reading) of an index directory; ValueError naming the
    file on any inconsistency.

    The passages stay on disk: `passages_at` reads the ones a search returns, so a million-passage index
    costs a query its vectors' pages, not a million strings. The file is opened here, right after the vectors are
    mapped, so that a rebuild moving its files in while the query runs cannot pair these vectors with its passages.
    """
    directory = Path(directory)
    if stopped_moving_in(directory):
        time.sleep(MOVE_SETTLES)                                       # or is it moving in right now?
        if stopped_moving_in(directory):
            raise ValueError(f"{directory}: a rebuild stopped while its files were moving in over the index's (a "
                             "kill between two renames, or a rename that failed), so they may be of two builds; "
                             f"`e5np search build --resume CORPUS {directory}` finishes moving it in")
    for name in (VECTORS, PASSAGES, META):
        if not (directory / name).is_file():
            raise ValueError(f"{directory / name}: not found; is {directory} an index made by `e5np search build`?")
    meta = read_meta(directory)
    vectors = np.load(directory / VECTORS, mmap_mode="r")
    if vectors.ndim != 2 or vectors.shape[1] != meta["dim"]:
        raise ValueError(f"{directory / VECTORS} has shape {vectors.shape} but {META} says dim {meta['dim']}")
    if meta.get("complete", True) and meta.get("rows", len(vectors)) != len(vectors):   # (unfinished: may be ahead)
        raise ValueError(f"{directory / VECTORS} has {len(vectors)} rows but {META} says {meta['rows']}")
    return vectors, meta, open(directory / PASSAGES, "rb")


def passages_at(passages, indices, rows, complete=True, field="text"):
    """{i: the record of passage i} for the given indices, in one pass over passages.jsonl (open, binary) that also
    checks it holds `rows` passages, one per vector (ValueError if not). An unfinished build (complete false) may
    hold more: a build killed mid-chunk writes the next chunk's passages, or part of them, before their vectors."""
    path, wanted, found, lines = Path(passages.name), set(indices), {}, 0
    for line in passages:
        if lines == rows and not complete:
            break
        if lines in wanted:
            found[lines] = passage_record(line, path, lines + 1, field)
        lines += 1
    if lines != rows:
        raise ValueError(f"{path.parent}: {VECTORS} has {rows} rows but {PASSAGES} has {lines}")
    return found
