"""`e5np embed --chunking / --chunk-overlap / --precision / --ranges`, in a subprocess, as a user runs it."""

import json

import numpy as np
import pytest

import e5np
from tests.checkpoints import TINY_DIR
from tests.corpus import LONG_TEXT
from tests.test_cli import e5np_cli

TEXTS = ["hello world", "the cat sat on the mat", LONG_TEXT]


@pytest.fixture(scope="module")
def tiny():
    return e5np.load(TINY_DIR)


@pytest.fixture(scope="module")
def ranges_file(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("ranges") / "ranges.npy"
    np.save(path, e5np.calibration_ranges(tiny.encode([f"calibration text {i}" for i in range(20)])))
    return path


def test_chunking_to_npy(tiny, tmp_path):
    out = tmp_path / "v.npy"
    result = e5np_cli("embed", "-m", TINY_DIR, "--passage", "--chunking", "mean", "--chunk-overlap", "9",
                      *TEXTS, "-o", out)
    assert result.returncode == 0, result.stderr
    assert "truncated" not in result.stderr
    np.testing.assert_array_equal(np.load(out), tiny.encode_passages(TEXTS, chunking="mean", chunk_overlap=9))


@pytest.mark.parametrize("precision", ["int8", "uint8", "binary", "ubinary", "float32"])
def test_precision_to_npy_and_jsonl(tiny, tmp_path, ranges_file, precision):
    ranges = np.load(ranges_file) if precision.endswith("int8") else None
    expected = e5np.quantize(tiny.encode(TEXTS, truncation="ignore"), precision, ranges)
    flags = ["--ranges", ranges_file] if ranges is not None else []
    out = tmp_path / "v.npy"
    result = e5np_cli("embed", "-m", TINY_DIR, *TEXTS, "--precision", precision, *flags, "-o", out)
    assert result.returncode == 0, result.stderr
    written = np.load(out)
    assert written.dtype == expected.dtype and written.shape == expected.shape
    np.testing.assert_array_equal(written, expected)
    result = e5np_cli("embed", "-m", TINY_DIR, *TEXTS, "--precision", precision, *flags, "-o", tmp_path / "v.jsonl")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line)["embedding"] for line in (tmp_path / "v.jsonl").read_text().splitlines()]
    if precision != "float32":
        assert rows == expected.tolist()                                # integers
    result = e5np_cli("embed", "-m", TINY_DIR, *TEXTS, "--precision", precision, *flags)
    assert [json.loads(line) for line in result.stdout.splitlines()] == rows


def test_binary_and_chunking_together(tiny, tmp_path):
    out = tmp_path / "v.npy"
    result = e5np_cli("embed", "-m", TINY_DIR, *TEXTS, "--precision", "ubinary", "--chunking", "mean", "-o", out)
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.load(out), tiny.encode(TEXTS, chunking="mean", precision="ubinary"))
    assert np.load(out).shape == (3, tiny.dim // 8)


@pytest.mark.parametrize("flags, message", [
    (["--chunking", "max"], "invalid choice: 'max'"),
    (["--precision", "int4"], "invalid choice: 'int4'"),
    (["--chunk-overlap", "4"], "chunk_overlap is for chunking='mean'"),
    (["--chunking", "mean", "--chunk-overlap", "0"], "chunk_overlap must be a positive integer"),
    (["--chunking", "mean", "--chunk-overlap", "126"], "must be less than the 126 text tokens"),
    (["--precision", "int8"], "--precision int8 needs --ranges RANGES.npy"),
    (["--precision", "binary", "--ranges", "r.npy"], "--ranges is for --precision int8 or uint8"),
    (["--precision", "uint8", "--ranges", "missing.npy"], "--ranges missing.npy:"),
])
def test_bad_options(flags, message):
    result = e5np_cli("embed", "-m", TINY_DIR, "hello", *flags)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert result.stdout == ""


def test_ranges_of_the_wrong_shape(tmp_path):
    np.save(tmp_path / "r.npy", np.zeros((2, 31), np.float32))
    result = e5np_cli("embed", "-m", TINY_DIR, "hello", "--precision", "int8", "--ranges", tmp_path / "r.npy")
    assert result.returncode == 2 and r"ranges must have shape (2, 32)" in result.stderr, result.stderr
