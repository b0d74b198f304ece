"""Checkpoints beyond e5-small, read from their own files: other sizes, sentence-transformers pooling
layouts, XLM-RoBERTa (multilingual-e5). Generic parity for bert-wide and xlmr is in test_parity.py."""

import json
import shutil

import numpy as np
import pytest

import e5np
from e5np.checkpoint import CheckpointError
from tests.checkpoints import with_prompts
from tests.conftest import load_reference

ST_MODES = ["cls", "mean", "max", "mean_sqrt_len"]


def close(ours, theirs):
    """Normalized vectors: max-abs <= 1e-6. Raw pooled vectors (norms up to a few units): 1e-6 of their scale."""
    return np.abs(ours - theirs).max() <= 1e-6 * max(1.0, float(np.abs(theirs).max()))


@pytest.fixture(scope="module")
def st_reference():
    return load_reference("st-cls")


def test_sentence_transformers_layout_sets_pooling_and_normalization(checkpoint_dirs, st_reference):
    model = e5np.load(checkpoint_dirs["st-cls"])
    assert model.pooling == "cls" and model.normalize is False and model.prefixes == {}
    out = model.encode(st_reference["texts"], truncation="ignore")
    assert close(out, st_reference["embeddings_cls"])


@pytest.mark.parametrize("mode", ST_MODES)
def test_every_pooling_mode_matches_sentence_transformers(checkpoint_dirs, st_reference, mode):
    model = e5np.load(checkpoint_dirs["st-cls"], pooling=mode)
    out = model.encode(st_reference["texts"], truncation="ignore")
    assert close(out, st_reference[f"embeddings_{mode}"])


ST6_NAMES = {"cls": "cls", "mean": "mean", "max": "max", "mean_sqrt_len": "mean_sqrt_len_tokens"}


@pytest.mark.parametrize("mode", ST_MODES)
def test_sentence_transformers_6_pooling_configs_are_read(checkpoint_dirs, st_reference, tmp_path, mode):
    """sentence-transformers 6 saves {"embedding_dimension": ..., "pooling_mode": "mean", "include_prompt": true}
    and its modules.json names sentence_transformers.sentence_transformer.modules.pooling.Pooling: every model it
    saved was refused ("this sets []")."""
    directory = tmp_path / mode
    shutil.copytree(checkpoint_dirs["st-cls"], directory)
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(
        {"embedding_dimension": 32, "pooling_mode": ST6_NAMES[mode] if mode != "max" else [mode],
         "include_prompt": True}))
    (directory / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.sentence_transformer.modules.pooling.Pooling"}]))
    model = e5np.load(directory)
    assert model.pooling == mode and model.normalize is False
    assert close(model.encode(st_reference["texts"], truncation="ignore"), st_reference[f"embeddings_{mode}"])


NO_MODE_CONFIGS = [{"word_embedding_dimension": 32},
                   {"word_embedding_dimension": 32, **{flag: False for flag in ("pooling_mode_cls_token",
                    "pooling_mode_mean_tokens", "pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens")}}]


@pytest.mark.parametrize("config", NO_MODE_CONFIGS, ids=["no-flags", "all-false"])
def test_a_pooling_config_naming_no_mode_is_mean_pooling(checkpoint_dirs, st_reference, tmp_path, config):
    """sentence-transformers pools by mean when its Pooling config names no mode (its default); e5np refused it."""
    directory = tmp_path / "st"
    shutil.copytree(checkpoint_dirs["st-cls"], directory)
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(config))
    model = e5np.load(directory)
    assert model.pooling == "mean"
    assert close(model.encode(st_reference["texts"], truncation="ignore"), st_reference["embeddings_mean"])


@pytest.mark.live
@pytest.mark.parametrize("config", NO_MODE_CONFIGS, ids=["no-flags", "all-false"])
def test_a_pooling_config_naming_no_mode_against_live_sentence_transformers(checkpoint_dirs, tmp_path, config):
    SentenceTransformer = pytest.importorskip("sentence_transformers").SentenceTransformer
    directory = tmp_path / "st"
    shutil.copytree(checkpoint_dirs["st-cls"], directory)
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(config))
    texts = ["query: hello world", "a", "the cat sat on the mat " * 3]
    want = SentenceTransformer(str(directory), device="cpu").encode(texts, convert_to_numpy=True)
    assert close(e5np.load(directory).encode(texts), want)


@pytest.mark.live
def test_a_checkpoint_saved_by_the_installed_sentence_transformers_loads(checkpoint_dirs, tmp_path):
    SentenceTransformer = pytest.importorskip("sentence_transformers").SentenceTransformer
    texts = ["query: hello world", "a", "the cat sat on the mat " * 3]
    SentenceTransformer(str(checkpoint_dirs["st-cls"]), device="cpu").save(str(tmp_path / "saved"))
    want = SentenceTransformer(str(tmp_path / "saved"), device="cpu").encode(texts, convert_to_numpy=True)
    assert close(e5np.load(tmp_path / "saved").encode(texts), want)


def test_normalize_module_is_honoured(checkpoint_dirs, st_reference, tmp_path):
    directory = tmp_path / "st-mean-normalize"
    shutil.copytree(checkpoint_dirs["st-cls"], directory)
    modules = json.loads((directory / "modules.json").read_text())
    modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (directory / "modules.json").write_text(json.dumps(modules))
    config = json.loads((directory / "1_Pooling" / "config.json").read_text())
    config.update(pooling_mode_cls_token=False, pooling_mode_mean_tokens=True)
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(config))
    model = e5np.load(directory)
    assert model.pooling == "mean" and model.normalize is True
    out = model.encode(st_reference["texts"], truncation="ignore")
    assert np.abs(out - st_reference["embeddings_mean_normalize"]).max() <= 1e-6


@pytest.mark.parametrize("name, normalizes", [("e5-small-v2", True), ("multilingual-e5-large-instruct", True),
                                              ("my-bert", False)])
def test_modules_json_without_normalize_still_normalizes_an_e5(checkpoint_dirs, st_reference, tmp_path, name,
                                                                     normalizes):
    """An E5 whose modules.json has Transformer and mean Pooling but no Normalize (E5's model cards normalize anyway:
    F.normalize after average_pool; sentence-transformers' encode(..., normalize_embeddings=True)) gave vectors that
    were not unit vectors. Another model without Normalize still gives its raw vectors. (The test's name keeps "e5"
    past the 30 characters pytest puts in tmp_path: e5np reads an e5 anywhere in a model's path as an E5.)"""
    directory = tmp_path / name
    shutil.copytree(checkpoint_dirs["st-cls"], directory)              # Transformer -> Pooling, no Normalize
    (directory / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "mean"}))
    model = e5np.load(directory)
    assert model.pooling == "mean" and model.normalize is normalizes
    out = model.encode(st_reference["texts"], truncation="ignore")
    if normalizes:
        assert np.abs(out - st_reference["embeddings_mean_normalize"]).max() <= 1e-6
    else:
        assert np.abs(out - st_reference["embeddings_mean"]).max() <= 1e-6 * np.abs(out).max()
    assert e5np.load(directory, normalize=False).normalize is False     # still the caller's to override


def test_explicit_arguments_override_the_checkpoint(checkpoint_dirs, st_reference):
    model = e5np.load(checkpoint_dirs["st-cls"], pooling="mean", normalize=True)
    out = model.encode(st_reference["texts"], truncation="ignore")
    assert np.abs(out - st_reference["embeddings_mean_normalize"]).max() <= 1e-6
    unnormalized = e5np.load(checkpoint_dirs["tiny"]).encode(["a b"], normalize=False)
    assert not np.isclose(np.linalg.norm(unnormalized), 1)
    with pytest.raises(ValueError, match="pooling must be one of"):
        e5np.load(checkpoint_dirs["tiny"], pooling="weighted")


@pytest.mark.parametrize("edit, words", [
    (lambda d: (d / "modules.json").write_text(json.dumps([
        {"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "path": "2_Dense", "type": "sentence_transformers.models.Dense"}])), ["Dense", "not supported"]),
    (lambda d: (d / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_lasttoken": True})), ["pooling_mode_lasttoken"]),
    (lambda d: (d / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_cls_token": True, "pooling_mode_max_tokens": True})), ["exactly one", "pooling_mode_max_tokens"]),
    (lambda d: (d / "modules.json").write_text("{}"), ["modules.json", "expected a JSON list"]),
    (lambda d: (d / "1_Pooling" / "config.json").write_text(json.dumps(    # the prompt's tokens left out of the mean
        {"pooling_mode_mean_tokens": True, "include_prompt": False})), ["include_prompt false is not supported"]),
    (lambda d: (d / "1_Pooling" / "config.json").write_text(json.dumps(    # sentence-transformers 6's format
        {"embedding_dimension": 32, "pooling_mode": "cls", "include_prompt": False})), ["include_prompt false"]),
    (lambda d: (d / "1_Pooling" / "config.json").write_text(json.dumps(
        {"embedding_dimension": 32, "pooling_mode": "lasttoken"})), ["pooling_mode 'lasttoken' is not supported"]),
    (lambda d: (d / "1_Pooling" / "config.json").write_text(json.dumps(    # concatenated: a 64-dim vector
        {"embedding_dimension": 32, "pooling_mode": ["cls", "mean"]})), ["pooling_mode ['cls', 'mean']"]),
    (lambda d: (d / "1_Pooling" / "config.json").write_text("[]"), ["config.json: expected a JSON object"]),
])
def test_unsupported_sentence_transformers_layouts(checkpoint_dirs, tmp_path, edit, words):
    directory = tmp_path / "st"
    shutil.copytree(checkpoint_dirs["st-cls"], directory)
    edit(directory)
    with pytest.raises(CheckpointError) as info:
        e5np.load(directory)
    for word in words:
        assert word in str(info.value)


def test_xlm_roberta_positions_and_tokenizer(load_model):
    model = load_model("xlmr")
    config = model.config
    assert config.model_type == "xlm-roberta" and config.position_offset == 2 and config.pad_token_id == 1
    assert config.type_vocab_size == 1 and config.layer_norm_eps == 1e-5
    assert model.max_length == 128 == config.max_position_embeddings - 2
    batch = model.tokenize(["a", "query: hello world"])
    assert batch.tokens[0][0] == "<s>" and batch.tokens[0][-1] == "</s>"
    assert batch.input_ids[0, -1] == 1  # padded with <pad>, as transformers does


def test_roberta_position_offset_must_fit(checkpoint_dirs, tmp_path):
    directory = tmp_path / "x"
    shutil.copytree(checkpoint_dirs["xlmr"], directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps(dict(config, pad_token_id=129)))
    with pytest.raises(CheckpointError, match="pad_token_id"):
        e5np.load(directory)


def test_e5_prefix_detection_by_name():
    from e5np.prefixes import E5_INSTRUCT_PREFIXES, E5_PREFIXES, e5_prefixes

    for name in ("intfloat/e5-small", "intfloat/multilingual-e5-base", "intfloat/e5-large-v2",
                 "/cache/models--intfloat--e5-small/snapshots/abc", "E5-small", "team/e5-base-finetuned",
                 "/home/instructor/models/e5-small", "models/e5-small/instructions"):
        assert e5_prefixes(name) == E5_PREFIXES, name
    for name in ("intfloat/multilingual-e5-large-instruct", "/cache/models--intfloat--multilingual-e5-large-instruct/"
                 "snapshots/abc", "e5-instruct", "Multilingual-E5-Large-Instruct"):
        assert e5_prefixes(name) == E5_INSTRUCT_PREFIXES, name
    for name in ("BAAI/bge-small-en-v1.5", "sentence-transformers/all-MiniLM-L6-v2", "e5x", "le5-model",
                 "hkunlp/instructor-base"):
        assert e5_prefixes(name) == {}, name
    assert e5_prefixes("models/e5-small", "/home/instructor/models/e5-small") == E5_PREFIXES   # names apart


def test_an_instruct_e5_gets_its_instruction_not_e5s_prefixes(checkpoint_dirs, tmp_path):
    """multilingual-e5-large-instruct was trained on "Instruct: <task>\nQuery: <query>" and passages as they are;
    its e5 name gave it "query: " / "passage: ", silently the wrong inputs."""
    directory = tmp_path / "multilingual-e5-large-instruct"
    shutil.copytree(checkpoint_dirs["xlmr"], directory)
    model = e5np.load(directory)
    instruction = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery: "
    assert model.prefixes == {"query": instruction, "passage": ""}
    np.testing.assert_array_equal(model.encode_queries(["pumpkin recipes"]),
                                  model.encode([instruction + "pumpkin recipes"]))
    np.testing.assert_array_equal(model.encode_passages(["A pumpkin."]), model.encode(["A pumpkin."]))
    assert e5np.load(directory, prefixes={"query": "Instruct: Find the duplicate question\nQuery: "}).prefixes == {
        "query": "Instruct: Find the duplicate question\nQuery: "}


@pytest.mark.live
@pytest.mark.parametrize("mode", ST_MODES)
def test_pooling_modes_against_live_sentence_transformers(checkpoint_dirs, tmp_path, mode):
    SentenceTransformer = pytest.importorskip("sentence_transformers").SentenceTransformer
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from make_variants import pooling_config

    directory = tmp_path / mode
    shutil.copytree(checkpoint_dirs["st-cls"], directory)
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config(mode)))
    texts = ["query: hello world", "a", "the cat sat on the mat " * 3]
    want = SentenceTransformer(str(directory), device="cpu").encode(texts, convert_to_numpy=True)
    assert close(e5np.load(directory).encode(texts), want)


# config_sentence_transformers.json settings -> what encode(), encode_queries() and encode_passages() add
PROMPT_CONFIGS = [
    ({"prompts": {"query": "search_query: ", "document": "search_document: "}, "default_prompt_name": "query"},
     ("search_query: ", "search_query: ", "search_document: ")),
    ({"prompts": {"query": "search_query: ", "document": ""}, "default_prompt_name": "query"},  # declared empty
     ("search_query: ", "search_query: ", "")),
    ({"prompts": {"classification": "classify: "}, "default_prompt_name": "classification"},   # the default is
     ("classify: ", "", "")),                                                                 # encode()'s alone
    ({"prompts": {"corpus": "c: ", "passage": "p: ", "document": "d: "}}, ("", "", "d: ")),   # document first
]


# sentence-transformers 6 would add nothing to passages here (see e5np.checkpoint.PROMPT_NAMES): not a live case
PASSAGE_PROMPT = ({"prompts": {"query": "q: ", "passage": "p: ", "corpus": "c: "}}, ("", "q: ", "p: "))


@pytest.mark.parametrize("settings, added", PROMPT_CONFIGS + [PASSAGE_PROMPT])
def test_prompts_as_sentence_transformers_reads_them(checkpoint_dirs, tmp_path, settings, added):
    directory = with_prompts(checkpoint_dirs["st-cls"], tmp_path / "st", settings)
    model, plain = e5np.load(directory), e5np.load(checkpoint_dirs["st-cls"])
    texts = ["hello world", "a"]
    for call, prefix in zip(["encode", "encode_queries", "encode_passages"], added):
        np.testing.assert_array_equal(getattr(model, call)(texts), plain.encode([prefix + t for t in texts]))


@pytest.mark.live
@pytest.mark.parametrize("settings", [settings for settings, _ in PROMPT_CONFIGS])
def test_prompts_against_live_sentence_transformers(checkpoint_dirs, tmp_path, settings):
    """encode() adds the default prompt, encode_queries / encode_passages their own, as sentence-transformers'
    encode, encode_query and encode_document do."""
    SentenceTransformer = pytest.importorskip("sentence_transformers").SentenceTransformer
    directory = with_prompts(checkpoint_dirs["st-cls"], tmp_path / "st", settings)
    texts = ["hello world", "a", "the cat sat on the mat " * 3]
    theirs = SentenceTransformer(str(directory), device="cpu")
    ours = e5np.load(directory)
    assert close(ours.encode(texts), theirs.encode(texts, convert_to_numpy=True))
    assert close(ours.encode_queries(texts), theirs.encode_query(texts, convert_to_numpy=True))
    assert close(ours.encode_passages(texts), theirs.encode_document(texts, convert_to_numpy=True))
    assert close(ours.encode(texts, prefix=""), theirs.encode(texts, prompt="", convert_to_numpy=True))


def test_max_length_is_a_sentence_transformers_checkpoints_max_seq_length(checkpoint_dirs, tmp_path):
    """sentence-transformers truncates at sentence_bert_config.json's max_seq_length (256 for all-MiniLM-L6-v2,
    whose tokenizer_config.json says 512); e5np took the tokenizer's 512, and its vectors of longer texts
    differed from sentence-transformers' by up to 0.08."""
    assert e5np.load(checkpoint_dirs["minilm"]).max_length == 256
    directory = tmp_path / "model"
    shutil.copytree(checkpoint_dirs["tiny"], directory)
    settings = json.loads((directory / "tokenizer_config.json").read_text())
    (directory / "tokenizer_config.json").write_text(json.dumps({**settings, "model_max_length": 100}))
    assert e5np.load(directory).max_length == 100                      # tokenizer_config.json's model_max_length
    for declared, expected in [(64, 64), (10_000, 128), (None, 100)]:  # capped by the 128 positions; null: unset
        (directory / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": declared}))
        assert e5np.load(directory).max_length == expected
    assert e5np.load(directory, max_length=90).max_length == 90


@pytest.mark.live
def test_long_texts_against_live_sentence_transformers(checkpoint_dirs):
    """all-MiniLM-L6-v2's real weights through sentence-transformers itself, texts past its 256 tokens included."""
    SentenceTransformer = pytest.importorskip("sentence_transformers").SentenceTransformer
    from tests.corpus import LONG_TEXT, PARITY_TEXTS

    texts = PARITY_TEXTS + [LONG_TEXT, " ".join(f"word{i} is here" for i in range(200))]
    want = SentenceTransformer(str(checkpoint_dirs["minilm"]), device="cpu").encode(texts, convert_to_numpy=True)
    assert close(e5np.load(checkpoint_dirs["minilm"]).encode(texts, truncation="ignore"), want)


def lowercasing_xlmr(checkpoint_dirs, directory):
    """The cased XLM-R fixture in sentence-transformers' layout, its sentence_bert_config.json setting do_lower_case."""
    shutil.copytree(checkpoint_dirs["xlmr"], directory)
    (directory / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (directory / "1_Pooling").mkdir()
    (directory / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32,
                                                                      "pooling_mode_mean_tokens": True}))
    (directory / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": True}))
    return directory


LOWERCASE_TEXTS = ["Hello World", "ΟΔΥΣΣΕΥΣ sailed HOME", "İstanbul", "ǅ Title Case", "already lower"]


def lowercased(texts):
    """As sentence-transformers 6 lowercases for do_lower_case: tokenizers' Lowercase, letter by letter."""
    from tokenizers.normalizers import Lowercase

    return [Lowercase().normalize_str(text) for text in texts]


def test_do_lower_case_lowercases_texts_as_sentence_transformers_does(checkpoint_dirs, tmp_path):
    lowering = e5np.load(lowercasing_xlmr(checkpoint_dirs, tmp_path / "model"))
    plain = e5np.load(checkpoint_dirs["xlmr"], pooling="mean", normalize=False, max_length=64)
    lowered = lowercased(LOWERCASE_TEXTS)
    assert lowering.tokenize(LOWERCASE_TEXTS).tokens == plain.tokenize(lowered).tokens
    np.testing.assert_array_equal(lowering.encode(LOWERCASE_TEXTS), plain.encode(lowered))
    assert not np.allclose(plain.encode(LOWERCASE_TEXTS[:1]), plain.encode(lowered[:1]))   # the vocabulary is cased


def lowercasing_minilm(checkpoint_dirs, directory):
    """all-MiniLM-L6-v2 with do_lower_case set: a vocabulary that holds both σ and ς (the XLM-R fixture's has neither)."""
    shutil.copytree(checkpoint_dirs["minilm"], directory)
    (directory / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 256, "do_lower_case": True}))
    return directory


def test_a_word_final_capital_sigma_is_lowercased_as_sentence_transformers_6_does(checkpoint_dirs, tmp_path):
    """Python's str.lower (what sentence-transformers 5 used, and e5np did) makes a word-final Σ a final ς;
    sentence-transformers 6 puts tokenizers' Lowercase first in the tokenizer, which makes every Σ a σ."""
    lowering = e5np.load(lowercasing_minilm(checkpoint_dirs, tmp_path / "model"))
    tokens = lowering.tokenize(["ΟΔΥΣΣΕΥΣ"]).tokens[0]
    assert "".join(tokens).count("σ") == 3 and "ς" not in "".join(tokens), tokens
    assert tokens == e5np.load(checkpoint_dirs["minilm"]).tokenize(["οδυσσευσ"]).tokens[0]


@pytest.mark.live
@pytest.mark.parametrize("make", [lowercasing_xlmr, lowercasing_minilm])
def test_do_lower_case_against_live_sentence_transformers(checkpoint_dirs, tmp_path, make):
    SentenceTransformer = pytest.importorskip("sentence_transformers").SentenceTransformer
    from e5np.parity import parity_report

    directory = make(checkpoint_dirs, tmp_path / "model")
    want = SentenceTransformer(str(directory), device="cpu").encode(LOWERCASE_TEXTS, convert_to_numpy=True)
    assert close(e5np.load(directory).encode(LOWERCASE_TEXTS), want)
    layers = [row for row in parity_report(directory, LOWERCASE_TEXTS, 64)["rows"] if row["stage"].startswith("layer")]
    assert max(row["max_abs"] for row in layers) <= 1e-5              # transformers given the texts lowercased too
