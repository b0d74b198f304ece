"""docs/walkthrough.py runs (its own asserts check every step against the model) and the committed
docs/walkthrough.md still links each step to the right lines of e5np's modules."""

import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

from tests.checkpoints import TINY_DIR

ROOT = Path(__file__).resolve().parents[1]


def test_walkthrough_runs_and_checks_itself():
    for args in ([], ["--model", str(TINY_DIR), "--text", "the cat sat on the mat"]):
        result = subprocess.run([sys.executable, str(ROOT / "docs" / "walkthrough.py"), *args],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        assert "## 5. Pooling and normalization" in result.stdout


def test_committed_walkthrough_links_point_at_the_functions():
    text = (ROOT / "docs" / "walkthrough.md").read_text(encoding="utf-8")
    links = re.findall(r"\[`(\w+)`\]\(\.\./e5np/(\w+)\.py#L(\d+)-L(\d+)\)", text)
    assert {name for name, _, _, _ in links} >= {"embed", "self_attention", "gelu", "normal_tail", "mean_pool",
                                                 "l2_normalize"}
    for name, module, start, end in links:
        lines, first = inspect.getsourcelines(getattr(importlib.import_module(f"e5np.{module}"), name))
        assert (int(start), int(end)) == (first, first + len(lines) - 1), (
            f"docs/walkthrough.md links {name} to stale lines; run: python docs/walkthrough.py > docs/walkthrough.md")
