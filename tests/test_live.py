"""The second tier: transformers run live on the same checkpoints (needs torch + transformers)."""

import numpy as np
import pytest

from e5np.parity import transformers_forward
from tests.conftest import CHECKPOINTS, load_reference
from tests.corpus import PARITY_TEXTS

pytestmark = pytest.mark.live

EXTRA_TEXTS = [
    "query: what is the capital of France?",
    "passage: Paris is the capital and most populous city of France.",
    "   leading and trailing spaces   ",
    "UPPER case Text With MiXeD case",
    "numbers 3.14159 2,718 1e-12 and dates 2026-11-27",
    "\u202eright-to-left override\u202c and \u00a0no-break spaces",
]


@pytest.fixture(scope="module", params=CHECKPOINTS)
def live(request, load_model, checkpoint_dirs):
    name = request.param
    model = load_model(name)
    texts = PARITY_TEXTS + EXTRA_TEXTS
    reference = transformers_forward(checkpoint_dirs[name], texts, max_length=model.max_length, output_attentions=True)
    truth = transformers_forward(checkpoint_dirs[name], texts, max_length=model.max_length, output_attentions=True,
                                 dtype="float64")
    return name, model, texts, reference, truth


def test_token_ids(live):
    _, model, texts, ref, _ = live
    np.testing.assert_array_equal(model.tokenize(texts).input_ids, ref.input_ids)


def test_embeddings(live):
    _, model, texts, ref, _ = live
    assert np.abs(model.encode(texts, truncation="ignore") - ref.embeddings).max() <= 1e-6


def test_every_layer_and_attention(live):
    """Same padded batch through both engines: every layer's real tokens and every attention map.

    Float32 rounding moves attention probabilities by ~1e-5 in either engine, so attention is judged
    against the float64 ground truth: e5np-float32 must be as close to it as transformers-float32.
    """
    _, model, texts, ref, truth = live
    forward = model.forward(texts, output_attentions=True)
    real = ref.attention_mask.astype(bool)
    for layer, (ours, theirs) in enumerate(zip(forward.hidden_states, ref.hidden_states)):
        assert np.abs(ours[real] - theirs[real]).max() <= 1e-5, f"hidden state {layer}"
    real_queries = real[:, None, :, None]  # e5np does not compute attention for padded query positions
    for layer, (ours, theirs, exact) in enumerate(zip(forward.attentions, ref.attentions, truth.attentions)):
        our_error = np.abs(np.where(real_queries, ours - exact, 0)).max()
        their_error = np.abs(np.where(real_queries, theirs - exact, 0)).max()
        assert our_error <= 1.5 * their_error + 1e-6, f"attention {layer}: {our_error:.2e} vs {their_error:.2e}"
    assert np.abs(forward.pooled - ref.pooled).max() <= 1e-5


def test_float64_mode_equals_transformers_float64(live):
    name, _, texts, _, truth = live
    import e5np

    forward = e5np.load(live[1].name, dtype="float64").forward(texts, output_attentions=True)
    assert np.abs(forward.embeddings - truth.embeddings).max() <= 1e-10
    real = truth.attention_mask.astype(bool)
    for ours, exact in zip(forward.hidden_states, truth.hidden_states):
        assert np.abs(ours[real] - exact[real]).max() <= 1e-10
    for ours, exact in zip(forward.attentions, truth.attentions):
        assert np.abs(np.where(real[:, None, :, None], ours - exact, 0)).max() <= 1e-10


def test_committed_references_are_reproducible(live):
    """The golden files still equal what transformers computes today (catches stale references)."""
    name = live[0]
    committed = load_reference(name)
    fresh = transformers_forward(live[1].name, committed["texts"], max_length=int(committed["max_length"]))
    assert np.abs(fresh.embeddings - committed["embeddings"]).max() <= 1e-6
    np.testing.assert_array_equal(fresh.input_ids, committed["input_ids"])

