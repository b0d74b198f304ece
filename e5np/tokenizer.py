"""Text -> token ids with Hugging Face `tokenizers`, truncated and padded the way transformers does."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoint import CheckpointError, read_json

TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.txt"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
ST_CONFIG_FILE = "sentence_bert_config.json"
# transformers' placeholder for "no limit" in tokenizer_config.json; anything this large means unset
UNSET_MAX_LENGTH = 10**12


@dataclass
class TokenBatch:
    """Token ids of several texts, right-padded to the longest."""

    input_ids: np.ndarray       # [B, T] int64
    attention_mask: np.ndarray  # [B, T] int64, 1 for real tokens, 0 for padding
    tokens: list                # per text, its token strings (without padding)
    truncated: np.ndarray       # [B] bool, True where the text lost tokens to max_length

    @property
    def lengths(self):
        return self.attention_mask.sum(axis=1)


def model_max_length(directory, max_position_embeddings):
    """The longest input the model takes, capped by its positions: a sentence-transformers checkpoint's
    max_seq_length, what sentence-transformers truncates at (256 for all-MiniLM-L6-v2, whose tokenizer_config.json
    says 512), else tokenizer_config.json's model_max_length."""
    for name, key in ((ST_CONFIG_FILE, "max_seq_length"), (TOKENIZER_CONFIG_FILE, "model_max_length")):
        path = Path(directory) / name
        declared = read_json(path).get(key) if path.is_file() else None
        if isinstance(declared, int) and 0 < declared < UNSET_MAX_LENGTH:
            return min(declared, max_position_embeddings)
    return max_position_embeddings


def build_wordpiece(directory):
    """A BERT WordPiece tokenizer from vocab.txt and tokenizer_config.json (no tokenizer.json present)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    directory = Path(directory)
    settings = {}
    if (directory / TOKENIZER_CONFIG_FILE).is_file():
        settings = read_json(directory / TOKENIZER_CONFIG_FILE)
    vocab_path = directory / VOCAB_FILE
    try:
        vocab = {}
        with open(vocab_path, encoding="utf-8") as f:
            for line in f:
                vocab.setdefault(line.rstrip("\n"), len(vocab))
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{vocab_path}: not readable ({e})") from None
    cls, sep = settings.get("cls_token", "[CLS]"), settings.get("sep_token", "[SEP]")
    unk = settings.get("unk_token", "[UNK]")
    for token in (cls, sep, unk):
        if token not in vocab:
            raise CheckpointError(f"{vocab_path}: special token {token!r} is not in the vocabulary")

    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token=unk, max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=settings.get("tokenize_chinese_chars", True),
        strip_accents=settings.get("strip_accents"),
        lowercase=settings.get("do_lower_case", True),
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])])
    tokenizer.add_special_tokens([t for t in (settings.get("pad_token", "[PAD]"), settings.get("mask_token", "[MASK]"))
                                  if t in vocab] + [cls, sep, unk])
    return tokenizer


def tokenizer_files(directory):
    """The files the checkpoint's tokenizer is made from: tokenizer.json, else vocab.txt (a WordPiece vocabulary)
    with tokenizer_config.json's settings if there is one."""
    directory = Path(directory)
    if (directory / TOKENIZER_FILE).is_file():
        return [directory / TOKENIZER_FILE]
    if (directory / VOCAB_FILE).is_file():
        return [directory / name for name in (VOCAB_FILE, TOKENIZER_CONFIG_FILE) if (directory / name).is_file()]
    raise CheckpointError(f"{directory}: no tokenizer found (expected {TOKENIZER_FILE}, or {VOCAB_FILE} "
                          f"with {TOKENIZER_CONFIG_FILE})")


def load_tokenizer(directory, max_length):
    """The checkpoint's tokenizer, set to truncate at max_length and not to pad (we pad per batch)."""
    from tokenizers import Tokenizer

    path = tokenizer_files(directory)[0]
    if path.name == TOKENIZER_FILE:
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as e:  # the Rust side raises plain Exception for every parse error
            raise CheckpointError(f"{path}: not a valid tokenizers file ({e})") from None
    else:
        tokenizer = build_wordpiece(directory)
    # A tokenizer.json may carry its own padding/truncation (all-MiniLM-L6-v2 pads every text to 128);
    # transformers overrides both per call, and so do we.
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    if lowercases_first(directory) and not has_lowercase_step(read_json(path).get("normalizer")
                                                              if path.name == TOKENIZER_FILE else None):
        from tokenizers import normalizers

        existing = tokenizer.normalizer
        tokenizer.normalizer = (normalizers.Lowercase() if existing is None else
                                normalizers.Sequence([normalizers.Lowercase(), existing]))
    return tokenizer


def lowercases_first(directory):
    """Whether texts are lowercased before the checkpoint's own tokenizer sees them: sentence_bert_config.json's
    do_lower_case, for a cased vocabulary that was meant to see lowercase text only.

    As sentence-transformers 6 does it: a Lowercase normalizer put first in the tokenizer's own (unless that has one).
    sentence-transformers 5 and earlier lowercased with Python's str.lower, which differs from it in one letter:
    a word-final capital sigma becomes ς there, σ here."""
    st_config = Path(directory) / ST_CONFIG_FILE
    return st_config.is_file() and read_json(st_config).get("do_lower_case") is True


def has_lowercase_step(normalizer):
    """Whether a tokenizer.json "normalizer" is Lowercase, or a Sequence holding one."""
    if not isinstance(normalizer, dict):
        return False
    steps = normalizer.get("normalizers") if normalizer.get("type") == "Sequence" else [normalizer]
    return any(isinstance(step, dict) and step.get("type") == "Lowercase" for step in steps or [])


def pad_ids(token_ids, pad_id=0):
    """Token id sequences (each with its special tokens) -> (input_ids [B, T], attention_mask [B, T]), int64,
    right-padded to the longest."""
    T = max((len(ids) for ids in token_ids), default=0)
    input_ids = np.full((len(token_ids), T), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(token_ids), T), dtype=np.int64)
    for i, ids in enumerate(token_ids):
        input_ids[i, :len(ids)] = ids
        attention_mask[i, :len(ids)] = 1
    return input_ids, attention_mask


def pad(encodings, pad_id=0):
    """Tokenized texts (tokenizers Encodings) -> a TokenBatch right-padded to the longest."""
    input_ids, attention_mask = pad_ids([e.ids for e in encodings], pad_id)
    truncated = np.array([bool(e.overflowing) for e in encodings], dtype=bool)
    return TokenBatch(input_ids, attention_mask, [e.tokens for e in encodings], truncated)


def lone_surrogate(text):
    """Where text holds a lone surrogate, as (index, code point); None when it is valid Unicode.

    A Python str may hold surrogates, which are not characters and which tokenizers (Rust strings) refuses:
    JSON's "\\ud800" escapes decode to them, and so do bytes that are not UTF-8 read with
    errors="surrogateescape" (byte b >= 0x80 becomes U+DC00 + b), as Python reads command-line arguments.
    """
    if text.isascii():                                                 # a flag CPython keeps: no pass over text
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start, ord(text[e.start])
    return None


# Characters a prefix holds per token the model takes: 8 covers English (4-5 characters a WordPiece token).
PREFIX_CHARS_PER_TOKEN = 8


def not_unicode(texts, indices):
    """ValueError naming the first of texts[indices] that holds a lone surrogate, or None."""
    for i in indices:
        if (where := lone_surrogate(texts[i])) is not None:
            return ValueError(f"texts[{i}] is not valid Unicode: a lone surrogate (U+{where[1]:04X}) at offset "
                              f"{where[0]}")
    return None


# At most this many texts, of at most FEW_CHARS characters in all, are tokenized one at a time (tokenizer.encode:
# the same encodings). encode keeps the GIL, for a few tens of µs on a query; encode_batch lets it go, to tokenize
# its texts in parallel, and must then win it back from whichever thread took it: on a server's event loop, while
# workers embed, that wait is several times the tokenizing itself, and every other request waits behind it.
# Longer texts go to encode_batch: held for their whole tokenizing (~6 ms for 16K characters), the GIL would
# stall every other thread.
FEW_TEXTS, FEW_CHARS = 4, 4096


def encode_batch(tokenizer, texts):
    """tokenizer.encode_batch(texts), with a ValueError naming the text when one is not valid Unicode.

    A text far longer than the tokenizer's max_length is tokenized from a prefix (see encode_prefix).
    """
    if error := not_unicode(texts, range(len(texts))):                 # tokenizers < 0.21 would drop them silently
        raise error
    limit = (tokenizer.truncation or {}).get("max_length")
    chars = PREFIX_CHARS_PER_TOKEN * limit if limit else None
    long = {i for i, text in enumerate(texts) if chars and len(text) > 4 * chars}
    inputs = [text[:prefix_end(text, chars) or chars] if i in long else text for i, text in enumerate(texts)]
    few = len(inputs) <= FEW_TEXTS and sum(map(len, inputs)) <= FEW_CHARS
    encodings = [tokenizer.encode(text) for text in inputs] if few else tokenizer.encode_batch(inputs)
    for i in long:
        encodings[i] = encode_prefix(tokenizer, texts[i], chars, encodings[i])
    return encodings


def overflowing(encodings, start=0):
    """Indices, counted from start, of the encodings that were truncated at max_length."""
    return [start + i for i, e in enumerate(encodings) if e.overflowing]


def prefix_end(text, chars):
    """Where to cut text within its first `chars` characters: at its last space there, so that every word before
    the cut is whole; None when there is no space to cut at."""
    end = text.rfind(" ", 0, chars)
    return end if end > 0 else None


def encode_prefix(tokenizer, text, chars, first):
    """The truncated encoding of a long text, from a prefix of it: tokenizers work through the whole text before
    truncating (megabytes of text take seconds and gigabytes), though only the first max_length tokens are kept.

    Tokenizers split a text into words at spaces (and maybe more) and tokenize each word on its own, so the tokens
    of the words before a cut at a space do not depend on what follows it. Not so for a cut inside a word: a
    SentencePiece (Unigram) model segments a word as a whole, and "x" * 511 starts with another piece than
    "x" * 512 does. So the prefixes end before a space: the last one in the first `chars` characters, and in the
    first 2 * chars. When both prefixes give more tokens than the model takes, and the same ones, those are the
    whole text's (tests/test_long_texts.py checks it on random text); otherwise the prefixes double, and a text
    that never passes (no space for the cuts) is tokenized whole. `first` is the encoding of the first prefix
    (of text[:chars] if it has no space), already made.
    """
    end = prefix_end(text, chars)
    while 2 * chars < len(text):
        next_end = prefix_end(text, 2 * chars)                         # >= end: the cuts move forward
        second = tokenizer.encode(text[:next_end or 2 * chars])
        if end and next_end > end and first.overflowing and second.overflowing and first.ids == second.ids:
            return first
        first, end, chars = second, next_end, 2 * chars
    return tokenizer.encode(text)


def tokenize(tokenizer, texts, pad_id=0):
    """Texts -> a TokenBatch padded to its longest text."""
    return pad(encode_batch(tokenizer, list(texts)), pad_id)
