"""The public API: shapes, prefixes, types, truncation reporting, and the forward() inspection object."""

import re
import warnings

import numpy as np
import pytest

import e5np
from tests.checkpoints import SEARCH_PROMPTS, with_prompts
from tests.corpus import LONG_TEXT
from tests.row_independence import assert_same_vectors


@pytest.fixture(scope="module")
def tiny(load_model):
    return load_model("tiny")


def test_single_str_gives_a_vector_list_gives_a_matrix(minilm):
    v = minilm.encode("query: hello")
    m = minilm.encode(["query: hello", "passage: world"])
    assert v.shape == (384,) and m.shape == (2, 384) and m.dtype == np.float32
    assert_same_vectors(v, m[0])
    np.testing.assert_allclose(np.linalg.norm(m, axis=1), 1, atol=1e-6)


def test_empty_list_gives_zero_rows(minilm):
    out = minilm.encode([])
    assert out.shape == (0, 384) and out.dtype == np.float32


def test_tuples_and_generators_are_accepted(tiny):
    texts = ["a b", "c d e"]
    expected = tiny.encode(texts)
    np.testing.assert_array_equal(tiny.encode(tuple(texts)), expected)
    np.testing.assert_array_equal(tiny.encode(t for t in texts), expected)
    np.testing.assert_array_equal(tiny.encode(np.array(texts)), expected)


def test_e5_models_get_e5_prefixes(load_model):
    e5 = load_model("e5-shaped")  # its directory is named e5-small, as a hub snapshot of intfloat/e5-small is
    q = "how much protein should a female eat"
    assert e5.prefixes == {"query": "query: ", "passage": "passage: "}
    np.testing.assert_array_equal(e5.encode_queries([q]), e5.encode(["query: " + q]))
    np.testing.assert_array_equal(e5.encode_passages(q), e5.encode("passage: " + q))
    assert e5.encode_queries(q).shape == (384,)


def test_other_models_get_no_prefix_unless_asked(minilm, checkpoint_dirs, tmp_path):
    q = "how much protein should a female eat"
    assert minilm.prefixes == {}
    np.testing.assert_array_equal(minilm.encode_queries([q]), minilm.encode([q]))
    custom = e5np.load(checkpoint_dirs["minilm"], prefixes={"query": "Q: ", "passage": "P: "})
    np.testing.assert_array_equal(custom.encode_passages([q]), minilm.encode(["P: " + q]))

    import json
    import shutil

    declared = tmp_path / "with-prompts"
    shutil.copytree(checkpoint_dirs["tiny"], declared)
    (declared / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"query": "search_query: ", "document": "search_document: "}}))
    assert e5np.load(declared).prefixes == {"query": "search_query: ", "passage": "search_document: "}
    (declared / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"query": "search_query: ", "document": ""}}))
    assert e5np.load(declared).prefixes == {"query": "search_query: "}


def test_empty_prompts_as_sentence_transformers_6_saves_them_declare_nothing(checkpoint_dirs, tmp_path):
    """sentence-transformers 6 writes {"query": "", "document": ""} for a model given no prompts: an E5 fine-tuned
    and saved with it lost E5's prefixes (an empty prompt counted as a declaration)."""
    import json
    import shutil

    for name, prefixes in (("my-e5-small-finetuned", {"query": "query: ", "passage": "passage: "}), ("other", {})):
        directory = tmp_path / name
        shutil.copytree(checkpoint_dirs["tiny"], directory)
        (directory / "config_sentence_transformers.json").write_text(
            json.dumps({"prompts": {"query": "", "document": ""}, "default_prompt_name": None}))
        assert e5np.load(directory).prefixes == prefixes


def test_encode_adds_a_declared_default_prompt(checkpoint_dirs, tmp_path):
    """sentence-transformers' encode() adds the prompt config_sentence_transformers.json names as default_prompt_name;
    e5np's added nothing, so the same call gave other vectors."""
    model = e5np.load(with_prompts(checkpoint_dirs["tiny"], tmp_path / "model"))
    plain = e5np.load(checkpoint_dirs["tiny"])
    texts = ["a cat", "a kitten"]
    assert model.default_prefix == "search_query: " and plain.default_prefix == ""
    np.testing.assert_array_equal(model.encode(texts), plain.encode(["search_query: " + t for t in texts]))
    np.testing.assert_array_equal(model.encode("a cat"), plain.encode("search_query: a cat"))
    np.testing.assert_array_equal(model.encode_passages(texts), plain.encode(["search_document: " + t for t in texts]))
    np.testing.assert_array_equal(model.encode_queries(texts), plain.encode(["search_query: " + t for t in texts]))
    np.testing.assert_array_equal(model.encode(texts, prefix=""), plain.encode(texts))       # the caller's choice
    np.testing.assert_array_equal(model.encode(texts, prefix="x "), plain.encode(["x " + t for t in texts]))
    with pytest.raises(TypeError, match="prefix must be a str, got int"):
        model.encode(texts, prefix=3)


@pytest.mark.parametrize("default, words", [("passage", "default_prompt_name 'passage' is not one of its prompts "
                                                        "['document', 'query']"),
                                            (3, "default_prompt_name 3 is not one of its prompts")])
def test_a_default_prompt_name_that_names_no_prompt_is_refused(checkpoint_dirs, tmp_path, default, words):
    """As sentence-transformers refuses it, rather than embedding without the prompt the checkpoint asks for."""
    from e5np.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match=re.escape(words)):
        e5np.load(with_prompts(checkpoint_dirs["tiny"], tmp_path / "model",
                               dict(SEARCH_PROMPTS, default_prompt_name=default)))


def test_normalize_false_returns_the_mean_pooled_vector(minilm):
    texts = ["first text", "a second, longer text with more tokens"]
    raw = minilm.encode(texts, normalize=False)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1)
    np.testing.assert_array_equal(minilm.encode(texts, normalize=np.False_), raw)  # NumPy's bools are bools too
    forward = minilm.forward(texts)
    assert np.abs(raw - forward.pooled).max() <= 1e-6
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), minilm.encode(texts), atol=1e-6)


@pytest.mark.parametrize("bad, message", [
    ([None], r"texts\[0\] is NoneType, expected str"),
    (["ok", b"bytes"], r"texts\[1\] is bytes, expected str"),
    (["ok", "fine", 3], r"texts\[2\] is int, expected str"),
    ([["nested"]], r"texts\[0\] is list, expected str"),
    (b"raw bytes", r"got bytes; decode it first"),
    (42, r"got int"),
    (None, r"got NoneType"),
])
def test_wrong_types_name_the_item(tiny, bad, message):
    with pytest.raises(TypeError, match=message):
        tiny.encode(bad)


@pytest.mark.parametrize("call", ["encode", "encode_queries", "tokenize", "forward"])
def test_text_that_is_not_unicode_is_named(tiny, call):
    """A lone surrogate (what a JSON "\\ud800" escape decodes to) is no character: tokenizers refuses it."""
    with pytest.raises(ValueError, match=r"texts\[2\] is not valid Unicode: a lone surrogate \(U\+D800\) at offset 4"):
        getattr(tiny, call)(["ok", "fine", "bad \ud800 half a pair"])
    assert tiny.tokenize(["ok", "\U0001F600 a whole pair"]).input_ids.shape[0] == 2  # a real astral character is fine


def test_bad_arguments_are_rejected(tiny):
    with pytest.raises(ValueError, match="batch_size"):
        tiny.encode(["x"], batch_size=0)
    with pytest.raises(ValueError, match="truncation"):
        tiny.encode(["x"], truncation="sometimes")
    with pytest.raises(ValueError, match="dtype"):
        e5np.load(tiny.name, dtype="float16")
    with pytest.raises(ValueError, match="max_length"):
        e5np.load(tiny.name, max_length=10_000)
    for normalize in ("yes", "False", 0, 1):                        # a "False" string would have normalized
        with pytest.raises(TypeError, match="normalize must be True or False"):
            tiny.encode(["x"], normalize=normalize)
        with pytest.raises(TypeError, match="normalize must be True or False"):
            e5np.load(tiny.name, normalize=normalize)
    for threads in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            e5np.load(tiny.name, threads=threads)
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            tiny.encode(["x"], threads=threads)


@pytest.mark.parametrize("argument, value, error", [
    ("pooling", "sum", ValueError), ("dtype", "float16", ValueError), ("max_length", 10_000, ValueError),
    ("normalize", "False", TypeError), ("threads", 1.5, ValueError),
    ("prefixes", "query: ", TypeError), ("prefixes", {"queries": "query: "}, ValueError),
    ("prefixes", {"query": 3}, TypeError),
])
def test_load_checks_its_arguments_before_reading_weights(tiny, monkeypatch, argument, value, error):
    def read(*args, **kwargs):
        raise AssertionError("the weights were read before the arguments were checked")

    monkeypatch.setattr(e5np.model, "load_weights", read)
    with pytest.raises(error, match=f"^{argument}"):
        e5np.load(tiny.name, **{argument: value})


def test_numpy_integers_are_integers(tiny):
    """batch_size=np.int64(8) (a value read from an array or a config) was refused: "must be a positive integer, got
    np.int64(8)"; likewise threads and max_length."""
    model = e5np.load(tiny.name, max_length=np.int64(64), threads=np.int32(2))
    assert (model.max_length, model.threads) == (64, 2) and type(model.max_length) is type(model.threads) is int
    texts = ["a short text", "another one, a little longer than that"]
    assert_same_vectors(tiny.encode(texts, batch_size=np.int64(1), threads=np.uint8(1)), tiny.encode(texts))
    for not_an_integer in (2.0, np.float32(2), np.bool_(True), "8"):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            tiny.encode(texts, batch_size=not_an_integer)


def test_progress_bar_counts_the_texts_embedded_and_is_off_by_default(tiny, capsys):
    texts = [f"text {i} " + "word " * (i % 50) for i in range(300)]
    for threads in (1, 2):
        vectors = tiny.encode(texts, batch_size=8, threads=threads, show_progress_bar=True)
        bar = capsys.readouterr().err
        assert "300/300" in bar and "e5np" in bar, bar
        assert_same_vectors(vectors, tiny.encode(texts, batch_size=8, threads=threads))
        assert capsys.readouterr().err == ""
    tiny.encode_passages(["a", "b"], show_progress_bar=True)
    assert "2/2" in capsys.readouterr().err
    with pytest.raises(TypeError, match="show_progress_bar must be True or False"):
        tiny.encode(["x"], show_progress_bar="yes")


def test_threads_do_not_change_vectors(minilm):
    from tests.corpus import PARITY_TEXTS

    one = minilm.encode(PARITY_TEXTS, threads=1, batch_size=4, truncation="ignore")
    for threads in (2, 3):                                             # batched differently: see test_batching
        assert_same_vectors(minilm.encode(PARITY_TEXTS, threads=threads, batch_size=4, truncation="ignore"), one)


def test_truncation_is_reported(minilm):
    texts = ["short", LONG_TEXT, "also short", LONG_TEXT + " more"]
    with pytest.warns(e5np.TruncationWarning, match=r"2 of 4 text\(s\) exceed max_length=256 tokens.*\[1, 3\]"):
        minilm.encode(texts)
    with pytest.raises(ValueError, match=r"indices \[1, 3\]"):
        minilm.encode(texts, truncation="error")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        minilm.encode(texts, truncation="ignore")
        minilm.encode(["short"])
    batch = minilm.tokenize(texts)
    assert batch.truncated.tolist() == [False, True, False, True]
    assert batch.lengths.tolist()[1] == minilm.max_length == 256    # its sentence_bert_config.json's


def test_many_texts_are_tokenized_a_window_at_a_time(minilm, monkeypatch):
    """encode() tokenizes ENCODE_WINDOW texts at a time (a million at once would not fit in memory): the vectors,
    the truncation warning's indices, and the errors for over-long and bad texts are those of one window, and both
    errors come before anything is embedded."""
    texts = [f"text number {i}" for i in range(23)]
    texts[5], texts[17] = LONG_TEXT, LONG_TEXT + " more"
    whole = minilm.encode(texts, truncation="ignore")
    tokenized, embedded = [], []
    encode_batch, embed_tokens = e5np.model.encode_batch, minilm.embed_tokens

    def tokenize_counted(tokenizer, window):
        tokenized.append(len(window))
        return encode_batch(tokenizer, window)

    def embed_counted(token_ids, *args, **kwargs):
        embedded.append(len(token_ids))
        return embed_tokens(token_ids, *args, **kwargs)
    monkeypatch.setattr(e5np.model, "ENCODE_WINDOW", 4)
    monkeypatch.setattr(e5np.model, "encode_batch", tokenize_counted)
    monkeypatch.setattr(minilm, "embed_tokens", embed_counted)

    with pytest.warns(e5np.TruncationWarning, match=r"2 of 23 text\(s\) exceed max_length=256 tokens.*\[5, 17\]"):
        windowed = minilm.encode(texts)
    assert tokenized == embedded == [4, 4, 4, 4, 4, 3]
    assert_same_vectors(windowed, whole)

    embedded.clear()
    with pytest.raises(ValueError, match=r"indices \[5, 17\]"):
        minilm.encode(texts, truncation="error")
    with pytest.raises(ValueError, match=r"texts\[21\] is not valid Unicode"):
        minilm.encode(texts[:21] + ["bad \ud800"] + texts[22:])
    assert embedded == []


def test_truncation_keeps_the_first_max_length_tokens(minilm):
    """A truncated text embeds as its first 255 tokens + [SEP]: text beyond 256 tokens has no effect."""
    a = minilm.encode(LONG_TEXT, truncation="ignore")
    b = minilm.encode(LONG_TEXT + " completely different ending about volcanoes", truncation="ignore")
    assert np.abs(a - b).max() <= 1e-6


def test_max_length_can_be_lowered(checkpoint_dirs):
    short = e5np.load(checkpoint_dirs["minilm"], max_length=16)
    batch = short.tokenize(["one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen"])
    assert batch.lengths.tolist() == [16] and batch.tokens[0][-1] == "[SEP]"


def test_forward_exposes_tokens_layers_and_attention(minilm):
    texts = ["query: hello world", "a"]
    f = minilm.forward(texts, output_attentions=True)
    assert f.tokens[0] == ["[CLS]", "query", ":", "hello", "world", "[SEP]"]
    assert f.input_ids.shape == f.attention_mask.shape == (2, 6)
    assert len(f.hidden_states) == 7 and f.hidden_states[0].shape == (2, 6, 384)
    assert len(f.attentions) == 6 and f.attentions[0].shape == (2, 12, 6, 6)
    np.testing.assert_allclose(f.attentions[3][0].sum(-1), 1, atol=1e-5)  # text 0 has no padding
    assert (f.attentions[0][1, :, :, 3:] == 0).all()  # "a" is 3 tokens: padding gets no attention
    assert np.abs(f.embeddings - minilm.encode(texts)).max() <= 1e-6
    assert minilm.forward(texts).attentions is None


def test_float64_model_runs_in_float64(checkpoint_dirs):
    m = e5np.load(checkpoint_dirs["tiny"], dtype="float64")
    assert m.encode(["x"]).dtype == np.float64 and m.params["layers"][0]["ffn"]["up"]["w"].dtype == np.float64
    for numpy_type in (np.float64, np.dtype("float64")):                # NumPy's names for it are taken too
        assert e5np.load(checkpoint_dirs["tiny"], dtype=numpy_type).encode(["x"]).dtype == np.float64
    for default in (np.float32, None):
        assert e5np.load(checkpoint_dirs["tiny"], dtype=default).encode(["x"]).dtype == np.float32
    for wrong in (np.float16, "f8", 64, np.int64):
        with pytest.raises(ValueError, match="dtype must be one of"):
            e5np.load(checkpoint_dirs["tiny"], dtype=wrong)
    assert "float64" in repr(m)


def test_import_does_not_touch_torch():
    """`import e5np` is cheap: the model's own libraries load when a model does, the extras' never."""
    import subprocess
    import sys

    code = ("import sys, e5np; heavy = [m for m in ('torch', 'transformers', 'scipy', 'sentence_transformers', "
            "'tokenizers', 'huggingface_hub', 'safetensors', 'ray', 'pyarrow', 'pandas', 'uvicorn', 'starlette', "
            "'fastapi', 'prometheus_client', 'langchain_core', 'llama_index', 'chromadb') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
