"""`e5np embed` end to end, in a subprocess, as a user runs it."""

import json
import subprocess
import sys

import numpy as np
import pytest

import e5np
from tests.checkpoints import TINY_DIR, with_prompts
from tests.row_independence import assert_same_vectors


def e5np_cli(*args, stdin=""):
    return subprocess.run([sys.executable, "-m", "e5np", *map(str, args)], input=stdin,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def tiny():
    return e5np.load(TINY_DIR)


def test_embed_arguments_to_stdout(tiny):
    result = e5np_cli("embed", "--model", TINY_DIR, "hello world", "the cat")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    np.testing.assert_allclose(rows, tiny.encode(["hello world", "the cat"]), atol=1e-7)


def test_embed_query_prefix_and_npy_output(tiny, tmp_path):
    out = tmp_path / "q.npy"
    result = e5np_cli("embed", "-m", TINY_DIR, "--query", "hello", "-o", out)
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.load(out), tiny.encode_queries(["hello"]))


def test_embed_adds_a_declared_default_prompt_as_encode_does(tiny, tmp_path):
    model = with_prompts(TINY_DIR, tmp_path / "model")
    for flags, prefix in [([], "search_query: "), (["--passage"], "search_document: ")]:
        result = e5np_cli("embed", "-m", model, *flags, "hello world", "the cat", "-o", tmp_path / "v.npy")
        assert result.returncode == 0, result.stderr
        assert_same_vectors(np.load(tmp_path / "v.npy"), tiny.encode([prefix + "hello world", prefix + "the cat"]))


def test_embed_stdin_and_file_with_jsonl_output(tiny, tmp_path):
    texts = ["first line", "second line", "dritte Zeile ü"]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    for args, stdin in ((["--input", tmp_path / "in.txt"], ""), ([], "\n".join(texts))):
        out = tmp_path / "out.jsonl"
        result = e5np_cli("embed", "-m", TINY_DIR, "--passage", *args, "-o", out, stdin=stdin)
        assert result.returncode == 0, result.stderr
        rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        assert [r["text"] for r in rows] == texts
        np.testing.assert_allclose([r["embedding"] for r in rows], tiny.encode_passages(texts), atol=1e-7)


def test_embed_gives_one_vector_per_line_blank_lines_too(tiny, tmp_path):
    # Row i of the output is line i of the input: a blank line skipped would shift every later row onto the wrong
    # line (texts cut from a spreadsheet column with empty cells, then joined back by position).
    # A lone carriage return inside a line does not end it (Python's default does; `wc -l` does not).
    lines = ["first", "", "third", "   ", "fifth\r", "", "a\rcarriage return", "last"]
    (tmp_path / "in.txt").write_bytes(("\n".join(lines) + "\n").encode("utf-8"))      # (no newline translation)
    expected = tiny.encode([line.rstrip("\r") for line in lines])
    for args, stdin in ((["--input", tmp_path / "in.txt", "-o", tmp_path / "out.npy"], ""),
                        (["-o", tmp_path / "out.npy"], "\n".join(lines) + "\n")):
        result = e5np_cli("embed", "-m", TINY_DIR, *args, stdin=stdin)
        assert result.returncode == 0, result.stderr
        assert_same_vectors(np.load(tmp_path / "out.npy"), expected)
    result = e5np_cli("embed", "-m", TINY_DIR, "-i", tmp_path / "in.txt", "-o", tmp_path / "out.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [row["text"] for row in rows] == [line.rstrip("\r") for line in lines]


def test_embed_threads(tiny, tmp_path):
    from e5np import cli

    args = cli.build_parser().parse_args(["embed", "-m", str(TINY_DIR), "--threads", "3", "x"])
    assert cli.load_model(args).threads == 3
    args = cli.build_parser().parse_args(["search", "build", "corpus.txt", "index", "-m", str(TINY_DIR),
                                          "--threads", "2"])
    assert cli.load_model(args).threads == 2
    texts = [f"text number {i} " + "word " * (i % 40) for i in range(300)]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    for threads in (1, 3):
        out = tmp_path / f"{threads}.npy"
        result = e5np_cli("embed", "-m", TINY_DIR, "--threads", threads, "-i", tmp_path / "in.txt", "-o", out)
        assert result.returncode == 0, result.stderr
        assert_same_vectors(np.load(out), tiny.encode(texts))


def test_embed_reports_truncation_on_stderr(tmp_path):
    result = e5np_cli("embed", "-m", TINY_DIR, "short", "word " * 300, "-o", tmp_path / "x.npy")
    assert result.returncode == 0
    assert "1 of 2 text(s) exceed max_length=128 tokens and were truncated: indices [1]" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["embed", "-m", "/no/such/dir", "x"], "no such directory"),
    (["embed", "-m", TINY_DIR, "--input", "/no/such/file.txt"], "cannot read /no/such/file.txt"),
    (["embed", "-m", TINY_DIR, "x", "-o", "out.csv"],
     "use a .npy or .jsonl or .parquet or .arrow or .feather file, a directory/"),
    (["embed", "-m", TINY_DIR, "x", "-o", "/no/such/dir/out.npy"], "cannot write /no/such/dir/out.npy: No such file"),
    (["embed", "-m", TINY_DIR, "--threads", "0", "x"], "--threads must be at least 1"),
])
def test_errors_are_one_line_with_status_2(args, message):
    result = e5np_cli(*args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_help():
    result = e5np_cli("embed", "--help")
    assert result.returncode == 0 and "--query" in result.stdout and "--output" in result.stdout
