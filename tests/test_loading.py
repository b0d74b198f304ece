"""The strict loader: every broken checkpoint fails at load with the file and the problem named;
every valid variant (float16, bfloat16, bert. prefix, optional buffers) loads and gives the same vectors."""

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import e5np
from e5np.checkpoint import CheckpointError
from tests.checkpoints import TINY_DIR

TEXTS = ["the cat sat on the mat", "", "query: embed this sentence"]


@pytest.fixture(scope="module")
def tiny_vectors():
    return e5np.load(TINY_DIR).encode(TEXTS)


@pytest.fixture
def ckpt(tmp_path):
    """A writable copy of the tiny checkpoint; edit(fn) rewrites its weights through fn(dict)."""
    directory = tmp_path / "ckpt"
    shutil.copytree(TINY_DIR, directory)
    return directory


def edit_weights(directory, change):
    tensors = load_file(str(directory / "model.safetensors"))
    tensors = change(tensors) or tensors
    save_file(tensors, str(directory / "model.safetensors"))


def edit_config(directory, **changes):
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


def expect_error(directory, *words, error=CheckpointError):
    with pytest.raises(error) as info:
        e5np.load(directory)
    for word in words:
        assert word in str(info.value), f"{word!r} not in: {info.value}"
    return str(info.value)


# --- broken checkpoints --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_missing_file(ckpt, name):
    (ckpt / name).unlink()
    expect_error(ckpt, str(ckpt / name), "file not found")


def test_missing_tokenizer(ckpt):
    (ckpt / "tokenizer.json").unlink()
    (ckpt / "vocab.txt").unlink()
    expect_error(ckpt, "no tokenizer found", "tokenizer.json", "vocab.txt")


def test_only_pytorch_model_bin_is_never_unpickled(ckpt):
    (ckpt / "model.safetensors").unlink()
    (ckpt / "pytorch_model.bin").write_bytes(b"this would be a pickle; e5np must not open it")
    expect_error(ckpt, "pytorch_model.bin", "will not", "save_pretrained", "safe_serialization=True")


def test_truncated_safetensors(ckpt):
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    expect_error(ckpt, str(ckpt / "model.safetensors"), "not a readable safetensors file")


@pytest.mark.parametrize("garbage", [b"", b"\x00" * 7, b"\xff" * 64, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}"])
def test_corrupt_safetensors(ckpt, garbage):
    (ckpt / "model.safetensors").write_bytes(garbage)
    expect_error(ckpt, "model.safetensors", "not a readable safetensors file")


def test_corrupt_config(ckpt):
    (ckpt / "config.json").write_text("{ not json")
    expect_error(ckpt, "config.json", "not readable as JSON")


def test_missing_tensor(ckpt):
    edit_weights(ckpt, lambda t: {k: v for k, v in t.items() if k != "encoder.layer.1.attention.self.key.weight"})
    expect_error(ckpt, "missing 1 tensor(s): encoder.layer.1.attention.self.key.weight")


def test_unexpected_tensor(ckpt):
    edit_weights(ckpt, lambda t: t.update({"cls.predictions.bias": np.zeros(3, np.float32)}))
    expect_error(ckpt, "unexpected 1 tensor(s): cls.predictions.bias")


def test_wrong_shape(ckpt):
    edit_weights(ckpt, lambda t: t.update({"encoder.layer.0.intermediate.dense.weight": np.zeros((63, 32), np.float32)}))
    expect_error(ckpt, "encoder.layer.0.intermediate.dense.weight", "[63, 32]", "[64, 32]")


def test_config_disagrees_with_weights(ckpt):
    edit_config(ckpt, num_hidden_layers=3)
    expect_error(ckpt, "missing", "encoder.layer.2.", "3 layers")
    edit_config(ckpt, num_hidden_layers=2, hidden_size=48)
    expect_error(ckpt, "has shape", "[48")


@pytest.mark.parametrize("changes, words", [
    ({"num_attention_heads": 5}, ["hidden_size 32 is not divisible by num_attention_heads 5"]),
    ({"hidden_act": "relu"}, ["hidden_act 'relu' is not supported"]),
    ({"hidden_act": "gelu_new"}, ["hidden_act 'gelu_new'"]),
    ({"position_embedding_type": "relative_key"}, ["position_embedding_type 'relative_key'"]),
    ({"model_type": "gpt2"}, ["model_type 'gpt2'"]),
    ({"hidden_size": -4}, ["hidden_size must be a positive integer"]),
    ({"num_hidden_layers": "12"}, ["num_hidden_layers must be a positive integer"]),
    ({"layer_norm_eps": 0}, ["layer_norm_eps"]),
    ({"vocab_size": None}, ["vocab_size must be a positive integer"]),
])
def test_bad_config(ckpt, changes, words):
    edit_config(ckpt, **changes)
    expect_error(ckpt, "config.json", *words)


def test_missing_config_field(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    del config["intermediate_size"]
    (ckpt / "config.json").write_text(json.dumps(config))
    expect_error(ckpt, "missing required field 'intermediate_size'")


def test_nan_weights(ckpt):
    def poison(t):
        t["embeddings.LayerNorm.weight"][3] = np.nan
    edit_weights(ckpt, poison)
    expect_error(ckpt, "embeddings.LayerNorm.weight", "NaN")


def test_integer_weights(ckpt):
    edit_weights(ckpt, lambda t: t.update({"embeddings.LayerNorm.bias": np.zeros(32, np.int32)}))
    expect_error(ckpt, "embeddings.LayerNorm.bias", "I32", "float")


def test_no_such_directory(tmp_path):
    with pytest.raises(e5np.ModelNotFoundError, match="no such directory"):
        e5np.load(tmp_path / "nothing-here")
    with pytest.raises(e5np.ModelNotFoundError, match="no such directory"):
        e5np.load("./not/a/dir")
    with pytest.raises(e5np.ModelNotFoundError, match="'': no such directory"):
        e5np.load("")


def test_a_file_a_tilde_and_a_non_path(monkeypatch, tmp_path):
    with pytest.raises(e5np.ModelNotFoundError, match="config.json is a file: pass the directory that holds"):
        e5np.load(TINY_DIR / "config.json")
    monkeypatch.setenv("HOME", str(TINY_DIR.parent))
    assert e5np.load(f"~/{TINY_DIR.name}").dim == 32                   # as a shell would expand it
    for bad in (None, 5, ["a"]):
        with pytest.raises(TypeError, match=f"a hub id or a directory .str or path., got {type(bad).__name__}"):
            e5np.load(bad)


# --- valid variants ------------------------------------------------------------------------------
def test_linear_weights_are_contiguous_in_out_copies_of_the_file():
    """torch stores [out, in]; e5np keeps [in, out] C-contiguous (BLAS multiplies it faster), same numbers."""
    tensors = load_file(str(TINY_DIR / "model.safetensors"))
    model = e5np.load(TINY_DIR)
    layer = model.params["layers"][1]
    for name, linear in [("attention.self.query", layer["attention"]["query"]),
                         ("attention.self.key", layer["attention"]["key"]),
                         ("attention.self.value", layer["attention"]["value"]),
                         ("attention.output.dense", layer["attention"]["output"]),
                         ("intermediate.dense", layer["ffn"]["up"]), ("output.dense", layer["ffn"]["down"])]:
        stored = tensors[f"encoder.layer.1.{name}.weight"]
        assert linear["w"].flags.c_contiguous and linear["w"].shape == stored.T.shape, name
        np.testing.assert_array_equal(linear["w"], stored.T)
        np.testing.assert_array_equal(linear["b"], tensors[f"encoder.layer.1.{name}.bias"])


def test_float16_weights_load_as_float32(ckpt):
    edit_weights(ckpt, lambda t: {k: v.astype(np.float16) for k, v in t.items()})
    model = e5np.load(ckpt)
    direct = load_file(str(ckpt / "model.safetensors"))["embeddings.word_embeddings.weight"]
    np.testing.assert_array_equal(model.params["embeddings"]["word"], direct.astype(np.float32))
    assert model.encode(TEXTS).dtype == np.float32


def test_bfloat16_weights_are_widened_exactly(ckpt, tiny_vectors):
    torch = pytest.importorskip("torch")  # only to write a bf16 file; reading needs no torch
    from safetensors.torch import save_file as save_torch

    tensors = load_file(str(ckpt / "model.safetensors"))
    bf16 = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in tensors.items()}
    save_torch(bf16, str(ckpt / "model.safetensors"))
    model = e5np.load(ckpt)
    for name, ours in [("embeddings.word_embeddings.weight", model.params["embeddings"]["word"]),
                       ("encoder.layer.1.output.dense.weight", model.params["layers"][1]["ffn"]["down"]["w"].T)]:
        np.testing.assert_array_equal(ours, bf16[name].float().numpy())
    assert np.abs(model.encode(TEXTS) - tiny_vectors).max() < 0.05  # same model, rounded weights


def test_bfloat16_reader_without_torch(ckpt):
    """bf16 bytes written by hand: the top half of float32 bit patterns."""
    tensors = load_file(str(ckpt / "model.safetensors"))
    header, data, offset = {}, [], 0
    for name in sorted(tensors):
        top = (tensors[name].view(np.uint32) >> 16).astype(np.uint16)
        header[name] = {"dtype": "BF16", "shape": list(top.shape), "data_offsets": [offset, offset + top.nbytes]}
        data.append(top.tobytes())
        offset += top.nbytes
    blob = json.dumps(header).encode()
    (ckpt / "model.safetensors").write_bytes(len(blob).to_bytes(8, "little") + blob + b"".join(data))
    model = e5np.load(ckpt)
    want = ((tensors["embeddings.position_embeddings.weight"].view(np.uint32) >> 16) << 16).view(np.float32)
    np.testing.assert_array_equal(model.params["embeddings"]["position"], want)


def test_bert_prefix_pooler_and_position_ids(ckpt, tiny_vectors):
    def rename(t):
        out = {"bert." + k: v for k, v in t.items()}
        out["bert.pooler.dense.weight"] = np.zeros((32, 32), np.float32)
        out["bert.pooler.dense.bias"] = np.zeros(32, np.float32)
        out["bert.embeddings.position_ids"] = np.arange(128, dtype=np.int64)[None]
        return out
    edit_weights(ckpt, rename)
    np.testing.assert_array_equal(e5np.load(ckpt).encode(TEXTS), tiny_vectors)


def test_same_tensor_twice_is_an_error(ckpt):
    edit_weights(ckpt, lambda t: t.update({"bert.embeddings.LayerNorm.bias": t["embeddings.LayerNorm.bias"]}))
    expect_error(ckpt, "stored twice", "embeddings.LayerNorm.bias")


def test_tokenizer_from_vocab_txt_matches_tokenizer_json(checkpoint_dirs, tmp_path):
    from tests.corpus import PARITY_TEXTS

    directory = tmp_path / "minilm-no-tokenizer-json"
    shutil.copytree(checkpoint_dirs["minilm"], directory)
    (directory / "tokenizer.json").unlink()
    from_vocab = e5np.load(directory).tokenize(PARITY_TEXTS)
    from_json = e5np.load(checkpoint_dirs["minilm"]).tokenize(PARITY_TEXTS)
    np.testing.assert_array_equal(from_vocab.input_ids, from_json.input_ids)


def test_preset_padding_in_tokenizer_json_is_overridden(minilm, checkpoint_dirs):
    preset = json.loads((checkpoint_dirs["minilm"] / "tokenizer.json").read_text())
    assert preset["padding"]["strategy"] == {"Fixed": 128} and preset["truncation"]["max_length"] == 128
    batch = minilm.tokenize(["hello", "hello world again"])
    assert batch.input_ids.shape == (2, 5) and batch.lengths.tolist() == [3, 5]
    assert minilm.max_length == 256                                    # its sentence_bert_config.json's, not 128


def test_corrupt_tokenizer_json(ckpt):
    (ckpt / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "NotAModel"}}')
    expect_error(ckpt, str(ckpt / "tokenizer.json"), "not a valid tokenizers file")


def test_vocab_without_special_tokens(ckpt):
    (ckpt / "tokenizer.json").unlink()
    (ckpt / "vocab.txt").write_text("a\nb\nc\n")
    expect_error(ckpt, "vocab.txt", "'[CLS]' is not in the vocabulary")


def test_config_not_an_object(ckpt):
    (ckpt / "config.json").write_text("[1, 2, 3]")
    expect_error(ckpt, "config.json", "expected a JSON object")
