"""e5np.integrations.llama_index: the BaseEmbedding's methods, and a VectorStoreIndex retrieving with it."""

import asyncio

import numpy as np
import pytest

from tests.integrations_support import (  # noqa: F401  (fixtures)
    DOCUMENTS, QUERIES, e5_minilm_dir, e5_named_dir, framework, prompted_dir)
from tests.row_independence import assert_same_vectors

framework("llama_index.core")

from llama_index.core import Document, Settings, VectorStoreIndex  # noqa: E402
from llama_index.core.base.embeddings.base import BaseEmbedding  # noqa: E402
from llama_index.core.llms import MockLLM  # noqa: E402

from e5np.integrations.llama_index import E5npEmbedding  # noqa: E402

TEXTS = ["the cat sat on the mat", "a dog", "attention and tokens", "talk about the protein"]


@pytest.fixture(autouse=True)
def no_llm():
    """Nothing reaches a network: LlamaIndex's MockLLM, never its default (OpenAI's); e5np embeds."""
    Settings.llm = MockLLM()
    yield
    Settings.llm = MockLLM()


@pytest.fixture(params=["prompted", "e5-named"])
def prefixed(request, prompted_dir, e5_named_dir):  # noqa: F811
    return E5npEmbedding({"prompted": prompted_dir, "e5-named": e5_named_dir}[request.param], embed_batch_size=3)


def test_texts_are_passages_and_queries_queries(prefixed):
    model = prefixed.e5np_model
    assert isinstance(prefixed, BaseEmbedding)
    assert model.prefixes["query"] != model.prefixes["passage"]
    batch = prefixed.get_text_embedding_batch(TEXTS)                         # in chunks of embed_batch_size
    assert all(type(x) is float for vector in batch for x in vector)
    assert_same_vectors(np.array(batch, dtype=np.float32), model.encode_passages(TEXTS))
    np.testing.assert_array_equal(np.array(prefixed.get_text_embedding(TEXTS[0]), dtype=np.float32),
                                  model.encode_passages(TEXTS[0]))
    query = prefixed.get_query_embedding(TEXTS[0])
    np.testing.assert_array_equal(np.array(query, dtype=np.float32), model.encode_queries(TEXTS[0]))
    assert query != prefixed.get_text_embedding(TEXTS[0])


def test_async_gives_the_same_vectors(prefixed):
    async def all_of_them():
        return (await prefixed.aget_query_embedding(TEXTS[0]), await prefixed.aget_text_embedding(TEXTS[1]),
                await prefixed.aget_text_embedding_batch(TEXTS))

    query, text, batch = asyncio.run(all_of_them())
    assert query == prefixed.get_query_embedding(TEXTS[0])
    assert text == prefixed.get_text_embedding(TEXTS[1])
    assert_same_vectors(np.array(batch), np.array(prefixed.get_text_embedding_batch(TEXTS)))


def test_fields(prompted_dir):  # noqa: F811
    embedding = E5npEmbedding(prompted_dir, max_length=64, batch_size=4, normalize=False, embed_batch_size=7)
    assert embedding.model_name == str(prompted_dir) and embedding.embed_batch_size == 7
    assert (embedding.max_length, embedding.batch_size, embedding.normalize) == (64, 4, False)
    assert embedding.e5np_model.max_length == 64
    assert E5npEmbedding.class_name() == "E5npEmbedding"
    assert E5npEmbedding(prompted_dir, max_length=64).e5np_model is embedding.e5np_model


def test_vector_store_index_retrieves_the_right_document(e5_minilm_dir):  # noqa: F811
    embedding = E5npEmbedding(e5_minilm_dir)
    documents = [Document(text=text, id_=name, metadata={"name": name}) for name, text in DOCUMENTS.items()]
    index = VectorStoreIndex.from_documents(documents, embed_model=embedding)
    retriever = index.as_retriever(similarity_top_k=1)
    for query, name in QUERIES.items():
        (hit,) = retriever.retrieve(query)
        assert hit.node.metadata["name"] == name, (query, hit.node.text)
