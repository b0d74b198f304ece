"""tools/bench.py: its corpora are what its help says, its ceiling measures the model's own shapes, and it runs."""

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import e5np
from tests.checkpoints import TINY_DIR, with_prompts

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import bench  # noqa: E402

BENCH = Path(bench.__file__)


@pytest.fixture(scope="module")
def e5_shaped(load_model):
    return load_model("e5-shaped")                                        # bert-base-uncased's vocabulary


@pytest.mark.parametrize("kind, fewest, most", [("short", 8, 16), ("long", 256, 512), ("mixed", 5 + 2, 400 + 2)])
def test_corpus_token_lengths(e5_shaped, kind, fewest, most):
    lengths = e5_shaped.tokenize(bench.make_corpus(e5_shaped, kind, 300)).lengths   # words of 3+ letters from the vocab
    assert lengths.min() >= fewest and lengths.max() <= most              # are one token each, + [CLS], [SEP]
    assert lengths.max() - lengths.min() >= (most - fewest) // 2          # spread over the range, not one length


def test_corpus_is_deterministic(e5_shaped):
    assert bench.make_corpus(e5_shaped, "mixed", 50) == bench.make_corpus(e5_shaped, "mixed", 50)
    assert bench.make_corpus(e5_shaped, "mixed", 50) != bench.make_corpus(e5_shaped, "mixed", 50, seed=1)


def test_ceiling_measures_the_models_linear_layers(e5_shaped):
    layer = e5_shaped.params["layers"][0]
    weights = [layer["attention"][name]["w"] for name in ("query", "key", "value", "output")]
    weights += [layer["ffn"]["up"]["w"], layer["ffn"]["down"]["w"]]
    assert sorted(bench.layer_shapes(e5_shaped.config)) == sorted(w.shape for w in weights)


def test_matmul_rate_is_gflops_per_second():
    rate = bench.matmul_rate([lambda: time.sleep(0.01)], flops=1e9)     # 1 GFLOP in (at least) 10 ms
    assert 50 < rate <= 100


def test_ceiling_reports_numpy_in_gflops(load_model):
    ceiling = bench.matmul_ceiling(load_model("tiny").config, rows=64, rounds=1)   # torch, onnxruntime if installed
    assert "numpy" in ceiling and set(ceiling) <= set(bench.MATRIX_LIBRARIES)      # (the live test checks torch)
    assert all(0 < rate < 1e4 for rate in ceiling.values()), ceiling    # GFLOP/s a core, not FLOP/s or TFLOP/s


def test_e5np_engine_embeds_the_texts_as_the_other_engines_take_them(tmp_path):
    """No default prompt (a checkpoint may name one, which encode() adds): the engines must embed the same texts."""
    texts = ["a cat", "hello world"]
    np.testing.assert_array_equal(bench.engine_e5np(with_prompts(TINY_DIR, tmp_path / "model"), 1)(texts),
                                  e5np.load(TINY_DIR).encode(texts, threads=1))


def test_unknown_engine_is_named():
    result = subprocess.run([sys.executable, str(BENCH), "--model", str(TINY_DIR), "--engines", "e5np,ort"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "unknown engine(s) ort; choose from e5np, hf-sdpa," in result.stderr


def test_engine_failing_in_its_process_is_named(tmp_path):
    with pytest.raises(RuntimeError, match=r"(?s)engine e5np failed in its process:.*Traceback.*no-such-model"):
        bench.EngineProcess("e5np", str(tmp_path / "no-such-model"), None, str(tmp_path), 512)


def run_bench(*engines, extra=()):
    """tools/bench.py on the tiny checkpoint, one run of 40 mixed texts (past the tiny model's 128 positions: every
    engine must truncate where e5np does): (the process's result, its table's cells by engine)."""
    result = subprocess.run([sys.executable, str(BENCH), "--model", str(TINY_DIR), "--corpus", "mixed",
                             "--texts", "40", "--runs", "1", "--engines", ",".join(engines), *extra],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in result.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| engine")}
    return result, rows


@pytest.mark.live
def test_bench_runs_end_to_end():
    """The whole tool against transformers: a table row per engine, vectors that agree."""
    result, rows = run_bench("e5np", "hf-sdpa-sorted")
    if "skipping hf-sdpa-sorted: transformers" in result.stderr and "has no SDPA attention" in result.stderr:
        pytest.skip("this transformers has no SDPA attention for BERT (4.41+ has), so no engine to compare with")
    assert set(rows) == {"e5np", "hf-sdpa-sorted"}
    assert rows["e5np"][2].strip() == "1.00x"
    assert all(float(cells[3]) >= 0.99999 for cells in rows.values()), result.stdout   # min cosine vs e5np
    assert "disagrees" not in result.stderr
    assert "one core multiplying the model's linear-layer shapes" in result.stdout
    assert "numpy" in result.stdout.rsplit("shapes", 1)[1] and "torch" in result.stdout.rsplit("shapes", 1)[1]


@pytest.mark.live
def test_sentence_transformers_and_corpus_order_engines_agree_with_e5np():
    pytest.importorskip("sentence_transformers")
    result, rows = run_bench("e5np", "hf-sdpa", "sentence-transformers")
    assert set(rows) == {"e5np", "hf-sdpa", "sentence-transformers"}, result.stdout + result.stderr
    assert all(float(cells[3]) >= 0.99999 for cells in rows.values()), result.stdout   # min cosine vs e5np
    assert "disagrees" not in result.stderr and "skipping" not in result.stderr


@pytest.mark.live
def test_onnxruntime_engines_agree_with_e5np():
    """Both ONNX Runtime engines: the export from transformers, and the fused model onnxruntime's BERT optimizer makes
    of it."""
    pytest.importorskip("onnxruntime")
    result, rows = run_bench("e5np", "ort-sorted", "ort-fused-sorted")
    assert set(rows) == {"e5np", "ort-sorted", "ort-fused-sorted"}, result.stdout + result.stderr
    assert all(float(cells[3]) >= 0.99999 for cells in rows.values()), result.stdout   # min cosine vs e5np
    assert "disagrees" not in result.stderr and "skipping" not in result.stderr
    assert "onnxruntime" in result.stdout.rsplit("shapes", 1)[1]


@pytest.mark.live
def test_latency_table_beside_the_throughput_table():
    """--latency adds one-query latency per engine (median and p90), and both tables name the CPU and BLAS build."""
    result, _ = run_bench("e5np", "hf-sdpa", extra=("--latency", "--queries", "20"))
    throughput, latency = result.stdout.split("queries: 20 short texts", 1)
    for table in (throughput, latency):
        assert "CPU: " in table and "NumPy " in table and "cores" in table, table
    header = next(line for line in latency.splitlines() if line.startswith("| engine"))
    assert "warm median ms" in header and "warm p90 ms" in header
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
            for line in latency.splitlines() if line.startswith("| ") and not line.startswith("| engine")}
    # transformers before 4.41 has no SDPA attention for BERT: both tables then skip hf-sdpa, and say so.
    no_sdpa = "skipping hf-sdpa: transformers" in result.stderr and "has no SDPA attention" in result.stderr
    if no_sdpa:
        assert "skipping hf-sdpa: a package it needs is missing" in result.stderr, result.stderr
    assert set(rows) == ({"e5np"} if no_sdpa else {"e5np", "hf-sdpa"}), latency
    assert rows["e5np"][5] == "1.00x"
    for cells in rows.values():
        median, p90 = float(cells[3]), float(cells[4])
        assert 0 < median <= p90, cells
        assert float(cells[6]) >= 0.99999                              # min cosine vs e5np
