"""tools/breakdown.py: its parts account for the run without counting anything twice, it counts the linear layers'
FLOPs exactly, changes no vector, and leaves e5np.engine as it found it."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from e5np import engine
from tests.checkpoints import TINY_DIR
from tests.corpus import PARITY_TEXTS
from tests.row_independence import assert_same_vectors

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import breakdown  # noqa: E402

BREAKDOWN = Path(breakdown.__file__)


@pytest.fixture(scope="module")
def minilm_run(minilm):
    return breakdown.measure(minilm, PARITY_TEXTS)


def test_parts_add_up_to_the_run(minilm_run):
    _, parts, _, wall = minilm_run
    assert list(parts) == list(breakdown.PARTS.values()) + [breakdown.OTHER]
    timed = sum(seconds for part, seconds in parts.items() if part != breakdown.OTHER)
    assert all(seconds > 0 for part, seconds in parts.items() if part != breakdown.OTHER)
    assert timed <= wall                                               # counting a callee twice would pass wall
    assert parts[breakdown.OTHER] == pytest.approx(wall - timed)
    assert parts[breakdown.PARTS["linear"]] > parts[breakdown.PARTS["gelu"]]


def test_linear_flops_are_the_models(minilm, minilm_run):
    _, _, flops, _ = minilm_run
    c = minilm.config
    tokens = int(minilm.tokenize(PARITY_TEXTS).lengths.sum())
    per_token_and_layer = 2 * (4 * c.hidden_size**2 + 2 * c.hidden_size * c.intermediate_size)  # q, k, v, o, up, down
    assert flops == tokens * c.num_hidden_layers * per_token_and_layer


def test_timing_changes_no_vector(minilm, minilm_run):
    vectors = minilm_run[0]
    np.testing.assert_array_equal(vectors, minilm.encode(PARITY_TEXTS, threads=1, truncation="ignore"))
    two_workers, parts, _, wall = breakdown.measure(minilm, PARITY_TEXTS, threads=2)
    assert_same_vectors(two_workers, vectors)                          # batched differently: see test_batching
    assert sum(parts.values()) == pytest.approx(2 * wall)              # shares of both workers' time


def test_engine_is_restored_even_after_an_error():
    before = {name: getattr(engine, name) for name in breakdown.PARTS}
    with pytest.raises(RuntimeError, match="in the middle"):
        with breakdown.timing():
            assert engine.linear is not before["linear"]
            raise RuntimeError("in the middle")
    assert {name: getattr(engine, name) for name in breakdown.PARTS} == before


def test_the_script_prints_every_part():
    result = subprocess.run([sys.executable, str(BREAKDOWN), "--model", str(TINY_DIR), "--corpus", "short",
                             "--texts", "20"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "seconds" not in line]
    assert len(rows) == len(breakdown.PARTS) + 1
    assert "GFLOP/s a worker" in result.stdout and "20 short texts" in result.stdout


@pytest.mark.live
def test_onnxruntime_parts_account_for_its_run(load_model, tmp_path):
    """ONNX Runtime's fused ops, from its profiler: each one there, all within the run, MatMul's FLOPs those of the
    padded batches (ONNX Runtime computes the padding)."""
    pytest.importorskip("onnxruntime")
    tiny, texts = load_model("tiny"), PARITY_TEXTS * 3
    parts, flops, wall = breakdown.onnxruntime_parts(TINY_DIR, tiny, texts, tmp_path, batch_size=4)
    assert list(parts) == breakdown.ORT_OPS + [breakdown.ORT_OTHER]
    assert all(parts[op] > 0 for op in breakdown.ORT_OPS), parts     # every layer fused: bench checks the counts
    assert sum(parts.values()) == pytest.approx(wall)
    lengths = sorted(tiny.tokenize(texts).lengths)
    padded = sum(len(batch) * max(batch) for batch in (lengths[i:i + 4] for i in range(0, len(lengths), 4)))
    c = tiny.config
    assert flops == padded * 2 * c.num_hidden_layers * (c.hidden_size**2 + 2 * c.hidden_size * c.intermediate_size)


@pytest.mark.live
def test_the_script_prints_onnxruntimes_ops():
    pytest.importorskip("onnxruntime")
    result = subprocess.run([sys.executable, str(BREAKDOWN), "--model", str(TINY_DIR), "--corpus", "short",
                             "--texts", "20", "--onnxruntime"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    ort_table = result.stdout.split("| ONNX Runtime op |", 1)[1]
    rows = [line for line in ort_table.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == len(breakdown.ORT_OPS) + 1 and "MatMul (" in ort_table and "GFLOP/s)" in ort_table
    assert "ONNX Runtime, fused model, one thread:" in result.stdout and "e5np untimed on one worker:" in result.stdout
