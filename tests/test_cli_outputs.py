"""Outputs that survive failure: a .npy valid after every chunk, a full disk reported with what was kept,
and a search index that an interruption, an error or a kill leaves unfinished but usable, and that
`search build --resume` completes into the very bytes of an uninterrupted build."""

import fcntl
import io
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

import e5np
from e5np import formats
from tests.checkpoints import FIXTURES, TINY_DIR
from tests.row_independence import assert_same_vectors

TEXTS = [f"passage {i} is about topic {i % 13}" for i in range(5000)]  # 3 chunks of CHUNK = 2048
# Largest file a process under test may write: the tiny model's 5,000 rows outgrow these in the third chunk, so the
# first two (4,096 rows) are kept. .npy rows are 128 bytes, JSON lines about 750.
FILE_LIMIT = {".npy": 600_000, ".jsonl": 3_500_000}


def e5np_cli(*args, file_limit=None, cwd=None):
    def limit_file_size():          # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    return subprocess.run([sys.executable, "-m", "e5np", *map(str, args)], capture_output=True, text=True,
                          timeout=300, preexec_fn=limit_file_size if file_limit else None, cwd=cwd)


@pytest.fixture(scope="module")
def tiny():
    return e5np.load(TINY_DIR)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(TEXTS) + "\n")
    return path


@pytest.fixture(scope="module")
def straight_build(corpus):
    """The index an uninterrupted build makes: what every interrupted one must end up as, byte for byte."""
    index = corpus.parent / "straight"
    result = e5np_cli("search", "build", corpus, index, "-m", TINY_DIR, "-q")
    assert result.returncode == 0, result.stderr
    return index


def assert_same_files(index, expected):
    for name in ("vectors.npy", "passages.jsonl", "index.json"):
        assert (index / name).read_bytes() == (expected / name).read_bytes(), name


@pytest.mark.parametrize("rows", [0, 5, 2048, 10**20])
def test_npy_header_has_one_length_for_any_row_count(rows):
    header = io.BytesIO(formats.npy_header(rows, 384))
    assert len(header.getvalue()) == formats.NPY_HEADER_BYTES    # so it can be rewritten in place
    assert np.lib.format.read_magic(header) == (1, 0)
    assert np.lib.format.read_array_header_1_0(header) == ((rows, 384), False, np.dtype("<f4"))


def test_npy_output_is_a_valid_npy_after_every_chunk(tmp_path):
    out = tmp_path / "v.npy"
    writer = formats.NpyWriter(str(out), 4)
    assert np.load(out).shape == (0, 4)
    first, second = np.arange(12, dtype=np.float32).reshape(3, 4), np.ones((2, 4), np.float32)
    writer.write(["a", "b", "c"], first)
    np.testing.assert_array_equal(np.load(out), first)                 # before close: what a kill would leave
    writer.write(["d", "e"], second)
    writer.close(complete=True)
    np.testing.assert_array_equal(np.load(out), np.concatenate([first, second]))
    assert not list(tmp_path.glob("*.part"))


@pytest.mark.parametrize("suffix", [".npy", ".jsonl"])
def test_a_full_disk_mid_stream_says_what_was_kept(tiny, corpus, tmp_path, suffix):
    out = tmp_path / f"v{suffix}"
    result = e5np_cli("embed", "-m", TINY_DIR, "-i", corpus, "-o", out, "-q", file_limit=FILE_LIMIT[suffix])
    assert result.returncode == 2, result.stderr
    expected = rf"e5np embed: cannot write {out}: File too large; {out} holds the vectors of the first (\d+) texts\n"
    kept = re.fullmatch(expected, result.stderr)
    assert kept, result.stderr
    rows = int(kept[1])
    assert rows == 2 * formats.CHUNK
    vectors = np.load(out) if suffix == ".npy" else np.array([json.loads(line)["embedding"] for line in open(out)])
    assert len(vectors) == rows
    np.testing.assert_allclose(vectors[[0, -1]], tiny.encode([TEXTS[0], TEXTS[rows - 1]]), atol=1e-6)


def test_output_that_cannot_be_written_at_all(tmp_path):
    (tmp_path / "full.jsonl").symlink_to("/dev/full")
    result = e5np_cli("embed", "-m", TINY_DIR, "a text", "-o", tmp_path / "full.jsonl")
    assert result.returncode == 2
    assert result.stderr == f"e5np embed: cannot write {tmp_path / 'full.jsonl'}: No space left on device\n"


def test_failed_build_leaves_an_unfinished_index_that_resume_completes(tiny, corpus, straight_build, tmp_path):
    index = tmp_path / "index"
    failed = e5np_cli("search", "build", corpus, index, "-m", TINY_DIR, "-q", file_limit=FILE_LIMIT[".npy"])
    assert failed.returncode == 2
    assert failed.stderr == (f"e5np search: cannot write {index / 'vectors.npy'}: File too large; {index} holds an "
                             f"unfinished index of the first 4096 passages; `e5np search build --resume {corpus} "
                             f"{index}` continues it\n")
    assert json.loads((index / "index.json").read_text())["complete"] is False

    query = e5np_cli("search", "query", index, "topic 3", "--json", "-k", "4096")
    assert query.returncode == 0, query.stderr
    assert f"{index} is unfinished: it holds the first 4096 passages" in query.stderr
    hits = json.loads(query.stdout)["results"]
    assert sorted(hit["text"] for hit in hits) == sorted(TEXTS[:4096])

    again = e5np_cli("search", "build", corpus, index, "-m", TINY_DIR, "-q")
    assert again.returncode == 2 and "holds an unfinished build" in again.stderr   # never thrown away unasked
    resumed = e5np_cli("search", "build", "--resume", corpus, index, "-q")        # the model comes from the index
    assert resumed.returncode == 0, resumed.stderr
    assert_same_files(index, straight_build)


KILLED_MID_CHUNK = """
import os, sys
from e5np import cli, formats
write_vectors = formats.NpyWriter.write
def killed_on_second_chunk(self, texts, vectors):
    if self.rows:
        os._exit(9)        # the second chunk's passages are on disk, its vectors never come: a kill, no cleanup
    write_vectors(self, texts, vectors)
formats.NpyWriter.write = killed_on_second_chunk
sys.exit(cli.main(sys.argv[1:]))
"""


def test_killed_build_resumes(corpus, straight_build, tmp_path):
    index = tmp_path / "index"
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_CHUNK, "search", "build", str(corpus), str(index),
                             "-m", str(TINY_DIR), "-q"], capture_output=True, text=True, timeout=300)
    assert killed.returncode == 9, killed.stderr
    passages = (index / "passages.jsonl").read_text().splitlines()
    assert len(passages) == 2 * formats.CHUNK and len(np.load(index / "vectors.npy")) == formats.CHUNK
    query = e5np_cli("search", "query", index, "topic 3", "--json", "-k", "10000")
    assert query.returncode == 0, query.stderr
    assert len(json.loads(query.stdout)["results"]) == formats.CHUNK       # the passages with vectors

    resumed = e5np_cli("search", "build", "--resume", corpus, index, "-m", TINY_DIR, "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_files(index, straight_build)


def test_a_rebuild_leaves_the_old_index_whole_until_the_new_one_is_complete(corpus, straight_build, tmp_path):
    """A build into a complete index writes INDEX/.rebuild: killed or stopped by an error, it leaves the old index as
    it was (and answering queries) and a rebuild that --resume continues; complete, its files replace the old ones."""
    index, old = tmp_path / "index", tmp_path / "old"
    built = e5np_cli("search", "build", write_lines(tmp_path / "a.txt", TEXTS[:1000]), index, "-m", TINY_DIR, "-q")
    assert built.returncode == 0, built.stderr
    shutil.copytree(index, old)
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_CHUNK, "search", "build", str(corpus), str(index),
                             "-m", str(TINY_DIR), "-q"], capture_output=True, text=True, timeout=300)
    assert killed.returncode == 9, killed.stderr
    assert_same_files(index, old)
    assert len(np.load(index / ".rebuild" / "vectors.npy")) == formats.CHUNK
    cut_short = e5np_cli("search", "build", "--resume", corpus, index, "-q", file_limit=FILE_LIMIT[".npy"])
    assert cut_short.returncode == 2
    assert cut_short.stderr.endswith(f"File too large; {index} is as it was; {index / '.rebuild'} holds its unfinished "
                                     f"rebuild, the first 4096 passages; `e5np search build --resume {corpus} {index}` "
                                     "continues it\n"), cut_short.stderr
    assert_same_files(index, old)

    query = e5np_cli("search", "query", index, "topic 3", "--json", "-k", "5000")
    assert query.returncode == 0
    assert query.stderr == (f"e5np search: {index / '.rebuild'} holds an unfinished rebuild of {index}: these results "
                            "are from the index as it was\n")
    assert sorted(hit["text"] for hit in json.loads(query.stdout)["results"]) == sorted(TEXTS[:1000])
    again = e5np_cli("search", "build", corpus, index, "-m", TINY_DIR, "-q")
    assert again.returncode == 2
    staged = index / ".rebuild"
    assert again.stderr == (f"e5np search: {index} has an unfinished rebuild in {staged}: `e5np search build "
                            f"--resume {corpus} {index}` continues it; delete {staged} to start over\n")
    append = e5np_cli("search", "build", "--append", corpus, index, "-q")
    assert append.returncode == 2 and f"has an unfinished rebuild in {staged}: finish it first" in append.stderr
    assert_same_files(index, old)

    resumed = e5np_cli("search", "build", "--resume", corpus, index, "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr == f"e5np: indexed 5000 passages in {index}, replacing the index it held\n"
    assert_same_files(index, straight_build)
    assert sorted(p.name for p in index.iterdir()) == [".lock", "index.json", "passages.jsonl", "vectors.npy"]


def index_and_its_rebuild(tmp_path):
    """(index, new): an index of 1,000 passages, with a copy of `new`, a complete index of 1,000 others, as the
    rebuild in its .rebuild folder that replace_index is about to move in (as many rows: counts cannot tell them
    apart)."""
    index, new = tmp_path / "index", tmp_path / "new"
    for corpus, where in ((TEXTS[:1000], index), (TEXTS[1000:2000], new)):
        assert e5np_cli("search", "build", write_lines(tmp_path / "c.txt", corpus), where, "-m", TINY_DIR,
                        "-q").returncode == 0
    shutil.copytree(new, index / ".rebuild")
    return index, new


def test_a_query_answers_from_one_index_while_a_rebuild_moves_in(tmp_path, monkeypatch, capsys):
    """A rebuild may replace the index's files while a query loads its model: the query's passages are still those
    of the vectors it searched (it opens passages.jsonl with them), not the rebuild's."""
    from e5np import cli, index as index_module

    index, new = index_and_its_rebuild(tmp_path)
    load_model = cli.load_model

    def rebuild_moves_in_first(args):
        index_module.replace_index(index / ".rebuild", index)
        return load_model(args)
    monkeypatch.setattr(cli, "load_model", rebuild_moves_in_first)
    assert cli.main(["search", "query", str(index), "topic 3", "--json", "-k", "1000"]) == 0
    assert sorted(hit["text"] for hit in json.loads(capsys.readouterr().out)["results"]) == sorted(TEXTS[:1000])
    assert (index / "passages.jsonl").read_bytes() == (new / "passages.jsonl").read_bytes()   # it did move in


def test_replacing_an_index_is_not_cut_short_by_ctrl_c(tmp_path, monkeypatch):
    """Ctrl-C between the renames would leave the new vectors beside the old passages: it waits for the three."""
    from e5np import index as index_module

    staged, index = tmp_path / "index" / ".rebuild", tmp_path / "index"
    staged.mkdir(parents=True)
    for name in ("vectors.npy", "passages.jsonl", "index.json"):
        (index / name).write_text("old")
        (staged / name).write_text("new")
    rename = index_module.os.replace

    def interrupted_rename(source, destination):
        rename(source, destination)
        os.kill(os.getpid(), signal.SIGINT)                            # Ctrl-C after each rename
    monkeypatch.setattr(index_module.os, "replace", interrupted_rename)
    index_module.replace_index(staged, index)
    assert [(index / name).read_text() for name in ("vectors.npy", "passages.jsonl", "index.json")] == ["new"] * 3
    assert not staged.exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("moved", [1, 2])
def test_a_rebuild_killed_while_moving_in_is_refused_then_finished(tmp_path, moved):
    """A kill between replace_index's renames leaves the new vectors beside the old passages (as many: row counts
    cannot tell them apart): a query refuses the index rather than answer with other texts' passages, and the build
    the query names finishes the move (the corpus is not read: there is nothing left to embed)."""
    index, new = index_and_its_rebuild(tmp_path)
    for name in ("vectors.npy", "passages.jsonl")[:moved]:            # the renames done before the kill
        os.replace(index / ".rebuild" / name, index / name)
    query = e5np_cli("search", "query", index, "topic 3")
    assert query.returncode == 2 and query.stdout == ""
    assert query.stderr == (f"e5np search: {index}: a rebuild stopped while its files were moving in over the index's "
                            "(a kill between two renames, or a rename that failed), so they may be of two builds; "
                            f"`e5np search build --resume CORPUS {index}` finishes moving it in\n")
    resumed = e5np_cli("search", "build", "--resume", tmp_path / "nowhere.txt", index)
    assert resumed.returncode == 0
    assert resumed.stderr == f"e5np: finished replacing {index} with its rebuild (1000 passages)\n"
    assert_same_files(index, new)
    assert sorted(p.name for p in index.iterdir()) == [".lock", "index.json", "passages.jsonl", "vectors.npy"]
    query = e5np_cli("search", "query", index, "topic 3", "--json", "-k", "1000")
    assert query.returncode == 0 and query.stderr == ""
    assert sorted(hit["text"] for hit in json.loads(query.stdout)["results"]) == sorted(TEXTS[1000:2000])


def test_a_query_that_looks_while_a_rebuild_moves_in_waits_for_it(tmp_path, monkeypatch, capsys):
    """A query may find the move half done because a build is doing it right now, not because one was killed: it
    looks again after MOVE_SETTLES (here the build finishes meanwhile) and answers from the rebuild."""
    from e5np import cli, index as index_module

    index, new = index_and_its_rebuild(tmp_path)
    os.replace(index / ".rebuild" / "vectors.npy", index / "vectors.npy")
    waited = []

    def the_build_finishes_meanwhile(seconds):
        waited.append(seconds)
        index_module.replace_index(index / ".rebuild", index)
    monkeypatch.setattr(index_module.time, "sleep", the_build_finishes_meanwhile)
    assert cli.main(["search", "query", str(index), "topic 3", "--json", "-k", "1000"]) == 0
    assert waited == [index_module.MOVE_SETTLES]
    assert sorted(hit["text"] for hit in json.loads(capsys.readouterr().out)["results"]) == sorted(TEXTS[1000:2000])


def test_a_complete_rebuild_never_moved_in_is_moved_in_by_resume(tmp_path):
    """Killed after the rebuild was complete but before the first rename (or the first rename failed): the index is
    whole, the old one, and a query answers from it saying so; --resume moves the rebuild in, reading no corpus."""
    index, new = index_and_its_rebuild(tmp_path)
    query = e5np_cli("search", "query", index, "topic 3", "--json", "-k", "1000")
    assert query.returncode == 0
    assert query.stderr == (f"e5np search: {index / '.rebuild'} holds a complete rebuild of {index}, not moved in: "
                            f"these results are from the index as it was; `e5np search build --resume CORPUS {index}` "
                            "moves it in\n")
    assert sorted(hit["text"] for hit in json.loads(query.stdout)["results"]) == sorted(TEXTS[:1000])
    resumed = e5np_cli("search", "build", "--resume", tmp_path / "nowhere.txt", index)
    assert resumed.returncode == 0
    assert resumed.stderr == f"e5np: finished replacing {index} with its rebuild (1000 passages)\n"
    assert_same_files(index, new)


def test_an_append_first_finishes_a_rebuild_killed_while_moving_in(tmp_path):
    """Any build into such an index finishes the move before it reads the index: an append adds to the rebuild."""
    index, new = index_and_its_rebuild(tmp_path)
    os.replace(index / ".rebuild" / "vectors.npy", index / "vectors.npy")
    appended = e5np_cli("search", "build", "--append", write_lines(tmp_path / "more.txt", TEXTS[2000:2010]), index,
                        "-q")
    assert appended.returncode == 0, appended.stderr
    assert appended.stderr == (f"e5np: finished replacing {index} with its rebuild (1000 passages)\n"
                               f"e5np: added 10 passages to {index} (1010 in all)\n")
    passages = (index / "passages.jsonl").read_text().splitlines()
    assert [json.loads(line)["text"] for line in passages] == TEXTS[1000:2010]


def test_resume_refuses_what_it_cannot_continue(corpus, straight_build, tmp_path):
    complete = e5np_cli("search", "build", "--resume", corpus, straight_build)
    assert complete.returncode == 2 and "no unfinished build to resume (its build is complete)" in complete.stderr
    nothing = e5np_cli("search", "build", "--resume", corpus, tmp_path / "nowhere")
    assert nothing.returncode == 2 and "no unfinished build to resume\n" in nothing.stderr

    index = tmp_path / "index"
    e5np_cli("search", "build", corpus, index, "-m", TINY_DIR, "-q", file_limit=FILE_LIMIT[".npy"])
    other = tmp_path / "other.txt"
    other.write_text("\n".join(TEXTS[:7] + ["something else"] + TEXTS[8:]) + "\n")
    changed = e5np_cli("search", "build", "--resume", other, index)
    assert changed.returncode == 2
    assert changed.stderr.endswith(f"{other}: text 8 is not passage 8 of {index}: resume with the corpus {index} "
                                   "was built from\n")
    other.write_text("\n".join(TEXTS[:100]) + "\n")
    shorter = e5np_cli("search", "build", "--resume", other, index)
    assert shorter.returncode == 2 and f"{other} ends after 100 texts, but {index} holds more" in shorter.stderr
    as_records = tmp_path / "records.jsonl"
    as_records.write_text("".join(json.dumps({"text": text}) + "\n" for text in TEXTS))
    records = e5np_cli("search", "build", "--resume", as_records, index)
    assert records.returncode == 2
    assert records.stderr == (f"e5np search: {index} is being built from lines of plain text: resume it with a "
                              "corpus of those\n")
    wrong_model = e5np_cli("search", "build", "--resume", corpus, index, "-m", FIXTURES / "bert-wide")
    assert wrong_model.returncode == 2 and "resume it with that model" in wrong_model.stderr
    assert json.loads((index / "index.json").read_text())["rows"] == 4096     # all of it left as it was
    assert len(np.load(index / "vectors.npy")) == 4096


RECORDS = [{"id": i, "body": text, "source": "tests"} for i, text in enumerate(TEXTS)]


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """A JSON-lines corpus whose records carry an id besides the text, and an uninterrupted build's index of it."""
    path = tmp_path_factory.mktemp("records") / "records.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in RECORDS))
    index = path.parent / "straight"
    result = e5np_cli("search", "build", path, index, "--field", "body", "-m", TINY_DIR, "-q")
    assert result.returncode == 0, result.stderr
    return path, index


def unfinished_build(corpus, index, *options):
    failed = e5np_cli("search", "build", corpus, index, *options, "-m", TINY_DIR, "-q", file_limit=FILE_LIMIT[".npy"])
    assert failed.returncode == 2 and "unfinished index of the first 4096 passages" in failed.stderr, failed.stderr


def test_a_build_of_records_resumes_with_its_field(records, tmp_path):
    """--resume takes the text's field from the index, compares whole records (not only texts) and refuses a
    corpus of another kind."""
    corpus, straight = records
    index = tmp_path / "index"
    unfinished_build(corpus, index, "--field", "body")

    other = tmp_path / "other.jsonl"
    changed = [dict(r, id="renamed") if i == 7 else r for i, r in enumerate(RECORDS)]   # same text, other id
    other.write_text("".join(json.dumps(record) + "\n" for record in changed))
    result = e5np_cli("search", "build", "--resume", other, index)
    assert result.returncode == 2 and f"{other}: text 8 is not passage 8 of {index}" in result.stderr, result.stderr
    wrong_field = e5np_cli("search", "build", "--resume", corpus, index, "--field", "source")
    assert wrong_field.returncode == 2
    assert wrong_field.stderr == (f"e5np search: {index} is being built from JSON lines, field 'body': resume it "
                                  "with a corpus of those (--field body)\n")
    lines = tmp_path / "lines.txt"                                     # read as JSON lines, as the index's corpus
    lines.write_text("\n".join(TEXTS) + "\n")
    not_json = e5np_cli("search", "build", "--resume", lines, index)
    assert not_json.returncode == 2 and f"{lines}:1: not valid JSON" in not_json.stderr
    assert json.loads((index / "index.json").read_text())["rows"] == 4096

    resumed = e5np_cli("search", "build", "--resume", corpus, index, "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_files(index, straight)


def test_resume_continues_an_index_begun_before_records_were_kept(records, tmp_path):
    """An unfinished index from before index.json had "field" holds {"text": ...} lines: --resume goes on so."""
    corpus, straight = records
    index = tmp_path / "index"
    unfinished_build(corpus, index, "--field", "body")
    passages = [json.loads(line) for line in (index / "passages.jsonl").read_text().splitlines()]
    (index / "passages.jsonl").write_text("".join(json.dumps({"text": p["body"]}) + "\n" for p in passages))
    meta = json.loads((index / "index.json").read_text())
    del meta["field"]
    (index / "index.json").write_text(json.dumps(meta))

    resumed = e5np_cli("search", "build", "--resume", corpus, index, "--field", "body", "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert (index / "vectors.npy").read_bytes() == (straight / "vectors.npy").read_bytes()
    stored = [json.loads(line) for line in (index / "passages.jsonl").read_text().splitlines()]
    assert stored == [{"text": text} for text in TEXTS]
    query = e5np_cli("search", "query", index, "topic 3", "--json", "-k", "1")
    assert query.returncode == 0 and "record" not in json.loads(query.stdout)["results"][0], query.stderr


def write_lines(path, texts):
    path.write_text("".join(text + "\n" for text in texts))
    return path


def assert_same_index(index, expected):
    """The same passages and vectors (bit for bit where this BLAS allows: the chunks were other batches)."""
    assert (index / "passages.jsonl").read_bytes() == (expected / "passages.jsonl").read_bytes()
    assert_same_vectors(np.load(index / "vectors.npy"), np.load(expected / "vectors.npy"))
    meta, expected_meta = (json.loads((i / "index.json").read_text()) for i in (index, expected))
    assert {**meta, "build_start": 0} == expected_meta


def test_append_adds_a_corpus_to_a_complete_index(corpus, straight_build, tmp_path):
    """Two appends make the index one build of the whole corpus makes; an append cut short resumes."""
    index = tmp_path / "index"
    first = e5np_cli("search", "build", write_lines(tmp_path / "a.txt", TEXTS[:1000]), index, "-m", TINY_DIR, "-q")
    assert first.returncode == 0, first.stderr
    second = write_lines(tmp_path / "b.txt", TEXTS[1000:])
    cut_short = e5np_cli("search", "build", "--append", second, index, "-q", file_limit=FILE_LIMIT[".npy"])
    assert cut_short.returncode == 2
    assert cut_short.stderr.endswith(f"{index} holds an unfinished index of the first 3048 passages; "
                                     f"`e5np search build --resume {second} {index}` continues it\n")
    assert json.loads((index / "index.json").read_text())["build_start"] == 1000

    wrong = write_lines(tmp_path / "wrong.txt", TEXTS[1000:1100] + ["not it"] + TEXTS[1101:])
    refused = e5np_cli("search", "build", "--resume", wrong, index)
    assert refused.returncode == 2 and f"{wrong}: text 101 is not passage 1101 of {index}" in refused.stderr
    again = e5np_cli("search", "build", "--append", second, index)
    assert again.returncode == 2 and f"{index} holds an unfinished build: finish it first" in again.stderr
    resumed = e5np_cli("search", "build", "--resume", second, index, "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr == f"e5np: added 4000 passages to {index} (5000 in all)\n"
    assert_same_index(index, straight_build)

    more = write_lines(tmp_path / "more.txt", ["one more passage"])
    appended = e5np_cli("search", "build", "--append", more, index, "-q")
    assert appended.returncode == 0, appended.stderr
    hit = json.loads(e5np_cli("search", "query", index, "one more passage", "-k", "1", "--json").stdout)["results"][0]
    assert (hit["index"], hit["text"]) == (5000, "one more passage")


def test_append_refuses_what_would_spoil_the_index(corpus, straight_build, tmp_path):
    index = tmp_path / "index"
    shutil.copytree(straight_build, index)
    more = write_lines(tmp_path / "more.txt", ["one more passage"])
    for options, message in [
            (["-m", FIXTURES / "bert-wide"], f"{index} is built with --model {TINY_DIR}: append to it with that model"),
            (["--field", "body"], f"{index} is built from lines of plain text: append to it with a corpus of those"),
            (["--resume"], "not allowed with argument")]:
        result = e5np_cli("search", "build", "--append", more, index, *options)
        assert result.returncode == 2 and message in result.stderr, result.stderr
    nowhere = e5np_cli("search", "build", "--append", more, tmp_path / "nowhere")
    assert nowhere.returncode == 2 and f"{tmp_path / 'nowhere'}: no index to append to" in nowhere.stderr
    assert_same_files(index, straight_build)


def test_index_built_with_a_relative_model_path_is_queried_from_anywhere(corpus, tmp_path):
    """index.json records a local model directory as an absolute path: `search query` loads it by default."""
    shutil.copytree(TINY_DIR, tmp_path / "my-model")
    built = e5np_cli("search", "build", corpus, "index", "-m", "my-model", "-q", cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    assert json.loads((tmp_path / "index" / "index.json").read_text())["model"] == str(tmp_path / "my-model")
    query = e5np_cli("search", "query", tmp_path / "index", "topic 3", "-k", "1", cwd=corpus.parent)
    assert query.returncode == 0 and query.stdout.startswith("query: topic 3\n"), query.stderr


def test_two_builds_never_write_one_index(corpus, straight_build, tmp_path):
    """While a build holds the index's lock, another build into it stops at once (before the model loads)."""
    index = tmp_path / "index"
    shutil.copytree(straight_build, index)
    with open(index / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)              # as a running `search build` holds it
        for extra in ([], ["--resume"]):
            second = e5np_cli("search", "build", *extra, corpus, index, "-m", TINY_DIR, "-q")
            assert second.returncode == 2
            assert second.stderr == (f"e5np search: {index} is being built by another `e5np search build`: "
                                     "wait for it, or build into another directory\n")
    assert_same_files(index, straight_build)
    rebuilt = e5np_cli("search", "build", corpus, index, "-m", TINY_DIR, "-q")   # the lock released: it builds
    assert rebuilt.returncode == 0, rebuilt.stderr


def test_a_build_that_cannot_start_leaves_the_old_index(corpus, straight_build, tmp_path):
    """A mistyped corpus name, or a bad line in the first chunk, used to replace the index with an empty
    unfinished one; and `embed` left an empty output file for an input it could not read."""
    index = tmp_path / "index"
    shutil.copytree(straight_build, index)
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": \n')
    for source, message in [(tmp_path / "corpsu.txt", "cannot read"),
                            (tmp_path / "bad.jsonl", "bad.jsonl:2: not valid JSON")]:
        result = e5np_cli("search", "build", source, index, "-m", TINY_DIR, "-q")
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert_same_files(index, straight_build)
    embed = e5np_cli("embed", "-m", TINY_DIR, "-i", tmp_path / "corpsu.txt", "-o", tmp_path / "v.npy")
    assert embed.returncode == 2 and not (tmp_path / "v.npy").exists()


def test_changed_weights_are_noticed(corpus, tmp_path):
    """index.json records the weights' sha256: --resume refuses other weights (one index, two models), a query
    with them warns; a file merely touched (new mtime, same bytes) is hashed again and passes."""
    from safetensors.numpy import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(TINY_DIR, model)
    index = tmp_path / "index"
    e5np_cli("search", "build", corpus, index, "-m", model, "-q", file_limit=FILE_LIMIT[".npy"])
    recorded = json.loads((index / "index.json").read_text())["weights"]
    assert recorded["size"] == (model / "model.safetensors").stat().st_size and len(recorded["sha256"]) == 64

    (model / "model.safetensors").touch()
    query = e5np_cli("search", "query", index, "topic 3")
    assert query.returncode == 0 and "warning" not in query.stderr, query.stderr

    tensors = load_file(model / "model.safetensors")
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + np.float32(0.01)                   # fine-tuned in place, as it were
    save_file(tensors, model / "model.safetensors")
    query = e5np_cli("search", "query", index, "topic 3")
    assert query.returncode == 0 and "is not the model" in query.stderr and "sha256 differs" in query.stderr
    resumed = e5np_cli("search", "build", "--resume", corpus, index, "-q")
    assert resumed.returncode == 2 and f"the weights of {model} changed since {index} was begun" in resumed.stderr


def test_a_changed_recipe_is_noticed(corpus, tmp_path):
    """index.json records how texts became vectors besides the weights: --resume and --append refuse a model that now
    truncates, tokenizes, prefixes or pools otherwise (one index, two kinds of vectors), a query with it warns."""
    model = tmp_path / "model"
    shutil.copytree(TINY_DIR, model)
    index = tmp_path / "index"
    e5np_cli("search", "build", corpus, index, "-m", model, "-q", file_limit=FILE_LIMIT[".npy"])
    recipe = json.loads((index / "index.json").read_text())["recipe"]
    assert recipe == {"max_length": 128, "tokenizer_sha256": recipe["tokenizer_sha256"], "lowercase": False,
                      "prefix": "", "pooling": "mean", "normalize": True}
    settings = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**settings, "model_max_length": 64}))
    (model / "config_sentence_transformers.json").write_text(json.dumps({"prompts": {"passage": "passage: "}}))
    changes = "max_length 128 then, 64 now; prefix '' then, 'passage: ' now"
    resumed = e5np_cli("search", "build", "--resume", corpus, index, "-q")
    assert resumed.returncode == 2
    assert resumed.stderr == (f"e5np search: {model} now embeds passages otherwise than it did for {index} ({changes}): "
                              f"one index cannot mix two kinds of vectors; delete {index} and build it again\n")
    query = e5np_cli("search", "query", index, "topic 3")
    assert query.returncode == 0 and f"now embeds texts otherwise than it did for {index} ({changes})" in query.stderr

    (model / "config_sentence_transformers.json").unlink()
    (model / "tokenizer_config.json").write_text(json.dumps(settings))
    tokenizer = json.loads((model / "tokenizer.json").read_text())
    tokenizer["normalizer"]["lowercase"] = not tokenizer["normalizer"]["lowercase"]
    (model / "tokenizer.json").write_text(json.dumps(tokenizer))
    resumed = e5np_cli("search", "build", "--resume", corpus, index, "-q")
    assert resumed.returncode == 2 and f"(tokenizer_sha256 '{recipe['tokenizer_sha256']}' then" in resumed.stderr
    assert json.loads((index / "index.json").read_text())["rows"] == 4096

    shutil.copy(TINY_DIR / "tokenizer.json", model / "tokenizer.json")
    resumed = e5np_cli("search", "build", "--resume", corpus, index, "-q")
    assert resumed.returncode == 0, resumed.stderr
