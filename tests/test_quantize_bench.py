"""tools/quantize_bench.py runs end to end on a small STS-B-shaped file and a small random corpus."""

import subprocess
import sys
from pathlib import Path

from tests.checkpoints import TINY_DIR

TOOL = Path(__file__).resolve().parents[1] / "tools" / "quantize_bench.py"
WORDS = "the cat sat on a mat and dog ran home then big red house".split()


def test_runs_and_prints_the_table(tmp_path):
    sts = tmp_path / "sts-test.csv"
    lines = [f"main\tforum\t2015\t{i:04d}\t2.5\t{' '.join(WORDS[i % 7:i % 7 + 5])} {i}\t{' '.join(WORDS[i % 5:])}"
             for i in range(60)]
    sts.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = subprocess.run([sys.executable, TOOL, "--model", TINY_DIR, "--sts", sts, "--rows", "3000",
                             "--queries", "3"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    table = result.stdout
    assert "Recall: STS-B test, 60 queries" in table and "3,000 random unit vectors of 32 dims" in table
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert rows["float32"].split(" | ")[1] == "1.0000"
    assert "binary, int8-rescored x10" in rows and "int8, rescored x4" in rows
    assert "The index end to end (e5np.Index, 65 passages, 60 queries)" in table
    assert rows["float32"].split(" | ")[1] == "1.0000"
    sizes = {name: int(rows[name].split(" | ")[2].strip(" |").replace(",", ""))
             for name in ("int8", "binary", "binary+int8")}
    assert rows["int8, rescore=4"].split(" | ")[2] == rows["int8"].split(" | ")[2]     # the same index's bytes
    assert sizes == {"int8": 128 + 65 * 32 + 128 + 2 * 32 * 4, "binary": 128 + 65 * 4,  # .npy headers: 128
                     "binary+int8": 128 + 65 * (4 + 32) + 128 + 2 * 32 * 4}
    assert "binary+int8, rescore=10" in rows
