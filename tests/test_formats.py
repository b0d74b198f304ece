"""Formats chosen in one place: by suffix, by --input-format / --output-format, a field meaning JSON lines; a .json
file of JSON lines; an unknown suffix refused naming the formats; a format added by registering one class."""

import json
import subprocess
import sys

import numpy as np
import pytest

import e5np
from e5np import cli, formats
from tests.checkpoints import TINY_DIR

TEXTS = ["Pandas eat bamboo.", "Paris is the capital of France."]


@pytest.fixture(scope="module")
def tiny():
    return e5np.load(TINY_DIR)


def e5np_cli(*args, stdin=""):
    return subprocess.run([sys.executable, "-m", "e5np", *map(str, args)], input=stdin, capture_output=True,
                          text=True, timeout=300)


def records_file(path, field="text"):
    path.write_text("".join(json.dumps({"id": i, field: text}) + "\n" for i, text in enumerate(TEXTS)))
    return path


@pytest.mark.parametrize("path, field, expected", [
    ("corpus.txt", None, ("text", None)), ("corpus", None, ("text", None)), ("-", None, ("text", None)),
    ("docs.jsonl", None, ("jsonl", "text")), ("docs.json", None, ("jsonl", "text")), ("DOCS.JSON", None, ("jsonl", "text")),
    ("corpus.txt", "body", ("jsonl", "body")), ("-", "body", ("jsonl", "body")), ("notes.csv", "body", ("jsonl", "body")),
])
def test_input_format_from_the_suffix_or_the_field(path, field, expected):
    cls, chosen = formats.Input(path, field=field).choose()
    assert (cls.name, chosen) == expected


def test_an_explicit_format_wins_and_unknown_ones_are_named():
    assert formats.Input("docs.jsonl", format="text").choose()[0].name == "text"
    assert formats.Input("notes.md", format="jsonl").choose()[0].name == "jsonl"
    with pytest.raises(formats.FormatError, match=r"notes\.md: no input format reads '\.md' files; e5np reads text "
                                                  r"\(\.txt no suffix\), jsonl \(\.jsonl \.json\)"):
        formats.Input("notes.md").choose()
    with pytest.raises(formats.FormatError, match="unknown input format 'csv': e5np reads text, jsonl"):
        formats.Input("x.csv", format="csv")
    with pytest.raises(formats.FormatError,
                       match="unknown output format 'csv': e5np writes npy, jsonl, arrays, parquet, arrow"):
        formats.writer_class("x.csv", "csv")
    assert formats.writer_class("out.data", "jsonl").name == "jsonl"
    assert formats.writer_class("-").name == formats.writer_class(None).name == "arrays"


def test_a_json_file_of_json_lines_is_read_as_json_lines(tiny, tmp_path):
    docs = records_file(tmp_path / "docs.json")
    result = e5np_cli("embed", "-m", TINY_DIR, "-i", docs, "-o", tmp_path / "out.jsonl")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == [0, 1]
    np.testing.assert_allclose([row["embedding"] for row in rows], tiny.encode(TEXTS), atol=1e-6)
    built = e5np_cli("search", "build", docs, tmp_path / "index", "-m", TINY_DIR)
    assert built.returncode == 0, built.stderr
    assert json.loads((tmp_path / "index" / "index.json").read_text())["field"] == "text"


def test_an_unknown_input_suffix_is_refused_naming_the_formats(tmp_path):
    notes = tmp_path / "notes.csv"
    notes.write_text("a,b\n")
    for command in (["embed", "-i", notes], ["search", "build", notes, tmp_path / "index"],
                    ["search", "query", tmp_path / "index", "-i", notes]):
        if command[1] == "query":
            (tmp_path / "c.txt").write_text("one passage\n")
            assert e5np_cli("search", "build", tmp_path / "c.txt", tmp_path / "index", "-m", TINY_DIR).returncode == 0
        result = e5np_cli(*command, "-m", TINY_DIR)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.endswith(f": {notes}: no input format reads '.csv' files; e5np reads text (.txt no "
                                      "suffix), jsonl (.jsonl .json), parquet (.parquet .pq), arrow (.arrow .feather "
                                      ".ipc); --input-format names one\n"), result.stderr
    assert not (tmp_path / "index" / ".rebuild").exists()


def test_format_options_override_the_suffix(tiny, tmp_path):
    notes = tmp_path / "notes.csv"
    notes.write_text("a,b\nc,d\n")
    result = e5np_cli("embed", "-m", TINY_DIR, "-i", notes, "--input-format", "text", "-o", tmp_path / "v.npy")
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(np.load(tmp_path / "v.npy"), tiny.encode(["a,b", "c,d"]), atol=1e-6)

    lines = records_file(tmp_path / "docs.txt", field="body")          # JSON lines in a .txt file
    result = e5np_cli("embed", "-m", TINY_DIR, "-i", lines, "--input-format", "jsonl", "--field", "body",
                      "-o", tmp_path / "out.data", "--output-format", "jsonl")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (tmp_path / "out.data").read_text().splitlines()]
    assert [row["body"] for row in rows] == TEXTS

    stdout = e5np_cli("embed", "-m", TINY_DIR, *TEXTS, "--output-format", "jsonl")   # JSON lines on stdout
    assert stdout.returncode == 0, stdout.stderr
    rows = [json.loads(line) for line in stdout.stdout.splitlines()]
    assert [row["text"] for row in rows] == TEXTS
    np.testing.assert_allclose([row["embedding"] for row in rows], tiny.encode(TEXTS), atol=1e-6)

    no_field = e5np_cli("embed", "-m", TINY_DIR, "-i", lines, "--input-format", "text", "--field", "body")
    assert no_field.returncode == 2
    assert no_field.stderr == (f"e5np embed: {lines} is read as plain text, which has no field 'body': JSON lines "
                               "have fields\n")
    refused = e5np_cli("embed", "-m", TINY_DIR, "x", "--output-format", "parquet")
    assert refused.returncode == 2
    assert refused.stderr == ("e5np embed: Parquet output goes to a file (-o FILE.parquet, or DIR/ for Parquet), not "
                              "stdout\n")


def test_one_passage_is_singular(tmp_path):
    (tmp_path / "one.txt").write_text("Pandas eat bamboo.\n")
    built = e5np_cli("search", "build", tmp_path / "one.txt", tmp_path / "index", "-m", TINY_DIR, "-q")
    assert built.stderr == f"e5np: indexed 1 passage in {tmp_path / 'index'}\n"
    appended = e5np_cli("search", "build", "--append", tmp_path / "one.txt", tmp_path / "index", "-q")
    assert appended.stderr == f"e5np: added 1 passage to {tmp_path / 'index'} (2 in all)\n"
    rebuilt = e5np_cli("search", "build", tmp_path / "one.txt", tmp_path / "index", "-q", "-m", TINY_DIR)
    assert rebuilt.stderr == f"e5np: indexed 1 passage in {tmp_path / 'index'}, replacing the index it held\n"


class TabSeparated(formats.Reader):
    """id<TAB>text lines: a format added without touching the command line."""

    name, suffixes, has_fields = "tsv", (".tsv",), True

    def __init__(self, path, field=None, keep_blank=False):
        super().__init__(path, field or "text", keep_blank)

    def parse(self, line, number):
        identifier, text = line.rstrip("\n").split("\t")
        return text, {"id": identifier, self.field: text}


def test_a_registered_reader_is_chosen_by_its_suffix(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(formats.READERS, "tsv", TabSeparated)
    (tmp_path / "docs.tsv").write_text("".join(f"doc-{i}\t{text}\n" for i, text in enumerate(TEXTS)))
    assert cli.main(["embed", "-m", str(TINY_DIR), "-i", str(tmp_path / "docs.tsv"), "-o",
                     str(tmp_path / "out.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == ["doc-0", "doc-1"]
    np.testing.assert_allclose([row["embedding"] for row in rows], tiny.encode(TEXTS), atol=1e-6)
    with e5np.Index.build(tmp_path / "index", formats.Input(tmp_path / "docs.tsv"), tiny) as index:
        assert index.field == "text" and index.query(TEXTS[1], top_k=1)[0]["record"]["id"] == "doc-1"
    assert cli.main(["embed", "-m", str(TINY_DIR), "-i", str(tmp_path / "docs.txt"), "--input-format", "tsv"]) == 2
    assert "cannot read" in capsys.readouterr().err                    # --input-format offers it too
