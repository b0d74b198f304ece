"""Golden tests: e5np against vectors transformers computed (tools/make_references.py), no torch needed."""

import numpy as np
import pytest

from tests.conftest import CHECKPOINTS, load_reference
from tests.corpus import PARITY_TEXTS


@pytest.fixture(scope="module", params=CHECKPOINTS)
def case(request, load_model):
    return request.param, load_model(request.param), load_reference(request.param)


def test_reference_is_current(case):
    _, _, ref = case
    assert ref["texts"] == PARITY_TEXTS, "tests/corpus.py changed; rerun tools/make_references.py"


def test_token_ids_match_transformers(case):
    _, model, ref = case
    batch = model.tokenize(ref["texts"])
    np.testing.assert_array_equal(batch.input_ids, ref["input_ids"])
    assert model.max_length == ref["max_length"]


def test_embeddings_match_transformers(case):
    _, model, ref = case
    vectors = model.encode(ref["texts"], truncation="ignore")
    assert vectors.dtype == np.float32 and vectors.shape == ref["embeddings"].shape
    assert np.abs(vectors - ref["embeddings"]).max() <= 1e-6


def test_last_hidden_state_matches_transformers(case):
    _, model, ref = case
    rows = ref["hidden_index"]
    for i, text in enumerate(ref["texts"]):  # one text at a time: no compute spent on padding
        hidden = model.forward([text]).last_hidden_state[0]
        sampled = rows[:, 0] == i
        assert np.abs(hidden[rows[sampled, 1]] - ref["hidden"][sampled]).max() <= 1e-5, f"text {i}"


def test_every_layer_matches_transformers(case):
    _, model, ref = case
    forward = model.forward([ref["texts"][ref["layers_text"]]])
    assert len(forward.hidden_states) == len(ref["layers"]) == model.config.num_hidden_layers + 1
    for layer, (ours, theirs) in enumerate(zip(forward.hidden_states, ref["layers"])):
        assert np.abs(ours[0] - theirs).max() <= 1e-5, f"layer {layer}"


def test_float64_mode_matches_transformers_float64(case, load_model):
    name, _, ref = case
    vectors = load_model(name, dtype="float64").encode(ref["texts"], truncation="ignore")
    assert vectors.dtype == np.float64
    assert np.abs(vectors - ref["embeddings_f64"]).max() <= 1e-10


def test_float32_is_as_close_to_float64_truth_as_transformers(case):
    """e5np-float32 should sit as near the float64 ground truth as transformers-float32 does."""
    _, model, ref = case
    ours = np.abs(model.encode(ref["texts"], truncation="ignore") - ref["embeddings_f64"]).max()
    theirs = np.abs(ref["embeddings"] - ref["embeddings_f64"]).max()
    assert ours <= max(2 * theirs, 5e-7), (ours, theirs)


def test_either_exponential_matches_transformers(case, exponential):
    """The model with each exponential e5np.numerics may take (the other one is what a CPU of the other kind gets)."""
    _, model, ref = case
    vectors = model.encode(ref["texts"], truncation="ignore")
    assert np.abs(vectors - ref["embeddings"]).max() <= 1e-6
    theirs = np.abs(ref["embeddings"] - ref["embeddings_f64"]).max()
    assert np.abs(vectors - ref["embeddings_f64"]).max() <= max(2 * theirs, 5e-7)
    forward = model.forward([ref["texts"][ref["layers_text"]]])
    for layer, (ours, theirs) in enumerate(zip(forward.hidden_states, ref["layers"])):
        assert np.abs(ours[0] - theirs).max() <= 1e-5, f"layer {layer}"
