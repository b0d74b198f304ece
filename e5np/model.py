"""The e5np model object: load a checkpoint, tokenize, batch, run the encoder, pool, normalize."""

import numbers
import os
import re
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np

from . import engine, reference
from .blas import available_cpus, one_blas_thread
from .checkpoint import load_config, load_default_prompt, load_prompts, load_sentence_transformers_head, load_weights
from .hub import resolve
from .tokenizer import encode_batch, load_tokenizer, model_max_length, not_unicode, overflowing, pad, tokenize

# Prefix conventions, as data. E5 models were trained with these; other models get none unless their
# config_sentence_transformers.json declares prompts or load(prefixes=...) says so.
E5_PREFIXES = {"query": "query: ", "passage": "passage: "}
E5_NAME = re.compile(r"(^|[^a-z0-9])e5([^a-z0-9]|$)")  # intfloat/e5-small, multilingual-e5-base, ...
# The instruction-tuned E5s (intfloat/multilingual-e5-large-instruct) take no "query: " / "passage: ": a query is
# "Instruct: <one sentence saying the task>\nQuery: <query>", a passage is as it is. The instruction here is the one
# their model card uses for retrieval; prefixes={"query": ...} gives another task's.
E5_INSTRUCT_PREFIXES = {"query": "Instruct: Given a web search query, retrieve relevant passages that answer the "
                                 "query\nQuery: ", "passage": ""}
E5_INSTRUCT_NAME = re.compile(r"(^|[^a-z0-9])e5([^a-z0-9][^/]*)?instruct")  # in one path component
DTYPES = {"float32": np.float32, "float64": np.float64}
# Texts encode() tokenizes at a time. A tokenized text costs ~230 bytes a token (ids, offsets, token strings),
# so 100,000 texts of ~110 tokens took 2.6 GB at once, and a million would not fit this 24 GB machine; 4,096
# texts are at most 0.5 GB, and seconds to minutes of embedding: the seams between windows cost no measurable speed.
ENCODE_WINDOW = 4096


class TruncationWarning(UserWarning):
    """Some texts were longer than the model's max length and lost their tail."""


def as_text_list(texts):
    """(list of str, was a single str). Rejects anything else with the index and type of the first bad item."""
    if isinstance(texts, str):
        return [texts], True
    if isinstance(texts, (bytes, bytearray)):
        raise TypeError("texts must be a str or a list of str, got bytes; decode it first (e.g. b.decode('utf-8'))")
    try:
        texts = list(texts)
    except TypeError:
        raise TypeError(f"texts must be a str or a list of str, got {type(texts).__name__}") from None
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__}, expected str")
    return texts, False


def e5_prefixes(*names):
    """E5's prefixes for a model whose names (hub id, directory) say it is an E5, the instruct ones' for an instruct
    E5, else none."""
    for pattern, prefixes in ((E5_INSTRUCT_NAME, E5_INSTRUCT_PREFIXES), (E5_NAME, E5_PREFIXES)):
        if any(pattern.search(str(name).lower()) for name in names):
            return dict(prefixes)
    return {}


def integer(value):
    """value as an int if it is an integer (a NumPy one too), else None: a bool is not one, nor is 2.0."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        return None
    return int(value)


def check_positive_int(name, value):
    number = integer(value)
    if number is None or number < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return number


def dtype_name(dtype):
    """"float32" or "float64" for those names and for NumPy's types of them (np.float64, np.dtype("float64")),
    "float32" for None (the default; np.dtype(None) would say float64); ValueError for anything else."""
    if dtype is None:
        return "float32"
    try:
        name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return name


def check_flag(name, value):
    """value as a bool; anything but True/False (a "false" string is truthy) is refused rather than guessed at."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_prefix(name, prefix):
    if not isinstance(prefix, str):
        raise TypeError(f"{name} must be a str, got {type(prefix).__name__}")


def check_prefixes(prefixes):
    """A dict of str prefixes for "query" and/or "passage"; another key would be a prefix nothing ever adds."""
    if not isinstance(prefixes, dict):
        raise TypeError(f'prefixes must be a dict like {{"query": "query: ", "passage": "passage: "}}, '
                        f'got {prefixes!r}')
    unknown = sorted(set(prefixes) - set(E5_PREFIXES), key=str)
    if unknown:
        raise ValueError(f'prefixes takes the keys "query" and "passage", got {unknown}')
    for key, prefix in prefixes.items():
        check_prefix(f"prefixes[{key!r}]", prefix)


def check_pooling(pooling):
    if pooling not in reference.POOLINGS:
        raise ValueError(f"pooling must be one of {sorted(reference.POOLINGS)}, got {pooling!r}")


def check_options(pooling=None, normalize=None, prefixes=None, threads=None):
    """The options load() and Model() share; None is a default decided elsewhere. load() calls this before it
    reads any weights."""
    if pooling is not None:
        check_pooling(pooling)
    if normalize is not None:
        check_flag("normalize", normalize)
    if prefixes is not None:
        check_prefixes(prefixes)
    if threads is not None:
        check_positive_int("threads", threads)


@dataclass
class Forward:
    """Everything one forward pass computed, for inspection (see Model.forward)."""

    tokens: list                # per text, its token strings
    input_ids: np.ndarray       # [B, T]
    attention_mask: np.ndarray  # [B, T]
    hidden_states: list         # L + 1 arrays [B, T, H]: the embedding output, then each layer's output (0 for padding)
    attentions: list            # L arrays [B, N, T, T] of attention probabilities (0 for padding), or None
    pooled: np.ndarray          # [B, H] pooled over real tokens (the model's pooling)
    embeddings: np.ndarray      # [B, H] pooled, then L2-normalized if the model normalizes

    @property
    def last_hidden_state(self):
        return self.hidden_states[-1]


def progress_bar(total, enabled):
    """A tqdm bar on stderr counting texts (tqdm comes with huggingface-hub); a no-op one when not enabled."""
    from tqdm import tqdm

    return tqdm(total=total, unit="text", desc="e5np", disable=not enabled)


def length_batches(lengths, batch_size, max_tokens, workers=1):
    """Group text indices into batches of similar token length, longest texts first: attention stacks texts of
    equal length into one step, and the padded [B, T, H] arrays the model hands back stay small (padding itself
    is never computed).

    A batch closes at batch_size texts, or when padding it to its longest text would pass its token budget
    (a lone text longer than that still gets its own batch). The budget is max_tokens; with several workers
    taking batches in turn it is also at most 1/workers of the tokens still waiting, but not under
    max_tokens / 8: the batches shrink towards the end, so the workers finish together instead of
    one running the last full batch alone (that tail cost 5% of a run on 100 long passages with two workers).
    The floor is there because every batch has a fixed cost of ~5 ms of Python and small NumPy calls: a batch
    of 128 tokens runs 5-10% slower per token than one of 384.
    """
    waiting = sum(lengths)
    batches, current, budget = [], [], max_tokens
    for i in sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True):
        if current and (len(current) == batch_size or (len(current) + 1) * lengths[current[0]] > budget):
            batches.append(current)
            current = []
        if not current and workers > 1:
            budget = min(max_tokens, max(max_tokens // 8, waiting // workers))
        current.append(i)
        waiting -= lengths[i]
    return batches + [current] if current else batches


class Model:
    """A BERT-family sentence encoder: tokenize, encode, pool (E5: mean), normalize (E5: L2)."""

    # Padded tokens per forward pass: bounds activation memory (~22 MB a worker). 4,096 ran long text 1-3% faster
    # at best, but its larger, ever-different array sizes left glibc's per-thread heaps holding up to 145 MB more.
    max_batch_tokens = 2048

    def __init__(self, params, config, tokenizer, max_length, dtype=np.float32, name=None, directory=None,
                 threads=None, pooling="mean", normalize=True, prefixes=None, default_prefix=""):
        check_options(pooling, normalize, prefixes, threads)
        check_prefix("default_prefix", default_prefix)
        self.params = params
        self.threads = int(threads) if threads else available_cpus()
        self.pooling = pooling
        self.normalize = bool(normalize)
        self.prefixes = dict(prefixes or {})
        self.default_prefix = default_prefix   # what encode() adds when told no other: a declared default prompt
        self.config = config
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.dtype = dtype
        self.name = name
        self.directory = directory
        self._workers, self._workers_lock, self._workers_pid = None, None, None   # see _shared_workers: (pool, size)

    @property
    def dim(self):
        return self.config.hidden_size

    def __repr__(self):
        c = self.config
        return (f"e5np.Model({self.name!r}, {c.model_type}, layers={c.num_hidden_layers}, hidden={c.hidden_size}, "
                f"heads={c.num_attention_heads}, max_length={self.max_length}, pooling={self.pooling}, "
                f"normalize={self.normalize}, dtype={np.dtype(self.dtype).name})")

    def _pool(self, hidden, attention_mask, normalize):
        vectors = reference.POOLINGS[self.pooling](hidden, attention_mask)    # [B, T, H] -> [B, H]
        return reference.l2_normalize(vectors) if normalize else vectors

    def tokenize(self, texts):
        """Texts -> TokenBatch (ids, mask, token strings, which texts were truncated)."""
        texts, _ = as_text_list(texts)
        return tokenize(self.tokenizer, texts, pad_id=self.config.pad_token_id)

    def _run(self, batch, keep_hidden=False, keep_attention=False):
        # float64 is the ground truth: the model as the paper writes it; float32 the fast engine (the same numbers
        # to float32's precision, tests/test_reference.py)
        run = reference.forward if np.dtype(self.dtype) == np.float64 else engine.encode
        return run(batch.input_ids, batch.attention_mask, self.params,
                   n_heads=self.config.num_attention_heads, eps=self.config.layer_norm_eps,
                   position_offset=self.config.position_offset,
                   keep_hidden=keep_hidden, keep_attention=keep_attention)

    def encode(self, texts, *, batch_size=32, normalize=None, truncation="warn", threads=None,
               show_progress_bar=False, prefix=None):
        """Embed texts: a str gives a [H] vector, a list of n strs an [n, H] array (float32 by default).

        Texts are batched by token length (texts of equal length share attention steps) and returned in input order.
        truncation: what to do when a text is longer than max_length tokens and loses its tail:
        "warn" (a TruncationWarning naming the texts), "ignore", or "error" (ValueError).
        threads: batches run at once (default self.threads, on the model's workers, which concurrent calls share);
        NumPy releases the GIL in its kernels.
        normalize: L2-normalize the pooled vectors (default: what the checkpoint does; E5 does).
        show_progress_bar: a tqdm bar on stderr counting the texts embedded, batch by batch.
        prefix: added to each text (default self.default_prefix: the prompt a sentence-transformers checkpoint
        names as its default_prompt_name, as sentence-transformers' encode adds it; "" for most models, E5 too).
        """
        texts, single = as_text_list(texts)
        texts = self._prefixed(texts, prefix)
        batch_size = check_positive_int("batch_size", batch_size)
        if truncation not in ("warn", "ignore", "error"):
            raise ValueError(f"truncation must be 'warn', 'ignore' or 'error', got {truncation!r}")
        threads = self.threads if threads is None else check_positive_int("threads", threads)
        normalize = self.normalize if normalize is None else check_flag("normalize", normalize)
        show_progress_bar = check_flag("show_progress_bar", show_progress_bar)

        if error := not_unicode(texts, range(len(texts))):            # found before any work, not hours into it
            raise error
        if truncation == "error" and (too_long := self._too_long(texts)):
            raise ValueError(self._truncation_message(too_long, len(texts)))
        vectors, truncated = np.empty((len(texts), self.dim), dtype=self.dtype), []
        with progress_bar(len(texts), show_progress_bar) as bar:
            for start, encodings in self._tokenized_windows(texts):
                truncated += overflowing(encodings, start)
                vectors[start:start + len(encodings)] = self._embed_encodings(encodings, batch_size, normalize,
                                                                              threads, done=bar.update)
        if truncated and truncation == "warn":
            warnings.warn(self._truncation_message(truncated, len(texts)), TruncationWarning, stacklevel=2)
        return vectors[0] if single else vectors

    def _prefixed(self, texts, prefix=None):
        """texts (a list) with prefix added to each; None is the model's default_prefix ("" for most models)."""
        prefix = self.default_prefix if prefix is None else prefix
        check_prefix("prefix", prefix)
        return [prefix + text for text in texts] if prefix else texts

    def _tokenized_windows(self, texts):
        """(start, encodings of texts[start:start + ENCODE_WINDOW]) for each window: bounded memory."""
        for start in range(0, len(texts), ENCODE_WINDOW):
            yield start, encode_batch(self.tokenizer, texts[start:start + ENCODE_WINDOW])

    def _too_long(self, texts):
        """Indices of the texts longer than max_length tokens (tokenizing them all once, without embedding)."""
        return [i for start, encodings in self._tokenized_windows(texts) for i in overflowing(encodings, start)]

    def _truncation_message(self, truncated, n):
        return (f"{len(truncated)} of {n} text(s) exceed max_length={self.max_length} tokens and were truncated: "
                f"indices {truncated[:10]}{' ...' if len(truncated) > 10 else ''}")

    def _embed_encodings(self, encodings, batch_size, normalize, threads, workers=None, done=None):
        """Already-tokenized texts -> [n, H]: the part of encode() after tokenizing (the server reuses it).

        workers: an executor of `threads` threads (each with one BLAS thread) to run the batches on, shared
        by callers so that their batches queue for the same cores; by default the model's own (see _shared_workers)
        when threads is the model's, else one made for this call.
        done: called with each batch's number of texts once its vectors are in (a progress bar's update)."""
        def embed(rows):
            batch = pad([encodings[i] for i in rows], pad_id=self.config.pad_token_id)
            hidden, _, _ = self._run(batch)
            return self._pool(hidden, batch.attention_mask, normalize)             # [B, T, H] -> [B, H]

        out = np.empty((len(encodings), self.dim), dtype=self.dtype)
        batches = length_batches([len(e.ids) for e in encodings], batch_size, self.max_batch_tokens, threads)
        done = done or (lambda texts: None)
        if workers is None and (threads == 1 or len(batches) == 1):
            for rows in batches:
                out[rows] = embed(rows)
                done(len(rows))
            return out
        if workers is None and threads == self.threads:
            workers = self._shared_workers()
        shared = workers is not None                                       # a shared pool outlives this call
        with one_blas_thread(), nullcontext(workers) if shared else ThreadPoolExecutor(threads) as pool:
            futures = [pool.submit(embed, rows) for rows in batches]      # the costliest batches start first
            try:
                for rows, future in zip(batches, futures):
                    out[rows] = future.result()
                    done(len(rows))
            except BaseException:                                          # a failed batch, Ctrl-C: the batches
                for future in futures:                                     # not begun are not run (a shared pool
                    future.cancel()                                        # would run them for nobody)
                raise
        return out

    def _shared_workers(self):
        """The model's pool of self.threads workers (each with one BLAS thread), made on first use. Every encode()
        with the model's threads runs its batches there, so that concurrent calls (a web app's request threads)
        queue for the same cores instead of each starting workers of its own: 8 calls at once ran 16 batches at
        once on 2 cores, each batch's activations in memory. A forked child (gunicorn --preload, multiprocessing)
        makes its own: the parent's threads are not in it, and work handed to their queue would never run."""
        if self._workers_pid != os.getpid():                           # first use, or a forked child
            self._workers, self._workers_lock, self._workers_pid = None, threading.Lock(), os.getpid()
        with self._workers_lock:
            workers, threads = self._workers or (None, None)
            if threads != self.threads:                                # first use, or model.threads was set since:
                # a new pool; the old one is let go, not shut down, as a call may be about to hand it batches.
                # Its threads end once no call holds it (ThreadPoolExecutor wakes them when it is collected).
                workers = ThreadPoolExecutor(self.threads, thread_name_prefix="e5np-worker")
                self._workers = workers, self.threads
            return workers

    def __getstate__(self):                                            # pickled (to a spawned process): no threads
        return {**self.__dict__, "_workers": None, "_workers_lock": None, "_workers_pid": None}

    def encode_queries(self, texts, **kwargs):
        """encode() with the model's query prefix ("query: " for E5) added to each text, instead of any default."""
        return self.encode(texts, prefix=self.prefixes.get("query", ""), **kwargs)

    def encode_passages(self, texts, **kwargs):
        """encode() with the model's passage prefix ("passage: " for E5) added to each text, instead of any default."""
        return self.encode(texts, prefix=self.prefixes.get("passage", ""), **kwargs)

    def forward(self, texts, *, output_attentions=False):
        """One batch, with everything kept: tokens, every layer's hidden states, optionally attentions."""
        texts, _ = as_text_list(texts)
        batch = self.tokenize(texts)
        last, hidden_states, attentions = self._run(batch, keep_hidden=True, keep_attention=output_attentions)
        pooled = self._pool(last, batch.attention_mask, normalize=False)
        embeddings = reference.l2_normalize(pooled) if self.normalize else pooled
        return Forward(batch.tokens, batch.input_ids, batch.attention_mask, hidden_states, attentions,
                       pooled, embeddings)


def load(name_or_path="intfloat/e5-small", *, revision=None, local_files_only=None, cache_dir=None, token=None,
         dtype="float32", max_length=None, pooling=None, normalize=None, prefixes=None, threads=None):
    """Load a BERT-family checkpoint from a local directory or a Hugging Face hub id.

    dtype "float64" (or np.float64) runs the whole forward pass in double precision: slower, the ground truth that
    float32 engines are measured against. max_length defaults to a sentence-transformers checkpoint's
    max_seq_length, else the tokenizer's model_max_length, capped by the position embeddings (512 for e5-small).
    pooling ("mean", "cls", "max", "mean_sqrt_len") and normalize default to the checkpoint's
    sentence-transformers modules.json, else E5's mean + L2. prefixes ({"query": ..., "passage": ...})
    default to the checkpoint's declared prompts, else E5's for E5 models, else none; encode() adds the prompt the
    checkpoint names as its default_prompt_name, if it names one (model.default_prefix).
    threads: batches encode() runs at once (default: the CPUs this process may use, see blas.available_cpus).
    """
    dtype = dtype_name(dtype)
    check_options(pooling, normalize, prefixes, threads)
    directory = resolve(name_or_path, revision=revision, local_files_only=local_files_only,
                        cache_dir=cache_dir, token=token)
    config = load_config(directory)
    limit = model_max_length(directory, config.max_tokens)
    if max_length is None:
        max_length = limit
    elif integer(max_length) is None or not 1 < max_length <= config.max_tokens:
        raise ValueError(f"max_length must be an integer from 2 to {config.max_tokens}, got {max_length!r}")
    max_length = int(max_length)
    params = load_weights(directory, config, DTYPES[dtype])
    tokenizer = load_tokenizer(directory, max_length)

    head = load_sentence_transformers_head(directory)
    st_pooling, st_normalize = head or ("mean", True)
    named_e5 = e5_prefixes(name_or_path, directory)                    # {} unless the names say E5
    if head and not st_normalize and named_e5:
        # E5 is trained and evaluated on unit vectors: its model cards normalize after pooling (F.normalize in the
        # transformers example, encode(..., normalize_embeddings=True) in the sentence-transformers one, as a
        # modules.json without Normalize needs). E5's vectors are unit vectors whatever modules.json says.
        st_normalize = True
    if prefixes is None:
        prefixes = load_prompts(directory) or named_e5
    return Model(params, config, tokenizer, max_length, DTYPES[dtype], name=str(name_or_path), directory=directory,
                 threads=threads, pooling=pooling or st_pooling,
                 normalize=st_normalize if normalize is None else normalize, prefixes=prefixes,
                 default_prefix=load_default_prompt(directory))
