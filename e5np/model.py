"""The e5np model object: load a checkpoint, tokenize, batch, run the encoder, pool, normalize."""

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import bert
from .checkpoint import load_config, load_weights
from .hub import resolve
from .tokenizer import load_tokenizer, model_max_length, pad, tokenize

QUERY_PREFIX = "query: "
PASSAGE_PREFIX = "passage: "
DTYPES = {"float32": np.float32, "float64": np.float64}


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


@dataclass
class Forward:
    """Everything one forward pass computed, for inspection (see Model.forward)."""

    tokens: list                # per text, its token strings
    input_ids: np.ndarray       # [B, T]
    attention_mask: np.ndarray  # [B, T]
    hidden_states: list         # L + 1 arrays [B, T, H]: the embedding output, then each layer's output
    attentions: list            # L arrays [B, N, T, T] of attention probabilities, or None
    pooled: np.ndarray          # [B, H] mean over real tokens
    embeddings: np.ndarray      # [B, H] pooled, L2-normalized

    @property
    def last_hidden_state(self):
        return self.hidden_states[-1]


def length_batches(lengths, batch_size, max_tokens):
    """Group text indices into batches of similar token length, so little compute goes to padding.

    Texts are taken shortest first; a batch closes at batch_size texts, or when padding it to its
    longest text would exceed max_tokens (a lone text longer than that still gets its own batch).
    """
    batches, current = [], []
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        if current and (len(current) == batch_size or (len(current) + 1) * lengths[i] > max_tokens):
            batches.append(current)
            current = []
        current.append(i)
    return batches + [current] if current else batches


class Model:
    """A BERT sentence encoder with E5's mean pooling and L2 normalization."""

    max_batch_tokens = 8192  # padded tokens per forward pass: bounds memory, keeps long texts apart

    def __init__(self, params, config, tokenizer, max_length, dtype=np.float32, name=None, directory=None):
        self.params = params
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
        return (f"e5np.Model({self.name!r}, layers={c.num_hidden_layers}, hidden={c.hidden_size}, "
                f"heads={c.num_attention_heads}, max_length={self.max_length}, dtype={np.dtype(self.dtype).name})")

    def tokenize(self, texts):
        """Texts -> TokenBatch (ids, mask, token strings, which texts were truncated)."""
        texts, _ = as_text_list(texts)
        return tokenize(self.tokenizer, texts)

    def _run(self, batch, keep_hidden=False, keep_attention=False):
        return bert.encode(batch.input_ids, batch.attention_mask, self.params,
                           n_heads=self.config.num_attention_heads, eps=self.config.layer_norm_eps,
                           keep_hidden=keep_hidden, keep_attention=keep_attention)

    def encode(self, texts, *, batch_size=32, normalize=True, truncation="warn"):
        """Embed texts: a str gives a [H] vector, a list of n strs an [n, H] array (float32 by default).

        Texts are batched by token length (so little compute goes to padding) and returned in input order.
        truncation: what to do when a text is longer than max_length tokens and loses its tail:
        "warn" (a TruncationWarning naming the texts), "ignore", or "error" (ValueError).
        """
        texts, single = as_text_list(texts)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if truncation not in ("warn", "ignore", "error"):
            raise ValueError(f"truncation must be 'warn', 'ignore' or 'error', got {truncation!r}")

        encodings = self.tokenizer.encode_batch(texts)
        truncated = [i for i, e in enumerate(encodings) if e.overflowing]
        if truncated and truncation != "ignore":
            message = (f"{len(truncated)} of {len(texts)} text(s) exceed max_length={self.max_length} tokens and "
                       f"were truncated: indices {truncated[:10]}{' ...' if len(truncated) > 10 else ''}")
            if truncation == "error":
                raise ValueError(message)
            warnings.warn(message, TruncationWarning, stacklevel=2)

        out = np.empty((len(texts), self.dim), dtype=self.dtype)
        for rows in length_batches([len(e.ids) for e in encodings], batch_size, self.max_batch_tokens):
            batch = pad([encodings[i] for i in rows])
            hidden, _, _ = self._run(batch)
            vectors = bert.mean_pool(hidden, batch.attention_mask)                 # [B, T, H] -> [B, H]
            out[rows] = bert.l2_normalize(vectors) if normalize else vectors
        return out[0] if single else out

    def encode_queries(self, texts, **kwargs):
        """encode() with E5's "query: " prefix added to each text."""
        texts, single = as_text_list(texts)
        vectors = self.encode([QUERY_PREFIX + t for t in texts], **kwargs)
        return vectors[0] if single else vectors

    def encode_passages(self, texts, **kwargs):
        """encode() with E5's "passage: " prefix added to each text."""
        texts, single = as_text_list(texts)
        vectors = self.encode([PASSAGE_PREFIX + t for t in texts], **kwargs)
        return vectors[0] if single else vectors

    def forward(self, texts, *, output_attentions=False):
        """One batch, with everything kept: tokens, every layer's hidden states, optionally attentions."""
        texts, _ = as_text_list(texts)
        batch = self.tokenize(texts)
        last, hidden_states, attentions = self._run(batch, keep_hidden=True, keep_attention=output_attentions)
        pooled = bert.mean_pool(last, batch.attention_mask)
        return Forward(batch.tokens, batch.input_ids, batch.attention_mask, hidden_states, attentions,
                       pooled, bert.l2_normalize(pooled))


def load(name_or_path="intfloat/e5-small", *, revision=None, local_files_only=None, cache_dir=None, token=None,
         dtype="float32", max_length=None):
    """Load a BERT checkpoint from a local directory or a Hugging Face hub id.

    dtype "float64" runs the whole forward pass in double precision: slower, the ground truth that
    float32 engines are measured against. max_length defaults to the tokenizer's model_max_length,
    capped by the model's position embeddings (512 for e5-small).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    directory = resolve(name_or_path, revision=revision, local_files_only=local_files_only,
                        cache_dir=cache_dir, token=token)
    config = load_config(directory)
    limit = model_max_length(directory, config.max_position_embeddings)
    if max_length is None:
        max_length = limit
    elif not isinstance(max_length, int) or not 1 < max_length <= config.max_position_embeddings:
        raise ValueError(f"max_length must be an integer from 2 to {config.max_position_embeddings}, got {max_length!r}")
    params = load_weights(directory, config, DTYPES[dtype])
    tokenizer = load_tokenizer(directory, max_length)
    return Model(params, config, tokenizer, max_length, DTYPES[dtype], name=str(name_or_path), directory=directory)
