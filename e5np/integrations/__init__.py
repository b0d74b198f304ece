"""e5np for LangChain, LlamaIndex and Chroma: one module each, each importing its framework only when imported.

    from e5np.integrations.langchain import E5npEmbeddings         # pip install "e5np[langchain]"
    from e5np.integrations.llama_index import E5npEmbedding        # pip install "e5np[llama-index]"
    from e5np.integrations.chroma import E5npEmbeddingFunction     # pip install "e5np[chroma]"

This module imports no framework. It holds what the three share: the check that a framework is there, the
process-wide cache of loaded models (adapters asking for the same model with the same load options share one), and
the encoding with the query / passage prefixes, giving plain Python floats.
"""

import importlib
import os
import threading

from ..model import Model, check_flag, check_positive_int, dtype_name, load

DEFAULT_MODEL = "intfloat/e5-small"   # unless E5NP_MODEL names another, as for the command line
TRUNCATIONS = ("warn", "ignore", "error")
OPTIONS = ("threads", "max_length", "dtype", "prefixes", "batch_size", "normalize", "truncation", "chunking",
           "chunk_overlap")  # besides model

_cache = {}                # cache key -> loaded e5np.Model
_cache_lock = threading.Lock()
_key_locks = {}            # cache key -> the lock a first load of that key holds: one load, not two at once


def require(module, package, extra, needed_by):
    """import_module(module), or an ImportError naming the extra to install when the framework is not there."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        top = module.split(".")[0]
        if e.name is None or not (e.name == top or e.name.startswith(top + ".")):
            raise                                                      # something else the framework lacks
        raise ImportError(f'{needed_by} needs {package}: pip install "e5np[{extra}]"') from e


def default_model():
    return os.environ.get("E5NP_MODEL") or DEFAULT_MODEL


def resolved_name(name):
    """A local directory's absolute path, else the hub id as given. Not the real path: a link's name is kept, as
    e5np.load reads E5's prefixes from the names it is given (a link named e5-small gets them, its target may not)."""
    path = os.path.expanduser(os.fspath(name))
    return os.path.abspath(path) if os.path.isdir(path) else os.fspath(name)


def _freeze(value):
    return tuple(sorted(value.items())) if isinstance(value, dict) else value


def shared_model(name, **load_options):
    """e5np.load(name, **load_options), loaded once per process for each checkpoint and set of load options (None
    options are left to e5np.load's defaults). Thread-safe: threads asking for one model at once wait for one load."""
    options = {key: value for key, value in load_options.items() if value is not None}
    key = (resolved_name(name), tuple(sorted((k, _freeze(v)) for k, v in options.items())))
    with _cache_lock:
        if key in _cache:
            return _cache[key]
        key_lock = _key_locks.setdefault(key, threading.Lock())
    with key_lock:
        with _cache_lock:
            if key in _cache:                                          # loaded while this thread waited
                return _cache[key]
        model = load(name, **options)
        with _cache_lock:
            _cache[key] = model
            _key_locks.pop(key, None)
        return model


def clear_cache():
    """Forget the shared models (adapters made before keep theirs)."""
    with _cache_lock:
        _cache.clear()


class Encoder:
    """The part every adapter shares: a loaded model (shared, see shared_model) and the encode() options.

    model: a hub id or a checkpoint directory (default: $E5NP_MODEL, else intfloat/e5-small), or an e5np.Model
    already loaded (used as it is). threads, max_length, dtype and prefixes are e5np.load's; batch_size, normalize
    (None: the model's own, L2 for E5), truncation ("warn", "ignore" or "error"), chunking ("mean": a text longer
    than max_length is embedded whole, from overlapping windows) and chunk_overlap are Model.encode's.
    """

    def __init__(self, model=None, *, threads=None, max_length=None, dtype=None, prefixes=None, batch_size=32,
                 normalize=None, truncation="warn", chunking=None, chunk_overlap=None):
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.normalize = None if normalize is None else check_flag("normalize", normalize)
        if truncation not in TRUNCATIONS:
            raise ValueError(f"truncation must be 'warn', 'ignore' or 'error', got {truncation!r}")
        self.truncation = truncation
        self.chunking, self.chunk_overlap = chunking, chunk_overlap
        dtype = None if dtype is None else dtype_name(dtype)            # "float64" for np.float64 too: JSON-able
        if isinstance(model, Model):
            if any(option is not None for option in (threads, max_length, dtype, prefixes)):
                raise ValueError("threads, max_length, dtype and prefixes are load options: pass a model name or "
                                 "directory with them, or set them when you load the model")
            self.model, self.name = model, model.name or os.fspath(model.directory)
        else:
            self.name = default_model() if model is None else model
            if not isinstance(self.name, (str, os.PathLike)):
                raise TypeError(f"model must be a hub id, a directory or an e5np.Model, got {type(model).__name__}")
            self.model = shared_model(self.name, threads=threads, max_length=max_length, dtype=dtype,
                                      prefixes=prefixes)
        self.load_options = {"threads": threads, "max_length": max_length, "dtype": dtype, "prefixes": prefixes}
        self.model.encode([], chunking=chunking, chunk_overlap=chunk_overlap)   # bad chunking options: refused now

    def _encode(self, method, texts):
        if isinstance(texts, str):                                     # list("abc") would be three texts
            raise TypeError("texts must be a list of str, got a str: pass [text]")
        return method(list(texts), batch_size=self.batch_size, normalize=self.normalize, truncation=self.truncation,
                      chunking=self.chunking, chunk_overlap=self.chunk_overlap)

    def passages(self, texts):
        """[n, H] array: the texts embedded as passages (the model's passage prefix, "passage: " for E5)."""
        return self._encode(self.model.encode_passages, texts)

    def queries(self, texts):
        """[n, H] array: the texts embedded as queries (the model's query prefix, "query: " for E5)."""
        return self._encode(self.model.encode_queries, texts)

    def config(self):
        """The options as JSON-able values: what rebuilds an Encoder like this one (a persisted Chroma collection's)."""
        return {"model": resolved_name(self.name), **self.load_options, "batch_size": self.batch_size,
                "normalize": self.normalize, "truncation": self.truncation, "chunking": self.chunking,
                "chunk_overlap": self.chunk_overlap}


class Adapter:
    """What the LangChain and Chroma adapters share: the constructor (Encoder's options) and the loaded model."""

    def __init__(self, model=None, *, threads=None, max_length=None, dtype=None, prefixes=None, batch_size=32,
                 normalize=None, truncation="warn", chunking=None, chunk_overlap=None):
        self._encoder = Encoder(model, threads=threads, max_length=max_length, dtype=dtype, prefixes=prefixes,
                                batch_size=batch_size, normalize=normalize, truncation=truncation, chunking=chunking,
                                chunk_overlap=chunk_overlap)

    @property
    def e5np_model(self):
        """The loaded e5np.Model."""
        return self._encoder.model

    def __repr__(self):
        return f"{type(self).__name__}(model={self._encoder.name!r})"


def floats(vectors):
    """An [n, H] array as n lists of Python floats (float32 to float: exact)."""
    return vectors.tolist()
