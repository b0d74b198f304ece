"""Single-query latency of e5np against ONNX Runtime and transformers: one short query per call.

    python tools/latency_bench.py [--model DIR] [--queries 200] [--rounds 5] [--engines e5np,ort-sorted,hf-sdpa]

Each engine runs in a process of its own (tools/bench.py's engines, built the same way) and embeds one query
per call, as a search front end does: e5np `model.encode(query)`, the others their engine on a one-text list.
e5np:DIR is e5np imported from another source tree, beside this one (before/after a change).
Queries are tools/bench.py's short corpus (8-16 tokens). Reported per engine, and as a ratio to e5np:
  load         building the engine in a fresh process (warm page cache)
  first        the first query after load: nothing warmed up behind the user's back
  cold         median of the first --queries calls after load (the first included)
  warm         median over --rounds rounds of --queries calls each, engines alternating round by round
               (machine noise hits all alike), after the cold calls
Every engine's vectors are checked against e5np's (cosine >= 0.99999).
"""

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import bench  # noqa: E402
import machine  # noqa: E402

import e5np  # noqa: E402

ENGINES = ("e5np", "ort-sorted", "ort-fused-sorted", "hf-sdpa")


def build(name, directory, workdir, max_length):
    """query -> [H] vector, or None when a package the engine needs is missing."""
    if name.split(":")[0] == "e5np":
        if ":" in name:                                        # e5np:DIR, e5np from another source tree
            for module in [m for m in sys.modules if m == "e5np" or m.startswith("e5np.")]:
                del sys.modules[module]
            sys.path.insert(0, name.split(":", 1)[1])
            import e5np as other
            model = other.load(directory)
        else:
            model = e5np.load(directory)
        return lambda query: model.encode(query, truncation="ignore", prefix="")
    run = bench.build_engine(name, directory, None, workdir, max_length)
    return None if run is None else (lambda query: run([query])[0])


def serve(name, directory, workdir, max_length, connection):
    """In the engine's process: build it (timed), then time each query the parent sends."""
    try:
        start = time.perf_counter()
        run = build(name, directory, workdir, max_length)
        connection.send(None if run is None else time.perf_counter() - start)
        while run is not None and (queries := connection.recv()) is not None:
            seconds, vectors = [], []
            for query in queries:
                start = time.perf_counter()
                vectors.append(run(query))
                seconds.append(time.perf_counter() - start)
            connection.send((seconds, np.stack(vectors)))
    except Exception:  # noqa: BLE001 - handed to the parent, which stops naming the engine
        connection.send(bench.EngineFailed(traceback.format_exc()))


class Engine(bench.EngineProcess):
    """tools/bench.py's engine process, serving one query per call; load_s: the engine's build time (None: skipped)."""

    def __init__(self, name, directory, workdir, max_length):
        context = multiprocessing.get_context("spawn")
        self.name = name
        self.connection, child = context.Pipe()
        self.process = context.Process(target=serve, args=(name, directory, workdir, max_length, child), daemon=True)
        self.process.start()
        child.close()
        self.load_s = self._receive()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory (default: build the e5-small-shaped one)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--engines", default="e5np,ort-sorted,hf-sdpa", help=f"comma-separated, from: {ENGINES}")
    args = parser.parse_args()
    names = args.engines.split(",")
    if unknown := sorted(set(n for n in names if not n.startswith("e5np:")) - set(ENGINES)):
        parser.error(f"unknown engine(s) {', '.join(unknown)}")

    with tempfile.TemporaryDirectory() as tmp:
        directory = bench.checkpoint_directory(args.model, tmp)
        print(latency_table(directory, names, args.queries, args.rounds, tmp))


def latency_table(directory, names, n_queries=200, rounds=5, workdir=None):
    """The table, as markdown: each engine's load, first, cold and warm one-query latency (tools/bench.py --latency
    prints it beside the throughput table)."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        model = e5np.load(directory)
        queries = bench.make_corpus(model, "short", n_queries)
        lengths = model.tokenize(queries).lengths
        engines, first, cold, warm, vectors = {}, {}, {}, {}, {}
        for name in names:                                     # one at a time: the ONNX engines share an export
            engine = Engine(name, directory, tmp, model.max_length)
            if engine.load_s is None:
                print(f"skipping {name}: a package it needs is missing", file=sys.stderr)
                continue
            engines[name] = engine
            seconds, vectors[name] = engine(queries)
            first[name], cold[name] = seconds[0], statistics.median(seconds)
        for _ in range(rounds):
            for name, engine in engines.items():
                warm.setdefault(name, []).extend(engine(queries)[0])
        for engine in engines.values():
            engine.close()

    lines = [f"queries: {len(queries)} short texts, {lengths.min()}-{lengths.max()} tokens; model {directory}",
             machine.describe(),
             f"warm: median and p90 of {rounds} alternating rounds of {len(queries)} calls", "",
             ("| engine | load s | first query ms | cold median ms | warm median ms | warm p90 ms "
              "| e5np / engine (warm) | min cosine |"),
             "|---|---|---|---|---|---|---|---|"]
    ours = statistics.median(warm["e5np"]) if "e5np" in warm else None
    for name, engine in engines.items():
        t, p90 = statistics.median(warm[name]), statistics.quantiles(warm[name], n=10)[-1]
        cosine = float((vectors["e5np"] * vectors[name]).sum(1).min()) if "e5np" in vectors else float("nan")
        ratio = f"{ours / t:.2f}x" if ours else "-"
        lines.append(f"| {name} | {engine.load_s:.2f} | {first[name] * 1e3:.1f} | {cold[name] * 1e3:.2f} "
                     f"| {t * 1e3:.2f} | {p90 * 1e3:.2f} | {ratio} | {cosine:.6f} |")
        if cosine < 0.99999:
            print(f"WARNING: {name} disagrees with e5np (cosine {cosine})", file=sys.stderr)
    lines.append("(e5np / engine: e5np's warm latency over the engine's; under 1 means e5np answers faster)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
