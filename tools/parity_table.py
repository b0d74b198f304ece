"""Print the README's parity table: e5np vs transformers on every test checkpoint (needs e5np[parity]).

    python tools/parity_table.py

Each row is `e5np parity` on the checkpoint over the test corpus (tests/corpus.py: empty, whitespace,
accents, CJK, emoji, code, literal special tokens, control characters, a > 512-token text, ...).
"""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import e5np  # noqa: E402
from e5np.parity import parity_report  # noqa: E402
from tests.checkpoints import FIXTURES, TINY_DIR, make_e5_shaped, minilm_dir  # noqa: E402
from tests.corpus import PARITY_TEXTS  # noqa: E402


def main():
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints = [
            ("e5-small-shaped (12 layers, random weights)", make_e5_shaped(Path(tmp) / "e5")[0]),
            ("all-MiniLM-L6-v2 (real weights, truncated at 256 tokens)", minilm_dir()),
            ("tiny random BERT (2 layers, hidden 32)", TINY_DIR),
            ("bert-wide (3 layers, hidden 48, eps 1e-7)", FIXTURES / "bert-wide"),
            ("xlmr (XLM-RoBERTa, 2 layers)", FIXTURES / "xlmr"),
        ]
        print("| checkpoint | normalized max-abs | e5np-f32 vs f64 | transformers-f32 vs f64 "
              "| worst layer max-abs | e5np-f64 vs transformers-f64 |")
        print("|---|---|---|---|---|---|")
        for label, directory in checkpoints:
            max_length = e5np.load(directory).max_length
            r = parity_report(directory, PARITY_TEXTS, max_length)
            last = r["rows"][-1]
            worst_layer = max(row["max_abs"] for row in r["rows"][:-2])
            f64 = max(row["e5np_f64_vs_transformers_f64"] for row in r["rows"])
            print(f"| {label} | {last['max_abs']:.1e} | {last['e5np_vs_f64']:.1e} | {last['transformers_vs_f64']:.1e} "
                  f"| {worst_layer:.1e} | {f64:.1e} |")
        print(f"\n{len(PARITY_TEXTS)} texts; transformers {r['versions']['transformers']}, torch {r['versions']['torch']}")


if __name__ == "__main__":
    main()
