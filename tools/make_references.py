"""Write the golden reference vectors the default (torch-free) test tier compares against.

For each test checkpoint (see tests/checkpoints.py) this runs Hugging Face transformers - BertModel
with eager attention, fp32, max_length the model's limit (512; 256 for all-MiniLM-L6-v2, its
sentence_bert_config.json's max_seq_length, where sentence-transformers truncates), padding=True,
truncation=True - then E5's average_pool and F.normalize, and saves tests/references/<name>.npz with:

  texts             the input texts (UTF-8 JSON)
  input_ids         [n, T] the token ids transformers' tokenizer produced (0-padded)
  embeddings        [n, H] float32 normalized embeddings
  embeddings_f64    [n, H] the same computed by transformers in float64
  hidden_index      [m, 2] (text, position) of the sampled last-hidden-state rows below
  hidden            [m, H] float32 last hidden state at those rows (every real token of texts of
                    <= 16 tokens, every 4th up to 128 tokens, every 16th beyond, to keep the file small)
  layers_text       the index of one text whose every layer is kept
  layers            [L + 1, T, H] that text's embedding output and each layer's output
  versions          JSON: torch, transformers, numpy versions; weights digest for generated checkpoints

For st-cls (a sentence-transformers layout) it also runs sentence-transformers itself with each pooling
mode (cls, mean, max, mean_sqrt_len, and mean followed by Normalize): embeddings_<mode>.

Usage:  python tools/make_references.py [--rebuild-tiny] [tiny minilm e5-shaped bert-wide st-cls xlmr]
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from e5np.parity import transformers_forward  # noqa: E402
from tests.checkpoints import FIXTURES, REFERENCES, TINY_DIR, make_e5_shaped, make_tiny, minilm_dir  # noqa: E402
from tests.corpus import PARITY_TEXTS  # noqa: E402

LAYERS_TEXT = 4  # the E5 model card's query


def sample_positions(length):
    step = 1 if length <= 16 else 4 if length <= 128 else 16
    return np.arange(0, length, step)


def reference_arrays(directory, texts, max_length, extra_versions=None):
    ref = transformers_forward(directory, texts, max_length=max_length)
    ref64 = transformers_forward(directory, texts, max_length=max_length, dtype="float64")
    lengths = ref.attention_mask.sum(axis=1)
    index = np.array([(i, t) for i in range(len(texts)) for t in sample_positions(lengths[i])], dtype=np.int32)
    last = ref.hidden_states[-1]
    versions = dict(ref.versions, numpy=np.__version__, **(extra_versions or {}))
    return {
        "texts": np.frombuffer(json.dumps(texts).encode("utf-8"), dtype=np.uint8),
        "input_ids": ref.input_ids.astype(np.int32),
        "embeddings": ref.embeddings.astype(np.float32),
        "embeddings_f64": ref64.embeddings,
        "hidden_index": index,
        "hidden": last[index[:, 0], index[:, 1]],
        "layers_text": np.int32(LAYERS_TEXT),
        "layers": np.stack([h[LAYERS_TEXT, :lengths[LAYERS_TEXT]] for h in ref.hidden_states]),
        "max_length": np.int32(max_length),
        "versions": np.frombuffer(json.dumps(versions).encode(), dtype=np.uint8),
    }


ST_MODES = ("cls", "mean", "max", "mean_sqrt_len", "mean_normalize")


def sentence_transformers_arrays(directory, texts, workdir):
    """sentence-transformers' own output on `directory` with its Pooling module set to each mode."""
    import shutil

    from sentence_transformers import SentenceTransformer

    sys.path.insert(0, str(Path(__file__).parent))
    from make_variants import pooling_config

    arrays = {}
    for mode in ST_MODES:
        variant = Path(workdir) / mode
        shutil.copytree(directory, variant)
        pooling = "mean" if mode == "mean_normalize" else mode
        (variant / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config(pooling)))
        if mode == "mean_normalize":
            modules = json.loads((variant / "modules.json").read_text())
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
            (variant / "modules.json").write_text(json.dumps(modules))
        model = SentenceTransformer(str(variant), device="cpu")
        arrays[f"embeddings_{mode}"] = model.encode(texts, batch_size=len(texts), convert_to_numpy=True)
    return arrays


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", default=["tiny", "minilm", "e5-shaped", "bert-wide", "st-cls", "xlmr"])
    parser.add_argument("--rebuild-tiny", action="store_true", help="regenerate tests/fixtures/tiny-bert first")
    args = parser.parse_args()
    if args.rebuild_tiny:
        make_tiny()
    REFERENCES.mkdir(exist_ok=True)
    for name in args.names:
        with tempfile.TemporaryDirectory() as tmp:
            extra = {}
            if name == "tiny":
                directory, max_length = TINY_DIR, 128
            elif name == "minilm":
                directory, max_length = minilm_dir(), 256        # sentence_bert_config.json's max_seq_length
            elif name == "e5-shaped":
                directory, digest = make_e5_shaped(Path(tmp) / "e5-shaped")
                max_length, extra = 512, {"weights_sha256": digest}
            elif name in ("bert-wide", "st-cls", "xlmr"):
                directory = FIXTURES / name
                max_length = json.loads((directory / "tokenizer_config.json").read_text())["model_max_length"]
            else:
                parser.error(f"unknown checkpoint {name!r}")
            arrays = reference_arrays(directory, PARITY_TEXTS, max_length, extra)
            if name == "st-cls":
                arrays.update(sentence_transformers_arrays(directory, PARITY_TEXTS, Path(tmp) / "st"))
        out = REFERENCES / f"{name}.npz"
        np.savez_compressed(out, **arrays)
        print(f"{out}: {len(PARITY_TEXTS)} texts, {out.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
