"""Build the small architecture-variant checkpoints (committed under tests/fixtures/) with transformers.

    python tools/make_variants.py          # then: python tools/make_references.py bert-wide st-cls xlmr

- bert-wide  BertModel with other sizes than e5-small: hidden 48, 3 layers, 6 heads of 8, FFN 96,
             layer_norm_eps 1e-7, 64 positions; the tiny WordPiece tokenizer.
- st-cls     a sentence-transformers layout (modules.json, 1_Pooling/config.json with CLS pooling, no
             Normalize) around a 2-layer BertModel; references cover every pooling mode.
- xlmr       XLMRobertaModel (multilingual-e5's architecture): positions offset past pad_token_id=1,
             type vocabulary of one, eps 1e-5, and a SentencePiece-Unigram tokenizer.json trained here.
Weights are transformers' own random initialisation (torch.manual_seed), with initializer_range 0.2
so that attention is far from uniform.
"""

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.checkpoints import FIXTURES, TINY_DIR  # noqa: E402
from tests.corpus import PARITY_TEXTS  # noqa: E402

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")
MULTILINGUAL = [
    "query: how much protein should a female eat", "passage: Le chat est assis sur le tapis.",
    "Der schnelle braune Fuchs springt über den faulen Hund.", "El rápido zorro marrón salta sobre el perro.",
    "东京是日本的首都。", "Москва — столица России.", "مرحبا بالعالم", "The quick brown fox jumps over the lazy dog.",
]


def save(model, directory, max_length, tokenizer_from=TINY_DIR):
    directory = Path(directory)
    if directory.exists():
        shutil.rmtree(directory)
    model.save_pretrained(str(directory), safe_serialization=True)
    if tokenizer_from is not None:
        for name in TOKENIZER_FILES:
            shutil.copy(Path(tokenizer_from) / name, directory / name)
        settings = json.loads((directory / "tokenizer_config.json").read_text())
        (directory / "tokenizer_config.json").write_text(json.dumps(dict(settings, model_max_length=max_length), indent=2))
    return directory


def bert_wide():
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(6)
    vocab = len((TINY_DIR / "vocab.txt").read_text().splitlines())
    config = BertConfig(vocab_size=vocab, hidden_size=48, num_hidden_layers=3, num_attention_heads=6,
                        intermediate_size=96, max_position_embeddings=64, layer_norm_eps=1e-7, initializer_range=0.2)
    return save(BertModel(config, add_pooling_layer=False), FIXTURES / "bert-wide", max_length=64)


def st_cls():
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(7)
    vocab = len((TINY_DIR / "vocab.txt").read_text().splitlines())
    config = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, initializer_range=0.2)
    directory = save(BertModel(config), FIXTURES / "st-cls", max_length=128)
    (directory / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ], indent=2))
    (directory / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128, "do_lower_case": False}))
    (directory / "1_Pooling").mkdir()
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config("cls"), indent=2))
    return directory


def pooling_config(mode):
    flags = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens", "max": "pooling_mode_max_tokens",
             "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens"}
    return {"word_embedding_dimension": 32, **{flag: flag == flags[mode] for flag in flags.values()},
            "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": False}


def xlmr():
    import torch
    from tokenizers import SentencePieceUnigramTokenizer, processors
    from transformers import XLMRobertaConfig, XLMRobertaModel

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # XLM-R's ids 0..4 (<mask> is last in the real one)
    tokenizer = SentencePieceUnigramTokenizer()
    tokenizer.train_from_iterator(PARITY_TEXTS[:-2] + MULTILINGUAL * 3, vocab_size=400, special_tokens=specials,
                                  unk_token="<unk>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    torch.manual_seed(8)
    config = XLMRobertaConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=4, intermediate_size=64, max_position_embeddings=130,
                              type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                              layer_norm_eps=1e-5, initializer_range=0.2)
    directory = save(XLMRobertaModel(config, add_pooling_layer=False), FIXTURES / "xlmr", 128, tokenizer_from=None)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "XLMRobertaTokenizer", "model_max_length": 128, "bos_token": "<s>", "eos_token": "</s>",
        "cls_token": "<s>", "sep_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "<mask>"},
        indent=2))
    # transformers' XLMRobertaTokenizer rebuilds its own normalizer and pre-tokenizer rather than use those
    # in tokenizer.json; save the pipeline it actually runs, so both engines tokenize alike.
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(directory)).backend_tokenizer.save(str(directory / "tokenizer.json"))
    return directory


if __name__ == "__main__":
    builders = {"bert-wide": bert_wide, "st-cls": st_cls, "xlmr": xlmr}
    for build in [builders[name] for name in sys.argv[1:]] or builders.values():
        directory = build()
        size = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
        print(f"{directory}: {size / 1024:.0f} KiB")
