"""e5np.integrations.langchain: LangChain's own standard suites for embeddings, and the prefixes e5np adds."""

import asyncio
import threading

import numpy as np
import pytest

from tests.checkpoints import TINY_DIR
from tests.integrations_support import e5_named_dir, framework, prompted_dir  # noqa: F401  (fixtures)

framework("langchain_core")
framework("langchain_tests")
framework("pytest_asyncio")

from langchain_core.embeddings import Embeddings  # noqa: E402
from langchain_tests.integration_tests import EmbeddingsIntegrationTests  # noqa: E402
from langchain_tests.unit_tests import EmbeddingsUnitTests  # noqa: E402

from e5np.integrations.langchain import E5npEmbeddings  # noqa: E402

TEXTS = ["the cat sat on the mat", "a dog", "attention and tokens", "the cat sat on the mat"]


class OnTheTinyModel:
    """What the standard suites are told: the class, and its parameters."""

    @property
    def embeddings_class(self):
        return E5npEmbeddings

    @property
    def embedding_model_params(self):
        return {"model": str(TINY_DIR)}


class TestE5npEmbeddingsUnit(OnTheTinyModel, EmbeddingsUnitTests):
    @property
    def init_from_env_params(self):
        return {"E5NP_MODEL": str(TINY_DIR)}, {}, {"model": str(TINY_DIR)}


# The async standard tests need pytest-asyncio's mark (langchain's own repos set asyncio_mode = "auto"); on the
# class it reaches the sync tests too, which pytest-asyncio then warns about.
@pytest.mark.asyncio
@pytest.mark.filterwarnings("ignore:The test <Function .*> is marked with '@pytest.mark.asyncio'")
class TestE5npEmbeddingsIntegration(OnTheTinyModel, EmbeddingsIntegrationTests):
    pass


@pytest.fixture(params=["prompted", "e5-named"])
def prefixed(request, prompted_dir, e5_named_dir):  # noqa: F811
    """An E5npEmbeddings over a checkpoint whose query and passage prefixes differ."""
    return E5npEmbeddings({"prompted": prompted_dir, "e5-named": e5_named_dir}[request.param])


def test_is_a_langchain_embeddings():
    assert isinstance(E5npEmbeddings(TINY_DIR), Embeddings)


def test_documents_are_passages_and_queries_queries(prefixed):
    model = prefixed.e5np_model
    assert model.prefixes["query"] != model.prefixes["passage"]
    documents = prefixed.embed_documents(TEXTS)
    assert all(type(x) is float for vector in documents for x in vector)
    np.testing.assert_array_equal(np.array(documents, dtype=np.float32), model.encode_passages(TEXTS))
    for text in TEXTS[:2]:
        query = prefixed.embed_query(text)
        assert all(type(x) is float for x in query)
        np.testing.assert_array_equal(np.array(query, dtype=np.float32), model.encode_queries(text))
        assert query != prefixed.embed_documents([text])[0]


def test_async_gives_the_same_vectors_off_the_event_loop(prefixed, monkeypatch):
    encoding_threads = []
    encode = prefixed.e5np_model.encode

    def spy(*args, **kwargs):
        encoding_threads.append(threading.get_ident())
        return encode(*args, **kwargs)

    monkeypatch.setattr(prefixed.e5np_model, "encode", spy)

    async def both():
        return await prefixed.aembed_documents(TEXTS), await prefixed.aembed_query(TEXTS[0]), threading.get_ident()

    documents, query, loop_thread = asyncio.run(both())
    assert len(encoding_threads) == 2 and loop_thread not in encoding_threads
    assert documents == prefixed.embed_documents(TEXTS)
    assert query == prefixed.embed_query(TEXTS[0])


def test_options_reach_encode(prompted_dir, recwarn):  # noqa: F811
    long_text = " ".join(["cat"] * 200)
    with pytest.raises(ValueError, match="exceed max_length=16"):
        E5npEmbeddings(prompted_dir, max_length=16, truncation="error").embed_documents([long_text])
    raw = E5npEmbeddings(prompted_dir, normalize=False, batch_size=1).embed_documents(TEXTS[:2])
    assert abs(np.linalg.norm(raw[0]) - 1) > 1e-3
    np.testing.assert_array_equal(np.array(raw, dtype=np.float32),
                                  E5npEmbeddings(prompted_dir).e5np_model.encode_passages(TEXTS[:2], normalize=False))


def test_same_model_shared():
    assert E5npEmbeddings(TINY_DIR, threads=1).e5np_model is E5npEmbeddings(str(TINY_DIR), threads=1).e5np_model
