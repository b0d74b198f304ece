"""The e5np command line: `e5np embed ...` (also `python -m e5np embed ...`)."""

import argparse
import json
import sys
import warnings

import numpy as np

DEFAULT_MODEL = "intfloat/e5-small"


class CliError(Exception):
    """A problem to report in one line and exit with status 2."""


def read_lines(path):
    """Non-empty lines of a file ('-' = stdin), without their line endings."""
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise CliError(f"cannot read {'stdin' if path == '-' else path}: {e}") from None
    return [line for line in text.splitlines() if line.strip()]


def load_model(args):
    import e5np

    try:
        return e5np.load(args.model, dtype=getattr(args, "dtype", "float32"))
    except (OSError, ValueError) as e:  # ModelNotFoundError, CheckpointError
        raise CliError(str(e)) from None


def write_embeddings(vectors, texts, output):
    if output is None or output == "-":
        for vector in vectors:
            sys.stdout.write(json.dumps([float(x) for x in vector]) + "\n")
    elif output.endswith(".npy"):
        np.save(output, vectors)
    elif output.endswith(".jsonl"):
        with open(output, "w", encoding="utf-8") as f:
            for text, vector in zip(texts, vectors):
                f.write(json.dumps({"text": text, "embedding": [float(x) for x in vector]}, ensure_ascii=False) + "\n")
    else:
        raise CliError(f"--output {output}: use a .npy or .jsonl file, or - for stdout")


def cmd_embed(args):
    if args.texts:
        texts = args.texts
    elif args.input:
        texts = read_lines(args.input)
    elif not sys.stdin.isatty():
        texts = read_lines("-")
    else:
        raise CliError("no texts: give them as arguments, with --input FILE, or on stdin (one per line)")
    model = load_model(args)
    encode = model.encode_queries if args.query else model.encode_passages if args.passage else model.encode
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vectors = encode(texts, batch_size=args.batch_size)
    for warning in caught:
        print(f"e5np: {warning.message}", file=sys.stderr)
    write_embeddings(vectors, texts, args.output)
    return 0


def cmd_parity(args):
    from . import parity

    texts = read_lines(args.texts) if args.texts else parity.DEFAULT_TEXTS
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
    sub = parser.add_subparsers(dest="command", required=True)

    embed = sub.add_parser("embed", help="embed texts", description=(
        "Embed texts given as arguments, read from --input (one per line) or from stdin. "
        "Prints one JSON array per text, or writes --output as .npy or .jsonl."))
    embed.add_argument("texts", nargs="*", help="texts to embed")
    embed.add_argument("--model", "-m", default=DEFAULT_MODEL, help=f"hub id or local directory (default {DEFAULT_MODEL})")
    group = embed.add_mutually_exclusive_group()
    group.add_argument("--query", action="store_true", help='texts are queries: add the model\'s query prefix ("query: " for E5)')
    group.add_argument("--passage", action="store_true", help='texts are passages: add the model\'s passage prefix ("passage: " for E5)')
    embed.add_argument("--input", "-i", help="file with one text per line ('-' for stdin)")
    embed.add_argument("--output", "-o", help="write to FILE.npy or FILE.jsonl instead of stdout")
    embed.add_argument("--batch-size", type=int, default=32, help="texts per batch (default 32)")
    embed.set_defaults(run=cmd_embed)

    parity = sub.add_parser("parity", help="compare e5np with transformers, stage by stage", description=(
        "Run e5np and Hugging Face transformers on the same texts and print, for the embedding layer, every "
        "encoder layer, the pooled and the normalized vectors, their max-abs and max-relative difference and "
        "each engine's distance from float64 ground truth. Exit status 1 if the normalized vectors differ by "
        "more than --tolerance. Needs torch and transformers: pip install 'e5np[parity]'."))
    parity.add_argument("--model", "-m", default=DEFAULT_MODEL, help=f"hub id or local directory (default {DEFAULT_MODEL})")
    parity.add_argument("--texts", help="file with one text per line (default: a built-in E5 sample)")
    parity.add_argument("--tolerance", type=float, default=1e-6, help="max-abs allowed on normalized vectors (1e-6)")
    parity.add_argument("--max-length", type=int, help="token limit (default: the model's)")
    parity.add_argument("--json", action="store_true", help="print the report as JSON")
    parity.set_defaults(run=cmd_parity)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except CliError as e:
        print(f"e5np {args.command}: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. piped into `head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
