"""Exact nearest-neighbour search over normalized vectors: a matrix product, in chunks.

An index is a directory: vectors.npy ([n, H] float32, unit rows), passages.jsonl (one {"text": ...}
per row, in the same order) and index.json (the model, its dimension, how many rows).
"""

import json
from pathlib import Path

import numpy as np

VECTORS, PASSAGES, META = "vectors.npy", "passages.jsonl", "index.json"


def top_k(vectors, queries, k, chunk_rows=65536):
    """Indices and cosine scores of the k best rows of `vectors` for each query, best first.

    vectors [n, H] (may be a memory map), queries [q, H], both L2-normalized. Only a [chunk_rows, q]
    block of scores exists at a time, so a million vectors need no million-sized intermediate.
    """
    n = len(vectors)
    k = min(k, n)
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_index = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, n, chunk_rows):
        block = np.asarray(vectors[start:start + chunk_rows], dtype=np.float32)   # [chunk, H]
        rows = np.arange(start, start + len(block))
        scores = np.concatenate([best_scores, queries @ block.T], axis=1)          # [q, kept + chunk]
        index = np.concatenate([best_index, np.tile(rows, (len(queries), 1))], axis=1)
        if scores.shape[1] > k:                                                    # keep the k best so far
            keep = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            scores, index = np.take_along_axis(scores, keep, axis=1), np.take_along_axis(index, keep, axis=1)
        best_scores, best_index = scores, index
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best_index, order, axis=1), np.take_along_axis(best_scores, order, axis=1)


def save_index(directory, passages, model_name, dim):
    """passages.jsonl and index.json beside the vectors.npy already written in directory."""
    directory = Path(directory)
    with open(directory / PASSAGES, "w", encoding="utf-8") as f:
        for text in passages:
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    (directory / META).write_text(json.dumps({"model": model_name, "dim": dim, "rows": len(passages)}, indent=2))


def load_index(directory):
    """(vectors memory-mapped, passages, meta); ValueError naming the file on any inconsistency."""
    directory = Path(directory)
    for name in (VECTORS, PASSAGES, META):
        if not (directory / name).is_file():
            raise ValueError(f"{directory / name}: not found; is {directory} an index made by `e5np search build`?")
    meta = json.loads((directory / META).read_text())
    vectors = np.load(directory / VECTORS, mmap_mode="r")
    with open(directory / PASSAGES, encoding="utf-8") as f:
        passages = [json.loads(line)["text"] for line in f]
    if vectors.ndim != 2 or len(vectors) != len(passages) or vectors.shape[1] != meta.get("dim"):
        raise ValueError(f"{directory}: {VECTORS} has shape {vectors.shape} but {PASSAGES} has "
                         f"{len(passages)} rows and {META} says dim {meta.get('dim')}")
    return vectors, passages, meta
