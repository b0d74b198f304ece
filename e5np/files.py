"""The command line's files: texts and JSON-lines records read a line at a time, and embeddings and search indexes
written a chunk at a time, so that neither an error, nor Ctrl-C, nor a kill loses what was written.

A problem with a file is a CliError: one line for the user, naming the file (and the line) and what is wrong.
"""

import contextlib
import json
import math
import os
import stat
import sys
from pathlib import Path

import numpy as np

from .search import META, PASSAGES, VECTORS, write_meta
from .tokenizer import lone_surrogate

CHUNK = 2048  # texts read, embedded and written at a time: memory stays bounded for any input size


class CliError(Exception):
    """A problem to report in one line and exit with status 2 (130 for Ctrl-C, as shells count it)."""

    def __init__(self, message, status=2):
        super().__init__(message)
        self.status = status


# --- reading: texts and records ------------------------------------------------------------------
def open_input(path):
    """The file, or stdin for '-', as UTF-8 text (a leading byte-order mark dropped). Bytes that are not
    UTF-8 come through as lone surrogates (errors="surrogateescape"): iter_records reports them by line.

    Lines end at "\n" only (a "\r\n" ending loses its "\r" later), as `wc -l` counts them: Python's default also
    ends a line at a lone "\r", so a text holding one became two texts, and every later vector a row off."""
    if path == "-":
        if hasattr(sys.stdin, "reconfigure"):
            sys.stdin.reconfigure(encoding="utf-8-sig", errors="surrogateescape", newline="\n")
        return sys.stdin
    try:
        return open(path, encoding="utf-8-sig", errors="surrogateescape", newline="\n")
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror}") from None


def not_utf8(text, where):
    """CliError naming the first byte of text that is not UTF-8 (read with errors="surrogateescape")."""
    index, code = lone_surrogate(text)
    hint = "; it looks like UTF-16: convert it to UTF-8" if text.startswith(("\udcff\udcfe", "\udcfe\udcff")) else ""
    return CliError(f"{where}: not UTF-8 text (byte 0x{code - 0xDC00:02X} at column {index + 1}){hint}")


def checked_arguments(texts):
    """Texts given as command-line arguments; CliError if one holds bytes that are not UTF-8."""
    for number, text in enumerate(texts, 1):
        if lone_surrogate(text) is not None:
            raise not_utf8(text, f"text argument {number}")
    return texts


def refuse_to_overwrite_input(outputs, source):
    """CliError when one of the files a command is about to write is the file its texts come from (source: a path,
    "-" for stdin, None for texts given as arguments): opening it for writing would empty it before it was read
    (`embed -i docs.jsonl -o docs.jsonl` left an empty docs.jsonl and exit status 0)."""
    if source is None:
        return
    try:
        read = os.fstat(sys.stdin.fileno()) if source == "-" else os.stat(source)
    except (OSError, ValueError, AttributeError):                      # unreadable: iter_records says so
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
            raise CliError(f"{output} is the file the texts are read from{also}: writing it would destroy it before "
                           "it is read; write to another file")


def text_records(texts):
    """(text, record) pairs, as iter_records gives, for texts given as command-line arguments."""
    return [(text, {"text": text}) for text in checked_arguments(texts)]


def json_field(path, field=None):
    """The field holding the text when path holds JSON lines (.jsonl, or --field given), else None: plain text."""
    return (field or "text") if field is not None or str(path).endswith(".jsonl") else None


def iter_records(path, field=None, keep_blank=False):
    """(text, record) pairs from a file ('-' = stdin): one per line, record {"text": line}; or for JSON lines
    (.jsonl, or --field) one per object, text its `field` ("text" by default) and record the object itself,
    whose other fields (an id, a URL) the .jsonl output and a search index keep.

    Blank lines (empty or whitespace only) are skipped, unless keep_blank: then a plain-text file gives one text per
    line, blank ones too, so that `e5np embed`'s row i is the file's line i (a blank line of JSON lines is no record).

    The file is opened now, so that one that cannot be read stops a command before it writes anything (a typo
    in `search build`'s corpus name would have replaced the index with an empty one); it is read as texts are
    taken."""
    return read_records(open_input(path), path, json_field(path, field), keep_blank)


class NumberOutOfRange(ValueError):
    """A JSON number past a float's range (1e400): Python reads it as infinity, which json.dumps would write
    back as Infinity, which is not JSON: a valid record would come out of e5np as an invalid one."""


def finite_float(literal):
    """float(literal), for json.loads's parse_float; NumberOutOfRange past a float's range."""
    value = float(literal)
    if math.isinf(value):
        raise NumberOutOfRange(literal)
    return value


def read_records(f, path, field, keep_blank=False):
    name = "stdin" if path == "-" else path
    try:
        for number, line in enumerate(f, 1):
            if lone_surrogate(line) is not None:
                raise not_utf8(line, f"{name}:{number}")
            if not line.strip() and not (keep_blank and field is None):
                continue
            if field is None:
                text = line.rstrip("\r\n")
                yield text, {"text": text}
                continue
            try:
                record = json.loads(line, parse_float=finite_float)
            except json.JSONDecodeError as e:
                raise CliError(f"{name}:{number}: not valid JSON ({e.msg})") from None
            except NumberOutOfRange as e:
                raise CliError(f"{name}:{number}: the number {e} is past a float's range (1.8e308): e5np would write "
                               "it back as Infinity, which is not JSON; quote it") from None
            except RecursionError:                                     # [[[[...]]]] deeper than Python's stack
                raise CliError(f"{name}:{number}: JSON nested too deeply to parse") from None
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                raise CliError(f"{name}:{number}: expected an object with a string field {field!r}")
            if (where := lone_surrogate(record[field])) is not None:    # a JSON escape such as "\ud800"
                raise CliError(f"{name}:{number}: {field!r} is not valid Unicode: a lone surrogate (U+{where[1]:04X}) "
                               f"at offset {where[0]} of the string")
            yield record[field], record
    finally:
        if f is not sys.stdin:
            f.close()


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


# --- writing: embeddings, search indexes ----------------------------------------------------------
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


class EmbeddingWriter:
    """Writes embeddings as they come: JSON arrays on stdout, JSON lines, or rows appended to a .npy.

    A file output always ends at a chunk's end: after Ctrl-C or a failed write, close() cuts off the part of a
    chunk that was cut short. The .npy's header holds the row count and is rewritten after each chunk's rows,
    so the file is at every moment a valid .npy of the rows written so far (even after a kill), and nothing is
    copied at the end. `append` continues a .npy this writer made (see IndexWriter). dtype: the .npy's (float32
    unless told; int8 / uint8 for compact vectors, see e5np.quantize).
    """

    def __init__(self, output, dim, append=False, dtype="<f4"):
        self.output, self.dim, self.rows, self.dtype = output, dim, 0, np.dtype(dtype)
        if output is None or output == "-":
            self.kind, self.file, self.output = "stdout", sys.stdout, "stdout"
        elif output.endswith(".jsonl"):
            self.kind, self.file = "jsonl", self._open(output, "wb")
        elif output.endswith(".npy"):
            self.kind, self.file = "npy", self._open(output, "r+b" if append else "wb")
            self.rows = self._npy_rows() if append else 0
        else:
            raise CliError(f"--output {output}: use a .npy or .jsonl file, or - for stdout")
        start = NPY_HEADER_BYTES + self.dtype.itemsize * self.rows * dim if self.kind == "npy" else 0
        self.ends = {self.rows: start}                                 # rows written -> the file's length then
        self.regular = self.kind != "stdout" and stat.S_ISREG(os.fstat(self.file.fileno()).st_mode)
        if self.kind == "npy" and not self.regular:
            raise CliError(f"{output}: not a regular file, which a .npy output must be (its header is rewritten)")
        self._commit()

    def _open(self, path, mode):
        try:
            return open(path, mode)
        except OSError as e:
            raise CliError(f"cannot write {path}: {e.strerror}") from None

    def _npy_rows(self):
        """The rows of the .npy being appended to; CliError unless it is a [rows, dim] float32 this writer made."""
        try:
            if np.lib.format.read_magic(self.file) != (1, 0):
                raise ValueError("a .npy version e5np does not write")
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(self.file)
        except ValueError as e:
            raise CliError(f"{self.output}: not a .npy file of e5np's ({e})") from None
        if self.file.tell() != NPY_HEADER_BYTES or dtype != self.dtype or fortran or shape[1:] != (self.dim,):
            raise CliError(f"{self.output}: not a [rows, {self.dim}] {self.dtype} .npy written by e5np")
        return shape[0]

    def _commit(self):
        """The file ends after self.rows rows, and a .npy's header says so: written after the rows themselves,
        and both flushed, so that the header never counts rows that are not on disk."""
        if not self.regular:                                           # stdout, a pipe: nothing to cut or rewrite
            return
        try:
            self.file.flush()
            self.file.truncate(self.ends[self.rows])                   # a chunk a Ctrl-C or a full disk cut short
            if self.kind == "npy":
                self.file.seek(0)
                self.file.write(npy_header(self.rows, self.dim, self.dtype))
                self.file.flush()
            self.file.seek(self.ends[self.rows])
        except OSError as e:
            raise CliError(f"cannot write {self.output}: {e.strerror}") from None

    def write(self, records, vectors):
        """records: the chunk's (text, record) pairs, vectors their embeddings."""
        if self.kind == "npy":
            chunk = np.ascontiguousarray(vectors, dtype=self.dtype).tobytes()
        elif self.kind == "jsonl":                                     # the record, its "embedding" added (or replaced)
            chunk = b"".join(json_line({**record, "embedding": vector.tolist()})
                             for (_, record), vector in zip(records, vectors))
        else:
            chunk = "".join(json.dumps(vector.tolist()) + "\n" for vector in vectors)
        self.ends = with_chunk(self.ends, self.rows, len(vectors), len(chunk))
        try:
            self.file.write(chunk)
            self.file.flush()
        except BrokenPipeError:                                        # stdout piped into `head`: main() ends quietly
            raise
        except OSError as e:                                           # a full disk, a vanished mount
            raise CliError(f"cannot write {self.output}: {e.strerror}") from None
        self.rows += len(vectors)                                      # counted once written
        if self.kind == "npy":
            self._commit()

    def kept(self):
        """What the output holds after an error or Ctrl-C, or None when that is nothing worth saying."""
        if self.rows and self.kind != "stdout":
            return f"{self.output} holds the vectors of the first {self.rows} texts"
        return None

    def close(self, complete):
        """Leave the output consistent; `complete` says whether every text was written (IndexWriter records it)."""
        try:
            self._commit()
        finally:
            if self.kind != "stdout":
                with contextlib.suppress(OSError):                     # a failed flush is reported by _commit
                    self.file.close()


class IndexWriter(EmbeddingWriter):
    """A search index directory (see e5np.search) written as it grows: each chunk's passages, then its vectors,
    whose .npy header is the commit point. After Ctrl-C, an error or even a kill the directory is an index of
    the passages committed so far, marked unfinished, which `e5np search build --resume` continues.
    `replacing`: the index whose .rebuild folder `directory` is (named in what kept() says)."""

    def __init__(self, directory, model_name, dim, resume_command, made_by, field=None, build_start=None,
                 append=False, replacing=None):
        self.directory, self.resume_command, self.replacing = Path(directory), resume_command, replacing
        super().__init__(str(self.directory / VECTORS), dim, append=append)
        self.build_start = self.rows if build_start is None else build_start   # the first row of this corpus
        self.meta = {"model": model_name, "dim": dim, "rows": self.rows, "complete": False, "field": field,
                     "build_start": self.build_start, **made_by}     # index.json: see search.write_meta
        self.passages = self._open(self.directory / PASSAGES, "r+b" if append else "wb")
        for number in range(1, self.rows + 1):                        # keep the committed passages, drop the rest
            if not self.passages.readline().endswith(b"\n"):
                raise CliError(f"{self.directory / PASSAGES}: {number - 1} passages, but {VECTORS} has {self.rows}")
        self.passage_ends = {self.rows: self.passages.tell()}          # rows committed -> passages.jsonl's length
        self.passages.truncate(self.passage_ends[self.rows])
        self._write_meta(complete=False)

    def _write_meta(self, complete):
        try:
            write_meta(self.directory, {**self.meta, "rows": self.rows, "complete": complete})
        except OSError as e:
            raise CliError(f"cannot write {self.directory / META}: {e.strerror}") from None

    def write(self, records, vectors):
        lines = b"".join(json_line(record) for _, record in records)
        try:
            self.passages.write(lines)
            self.passages.flush()
        except OSError as e:
            raise CliError(f"cannot write {self.directory / PASSAGES}: {e.strerror}") from None
        self.passage_ends = with_chunk(self.passage_ends, self.rows, len(records), len(lines))
        super().write(records, vectors)                                # the vectors, then the header: the commit

    def kept(self):
        if self.replacing:                                             # a rebuild, in the index's .rebuild folder
            return (f"{self.replacing} is as it was; {self.directory} holds its unfinished rebuild, the first "
                    f"{self.rows} passages; {self.resume_command} continues it")
        return (f"{self.directory} holds an unfinished index of the first {self.rows} passages; "
                f"{self.resume_command} continues it")

    def close(self, complete):
        try:
            super().close(complete)
        except CliError:
            complete = False
            raise
        finally:
            try:
                self.passages.truncate(self.passage_ends[self.rows])   # passages of a chunk whose vectors never came
                self.passages.close()
            except OSError as e:
                raise CliError(f"cannot write {self.directory / PASSAGES}: {e.strerror}") from None
            self._write_meta(complete)
