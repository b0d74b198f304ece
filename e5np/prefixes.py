"""Which prefix a text gets: the naming policy that tells an E5 model by its name, and the checks on prefixes.

E5 models were trained with "query: " / "passage: " before every text; other models get none unless their
config_sentence_transformers.json declares prompts or load(prefixes=...) says so.
"""

import re

E5_PREFIXES = {"query": "query: ", "passage": "passage: "}
E5_NAME = re.compile(r"(^|[^a-z0-9])e5([^a-z0-9]|$)")  # intfloat/e5-small, multilingual-e5-base, ...
# The instruction-tuned E5s (intfloat/multilingual-e5-large-instruct) take no "query: " / "passage: ": a query is
# "Instruct: <one sentence saying the task>\nQuery: <query>", a passage is as it is. The instruction here is the one
# their model card uses for retrieval; prefixes={"query": ...} gives another task's.
E5_INSTRUCT_PREFIXES = {"query": "Instruct: Given a web search query, retrieve relevant passages that answer the "
                                 "query\nQuery: ", "passage": ""}
E5_INSTRUCT_NAME = re.compile(r"(^|[^a-z0-9])e5([^a-z0-9][^/]*)?instruct")  # in one path component
# What a caller may say a text is (Model.prefix): a search query, or a passage to be found ("document" as some
# APIs call it).
KINDS = {"query": "query", "passage": "passage", "document": "passage"}


def e5_prefixes(*names):
    """E5's prefixes for a model whose names (hub id, directory) say it is an E5, the instruct ones' for an instruct
    E5, else none."""
    for pattern, prefixes in ((E5_INSTRUCT_NAME, E5_INSTRUCT_PREFIXES), (E5_NAME, E5_PREFIXES)):
        if any(pattern.search(str(name).lower()) for name in names):
            return dict(prefixes)
    return {}


def check_prefix(name, prefix):
    if not isinstance(prefix, str):
        raise TypeError(f"{name} must be a str, got {type(prefix).__name__}")


def check_prefixes(prefixes):
    """A dict of str prefixes for "query" and/or "passage"; another key would be a prefix nothing ever adds."""
    if not isinstance(prefixes, dict):
        raise TypeError(f'prefixes must be a dict like {{"query": "query: ", "passage": "passage: "}}, '
                        f'got {prefixes!r}')
    unknown = sorted(set(prefixes) - set(E5_PREFIXES), key=str)
    if unknown:
        raise ValueError(f'prefixes takes the keys "query" and "passage", got {unknown}')
    for key, prefix in prefixes.items():
        check_prefix(f"prefixes[{key!r}]", prefix)


def check_kind(kind):
    """kind as "query" or "passage" ("document" is a passage), or None (no kind: the model's default prefix)."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be 'query', 'passage' or 'document' (or None), got {kind!r}")
    return None if kind is None else KINDS[kind]
