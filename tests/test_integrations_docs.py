"""docs/integrations.md's examples, run as written, each in a fresh Python, on the real MiniLM weights named as an
E5 (so E5's prefixes apply) in place of intfloat/e5-small, which cannot be downloaded here."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integrations_support import e5_minilm_dir, framework  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[1]
DOCS = (ROOT / "docs" / "integrations.md").read_text(encoding="utf-8")

EXAMPLES = {  # example name -> (the framework it needs, the lines it prints)
    "langchain": ("langchain_core", ["Adult women need about 46 grams of protein a day."]),
    "llama-index": ("llama_index.core", ["Paris is the capital of France."]),
    "chroma": ("chromadb", ["paris", "protein"]),
}


def example(name):
    match = re.search(rf"<!-- example: {name}\b.*?-->\s*```python\n(.*?)```", DOCS, re.S)
    assert match, f"docs/integrations.md has no {name} example"
    return match.group(1)


def test_every_example_is_run():
    assert set(re.findall(r"<!-- example: (\S+)", DOCS)) == set(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_runs(name, tmp_path, e5_minilm_dir):  # noqa: F811
    module, printed = EXAMPLES[name]
    framework(module)
    code = example(name)
    assert '"intfloat/e5-small"' in code
    code = code.replace('"intfloat/e5-small"', repr(str(e5_minilm_dir)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == printed
