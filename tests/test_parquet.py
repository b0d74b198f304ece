"""Parquet and Arrow IPC in and out (e5np/arrow.py), with real pyarrow: every input column carried through, the
vectors a fixed_size_list<float32, H> column equal to encode's, the model recorded in the schema's metadata; an output
that Ctrl-C or SIGKILL leaves as whole part files, which --resume continues; bad input named by file, row and column;
a search index built from Parquet."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.integrations_support import framework

pa = framework("pyarrow")
pq = framework("pyarrow.parquet")
feather = framework("pyarrow.feather")

import e5np  # noqa: E402
from e5np import formats  # noqa: E402
from e5np.index import weights_identity  # noqa: E402
from tests.checkpoints import FIXTURES, TINY_DIR, with_prompts  # noqa: E402
from tests.row_independence import assert_same_vectors  # noqa: E402

TEXTS = [f"passage {i} is about topic {i % 13}" for i in range(5000)]   # 3 chunks of CHUNK = 2048


def e5np_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "e5np", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


@pytest.fixture(scope="module")
def tiny():
    return e5np.load(TINY_DIR)


def docs_table(texts, start=0):
    """texts with an id, a source, a nullable int, a list and a timestamp column: types a table output must keep."""
    n = len(texts)
    return pa.table({"id": pa.array(range(start, start + n), pa.int64()), "body": texts,
                     "source": ["tests"] * n, "rank": pa.array([None if i % 7 == 0 else i for i in range(n)],
                                                                pa.int32()),
                     "tags": [["a", "b"][: i % 3] for i in range(n)],
                     "when": pa.array([1_700_000_000 + i for i in range(n)], pa.timestamp("s"))})


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    path = tmp_path_factory.mktemp("docs") / "docs.parquet"
    pq.write_table(docs_table(TEXTS), path, row_group_size=1000)
    return path


@pytest.fixture(scope="module")
def straight(docs):
    """The output an uninterrupted run makes: what a resumed one must end up as."""
    out = docs.parent / "straight.parquet"
    result = e5np_cli("embed", "--passage", "-m", TINY_DIR, "-i", docs, "--field", "body", "-o", out, "-q")
    assert result.returncode == 0, result.stderr
    return out


def vectors_of(table):
    column = table.column("embedding")
    return np.asarray(column.combine_chunks().flatten()).reshape(len(column), -1)


def test_parquet_round_trip(tiny, docs, straight):
    table = pq.read_table(straight)
    given = pq.read_table(docs)
    assert table.column_names == given.column_names + ["embedding"]
    assert table.drop_columns(["embedding"]).replace_schema_metadata(None).equals(given.replace_schema_metadata(None))
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), tiny.dim)
    meta = json.loads(table.schema.metadata[b"e5np"])
    assert meta == {"model": str(TINY_DIR), "weights_sha256": weights_identity(TINY_DIR)["sha256"], "prefix": "",
                    "normalize": True, "max_length": 128, "dim": tiny.dim, "field": "body",
                    "e5np_version": e5np.__version__}
    assert_same_vectors(vectors_of(table), tiny.encode_passages(TEXTS))
    metadata = pq.read_metadata(straight)
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [2048, 2048, 904]
    assert not os.path.exists(f"{straight}.parts") and sorted(os.listdir(straight.parent)) == ["docs.parquet",
                                                                                               "straight.parquet"]


def write_dataset(directory, texts, files=3, writer=pq.write_table):
    directory.mkdir()
    bounds = np.linspace(0, len(texts), files + 1).astype(int)
    for k, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        suffix = ".parquet" if writer is pq.write_table else ".arrow"
        writer(docs_table(texts[start:stop], start), directory / f"part-{k}{suffix}")
    return directory


def test_a_directory_or_a_glob_in_a_directory_out(tiny, tmp_path):
    data = write_dataset(tmp_path / "data", TEXTS[:3000])
    (data / "_SUCCESS").write_text("")                                 # not a table: left out, as pyarrow does
    for source, out in ((data, tmp_path / "a.parquet"), (f"{data}/*.parquet", f"{tmp_path / 'b'}/")):
        result = e5np_cli("embed", "-m", TINY_DIR, "-i", source, "--field", "body", "-o", out, "-q")
        assert result.returncode == 0, result.stderr
        table = pq.read_table(str(out).rstrip("/"))
        assert table.column("id").to_pylist() == list(range(3000))
        assert_same_vectors(vectors_of(table), tiny.encode(TEXTS[:3000]))
    assert sorted(os.listdir(tmp_path / "b")) == ["part-000000.parquet", "part-000001.parquet"]   # the parts stay


def test_arrow_ipc_in_and_out(tiny, tmp_path):
    source = tmp_path / "docs.feather"
    feather.write_feather(docs_table(TEXTS[:100]), source)
    for out in (tmp_path / "out.arrow", tmp_path / "out.feather"):
        result = e5np_cli("embed", "--query", "-m", TINY_DIR, "-i", source, "--field", "body", "-o", out, "-q")
        assert result.returncode == 0, result.stderr
        table = feather.read_table(out)
        assert table.column_names == ["id", "body", "source", "rank", "tags", "when", "embedding"]
        assert table.schema.field("embedding").type == pa.list_(pa.float32(), tiny.dim)
        assert_same_vectors(vectors_of(table), tiny.encode_queries(TEXTS[:100]))
    stream = tmp_path / "docs.ipc"                                     # the IPC stream format too
    with pa.ipc.new_stream(stream, docs_table(TEXTS[:10]).schema) as writer:
        writer.write_table(docs_table(TEXTS[:10]))
    result = e5np_cli("embed", "-m", TINY_DIR, "-i", stream, "--field", "body", "-o", tmp_path / "s.parquet", "-q")
    assert result.returncode == 0, result.stderr
    assert pq.read_table(tmp_path / "s.parquet").num_rows == 10


def test_a_table_to_json_lines_and_npy(tiny, docs, tmp_path):
    """Records of a table are JSON-able: a timestamp in ISO 8601, a null as null."""
    result = e5np_cli("embed", "-m", TINY_DIR, "-i", docs, "--field", "body", "-o", tmp_path / "out.jsonl", "-q")
    assert result.returncode == 0, result.stderr
    first = json.loads(open(tmp_path / "out.jsonl").readline())
    assert {k: v for k, v in first.items() if k != "embedding"} == {
        "id": 0, "body": TEXTS[0], "source": "tests", "rank": None, "tags": [], "when": "2023-11-14T22:13:20"}
    result = e5np_cli("embed", "-m", TINY_DIR, "-i", docs, "--field", "body", "-o", tmp_path / "out.npy", "-q")
    assert result.returncode == 0, result.stderr
    assert_same_vectors(np.load(tmp_path / "out.npy"), tiny.encode(TEXTS))


def test_python_reads_and_writes_through_the_registry(tiny, docs, tmp_path):
    pairs = list(formats.Input(docs, field="body").open())
    assert [text for text, _ in pairs] == TEXTS and pairs[3][1]["id"] == 3
    out = tmp_path / "py.parquet"
    writer = formats.writer_class(out)(out, tiny.dim, metadata={"model": "tiny"})
    formats.write_stream(tiny.encode, iter(pairs), writer)
    table = pq.read_table(out)
    assert table.num_rows == 5000 and json.loads(table.schema.metadata[b"e5np"]) == {"model": "tiny"}
    assert_same_vectors(vectors_of(table), tiny.encode(TEXTS))


def test_import_e5np_needs_no_pyarrow(tmp_path):
    (tmp_path / "t.txt").write_text("a text\n")
    code = ("import sys, e5np, e5np.cli; e5np.cli.main(['embed', '-q', '-m', sys.argv[1], '-i', sys.argv[2], '-o', "
            "sys.argv[3]]); assert 'pyarrow' not in sys.modules, 'pyarrow imported'")
    result = subprocess.run([sys.executable, "-c", code, str(TINY_DIR), str(tmp_path / "t.txt"),
                             str(tmp_path / "t.npy")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


# --- stopped: Ctrl-C, a kill, --resume -----------------------------------------------------------------
@pytest.fixture(scope="module")
def many(tmp_path_factory):
    path = tmp_path_factory.mktemp("many") / "many.parquet"
    pq.write_table(pa.table({"id": range(300_000), "text": [f"text number {i}" for i in range(300_000)]}), path)
    return path


def run_until_a_part(source, out, stop):
    """Starts `e5np embed -i source -o out`, and sends `stop` once a part is committed in out's parts directory."""
    parts = f"{out}.parts"
    process = subprocess.Popen([sys.executable, "-m", "e5np", "embed", "-m", str(TINY_DIR), "-i", str(source),
                                "-o", str(out), "-q"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline and not (
            os.path.isdir(parts) and any(name.startswith("part-") for name in os.listdir(parts))):
        time.sleep(0.05)
    process.send_signal(stop)
    return process, process.communicate(timeout=120)[1], parts


def assert_whole_parts(tiny, parts, rows):
    table = pq.read_table(parts)                                        # a dataset: pyarrow reads it as it is
    assert table.num_rows == rows and rows % formats.CHUNK == 0 and rows > 0
    assert table.column("id").to_pylist() == list(range(rows))
    vectors = vectors_of(table)
    np.testing.assert_allclose(vectors[[0, -1]], tiny.encode(["text number 0", f"text number {rows - 1}"]), atol=1e-6)


def test_ctrl_c_keeps_whole_parts(tiny, many, tmp_path):
    out = tmp_path / "out.parquet"
    process, stderr, parts = run_until_a_part(many, out, signal.SIGINT)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr
    kept = re.fullmatch(rf"e5np embed: interrupted; {re.escape(parts)} holds the vectors of the first (\d+) texts, in "
                        r"(\d+) whole Parquet files?; the same command with --resume continues it\n", stderr)
    assert kept, stderr
    assert_whole_parts(tiny, parts, int(kept[1]))
    assert int(kept[2]) == len([n for n in os.listdir(parts) if not n.startswith(".")])
    assert not out.exists()                                             # out.parquet: complete, or not there


def test_sigkill_leaves_whole_parts(tiny, many, tmp_path):
    out = tmp_path / "out.parquet"
    process, _, parts = run_until_a_part(many, out, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL
    committed = [name for name in os.listdir(parts) if name.startswith("part-")]
    assert_whole_parts(tiny, parts, sum(pq.read_metadata(os.path.join(parts, n)).num_rows for n in committed))
    assert not out.exists()


KILLED_MID_CHUNK = """
import os, sys
from e5np import arrow, cli
write = arrow.TableWriter.write
def killed_in_third_part(self, records, vectors):
    if len(self.part_rows) == 2:       # a part half written, as a kill leaves it: no rename, no cleanup
        open(self.parts / ".part-000002.parquet.tmp", "wb").write(b"PAR1 and then nothing")
        os._exit(9)
    write(self, records, vectors)
arrow.TableWriter.write = killed_in_third_part
sys.exit(cli.main(sys.argv[1:]))
"""


def test_resume_after_a_kill_makes_the_uninterrupted_output(docs, straight, tmp_path):
    out = tmp_path / "out.parquet"
    command = ["embed", "--passage", "-m", str(TINY_DIR), "-i", str(docs), "--field", "body", "-o", str(out), "-q"]
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_CHUNK, *command], capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == 9, killed.stderr
    parts = tmp_path / "out.parquet.parts"
    assert pq.read_table(parts).num_rows == 4096 and not out.exists()

    again = e5np_cli(*command)
    assert again.returncode == 2
    assert again.stderr == (f"e5np embed: {parts} holds the parts of an unfinished output: --resume continues it; "
                            f"delete {parts} to start over\n")
    changed = tmp_path / "changed.parquet"
    pq.write_table(docs_table(TEXTS[:3000] + ["another text"] + TEXTS[3001:]), changed)
    refused = e5np_cli(*command[:5], changed, *command[6:], "--resume")
    assert refused.returncode == 2
    assert refused.stderr == (f"e5np embed: {changed}: row 3000 is not row 3000 of {parts} (resume with the input it "
                              "was begun with)\n")
    short = tmp_path / "short.parquet"
    pq.write_table(docs_table(TEXTS[:100]), short)
    refused = e5np_cli(*command[:5], short, *command[6:], "--resume")
    assert refused.returncode == 2 and f"{short} ends after 100 texts, but {parts} holds 4096" in refused.stderr
    prompted = with_prompts(TINY_DIR, tmp_path / "prompted")          # the same weights, a passage prefix
    other_prefix = e5np_cli(*[prompted if a == str(TINY_DIR) else a for a in command], "--resume")
    assert other_prefix.returncode == 2, other_prefix.stderr
    assert other_prefix.stderr == (f"e5np embed: {parts / 'part-000000.parquet'} was made otherwise than this run "
                                   "would make its vectors (prefix '' then, 'search_document: ' now): one output "
                                   f"cannot mix two kinds of vectors; resume as it was begun, or delete {parts}\n")
    other_model = e5np_cli(*[FIXTURES / "bert-wide" if a == str(TINY_DIR) else a for a in command], "--resume")
    assert other_model.returncode == 2 and "one output cannot mix two kinds of vectors" in other_model.stderr
    assert pq.read_table(parts).num_rows == 4096

    resumed = e5np_cli(*command, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    table, expected = pq.read_table(out), pq.read_table(straight)
    assert table.drop_columns(["embedding"]).equals(expected.drop_columns(["embedding"]))
    assert table.schema.metadata == expected.schema.metadata
    assert_same_vectors(vectors_of(table), vectors_of(expected))
    assert not parts.exists()
    done = e5np_cli(*command, "--resume")
    assert done.returncode == 2
    assert done.stderr == f"e5np embed: {out}: no unfinished output to resume (it is complete)\n"


def test_resume_is_for_table_outputs(docs, tmp_path):
    result = e5np_cli("embed", "-m", TINY_DIR, "-i", docs, "--field", "body", "-o", tmp_path / "v.npy", "--resume")
    assert result.returncode == 2
    assert result.stderr == ("e5np embed: --resume continues a Parquet or Arrow output (-o FILE.parquet, FILE.arrow, "
                             "DIR/); npy outputs are written whole each time\n")


# --- bad input ---------------------------------------------------------------------------------------------------
def test_bad_tables_are_named(tmp_path):
    def embed(source, field="text"):
        return e5np_cli("embed", "-m", TINY_DIR, "-i", source, "--field", field, "-o", tmp_path / "out.parquet")

    null = tmp_path / "null.parquet"
    pq.write_table(pa.table({"id": range(3000), "text": ["t"] * 2500 + [None] + ["t"] * 499}), null,
                   row_group_size=1000)
    result = embed(null)
    assert result.returncode == 2
    assert result.stderr == (f"e5np embed: {null}, row 2500: column 'text' is null where a text was expected; "
                             f"{tmp_path / 'out.parquet.parts'} holds the vectors of the first 2048 texts, in 1 whole "
                             "Parquet file; the same command with --resume continues it\n")
    (tmp_path / "out.parquet.parts").rename(tmp_path / "kept")
    result = embed(null, "id")
    assert result.returncode == 2 and result.stderr == f"e5np embed: {null}: column 'id' holds int64 values, not text\n"
    result = embed(null, "body")
    assert result.returncode == 2
    assert result.stderr == f"e5np embed: {null} has no column 'body'; its columns are id, text\n"
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(null.read_bytes()[:-100])
    result = embed(corrupt)
    assert result.returncode == 2 and result.stderr.startswith(f"e5np embed: {corrupt}: not a readable Parquet file (")
    assert result.stderr.count("\n") == 1
    not_arrow = tmp_path / "x.arrow"
    not_arrow.write_text("hello")
    result = embed(not_arrow)
    assert result.returncode == 2
    assert result.stderr.startswith(f"e5np embed: {not_arrow}: not a readable Arrow IPC file")
    result = embed(tmp_path / "nowhere.parquet")
    assert result.returncode == 2
    assert result.stderr == f"e5np embed: cannot read {tmp_path / 'nowhere.parquet'}: No such file or directory\n"
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    pq.write_table(pa.table({"text": ["a"]}), mixed / "a.parquet")
    pq.write_table(pa.table({"text": ["b"], "id": [1]}), mixed / "b.parquet")
    result = embed(mixed)
    assert result.returncode == 2
    assert result.stderr == (f"e5np embed: {mixed / 'b.parquet'}: its columns (text string, id int64) are not those of "
                             f"{mixed / 'a.parquet'} (text string)\n")
    assert sorted(os.listdir(tmp_path)) == ["corrupt.parquet", "kept", "mixed", "null.parquet", "x.arrow"]   # no trace


# --- search build ------------------------------------------------------------------------------------------------
def test_search_build_from_parquet(tiny, docs, tmp_path):
    index = tmp_path / "index"
    built = e5np_cli("search", "build", docs, index, "--field", "body", "-m", TINY_DIR, "-q")
    assert built.returncode == 0, built.stderr
    stored = [json.loads(line) for line in (index / "passages.jsonl").read_text().splitlines()]
    assert stored[7] == {"id": 7, "body": TEXTS[7], "source": "tests", "rank": None, "tags": ["a"],
                         "when": "2023-11-14T22:13:27"}
    assert_same_vectors(np.load(index / "vectors.npy"), tiny.encode_passages(TEXTS, normalize=True))
    query = e5np_cli("search", "query", index, TEXTS[42], "-k", "1", "--json")
    assert query.returncode == 0, query.stderr
    assert json.loads(query.stdout)["results"][0]["record"]["id"] == 42
    resumed = e5np_cli("search", "build", "--resume", docs, index)
    assert resumed.returncode == 2 and "no unfinished build to resume" in resumed.stderr


def test_a_failed_write_keeps_the_parts_before_it(docs, tmp_path, monkeypatch, capsys):
    """A full disk while a part is written: the part's temporary file is removed, the parts before it stay whole, and
    the message says what they hold."""
    import errno

    from e5np import arrow, cli

    write_table = arrow.ParquetWriter.write_table

    def disk_full_on_the_second_part(self, table, file):
        if self.part_rows:
            file.write(b"PAR1 and half a row group")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write_table(self, table, file)
    monkeypatch.setattr(arrow.ParquetWriter, "write_table", disk_full_on_the_second_part)
    out, parts = tmp_path / "out.parquet", tmp_path / "out.parquet.parts"
    status = cli.main(["embed", "-m", str(TINY_DIR), "-i", str(docs), "--field", "body", "-o", str(out), "-q"])
    assert status == 2
    assert capsys.readouterr().err == (f"e5np embed: cannot write {parts / 'part-000001.parquet'}: No space left on "
                                       f"device; {parts} holds the vectors of the first 2048 texts, in 1 whole Parquet "
                                       "file; the same command with --resume continues it\n")
    assert sorted(os.listdir(parts)) == ["part-000000.parquet"] and not out.exists()
    assert pq.read_table(parts).column("id").to_pylist() == list(range(2048))
