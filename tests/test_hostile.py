"""Whatever users type: a finite, unit-norm vector that does not depend on its batch; never a crash."""

import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.corpus import HUGE_TEXT, PARITY_TEXTS

any_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=300)  # every code point, surrogates excluded


def examples(n):
    return settings(max_examples=n, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def unit_and_finite(vectors):
    return np.isfinite(vectors).all() and np.allclose(np.linalg.norm(vectors, axis=-1), 1, atol=1e-5)


@examples(150)
@given(texts=st.lists(any_text, min_size=1, max_size=6))
def test_random_unicode_never_crashes(load_model, texts):
    vectors = load_model("tiny").encode(texts, truncation="ignore")
    assert vectors.shape == (len(texts), 32) and unit_and_finite(vectors)


@examples(25)
@given(texts=st.lists(any_text, min_size=2, max_size=5), data=st.data())
def test_random_unicode_batch_order_and_neighbours(load_model, texts, data):
    model = load_model("minilm")
    reference = model.encode(texts, truncation="ignore")
    assert unit_and_finite(reference)
    order = data.draw(st.permutations(range(len(texts))))
    batch_size = data.draw(st.integers(1, len(texts)))
    shuffled = model.encode([texts[i] for i in order], batch_size=batch_size, truncation="ignore")
    assert np.abs(shuffled - reference[list(order)]).max() <= 1e-6
    alone = model.encode(texts[0], truncation="ignore")
    assert np.abs(alone - reference[0]).max() <= 1e-6


def test_every_hostile_corpus_text_is_finite_and_unit(minilm):
    assert unit_and_finite(minilm.encode(PARITY_TEXTS, truncation="ignore"))


def test_huge_text_is_truncated_not_choked_on(minilm):
    batch = minilm.tokenize([HUGE_TEXT])
    assert len(HUGE_TEXT) == 100_000 and batch.lengths.tolist() == [minilm.max_length] and batch.truncated.all()


def test_concurrent_encode_equals_serial(minilm):
    texts = [PARITY_TEXTS[i % 18] + f" variant {i}" for i in range(48)]
    serial = minilm.encode(texts, batch_size=8, truncation="ignore")
    results, errors = {}, []

    def worker(k):
        try:
            order = np.random.RandomState(k).permutation(len(texts))
            out = minilm.encode([texts[i] for i in order], batch_size=8 + k, truncation="ignore")
            results[k] = (order, out)
        except Exception as e:  # surfaced below with the thread's number
            errors.append((k, e))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for k, (order, out) in results.items():
        assert np.abs(out - serial[order]).max() <= 1e-6, f"thread {k}"


@pytest.mark.live
@examples(20)
@given(texts=st.lists(any_text, min_size=1, max_size=4))
def test_random_unicode_matches_transformers(load_model, checkpoint_dirs, texts):
    from e5np.parity import transformers_forward

    model = load_model("minilm")
    ref = transformers_forward(checkpoint_dirs["minilm"], texts, max_length=model.max_length)
    np.testing.assert_array_equal(model.tokenize(texts).input_ids, ref.input_ids)
    assert np.abs(model.encode(texts, truncation="ignore") - ref.embeddings).max() <= 1e-6
