"""Texts longer than the model's limit, embedded whole: split into token windows, each embedded on its own.

A text (with its prefix) is tokenized once, whole, by a copy of the model's tokenizer that does not truncate.
A text that fits in max_length tokens is one window, whose ids are exactly the ones Model.embed gives it. A longer
one is cut into windows of at most max_length tokens, special tokens included: each window is

    the post-processor's leading special tokens ([CLS] / <s>) + the prefix's tokens + a run of the text's tokens
    + its trailing special tokens ([SEP] / </s>),

and consecutive runs share `chunk_overlap` tokens. The prefix's tokens are the leading tokens of the tokenized
prefix + text that lie wholly inside the prefix (for a SentencePiece model the "▁" of the text's first word
belongs to the text), so every window starts as the whole text's ids do.

Attention never crosses windows: each window is encoded on its own, as a text of its own would be; a token sees
only the tokens of its window.

chunking="mean" (Model.encode): the text's vector is the mean of its windows' mean-pooled vectors weighted by each
window's token count (the tokens its mean pooling averaged over: special and prefix tokens included; a token of
an overlap counts in each window that holds it), i.e. the mean over every token position of every window; then
L2-normalized if the model normalizes. The mean and the norm are taken in float64 and the vector returned in the
model's dtype. A text of one window gets exactly the vector it gets without chunking (the same ids, pooled and
normalized by the same operations). Only mean pooling is averaged so: a model that pools otherwise (cls, max,
mean_sqrt_len) is refused; Model.encode_chunks gives its windows' vectors, to combine as the caller sees fit.
"""

import copy
import threading
import weakref
from dataclasses import dataclass

import numpy as np

from .reference import l2_normalize
from .options import check_flag, check_positive_int, integer
from .prefixes import check_prefix
from .tokenizer import load_tokenizer, not_unicode

CHUNKINGS = ("mean",)
# The default overlap: 1/8 of the text tokens a window holds (63 of the 508 of an e5-small passage window).
DEFAULT_OVERLAP_FRACTION = 8
# Texts tokenized and embedded at a time (bounded memory): this many texts, or fewer holding this many characters.
GROUP_TEXTS = 4096
GROUP_CHARS = 4_000_000


@dataclass
class Chunks:
    """One text's windows, as Model.encode_chunks gives them (k >= 1 windows)."""

    vectors: np.ndarray       # [k, H] each window's pooled vector (L2-normalized if the model normalizes)
    spans: list               # k (start, end): text[start:end] is the passage window i covers (the text without
                              # its prefix; from the tokenizer's character offsets of the window's first and last
                              # text tokens; (0, 0) for a text of no tokens)
    token_counts: np.ndarray  # [k] int64: the tokens each window was embedded from, special and prefix tokens too


@dataclass
class Windows:
    """One text's windows before embedding."""

    token_ids: list           # k lists of ids, each at most max_length, special tokens included
    spans: list               # k (start, end) character spans into the text (without the prefix)


def check_chunking(chunking, chunk_overlap=None):
    if chunking is not None and chunking not in CHUNKINGS:
        raise ValueError(f"chunking must be None or one of {list(CHUNKINGS)}, got {chunking!r}")
    if chunking is None and chunk_overlap is not None:
        raise ValueError("chunk_overlap is for chunking='mean': without chunking a long text is truncated")
    return chunking


def check_chunk_pooling(pooling):
    if pooling != "mean":
        raise ValueError(f"chunking='mean' averages mean-pooled windows, but this model pools by {pooling!r}: "
                         "use encode_chunks() for its windows' vectors, and combine them yourself")


class Splitter:
    """Cuts a model's texts into windows (see the module's doc). prefix: added before each text.
    tokenizer: one that neither truncates nor pads (see untruncated)."""

    def __init__(self, tokenizer, max_length, prefix="", chunk_overlap=None):
        self.tokenizer = tokenizer
        self.max_length, self.prefix = max_length, prefix
        specials = self.tokenizer.num_special_tokens_to_add(False)
        prefix_tokens = len(self.tokenizer.encode(prefix, add_special_tokens=False).ids) if prefix else 0
        self.room = max_length - specials - prefix_tokens            # text tokens a window holds
        if self.room < 2:
            raise ValueError(f"max_length={max_length} leaves {max(self.room, 0)} token(s) a window for the text "
                             f"after {specials} special and {prefix_tokens} prefix token(s): too few to chunk")
        if chunk_overlap is None:
            self.overlap = max(self.room // DEFAULT_OVERLAP_FRACTION, 1)
        else:
            self.overlap = check_overlap(chunk_overlap, self.room, max_length)

    def split(self, texts):
        """Texts -> one Windows each."""
        if error := not_unicode(texts, range(len(texts))):
            raise error
        prefixed = [self.prefix + text for text in texts] if self.prefix else texts
        encodings = self.tokenizer.encode_batch(prefixed, add_special_tokens=False)
        return [self._windows(encoding, text) for encoding, text in zip(encodings, texts)]

    def _windows(self, encoding, text):
        full = self.tokenizer.post_process(encoding)                   # what encode() gives, never truncated
        offsets, n_prefix = encoding.offsets, len(self.prefix)
        p = 0
        if n_prefix:
            while p < len(offsets) and offsets[p][1] <= n_prefix:     # the tokens wholly inside the prefix
                p += 1
        text_offsets = [(max(start - n_prefix, 0), max(end - n_prefix, 0)) for start, end in offsets[p:]]

        def span(first, last):                                         # text tokens [first, last)
            if first == last:
                return (0, 0)
            return (text_offsets[first][0], text_offsets[last - 1][1])

        n = len(text_offsets)
        if len(full.ids) <= self.max_length:
            return Windows([full.ids], [span(0, n)])
        sequence_ids = full.sequence_ids
        head = next(i for i, s in enumerate(sequence_ids) if s is not None)
        tail = len(sequence_ids) - next(i for i, s in enumerate(reversed(sequence_ids)) if s is not None)
        ids = full.ids
        before, after, prefix_ids, text_ids = ids[:head], ids[tail:], ids[head:head + p], ids[head + p:tail]
        room = self.max_length - len(before) - len(after) - p          # (the prefix in context may differ by a token)
        if room <= self.overlap:
            raise ValueError(f"chunk_overlap={self.overlap} leaves no room for new tokens in a window of {room} text "
                             f"tokens")
        windows, spans, start = [], [], 0
        while True:
            end = min(start + room, n)
            windows.append(before + prefix_ids + text_ids[start:end] + after)
            spans.append(span(start, end))
            if end == n:
                return Windows(windows, spans)
            start = end - self.overlap


def chunk_options(model, kind, prefix, chunk_overlap, normalize, batch_size, threads):
    """(prefix, chunk_overlap, normalize, batch_size, threads), checked, as mean_of_windows and chunks_of take them:
    the model's prefix for `kind` unless `prefix` is given, its defaults for None."""
    if kind is not None and prefix is not None:
        raise ValueError("give kind or prefix, not both")
    prefix = model.prefix(kind) if prefix is None else prefix
    check_prefix("prefix", prefix)
    normalize = model.normalize if normalize is None else check_flag("normalize", normalize)
    threads = model.threads if threads is None else check_positive_int("threads", threads)
    return prefix, chunk_overlap, normalize, check_positive_int("batch_size", batch_size), threads


def check_overlap(chunk_overlap, room, max_length):
    overlap = integer(chunk_overlap)
    if overlap is None or overlap < 1:
        raise ValueError(f"chunk_overlap must be a positive integer (tokens shared by consecutive windows), "
                         f"got {chunk_overlap!r}")
    if overlap >= room:
        raise ValueError(f"chunk_overlap={overlap} must be less than the {room} text tokens a window holds "
                         f"(max_length={max_length}, less the special and prefix tokens)")
    return overlap


PROBE = "Probe: Ünïcode, 数字 123 [CLS] text."


def untruncated(tokenizer, directory=None, max_length=None):
    """A copy of the tokenizer that neither truncates nor pads: made again from the checkpoint's files as load()
    made it, when `directory` is given and that gives the same tokens, else a deep copy (which serializes it:
    tokenizers < 0.20 then print a warning on stdout for a vocabulary with holes in its ids)."""
    copied = None
    if directory is not None:
        copied = load_tokenizer(directory, max_length)
        same = (copied.get_vocab_size(True) == tokenizer.get_vocab_size(True) and
                copied.encode(PROBE).ids == tokenizer.encode(PROBE).ids)
        copied = copied if same else None
    copied = copied or copy.deepcopy(tokenizer)
    copied.no_truncation()
    copied.no_padding()
    return copied


_untruncated = weakref.WeakKeyDictionary()                             # model -> (its tokenizer, the copy)
_untruncated_lock = threading.Lock()


def model_splitter(model, prefix, chunk_overlap):
    """A Splitter for the model's texts, its tokenizer's untruncated copy made once a model (a copy takes ~0.1 s
    for a 30,000-token vocabulary), and again when model.tokenizer is replaced."""
    with _untruncated_lock:
        tokenizer, copied = _untruncated.get(model, (None, None))
        if tokenizer is not model.tokenizer:
            copied = untruncated(model.tokenizer, model.directory, model.max_length)
            _untruncated[model] = (model.tokenizer, copied)
    return Splitter(copied, model.max_length, prefix, chunk_overlap)


def groups(texts):
    """Slices of texts to tokenize and embed at a time: at most GROUP_TEXTS texts or GROUP_CHARS characters (or one
    longer text)."""
    start, chars = 0, 0
    for i, text in enumerate(texts):
        if i > start and (i - start == GROUP_TEXTS or chars + len(text) > GROUP_CHARS):
            yield slice(start, i)
            start, chars = i, 0
        chars += len(text)
    if start < len(texts):
        yield slice(start, len(texts))


def embed_windows(model, windows, normalize, batch_size, threads):
    """All the windows' pooled vectors [sum k, H] in one embed_tokens run (shared batches), and where each text's
    windows start in it."""
    token_ids = [ids for w in windows for ids in w.token_ids]
    starts = np.cumsum([0] + [len(w.token_ids) for w in windows])
    return model.embed_tokens(token_ids, normalize=normalize, batch_size=batch_size, threads=threads), starts


def combine_windows(windows, pooled, normalize, dtype):
    """(vectors [n, H] in dtype, token counts [n]) of n texts from their windows and the windows' pooled vectors
    pooled [sum k, H] (not normalized, in the windows' order): chunking="mean" (see the module's doc). The service
    calls it too, with windows it embedded among other requests' texts."""
    vectors, counts = np.empty((len(windows), pooled.shape[-1]), dtype), np.zeros(len(windows), np.int64)
    start = 0
    for i, w in enumerate(windows):
        rows = pooled[start:start + len(w.token_ids)]
        start += len(w.token_ids)
        weights = np.array([len(ids) for ids in w.token_ids], np.int64)
        counts[i] = weights.sum()
        if len(rows) == 1:                                             # today's vector, bit for bit
            vectors[i] = l2_normalize(rows)[0] if normalize else rows[0]
            continue
        mean = (rows.astype(np.float64) * weights[:, None]).sum(axis=0) / weights.sum()
        vectors[i] = l2_normalize(mean) if normalize else mean
    return vectors, counts


def mean_of_windows(model, texts, prefix, chunk_overlap, normalize, batch_size, threads, progress=None):
    """(vectors [n, H] in the model's dtype, token counts [n]: the tokens embedded, windows' overlaps counted in
    each), chunking="mean" (see the module's doc)."""
    check_chunk_pooling(model.pooling)
    splitter = model_splitter(model, prefix, chunk_overlap)
    vectors, counts = np.empty((len(texts), model.dim), model.dtype), np.zeros(len(texts), np.int64)
    for part in groups(texts):
        windows = splitter.split(texts[part])
        pooled, _ = embed_windows(model, windows, False, batch_size, threads)
        vectors[part], counts[part] = combine_windows(windows, pooled, normalize, model.dtype)
        if progress is not None:
            progress(part.stop - part.start)
    return vectors, counts


def chunks_of(model, texts, prefix, chunk_overlap, normalize, batch_size, threads, progress=None):
    """Each text's Chunks (see Model.encode_chunks)."""
    splitter = model_splitter(model, prefix, chunk_overlap)
    result = []
    for part in groups(texts):
        windows = splitter.split(texts[part])
        vectors, starts = embed_windows(model, windows, normalize, batch_size, threads)
        result += [Chunks(vectors[starts[i]:starts[i + 1]], w.spans,
                          np.array([len(ids) for ids in w.token_ids], np.int64)) for i, w in enumerate(windows)]
        if progress is not None:
            progress(part.stop - part.start)
    return result
