"""e5np as a LlamaIndex embedding model (pip install "e5np[llama-index]").

    from llama_index.core import Settings
    from e5np.integrations.llama_index import E5npEmbedding
    Settings.embed_model = E5npEmbedding(model="intfloat/e5-small")
"""

import asyncio
from typing import Any, Dict, List, Optional

from . import Encoder, floats, require

BaseEmbedding = require("llama_index.core.base.embeddings.base", "llama-index-core", "llama-index",
                        __name__).BaseEmbedding
from pydantic import Field, PrivateAttr  # noqa: E402  (llama-index-core brings pydantic 2)

__all__ = ["E5npEmbedding"]


class E5npEmbedding(BaseEmbedding):
    """A llama_index BaseEmbedding running an e5np model: texts (nodes) get the model's passage prefix ("passage: "
    for E5), queries its query prefix ("query: "), as Model.encode_passages / encode_queries add them.

    model: a hub id or a checkpoint directory (default: $E5NP_MODEL, else intfloat/e5-small), or a loaded
    e5np.Model. Adapters asking for the same model with the same load options (threads, max_length, dtype, prefixes)
    share one, loaded once per process. batch_size, normalize, truncation, chunking and chunk_overlap are passed to
    Model.encode;
    embed_batch_size is how many texts LlamaIndex hands over at a time (e5np batches them again by length).
    The async methods run the work in a thread, off the event loop.
    """

    threads: Optional[int] = Field(default=None, description="batches e5np runs at once (default: the CPUs)")
    max_length: Optional[int] = Field(default=None, description="tokens a text keeps (default: the model's)")
    dtype: Optional[str] = Field(default=None, description="float32 (default) or float64")
    prefixes: Optional[Dict[str, str]] = Field(default=None, description='{"query": ..., "passage": ...}')
    batch_size: int = Field(default=32, description="texts per forward pass")
    normalize: Optional[bool] = Field(default=None, description="L2-normalize (default: the model's own)")
    truncation: str = Field(default="warn", description="a text longer than max_length: warn, ignore or error")
    chunking: Optional[str] = Field(default=None, description='"mean": a long text embedded whole, from windows')
    chunk_overlap: Optional[int] = Field(default=None, description="tokens consecutive windows share")
    _encoder: Any = PrivateAttr()

    def __init__(self, model=None, *, threads=None, max_length=None, dtype=None, prefixes=None, batch_size=32,
                 normalize=None, truncation="warn", chunking=None, chunk_overlap=None, embed_batch_size=256,
                 **kwargs: Any):
        encoder = Encoder(model, threads=threads, max_length=max_length, dtype=dtype, prefixes=prefixes,
                          batch_size=batch_size, normalize=normalize, truncation=truncation, chunking=chunking,
                          chunk_overlap=chunk_overlap)
        super().__init__(model_name=str(encoder.name), threads=threads, max_length=max_length,
                         dtype=encoder.load_options["dtype"], prefixes=prefixes, batch_size=batch_size,
                         normalize=normalize, truncation=truncation, chunking=chunking, chunk_overlap=chunk_overlap,
                         embed_batch_size=embed_batch_size, **kwargs)
        self._encoder = encoder

    @classmethod
    def class_name(cls) -> str:
        return "E5npEmbedding"

    @property
    def e5np_model(self):
        """The loaded e5np.Model."""
        return self._encoder.model

    def _get_query_embedding(self, query: str) -> List[float]:
        return floats(self._encoder.queries([query]))[0]

    def _get_text_embedding(self, text: str) -> List[float]:
        return floats(self._encoder.passages([text]))[0]

    def _get_text_embeddings(self, texts: List[str]) -> List[List[float]]:
        return floats(self._encoder.passages(texts))

    async def _aget_query_embedding(self, query: str) -> List[float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> List[float]:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: List[str]) -> List[List[float]]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)
