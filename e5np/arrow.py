"""Parquet and Arrow IPC (Feather) files, as formats of e5np/formats.py's registry: tables in, tables out.

Reading: a file, a directory of files or a glob (`docs.parquet`, `data/`, `data/*.parquet`; `.arrow` / `.feather` /
`.ipc` for Arrow IPC), a record batch at a time (CHUNK rows at most: memory stays bounded for any size). The text is
the column named by `field` ("text" by default); a row's record is all its columns as JSON-able values (what a
search index's passages.jsonl keeps), and remembers the batch it came from, so that a table output carries every
input column with its own Arrow type.

Writing: the input's columns plus `embedding`, a fixed_size_list<float32, H> (what LanceDB and DuckDB's FLOAT[384]
read); the schema's metadata key b"e5np" records how the vectors were made (see embed_metadata).

How an output survives Ctrl-C, a failed write or a kill: each chunk is one file, a *part* (one row group, the whole
schema and its metadata), written under a hidden temporary name and renamed when it is closed, so the parts
directory holds whole valid files and nothing else at every moment, even after SIGKILL. For `-o out.parquet` the
parts go to `out.parquet.parts/`, which is assembled into out.parquet (written beside, renamed over it) once every
text is embedded: out.parquet is then complete, and only then (an older out.parquet stays as it was until then).
For a directory output (`-o out/`) the parts are the output. `--resume` (resume=True) continues from the parts,
after checking that the model makes the same vectors and that the input's first rows are the rows written.

Needs pyarrow (pip install "e5np[parquet]"), imported when a table is read or written, never by `import e5np`.
"""

import base64
import contextlib
import datetime
import decimal
import glob
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np

from .formats import CHUNK, FormatError, cannot_write, register_reader, register_writer

METADATA_KEY = b"e5np"
EMBEDDING = "embedding"
PARTS = ".parts"            # out.parquet's parts directory: out.parquet.parts
DONE = ".done"              # a parts directory being removed once its parts are assembled


def import_pyarrow():
    """pyarrow, with pyarrow.parquet and pyarrow.ipc; FormatError saying how to install it if it is missing."""
    try:
        import pyarrow
        import pyarrow.ipc  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise FormatError('Parquet and Arrow files need pyarrow: pip install "e5np[parquet]"') from None
    return pyarrow


def jsonable(value):
    """A value of Arrow's to_pylist as JSON can hold it: dates and times in ISO 8601, durations in seconds, decimals
    as strings, bytes in base64, NaN and infinities as null (JSON has no such numbers), maps as [key, value] lists."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (np.ndarray, np.generic)):
        return jsonable(value.tolist())
    return str(value)



def vector_column(vectors, dtype=np.float32):
    """[n, H] vectors as an Arrow fixed_size_list<dtype, H> array: what LanceDB and DuckDB's FLOAT[H] read."""
    import pyarrow as pa

    vectors = np.ascontiguousarray(vectors, dtype=dtype)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])


class ArrowRow(dict):
    """A row's record: its columns as JSON-able values, and the record batch (`batch`, `row`) it came from."""

    __slots__ = ("batch", "row")


def table_files(path, suffixes, what):
    """The files a path names: itself, a directory's files with one of `suffixes` (recursively, in name order,
    leaving out hidden ones and _metadata-like ones, as pyarrow's datasets do), or a glob's matches in name order."""
    if os.path.isdir(path):
        root = Path(path)
        files = sorted(str(p) for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
                       and not any(part.startswith((".", "_")) for part in p.relative_to(root).parts))
        if not files:
            raise FormatError(f"{path}: a directory with no {what} files ({' '.join(suffixes)}) in it")
        return files
    if glob.has_magic(path) and not os.path.exists(path):
        files = sorted(p for p in glob.glob(path) if os.path.isfile(p))
        if not files:
            raise FormatError(f"{path}: no files match")
        return files
    if not os.path.isfile(path):
        raise FormatError(f"cannot read {path}: " + ("not a file" if os.path.exists(path) else
                                                      "No such file or directory"))
    return [path]


def columns(schema):
    return ", ".join(f"{field.name} {field.type}" for field in schema)


def text_type(pa, kind):
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or (
        hasattr(pa.types, "is_string_view") and pa.types.is_string_view(kind))


class TableReader:
    """(text, record) pairs from Parquet or Arrow files (see the module's docstring), a batch at a time. The first
    file is opened and its columns checked by the constructor (a missing text column is refused before anything is
    written); rows are counted from 0 within each file, as pyarrow and pandas count them."""

    name, suffixes, has_fields, what = None, (), True, None

    def __init__(self, path, field=None, keep_blank=False):
        self.pa = import_pyarrow()
        self.path, self.where, self.field = str(path), str(path), field or "text"
        self.files = table_files(self.path, self.suffixes, self.what)
        self.schema = self.checked_schema(self.files[0])

    def checked_schema(self, file):
        schema = self.guarded(file, lambda: self.open_schema(file))
        if self.field not in schema.names:
            raise FormatError(f"{file} has no column {self.field!r}; its columns are {', '.join(schema.names)}")
        kind = schema.field(self.field).type
        if not text_type(self.pa, kind.value_type if self.pa.types.is_dictionary(kind) else kind):
            raise FormatError(f"{file}: column {self.field!r} holds {kind} values, not text")
        return schema

    def guarded(self, file, read):
        """read(), a pyarrow error (a corrupt or truncated file) as a FormatError naming the file."""
        try:
            return read()
        except (self.pa.ArrowException, OSError) as e:
            if isinstance(e, FormatError):
                raise
            raise FormatError(f"{file}: not a readable {self.what} file ({str(e).splitlines()[0]})") from None

    def __iter__(self):
        for file in self.files:
            schema = self.checked_schema(file) if file != self.files[0] else self.schema
            if not schema.remove_metadata().equals(self.schema.remove_metadata()):
                raise FormatError(f"{file}: its columns ({columns(schema)}) are not those of {self.files[0]} "
                                  f"({columns(self.schema)})")
            start, batches = 0, self.guarded(file, lambda: iter(self.batches(file)))
            while True:
                batch = self.guarded(file, lambda: next(batches, None))
                if batch is None:
                    break
                for offset in range(0, batch.num_rows, CHUNK):
                    piece = batch.slice(offset, CHUNK)
                    yield from self.pairs(piece, file, start + offset)
                start += batch.num_rows

    def pairs(self, batch, file, start):
        column = batch.column(batch.schema.get_field_index(self.field))
        if self.pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        if column.null_count:
            row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            raise FormatError(f"{file}, row {start + row}: column {self.field!r} is null where a text was expected")
        try:
            texts, rows = column.to_pylist(), batch.to_pylist()
        except UnicodeDecodeError:
            raise FormatError(f"{file}, rows {start}..{start + batch.num_rows - 1}: a string that is not "
                              "UTF-8") from None
        for row, (text, values) in enumerate(zip(texts, rows)):
            record = ArrowRow(jsonable(values))
            record.batch, record.row = batch, row
            yield text, record


@register_reader
class ParquetReader(TableReader):
    name, suffixes, what = "parquet", (".parquet", ".pq"), "Parquet"

    def open_schema(self, file):
        return self.pa.parquet.read_schema(file)

    def batches(self, file):
        return self.pa.parquet.ParquetFile(file).iter_batches(batch_size=CHUNK)      # a row group at a time


@register_reader
class ArrowReader(TableReader):
    """Arrow IPC files (Feather v2), memory-mapped; the IPC stream format too."""

    name, suffixes, what = "arrow", (".arrow", ".feather", ".ipc"), "Arrow IPC"

    def open_reader(self, file):
        ipc = self.pa.ipc
        try:
            return ipc.open_file(self.pa.memory_map(file))
        except self.pa.ArrowInvalid:                                   # not the file format: the stream format?
            return ipc.open_stream(self.pa.memory_map(file))

    def open_schema(self, file):
        return self.open_reader(file).schema

    def batches(self, file):
        reader = self.open_reader(file)
        if hasattr(reader, "num_record_batches"):
            return (reader.get_batch(i) for i in range(reader.num_record_batches))
        return reader


# --- writing ---------------------------------------------------------------------------------------
def embed_metadata(model, kind=None, field=None, normalize=None):
    """What the schema's b"e5np" metadata records of how the vectors were made: the model (its name or directory),
    its weights' sha256, the prefix added to each text (for kind "query", "passage" or None: the model's default),
    whether the vectors are normalized, the token limit, the text column and the e5np version."""
    from . import __version__
    from .index import model_name, weights_identity

    return {"model": model_name(model), "weights_sha256": weights_identity(model.directory)["sha256"],
            "prefix": model.prefix(kind), "normalize": model.normalize if normalize is None else bool(normalize),
            "max_length": model.max_length, "dim": model.dim, "field": field or "text", "e5np_version": __version__}


RECIPE = ("weights_sha256", "prefix", "normalize", "max_length", "dim", "field")   # what --resume checks


def is_dataset_output(output):
    """Whether an output names a directory of part files (`out/`, or a directory there already)."""
    return output.endswith(("/", os.sep)) or os.path.isdir(output)


class TableWriter:
    """A Parquet or Arrow output written a part file per chunk (see the module's docstring). The writer interface
    of formats.Writer: write(records, vectors), rows, kept(), close(complete); and skip_written(records) for resume.

    metadata: embed_metadata's dict, stored in every part's schema; resume: continue the parts there."""

    name, suffixes, what, describes_model = None, (), None, True

    def __init__(self, output, dim, append=False, *, metadata=None, resume=False, dtype="<f4"):
        if output is None or output == "-":
            raise FormatError(f"{self.what} output goes to a file (-o FILE{self.suffixes[0]}, or DIR/ for Parquet), "
                              "not stdout")
        self.pa = import_pyarrow()
        self.output, self.dim, self.metadata = str(output).rstrip("/") or "/", dim, dict(metadata or {})
        self.dtype = np.dtype(dtype)                                   # float32, or int8 / uint8 compact vectors
        self.dataset = is_dataset_output(str(output))
        self.parts = Path(self.output if self.dataset else self.output + PARTS)
        self.schema, self.part_rows = None, []
        try:
            shutil.rmtree(str(self.parts) + DONE, ignore_errors=True)  # a removal a kill stopped
            if resume:
                self.resume()
            else:
                self.start()
        except OSError as e:
            raise cannot_write(self.parts, e) from None

    @property
    def rows(self):
        return sum(self.part_rows)

    def part_files(self):
        return sorted(self.parts.glob(f"part-*{self.suffixes[0]}"))

    def start(self):
        if self.part_files():
            raise FormatError(f"{self.parts} holds the parts of an unfinished output: --resume continues it; delete "
                              f"{self.parts} to start over")
        self.parts.mkdir(parents=True, exist_ok=True)

    def resume(self):
        """Takes up the parts there (dropping temporary files a kill left), after checking their metadata."""
        if not self.parts.is_dir():
            raise FormatError(f"{self.output}: no unfinished output to resume" +
                              (" (it is complete)" if os.path.isfile(self.output) else ""))
        for stale in self.parts.glob(".*.tmp"):
            stale.unlink()
        files = self.part_files()
        for number, file in enumerate(files):
            if file.name != self.part_name(number):
                raise FormatError(f"{self.parts}: {file.name} where {self.part_name(number)} was expected")
            schema = self.read_schema(file)
            if number == 0:
                self.check_recipe(file, schema)
                self.schema = schema
            self.part_rows.append(self.count_rows(file))

    def check_recipe(self, file, schema):
        recorded = json.loads((schema.metadata or {}).get(METADATA_KEY, b"{}"))
        changes = "; ".join(f"{key} {recorded.get(key)!r} then, {self.metadata.get(key)!r} now" for key in RECIPE
                            if recorded.get(key) != self.metadata.get(key))
        if changes:
            raise FormatError(f"{file} was made otherwise than this run would make its vectors ({changes}): one "
                              f"output cannot mix two kinds of vectors; resume as it was begun, or delete {self.parts}")

    def part_name(self, number):
        return f"part-{number:06d}{self.suffixes[0]}"

    def skip_written(self, records, source=None):
        """The (text, record) pairs after those the parts hold, checking each part's input columns against the
        input's rows (FormatError naming the first row that differs: resume with the input it was begun with)."""
        source = source or "the input"
        records = iter(records)
        start = 0
        for file, count in zip(self.part_files(), self.part_rows):
            chunk = [pair for _, pair in zip(range(count), records)]
            written = self.read_table(file).drop_columns([EMBEDDING]).replace_schema_metadata(None)
            if len(chunk) < count:
                raise FormatError(f"{source} ends after {start + len(chunk)} texts, but {self.parts} holds "
                                  f"{self.rows}: resume with the input it was begun with")
            given = self.input_table(chunk).replace_schema_metadata(None)
            if not given.equals(written):
                ours, theirs = written.to_pylist(), given.to_pylist() if given.schema.equals(written.schema) else []
                row = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), 0)
                raise FormatError(f"{source}: row {start + row} is not row {start + row} of {self.parts} (resume "
                                  "with the input it was begun with)")
            start += count
        return records

    def input_table(self, records):
        """The chunk's input columns: the batches' own columns for records read from tables, else a table of the
        records (JSON lines, plain text), typed as the first part was."""
        pa = self.pa
        if records and all(isinstance(record, ArrowRow) for _, record in records):
            pieces, first = [], 0
            for i in range(1, len(records) + 1):                      # runs of rows of one batch: slices of it
                if i == len(records) or records[i][1].batch is not records[first][1].batch:
                    row = records[first][1].row
                    pieces.append(pa.Table.from_batches([records[first][1].batch.slice(row, i - first)]))
                    first = i
            table = pa.concat_tables(pieces)
        else:
            table = pa.Table.from_pylist([dict(record) for _, record in records])
        if EMBEDDING in table.column_names:                            # embedded before: replaced, as .jsonl does
            table = table.drop_columns([EMBEDDING])
        if self.schema is not None:
            expected = self.schema.remove_metadata()
            expected = pa.schema([f for f in expected if f.name != EMBEDDING])
            if not table.schema.remove_metadata().equals(expected):
                try:
                    table = table.select(expected.names).cast(expected)
                except (pa.ArrowException, KeyError, ValueError):
                    raise FormatError(f"texts {self.rows}..{self.rows + len(records) - 1}: their columns "
                                      f"({', '.join(table.column_names)}) do not fit those of the first texts "
                                      f"({', '.join(expected.names)})") from None
        return table

    def table(self, records, vectors):
        pa = self.pa
        table = self.input_table(records)
        table = table.append_column(pa.field(EMBEDDING, pa.list_(pa.from_numpy_dtype(self.dtype), self.dim)),
                                    vector_column(vectors, self.dtype))
        metadata = {**(table.schema.metadata or {}), METADATA_KEY: json.dumps(self.metadata).encode()}
        table = table.replace_schema_metadata(metadata)
        if self.schema is None:
            self.schema = table.schema
        return table

    def write(self, records, vectors):
        table = self.table(records, vectors)
        name = self.parts / self.part_name(len(self.part_rows))
        temporary = name.with_name(f".{name.name}.tmp")               # hidden: no reader of the directory sees it
        try:
            with open(temporary, "wb") as f:
                self.write_table(table, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, name)                                # the commit: a whole file, or none
        except OSError as e:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise cannot_write(name, e) from None
        except self.pa.ArrowException as e:                            # (pyarrow's own IOError for a full disk)
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise FormatError(f"cannot write {name}: {e}") from None
        self.part_rows.append(len(table))

    def recount(self):
        """part_rows from the directory: a Ctrl-C may land between a part's rename and its count."""
        with contextlib.suppress(OSError, FormatError, self.pa.ArrowException):
            self.part_rows = [self.count_rows(file) for file in self.part_files()]

    def kept(self):
        if not self.rows:
            return None
        files = len(self.part_rows)
        return (f"{self.parts} holds the vectors of the first {self.rows} texts, in {files} whole {self.what} "
                f"file{'s' if files > 1 else ''}; the same command with --resume continues it")

    def close(self, complete):
        if not complete:
            self.recount()
            if not self.rows and not self.dataset:                     # stopped before its first part: no trace
                with contextlib.suppress(OSError):
                    self.parts.rmdir()
            return
        if self.dataset:
            return
        assembled = self.parts / f".assembled{self.suffixes[0]}.tmp"
        try:
            self.assemble(assembled)
            os.replace(assembled, self.output)
            done = str(self.parts) + DONE
            os.replace(self.parts, done)                               # then removed: never half a parts directory
            shutil.rmtree(done)
        except OSError as e:
            raise cannot_write(self.output, e) from None
        except self.pa.ArrowException as e:
            raise FormatError(f"cannot write {self.output}: {e}") from None

    def empty_schema(self):
        field = self.pa.field(EMBEDDING, self.pa.list_(self.pa.from_numpy_dtype(self.dtype), self.dim))
        return self.pa.schema([field], metadata={METADATA_KEY: json.dumps(self.metadata).encode()})


@register_writer
class ParquetWriter(TableWriter):
    name, suffixes, what = "parquet", (".parquet",), "Parquet"

    def write_table(self, table, file):
        self.pa.parquet.write_table(table, file, row_group_size=CHUNK)

    def read_schema(self, file):
        return self.pa.parquet.read_schema(file)

    def read_table(self, file):
        return self.pa.parquet.read_table(file)

    def count_rows(self, file):
        return self.pa.parquet.read_metadata(file).num_rows

    def assemble(self, path):
        parquet, files = self.pa.parquet, self.part_files()
        schema = self.read_schema(files[0]) if files else self.empty_schema()   # as Parquet gives it back
        with parquet.ParquetWriter(str(path), schema) as out:
            for file in files:                                         # a part at a time: one row group each
                out.write_table(parquet.read_table(file), row_group_size=CHUNK)


@register_writer
class ArrowWriter(TableWriter):
    name, suffixes, what = "arrow", (".arrow", ".feather"), "Arrow IPC"

    def write_table(self, table, file):
        with self.pa.ipc.new_file(file, table.schema) as out:
            out.write_table(table, max_chunksize=CHUNK)

    def read_schema(self, file):
        return self.pa.ipc.open_file(str(file)).schema

    def read_table(self, file):
        return self.pa.ipc.open_file(str(file)).read_all()

    def count_rows(self, file):
        return self.read_table(file).num_rows

    def assemble(self, path):
        files = self.part_files()
        with self.pa.ipc.new_file(str(path), self.read_schema(files[0]) if files else self.empty_schema()) as out:
            for file in files:
                out.write_table(self.read_table(file), max_chunksize=CHUNK)
