"""e5np as a LangChain embedding model (pip install "e5np[langchain]").

    from e5np.integrations.langchain import E5npEmbeddings
    embeddings = E5npEmbeddings(model="intfloat/e5-small")
    embeddings.embed_documents(["Paris is the capital of France."])   # "passage: " + text, for E5
    embeddings.embed_query("capital of France")                       # "query: " + text
"""

import asyncio

from . import Adapter, floats, require

Embeddings = require("langchain_core.embeddings", "langchain-core", "langchain", __name__).Embeddings

__all__ = ["E5npEmbeddings"]


class E5npEmbeddings(Adapter, Embeddings):
    """A langchain_core Embeddings running an e5np model: documents get the model's passage prefix ("passage: " for
    E5), queries its query prefix ("query: "), as Model.encode_passages / encode_queries add them.

    model: a hub id or a checkpoint directory (default: $E5NP_MODEL, else intfloat/e5-small), or a loaded
    e5np.Model. Adapters asking for the same model with the same load options (threads, max_length, dtype, prefixes)
    share one, loaded once per process. batch_size, normalize, truncation, chunking and chunk_overlap are
    passed to Model.encode.
    The async methods run the work in a thread, off the event loop. Vectors are lists of Python floats.
    """

    @property
    def model(self):
        """The model's name or directory, as given (or $E5NP_MODEL's, or the default's)."""
        return self._encoder.name

    def embed_documents(self, texts):
        return floats(self._encoder.passages(texts))

    def embed_query(self, text):
        return floats(self._encoder.queries([text]))[0]

    async def aembed_documents(self, texts):
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text):
        return await asyncio.to_thread(self.embed_query, text)
