"""e5np.integrations.chroma with a real chromadb PersistentClient: add, query, close, reopen in a fresh client."""

import gc

import numpy as np
import pytest

from tests.integrations_support import (  # noqa: F401  (fixtures)
    DOCUMENTS, QUERIES, e5_minilm_dir, e5_named_dir, framework, prompted_dir)

chromadb = framework("chromadb")

from chromadb.config import Settings  # noqa: E402
from chromadb.utils.embedding_functions import config_to_embedding_function, known_embedding_functions  # noqa: E402

from e5np.integrations.chroma import E5npEmbeddingFunction  # noqa: E402

def client(path):
    return chromadb.PersistentClient(path=str(path), settings=Settings(anonymized_telemetry=False))


def close(chroma):
    """Let go of a client entirely: chromadb keeps one system per path, so a fresh client would get the old one."""
    chroma.clear_system_cache()
    del chroma
    gc.collect()


def nearest(collection, queries):
    found = collection.query(query_texts=list(queries), n_results=1)
    return [ids[0] for ids in found["ids"]]


def test_persisted_collection_reopens_with_the_function(tmp_path, e5_minilm_dir):  # noqa: F811
    first = client(tmp_path / "db")
    docs = first.create_collection("docs", embedding_function=E5npEmbeddingFunction(e5_minilm_dir, threads=1))
    assert docs.configuration["hnsw"]["space"] == "cosine"                    # the function's default space
    docs.add(ids=list(DOCUMENTS), documents=list(DOCUMENTS.values()))
    before = nearest(docs, QUERIES)
    assert before == list(QUERIES.values())
    close(first)

    again = client(tmp_path / "db")
    reopened = again.get_collection("docs")                                  # no embedding function given
    function = reopened.configuration["embedding_function"]
    assert isinstance(function, E5npEmbeddingFunction)
    assert function.get_config()["model"] == str(e5_minilm_dir) and function.get_config()["threads"] == 1
    assert nearest(reopened, QUERIES) == before
    close(again)


def test_documents_are_passages_and_queries_queries(prompted_dir, e5_named_dir):  # noqa: F811
    texts = ["the cat sat on the mat", "a dog"]
    for directory in (prompted_dir, e5_named_dir):
        function = E5npEmbeddingFunction(directory)
        model = function.e5np_model
        assert model.prefixes["query"] != model.prefixes["passage"]
        np.testing.assert_array_equal(np.array(function(texts)), model.encode_passages(texts))
        np.testing.assert_array_equal(np.array(function.embed_query(texts)), model.encode_queries(texts))
        assert not np.array_equal(np.array(function(texts)), np.array(function.embed_query(texts)))


def test_registered_and_rebuilt_from_its_config(prompted_dir):  # noqa: F811
    assert known_embedding_functions["e5np"] is E5npEmbeddingFunction
    function = E5npEmbeddingFunction(prompted_dir, max_length=64, normalize=False, batch_size=8, truncation="ignore")
    assert not function.is_legacy()
    config = function.get_config()
    assert config == {"model": str(prompted_dir), "threads": None, "max_length": 64, "dtype": None, "prefixes": None,
                      "batch_size": 8, "normalize": False, "truncation": "ignore", "chunking": None,
                      "chunk_overlap": None}
    rebuilt = config_to_embedding_function({"name": "e5np", "config": config})
    assert rebuilt.get_config() == config and rebuilt.e5np_model is function.e5np_model
    assert function.default_space() == "cosine" and "cosine" in function.supported_spaces()


def test_config_changes_that_change_vectors_are_refused(prompted_dir):  # noqa: F811
    function = E5npEmbeddingFunction(prompted_dir)
    old = function.get_config()
    function.validate_config_update(old, {**old, "batch_size": 4, "threads": 1})
    with pytest.raises(ValueError, match="model"):
        function.validate_config_update(old, {**old, "model": "intfloat/e5-base"})
    with pytest.raises(ValueError, match="unknown keys"):
        E5npEmbeddingFunction.validate_config({**old, "pooling": "cls"})
