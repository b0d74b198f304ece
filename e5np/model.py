"""The e5np model: a loaded checkpoint, and the one path from texts to vectors that encode(), the command line,
the server and the integrations all take (Model.embed; Model.embed_tokens below it, for token ids made elsewhere).

texts -> prefixed -> tokenized (a window of texts at a time) -> length-sorted batches on the process's workers
-> the encoder -> pooled -> normalized -> each vector back in its text's row.
"""

import contextlib
import os
import sys
import warnings
from dataclasses import dataclass

import numpy as np

from . import engine, reference
from .batching import length_batches, run_batches
from .checkpoint import load_config, load_default_prompt, load_prompts, load_sentence_transformers_head, load_weights
from .chunking import check_chunk_pooling, check_chunking, chunk_options, chunks_of, mean_of_windows
from .hub import resolve
from .options import DTYPES, as_text_list, check_flag, check_positive_int, check_truncation, dtype_name, integer
from .prefixes import check_kind, check_prefix, check_prefixes, e5_prefixes
from .quantize import check_precision, check_ranges, quantize
from .runtime import available_cpus, one_blas_thread
from .tokenizer import (TokenBatch, encode_batch, load_tokenizer, model_max_length, not_unicode, overflowing, pad_ids,
                        tokenize)

# Texts tokenized at a time. A tokenized text costs ~230 bytes a token (ids, offsets, token strings), so a large
# input tokenized at once would hold gigabytes; 4,096 texts are at most 0.5 GB, and seconds to minutes of
# embedding, so the seams between windows cost nothing measurable.
ENCODE_WINDOW = 4096
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class TruncationWarning(UserWarning):
    """Some texts were longer than the model's max length and lost their tail."""


class TruncationError(ValueError):
    """Texts are longer than the model's max length, and truncation="error" was asked for. indices: which."""

    def __init__(self, message, indices):
        super().__init__(message)
        self.indices = indices


@dataclass
class Embedded:
    """What Model.embed gives for n texts."""

    vectors: np.ndarray         # [n, H] in the model's dtype, in the texts' order
    token_counts: np.ndarray    # [n] int64: the tokens each text was embedded from, special tokens included
    truncated: list             # indices of the texts that lost their tail to max_length


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


def caller_stacklevel():
    """The stacklevel that makes a warning name the first caller outside the e5np package (the user's line)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level


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


class NoProgress:
    """What progress_bar gives when it is off: tqdm's interface, without importing tqdm (a fifth of a second, which
    the first encode() after load would pay)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        pass


def progress_bar(total, enabled):
    """A tqdm bar on stderr counting texts (tqdm comes with huggingface-hub); a no-op one when not enabled."""
    if not enabled:
        return NoProgress()
    from tqdm import tqdm

    return tqdm(total=total, unit="text", desc="e5np")


class Model:
    """A BERT-family sentence encoder: tokenize, encode, pool (E5: mean), normalize (E5: L2)."""

    # Padded tokens per forward pass: bounds activation memory (~22 MB a worker). Larger batches run long text
    # hardly faster, and their ever-different array sizes leave glibc's per-thread heaps holding far more memory.
    max_batch_tokens = 2048

    def __init__(self, params, config, tokenizer, max_length, dtype=np.float32, name=None, directory=None,
                 threads=None, pooling="mean", normalize=True, prefixes=None, default_prefix=""):
        check_options(pooling, normalize, prefixes, threads)
        check_prefix("default_prefix", default_prefix)
        self.params = params                   # the checkpoint's weights, as e5np.reference reads them
        # the fast engine's: the same arrays and each linear weight's column blocks too (for queries: e5np.engine)
        float64 = np.dtype(dtype) == np.float64                       # the reference runs those
        self.engine_params = params if float64 else engine.with_blocks(params)
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
        float64 = np.dtype(self.dtype) == np.float64
        run, params = (reference.forward, self.params) if float64 else (engine.encode, self.engine_params)
        # A pass of few tokens (a query) runs its BLAS on one thread: OpenBLAS's second thread gains little on
        # products of a few rows, and waits for a core whenever another process holds it (docs/performance.md,
        # Speed, second round: 60x slower a query on a busy 2-core machine).
        few = int(np.count_nonzero(batch.attention_mask)) <= engine.ONE_THREAD_TOKENS
        with one_blas_thread() if few else contextlib.nullcontext():
            return run(batch.input_ids, batch.attention_mask, params, n_heads=self.config.num_attention_heads,
                       eps=self.config.layer_norm_eps, position_offset=self.config.position_offset,
                       keep_hidden=keep_hidden, keep_attention=keep_attention)

    def prefix(self, kind=None):
        """What the model adds before a text of this kind: "query" or "passage" ("document" is a passage) gives
        self.prefixes' ("query: " / "passage: " for E5; "" where the model has none), None the default prefix (the
        prompt a sentence-transformers checkpoint names as its default, as its encode adds it; "" for most)."""
        kind = check_kind(kind)
        return self.default_prefix if kind is None else self.prefixes.get(kind, "")

    def embed(self, texts, *, kind=None, prefix=None, normalize=None, batch_size=32, truncation="warn",
              threads=None, progress=None):
        """Texts -> an Embedded: their vectors [n, H], the tokens each took, and which lost their tail.

        The one path from texts to vectors; encode() and everything built on e5np call it. Each text gets a
        prefix (the model's for its kind, see prefix(); or `prefix` itself), is tokenized (ENCODE_WINDOW texts at a
        time: bounded memory) and cut at max_length; then embed_tokens runs them.
        truncation: a text longer than max_length "warn"s (a TruncationWarning naming the texts), is embedded from
        its first tokens ("ignore"), or stops the call before any work ("error": TruncationError).
        progress: called with each batch's number of texts once its vectors are in (a progress bar's update).
        """
        texts, _ = as_text_list(texts)
        if kind is not None and prefix is not None:
            raise ValueError("give kind or prefix, not both")
        if prefix is None:
            prefix = self.prefix(kind)
        check_prefix("prefix", prefix)
        texts = [prefix + text for text in texts] if prefix else texts
        batch_size = check_positive_int("batch_size", batch_size)
        check_truncation(truncation)
        threads = self.threads if threads is None else check_positive_int("threads", threads)
        normalize = self.normalize if normalize is None else check_flag("normalize", normalize)

        if error := not_unicode(texts, range(len(texts))):            # found before any work, not hours into it
            raise error
        if truncation == "error" and (too_long := self._too_long(texts)):
            raise TruncationError(self._truncation_message(too_long, len(texts)), too_long)
        vectors, counts, truncated = np.empty((len(texts), self.dim), self.dtype), np.empty(len(texts), np.int64), []
        for start, encodings in self._tokenized_windows(texts):
            truncated += overflowing(encodings, start)
            token_ids = [e.ids for e in encodings]
            counts[start:start + len(token_ids)] = [len(ids) for ids in token_ids]
            vectors[start:start + len(token_ids)] = self.embed_tokens(token_ids, normalize=normalize,
                                                                      batch_size=batch_size, threads=threads,
                                                                      progress=progress)
        if truncated and truncation == "warn":
            warnings.warn(self._truncation_message(truncated, len(texts)), TruncationWarning,
                          stacklevel=caller_stacklevel())
        return Embedded(vectors, counts, truncated)

    def embed_tokens(self, token_ids, *, normalize=None, batch_size=32, threads=None, progress=None):
        """Token id sequences (each with its special tokens, at most max_length) -> their vectors [n, H].

        The part of embed() after tokenizing, for callers that make the ids themselves (windows of a long text, a
        server's requests gathered into shared batches). The sequences are batched by length (texts of equal length
        share attention steps) and run `threads` batches at a time on the process's workers (runtime.workers),
        which every concurrent call shares; NumPy releases the GIL in its kernels."""
        threads = self.threads if threads is None else check_positive_int("threads", threads)
        normalize = self.normalize if normalize is None else check_flag("normalize", normalize)

        def embed(rows):
            input_ids, attention_mask = pad_ids([token_ids[i] for i in rows], pad_id=self.config.pad_token_id)
            hidden, _, _ = self._run(TokenBatch(input_ids, attention_mask, None, None))
            return self._pool(hidden, attention_mask, normalize)      # [B, T, H] -> [B, H]

        batches = length_batches([len(ids) for ids in token_ids], batch_size, self.max_batch_tokens, threads)
        out = np.empty((len(token_ids), self.dim), dtype=self.dtype)
        return run_batches(embed, batches, out, threads, progress)

    def encode(self, texts, *, batch_size=32, normalize=None, truncation="warn", threads=None,
               show_progress_bar=False, prefix=None, chunking=None, chunk_overlap=None, precision=None, ranges=None):
        """Embed texts: a str gives a [H] vector, a list of n strs an [n, H] array (float32 by default).

        Texts are batched by token length and returned in input order (see embed).
        truncation: what to do when a text is longer than max_length tokens and loses its tail:
        "warn" (a TruncationWarning naming the texts), "ignore", or "error" (TruncationError, a ValueError).
        threads: batches run at once (default self.threads), on the process's workers, which concurrent calls share.
        normalize: L2-normalize the pooled vectors (default: what the checkpoint does; E5 does).
        show_progress_bar: a tqdm bar on stderr counting the texts embedded, batch by batch.
        prefix: added to each text (default self.default_prefix: the prompt a sentence-transformers checkpoint
        names as its default_prompt_name, as sentence-transformers' encode adds it; "" for most models, E5 too).
        chunking: None (a long text loses its tail, see truncation) or "mean": a text longer than max_length is
        embedded whole, as overlapping windows of max_length tokens, each with the prefix and special tokens,
        whose mean-pooled vectors are averaged, weighted by their token counts (e5np.chunking tells exactly;
        attention never crosses windows; mean-pooling models only). A text that fits gets the same vector.
        Nothing is truncated then, so `truncation` has nothing to do.
        chunk_overlap: tokens consecutive windows share (default 1/8 of the text tokens a window holds).
        precision: None (the model's dtype), "float32", "int8", "uint8", "binary" or "ubinary": the vectors as
        e5np.quantize gives them (sentence-transformers' quantize_embeddings, byte for byte); int8 / uint8 take
        ranges [2, H], each dimension's min and max (e5np.calibration_ranges), else those of these vectors.
        """
        texts, single = as_text_list(texts)
        show_progress_bar = check_flag("show_progress_bar", show_progress_bar)
        check_chunking(chunking, chunk_overlap)
        check_truncation(truncation)
        if precision is not None:
            check_precision(precision)
            if ranges is not None:
                check_ranges(ranges, self.dim)
        if chunking is not None:
            check_chunk_pooling(self.pooling)
        with progress_bar(len(texts), show_progress_bar) as bar:
            if chunking is None:
                vectors = self.embed(texts, prefix=prefix, normalize=normalize, batch_size=batch_size,
                                     truncation=truncation, threads=threads, progress=bar.update).vectors
            else:
                vectors, _ = mean_of_windows(self, texts, *chunk_options(self, None, prefix, chunk_overlap, normalize,
                                                                         batch_size, threads), progress=bar.update)
        if precision is not None:
            vectors = quantize(vectors, precision, ranges)
        return vectors[0] if single else vectors

    def encode_chunks(self, texts, *, kind=None, prefix=None, chunk_overlap=None, normalize=None, batch_size=32,
                      threads=None, show_progress_bar=False):
        """Each text's windows: a str gives one e5np.chunking.Chunks, a list of n strs a list of n.

        Chunks(vectors [k, H], spans, token_counts [k]): the vectors of the k windows a text is cut into (as
        encode(chunking="mean") cuts it: one window for a text that fits in max_length, whose vector is encode()'s),
        each pooled as the model pools (normalized if it normalizes), and spans[i] = (start, end), the characters
        text[start:end] window i covers in the text as given (without its prefix).
        kind / prefix: as embed() takes them ("query", "passage"; default the model's default prefix).
        chunk_overlap: tokens consecutive windows share (default 1/8 of the text tokens a window holds).
        """
        texts, single = as_text_list(texts)
        show_progress_bar = check_flag("show_progress_bar", show_progress_bar)
        with progress_bar(len(texts), show_progress_bar) as bar:
            result = chunks_of(self, texts, *chunk_options(self, kind, prefix, chunk_overlap, normalize, batch_size,
                                                           threads), progress=bar.update)
        return result[0] if single else result

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

    def encode_queries(self, texts, **kwargs):
        """encode() with the model's query prefix ("query: " for E5) added to each text, instead of any default."""
        return self.encode(texts, prefix=self.prefix("query"), **kwargs)

    def encode_passages(self, texts, **kwargs):
        """encode() with the model's passage prefix ("passage: " for E5) added to each text, instead of any default."""
        return self.encode(texts, prefix=self.prefix("passage"), **kwargs)

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
    threads: batches encode() runs at once (default: the CPUs this process may use, see runtime.available_cpus).
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
