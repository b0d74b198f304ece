"""The files e5np reads texts from and writes embeddings to, each format in one class, chosen in one place.

Readers give (text, record) pairs a line at a time: plain text (one text a line, record {"text": line}) and JSON
lines (one object a line, the text one of its fields, the record the object with all its fields). Writers take a
chunk of pairs and their vectors at a time: a .npy, JSON lines (each record with its "embedding"), or one JSON
array a line (stdout's default). An error, Ctrl-C or a kill never loses what a writer committed: see Writer.
Parquet and Arrow IPC tables, in and out, are e5np/arrow.py's registered classes (pyarrow imported when used).

Choosing (Input.choose, writer_class): an explicit format name, else the path's suffix; '-' is stdin (or stdout),
read as plain text and written as JSON arrays unless a format is named. A field given (--field) means JSON lines
for a path whose suffix names a format without fields (plain text, no suffix, '-'). Another format is one class
with `name` and `suffixes`, passed to register_reader or register_writer; the command line's --input-format and
--output-format offer every registered name.

A problem with a file is a FormatError (a ValueError: one line for the user, naming the file and the line) or,
for an output that cannot be written, a WriteError (an OSError).
"""

import contextlib
import json
import math
import os
import stat
import sys
import warnings
from pathlib import Path

import numpy as np

from .tokenizer import lone_surrogate

CHUNK = 2048  # texts read, embedded and written at a time: memory stays bounded for any input size


class FormatError(ValueError):
    """A file that cannot be read (or written) as asked: its message names the file, and the line."""


class WriteError(OSError):
    """An output that cannot be written (a full disk, a missing directory): "cannot write PATH: reason"."""


def cannot_write(path, error):
    return WriteError(f"cannot write {path}: {error.strerror}")


# --- reading: texts and records ------------------------------------------------------------------
def open_input(path):
    """The file, or stdin for '-', as UTF-8 text (a leading byte-order mark dropped). Bytes that are not
    UTF-8 come through as lone surrogates (errors="surrogateescape"): the readers report them by line.

    Lines end at "\n" only (a "\r\n" ending loses its "\r" later), as `wc -l` counts them: Python's default also
    ends a line at a lone "\r", so a text holding one became two texts, and every later vector a row off."""
    if path == "-":
        if hasattr(sys.stdin, "reconfigure"):
            sys.stdin.reconfigure(encoding="utf-8-sig", errors="surrogateescape", newline="\n")
        return sys.stdin
    try:
        return open(path, encoding="utf-8-sig", errors="surrogateescape", newline="\n")
    except OSError as e:
        raise FormatError(f"cannot read {path}: {e.strerror}") from None


def not_utf8(text, where):
    """FormatError naming the first byte of text that is not UTF-8 (read with errors="surrogateescape")."""
    index, code = lone_surrogate(text)
    hint = "; it looks like UTF-16: convert it to UTF-8" if text.startswith(("\udcff\udcfe", "\udcfe\udcff")) else ""
    return FormatError(f"{where}: not UTF-8 text (byte 0x{code - 0xDC00:02X} at column {index + 1}){hint}")


def checked_arguments(texts):
    """Texts given as command-line arguments; FormatError if one holds bytes that are not UTF-8."""
    for number, text in enumerate(texts, 1):
        if lone_surrogate(text) is not None:
            raise not_utf8(text, f"text argument {number}")
    return texts


def refuse_to_overwrite_input(outputs, source):
    """FormatError when one of the files a command is about to write is the file its texts come from (source: a
    path, "-" for stdin, None for texts given as arguments): opening it for writing would empty it before it was
    read (`embed -i docs.jsonl -o docs.jsonl` would leave an empty docs.jsonl and exit status 0)."""
    if source is None:
        return
    try:
        read = os.fstat(sys.stdin.fileno()) if source == "-" else os.stat(source)
    except (OSError, ValueError, AttributeError):                      # unreadable: the reader says so
        return
    if not stat.S_ISREG(read.st_mode):
        return
    for output in outputs:
        try:
            same = os.path.samestat(read, os.stat(output))
        except OSError:                                                # not there yet: a new file
            continue
        if same:
            name = "stdin" if source == "-" else source
            also = "" if name == str(output) else f" ({name})"
            raise FormatError(f"{output} is the file the texts are read from{also}: writing it would destroy it "
                              "before it is read; write to another file")


def text_records(texts):
    """(text, record) pairs, as the readers give, for texts given as command-line arguments."""
    return [(text, {"text": text}) for text in checked_arguments(texts)]


class NumberOutOfRange(ValueError):
    """A JSON number past a float's range (1e400): Python reads it as infinity, which json.dumps would write
    back as Infinity, which is not JSON: a valid record would come out of e5np as an invalid one."""


def finite_float(literal):
    """float(literal), for json.loads's parse_float; NumberOutOfRange past a float's range."""
    value = float(literal)
    if math.isinf(value):
        raise NumberOutOfRange(literal)
    return value


READERS, WRITERS = {}, {}  # format name -> its class, in the order registered


def register_reader(cls):
    """Makes a reader class a format `Input` chooses (by cls.name, and cls.suffixes); returns it (a decorator)."""
    READERS[cls.name] = cls
    return cls


def register_writer(cls):
    """Makes a writer class a format writer_class chooses (by cls.name, and cls.suffixes); returns it."""
    WRITERS[cls.name] = cls
    return cls


class Reader:
    """(text, record) pairs from a file ('-' = stdin), read as they are taken. The file is opened by the
    constructor, so that one that cannot be read stops a command before it writes anything (a typo in `search
    build`'s corpus name must not replace the index with an empty one).

    A reader class has `name` (its format's, as --input-format gives it), `suffixes` (the file names it reads,
    "" for none) and `has_fields` (records whose text is one field of several, as JSON lines); an instance has
    `path` and `field` (the field holding the text, None for a format without fields: then the record is
    {"text": text})."""

    name, suffixes, has_fields = None, (), False

    def __init__(self, path, field=None, keep_blank=False):
        self.path, self.field, self.keep_blank = path, field, keep_blank
        self.where = "stdin" if path == "-" else path
        self.file = open_input(path)

    def __iter__(self):
        try:
            for number, line in enumerate(self.file, 1):
                if lone_surrogate(line) is not None:
                    raise not_utf8(line, f"{self.where}:{number}")
                pair = self.parse(line, number)
                if pair is not None:
                    yield pair
        finally:
            if self.file is not sys.stdin:
                self.file.close()

    def parse(self, line, number):
        """The (text, record) pair of one line, or None for a line that holds none."""
        raise NotImplementedError


@register_reader
class TextLines(Reader):
    """One text a line. Blank lines (empty or whitespace only) are skipped, unless keep_blank: then every line
    is a text, so that `e5np embed`'s row i is the file's line i."""

    name, suffixes = "text", (".txt", "")

    def __init__(self, path, field=None, keep_blank=False):
        if field is not None:
            raise FormatError(f"{'stdin' if path == '-' else path} is read as plain text, which has no field "
                              f"{field!r}: JSON lines have fields")
        super().__init__(path, None, keep_blank)

    def parse(self, line, number):
        if not line.strip() and not self.keep_blank:
            return None
        text = line.rstrip("\r\n")
        return text, {"text": text}


@register_reader
class JsonLines(Reader):
    """One JSON object a line: the text its `field` ("text" by default), the record the object itself, whose other
    fields (an id, a URL) a .jsonl output and a search index keep. Blank lines are no records."""

    name, suffixes, has_fields = "jsonl", (".jsonl", ".json"), True

    def __init__(self, path, field=None, keep_blank=False):
        super().__init__(path, field or "text", keep_blank)

    def parse(self, line, number):
        if not line.strip():
            return None
        where, field = f"{self.where}:{number}", self.field
        try:
            record = json.loads(line, parse_float=finite_float)
        except json.JSONDecodeError as e:
            raise FormatError(f"{where}: not valid JSON ({e.msg})") from None
        except NumberOutOfRange as e:
            raise FormatError(f"{where}: the number {e} is past a float's range (1.8e308): e5np would write it back "
                              "as Infinity, which is not JSON; quote it") from None
        except RecursionError:                                         # [[[[...]]]] deeper than Python's stack
            raise FormatError(f"{where}: JSON nested too deeply to parse") from None
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            raise FormatError(f"{where}: expected an object with a string field {field!r}")
        if (at := lone_surrogate(record[field])) is not None:          # a JSON escape such as "\ud800"
            raise FormatError(f"{where}: {field!r} is not valid Unicode: a lone surrogate (U+{at[1]:04X}) at offset "
                              f"{at[0]} of the string")
        return record[field], record


def suffix_of(path):
    return "" if path == "-" else Path(path).suffix.lower()


def by_suffix(registry, suffix):
    return next((cls for cls in registry.values() if suffix in cls.suffixes), None)


def known_suffixes(registry):
    return ", ".join(f"{cls.name} ({' '.join(s or 'no suffix' for s in cls.suffixes)})" for cls in registry.values())


class Input:
    """A file of texts or records to read ('-' = stdin), its format decided once, by choose(): `format` (a
    registered reader's name) if given; else the suffix's (text for .txt, none or '-'; JSON lines for .jsonl and
    .json); JSON lines where a field is given for a file of a format without fields (as --field always meant);
    FormatError for a suffix no format reads, naming the formats there are.

    keep_blank: blank lines of plain text are texts too (embed: row i is line i), not skipped."""

    def __init__(self, path, format=None, field=None, keep_blank=False):
        if format is not None and format not in READERS:
            raise FormatError(f"unknown input format {format!r}: e5np reads {', '.join(READERS)}")
        self.path, self.format, self.field, self.keep_blank = str(path), format, field, keep_blank

    def choose(self, default_field=None):
        """(reader class, the field holding the text: None for a format without fields) for this file;
        default_field: the field to read when none is given (an index's, continuing it), which makes a file of a
        format without fields JSON lines, as a given field does."""
        field = self.field if self.field is not None else default_field
        if self.format is not None:
            cls = READERS[self.format]
        elif os.path.isdir(self.path):                                 # a directory: a dataset of Parquet files
            cls = READERS["parquet"]
        else:
            cls = by_suffix(READERS, suffix_of(self.path))
            if field is not None and (cls is None or not cls.has_fields):
                cls = READERS["jsonl"]
            if cls is None:
                raise FormatError(f"{self.path}: no input format reads {suffix_of(self.path)!r} files; e5np reads "
                                  f"{known_suffixes(READERS)}; --input-format names one")
        return cls, (field or "text") if cls.has_fields else self.field     # (text: a given field is refused)

    def open(self, default_field=None):
        """The reader of this file (opened now: see Reader)."""
        cls, field = self.choose(default_field)
        return cls(self.path, field, self.keep_blank)


def json_text(value, indent=None):
    """value as JSON, non-ASCII characters as they are; all escaped (\\u00e9) if a string holds a lone surrogate,
    which UTF-8 cannot hold: one that came in as a JSON escape ("\\ud800") in a record's field besides the text."""
    text = json.dumps(value, ensure_ascii=False, indent=indent)
    return text if lone_surrogate(text) is None else json.dumps(value, indent=indent)


def json_line(record):
    """record as a line of UTF-8 JSON (see json_text)."""
    return (json_text(record) + "\n").encode("utf-8")


def chunks(iterable, size=CHUNK):
    chunk = []
    for item in iterable:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# --- writing: embeddings --------------------------------------------------------------------------
NPY_HEADER_BYTES = 128  # magic, version, length, the dict padded: room for any row count, rewritten in place


def npy_header(rows, dim, dtype="<f4"):
    """The .npy (version 1.0) header of a [rows, dim] array (float32 unless told), always NPY_HEADER_BYTES long."""
    text = f"{{'descr': '{np.dtype(dtype).str}', 'fortran_order': False, 'shape': ({rows}, {dim}), }}"
    text = text.ljust(NPY_HEADER_BYTES - 10 - 1) + "\n"               # 10 bytes before it; a newline ends it
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin1")


def with_chunk(ends, rows, chunk_rows, chunk_bytes):
    """{rows written: the file's length then} for now and for after the chunk about to be written: whenever a
    Ctrl-C lands, the row count is one of the two, and close() cuts the file to the length that goes with it."""
    return {rows: ends[rows], rows + chunk_rows: ends[rows] + chunk_bytes}


def is_stdout(output):
    return output is None or output == "-"


def writer_class(output, format=None):
    """The writer class for an output path ('-' or None: stdout): `format` (a registered writer's name) if
    given, else the suffix's (.npy, .jsonl, .parquet, .arrow), Parquet files for a directory (`out/`), else JSON
    arrays for stdout; FormatError for another suffix."""
    if format is not None:
        if format not in WRITERS:
            raise FormatError(f"unknown output format {format!r}: e5np writes {', '.join(WRITERS)}")
        return WRITERS[format]
    if is_stdout(output):
        return WRITERS["arrays"]
    if str(output).endswith(("/", os.sep)) or os.path.isdir(output):   # a directory: of Parquet files
        return WRITERS["parquet"]
    cls = by_suffix(WRITERS, suffix_of(output))
    if cls is None:
        files = " or ".join(suffix for cls in WRITERS.values() for suffix in cls.suffixes)
        raise FormatError(f"--output {output}: use a {files} file, a directory/ (of Parquet files), or - for stdout")
    return cls


class Writer:
    """Writes embeddings as they come, a chunk at a time, to a file or stdout ('-' or None).

    A file output always ends at a chunk's end: after Ctrl-C or a failed write, close() cuts off the part of a
    chunk that was cut short. A writer class has `name` and `suffixes` (see register_writer) and makes each
    chunk's bytes (encode); a format whose file has a header (.npy) rewrites it in commit(). dtype: the vectors'
    (float32 unless told; int8 / uint8 for compact vectors, see e5np.quantize), for formats that store it.
    """

    name, suffixes = None, ()

    def __init__(self, output, dim, append=False, dtype="<f4"):
        self.dim, self.rows, self.dtype = dim, 0, np.dtype(dtype)
        if is_stdout(output):
            sys.stdout.flush()                                         # (the chunks go to its bytes underneath)
            self.output, self.file = "stdout", getattr(sys.stdout, "buffer", None) or TextSink(sys.stdout)
        else:
            self.output, self.file = str(output), self.open(str(output), "r+b" if append else "wb")
        self.regular = self.output != "stdout" and stat.S_ISREG(os.fstat(self.file.fileno()).st_mode)
        self.rows = self.rows_written() if append else 0
        self.ends = {self.rows: self.start()}                          # rows written -> the file's length then
        self.commit()

    def open(self, path, mode):
        try:
            return open(path, mode)
        except OSError as e:
            raise cannot_write(path, e) from None

    def rows_written(self):
        """The rows a file being appended to holds (only formats that append say)."""
        raise FormatError(f"{self.output}: e5np does not append to {self.name} files")

    def start(self):
        """The file's length before any row."""
        return 0

    def encode(self, records, vectors):
        """One chunk's bytes: records the chunk's (text, record) pairs, vectors their embeddings."""
        raise NotImplementedError

    def commit(self):
        """The file ends after self.rows rows: flushed, and cut where a chunk a Ctrl-C or a full disk stopped."""
        if not self.regular:                                           # stdout, a pipe: nothing to cut or rewrite
            return
        try:
            self.file.flush()
            self.file.truncate(self.ends[self.rows])
            self.file.seek(self.ends[self.rows])
        except OSError as e:
            raise cannot_write(self.output, e) from None

    def write(self, records, vectors):
        chunk = self.encode(records, vectors)
        self.ends = with_chunk(self.ends, self.rows, len(vectors), len(chunk))
        try:
            self.file.write(chunk)
            self.file.flush()
        except BrokenPipeError:                                        # stdout piped into `head`: main() ends quietly
            raise
        except OSError as e:                                           # a full disk, a vanished mount
            raise cannot_write(self.output, e) from None
        self.rows += len(vectors)                                      # counted once written

    def kept(self):
        """What the output holds after an error or Ctrl-C, or None when that is nothing worth saying."""
        if self.rows and self.output != "stdout":
            return f"{self.output} holds the vectors of the first {self.rows} texts"
        return None

    def close(self, complete):
        """Leave the output consistent; `complete` says whether every text was written (IndexWriter records it)."""
        try:
            self.commit()
        finally:
            if self.output != "stdout":
                with contextlib.suppress(OSError):                     # a failed flush is reported by commit
                    self.file.close()


@register_writer
class NpyWriter(Writer):
    """Rows appended to a [rows, dim] .npy (float32, or the writer's dtype) whose header holds the row count and is
    rewritten after each chunk's rows, so the file is at every moment a valid .npy of the rows written so far (even after a kill), and
    nothing is copied at the end. `append` continues a .npy this writer made (see index.IndexWriter)."""

    name, suffixes = "npy", (".npy",)

    def __init__(self, output, dim, append=False, dtype="<f4"):
        super().__init__(output, dim, append, dtype)
        if not self.regular:
            raise FormatError(f"{self.output}: not a regular file, which a .npy output must be (its header is "
                              "rewritten)")

    def rows_written(self):
        """The rows of the .npy being appended to; FormatError unless it is a [rows, dim] one of the writer's dtype
        that this writer made."""
        try:
            if np.lib.format.read_magic(self.file) != (1, 0):
                raise ValueError("a .npy version e5np does not write")
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(self.file)
        except ValueError as e:
            raise FormatError(f"{self.output}: not a .npy file of e5np's ({e})") from None
        if self.file.tell() != NPY_HEADER_BYTES or dtype != self.dtype or fortran or shape[1:] != (self.dim,):
            raise FormatError(f"{self.output}: not a [rows, {self.dim}] {self.dtype} .npy written by e5np")
        return shape[0]

    def start(self):
        return NPY_HEADER_BYTES + self.dtype.itemsize * self.rows * self.dim

    def encode(self, records, vectors):
        return np.ascontiguousarray(vectors, dtype=self.dtype).tobytes()

    def commit(self):
        """The header says self.rows, written after the rows themselves and both flushed, so that it never counts
        rows that are not on disk."""
        super().commit()
        if not self.regular:
            return
        try:
            self.file.seek(0)
            self.file.write(npy_header(self.rows, self.dim, self.dtype))
            self.file.flush()
            self.file.seek(self.ends[self.rows])
        except OSError as e:
            raise cannot_write(self.output, e) from None

    def write(self, records, vectors):
        super().write(records, vectors)
        self.commit()


@register_writer
class JsonLinesWriter(Writer):
    """Each text's record with its "embedding" added (or replaced), one JSON object a line."""

    name, suffixes = "jsonl", (".jsonl",)

    def encode(self, records, vectors):
        return b"".join(json_line({**record, "embedding": vector.tolist()})
                        for (_, record), vector in zip(records, vectors))


@register_writer
class ArraysWriter(Writer):
    """One JSON array a line, each text's vector: what `e5np embed` prints on stdout."""

    name = "arrays"

    def encode(self, records, vectors):
        return "".join(json.dumps(vector.tolist()) + "\n" for vector in vectors).encode("ascii")


class TextSink:
    """A text stream (a sys.stdout replaced by one without bytes underneath) taking a writer's UTF-8 chunks."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, chunk):
        self.stream.write(chunk.decode("utf-8", "surrogateescape"))

    def flush(self):
        self.stream.flush()


def write_stream(embed, records, writer, progress=None):
    """Embeds (text, record) pairs CHUNK at a time into writer and closes it: bounded memory for any input size.
    embed(texts) gives their vectors; progress(n), if given, is called with each chunk's number of texts.

    A TruncationWarning (or any other) from a chunk after the first is warned again with the range of texts it
    is about, its indices counted within the chunk. On an error or Ctrl-C the writer is closed as incomplete
    (an error closing it is dropped: the first is the one to report) and the exception goes on; writer.kept()
    says what the output holds."""
    try:
        for chunk in chunks(records):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                vectors = embed([text for text, _ in chunk])
            for warning in caught:
                where = f"texts {writer.rows}..{writer.rows + len(chunk) - 1}: " if writer.rows else ""
                warnings.warn(f"{where}{warning.message}", warning.category, stacklevel=2)
            writer.write(chunk, vectors)
            if progress is not None:
                progress(len(chunk))
    except BaseException:
        with contextlib.suppress(FormatError, OSError):
            writer.close(complete=False)
        raise
    writer.close(complete=True)


from . import arrow  # noqa: E402,F401  (registers Parquet and Arrow IPC; pyarrow is imported only when they are used)
