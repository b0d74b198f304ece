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


SHORT = 64  # tokens: attention maps are compared on the texts up to this long, then on the longer ones


@pytest.fixture(scope="module", params=CHECKPOINTS)
def live(request, load_model, checkpoint_dirs):
    """transformers' float32 forward and float64 ground truth of the texts as one padded batch; and their attention
    maps in two batches, the short texts and the long ones. One batch padded to 512 tokens made every map of
    e5-small's 12 layers [26, 12, 512, 512], 3.9 GB in float32 and 7.8 GB in float64, and this tier peaked at
    21.5 GB of this 24 GB machine; apart, they take a tenth of that."""
    name = request.param
    model = load_model(name)
    texts = PARITY_TEXTS + EXTRA_TEXTS
    reference = transformers_forward(checkpoint_dirs[name], texts, max_length=model.max_length)
    truth = transformers_forward(checkpoint_dirs[name], texts, max_length=model.max_length, dtype="float64")
    lengths = model.tokenize(texts).lengths
    groups = [[text for text, length in zip(texts, lengths) if (length <= SHORT) == short] for short in (True, False)]
    attentions = [(group, *(transformers_forward(checkpoint_dirs[name], group, max_length=model.max_length,
                                                 output_attentions=True, dtype=dtype)
                            for dtype in ("float32", "float64")))
                  for group in groups if group]
    return name, model, texts, reference, truth, attentions


def test_token_ids(live):
    _, model, texts, ref, _, _ = live
    np.testing.assert_array_equal(model.tokenize(texts).input_ids, ref.input_ids)


def test_embeddings(live):
    _, model, texts, ref, _, _ = live
    assert np.abs(model.encode(texts, truncation="ignore") - ref.embeddings).max() <= 1e-6


def test_every_layer_and_attention(live):
    """Same padded batch through both engines: every layer's real tokens and every attention map.

    Both are judged against the float64 ground truth: e5np-float32 must be within 1e-5 of it and as close to it
    as transformers-float32. Their difference from each other holds both engines' rounding: transformers 4.40's
    float32 drifts 6.9e-6 from the truth in all-MiniLM's fifth layer on an AVX2 CPU (e5np 3.6e-6), and the two
    were 1.0014e-5 apart. Float32 rounding moves attention probabilities by ~1e-5 in either engine.
    """
    _, model, texts, ref, truth, attentions = live
    forward = model.forward(texts)
    real = ref.attention_mask.astype(bool)
    for layer, (ours, theirs, exact) in enumerate(zip(forward.hidden_states, ref.hidden_states, truth.hidden_states)):
        our_error, their_error = (np.abs(h[real] - exact[real]).max() for h in (ours, theirs))
        assert our_error <= 1e-5, f"hidden state {layer}: {our_error:.2e} from float64"
        assert our_error <= 2 * their_error + 1e-6, f"hidden state {layer}: {our_error:.2e} vs {their_error:.2e}"
    assert np.abs(forward.pooled - truth.pooled).max() <= 1e-5
    for group, group_ref, group_truth in attentions:
        maps = model.forward(group, output_attentions=True).attentions
        real_queries = group_ref.attention_mask.astype(bool)[:, None, :, None]  # e5np skips padded query positions
        for layer, (ours, theirs, exact) in enumerate(zip(maps, group_ref.attentions, group_truth.attentions)):
            our_error = np.abs(np.where(real_queries, ours - exact, 0)).max()
            their_error = np.abs(np.where(real_queries, theirs - exact, 0)).max()
            assert our_error <= 1.5 * their_error + 1e-6, f"attention {layer}: {our_error:.2e} vs {their_error:.2e}"


def test_float64_mode_equals_transformers_float64(live):
    name, _, texts, _, truth, attentions = live
    import e5np

    model = e5np.load(live[1].name, dtype="float64")
    forward = model.forward(texts)
    assert np.abs(forward.embeddings - truth.embeddings).max() <= 1e-10
    real = truth.attention_mask.astype(bool)
    for ours, exact in zip(forward.hidden_states, truth.hidden_states):
        assert np.abs(ours[real] - exact[real]).max() <= 1e-10
    for group, _, group_truth in attentions:
        real_queries = group_truth.attention_mask.astype(bool)[:, None, :, None]
        for ours, exact in zip(model.forward(group, output_attentions=True).attentions, group_truth.attentions):
            assert np.abs(np.where(real_queries, ours - exact, 0)).max() <= 1e-10


def test_committed_references_are_reproducible(live):
    """The golden files still equal what transformers computes today (catches stale references)."""
    name = live[0]
    committed = load_reference(name)
    fresh = transformers_forward(live[1].name, committed["texts"], max_length=int(committed["max_length"]))
    assert np.abs(fresh.embeddings - committed["embeddings"]).max() <= 1e-6
    np.testing.assert_array_equal(fresh.input_ids, committed["input_ids"])

