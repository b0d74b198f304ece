"""The e5np command line: `e5np embed ...` (also `python -m e5np embed ...`). The files it reads and writes are
e5np/formats.py's; its search commands are e5np.Index's, with messages on stderr and exit statuses."""

import argparse
import contextlib
import functools
import json
import os
import re
import sys
import warnings
from pathlib import Path

from .checkpoint import CheckpointError
from .formats import (READERS, WRITERS, FormatError, Input, WriteError, checked_arguments, is_stdout, json_text,
                      refuse_to_overwrite_input, text_records, write_stream, writer_class)
from .hub import ModelNotFoundError
from .index import (Index, IndexFormatError, IndexStateError, IndexWarning, LockedError, ModelMismatchWarning,
                    passages_word)


class FromEnvironment(str):
    """A model name that came from E5NP_MODEL, not from --model: its errors say where it came from."""


DEFAULT_MODEL = FromEnvironment(os.environ["E5NP_MODEL"]) if os.environ.get("E5NP_MODEL") else "intfloat/e5-small"
# What a command reports in one line, exit status 2: a file, an index or a model that is not as asked.
EXPECTED_ERRORS = (FormatError, WriteError, IndexFormatError, IndexStateError, LockedError, ModelNotFoundError,
                   CheckpointError)


class CliError(Exception):
    """A problem to report in one line and exit with status 2 (130 for Ctrl-C, as shells count it)."""

    def __init__(self, message, status=2):
        super().__init__(message)
        self.status = status


def one_line_errors(command):
    """The command, with the errors of EXPECTED_ERRORS as CliErrors."""
    @functools.wraps(command)
    def run(args):
        try:
            return command(args)
        except EXPECTED_ERRORS as e:
            raise CliError(str(e)) from None
    return run


def load_model(args):
    import e5np

    try:
        return e5np.load(args.model, dtype=getattr(args, "dtype", "float32"), threads=getattr(args, "threads", None))
    except (OSError, ValueError) as e:  # ModelNotFoundError, CheckpointError
        raise CliError(with_origin(e, args.model)) from None


def with_origin(error, name):
    """The error's message, saying that the model's name came from E5NP_MODEL when it did."""
    origin = (" (the model named by the E5NP_MODEL environment variable; --model overrides it)"
              if isinstance(name, FromEnvironment) else "")
    return f"{error}{origin}"


def progress(args, total=None):
    """A tqdm bar on stderr for long runs; none when stderr is not a terminal or with --quiet."""
    from tqdm import tqdm

    return tqdm(total=total, unit="text", disable=args.quiet or not sys.stderr.isatty(), file=sys.stderr)


@contextlib.contextmanager
def warnings_printed(line):
    """Warnings printed to stderr as they come, as line(warning message, category) gives them (None: not
    printed), instead of Python's file:line form."""
    def show(message, category, *_, **__):
        if (text := line(message, category)) is not None:
            print(text, file=sys.stderr)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        yield


def text_kind(args):
    """"query" or "passage" for --query / --passage, else None: the texts as they are."""
    return "query" if getattr(args, "query", False) else "passage" if getattr(args, "passage", False) else None


def choose_encoder(model, args):
    return {"query": model.encode_queries, "passage": model.encode_passages}.get(text_kind(args), model.encode)


def text_source(arguments, input_path, field=None, format=None, what="texts", keep_blank=False):
    """The (text, record) pairs of a command's texts: its arguments, else --input, else stdin unless that is a
    terminal, read as format (see formats.Input, also for keep_blank)."""
    if arguments:
        return iter(text_records(arguments))
    if input_path or not sys.stdin.isatty():
        return iter(Input(input_path or "-", format, field, keep_blank).open())
    raise CliError(f"no {what}: give them as arguments, with --input FILE, or on stdin (one per line)")


@one_line_errors
def cmd_embed(args):
    if args.ray is not None:
        return cmd_embed_on_ray(args)
    source = text_source(args.texts, args.input, args.field, args.input_format, keep_blank=True)  # row i is line i
    writer = writer_class(args.output, args.output_format)
    tables = getattr(writer, "describes_model", False)                 # Parquet, Arrow: metadata, parts, --resume
    if args.resume and not tables:
        raise CliError("--resume continues a Parquet or Arrow output (-o FILE.parquet, FILE.arrow, DIR/); "
                       f"{writer.name} outputs are written whole each time")
    if not is_stdout(args.output):
        refuse_to_overwrite_input([args.output], None if args.texts else args.input or "-")
    model = load_model(args)
    encode, width, dtype = compact_encoder(model, args)
    if tables:
        from .arrow import embed_metadata

        output = writer(args.output, width, metadata=embed_metadata(model, text_kind(args), args.field),
                        resume=args.resume, dtype=dtype)
        if args.resume:
            source = output.skip_written(source, args.input or ("the texts given" if args.texts else "stdin"))
    else:
        output = writer(args.output, width, dtype=dtype)
    embed_stream(encode, source, output, args)
    return 0


def cmd_embed_on_ray(args):
    """`e5np embed --ray [ADDRESS] -i DATA -o DIR`: the same embedding as a Ray Data job (e5np.ray.run_job)."""
    if args.texts or not args.input or not args.output or args.output == "-":
        raise CliError("--ray reads --input (Parquet files, a directory or a glob of them, .jsonl or .txt) and writes "
                       "--output, a directory of Parquet files; texts as arguments or on stdin are not for a cluster")
    from . import ray as on_ray

    try:
        ray = on_ray.import_ray()
    except ImportError as e:
        raise CliError(str(e)) from None
    model = os.path.abspath(os.path.expanduser(args.model)) if os.path.isdir(os.path.expanduser(args.model)) \
        else args.model                                                # every node reads the same path
    try:
        rows = on_ray.run_job(args.input, args.output, model, column=args.field or "text", kind=text_kind(args),
                              address=args.ray or None, batch_size=args.batch_size, threads=args.threads)
    except ray.exceptions.RayError as e:                           # a task's error, under Ray's account of it
        raise CliError(f"the Ray job failed: {root_cause(e)}") from None
    print(f"e5np: embedded {rows} {'text' if rows == 1 else 'texts'} into {args.output}", file=sys.stderr)
    return 0


def root_cause(error):
    """What a Ray job failed on: the task's own error (a null text, a missing column), which Ray reports inside its
    own, with the task's traceback, as a line "ValueError: ..."; else Ray's first line."""
    lines = str(error).strip().splitlines()
    ours = [line.split(": ", 1)[1] for line in lines
            if re.match(r"\s*(\w+\.)*(ValueError|KeyError|TypeError|FormatError): ", line)]
    return ours[-1].strip() if ours else lines[0] if lines else type(error).__name__


def compact_encoder(model, args):
    """(encode, row width, .npy dtype) for embed's --chunking, --chunk-overlap, --precision and --ranges, checked
    (by an encode of no texts) before any text is read."""
    import numpy as np

    from .quantize import check_ranges, code_layout

    precision, ranges = args.precision, None
    if args.ranges is not None:
        if precision not in ("int8", "uint8"):
            raise CliError("--ranges is for --precision int8 or uint8")
        try:
            ranges = check_ranges(np.load(args.ranges, allow_pickle=False), model.dim)
        except (OSError, ValueError, TypeError) as e:
            raise CliError(f"--ranges {args.ranges}: {e}") from None
    elif precision in ("int8", "uint8"):
        raise CliError(f"--precision {precision} needs --ranges RANGES.npy: each dimension's min and max, shape "
                       f"[2, {model.dim}] (np.save(path, e5np.calibration_ranges(vectors)) of calibration vectors), "
                       "the same for every vector compared (ranges from each streamed chunk would differ)")
    encode = functools.partial(choose_encoder(model, args), chunking=args.chunking, chunk_overlap=args.chunk_overlap,
                               precision=None if precision == "float32" else precision, ranges=ranges)
    try:
        encode([])
    except ValueError as e:
        raise CliError(str(e)) from None
    return (encode, *code_layout(precision, model.dim))


def embed_stream(encode, texts, writer, args):
    """Embed (text, record) pairs into writer (see formats.write_stream), warnings and errors in one line each."""
    try:
        with progress(args) as bar, warnings_printed(lambda message, _: f"e5np: {message}"):
            write_stream(functools.partial(encode, batch_size=args.batch_size), texts, writer, bar.update)
    except (FormatError, WriteError, KeyboardInterrupt) as e:          # a bad line, a full disk or Ctrl-C
        raise stopped(e, writer.kept()) from None


def stopped(error, kept):
    """The CliError for an error or Ctrl-C that stopped a command after it wrote something: what was kept."""
    message, status = ("interrupted", 130) if isinstance(error, KeyboardInterrupt) else (str(error), 2)
    return CliError(f"{message}; {kept}" if kept else message, status)


@one_line_errors
def cmd_search_build(args):
    continuing = args.resume or args.append
    corpus = Input(args.corpus, args.input_format, args.field)
    ranges = index_ranges(args.ranges)
    with progress(args) as bar, warnings_printed(lambda message, _: f"e5np: {message}"):
        name = args.model or (None if continuing else DEFAULT_MODEL)  # None: the one the index is built with
        try:
            index = Index.build(args.index, corpus, name, append=args.append, resume=args.resume,
                                precision=args.precision, ranges=ranges, batch_size=args.batch_size,
                                threads=args.threads, progress=bar.update)
        except (ModelNotFoundError, CheckpointError) as e:
            raise CliError(with_origin(e, name)) from None
        except (*EXPECTED_ERRORS, ValueError, KeyboardInterrupt) as e:   # ValueError: ranges, precision, as named
            raise stopped(e, getattr(e, "index_state", None)) from None
    with index:
        built, out = index.built, Path(args.index)
    if args.resume and built.moved_in is not None:                     # the move was all there was left to do
        return 0
    if built.start:
        print(f"e5np: added {passages_word(built.added)} to {out} ({built.rows} in all)", file=sys.stderr)
    else:
        print(f"e5np: indexed {passages_word(built.rows)} in {out}"
              + (", replacing the index it held" if built.replaced else ""), file=sys.stderr)
    return 0


def index_ranges(path):
    """The [2, dim] array of a --ranges .npy (Index.build checks its shape against the model), or None."""
    import numpy as np

    if path is None:
        return None
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CliError(f"--ranges {path}: not a .npy file ({e})") from None


@one_line_errors
def cmd_search_query(args):
    if args.rescore is not None and args.rescore < 1:
        raise CliError(f"--rescore must be 1 or more, got {args.rescore}")
    with Index.open(args.index) as index:
        for notice in index.notices:
            print(f"e5np search: {notice}", file=sys.stderr)
        return search_query(args, index)


def search_query(args, index):
    queries = [text for text, _ in text_source(args.queries, args.input, args.field, args.input_format,
                                               what="queries")]
    if not queries:
        raise CliError(f"no queries: {args.input or 'stdin'} has none")
    args.model = args.model or index.model_name
    model = load_model(args)

    def warning(message, category):                                   # the index's notices are printed already
        if issubclass(category, ModelMismatchWarning):
            return f"e5np search: warning: {message}"
        return None if issubclass(category, IndexWarning) else f"e5np search: {message}"
    with warnings_printed(warning):
        hits = index.query(queries, args.top_k, model=model, rescore=args.rescore)
    results = [{"query": q, "results": found} for q, found in zip(queries, hits)]
    if args.json:
        print(json_text(results if len(results) > 1 else results[0], indent=2))
    else:
        for result in results:
            print(f"query: {result['query']}")
            for hit in result["results"]:
                print(f"  {hit['rank']:>3}. {hit['score']:.4f}  {hit['text']}")
    return 0


@one_line_errors
def cmd_similarity(args):
    texts = checked_arguments([args.text_a, args.text_b])
    model = load_model(args)
    a, b = choose_encoder(model, args)(texts, normalize=True)       # unit vectors whether or not the model normalizes
    print(f"{float(a @ b):.6f}")
    return 0


def cmd_serve(args):
    try:
        import prometheus_client, starlette, uvicorn  # noqa: F401  (the serve extra)
    except ImportError:
        from .server import SERVE_EXTRA
        raise CliError(SERVE_EXTRA.removeprefix("e5np serve ")) from None
    from .server import make_server

    if args.batch_wait_ms < 0:
        raise CliError(f"--batch-wait-ms must be 0 or more, got {args.batch_wait_ms:g}")
    for name in ("max_queue_tokens", "graceful_timeout"):
        if getattr(args, name) <= 0:
            raise CliError(f"--{name.replace('_', '-')} must be more than 0, got {getattr(args, name):g}")
    model = load_model(args)
    try:
        server = make_server(model, args.host, args.port, model_name=args.model,
                             max_body_bytes=args.max_body_bytes, max_inputs=args.max_inputs,
                             idle_timeout=args.idle_timeout, truncation=args.truncation,
                             max_queue_tokens=args.max_queue_tokens, batch_wait_ms=args.batch_wait_ms,
                             graceful_timeout=args.graceful_timeout, chunking=args.chunking,
                             chunk_overlap=args.chunk_overlap)
    except OSError as e:
        raise CliError(f"cannot listen on {args.host}:{args.port}: {e.strerror}") from None
    except ValueError as e:                                            # --chunking / --chunk-overlap
        raise CliError(str(e).replace("chunk_overlap", "--chunk-overlap").replace("chunking=", "--chunking ")) \
            from None
    host, port = server.server_address[:2]
    print(f"e5np: serving {args.model} on http://{host}:{port}/v1/embeddings (Ctrl-C or SIGTERM stops)",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever()                     # returns on SIGTERM / SIGINT, once the requests in flight end
    finally:
        server.server_close()
    return 0


@one_line_errors
def cmd_parity(args):
    from . import parity

    texts = [text for text, _ in Input(args.texts).open()] if args.texts else parity.DEFAULT_TEXTS
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


class IntermixedParser(argparse.ArgumentParser):
    """A command's parser that takes its positional arguments among its options, as `e5np search query INDEX -k 3
    "a query"` and `e5np embed "a text" -m MODEL "another"` give them: plain argparse fills a list of positionals from
    the first run of them only, and refuses the rest ("unrecognized arguments")."""

    def parse_known_args(self, args=None, namespace=None):
        if self._subparsers is not None or getattr(self, "_intermixing", False):   # (intermixed parsing calls this)
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            namespace, extras = self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False
        if extras:          # a command's parser has the last word: passed up, `e5np` would print its own usage
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def build_parser():
    from . import __version__

    parser = argparse.ArgumentParser(prog="e5np", description="E5 / BERT sentence embeddings in pure NumPy.")
    parser.add_argument("--version", action="version", version=f"e5np {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=IntermixedParser)

    def model_option(p, default=DEFAULT_MODEL, default_text=None):
        default_text = default_text or default or "the one the index was built with"
        p.add_argument("--model", "-m", default=default, help=f"hub id or local directory (default {default_text})")

    def input_format_option(p):
        p.add_argument("--input-format", choices=list(READERS), help="read the input as this format, whatever its "
                       "suffix (default: from it: .txt or none = text, .jsonl or .json = JSON lines, .parquet or a "
                       "directory = Parquet, .arrow or .feather = Arrow IPC; - = stdin, text; --field = JSON lines)")

    def encoding_options(p, with_input=True):
        if with_input:
            p.add_argument("--input", "-i", help="file with one text per line, .jsonl, .parquet or .arrow (a "
                           "directory or glob of them too; '-' = stdin)")
        p.add_argument("--field", help="JSON lines, Parquet, Arrow: the field (column) holding the text "
                                       "(default 'text')")
        input_format_option(p)
        p.add_argument("--batch-size", type=int, default=32, help="texts per batch (default 32)")
        p.add_argument("--threads", type=int,
                       help="batches embedded at once (default: one per CPU this process may use)")
        p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    def prefix_options(p):
        group = p.add_mutually_exclusive_group()
        group.add_argument("--query", action="store_true",
                           help="texts are queries: add the model's query prefix ('query: ' for E5)")
        group.add_argument("--passage", action="store_true",
                           help="texts are passages: add the model's passage prefix ('passage: ' for E5)")

    embed = sub.add_parser("embed", help="embed texts", description=(
        "Embed texts given as arguments, read from --input (one per line, blank lines too, so that output row i "
        "is line i; or JSON lines with --field) or from stdin. Prints one JSON array per text, or writes --output "
        "as .npy or .jsonl (each text, or each input record with all its fields, plus its \"embedding\"). "
        "Streams: any input size runs in bounded memory. Without --query or --passage the texts are embedded as "
        "they are (with the default prompt a sentence-transformers checkpoint may name, as encode() adds it)."))
    embed.add_argument("texts", nargs="*", default=[], help="texts to embed")
    model_option(embed)
    prefix_options(embed)
    encoding_options(embed)
    embed.add_argument("--output", "-o", help="write to FILE.npy, FILE.jsonl, FILE.parquet, FILE.arrow (.feather) or "
                       "DIR/ (Parquet files) instead of stdout")
    embed.add_argument("--resume", action="store_true",
                       help="continue a Parquet or Arrow --output that Ctrl-C, an error or a kill stopped (its parts "
                            "in FILE.parquet.parts/, or DIR/), after checking that the input starts with the rows "
                            "written and that the model makes the same vectors")
    embed.add_argument("--output-format", choices=list(WRITERS), help="write the output as this format, whatever "
                       "its suffix (default: from it; arrays, one JSON array a line, on stdout)")
    embed.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                       help="run as a Ray Data job on the cluster at ADDRESS (default: RAY_ADDRESS's, else a local one):"
                            " --input Parquet (a file, directory or glob), .jsonl or .txt; --output a directory of "
                            "Parquet files with an embedding column. Needs pip install 'e5np[ray]'")
    embed.add_argument("--chunking", choices=["mean"],
                       help="embed a text longer than the model's limit whole: overlapping windows of max length "
                            "tokens, their vectors averaged by token count (default: truncate it)")
    embed.add_argument("--chunk-overlap", type=int, metavar="N",
                       help="with --chunking: tokens consecutive windows share (default 1/8 of a window's text tokens)")
    embed.add_argument("--precision", choices=["float32", "int8", "uint8", "binary", "ubinary"], default="float32",
                       help="the vectors as float32 (default), int8 / uint8 (one byte a dimension; needs --ranges) or "
                            "binary / ubinary (one bit a dimension, packed 8 to a byte), as sentence-transformers' "
                            "quantize_embeddings makes them; .npy int8 / uint8, JSON integers")
    embed.add_argument("--ranges", metavar="RANGES.npy",
                       help="int8 / uint8: each dimension's min and max, a [2, dim] .npy")
    embed.set_defaults(run=cmd_embed)

    search = sub.add_parser("search", help="build a search index, or query one", description=(
        "Semantic search: `search build CORPUS INDEX` embeds a corpus (text or JSON lines) as passages; "
        "`search query INDEX QUERY...` prints the top-k passages by cosine similarity (exact), or for a compact "
        "index (--precision int8 or binary) by its codes' scores, optionally rescored (--rescore)."))
    search_sub = search.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=IntermixedParser)
    build = search_sub.add_parser("build", help="embed a corpus into an index directory")
    build.add_argument("corpus", help="text file (one passage per line; blank lines skipped), .jsonl, .parquet or "
                                      ".arrow (a directory or glob of them too; '-' = stdin)")
    build.add_argument("index", help="directory to write vectors.npy, passages.jsonl, index.json into (an index "
                                     "already there is rebuilt in INDEX/.rebuild and replaced when that is complete)")
    continuation = build.add_mutually_exclusive_group()
    continuation.add_argument("--resume", action="store_true",
                              help="continue an unfinished build or rebuild of INDEX (stopped by Ctrl-C, an error "
                                   "or a kill) from where it stopped, after checking that CORPUS starts with the "
                                   "passages it holds")
    continuation.add_argument("--append", action="store_true",
                              help="add CORPUS's passages to the complete index INDEX, after the ones it holds")
    build.add_argument("--precision", choices=["float32", "int8", "binary", "binary+int8"], default=None,
                       help="what the index stores: float32 vectors (default), int8 codes (4x smaller), binary "
                            "sign bits (32x), or binary+int8: both, queries searching the bits and --rescore "
                            "reading the int8 codes of the candidates only; with --resume or --append, the "
                            "index's (another is an error)")
    build.add_argument("--ranges", metavar="RANGES.npy",
                       help="int8 codes (int8, binary+int8): each dimension's min and max, a [2, dim] .npy "
                            "(default: those of the corpus's first 2,048 passages); saved with the index, which "
                            "--append and --resume keep")
    model_option(build, default=None,
                 default_text=f"{DEFAULT_MODEL}; with --resume or --append, the one the index is built with")
    encoding_options(build, with_input=False)                          # the corpus is the positional argument
    build.set_defaults(run=cmd_search_build)
    query = search_sub.add_parser("query", help="top-k passages for queries")
    query.add_argument("index", help="an index directory made by `e5np search build`")
    query.add_argument("queries", nargs="*", default=[], help="queries (else --input or stdin, one per line)")
    model_option(query, default=None)
    query.add_argument("--input", "-i", help="file with one query per line, or .jsonl ('-' = stdin)")
    query.add_argument("--field", help="JSON lines: the field holding the query (default 'text')")
    input_format_option(query)
    query.add_argument("--top-k", "-k", type=int, default=5, help="passages per query (default 5)")
    query.add_argument("--rescore", type=int, metavar="N",
                       help="compact index: take the N x top-k best by the compact scores and rank them by "
                            "the float query's dot product with their int8 codes dequantized (int8, binary+int8) "
                            "or bits as +-1 (binary); an error for a float32 index, whose scores are exact")
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
        "Serve POST /v1/embeddings (OpenAI request/response shape), POST /embed (TEI's), GET /health, "
        "GET /v1/models and GET /metrics (Prometheus). Concurrent requests are embedded in shared batches. "
        'Needs the serve extra: pip install "e5np[serve]".'))
    model_option(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    serve.add_argument("--max-body-bytes", type=int, default=4 * 2**20, help="larger requests get 413 (default 4 MiB)")
    serve.add_argument("--max-inputs", type=int, default=2048, help="more inputs per request get 413 (default 2048)")
    serve.add_argument("--threads", type=int, help="batches embedded at once, across all requests (default: one per "
                                                   "CPU this process may use)")
    serve.add_argument("--idle-timeout", type=float, default=60,
                       help="seconds a connection may stay silent before it is closed (default 60)")
    serve.add_argument("--truncation", choices=["ignore", "error"], default="ignore",
                       help="an input over the model's max length: embed its first tokens (ignore, the default) "
                            "or answer 400 naming it (error, as OpenAI's API does)")
    serve.add_argument("--chunking", choices=["mean"],
                       help="for requests that do not say (their \"chunking\" field): an input over the model's max "
                            "length embedded whole, the token-weighted mean of overlapping windows, as embed "
                            "--chunking mean does")
    serve.add_argument("--chunk-overlap", type=int, metavar="N",
                       help="with --chunking: tokens consecutive windows share (default 1/8 of a window's text tokens)")
    serve.add_argument("--max-queue-tokens", type=int, default=32768,
                       help="tokens queued for embedding across all requests; a request past it gets 429 with "
                            "Retry-After (default 32768)")
    serve.add_argument("--batch-wait-ms", type=float, default=2.0,
                       help="how long a batch waits for requests still arriving, in ms (default 2; 0: never)")
    serve.add_argument("--graceful-timeout", type=float, default=30,
                       help="at SIGTERM / SIGINT, seconds the requests in flight get to finish (default 30)")
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
    if getattr(args, "port", None) is not None and not 0 <= args.port <= 65535:
        print(f"e5np {args.command}: --port must be 0..65535 (0 picks a free one), got {args.port}", file=sys.stderr)
        return 2
    texts = getattr(args, "texts", None) or getattr(args, "queries", None)     # embed's texts, search query's queries
    if texts and getattr(args, "input", None):                          # one source: the other would be dropped
        what = "texts" if args.command == "embed" else "queries"
        print(f"e5np {args.command}: {what} as arguments and --input {args.input}: give one or the other",
              file=sys.stderr)
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
