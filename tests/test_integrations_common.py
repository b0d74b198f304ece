"""e5np.integrations' shared parts: no framework imported by e5np, the message naming the extra, the model cache."""

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import e5np
from e5np import integrations
from tests.checkpoints import TINY_DIR
from tests.integrations_support import e5_named_dir, prompted_dir  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("langchain_core", "langchain_tests", "llama_index", "chromadb", "pydantic")
MODULES = {"langchain": ("langchain_core", "langchain-core"), "llama_index": ("llama_index", "llama-index-core"),
           "chroma": ("chromadb", "chromadb")}
EXTRAS = {"langchain": "langchain", "llama_index": "llama-index", "chroma": "chroma"}


def run_python(code):
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_import_e5np_imports_no_framework():
    out = run_python("import sys, e5np, e5np.integrations\n"
                     f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS!r}))")
    assert out.strip() == "[]"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_missing_framework_names_the_extra(module):
    framework, package = MODULES[module]
    out = run_python(f"import sys\nsys.modules[{framework!r}] = None  # as if not installed\n"
                     f"try:\n    import e5np.integrations.{module}\nexcept ImportError as e:\n    print(e)\n")
    assert out.strip() == f'e5np.integrations.{module} needs {package}: pip install "e5np[{EXTRAS[module]}]"'


def test_require_lets_other_import_errors_through(tmp_path, monkeypatch):
    (tmp_path / "fakeframework_e5np").mkdir()
    (tmp_path / "fakeframework_e5np" / "__init__.py").write_text("import missing_dependency_e5np\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="missing_dependency_e5np"):   # the framework's own problem
        integrations.require("fakeframework_e5np", "fakeframework", "fake", "test")
    with pytest.raises(ImportError, match=r'^test needs nothing-e5np: pip install "e5np\[nothing\]"$'):
        integrations.require("nothing_e5np.sub", "nothing-e5np", "nothing", "test")


def test_same_model_is_loaded_once(tmp_path):
    integrations.clear_cache()
    first = integrations.shared_model(TINY_DIR, max_length=64)
    assert integrations.shared_model(str(TINY_DIR), max_length=64) is first          # str or Path
    assert integrations.shared_model(TINY_DIR / ".." / TINY_DIR.name, max_length=64) is first
    assert integrations.shared_model(TINY_DIR, max_length=32) is not first           # other load options
    assert integrations.shared_model(TINY_DIR, max_length=64, threads=1) is not first


def test_cache_is_thread_safe():
    integrations.clear_cache()
    models, barrier = [], threading.Barrier(4)

    def get():
        barrier.wait()
        models.append(integrations.shared_model(TINY_DIR, max_length=48))

    threads = [threading.Thread(target=get) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(models) == 4 and all(model is models[0] for model in models)


def test_encoder_prefixes_are_the_models(prompted_dir, e5_named_dir):  # noqa: F811
    for directory, query, passage in [(prompted_dir, "search_query: ", "search_document: "),
                                      (e5_named_dir, "query: ", "passage: ")]:
        encoder = integrations.Encoder(directory)
        assert encoder.model.prefixes == {"query": query, "passage": passage}
        texts = ["the cat sat on the mat", "a dog"]
        np.testing.assert_array_equal(encoder.queries(texts), encoder.model.encode_queries(texts))
        np.testing.assert_array_equal(encoder.passages(texts), encoder.model.encode_passages(texts))
        assert not np.array_equal(encoder.queries(texts), encoder.passages(texts))


def test_encoder_takes_a_loaded_model():
    model = e5np.load(TINY_DIR)
    assert integrations.Encoder(model).model is model
    with pytest.raises(ValueError, match="load options"):
        integrations.Encoder(model, max_length=16)


@pytest.mark.parametrize("options, error", [({"batch_size": 0}, ValueError), ({"truncation": "cut"}, ValueError),
                                            ({"normalize": "no"}, TypeError), ({"model": 3}, TypeError),
                                            ({"chunking": "max"}, ValueError),
                                            ({"chunking": "mean", "chunk_overlap": 0}, ValueError)])
def test_encoder_refuses_bad_options(options, error):
    with pytest.raises(error):
        integrations.Encoder(**{"model": TINY_DIR, **options})


def test_chunking_embeds_a_long_text_whole_as_encode_does(e5_named_dir):  # noqa: F811
    """A RAG framework's documents are often longer than the model reads: chunking="mean" reaches encode."""
    model = e5np.load(e5_named_dir)
    long_text = " ".join(f"word{i}" for i in range(3 * model.max_length))
    encoder = integrations.Encoder(e5_named_dir, chunking="mean", chunk_overlap=8)
    expected = model.encode_passages([long_text, "short"], chunking="mean", chunk_overlap=8)
    np.testing.assert_array_equal(encoder.passages([long_text, "short"]), expected)
    truncated = model.encode_passages([long_text], truncation="ignore")
    assert not np.allclose(expected[0], truncated[0], atol=1e-3)             # the whole text, not its start
    assert encoder.config()["chunking"] == "mean" and encoder.config()["chunk_overlap"] == 8


def test_a_str_is_not_a_list_of_texts():
    with pytest.raises(TypeError, match=r"pass \[text\]"):
        integrations.Encoder(TINY_DIR).passages("the cat")


def test_default_model_is_the_environments(monkeypatch):
    monkeypatch.setenv("E5NP_MODEL", str(TINY_DIR))
    assert integrations.Encoder().name == str(TINY_DIR)
    monkeypatch.delenv("E5NP_MODEL")
    assert integrations.default_model() == "intfloat/e5-small"
