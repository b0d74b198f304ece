"""Chunked encoding (e5np.chunking): encode(chunking="mean") and encode_chunks, against windows built here from the
tokenizer's ids and embedded by the float64 model with pooling by hand."""

import random

import numpy as np
import pytest
from tokenizers import Tokenizer

import e5np
from e5np.tokenizer import TokenBatch, tokenizer_files
from tests.corpus import LONG_TEXT, PARITY_TEXTS
from tests.row_independence import PARITY_BAR, assert_same_vectors

WORDS = ["the", "cat", "sat", "on", "mat", "dog", "ran", "home", "and", "then", "a", "big", "red", "house"]


def words_text(n, seed=0):
    """n words that are one WordPiece token each (in BERT's uncased vocabulary)."""
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n))


def raw_tokenizer(model):
    """The checkpoint's tokenizer straight from its file, neither truncating nor padding (not e5np's copy)."""
    tokenizer = Tokenizer.from_file(str(tokenizer_files(model.directory)[0]))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def prefix_tokens(model, prefix):
    return len(raw_tokenizer(model).encode(prefix, add_special_tokens=False).ids) if prefix else 0


def windows_by_hand(model, text, prefix, overlap):
    """A WordPiece model's windows of prefix + text: [CLS] + prefix tokens + a run of text tokens + [SEP]."""
    tokenizer = raw_tokenizer(model)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    ids = tokenizer.encode(prefix + text, add_special_tokens=False).ids
    p = len(tokenizer.encode(prefix, add_special_tokens=False).ids) if prefix else 0
    prefix_ids, text_ids = ids[:p], ids[p:]
    room = model.max_length - 2 - p
    starts = range(0, max(len(text_ids) - overlap, 1), room - overlap)
    return [[cls] + prefix_ids + text_ids[s:s + room] + [sep] for s in starts]


def mean_pooled_float64(model64, windows):
    """Each window through the float64 encoder on its own, mean-pooled by hand: [k, H] float64."""
    vectors = []
    for ids in windows:
        input_ids = np.array([ids], np.int64)
        hidden, _, _ = model64._run(TokenBatch(input_ids, np.ones_like(input_ids), None, None))
        vectors.append(hidden[0].mean(axis=0))
    return np.array(vectors)


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def tiny(load_model):
    return load_model("tiny")


@pytest.mark.parametrize("prefix", ["", "passage: "])
@pytest.mark.parametrize("overlap", [None, 1, 40])
def test_long_text_is_the_token_weighted_mean_of_its_windows(load_model, prefix, overlap):
    model, model64 = load_model("minilm"), load_model("minilm", "float64")
    text = words_text(700)
    room = model.max_length - 2 - prefix_tokens(model, prefix)
    expected_overlap = room // 8 if overlap is None else overlap
    windows = windows_by_hand(model, text, prefix, expected_overlap)
    assert len(windows) >= 3 and all(len(w) <= model.max_length for w in windows)
    pooled = mean_pooled_float64(model64, windows)
    weights = np.array([len(w) for w in windows], np.float64)          # each window's tokens, overlaps in each
    expected = unit((pooled * weights[:, None]).sum(axis=0) / weights.sum())

    vector = model.encode(text, prefix=prefix, chunking="mean", chunk_overlap=overlap)
    assert vector.dtype == np.float32 and vector.shape == (model.dim,)
    assert np.abs(vector - expected).max() <= PARITY_BAR

    chunks = model.encode_chunks(text, prefix=prefix, chunk_overlap=overlap)
    assert chunks.token_counts.tolist() == [len(w) for w in windows]
    assert np.abs(chunks.vectors - unit(pooled)).max() <= PARITY_BAR
    raw = model.encode_chunks(text, prefix=prefix, chunk_overlap=overlap, normalize=False)
    assert np.abs(raw.vectors - pooled).max() <= PARITY_BAR


def test_overlap_counts_in_each_window_that_holds_it(load_model):
    """The weights are the windows' token counts (the last window is short), not the tokens counted once."""
    model = load_model("minilm")
    text = words_text(600, seed=3)
    raw = model.encode_chunks(text, normalize=False, chunk_overlap=50)
    assert len(set(raw.token_counts.tolist())) == 2                    # full windows, then a shorter last one
    weights = raw.token_counts.astype(np.float64)
    expected = unit((raw.vectors.astype(np.float64) * weights[:, None]).sum(axis=0) / weights.sum())
    np.testing.assert_allclose(model.encode(text, chunking="mean", chunk_overlap=50), expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("name", ["tiny", "minilm", "xlmr", "bert-wide"])
@pytest.mark.parametrize("prefix", ["", "query: "])
def test_texts_within_the_limit_get_todays_ids_and_vectors(load_model, name, prefix):
    model = load_model(name)
    texts = [t for t in PARITY_TEXTS if t not in (LONG_TEXT,) and len(model.tokenizer.encode(prefix + t).ids) <
             model.max_length] + [LONG_TEXT]                          # the long one among them: other batch-mates
    fitting = texts[:-1]
    today = model.encode(fitting, prefix=prefix)
    chunked = model.encode(texts, prefix=prefix, chunking="mean")[:-1]
    assert_same_vectors(chunked, today)
    chunks = model.encode_chunks(fitting, prefix=prefix)
    assert all(len(c.vectors) == 1 for c in chunks)
    assert_same_vectors(np.concatenate([c.vectors for c in chunks]), today)
    assert [int(c.token_counts[0]) for c in chunks] == [len(model.tokenizer.encode(prefix + t).ids) for t in fitting]
    assert model.encode(fitting[4], prefix=prefix, chunking="mean").shape == (model.dim,)


def test_bit_identical_alone(tiny):
    text = "the cat sat on the mat"
    np.testing.assert_array_equal(tiny.encode(text, chunking="mean"), tiny.encode(text))
    np.testing.assert_array_equal(tiny.encode([text], chunking="mean", normalize=False),
                                  tiny.encode([text], normalize=False))
    assert tiny.tokenizer.truncation["max_length"] == tiny.max_length   # the model's own tokenizer untouched
    with pytest.warns(e5np.TruncationWarning):
        tiny.encode([LONG_TEXT])


@pytest.mark.parametrize("prefix", ["", "passage: "])
def test_spans_cover_the_text_and_overlap_by_the_overlap(load_model, prefix):
    model = load_model("minilm")
    tokenizer = raw_tokenizer(model)
    text = "  " + words_text(900, seed=1) + " "
    chunks = model.encode_chunks(text, prefix=prefix, chunk_overlap=30)
    spans = chunks.spans
    assert len(spans) == 4
    assert spans[0][0] == 2 and spans[-1][1] == len(text) - 1      # the first word's start, the last word's end
    for (start, end), (next_start, next_end) in zip(spans, spans[1:]):
        assert start < next_start < end < next_end
        assert len(tokenizer.encode(text[next_start:end], add_special_tokens=False).ids) == 30
    p = prefix_tokens(model, prefix)
    for (start, end), count in zip(spans, chunks.token_counts):    # each span is exactly its window's text tokens
        assert len(tokenizer.encode(text[start:end], add_special_tokens=False).ids) == count - 2 - p


def test_spans_are_character_offsets_into_the_text_as_given(load_model):
    model = load_model("minilm")
    text = " ".join(["Crème brûlée", "naïve café", "我爱自然语言处理", "Ångström"] * 80)
    chunks = model.encode_chunks(text, prefix="passage: ", chunk_overlap=10)
    assert len(chunks.spans) > 2
    offsets = raw_tokenizer(model).encode(text, add_special_tokens=False).offsets     # the text's own tokens
    starts, ends = [start for start, _ in offsets], [end for _, end in offsets]
    p = prefix_tokens(model, "passage: ")
    for (start, end), count in zip(chunks.spans, chunks.token_counts):
        first, last = starts.index(start), ends.index(end)           # a span starts and ends on token boundaries
        assert last + 1 - first == count - 2 - p                       # and holds the window's text tokens
    assert chunks.spans[0][0] == 0 and chunks.spans[-1][1] == len(text)


def test_empty_text_is_one_window(tiny):
    chunks = tiny.encode_chunks("")
    assert chunks.spans == [(0, 0)] and chunks.token_counts.tolist() == [2]
    assert_same_vectors(chunks.vectors, tiny.encode([""]))


def test_sentencepiece_windows_keep_the_prefix(load_model):
    """XLM-R: every window starts <s> + the prefix's pieces (the text's first "▁" is the text's), ends </s>."""
    model = load_model("xlmr")
    text = " ".join(f"Sentence {i} über Straßen." for i in range(200))
    tokenizer = raw_tokenizer(model)
    whole = tokenizer.encode("query: " + text).ids
    from e5np.chunking import Splitter, untruncated

    windows = Splitter(untruncated(model.tokenizer), model.max_length, "query: ", 16).split([text])[0]
    assert len(windows.token_ids) > 2
    prefix_ids = whole[1:5]                                           # "▁qu", "er", "y", ":"
    assert tokenizer.decode(prefix_ids) == "query:"
    for ids in windows.token_ids:
        assert len(ids) <= model.max_length
        assert ids[:5] == whole[:5] and ids[-1] == whole[-1]
    body = [ids[5:-1] for ids in windows.token_ids]
    assert body[0] + [i for b in body[1:] for i in b[16:]] == whole[5:-1]  # the text's pieces, overlaps once
    raw = model.encode_chunks(text, prefix="query: ", chunk_overlap=16, normalize=False)
    weights = raw.token_counts.astype(np.float64)
    expected = unit((raw.vectors.astype(np.float64) * weights[:, None]).sum(axis=0) / weights.sum())
    np.testing.assert_allclose(model.encode_queries(text, chunking="mean", chunk_overlap=16) if
                               model.prefix("query") == "query: " else
                               model.encode(text, prefix="query: ", chunking="mean", chunk_overlap=16),
                               expected, rtol=0, atol=1e-7)


def test_kinds_give_their_prefix(e5_shaped_dir):
    model = e5np.load(e5_shaped_dir)
    text = words_text(600, seed=2)
    assert model.prefix("query") == "query: "
    np.testing.assert_array_equal(model.encode_queries(text, chunking="mean"),
                                  model.encode(text, prefix="query: ", chunking="mean"))
    np.testing.assert_array_equal(model.encode_chunks(text, kind="passage").vectors,
                                  model.encode_chunks(text, prefix="passage: ").vectors)
    np.testing.assert_array_equal(model.encode_passages([text], chunking="mean", chunk_overlap=7)[0],
                                  model.encode(text, prefix="passage: ", chunking="mean", chunk_overlap=7))


def test_chunking_none_keeps_truncation(tiny):
    with pytest.warns(e5np.TruncationWarning):
        truncated = tiny.encode([LONG_TEXT], chunking=None)
    with pytest.warns(e5np.TruncationWarning):
        np.testing.assert_array_equal(truncated, tiny.encode([LONG_TEXT]))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        whole = tiny.encode([LONG_TEXT], chunking="mean")           # no warning: nothing is lost
    assert not np.array_equal(whole, truncated)


@pytest.mark.parametrize("chunking", ["max", "Mean", True, 1])
def test_unknown_chunking(tiny, chunking):
    with pytest.raises(ValueError, match="chunking must be None or one of"):
        tiny.encode("a", chunking=chunking)


@pytest.mark.parametrize("overlap", [0, -1, 1.5, "8", True])
def test_overlap_must_be_a_positive_integer(tiny, overlap):
    with pytest.raises(ValueError, match="chunk_overlap must be a positive integer"):
        tiny.encode("a", chunking="mean", chunk_overlap=overlap)
    with pytest.raises(ValueError, match="chunk_overlap must be a positive integer"):
        tiny.encode_chunks("a", chunk_overlap=overlap)


def test_overlap_needs_chunking(tiny):
    with pytest.raises(ValueError, match="chunk_overlap is for chunking='mean'"):
        tiny.encode("a", chunk_overlap=8)


def test_overlap_must_leave_room(tiny):
    room = tiny.max_length - 2
    tiny.encode_chunks(LONG_TEXT, chunk_overlap=room - 1)
    for overlap in (room, room + 5):
        with pytest.raises(ValueError, match=f"chunk_overlap={overlap} must be less than the {room} text tokens"):
            tiny.encode(LONG_TEXT, chunking="mean", chunk_overlap=overlap)
    p = prefix_tokens(tiny, "query: ")
    assert p == 2
    with pytest.raises(ValueError, match=f"less than the {room - p} text tokens"):
        tiny.encode_chunks(LONG_TEXT, prefix="query: ", chunk_overlap=room - p)


def test_cls_pooling_refuses_mean_chunking(load_model, checkpoint_dirs):
    model = e5np.load(checkpoint_dirs["st-cls"])
    assert model.pooling == "cls"
    with pytest.raises(ValueError, match="pools by 'cls': use encode_chunks"):
        model.encode([LONG_TEXT], chunking="mean")
    chunks = model.encode_chunks(LONG_TEXT)                             # its windows, cls-pooled
    assert len(chunks.vectors) > 1
    assert_same_vectors(chunks.vectors[:1], model.encode([LONG_TEXT], truncation="ignore"))


def test_bad_texts(tiny):
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        tiny.encode_chunks(["a", 3])
    with pytest.raises(ValueError, match="lone surrogate"):
        tiny.encode(["a", "b\ud800"], chunking="mean")
    assert tiny.encode_chunks([]) == []
    assert tiny.encode([], chunking="mean").shape == (0, tiny.dim)
