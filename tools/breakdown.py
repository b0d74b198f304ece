"""Where e5np's time goes: each part of the forward pass's share while e5np embeds a corpus.

    python tools/breakdown.py [--model DIR] [--corpus mixed|short|long] [--texts 1000] [--threads 1]

The corpus is tools/bench.py's. Each function of e5np/engine.py below is timed while it runs, its own
time only (not the timed functions it calls), so the parts add up to the whole:

  linear layers         engine.linear: the matrix products BLAS does, plus the bias (GFLOP/s: from the shapes)
  GELU                  numerics.gelu
  LayerNorm             engine.layer_norm
  attention: softmax    numerics.softmax_in_exp_units
  attention: products   engine.self_attention's own work: the q·k and weights·v products, slicing heads
  feed-forward          engine.feed_forward's own work: the bias before GELU, copying each block back
  residual adds         engine.encoder_layer's own work: x + attention, x + feed-forward, copying blocks back
  embeddings            engine.embed's own work: table lookups and sums
  packing               engine.encode's own work: the real tokens end to end, then padded back to [B, T, H]
  other                 everything outside engine.encode: tokenizing, batching, pooling, normalizing (and
                        with several workers, waiting)

One worker on one BLAS thread by default: the shares are then of one core's time, the figures
docs/performance.md gives. With --threads N they are shares of N workers' time (N x wall time).

--onnxruntime adds the same table for ONNX Runtime's fused model (tools/bench.py's ort-fused-sorted engine) on one
thread, the same texts in the same batches of 32 by token length, timed by its profiler. Its fused ops split the
work differently from e5np's functions:

  MatMul                   the linear layers but q, k, v: x @ w (their biases are in the ops below)
  Attention                q, k, v as one x @ w_qkv + b, then attention
  BiasGelu                 the feed-forward's first bias, and GELU
  SkipLayerNormalization   the residual add, the last bias, and LayerNorm
  EmbedLayerNormalization  embeddings
  other                    the other ops, and everything outside them: tokenizing, batching, ONNX Runtime's session
Needs the parity extra, onnx and onnxruntime (as tools/bench.py's ONNX Runtime engines).
"""

import argparse
import contextlib
import functools
import json
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bench  # noqa: E402  the corpus
import e5np  # noqa: E402
from e5np import engine  # noqa: E402
from e5np.runtime import one_blas_thread  # noqa: E402

# engine's functions (its own, and the numerics it calls by name), outermost last, and the part of the forward
# pass each one's own time counts for
PARTS = {
    "linear": "linear layers: x @ w + b",
    "gelu": "GELU",
    "layer_norm": "LayerNorm",
    "softmax_in_exp_units": "attention: softmax",
    "self_attention": "attention: products (q·k, weights·v), heads",
    "feed_forward": "feed-forward: bias, blocks",
    "encoder_layer": "residual adds, blocks",
    "embed": "embeddings",
    "encode": "packing tokens, padding back",
}
OTHER = "other: tokenize, batch, pool, normalize"


class Stopwatch:
    """Own time per function across threads; a thread's stack holds the time its timed callees took."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self.linear_flops = 0
        self._lock = threading.Lock()
        self._stacks = threading.local()

    def wrap(self, name, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            stack = self._stacks.__dict__.setdefault("stack", [])
            stack.append(0.0)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                callees = stack.pop()
                if stack:
                    stack[-1] += elapsed
                with self._lock:
                    self.seconds[name] += elapsed - callees
        return timed

    def count_linear_flops(self, linear):
        @functools.wraps(linear)
        def counted(x, w, b=None, blocks=None):                        # [S, in] @ [in, out]: 2 S in out
            with self._lock:
                self.linear_flops += 2 * x.shape[0] * w.shape[0] * w.shape[1]
            return linear(x, w, b, blocks)
        return counted


@contextlib.contextmanager
def timing():
    """engine's functions timed while inside; the originals back afterwards, whatever happens."""
    stopwatch = Stopwatch()
    originals = {name: getattr(engine, name) for name in PARTS}
    try:
        for name, fn in originals.items():
            fn = stopwatch.count_linear_flops(fn) if name == "linear" else fn
            setattr(engine, name, stopwatch.wrap(name, fn))            # engine calls them as its globals
        yield stopwatch
    finally:
        for name, fn in originals.items():
            setattr(engine, name, fn)


def measure(model, texts, threads=1):
    """(vectors, {part: seconds}, linear FLOPs, wall seconds) of one timed model.encode(texts) (the texts as they
    are, as ONNX Runtime takes them: no default prompt)."""
    with timing() as stopwatch:
        start = time.perf_counter()
        vectors = model.encode(texts, threads=threads, truncation="ignore", prefix="")
        wall = time.perf_counter() - start
    parts = {PARTS[name]: stopwatch.seconds[name] for name in PARTS}
    parts[OTHER] = max(0.0, threads * wall - sum(parts.values()))
    return vectors, parts, stopwatch.linear_flops, wall


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory (default: build the e5-small-shaped one)")
    parser.add_argument("--corpus", default="short", choices=["mixed", "short", "long"])
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1, help="worker threads, each on one BLAS thread (1)")
    parser.add_argument("--onnxruntime", action="store_true",
                        help="the same for ONNX Runtime's fused model on one thread, from its profiler")
    args = parser.parse_args()
    if args.threads < 1 or args.texts < 1:
        parser.error("--threads and --texts must be at least 1")

    with tempfile.TemporaryDirectory() as tmp, one_blas_thread():   # one worker too: on one BLAS thread
        report(args, bench.checkpoint_directory(args.model, tmp), tmp)


def report(args, directory, workdir):
    model = e5np.load(directory)
    texts = bench.make_corpus(model, args.corpus, args.texts)
    tokens = int(model.tokenize(texts).lengths.sum())
    model.encode(texts[:64], threads=args.threads, prefix="")         # warm up
    start = time.perf_counter()
    model.encode(texts, threads=args.threads, truncation="ignore", prefix="")
    untimed = time.perf_counter() - start
    _, parts, flops, wall = measure(model, texts, args.threads)

    workers = "one worker" if args.threads == 1 else f"{args.threads} workers, each"
    print(f"corpus: {len(texts)} {args.corpus} texts, {tokens:,} tokens; model {directory}; {workers} on one "
          "BLAS thread")
    print(f"timed run {wall:.2f} s ({tokens / wall:,.0f} tokens/s); untimed {untimed:.2f} s "
          f"({tokens / untimed:,.0f} tokens/s)")
    print()
    total = args.threads * wall
    linear = PARTS["linear"]
    print("| part | seconds | share |")
    print("|---|---|---|")
    for part, seconds in sorted(parts.items(), key=lambda item: -item[1]):
        label = f"{part} ({flops / seconds / 1e9:.0f} GFLOP/s a worker)" if part == linear else part
        print(f"| {label} | {seconds:.3g} | {100 * seconds / total:.1f}% |")
    if args.onnxruntime:
        ort_parts, ort_flops, ort_wall = onnxruntime_parts(directory, model, texts, workdir)
        print()
        versus = f"; e5np untimed on one worker: {ort_wall / untimed:.2f}x its speed" if args.threads == 1 else ""
        print(f"ONNX Runtime, fused model, one thread: {ort_wall:.2f} s ({tokens / ort_wall:,.0f} tokens/s){versus}")
        print()
        print("| ONNX Runtime op | seconds | share |")
        print("|---|---|---|")
        for part, seconds in sorted(ort_parts.items(), key=lambda item: -item[1]):
            label = f"{part} ({ort_flops / seconds / 1e9:.0f} GFLOP/s)" if part == "MatMul" else part
            print(f"| {label} | {seconds:.3g} | {100 * seconds / ort_wall:.1f}% |")


ORT_OPS = ["MatMul", "Attention", "BiasGelu", "SkipLayerNormalization", "EmbedLayerNormalization"]
ORT_OTHER = "other"


def onnxruntime_parts(directory, model, texts, workdir, batch_size=32):
    """({op: seconds}, the MatMul ops' FLOPs, wall seconds) of ONNX Runtime's fused model embedding texts on one
    thread in batches sorted by token length (as tools/bench.py's ort-fused-sorted does), from its profiler."""
    import onnxruntime

    bench.engine_onnxruntime(directory, workdir, model.max_length, fused=True)   # exports model-fused.onnx
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(workdir) / "profile")
    session = onnxruntime.InferenceSession(str(Path(workdir) / "model-fused.onnx"), options,
                                           providers=["CPUExecutionProvider"])
    lengths = model.tokenize(texts).lengths
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    c = model.config
    per_token = 2 * c.num_hidden_layers * (c.hidden_size**2 + 2 * c.hidden_size * c.intermediate_size)  # o, up, down
    flops, start = 0, time.perf_counter()
    for first in range(0, len(texts), batch_size):
        batch = model.tokenize([texts[i] for i in order[first:first + batch_size]])
        session.run(None, {"input_ids": batch.input_ids.astype("int64"),
                           "attention_mask": batch.attention_mask.astype("int64")})
        flops += batch.input_ids.size * per_token                      # padding too: ONNX Runtime computes it
    wall = time.perf_counter() - start
    with open(session.end_profiling()) as f:
        events = json.load(f)
    parts = dict.fromkeys(ORT_OPS, 0.0)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event["args"]["op_name"]
            if op in parts:
                parts[op] += event["dur"] / 1e6                        # microseconds
    parts[ORT_OTHER] = max(0.0, wall - sum(parts.values()))
    return parts, flops, wall


if __name__ == "__main__":
    main()
