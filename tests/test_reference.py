"""The fast engine against the reference, the model as the paper writes it (e5np.reference), on every fixture.

The reference pads, masks and computes GELU from erf; the engine packs real tokens, steps attention through the
cache and takes GELU from a fitted tail. In float32 the engine must stay as near the float64 reference as the
parity tests hold it to transformers (normalized vectors within 1e-6, hidden states within 1e-5); run in
float64, where its GELU is erf's, the two differ by rounding only."""

from types import SimpleNamespace

import numpy as np
import pytest

from e5np import engine, reference
from tests.corpus import LONG_TEXT, PARITY_TEXTS
from tests.row_independence import assert_same_vectors

FIXTURES = ["tiny", "minilm", "e5-shaped", "bert-wide", "st-cls", "xlmr"]
# One padded batch of texts of many lengths, and one long text (truncated to the model's max_length: one attention
# head per step) beside [CLS] [SEP] alone ("", in both), padded to the long one; and a query's worth of tokens, which
# the engine multiplies by its weights' column blocks (engine.BLOCKED_PASS)
BATCHES = {"mixed": [text for text in PARITY_TEXTS if len(text) < 1000], "long": [LONG_TEXT, ""],
           "query": ["query: how do I fix a flat tyre on my bike?", ""]}
FLOAT64 = 1e-12                                                        # the engine in float64 against the reference


def run(function, model, batch):
    """function (engine.encode on the model's engine_params, reference.forward on its params) on a batch."""
    c = model.config
    params = model.engine_params if function is engine.encode else model.params
    return function(batch.input_ids, batch.attention_mask, params, n_heads=c.num_attention_heads,
                    eps=c.layer_norm_eps, position_offset=c.position_offset, keep_hidden=True, keep_attention=True)


def max_abs(ours, theirs):
    return float(np.abs(np.asarray(ours, np.float64) - theirs).max())


@pytest.fixture(scope="module", params=[(name, batch) for name in FIXTURES for batch in BATCHES],
                ids=lambda case: "-".join(case))
def case(request, load_model):
    """(engine in float32, engine in float64, reference in float64, the batch) of one fixture and batch."""
    name, texts = request.param[0], BATCHES[request.param[1]]
    model32, model64 = load_model(name), load_model(name, dtype="float64")
    batch = model32.tokenize(texts)
    lengths = batch.attention_mask.sum(axis=1)
    assert lengths.min() == 2 and len(set(lengths.tolist())) > 1      # [CLS] [SEP] alone, and padding
    assert (lengths.sum() in engine.BLOCKED_PASS) == (request.param[1] == "query")
    return run(engine.encode, model32, batch), run(engine.encode, model64, batch), run(reference.forward, model64,
                                                                                            batch), batch


def test_every_layer_float32_engine_against_the_float64_reference(case):
    (_, hidden32, _), _, (_, truth, _), batch = case
    real = batch.attention_mask.astype(bool)
    assert len(hidden32) == len(truth)
    for layer, (ours, exact) in enumerate(zip(hidden32, truth)):
        assert ours.dtype == np.float32 and exact.dtype == np.float64
        assert max_abs(ours[real], exact[real]) <= 1e-5, f"hidden state {layer}"
        assert (ours[~real] == 0).all() and (exact[~real] == 0).all(), f"hidden state {layer}: padding reads 0"


def test_attention_float32_engine_against_the_float64_reference(case):
    (_, _, maps32), _, (_, _, truth), batch = case
    padded = ~batch.attention_mask.astype(bool)
    for layer, (ours, exact) in enumerate(zip(maps32, truth)):
        assert ours.shape == exact.shape
        assert max_abs(ours, exact) <= 1e-5, f"attention {layer}"
        np.testing.assert_allclose(np.where(padded[:, None], 1, exact.sum(-1)), 1, atol=1e-12)  # real queries: 1
        for probs in (ours, exact):                                    # padded queries and keys read 0
            assert (probs.transpose(0, 2, 1, 3)[padded] == 0).all() and (probs.transpose(0, 3, 1, 2)[padded] == 0).all()


@pytest.mark.parametrize("pooling", sorted(reference.POOLINGS))
def test_every_pooling_float32_engine_against_the_float64_reference(case, pooling):
    (last32, _, _), _, (truth, _, _), batch = case
    pool = reference.POOLINGS[pooling]
    ours, exact = pool(last32, batch.attention_mask), pool(truth, batch.attention_mask)
    assert ours.dtype == np.float32 and max_abs(ours, exact) <= 1e-5 * max(1.0, np.abs(exact).max())  # of its scale
    assert max_abs(reference.l2_normalize(ours), reference.l2_normalize(exact)) <= 1e-6             # the parity bar


def test_float64_engine_is_the_reference_but_for_rounding(case):
    _, (last64, hidden64, maps64), (truth, hidden, maps), batch = case
    assert last64.dtype == np.float64
    for layer, (ours, exact) in enumerate(zip(hidden64, hidden)):
        assert max_abs(ours, exact) <= FLOAT64, f"hidden state {layer}"
    for layer, (ours, exact) in enumerate(zip(maps64, maps)):
        assert max_abs(ours, exact) <= FLOAT64, f"attention {layer}"
    for pooling, pool in reference.POOLINGS.items():
        vectors = pool(last64, batch.attention_mask), pool(truth, batch.attention_mask)
        assert max_abs(*vectors) <= FLOAT64, pooling
        assert max_abs(*map(reference.l2_normalize, vectors)) <= FLOAT64, pooling


def test_left_padding_engine_against_the_reference(load_model):
    """Left-padded ids (which e5np never makes) take column positions in both: the same texts, moved right."""
    model32, model64 = load_model("tiny"), load_model("tiny", dtype="float64")
    right = model32.tokenize(BATCHES["mixed"])
    rows, columns = np.indices(right.input_ids.shape)
    columns = (columns + right.lengths[:, None]) % columns.shape[1]     # each row's padding moved to its front
    batch = SimpleNamespace(input_ids=right.input_ids[rows, columns],
                            attention_mask=right.attention_mask[rows, columns])
    assert (batch.attention_mask[:, 0] == 0).any()
    (_, hidden32, maps32), (_, hidden64, maps64), (_, truth, exact_maps) = (
        run(engine.encode, model32, batch), run(engine.encode, model64, batch), run(reference.forward, model64, batch))
    real = batch.attention_mask.astype(bool)
    for ours32, ours64, exact in zip(hidden32, hidden64, truth):
        assert max_abs(ours32[real], exact[real]) <= 1e-5 and max_abs(ours64, exact) <= FLOAT64
    for ours32, ours64, exact in zip(maps32, maps64, exact_maps):
        assert max_abs(ours32, exact) <= 1e-5 and max_abs(ours64, exact) <= FLOAT64


@pytest.mark.parametrize("dtype, function", [("float32", engine.encode), ("float64", reference.forward)])
def test_a_loaded_model_runs_the_engine_in_float32_and_the_reference_in_float64(load_model, dtype, function):
    model = load_model("xlmr", dtype=dtype)
    texts = BATCHES["mixed"][:6]
    forward = model.forward(texts, output_attentions=True)
    batch = model.tokenize(texts)
    last, hidden, maps = run(function, model, batch)
    assert forward.last_hidden_state.dtype == np.dtype(dtype) and len(forward.attentions) == len(maps)
    for ours, theirs in zip(forward.hidden_states + forward.attentions, hidden + maps):
        np.testing.assert_array_equal(ours, theirs)
    pooled = reference.POOLINGS[model.pooling](last, batch.attention_mask)
    np.testing.assert_array_equal(forward.embeddings, reference.l2_normalize(pooled))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reference_keeps_dtype_and_shapes(load_model, dtype):
    model = load_model("tiny", dtype=np.dtype(dtype).name)
    batch = model.tokenize(["a", "the cat sat on the mat"])
    last, hidden, maps = run(reference.forward, model, batch)
    B, T = batch.input_ids.shape
    c = model.config
    assert last.dtype == dtype and last.shape == (B, T, c.hidden_size) and hidden[-1] is last
    assert len(hidden) == c.num_hidden_layers + 1 and len(maps) == c.num_hidden_layers
    assert maps[0].shape == (B, c.num_attention_heads, T, T)
    c_args = dict(n_heads=c.num_attention_heads, eps=c.layer_norm_eps, position_offset=c.position_offset)
    assert reference.forward(batch.input_ids, batch.attention_mask, model.params, **c_args)[1:] == (None, None)


def test_the_engine_keeps_each_linear_weight_in_column_blocks_too(load_model):
    """engine_params shares the checkpoint's arrays and adds each [in, out] weight's column blocks, [out / c, in, c]
    with c = engine.BLOCK_COLUMNS, where c divides out (and is less); the reference's params have none."""
    model = load_model("minilm")                                       # hidden 384, feed-forward 1536
    c = engine.BLOCK_COLUMNS
    for plain, fast in zip(model.params["layers"], model.engine_params["layers"]):
        for group in ("attention", "ffn"):
            for name, layer in plain[group].items():
                w, blocked = layer["w"], fast[group][name]
                assert "blocks" not in layer and blocked["w"] is w and blocked["b"] is layer["b"]
                assert blocked["blocks"].shape == (w.shape[1] // c, w.shape[0], c)
                assert blocked["blocks"].flags.c_contiguous
                np.testing.assert_array_equal(np.concatenate(list(blocked["blocks"]), axis=1), w)
    tiny = load_model("tiny")                                          # hidden 32: no block divides it
    assert all("blocks" not in part for layer in tiny.engine_params["layers"]
               for group in ("attention", "ffn") for part in layer[group].values())
    assert load_model("minilm", dtype="float64").engine_params is load_model("minilm", dtype="float64").params


def test_a_text_alone_gets_the_bits_it_gets_in_a_batch(load_model):
    """A short text alone is a pass of few tokens (column blocks from 6, engine.BLOCKED_PASS), in a batch beside
    a long one a pass of many (the whole weights): the same vector, bit for bit where this BLAS rounds rows
    independently, to every length from [CLS] [SEP] alone past the blocks' range."""
    model = load_model("minilm")
    words = LONG_TEXT.split()
    texts = [" ".join(words[:n]) for n in range(0, 80, 3)]
    lengths = model.tokenize(texts).attention_mask.sum(axis=1)
    assert lengths.min() == 2 and any(n in engine.BLOCKED_PASS for n in lengths) and lengths.max() > 64
    assert any(n < engine.BLOCKED_PASS.start for n in lengths[1:])
    alone = np.stack([model.encode(text) for text in texts])
    batch = model.tokenize(texts + [LONG_TEXT])                         # one pass of them all (truncated)
    last, _, _ = run(engine.encode, model, batch)
    in_a_batch = reference.l2_normalize(reference.POOLINGS["mean"](last, batch.attention_mask))[:-1]
    assert_same_vectors(alone, in_a_batch)
