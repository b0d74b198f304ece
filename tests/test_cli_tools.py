"""The CLI as a daily tool: files and JSON lines in, .npy / JSON lines out, streaming, search, similarity."""

import os
import json
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import e5np
from e5np.formats import CHUNK, NPY_HEADER_BYTES
from tests.checkpoints import FIXTURES, TINY_DIR

CORPUS = ["The Eiffel Tower is in Paris.", "Pandas eat bamboo.", "Python is a programming language.",
          "Paris is the capital of France.", "the cat sat on the mat"]


def cli(*args, stdin="", env=None):
    return subprocess.run([sys.executable, "-m", "e5np", *map(str, args)], input=stdin, capture_output=True,
                          text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def tiny():
    return e5np.load(TINY_DIR)


def test_jsonl_input_with_field(tiny, tmp_path):
    (tmp_path / "docs.jsonl").write_text("\n".join(json.dumps({"id": i, "body": t}) for i, t in enumerate(CORPUS)))
    result = cli("embed", "-m", TINY_DIR, "--input", tmp_path / "docs.jsonl", "--field", "body", "-o", tmp_path / "v.npy")
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(np.load(tmp_path / "v.npy"), tiny.encode(CORPUS), atol=1e-7)


def test_large_input_streams_to_npy(tiny, tmp_path):
    """More texts than one chunk: rows appended chunk by chunk under a header that counts them."""
    texts = [f"{CORPUS[i % 5]} number {i}" for i in range(5000)]
    (tmp_path / "big.txt").write_text("\n".join(texts) + "\n")
    result = cli("embed", "-m", TINY_DIR, "-i", tmp_path / "big.txt", "-o", tmp_path / "big.npy", "--quiet")
    assert result.returncode == 0, result.stderr
    vectors = np.load(tmp_path / "big.npy")
    assert vectors.shape == (5000, 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors[[0, 2047, 2048, 4999]], tiny.encode([texts[i] for i in (0, 2047, 2048, 4999)]),
                               atol=1e-6)


@pytest.mark.parametrize("content, message", [
    (b'{"text": "ok"}\nnot json\n', "docs.jsonl:2: not valid JSON"),
    (b'{"text": "ok"}\n{"body": "x"}\n', "docs.jsonl:2: expected an object with a string field 'text'"),
    (b'{"text": 5}\n', "docs.jsonl:1: expected an object"),
    (b'{"text": "ok"}\n{"text": "bad \xff byte"}\n', "docs.jsonl:2: not UTF-8 text (byte 0xFF at column 15)"),
    (b'{"text": "ok"}\n{"text": "a \\ud800 b"}\n',
     "docs.jsonl:2: 'text' is not valid Unicode: a lone surrogate (U+D800) at offset 2 of the string"),
    (b'\xff\xfe{\x00"\x00', "docs.jsonl:1: not UTF-8 text (byte 0xFF at column 1); it looks like UTF-16"),
    (b'{"text": "ok", "score": 1e308}\n{"text": "ok", "score": -2.5E+400}\n',   # valid JSON, written back as Infinity
     "docs.jsonl:2: the number -2.5E+400 is past a float's range (1.8e308): e5np would write it back as Infinity"),
])
def test_bad_input_files(tmp_path, content, message):
    (tmp_path / "docs.jsonl").write_bytes(content)
    result = cli("embed", "-m", TINY_DIR, "-i", tmp_path / "docs.jsonl", "-o", tmp_path / "v.npy")
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_json_nested_too_deeply_is_named_not_a_traceback(tmp_path):
    deep = 100_000                                                     # Python 3.13 parses 5,000 levels
    (tmp_path / "docs.jsonl").write_bytes(b'{"text": "ok"}\n' + b"[" * deep + b"]" * deep + b"\n")
    result = cli("embed", "-m", TINY_DIR, "-i", tmp_path / "docs.jsonl", "-o", tmp_path / "v.npy")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "docs.jsonl:2: JSON nested too deeply to parse" in result.stderr


def test_a_bad_line_deep_in_a_file_is_named_and_the_vectors_before_it_kept(tiny, tmp_path):
    """The line number, not an offset inside the decoder's buffer; the chunks already embedded stay written."""
    texts = [f"text number {i}" for i in range(5000)]
    (tmp_path / "big.txt").write_bytes("\n".join(texts).encode() + b"\nbad \xe9 latin-1\n")
    result = cli("embed", "-m", TINY_DIR, "-i", tmp_path / "big.txt", "-o", tmp_path / "v.npy", "--quiet")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"big.txt:5001: not UTF-8 text (byte 0xE9 at column 5); {tmp_path / 'v.npy'} holds the vectors of the " \
           "first 4096 texts" in result.stderr
    vectors = np.load(tmp_path / "v.npy")
    assert vectors.shape == (4096, 32)
    np.testing.assert_allclose(vectors[[0, 4095]], tiny.encode([texts[0], texts[4095]]), atol=1e-6)


def test_bad_bytes_on_stdin_and_in_arguments(tmp_path):
    def run(*args, stdin=b""):
        return subprocess.run([sys.executable, "-m", "e5np", *args], input=stdin, capture_output=True, timeout=300)

    result = run("embed", "-m", str(TINY_DIR), stdin=b"ok\nbad \xff\n")
    assert result.returncode == 2 and b"stdin:2: not UTF-8 text (byte 0xFF at column 5)" in result.stderr
    result = run("embed", "-m", str(TINY_DIR), "ok", b"x\xffy")
    assert result.returncode == 2 and b"text argument 2: not UTF-8 text (byte 0xFF at column 2)" in result.stderr
    result = run("similarity", "-m", str(TINY_DIR), b"\xff", "ok")
    assert result.returncode == 2 and b"text argument 1: not UTF-8 text" in result.stderr


def test_a_byte_order_mark_is_not_part_of_the_first_text(tiny, tmp_path):
    (tmp_path / "docs.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "Pandas eat bamboo."}\n')
    (tmp_path / "lines.txt").write_bytes(b"\xef\xbb\xbfPandas eat bamboo.\n")
    for name in ("docs.jsonl", "lines.txt"):
        result = cli("embed", "-m", TINY_DIR, "-i", tmp_path / name, "-o", tmp_path / "v.jsonl")
        assert result.returncode == 0, result.stderr
        row = json.loads((tmp_path / "v.jsonl").read_text(encoding="utf-8"))
        assert row["text"] == "Pandas eat bamboo."
        np.testing.assert_allclose(row["embedding"], tiny.encode("Pandas eat bamboo."), atol=1e-6)


def test_search_build_and_query(tiny, tmp_path):
    (tmp_path / "corpus.txt").write_text("\n".join(CORPUS[:2] + ["", "   "] + CORPUS[2:]) + "\n\n")  # blank: no passage
    built = cli("search", "build", tmp_path / "corpus.txt", tmp_path / "index", "-m", TINY_DIR)
    assert built.returncode == 0, built.stderr
    stored = np.load(tmp_path / "index" / "vectors.npy")
    np.testing.assert_allclose(stored, tiny.encode_passages(CORPUS), atol=1e-7)

    result = cli("search", "query", tmp_path / "index", "the cat sat on the mat", "--top-k", "3", "--json")
    assert result.returncode == 0, result.stderr
    hits = json.loads(result.stdout)["results"]
    expected = np.argsort(-(stored @ tiny.encode_queries("the cat sat on the mat")))[:3]
    assert [h["index"] for h in hits] == expected.tolist() and hits[0]["text"] == CORPUS[expected[0]]
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    plain = cli("search", "query", tmp_path / "index", "bamboo", "-k", "1")
    assert plain.returncode == 0 and plain.stdout.startswith("query: bamboo\n    1. ")



@pytest.fixture
def unnormalized(tmp_path):
    """A sentence-transformers checkpoint with no Normalize module, max-pooled: its
    vectors' lengths differ (6.5 to 7.2 on CORPUS), so a dot product ranks them otherwise than a cosine does."""
    directory = tmp_path / "unnormalized"
    shutil.copytree(FIXTURES / "st-cls", directory)
    (directory / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "max"}))
    return directory


def cosines(a, b):
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)) @ (b / np.linalg.norm(b, axis=-1, keepdims=True)).T


def test_similarity_is_a_cosine_when_the_model_does_not_normalize(unnormalized):
    """It printed the dot product (30.5 for the CLS-pooled fixture, whose vectors are 5.7 long) as the cosine."""
    model = e5np.load(unnormalized)
    assert not model.normalize
    result = cli("similarity", "-m", unnormalized, "a cat", "a kitten")
    assert result.returncode == 0, result.stderr
    a, b = model.encode(["a cat", "a kitten"])
    assert abs(float(result.stdout) - cosines(a, b)) < 1e-6 and abs(float(a @ b) - cosines(a, b)) > 1


def test_search_ranks_by_cosine_when_the_model_does_not_normalize(unnormalized, tmp_path):
    """The index stored the model's raw vectors and ranked by dot product: "bamboo" found the longest vector
    ("Python is a programming language.", 7.17), not "Pandas eat bamboo." (6.70), and its "cosine" scores were ~40."""
    model = e5np.load(unnormalized)
    (tmp_path / "corpus.txt").write_text("\n".join(CORPUS) + "\n")
    index = tmp_path / "index"
    built = cli("search", "build", tmp_path / "corpus.txt", index, "-m", unnormalized)
    assert built.returncode == 0, built.stderr
    raw = model.encode_passages(CORPUS)
    np.testing.assert_allclose(np.load(index / "vectors.npy"), raw / np.linalg.norm(raw, axis=1, keepdims=True),
                               atol=1e-7)                                                 # unit rows
    assert json.loads((index / "index.json").read_text())["recipe"]["normalize"] is True

    def search(*args):
        result = cli("search", "query", index, "bamboo", "-k", "5", "--json", *args)
        assert result.returncode == 0, result.stderr
        return [h["index"] for h in json.loads(result.stdout)["results"]], [h["score"] for h in json.loads(
            result.stdout)["results"]], result.stderr

    expected = cosines(model.encode_queries("bamboo"), raw)
    hits, scores, _ = search()
    assert hits == np.argsort(-expected).tolist() and hits[0] == 1                     # "Pandas eat bamboo."
    assert np.argmax(raw @ model.encode_queries("bamboo")) != 1                         # the dot product's pick
    np.testing.assert_allclose(scores, np.sort(expected)[::-1], atol=1e-6)

    # An index an earlier e5np built: the raw vectors, its recipe saying normalize false. Queries still get cosines
    # (and no warning: nothing is wrong with the index), but adding unit vectors to it is refused.
    np.save(index / "vectors.npy", raw)
    meta = json.loads((index / "index.json").read_text())
    meta["recipe"]["normalize"] = False
    (index / "index.json").write_text(json.dumps(meta))
    old_hits, old_scores, warnings = search()
    assert old_hits == hits and warnings == "" and np.allclose(old_scores, scores, atol=1e-6)
    appended = cli("search", "build", "--append", tmp_path / "corpus.txt", index)
    assert appended.returncode == 2 and "(normalize False then, True now)" in appended.stderr, appended.stderr


def test_a_corpus_of_blank_lines_makes_an_empty_index_that_says_so(tmp_path):
    (tmp_path / "blank.txt").write_text("\n  \n\n")
    built = cli("search", "build", tmp_path / "blank.txt", tmp_path / "index", "-m", TINY_DIR)
    assert built.returncode == 0 and "indexed 0 passages" in built.stderr, built.stderr
    result = cli("search", "query", tmp_path / "index", "bamboo", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"query": "bamboo", "results": []}
    assert "holds no passages" in result.stderr


RECORDS = [{"id": f"doc-{i}", "body": text, "tags": ["fr" if "Paris" in text else "en", i], "note": "café ☕"}
           for i, text in enumerate(CORPUS)]
RECORDS[1]["note"] = "a \ud800 lone surrogate"    # legal as a JSON escape in a field e5np does not embed
RECORDS[2]["embedding"] = [0.5, 0.5]               # from an earlier run: replaced, not duplicated


def test_json_lines_keep_their_records(tiny, tmp_path):
    """A JSON-lines corpus's other fields (an id, a URL) come back with its vectors: `embed -o x.jsonl` writes
    each record with its "embedding", `search build` stores the records and `search query` returns them."""
    docs = tmp_path / "docs.jsonl"
    docs.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n")
    embedded = cli("embed", "-m", TINY_DIR, "-i", docs, "--field", "body", "-o", tmp_path / "v.jsonl")
    assert embedded.returncode == 0, embedded.stderr
    rows = [json.loads(line) for line in (tmp_path / "v.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [{k: v for k, v in row.items() if k != "embedding"} for row in rows] == [
        {k: v for k, v in record.items() if k != "embedding"} for record in RECORDS]
    assert [list(row) for row in rows] == [[k for k in r if k != "embedding"] + ["embedding"] for r in RECORDS]
    np.testing.assert_allclose([row["embedding"] for row in rows], tiny.encode(CORPUS), atol=1e-6)
    assert "café ☕" in (tmp_path / "v.jsonl").read_text(encoding="utf-8")   # not \u-escaped where UTF-8 can hold it

    built = cli("search", "build", docs, tmp_path / "index", "--field", "body", "-m", TINY_DIR)
    assert built.returncode == 0, built.stderr
    stored = [json.loads(line) for line in (tmp_path / "index" / "passages.jsonl").read_text().splitlines()]
    assert stored == RECORDS
    assert json.loads((tmp_path / "index" / "index.json").read_text())["field"] == "body"
    result = cli("search", "query", tmp_path / "index", "what do pandas eat?", "-k", "5", "--json")
    assert result.returncode == 0, result.stderr
    hits = json.loads(result.stdout)["results"]
    assert [hit["record"] for hit in hits] == [RECORDS[hit["index"]] for hit in hits]
    assert [hit["text"] for hit in hits] == [CORPUS[hit["index"]] for hit in hits]
    plain = cli("search", "query", tmp_path / "index", "bamboo", "-k", "1")
    assert plain.returncode == 0 and plain.stdout.startswith("query: bamboo\n    1. ")
    queries = tmp_path / "queries.jsonl"                               # queries may come as JSON lines too
    queries.write_text(json.dumps({"q": "bamboo", "user": 7}) + "\n" + json.dumps({"q": "Paris"}) + "\n")
    result = cli("search", "query", tmp_path / "index", "-i", queries, "--field", "q", "-k", "1", "--json")
    assert result.returncode == 0, result.stderr
    assert [r["query"] for r in json.loads(result.stdout)] == ["bamboo", "Paris"]

    (tmp_path / "corpus.txt").write_text("\n".join(CORPUS) + "\n")               # plain lines: no records
    assert cli("search", "build", tmp_path / "corpus.txt", tmp_path / "lines", "-m", TINY_DIR).returncode == 0
    assert json.loads((tmp_path / "lines" / "index.json").read_text())["field"] is None
    result = cli("search", "query", tmp_path / "lines", "bamboo", "-k", "1", "--json")
    assert list(json.loads(result.stdout)["results"][0]) == ["rank", "index", "score", "text"]


def test_search_errors(tmp_path):
    missing = cli("search", "query", tmp_path / "nowhere", "q")
    assert missing.returncode == 2 and "not found" in missing.stderr
    (tmp_path / "corpus.txt").write_text("\n".join(CORPUS))
    assert cli("search", "build", tmp_path / "corpus.txt", tmp_path / "index", "-m", TINY_DIR).returncode == 0
    from tests.checkpoints import FIXTURES

    wrong = cli("search", "query", tmp_path / "index", "q", "-m", FIXTURES / "bert-wide")
    assert wrong.returncode == 2 and "48-dim vectors but the index holds 32-dim" in wrong.stderr
    assert cli("search", "query", tmp_path / "index", "q", "--top-k", "0").returncode == 2
    no_queries = cli("search", "query", tmp_path / "index", "--json", stdin="")   # was an IndexError traceback
    assert no_queries.returncode == 2 and no_queries.stderr == "e5np search: no queries: stdin has none\n"

    passages = tmp_path / "index" / "passages.jsonl"
    lines = passages.read_text().splitlines(keepends=True)
    passages.write_text("".join(lines + ['{"text": "one too many"}\n']))
    extra = cli("search", "query", tmp_path / "index", "q")
    assert extra.returncode == 2 and "vectors.npy has 5 rows but passages.jsonl has 6" in extra.stderr
    passages.write_text("".join(lines[:2] + ["not json\n"] + lines[3:]))
    damaged = cli("search", "query", tmp_path / "index", "q", "-k", "5")          # every passage is a hit
    assert damaged.returncode == 2 and f"{passages}:3: not a passage line" in damaged.stderr
    passages.write_text("".join(lines))

    vectors = tmp_path / "index" / "vectors.npy"                       # another build's vectors, index.json not
    np.save(vectors, np.concatenate([np.load(vectors)] * 2))
    mixed = cli("search", "query", tmp_path / "index", "q")
    assert mixed.returncode == 2 and f"{vectors} has 10 rows but index.json says 5" in mixed.stderr


def test_similarity(tiny):
    result = cli("similarity", "-m", TINY_DIR, "--query", "a cat", "a kitten")
    assert result.returncode == 0, result.stderr
    a, b = tiny.encode_queries(["a cat", "a kitten"])
    assert abs(float(result.stdout) - float(a @ b)) < 1e-6


def test_model_not_resolvable_offline(tmp_path):
    import os

    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "empty"))
    env.pop("E5NP_MODEL", None)
    result = cli("embed", "hello", env=env)
    assert result.returncode == 2
    assert "intfloat/e5-small is not in the Hugging Face cache and downloads are off" in result.stderr


@pytest.mark.parametrize("command", ["embed", "search", "similarity", "serve", "parity"])
def test_every_subcommand_has_help(command):
    result = cli(command, "--help")
    assert result.returncode == 0 and "usage: e5np" in result.stdout


def test_progress_bar_only_on_a_terminal(tmp_path):
    """With stderr a terminal, embed shows a tqdm bar; --quiet (and a pipe, as in every test above) hides it."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    (tmp_path / "in.txt").write_text("\n".join(CORPUS * 10))

    def stderr_of(*extra):
        leader, follower = pty.openpty()
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # a real terminal's size
        process = subprocess.Popen([sys.executable, "-m", "e5np", "embed", "-m", str(TINY_DIR), "-i",
                                    str(tmp_path / "in.txt"), "-o", str(tmp_path / "v.npy"), *extra],
                                   stdout=subprocess.DEVNULL, stderr=follower)
        os.close(follower)
        chunks = []
        while True:
            try:
                data = os.read(leader, 4096)
            except OSError:  # the terminal closed with the process
                break
            if not data:
                break
            chunks.append(data)
        process.wait(timeout=120)
        os.close(leader)
        return b"".join(chunks).decode(errors="replace")

    shown = stderr_of()
    assert "50text" in shown.replace(" ", "") and "text/s" in shown
    assert stderr_of("--quiet") == ""


def past_the_first_chunk(out, dim):
    """Whether an embed output holds more than its first chunk: that chunk is then counted as written. (Its first
    bytes alone were not enough to wait for: a Ctrl-C before the chunk's last byte rightly keeps nothing.)"""
    if not out.exists():
        return False
    if out.suffix == ".npy":
        return out.stat().st_size > NPY_HEADER_BYTES + 4 * dim * CHUNK
    return out.read_bytes().count(b"\n") > CHUNK


@pytest.mark.parametrize("suffix", [".npy", ".jsonl"])
def test_ctrl_c_mid_stream_keeps_what_was_written(tiny, tmp_path, suffix):
    """Ctrl-C: one line, exit status 130, and an output file holding exactly the chunks it says it holds."""
    (tmp_path / "many.txt").write_text("\n".join(f"text number {i}" for i in range(400_000)) + "\n")
    out = tmp_path / f"v{suffix}"
    command = ["embed", "-m", TINY_DIR, "-i", tmp_path / "many.txt", "-o", out, "--quiet"]
    process = subprocess.Popen([sys.executable, "-m", "e5np", *map(str, command)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not past_the_first_chunk(out, tiny.dim) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 130 and "Traceback" not in stderr, stderr
    kept = re.fullmatch(rf"e5np embed: interrupted; {re.escape(str(out))} holds the vectors of the first (\d+) texts\n",
                        stderr)
    assert kept, stderr
    rows = int(kept[1])
    vectors = np.load(out) if suffix == ".npy" else np.array([json.loads(line)["embedding"] for line in open(out)])
    assert len(vectors) == rows and rows % 2048 == 0 and rows > 0
    np.testing.assert_allclose(vectors[[0, -1]], tiny.encode(["text number 0", f"text number {rows - 1}"]), atol=1e-6)


def test_ctrl_c_elsewhere_is_one_line_too(monkeypatch, capsys):
    from e5np import cli as cli_module

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "load_model", interrupted)
    try:
        status = cli_module.main(["similarity", "-m", str(TINY_DIR), "a", "b"])
    except KeyboardInterrupt:  # caught here: escaping, it would stop the whole test run
        pytest.fail("main() let KeyboardInterrupt through")
    assert status == 130
    assert capsys.readouterr().err == "e5np similarity: interrupted\n"


def test_an_output_that_is_the_input_file_is_refused_before_it_is_emptied(tiny, tmp_path):
    """`embed -i docs.jsonl -o docs.jsonl` (adding embeddings "in place") opened docs.jsonl for writing before
    reading it: an empty file and exit status 0. The same for stdin redirected from the output, a symlink to it,
    and a search build whose corpus is the passages.jsonl it is about to write."""
    docs = tmp_path / "docs.jsonl"
    content = "".join(json.dumps({"id": i, "text": text}) + "\n" for i, text in enumerate(CORPUS))
    docs.write_text(content)
    (tmp_path / "link.jsonl").symlink_to(docs)
    for args, stdin in ((["-i", docs, "-o", docs], None), (["-o", docs], docs), (["-i", tmp_path / "link.jsonl",
                                                                                  "-o", docs], None)):
        with open(stdin or os.devnull) as f:
            result = subprocess.run([sys.executable, "-m", "e5np", "embed", "-m", str(TINY_DIR), *map(str, args)],
                                    stdin=f, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and "is the file the texts are read from" in result.stderr, result.stderr
        assert docs.read_text() == content

    index = tmp_path / "index"                                         # the corpus copied where the index will be
    index.mkdir()
    (index / "passages.jsonl").write_text(content)
    result = cli("search", "build", index / "passages.jsonl", index, "-m", TINY_DIR)
    assert result.returncode == 2 and "is the file the texts are read from" in result.stderr, result.stderr
    assert (index / "passages.jsonl").read_text() == content and not (index / "vectors.npy").exists()

    built = tmp_path / "built"
    assert cli("search", "build", docs, built, "-m", TINY_DIR).returncode == 0
    before = {name: (built / name).read_bytes() for name in ("vectors.npy", "passages.jsonl", "index.json")}
    result = cli("search", "build", "--append", built / "passages.jsonl", built)    # would read what it appends
    assert result.returncode == 2 and "is the file the texts are read from" in result.stderr, result.stderr
    assert {name: (built / name).read_bytes() for name in before} == before
    rebuilt = cli("search", "build", built / "passages.jsonl", built, "-m", TINY_DIR)  # a rebuild from its passages
    assert rebuilt.returncode == 0, rebuilt.stderr
    np.testing.assert_array_equal(np.load(built / "vectors.npy"), np.frombuffer(before["vectors.npy"][128:], "<f4")
                                  .reshape(len(CORPUS), -1))


@pytest.mark.parametrize("argv, expected", [
    (["embed", "a", "-m", "M", "b"], {"texts": ["a", "b"], "model": "M"}),
    (["search", "query", "idx", "-k", "1", "hello", "--json", "world"],
     {"index": "idx", "queries": ["hello", "world"], "top_k": 1, "json": True}),
    (["similarity", "a", "--query", "b"], {"text_a": "a", "text_b": "b", "query": True}),
    (["search", "build", "c.txt", "--resume", "-m", "M", "ix"], {"corpus": "c.txt", "index": "ix", "resume": True}),
    (["embed", "-i", "f.txt"], {"texts": [], "input": "f.txt"}),
])
def test_positional_arguments_may_come_after_options(argv, expected):
    """`e5np search query INDEX -k 3 "a query"` was refused ("unrecognized arguments: a query"): argparse fills a list
    of positionals from their first run only."""
    from e5np import cli

    args = vars(cli.build_parser().parse_args(argv))
    assert {key: args[key] for key in expected} == expected


def test_a_query_after_the_options_end_to_end(tiny, tmp_path):
    (tmp_path / "corpus.txt").write_text("\n".join(CORPUS) + "\n")
    assert cli("search", "build", tmp_path / "corpus.txt", tmp_path / "index", "-m", TINY_DIR).returncode == 0
    result = cli("search", "query", tmp_path / "index", "-k", "1", "bamboo", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["query"] == "bamboo"
    missing = cli("search", "query")
    assert missing.returncode == 2 and "required: index\n" in missing.stderr      # (queries may come from stdin)
