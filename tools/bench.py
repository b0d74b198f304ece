"""Throughput of e5np against the fastest ways to run the same checkpoint with PyTorch and ONNX Runtime.

    python tools/bench.py [--model DIR] [--corpus mixed|short|long] [--texts 1000] [--runs 3] [--latency]

Engines (each embeds the same corpus to normalized mean-pooled vectors, batch 32, the model's max_length):
  e5np               e5np.Model.encode (token-length-sorted batches, worker threads)
  hf-sdpa            transformers BertModel, SDPA attention, batches in corpus order
  hf-sdpa-sorted     the same, batches sorted by token length
  sentence-transformers  SentenceTransformer.encode (sorts by character length)
  ort-sorted         ONNX Runtime (model exported from transformers), batches sorted by token length
  ort-fused-sorted   the same after onnxruntime.transformers' BERT optimizer, which fuses each layer's
                     attention, residual + LayerNorm, embeddings + LayerNorm and bias + GELU into single
                     kernels (as Optimum's O2 does); ONNX Runtime's own graph optimizations fuse LayerNorm
                     and bias + GELU but leave attention and the residual adds as separate operators
Each engine runs in a process of its own, as a user would run it: no engine shares thread pools, an
allocator or imported libraries with another. Runs alternate between engines (e5np, hf, st, ort, e5np,
...) so machine noise hits all alike; the table reports the median. It also checks every engine's
vectors against e5np (cosine >= 0.99999), e5np's load time (warm page cache) and its peak RSS while
embedding, and measures the ceiling under all of them: how fast one core multiplies the model's
linear-layer shapes with each engine's matrix library (NumPy's OpenBLAS, torch's, ONNX Runtime's
MLAS), 64-80% of e5np's time (tools/breakdown.py).

The corpus is made here (no downloads): words drawn from the model's vocabulary, deterministic.
  mixed  5-400 words per text     short  8-16 tokens     long  256-512 tokens
Without --model it builds the 12-layer e5-small-shaped checkpoint from tests/checkpoints.py.
Needs the parity extra plus sentence-transformers, onnx and onnxruntime (engines whose packages are
missing are skipped).
"""

import argparse
import functools
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import machine  # noqa: E402

import e5np  # noqa: E402


def make_corpus(model, kind, n, seed=0):
    rng = np.random.RandomState(seed)
    vocab = sorted(w for w in model.tokenizer.get_vocab() if w.isalpha() and len(w) >= 3)
    if kind == "mixed":
        counts = rng.randint(5, 401, size=n)
    elif kind == "short":
        counts = rng.randint(5, 14, size=n)        # 8-16 tokens with the full stop, [CLS] and [SEP]
    elif kind == "long":
        counts = rng.randint(253, 510, size=n)     # 256-512 tokens: words of the vocab are one token each
    else:
        raise ValueError(kind)
    texts = []
    for count in counts:
        words = [vocab[i] for i in rng.randint(0, len(vocab), size=count)]
        texts.append(" ".join(words).capitalize() + ".")
    return texts


# --- engines: each returns a function texts -> [n, H] normalized float32 ---------------------------
def engine_e5np(directory, threads):
    model = e5np.load(directory)
    # prefix="": the texts as they are, as every other engine takes them (a checkpoint may name a default prompt)
    return lambda texts: model.encode(texts, batch_size=32, truncation="ignore", threads=threads, prefix="")


def engine_transformers(directory, sort, max_length):
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory))
    try:
        model = transformers.AutoModel.from_pretrained(str(directory), attn_implementation="sdpa").eval()
    except ValueError as e:                                # BERT has SDPA attention from transformers 4.41
        if "scaled_dot_product_attention" not in str(e):
            raise
        raise ImportError(f"transformers {transformers.__version__} has no SDPA attention for this model "
                          "(BERT's came in 4.41)") from None

    def run(texts):
        order = list(range(len(texts)))
        if sort:
            lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
            order.sort(key=lengths.__getitem__)
        out = np.empty((len(texts), model.config.hidden_size), np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), 32):
                rows = order[start:start + 32]
                batch = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=max_length,
                                  return_tensors="pt")
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"][..., None].to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1)
                out[rows] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return out

    return run


def engine_sentence_transformers(directory, max_length):
    from sentence_transformers import SentenceTransformer, models

    word = models.Transformer(str(directory), max_seq_length=max_length)
    model = SentenceTransformer(modules=[word, models.Pooling(word.auto_model.config.hidden_size, "mean")],
                                device="cpu")
    return lambda texts: model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)


def engine_onnxruntime(directory, workdir, max_length, fused=False):
    import onnxruntime as ort
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory))
    model = transformers.AutoModel.from_pretrained(str(directory), attn_implementation="eager").eval()
    path = Path(workdir) / "model.onnx"
    dummy = tokenizer(["hello world"], return_tensors="pt")

    class LastHiddenState(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask):
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    if not path.exists():  # both ONNX Runtime engines start from the same export
        torch.onnx.export(LastHiddenState(model), (dummy["input_ids"], dummy["attention_mask"]), str(path),
                          dynamo=False, input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                          dynamic_axes={"input_ids": {0: "b", 1: "t"}, "attention_mask": {0: "b", 1: "t"},
                                        "last_hidden_state": {0: "b", 1: "t"}}, opset_version=17)
    if fused:
        from onnxruntime.transformers.optimizer import optimize_model

        # opt_level 0: the BERT fusions only; the session below applies ONNX Runtime's own optimizations.
        optimized = optimize_model(str(path), model_type="bert", num_heads=model.config.num_attention_heads,
                                   hidden_size=model.config.hidden_size, opt_level=0)
        fusions = optimized.get_fused_operator_statistics()
        layers = model.config.num_hidden_layers
        if fusions.get("Attention", 0) != layers or fusions.get("SkipLayerNormalization", 0) != 2 * layers:
            raise RuntimeError(f"onnxruntime's BERT optimizer did not fuse every layer: {fusions}")
        path = Path(workdir) / "model-fused.onnx"
        optimized.save_model_to_file(str(path))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = os.cpu_count()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(texts):
        ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        out = np.empty((len(texts), model.config.hidden_size), np.float32)
        for start in range(0, len(texts), 32):
            rows = order[start:start + 32]
            batch = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=max_length,
                              return_tensors="np")
            hidden = session.run(None, {"input_ids": batch["input_ids"].astype(np.int64),
                                        "attention_mask": batch["attention_mask"].astype(np.int64)})[0]
            mask = batch["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            out[rows] = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        return out

    return run


# --- the matrix-multiply ceiling -------------------------------------------------------------------
def layer_shapes(config):
    """(in, out) of one encoder layer's linear maps: query, key, value, attention output, FFN up, FFN down."""
    H, F = config.hidden_size, config.intermediate_size
    return [(H, H)] * 4 + [(H, F), (F, H)]


def matmul_rate(products, flops, seconds=0.3):
    """GFLOP/s of calling every one of products (zero-argument functions), best of 5 timings of ~seconds/5."""
    start = time.perf_counter()
    for product in products:
        product()                                             # warm up and size the repeats
    repeats = max(1, int(seconds / 5 / (time.perf_counter() - start)))
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            for product in products:
                product()
        best = min(best, (time.perf_counter() - start) / repeats)
    return flops / best / 1e9


def numpy_rate(pairs, flops):
    """NumPy's BLAS (OpenBLAS in its wheels) on one thread, as each e5np worker runs it."""
    from e5np.runtime import one_blas_thread

    with one_blas_thread():
        return matmul_rate([functools.partial(np.matmul, x, w) for x, w in pairs], flops)


def torch_rate(pairs, flops):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            tensors = [(torch.from_numpy(x), torch.from_numpy(w)) for x, w in pairs]
            return matmul_rate([functools.partial(torch.matmul, x, w) for x, w in tensors], flops)
    finally:
        torch.set_num_threads(threads)


def onnxruntime_rate(pairs, flops):
    """A one-MatMul graph per weight, the weight an initializer, as the exported model's linear layers run."""
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    products = []
    for x, w in pairs:
        k, n = w.shape
        graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
                                  [numpy_helper.from_array(w, "w")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        session = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                               providers=["CPUExecutionProvider"])
        products.append(functools.partial(session.run, None, {"x": x}))
    return matmul_rate(products, flops)


MATRIX_LIBRARIES = {"numpy": numpy_rate, "torch": torch_rate, "onnxruntime": onnxruntime_rate}


def matmul_ceiling(config, rows, rounds=3):
    """{library: median GFLOP/s of one core on the model's layer shapes}, libraries alternating; libraries
    that are not installed are left out."""
    rng = np.random.RandomState(0)
    pairs = [(rng.standard_normal((rows, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32))
             for k, n in layer_shapes(config)]
    flops = sum(2 * x.shape[0] * x.shape[1] * w.shape[1] for x, w in pairs)
    rates = {}
    for _ in range(rounds):
        for name, rate in MATRIX_LIBRARIES.items():
            try:
                rates.setdefault(name, []).append(rate(pairs, flops))
            except ImportError:
                rates.pop(name, None)
    return {name: statistics.median(r) for name, r in rates.items()}


ENGINES = ("e5np", "hf-sdpa", "hf-sdpa-sorted", "sentence-transformers", "ort-sorted", "ort-fused-sorted")


def build_engine(name, directory, threads, workdir, max_length):
    """The engine's texts -> vectors function, or None when a package it needs is missing.
    max_length: the model's (e5np.Model.max_length), which e5np truncates at; the others are told it."""
    builders = {
        "e5np": lambda: engine_e5np(directory, threads),
        "hf-sdpa": lambda: engine_transformers(directory, sort=False, max_length=max_length),
        "hf-sdpa-sorted": lambda: engine_transformers(directory, sort=True, max_length=max_length),
        "sentence-transformers": lambda: engine_sentence_transformers(directory, max_length),
        "ort-sorted": lambda: engine_onnxruntime(directory, workdir, max_length),
        "ort-fused-sorted": lambda: engine_onnxruntime(directory, workdir, max_length, fused=True),
    }
    try:
        return builders[name]()
    except ImportError as e:
        print(f"skipping {name}: {e}", file=sys.stderr)
        return None


# What a child sends instead of a result: a builtin exception, so that it unpickles in any parent.
EngineFailed = ChildProcessError


class EngineProcess:
    """One engine in a process of its own, as a user would run it: timed there, it sends back the seconds
    and the vectors. (In one shared process torch's OpenMP threads and ONNX Runtime's spinning workers sit
    beside whichever engine is being timed; measured here, that made no difference beyond the noise, but
    a benchmark should not have to rely on it.)
    """

    def __init__(self, name, directory, threads, workdir, max_length):
        context = multiprocessing.get_context("spawn")
        self.name = name
        self.connection, child = context.Pipe()
        self.process = context.Process(target=serve_engine, daemon=True,
                                       args=(name, directory, threads, workdir, max_length, child))
        self.process.start()
        child.close()
        self.available = self._receive()                  # False: skipped, a package it needs is missing

    def _receive(self):
        try:
            message = self.connection.recv()
        except EOFError:
            raise RuntimeError(f"engine {self.name}: its process died (exit code {self.process.exitcode})") from None
        if isinstance(message, EngineFailed):
            raise RuntimeError(f"engine {self.name} failed in its process:\n{message}")
        return message

    def __call__(self, texts):
        """(seconds, vectors) of embedding texts."""
        self.connection.send(texts)
        return self._receive()

    def close(self):
        self.connection.send(None)
        self.process.join(timeout=60)


def serve_engine(name, directory, threads, workdir, max_length, connection):
    try:
        run = build_engine(name, directory, threads, workdir, max_length)
        connection.send(run is not None)
        while run is not None and (texts := connection.recv()) is not None:
            start = time.perf_counter()
            vectors = run(texts)
            connection.send((time.perf_counter() - start, vectors))
    except Exception:  # noqa: BLE001 - handed to the parent, which stops the benchmark naming the engine
        connection.send(EngineFailed(traceback.format_exc()))


def e5np_load_and_rss(directory, texts, threads):
    """Load time (warm page cache: the first load in a fresh process, and the median of 3) and peak RSS
    of a fresh process embedding the corpus.

    Peak RSS is VmHWM from /proc: getrusage's ru_maxrss survives exec and would report this
    benchmark's own (torch-laden) high-water mark.
    """
    code = (
        "import json, sys, time, e5np\n"
        "def peak_mb():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmHWM:'):\n"
        "            return int(line.split()[1]) / 1024\n"
        "texts = json.load(sys.stdin)\n"
        "times = []\n"
        "for _ in range(3):\n"
        "    m = None\n"
        "    t = time.perf_counter(); m = e5np.load(sys.argv[1]); times.append(time.perf_counter() - t)\n"
        "after_load = peak_mb()\n"
        "m.encode(texts, truncation='ignore', threads=int(sys.argv[2]) or None)\n"
        "print(json.dumps({'first_load_s': times[0], 'load_s': sorted(times)[1], 'load_peak_mb': after_load,\n"
        "                  'peak_rss_mb': peak_mb()}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(directory), str(threads)], input=json.dumps(texts),
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def checkpoint_directory(model, tmp):
    """--model, or else the 12-layer e5-small-shaped checkpoint built in tmp."""
    if model is not None:
        return model
    from tests.checkpoints import make_e5_shaped

    return make_e5_shaped(Path(tmp) / "e5-small-shaped")[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory (default: build the e5-small-shaped one)")
    parser.add_argument("--corpus", default="mixed", choices=["mixed", "short", "long"])
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="e5np worker threads (default: its own)")
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated, from: %(default)s")
    parser.add_argument("--latency", action="store_true",
                        help="also one query per call: each engine's load, first, median and p90 latency "
                             "(tools/latency_bench.py's table, for the engines it knows)")
    parser.add_argument("--queries", type=int, default=200, help="with --latency: queries per round")
    args = parser.parse_args()
    unknown = sorted(set(args.engines.split(",")) - set(ENGINES))
    if unknown:
        parser.error(f"unknown engine(s) {', '.join(unknown)}; choose from {', '.join(ENGINES)}")

    with tempfile.TemporaryDirectory() as tmp:
        directory = checkpoint_directory(args.model, tmp)
        reference_model = e5np.load(directory)
        texts = make_corpus(reference_model, args.corpus, args.texts)
        tokens = int(reference_model.tokenize(texts).lengths.sum())
        engines = {}
        for name in args.engines.split(","):                  # one at a time: the ONNX engines share an export
            engine = EngineProcess(name, directory, args.threads, tmp, reference_model.max_length)
            if engine.available:
                engines[name] = engine
        times = {name: [] for name in engines}
        vectors = {}
        for engine in engines.values():
            engine(texts[:64])  # warm up: allocations, thread pools, lazy init
        for _ in range(args.runs):
            for name, engine in engines.items():
                seconds, vectors[name] = engine(texts)
                times[name].append(seconds)
        for engine in engines.values():
            engine.close()
        report(args, texts, tokens, directory, times, vectors)
        rows = min(reference_model.max_batch_tokens, 32 * round(tokens / len(texts)))  # a typical batch's tokens
        ceiling = matmul_ceiling(reference_model.config, rows)
        memory = e5np_load_and_rss(directory, texts, args.threads or 0)
        weights_mb = (Path(directory) / "model.safetensors").stat().st_size / 2**20
        if args.latency:
            import latency_bench  # it imports this module: here, not on top

            one_query = {"hf-sdpa-sorted": "hf-sdpa"}                 # one text per call: nothing to sort
            names = [one_query.get(name, name) for name in args.engines.split(",")]
            names = [name for name in dict.fromkeys(names) if name in latency_bench.ENGINES]
            latency = latency_bench.latency_table(directory, names, args.queries, rounds=5, workdir=tmp)
    print(f"e5np load {memory['first_load_s']:.3f} s first in a fresh process, {memory['load_s']:.3f} s median of 3 "
          f"(warm page cache); peak RSS {memory['load_peak_mb']:.0f} MB after load, "
          f"{memory['peak_rss_mb']:.0f} MB while embedding (weights {weights_mb:.0f} MB)")
    print(f"one core multiplying the model's linear-layer shapes ([{rows}, in] @ [in, out], median of 3): "
          + ", ".join(f"{name} {rate:.0f} GFLOP/s" for name, rate in ceiling.items()))
    if args.latency:
        print()
        print(latency)


def report(args, texts, tokens, directory, times, vectors):
    print(f"corpus: {len(texts)} {args.corpus} texts, {tokens} tokens; model {directory}")
    print(f"{machine.describe()}; median of {args.runs} alternating runs")
    print()
    print("| engine | texts/s | tokens/s | e5np speed-up | min cosine vs e5np |")
    print("|---|---|---|---|---|")
    e5np_time = statistics.median(times["e5np"]) if "e5np" in times else None
    for name, samples in times.items():
        t = statistics.median(samples)
        ours, theirs = vectors.get("e5np"), vectors[name]
        cosine = float((ours * theirs).sum(1).min()) if ours is not None else float("nan")
        ratio = f"{t / e5np_time:.2f}x" if e5np_time else "-"
        print(f"| {name} | {len(texts) / t:,.0f} | {tokens / t:,.0f} | {ratio} | {cosine:.6f} |")
        if cosine < 0.99999:
            print(f"WARNING: {name} disagrees with e5np (cosine {cosine})", file=sys.stderr)
    print(flush=True)


if __name__ == "__main__":
    main()
