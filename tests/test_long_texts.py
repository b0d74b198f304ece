"""Texts far longer than the model takes are tokenized from a prefix (e5np.tokenizer.encode_prefix): the same
tokens as tokenizing the whole text, checked on every tokenizer kind the tests have, over random text."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from e5np.tokenizer import FEW_CHARS, FEW_TEXTS, PREFIX_CHARS_PER_TOKEN, encode_batch, load_tokenizer
from tests.checkpoints import FIXTURES, TINY_DIR, minilm_dir

MAX_LENGTH = 16                                            # small, so that short random texts take the prefix path
LONG = 4 * PREFIX_CHARS_PER_TOKEN * MAX_LENGTH             # texts longer than this are tokenized from a prefix

TOKENIZERS = {
    "tiny WordPiece": lambda: TINY_DIR,
    "bert-base-uncased WordPiece (all-MiniLM)": minilm_dir,
    "XLM-R SentencePiece": lambda: FIXTURES / "xlmr",
}

# Pieces that stress the cut: accents and combining marks (normalized, stripped), CJK (a token per character),
# emoji, zero-width and control characters (dropped), punctuation (split off), special-token text, words
# over WordPiece's 100-character limit, whitespace of every kind, and nothing at all (pieces run together).
PIECES = ["the", "cat", "unbelievably", "café", "e\u0301", "東京都", "🙂", "\u200d", "\u200b", "\x00", "\x7f", ",",
          "!", "...", "[SEP]", "[MASK]", "x" * 120, "straße", "İstanbul", "ﬁ", "①", "١٢٣", "ǅ", "-", "'s"]
SEPARATORS = [" ", "", "  ", "\t", "\n", "\u3000", "\u00a0"]
pieces = st.lists(st.tuples(st.sampled_from(PIECES), st.sampled_from(SEPARATORS)), min_size=150, max_size=500)
piece_text = pieces.map(lambda pairs: "".join(piece + separator for piece, separator in pairs))
any_text = st.text(alphabet=st.characters(codec="utf-8"), min_size=LONG + 1, max_size=4 * LONG)


@pytest.fixture(scope="module", params=list(TOKENIZERS))
def tokenizer(request):
    return load_tokenizer(TOKENIZERS[request.param](), MAX_LENGTH)


def assert_same_as_whole(tokenizer, text):
    prefixed, = encode_batch(tokenizer, [text])
    whole = tokenizer.encode(text)
    assert prefixed.ids == whole.ids and prefixed.tokens == whole.tokens
    assert bool(prefixed.overflowing) == bool(whole.overflowing)


@settings(max_examples=150, deadline=None)
@given(text=st.one_of(piece_text, any_text))
def test_prefix_tokenizing_gives_the_whole_texts_tokens(tokenizer, text):
    assert_same_as_whole(tokenizer, text)


@pytest.mark.parametrize("text", [
    "word " * 2000,                                        # passes at the first prefix
    "\u200b" * 5000 + "word " * 200,                      # the first prefixes hold no tokens: the prefix grows
    "x" * 10_000,                                          # one word: [UNK] in WordPiece whatever its length
    "東" * 3000,
    "a " + "x" * 511 + " the" * 300,                       # SentencePiece segments a word whole: no cut inside one
    "a " + "x" * 4000 + " the" * 300,
    "word " * 2000 + "\ud800",                             # a lone surrogate past every prefix is still refused
])
def test_prefix_edge_cases(tokenizer, text):
    if "\ud800" in text:
        with pytest.raises(ValueError, match=r"texts\[0\] is not valid Unicode: a lone surrogate \(U\+D800\)"):
            encode_batch(tokenizer, [text])
        return
    assert_same_as_whole(tokenizer, text)


def test_a_few_texts_one_at_a_time_get_the_encodings_of_a_batch(tokenizer):
    """encode_batch tokenizes up to FEW_TEXTS texts one by one (keeping the GIL): the encodings are the batch's."""
    texts = ["a cat", "", "Ünïcödé and 東京 and emoji 🙂", "word " * 600, "tail"]
    for n in (1, FEW_TEXTS, FEW_TEXTS + 1):
        few, batch = encode_batch(tokenizer, texts[:n]), tokenizer.encode_batch(texts[:n])
        assert len(few) == len(batch) == n
        for mine, theirs in zip(few, batch):
            assert (mine.ids, mine.tokens, mine.offsets, mine.attention_mask) == \
                (theirs.ids, theirs.tokens, theirs.offsets, theirs.attention_mask)
            assert bool(mine.overflowing) == bool(theirs.overflowing)


class RecordingTokenizer:
    """A tokenizer that records which of its methods it was asked to tokenize with."""

    def __init__(self, inner):
        self.inner, self.calls, self.truncation = inner, [], inner.truncation

    def encode(self, text):
        self.calls.append("encode")
        return self.inner.encode(text)

    def encode_batch(self, texts):
        self.calls.append("encode_batch")
        return self.inner.encode_batch(texts)


@pytest.mark.parametrize("texts, way", [
    (["a cat"] * FEW_TEXTS, "encode"),
    (["a cat"] * (FEW_TEXTS + 1), "encode_batch"),
    (["word " * (FEW_CHARS // 5 + 1)], "encode_batch"),  # long: the GIL held through it would stall the others
])
def test_only_a_few_short_texts_are_tokenized_one_at_a_time(texts, way):
    recording = RecordingTokenizer(load_tokenizer(TINY_DIR, 512))
    encode_batch(recording, texts)
    assert set(recording.calls) == {way}


class CountingTokenizer:
    """A tokenizer that records the length of every text it is given."""

    def __init__(self, inner):
        self.inner, self.lengths = inner, []
        self.truncation = inner.truncation

    def encode(self, text):
        self.lengths.append(len(text))
        return self.inner.encode(text)

    def encode_batch(self, texts):
        self.lengths.extend(map(len, texts))
        return self.inner.encode_batch(texts)


def test_a_huge_text_is_never_tokenized_whole():
    counting = CountingTokenizer(load_tokenizer(TINY_DIR, 512))
    huge = "word " * 2_000_000                              # 10 MB: 17 s and 2.9 GB for 20 MB tokenized whole
    encoding, = encode_batch(counting, ["short text", huge])[1:]
    assert len(encoding.ids) == 512 and encoding.overflowing
    assert max(counting.lengths) <= 2 * PREFIX_CHARS_PER_TOKEN * 512
