"""The e5np command line: `e5np embed ...` (also `python -m e5np embed ...`). The files it reads and writes are
e5np/files.py's."""

import argparse
import contextlib
import functools
import itertools
import json
import os
import shlex
import sys
import warnings
from pathlib import Path

from .files import (CHUNK, CliError, EmbeddingWriter, IndexWriter, checked_arguments, chunks, iter_records, json_field,
                    json_line, json_text, refuse_to_overwrite_input, text_records)
from .runtime import LockedError, lock_directory
from .search import (META, PASSAGES, REBUILD, VECTORS, complete_rebuild, embed_passages, finish_moving_in, load_index,
                     passage_lines, passage_recipe, passages_at, read_meta, recipe_changes, replace_index, top_k,
                     unfinished_rebuild, weights_identity)

DEFAULT_MODEL = os.environ.get("E5NP_MODEL", "intfloat/e5-small")  # the env var sets the default model


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


def text_source(arguments, input_path, field=None, what="texts", keep_blank=False):
    """The texts of a command: its arguments, else --input, else stdin unless that is a terminal (see iter_records
    for keep_blank)."""
    if arguments:
        return iter(text_records(arguments))
    if input_path or not sys.stdin.isatty():
        return iter_records(input_path or "-", field, keep_blank)
    raise CliError(f"no {what}: give them as arguments, with --input FILE, or on stdin (one per line)")


def cmd_embed(args):
    source = text_source(args.texts, args.input, args.field, keep_blank=True)   # row i of the output is line i
    if args.output not in (None, "-"):
        refuse_to_overwrite_input([args.output], None if args.texts else args.input or "-")
    model = load_model(args)
    encode, width, dtype = compact_encoder(model, args)
    embed_stream(encode, source, EmbeddingWriter(args.output, width, dtype=dtype), args)
    return 0


def compact_encoder(model, args):
    """(encode, row width, .npy dtype) for embed's --chunking, --chunk-overlap, --precision and --ranges, checked
    (by an encode of no texts) before any text is read."""
    import numpy as np

    from .quantize import check_ranges

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
    width = -(-model.dim // 8) if precision in ("binary", "ubinary") else model.dim
    return encode, width, {"int8": "i1", "uint8": "u1", "binary": "i1", "ubinary": "u1"}.get(precision, "<f4")


def embed_stream(encode, texts, writer, args):
    """Embed (text, record) pairs CHUNK at a time into writer: bounded memory for any input size."""
    try:
        with progress(args) as bar:
            for chunk in chunks(texts):
                vectors = encode_with_warnings(encode, [text for text, _ in chunk], args.batch_size, writer.rows)
                writer.write(chunk, vectors)
                bar.update(len(chunk))
    except (CliError, KeyboardInterrupt) as e:                        # a bad line, a full disk or Ctrl-C
        error = e if isinstance(e, CliError) else CliError("interrupted", status=130)
        with contextlib.suppress(CliError):                            # the first error is the one to report
            writer.close(complete=False)
        if kept := writer.kept():
            error = CliError(f"{error}; {kept}", error.status)
        raise error from None
    except BaseException:
        writer.close(complete=False)
        raise
    writer.close(complete=True)


def cmd_search_build(args):
    out = Path(args.index)
    if out.is_dir():                                                   # first: a build running there is unfinished
        lock_index(out)
        try:
            moved = finish_moving_in(out)                              # whatever the build: its index is one build's
        except ValueError as e:                                        # the rebuild's index.json damaged
            raise CliError(str(e)) from None
        except OSError as e:
            raise CliError(f"cannot move the new index from {out / REBUILD} into {out}: {e.strerror}") from None
        if moved is not None:
            print(f"e5np: finished replacing {out} with its rebuild ({moved} passages)", file=sys.stderr)
            if args.resume:                                            # the move was all there was left to do
                return 0
    resume_command = f"`e5np search build --resume {shlex.quote(args.corpus)} {shlex.quote(args.index)}`"
    if args.model and os.path.isdir(os.path.expanduser(args.model)):   # stored for `search query` run from anywhere
        args.model = os.path.abspath(os.path.expanduser(args.model))
    continuing = args.resume or args.append                            # after the passages INDEX holds
    where, meta, replacing = build_target(args, out, resume_command)
    refuse_to_overwrite_input([where / name for name in (VECTORS, PASSAGES, META)], args.corpus)  # (rebuild: allowed)
    args.model = args.model or DEFAULT_MODEL
    texts = iter_records(args.corpus, args.field)                      # a corpus that cannot be read stops it here
    if not args.resume:                    # so does a bad line in its first chunk: INDEX is changed only after it
        first_chunk = list(itertools.islice(texts, CHUNK))
        texts = itertools.chain(first_chunk, texts)
    model = load_model(args)
    made_by = {"weights": weights_identity(model.directory, meta.get("weights") if continuing else None),
               "recipe": passage_recipe(model)}                        # what decides the vectors: index.json keeps it
    if continuing:
        check_same_model(args, where, meta, model.dim, made_by)
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CliError(f"cannot make {where}: {e.strerror}") from None
    lock_index(out)
    field = json_field(args.corpus, args.field)
    if continuing and "field" not in meta:                             # begun by an e5np that stored texts, not records
        field, texts = None, ((text, {"text": text}) for text, _ in texts)
    build_start = meta.get("build_start", 0) if args.resume else None  # where this corpus's passages begin
    writer = IndexWriter(where, args.model, model.dim, resume_command, made_by, field, build_start, append=continuing,
                         replacing=out if replacing else None)
    if args.resume:
        try:
            skip_indexed(texts, passage_lines(where, writer.rows, writer.build_start), args.corpus, where,
                         writer.build_start)
        except (CliError, KeyboardInterrupt):
            with contextlib.suppress(CliError):
                writer.close(complete=False)
            raise
    embed_stream(functools.partial(embed_passages, model), texts, writer, args)
    if replacing:
        try:
            replace_index(where, out)
        except OSError as e:
            raise CliError(f"cannot move the new index from {where} into {out}: {e.strerror}") from None
    added = f"added {writer.rows - writer.build_start} passages to {out} ({writer.rows} in all)"
    indexed = f"indexed {writer.rows} passages in {out}" + (", replacing the index it held" if replacing else "")
    print(f"e5np: {added if writer.build_start else indexed}", file=sys.stderr)
    return 0


def build_target(args, out, resume_command):
    """(where, meta, replacing): the directory this build writes, the index.json it continues (None unless
    --resume or --append), and whether it rebuilds a complete index, in INDEX/.rebuild. CliError if the build
    would throw away unfinished work, or cannot continue what INDEX holds."""
    try:
        meta = read_meta(out) if (out / META).is_file() else None
        rebuild = unfinished_rebuild(out)
    except ValueError as e:
        raise CliError(str(e)) from None
    staged = out / REBUILD
    if rebuild is not None and args.resume:
        check_continuable(args, staged, rebuild)
        return staged, rebuild, True
    if rebuild is not None:
        raise CliError(f"{out} has an unfinished rebuild in {staged}: " + (
            f"finish it first (`e5np search build --resume CORPUS {out}` with the corpus it was begun with), or "
            f"delete {staged}" if args.append else f"{resume_command} continues it; delete {staged} to start over"))
    if args.resume or args.append:
        check_continuable(args, out, meta)
        return out, meta, False
    if meta is not None and not meta.get("complete", True):
        raise CliError(f"{out} holds an unfinished build: {resume_command} continues it; delete {out} to start over")
    if meta is not None:                                               # the old index stays whole until the new one is
        return staged, None, True
    return out, None, False


def check_continuable(args, out, meta):
    """CliError unless INDEX can be resumed (--resume: its build is unfinished) or appended to (--append: it is
    complete); sets the model and the text's field to the index's where they are not given."""
    complete = meta is not None and meta.get("complete", True)
    if args.resume and not (meta and not complete):
        raise CliError(f"{out}: no unfinished build to resume" + (" (its build is complete)" if meta else ""))
    if args.append and not complete:
        raise CliError(f"{out}: no index to append to; `e5np search build CORPUS {out}` makes one" if meta is None else
                       f"{out} holds an unfinished build: finish it first (`e5np search build --resume CORPUS {out}` "
                       "with the corpus it was begun with)")
    built, verb = ("is being built", "resume it") if args.resume else ("is built", "append to it")
    if args.model not in (None, meta["model"]):
        raise CliError(f"{out} {built} with --model {meta['model']}: {verb} with that model")
    args.model = meta["model"]
    args.field = args.field or meta.get("field")
    if "field" in meta and json_field(args.corpus, args.field) != meta["field"]:  # (older indexes: texts only)
        built_from = f"JSON lines, field {meta['field']!r}" if meta.get("field") else "lines of plain text"
        raise CliError(f"{out} {built} from {built_from}: {verb} with a corpus of those"
                       + (f" (--field {meta['field']})" if meta.get("field") else ""))


def check_same_model(args, out, meta, dim, made_by):
    """CliError unless the model makes vectors of the index's size, with the weights and the recipe (see
    search.passage_recipe) that made its vectors."""
    weights = made_by["weights"]
    if dim != meta["dim"]:
        raise CliError(f"{args.model} makes {dim}-dim vectors but {out} holds {meta['dim']}-dim ones")
    if meta.get("weights") and weights["sha256"] != meta["weights"]["sha256"]:
        raise CliError(f"the weights of {args.model} changed since {out} was begun (sha256 "
                       f"{meta['weights']['sha256'][:12]}... then, {weights['sha256'][:12]}... now): one index cannot "
                       f"mix two models' vectors; delete {out} and build it again")
    if changes := recipe_changes(meta.get("recipe", {}), made_by["recipe"]):   # (none recorded in older indexes)
        raise CliError(f"{args.model} now embeds passages otherwise than it did for {out} ({changes}): one index "
                       f"cannot mix two kinds of vectors; delete {out} and build it again")


def lock_index(directory):
    """The lock that keeps two builds out of one index (see runtime.lock_directory), for the rest of this process."""
    try:
        lock_directory(directory)
    except LockedError:
        raise CliError(f"{directory} is being built by another `e5np search build`: wait for it, or build "
                       "into another directory") from None
    except OSError as e:
        raise CliError(f"cannot write {directory / '.lock'}: {e.strerror}") from None


def skip_indexed(texts, passages, corpus, index, start=0):
    """Reads past the corpus's texts that the index already holds, checking each is the passage stored for it
    (passages: passages.jsonl's lines from `start`, the row where the corpus begins; the record is compared, not
    only its text)."""
    try:
        for number, passage in enumerate(passages, 1):
            _, record = next(texts, (None, None))
            if record is None:
                problem = f"{corpus} ends after {number - 1} texts, but {index} holds more passages"
            elif json_line(record) != passage:
                problem = f"{corpus}: text {number} is not passage {start + number} of {index}"
            else:
                continue
            raise CliError(f"{problem}: resume with the corpus {index} was built from")
    except ValueError as e:                                            # passages.jsonl damaged
        raise CliError(str(e)) from None


def cmd_search_query(args):
    try:
        vectors, meta, passages_file = load_index(args.index)
    except ValueError as e:
        raise CliError(str(e)) from None
    with passages_file:
        return search_query(args, vectors, meta, passages_file)


def search_query(args, vectors, meta, passages_file):
    complete = meta.get("complete", True)                              # indexes from before the flag are complete
    if not complete:
        print(f"e5np search: {args.index} is unfinished: it holds the first {len(vectors)} passages of its corpus "
              f"(`e5np search build --resume CORPUS {shlex.quote(args.index)}` continues it)", file=sys.stderr)
    if len(vectors) == 0:
        print(f"e5np search: {args.index} holds no passages: no results", file=sys.stderr)
    with contextlib.suppress(ValueError):                              # a damaged rebuild is no reason not to answer
        if unfinished_rebuild(args.index):
            print(f"e5np search: {Path(args.index) / REBUILD} holds an unfinished rebuild of {args.index}: these "
                  "results are from the index as it was", file=sys.stderr)
        elif complete_rebuild(args.index):                             # (load_index refused one moved in half way)
            print(f"e5np search: {Path(args.index) / REBUILD} holds a complete rebuild of {args.index}, not moved in: "
                  f"these results are from the index as it was; `e5np search build --resume CORPUS "
                  f"{shlex.quote(args.index)}` moves it in", file=sys.stderr)
    queries = [text for text, _ in text_source(args.queries, args.input, args.field, what="queries")]
    if not queries:
        raise CliError(f"no queries: {args.input or 'stdin'} has none")
    args.model = args.model or meta["model"]
    model = load_model(args)
    if model.dim != vectors.shape[1]:
        raise CliError(f"{args.model} makes {model.dim}-dim vectors but the index holds {vectors.shape[1]}-dim ones")
    built_with = meta.get("weights")                                   # none in indexes from before it was recorded
    if built_with and weights_identity(model.directory, built_with)["sha256"] != built_with["sha256"]:
        print(f"e5np search: warning: {args.model} is not the model {args.index} was built with (its weights' "
              f"sha256 differs): the scores compare two models' vectors", file=sys.stderr)
    recorded = dict(meta.get("recipe", {}))
    unit_rows = recorded.pop("normalize", True)                        # false: a model's raw vectors, see top_k
    if changes := recipe_changes(recorded, passage_recipe(model)):
        print(f"e5np search: warning: {args.model} now embeds texts otherwise than it did for {args.index} "
              f"({changes}): the scores compare two kinds of vectors", file=sys.stderr)
    query_vectors = model.encode_queries(queries, normalize=True)      # scores are cosines, whatever the model does
    indices, scores = top_k(vectors, query_vectors, args.top_k, unit_rows=unit_rows is not False)
    field = meta.get("field")                                          # JSON lines: the record goes with its text
    try:
        passages = passages_at(passages_file, indices.ravel().tolist(), len(vectors), complete, field or "text")
    except ValueError as e:
        raise CliError(str(e)) from None

    def hit(rank, i, score):
        record = passages[i]
        found = {"rank": rank, "index": i, "score": score, "text": record[field or "text"]}
        return {**found, "record": record} if field else found
    results = [{"query": q, "results": [hit(r + 1, int(i), float(s)) for r, (i, s) in enumerate(zip(row_i, row_s))]}
               for q, row_i, row_s in zip(queries, indices, scores)]
    if args.json:
        print(json_text(results if len(results) > 1 else results[0], indent=2))
    else:
        for result in results:
            print(f"query: {result['query']}")
            for hit in result["results"]:
                print(f"  {hit['rank']:>3}. {hit['score']:.4f}  {hit['text']}")
    return 0


def cmd_similarity(args):
    texts = checked_arguments([args.text_a, args.text_b])
    model = load_model(args)
    a, b = choose_encoder(model, args)(texts, normalize=True)       # unit vectors whether or not the model normalizes
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

    texts = [text for text, _ in iter_records(args.texts)] if args.texts else parity.DEFAULT_TEXTS
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
    the first run of them only, and refused the rest ("unrecognized arguments")."""

    def parse_known_args(self, args=None, namespace=None):
        if self._subparsers is not None or getattr(self, "_intermixing", False):   # (intermixed parsing calls this)
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def build_parser():
    parser = argparse.ArgumentParser(prog="e5np", description="E5 / BERT sentence embeddings in pure NumPy.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=IntermixedParser)

    def model_option(p, default=DEFAULT_MODEL, default_text=None):
        default_text = default_text or default or "the one the index was built with"
        p.add_argument("--model", "-m", default=default, help=f"hub id or local directory (default {default_text})")

    def encoding_options(p, with_input=True):
        if with_input:
            p.add_argument("--input", "-i", help="file with one text per line, or .jsonl ('-' = stdin)")
        p.add_argument("--field", help="JSON lines: the field holding the text (default 'text')")
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
    embed.add_argument("--output", "-o", help="write to FILE.npy or FILE.jsonl instead of stdout")
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
        "Exact semantic search: `search build CORPUS INDEX` embeds a corpus (text or JSON lines) as passages; "
        "`search query INDEX QUERY...` prints the top-k passages by cosine similarity."))
    search_sub = search.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=IntermixedParser)
    build = search_sub.add_parser("build", help="embed a corpus into an index directory")
    build.add_argument("corpus", help="text file (one passage per line; blank lines skipped) or .jsonl ('-' = stdin)")
    build.add_argument("index", help="directory to write vectors.npy, passages.jsonl, index.json into (an index "
                                     "already there is rebuilt in INDEX/.rebuild and replaced when that is complete)")
    continuation = build.add_mutually_exclusive_group()
    continuation.add_argument("--resume", action="store_true",
                              help="continue an unfinished build or rebuild of INDEX (stopped by Ctrl-C, an error "
                                   "or a kill) from where it stopped, after checking that CORPUS starts with the "
                                   "passages it holds")
    continuation.add_argument("--append", action="store_true",
                              help="add CORPUS's passages to the complete index INDEX, after the ones it holds")
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
                                                   "CPU this process may use)")
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
