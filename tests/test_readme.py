"""The README's copy-paste examples, run as written (with E5NP_MODEL pointing at the tiny checkpoint)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.checkpoints import TINY_DIR

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def example(name, language):
    match = re.search(rf"<!-- example: {name}\b.*?-->\s*```{language}\n(.*?)```", README, re.S)
    assert match, f"README has no {name} example"
    return match.group(1)


def test_cli_example_runs(tmp_path):
    script = f'e5np() {{ "{sys.executable}" -m e5np "$@"; }}\nset -euo pipefail\n' + example("cli", "bash")
    env = dict(os.environ, E5NP_MODEL=str(TINY_DIR))
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert np.load(tmp_path / "corpus.npy").shape == (3, 32)
    assert (tmp_path / "my-index" / "vectors.npy").is_file()
    assert "query: where is the eiffel tower?" in result.stdout
    assert len((tmp_path / "vectors.jsonl").read_text().splitlines()) == 3


def test_server_example_runs(load_model):
    pytest.importorskip("uvicorn", reason='the serve extra: pip install "e5np[serve]"')
    from e5np.server import make_server, serve_in_thread

    # Served under the name the example asks for: another model's name gets 404 model_not_found.
    server = make_server(load_model("tiny"), "127.0.0.1", 0, model_name="intfloat/e5-small")
    serve_in_thread(server)
    try:
        code = example("server", "python").replace("8080", str(server.server_address[1]))
        namespace = {}
        exec(compile(code, "README.md", "exec"), namespace)
        assert len(namespace["vector"]) == 32
        assert abs(np.linalg.norm(namespace["vector"]) - 1) < 1e-6
    finally:
        server.shutdown()
        server.server_close()
