"""A text's embedding must not depend on what it is batched with."""

import numpy as np
import pytest

from tests.corpus import PARITY_TEXTS
from tests.row_independence import PARITY_BAR as TOL
from tests.row_independence import assert_same_vectors


@pytest.fixture(scope="module", params=["minilm", "e5-shaped"])
def model_and_reference(request, load_model):
    model = load_model(request.param)
    return model, model.encode(PARITY_TEXTS, truncation="ignore")


@pytest.mark.parametrize("batch_size", [1, 2, 5, 64])
def test_batch_size(model_and_reference, batch_size):
    model, reference = model_and_reference
    out = model.encode(PARITY_TEXTS, batch_size=batch_size, truncation="ignore")
    assert np.abs(out - reference).max() <= TOL


def test_order(model_and_reference):
    model, reference = model_and_reference
    order = np.random.RandomState(3).permutation(len(PARITY_TEXTS))
    out = model.encode([PARITY_TEXTS[i] for i in order], truncation="ignore")
    assert np.abs(out - reference[order]).max() <= TOL


def test_neighbours_lengths(model_and_reference):
    """One text alone, then padded beside a 512-token text in a single batch (direct forward, no sorting)."""
    model, reference = model_and_reference
    for i in (1, 4, 9):
        alone = model.forward([PARITY_TEXTS[i]]).embeddings[0]
        beside_long = model.forward([PARITY_TEXTS[i], PARITY_TEXTS[-1]]).embeddings[0]
        assert np.abs(alone - reference[i]).max() <= TOL
        assert np.abs(beside_long - reference[i]).max() <= TOL


def test_duplicates_get_identical_vectors(model_and_reference):
    model, reference = model_and_reference
    i, j = 15, 17
    assert PARITY_TEXTS[i] == PARITY_TEXTS[j]
    assert_same_vectors(reference[i], reference[j])
