"""The e5np command line: `e5np embed ...` (also `python -m e5np embed ...`)."""

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from .tokenizer import lone_surrogate

DEFAULT_MODEL = os.environ.get("E5NP_MODEL", "intfloat/e5-small")  # the env var sets the default model


CHUNK = 2048  # texts read, embedded and written at a time: memory stays bounded for any input size


class CliError(Exception):
    """A problem to report in one line and exit with status 2 (130 for Ctrl-C, as shells count it)."""

    def __init__(self, message, status=2):
        super().__init__(message)
        self.status = status


def open_input(path):
    """The file, or stdin for '-', as UTF-8 text (a leading byte-order mark dropped). Bytes that are not
    UTF-8 come through as lone surrogates (errors="surrogateescape"): iter_texts reports them by line."""
    if path == "-":
        if hasattr(sys.stdin, "reconfigure"):
            sys.stdin.reconfigure(encoding="utf-8-sig", errors="surrogateescape")
        return sys.stdin
    try:
        return open(path, encoding="utf-8-sig", errors="surrogateescape")
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


def iter_texts(path, field=None):
    """Texts from a file ('-' = stdin): one per non-blank line, or from JSON lines' `field` (for .jsonl or --field)."""
    jsonl = field is not None or str(path).endswith(".jsonl")
    field = field or "text"
    name = "stdin" if path == "-" else path
    f = open_input(path)
    try:
        for number, line in enumerate(f, 1):
            if lone_surrogate(line) is not None:
                raise not_utf8(line, f"{name}:{number}")
            if not line.strip():
                continue
            if not jsonl:
                yield line.rstrip("\r\n")
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise CliError(f"{name}:{number}: not valid JSON ({e.msg})") from None
            except RecursionError:                                     # [[[[...]]]] deeper than Python's stack
                raise CliError(f"{name}:{number}: JSON nested too deeply to parse") from None
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                raise CliError(f"{name}:{number}: expected an object with a string field {field!r}")
            if (where := lone_surrogate(record[field])) is not None:    # a JSON escape such as "\ud800"
                raise CliError(f"{name}:{number}: {field!r} is not valid Unicode: a lone surrogate (U+{where[1]:04X}) "
                               f"at offset {where[0]} of the string")
            yield record[field]
    finally:
        if f is not sys.stdin:
            f.close()


def chunks(iterable, size=CHUNK):
    chunk = []
    for item in iterable:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def load_model(args):
    import e5np

    try:
        return e5np.load(args.model, dtype=getattr(args, "dtype", "float32"), threads=getattr(args, "threads", None))
    except (OSError, ValueError) as e:  # ModelNotFoundError, CheckpointError
        raise CliError(str(e)) from None


def progress(args, total=None):
    """A tqdm bar on stderr for long runs; none when stderr is not a terminal or with --quiet."""
    from tqdm import tqdm

    return tqdm(total=total, unit="text", disable=args.quiet or not sys.stderr.isatty(), file=sys.stderr)


class EmbeddingWriter:
    """Writes embeddings as they come: JSON arrays on stdout, JSON lines, or .npy (rows spooled, header last)."""

    def __init__(self, output):
        self.output, self.rows, self.dim = output, 0, None
        if output is None or output == "-":
            self.kind, self.file = "stdout", sys.stdout
        elif output.endswith(".jsonl"):
            self.kind, self.file = "jsonl", self._open(output, "w", encoding="utf-8")
        elif output.endswith(".npy"):
            self.kind, self.file = "npy", self._open(output + ".part", "wb", name=output)  # rows spooled beside it
        else:
            raise CliError(f"--output {output}: use a .npy or .jsonl file, or - for stdout")

    @staticmethod
    def _open(path, mode, name=None, **kwargs):
        try:
            return open(path, mode, **kwargs)
        except OSError as e:
            raise CliError(f"cannot write {name or path}: {e.strerror}") from None

    def write(self, texts, vectors):
        self.dim = vectors.shape[1]
        if self.kind == "npy":
            self.file.write(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
        elif self.kind == "jsonl":
            self.file.write("".join(json.dumps({"text": text, "embedding": vector.tolist()}, ensure_ascii=False) + "\n"
                                    for text, vector in zip(texts, vectors)))
        else:
            self.file.write("".join(json.dumps(vector.tolist()) + "\n" for vector in vectors))
        self.rows += len(vectors)                   # counted once written, a chunk in one call: what a Ctrl-C leaves

    def close(self, dim):
        if self.kind == "stdout":
            self.file.flush()
            return
        self.file.close()
        if self.kind == "npy":  # the header needs the row count: write it, then stream the spooled rows after it
            spool = self.output + ".part"
            with open(self.output, "wb") as out, open(spool, "rb") as rows:
                np.lib.format.write_array_header_1_0(
                    out, {"descr": "<f4", "fortran_order": False, "shape": (self.rows, self.dim or dim)})
                while block := rows.read(1 << 24):
                    out.write(block)
            os.remove(spool)


def encode_with_warnings(encode, texts, batch_size, offset=0):
    """encode(texts) with TruncationWarnings printed to stderr, indices counted from `offset`."""
    import e5np

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vectors = encode(texts, batch_size=batch_size)
    for warning in caught:
        if issubclass(warning.category, e5np.TruncationWarning) and offset:
            print(f"e5np: texts {offset}..{offset + len(texts) - 1}: {warning.message}", file=sys.stderr)
        else:
            print(f"e5np: {warning.message}", file=sys.stderr)
    return vectors


def choose_encoder(model, args):
    if getattr(args, "query", False):
        return model.encode_queries
    if getattr(args, "passage", False):
        return model.encode_passages
    return model.encode


def cmd_embed(args):
    if args.texts:
        source = iter(checked_arguments(args.texts))
    elif args.input:
        source = iter_texts(args.input, args.field)
    elif not sys.stdin.isatty():
        source = iter_texts("-", args.field)
    else:
        raise CliError("no texts: give them as arguments, with --input FILE, or on stdin (one per line)")
    model = load_model(args)
    embed_stream(choose_encoder(model, args), source, EmbeddingWriter(args.output), args, model.dim)
    return 0


def embed_stream(encode, texts, writer, args, dim):
    """Embed texts CHUNK at a time into writer: bounded memory for any input size."""
    try:
        with progress(args) as bar:
            for chunk in chunks(texts):
                writer.write(chunk, encode_with_warnings(encode, chunk, args.batch_size, offset=writer.rows))
                bar.update(len(chunk))
    except (CliError, KeyboardInterrupt) as e:                        # a bad line or Ctrl-C, after some chunks
        error = e if isinstance(e, CliError) else CliError("interrupted", status=130)
        if writer.rows and writer.kind != "stdout":
            kept = f"{writer.output} holds the vectors of the first {writer.rows} texts"
            error = CliError(f"{error}; {kept}", error.status)
        raise error from None
    finally:
        writer.close(dim)


def cmd_search_build(args):
    from .search import VECTORS, save_index

    model = load_model(args)
    out = Path(args.index)
    out.mkdir(parents=True, exist_ok=True)
    passages = []

    def kept(texts):  # the passages are stored beside their vectors
        for text in texts:
            passages.append(text)
            yield text

    writer = EmbeddingWriter(str(out / VECTORS))
    embed_stream(model.encode_passages, kept(iter_texts(args.corpus, args.field)), writer, args, model.dim)
    save_index(out, passages, args.model, model.dim)
    print(f"e5np: indexed {len(passages)} passages in {out}", file=sys.stderr)
    return 0


def cmd_search_query(args):
    from .search import load_index, top_k

    try:
        vectors, passages, meta = load_index(args.index)
    except ValueError as e:
        raise CliError(str(e)) from None
    args.model = args.model or meta["model"]
    model = load_model(args)
    if model.dim != vectors.shape[1]:
        raise CliError(f"{args.model} makes {model.dim}-dim vectors but the index holds {vectors.shape[1]}-dim ones")
    queries = checked_arguments(list(args.queries)) or list(iter_texts(args.input or "-"))
    indices, scores = top_k(vectors, model.encode_queries(queries), args.top_k)
    results = [{"query": q, "results": [{"rank": r + 1, "index": int(i), "score": float(s), "text": passages[i]}
                                        for r, (i, s) in enumerate(zip(row_i, row_s))]}
               for q, row_i, row_s in zip(queries, indices, scores)]
    if args.json:
        print(json.dumps(results if len(results) > 1 else results[0], ensure_ascii=False, indent=2))
    else:
        for result in results:
            print(f"query: {result['query']}")
            for hit in result["results"]:
                print(f"  {hit['rank']:>3}. {hit['score']:.4f}  {hit['text']}")
    return 0


def cmd_similarity(args):
    texts = checked_arguments([args.text_a, args.text_b])
    model = load_model(args)
    a, b = choose_encoder(model, args)(texts)
    print(f"{float(a @ b):.6f}")
    return 0


def cmd_serve(args):
    from .server import make_server

    model = load_model(args)
    try:
        server = make_server(model, args.host, args.port, model_name=args.model,
                             max_body_bytes=args.max_body_bytes, max_inputs=args.max_inputs,
                             idle_timeout=args.idle_timeout, truncation=args.truncation)
    except OSError as e:
        raise CliError(f"cannot listen on {args.host}:{args.port}: {e.strerror}") from None
    host, port = server.server_address[:2]
    print(f"e5np: serving {args.model} on http://{host}:{port}/v1/embeddings (Ctrl-C stops)", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def cmd_parity(args):
    from . import parity

    texts = list(iter_texts(args.texts)) if args.texts else parity.DEFAULT_TEXTS
    if not texts:
        raise CliError(f"{args.texts}: no texts in it")
    try:
        parity.import_reference_stack()
    except ImportError as e:
        raise CliError(str(e)) from None
    model = load_model(args)  # resolves hub ids and checks the checkpoint before the heavy part
    max_length = args.max_length or model.max_length
    report = parity.parity_report(model.directory, texts, max_length, tolerance=args.tolerance)
    print(json.dumps(report, indent=2) if args.json else parity.format_report(report))
    return 0 if report["passed"] else 1


def build_parser():
    parser = argparse.ArgumentParser(prog="e5np", description="E5 / BERT sentence embeddings in pure NumPy.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def model_option(p, default=DEFAULT_MODEL):
        p.add_argument("--model", "-m", default=default,
                       help=f"hub id or local directory (default {default or 'the one the index was built with'})")

    def encoding_options(p, with_input=True):
        if with_input:
            p.add_argument("--input", "-i", help="file with one text per line, or .jsonl ('-' = stdin)")
        p.add_argument("--field", help="JSON lines: the field holding the text (default 'text')")
        p.add_argument("--batch-size", type=int, default=32, help="texts per batch (default 32)")
        p.add_argument("--threads", type=int, help="batches embedded at once (default: one per core)")
        p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    def prefix_options(p):
        group = p.add_mutually_exclusive_group()
        group.add_argument("--query", action="store_true",
                           help="texts are queries: add the model's query prefix ('query: ' for E5)")
        group.add_argument("--passage", action="store_true",
                           help="texts are passages: add the model's passage prefix ('passage: ' for E5)")

    embed = sub.add_parser("embed", help="embed texts", description=(
        "Embed texts given as arguments, read from --input (one per line, or JSON lines with --field) or from "
        "stdin. Prints one JSON array per text, or writes --output as .npy or .jsonl. Streams: any input size "
        "runs in bounded memory."))
    embed.add_argument("texts", nargs="*", help="texts to embed")
    model_option(embed)
    prefix_options(embed)
    encoding_options(embed)
    embed.add_argument("--output", "-o", help="write to FILE.npy or FILE.jsonl instead of stdout")
    embed.set_defaults(run=cmd_embed)

    search = sub.add_parser("search", help="build a search index, or query one", description=(
        "Exact semantic search: `search build CORPUS INDEX` embeds a corpus (text or JSON lines) as passages; "
        "`search query INDEX QUERY...` prints the top-k passages by cosine similarity."))
    search_sub = search.add_subparsers(dest="action", required=True, metavar="ACTION")
    build = search_sub.add_parser("build", help="embed a corpus into an index directory")
    build.add_argument("corpus", help="text file (one passage per line) or .jsonl ('-' = stdin)")
    build.add_argument("index", help="directory to write vectors.npy, passages.jsonl, index.json into")
    model_option(build)
    encoding_options(build, with_input=False)                          # the corpus is the positional argument
    build.set_defaults(run=cmd_search_build)
    query = search_sub.add_parser("query", help="top-k passages for queries")
    query.add_argument("index", help="an index directory made by `e5np search build`")
    query.add_argument("queries", nargs="*", help="queries (else --input or stdin, one per line)")
    model_option(query, default=None)
    query.add_argument("--input", "-i", help="file with one query per line")
    query.add_argument("--top-k", "-k", type=int, default=5, help="passages per query (default 5)")
    query.add_argument("--json", action="store_true", help="print results as JSON")
    query.set_defaults(run=cmd_search_query)

    similarity = sub.add_parser("similarity", help="cosine similarity of two texts", description=(
        "Print the cosine similarity of two texts. E5 recommends --query on both for symmetric tasks."))
    similarity.add_argument("text_a")
    similarity.add_argument("text_b")
    model_option(similarity)
    prefix_options(similarity)
    similarity.set_defaults(run=cmd_similarity)

    serve = sub.add_parser("serve", help="OpenAI-compatible embeddings server", description=(
        "Serve POST /v1/embeddings (OpenAI request/response shape) and GET /health."))
    model_option(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    serve.add_argument("--max-body-bytes", type=int, default=4 * 2**20, help="larger requests get 413 (default 4 MiB)")
    serve.add_argument("--max-inputs", type=int, default=2048, help="more inputs per request get 413 (default 2048)")
    serve.add_argument("--threads", type=int, help="batches embedded at once, across all requests (default: one per "
                                                   "core)")
    serve.add_argument("--idle-timeout", type=float, default=60,
                       help="seconds a connection may stay silent before it is closed (default 60)")
    serve.add_argument("--truncation", choices=["ignore", "error"], default="ignore",
                       help="an input over the model's max length: embed its first tokens (ignore, the default) "
                            "or answer 400 naming it (error, as OpenAI's API does)")
    serve.set_defaults(run=cmd_serve)

    parity = sub.add_parser("parity", help="compare e5np with transformers, stage by stage", description=(
        "Run e5np and Hugging Face transformers on the same texts and print, for the embedding layer, every "
        "encoder layer, the pooled and the normalized vectors, their max-abs and max-relative difference and "
        "each engine's distance from float64 ground truth. Exit status 1 if the normalized vectors differ by "
        "more than --tolerance. Needs torch and transformers: pip install 'e5np[parity]'."))
    model_option(parity)
    parity.add_argument("--texts", help="file with one text per line (default: a built-in E5 sample)")
    parity.add_argument("--tolerance", type=float, default=1e-6, help="max-abs allowed on normalized vectors (1e-6)")
    parity.add_argument("--max-length", type=int, help="token limit (default: the model's)")
    parity.add_argument("--json", action="store_true", help="print the report as JSON")
    parity.set_defaults(run=cmd_parity)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    for name in ("batch_size", "threads", "top_k", "max_inputs", "max_body_bytes", "idle_timeout"):
        if getattr(args, name, 1) is not None and getattr(args, name, 1) < 1:
            print(f"e5np {args.command}: --{name.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    try:
        return args.run(args)
    except CliError as e:
        print(f"e5np {args.command}: {e}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        print(f"e5np {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. piped into `head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
