"""`e5np parity`: the report's numbers on the fixture checkpoints, its exit status, its JSON."""

import json
import subprocess
import sys

import pytest

from e5np.parity import DEFAULT_TEXTS, parity_report
from tests.checkpoints import TINY_DIR


def cli(*args):
    return subprocess.run([sys.executable, "-m", "e5np", *map(str, args)], capture_output=True, text=True, timeout=600)


@pytest.mark.live
@pytest.mark.parametrize("name", ["tiny", "e5-shaped"])
def test_report_numbers(checkpoint_dirs, load_model, name):
    model = load_model(name)
    report = parity_report(checkpoint_dirs[name], DEFAULT_TEXTS, model.max_length)
    stages = [r["stage"] for r in report["rows"]]
    assert stages == ["embeddings"] + [f"layer {i}" for i in range(1, model.config.num_hidden_layers + 1)] + [
        "pooled", "normalized"]
    assert report["passed"] and report["normalized_max_abs"] <= 1e-6
    for row in report["rows"]:
        assert row["e5np_f64_vs_transformers_f64"] <= 1e-10, row
        assert row["max_abs"] <= 1e-5, row
        # e5np-float32 is as near float64 truth as transformers-float32 (within float32 noise)
        assert row["e5np_vs_f64"] <= 2 * row["transformers_vs_f64"] + 1e-6, row


@pytest.mark.live
def test_cli_json_and_exit_status(tmp_path):
    (tmp_path / "texts.txt").write_text("query: one\npassage: two words\n")
    ok = cli("parity", "-m", TINY_DIR, "--texts", tmp_path / "texts.txt", "--json")
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report["texts"] == 2 and report["passed"] and report["rows"][-1]["stage"] == "normalized"
    strict = cli("parity", "-m", TINY_DIR, "--tolerance", "1e-15")
    assert strict.returncode == 1 and "FAIL: normalized embeddings max-abs" in strict.stdout
    table = cli("parity", "-m", TINY_DIR)
    assert table.returncode == 0 and "PASS" in table.stdout and "layer 2" in table.stdout


def test_without_torch_names_the_extra():
    code = ("import sys; sys.modules['torch'] = None; from e5np.cli import main; "
            f"sys.exit(main(['parity', '-m', {str(TINY_DIR)!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert 'pip install "e5np[parity]"' in result.stderr and "Traceback" not in result.stderr


@pytest.mark.live
@pytest.mark.parametrize("mode", ["cls", "max", "mean_sqrt_len"])
def test_the_reference_pools_as_the_checkpoint_says(checkpoint_dirs, tmp_path, mode):
    """The reference side pooled with E5's mean whatever the checkpoint said: `e5np parity` on a CLS-pooled model
    (BAAI/bge-small, the st-cls fixture) reported FAIL, normalized max-abs 1.89, comparing CLS with mean vectors."""
    import shutil

    directory = tmp_path / mode
    shutil.copytree(checkpoint_dirs["st-cls"], directory)               # CLS pooling, no Normalize module
    (directory / "1_Pooling" / "config.json").write_text(json.dumps({"embedding_dimension": 32, "pooling_mode": {
        "cls": "cls", "max": "max", "mean_sqrt_len": "mean_sqrt_len_tokens"}[mode]}))
    report = parity_report(directory, DEFAULT_TEXTS, 128)
    assert report["passed"] and report["normalized_max_abs"] <= 1e-6, report["rows"][-2:]
    pooled = next(row for row in report["rows"] if row["stage"] == "pooled")
    assert pooled["max_rel"] <= 1e-6 and pooled["e5np_f64_vs_transformers_f64"] <= 1e-10, pooled
