"""e5np as a Chroma embedding function (pip install "e5np[chroma]"), for chromadb 1.x.

    import chromadb
    from e5np.integrations.chroma import E5npEmbeddingFunction
    client = chromadb.PersistentClient("db")
    docs = client.get_or_create_collection("docs", embedding_function=E5npEmbeddingFunction("intfloat/e5-small"))

The function is registered with Chroma (name "e5np"): a collection made with it stores its config, and reopens
with it (client.get_collection("docs")) in any process that has imported this module.
"""

from . import OPTIONS, Adapter, require

chromadb_embedding_functions = require("chromadb.utils.embedding_functions", "chromadb", "chroma", __name__)
EmbeddingFunction = chromadb_embedding_functions.EmbeddingFunction
register_embedding_function = chromadb_embedding_functions.register_embedding_function

__all__ = ["E5npEmbeddingFunction"]

# What reopening a collection with another value of would give vectors unlike the ones it holds.
VECTOR_OPTIONS = ("model", "max_length", "dtype", "prefixes", "normalize", "chunking", "chunk_overlap")


@register_embedding_function
class E5npEmbeddingFunction(Adapter, EmbeddingFunction):
    """A Chroma EmbeddingFunction running an e5np model: documents (__call__) get the model's passage prefix
    ("passage: " for E5), queries (embed_query, which collection.query(query_texts=...) calls) its query prefix.

    model: a hub id or a checkpoint directory (default: $E5NP_MODEL, else intfloat/e5-small), or a loaded
    e5np.Model. Adapters asking for the same model with the same load options (threads, max_length, dtype, prefixes)
    share one, loaded once per process. batch_size, normalize, truncation, chunking and chunk_overlap are
    passed to Model.encode.
    A directory is stored by its absolute path in the collection's config (get_config), a hub id as it is.
    """

    def __call__(self, input):
        return list(self._encoder.passages(input))

    def embed_query(self, input):
        return list(self._encoder.queries(input))

    @staticmethod
    def name():
        return "e5np"

    def default_space(self):
        return "cosine"

    def supported_spaces(self):
        return ["cosine", "ip", "l2"]

    def get_config(self):
        return self._encoder.config()

    @staticmethod
    def build_from_config(config):
        return E5npEmbeddingFunction(**config)

    @staticmethod
    def validate_config(config):
        unknown = sorted(set(config) - {"model", *OPTIONS})
        if unknown:
            raise ValueError(f"e5np embedding function config has unknown keys {unknown}")

    def validate_config_update(self, old_config, new_config):
        changed = [key for key in VECTOR_OPTIONS if key in new_config and new_config[key] != old_config.get(key)]
        if changed:
            raise ValueError(f"changing {changed} of a collection's e5np embedding function would give vectors "
                             "unlike the ones it holds: make a new collection")
