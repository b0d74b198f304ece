"""The fast engine's building blocks (e5np.engine, e5np.numerics) against float64 truths: written out here, or
e5np.reference's (the model as the paper writes it, which shares no code with the engine but float64 GELU)."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from e5np import engine, numerics, reference

rng = np.random.RandomState(0)


def erf_reference(x):
    return np.array([math.erf(v) for v in np.asarray(x, dtype=np.float64).ravel()]).reshape(np.shape(x))


def test_normal_tail_float32_relative_error(exponential):
    # Q(x) = erfc(x/√2)/2. Its only rounding that grows with x is x² inside e^{-x²/2}: a half-ulp
    # error in x² is a relative error of x²/2 ulps in the exponential. Bound: 4 ulps * (1 + x²/2).
    x = np.concatenate([np.linspace(0, 8.485, 600_001), np.geomspace(1e-38, 1, 2000), [0.0, 1.0, 4.0]])
    x = x.astype(np.float32)
    x64 = x.astype(np.float64)
    want = np.array([math.erfc(v / math.sqrt(2)) / 2 for v in x64])
    got = numerics.normal_tail(x)
    assert got.dtype == np.float32
    relative = np.abs(got.astype(np.float64) - want) / want
    assert (relative / (1 + x64 ** 2 / 2)).max() <= 4 * 2.0**-24
    assert got[x == 0].tolist() == [0.5] * int((x == 0).sum())


def test_normal_tail_coefficients_are_what_tools_fit_gelu_fits():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))  # as test_families imports a tool
    from fit_gelu import fit

    coefficients, error = fit()
    np.testing.assert_allclose(numerics.NORMAL_TAIL, coefficients, rtol=1e-6)
    assert error <= 1.3e-8


def test_normal_tail_far_out_is_zero_not_nan(exponential):
    assert numerics.normal_tail(np.float32([40, 1e6, 1e18])).tolist() == [0, 0, 0]
    assert np.isnan(numerics.normal_tail(np.float32([np.nan]))).all()


def test_erf_float64_is_the_c_library_erf():
    x = np.concatenate([rng.standard_normal(10_000) * 3, [0.0, 1e-300, 6.0, -27.0]])
    np.testing.assert_array_equal(reference.erf(x), erf_reference(x))


def test_gelu_matches_float64_definition(exponential):
    x = (rng.standard_normal(100_000) * 4).astype(np.float32)
    x64 = x.astype(np.float64)
    want = x64 * 0.5 * (1 + erf_reference(x64 / math.sqrt(2)))
    got = numerics.gelu(x)
    assert got.dtype == np.float32
    error_in_ulps_of_x = np.abs(got - want) / np.spacing(np.abs(x))
    assert error_in_ulps_of_x.max() <= 2


def test_gelu_negative_side_is_relatively_accurate(exponential):
    # relu(x) - |x| Q(|x|) has no cancellation: small negative outputs keep their relative precision
    # (the textbook x/2 (1 + erf(x/√2)) loses it as erf approaches -1).
    x = -np.linspace(1e-3, 8, 200_001).astype(np.float32)
    x64 = x.astype(np.float64)
    want = np.array([v * math.erfc(-v / math.sqrt(2)) / 2 for v in x64])
    relative = np.abs(numerics.gelu(x).astype(np.float64) - want) / np.abs(want)
    assert (relative / (1 + x64 ** 2 / 2)).max() <= 4 * 2.0**-24


def test_gelu_edges(exponential):
    x = np.float32([0.0, -0.0, 1e-45, -1e-45, 1e30, -1e30, 40, -40])
    np.testing.assert_array_equal(numerics.gelu(x), np.float32([0, 0, 1e-45, 0, 1e30, 0, 40, 0]))
    assert np.isnan(numerics.gelu(np.float32([np.nan]))).all()


def test_layer_norm_matches_float64():
    x = (rng.standard_normal((3, 5, 384)) * 3 + 1).astype(np.float32)
    g, b = rng.standard_normal(384).astype(np.float32), rng.standard_normal(384).astype(np.float32)
    x64 = x.astype(np.float64)
    want = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-12) * g + b
    got = engine.layer_norm(x, g, b, eps=1e-12)
    assert got.dtype == np.float32 and np.abs(got - want).max() <= 5e-6


def test_layer_norm_eps_matters_for_constant_rows():
    x = np.full((1, 1, 8), 3.0, dtype=np.float32)
    out = engine.layer_norm(x, np.ones(8, np.float32), np.zeros(8, np.float32), eps=1e-12)
    assert np.isfinite(out).all() and (out == 0).all()


def test_softmax_in_exp_units_matches_float64_and_survives_huge_logits(exponential):
    x = (rng.standard_normal((4, 7, 33)) * 30).astype(np.float32)
    x64 = x.astype(np.float64) / numerics.EXP_UNITS                        # the scores x measures, in natural units
    want = np.exp(x64 - x64.max(-1, keepdims=True))                    # e^x / Σ e^x
    want /= want.sum(-1, keepdims=True)
    got = numerics.softmax_in_exp_units(x)
    assert got.dtype == np.float32 and np.abs(got - want).max() <= 1e-6
    big = np.float32([[1e30, 0.0, np.finfo(np.float32).min], [np.finfo(np.float32).max, 0.0, 0.0]])
    np.testing.assert_allclose(numerics.softmax_in_exp_units(big), [[1, 0, 0], [1, 0, 0]])


@pytest.mark.parametrize("L", [1, 2, 13, 24, 25, 40])  # row_max's two ways: column by column to 24, then by rows
def test_softmax_survives_a_huge_score_in_any_column(L):
    # Softmax is safe from overflow only if the max it subtracts is the true one: a max that missed a column
    # (the last, say) gives the same weights for ordinary scores, and inf / inf = nan for a huge one there.
    scores = rng.standard_normal((2, 3, L, L)).astype(np.float32)     # [n, h, L, L], attention's shape
    for column in range(L):
        huge = scores.copy()
        huge[..., column] = 1e30
        np.testing.assert_array_equal(numerics.row_max(huge), huge.max(axis=-1, keepdims=True))
        np.testing.assert_array_equal(numerics.softmax_in_exp_units(huge),
                                      np.broadcast_to(np.eye(L, dtype=np.float32)[column], huge.shape))


@pytest.mark.parametrize("current, vectorized", [("X86_V4", True), ("AVX512_SKX", True), ("baseline(X86_V2)", False),
                                                 ("baseline(SSE SSE2 SSE3)", False)])
def test_exp2_is_taken_where_numpy_vectorizes_it(current, vectorized):
    """NumPy's introspection names the loop exp2 runs (NumPy 2.4: X86_V4, NumPy 2.0-2.3: AVX512_SKX, for its SVML
    loop on AVX-512 CPUs; baseline for the scalar C loop, which runs at half exp's speed)."""
    dispatch = {"exp2": {"ff": {"current": current, "available": f"{current} baseline(X86_V2)"}}}
    assert numerics.exp2_is_vectorized(dispatch) is vectorized
    assert numerics.exp2_is_vectorized({}) is False                        # a NumPy that does not say: exp


def test_the_exponential_is_the_one_this_numpy_vectorizes():
    try:
        from numpy.lib.introspect import opt_func_info
    except ImportError:
        assert numerics.EXP is np.exp and numerics.EXP_UNITS == 1.0
        return
    current = opt_func_info(func_name="^exp2$", signature="float32")["exp2"]["ff"]["current"]
    vectorized = not current.startswith("baseline")
    want = (np.exp2, math.log2(math.e)) if vectorized else (np.exp, 1.0)
    assert (numerics.EXP, numerics.EXP_UNITS) == want, current


def small_params(H=16, F=24, L=2, V=50, P=20, seed=1):
    r = np.random.RandomState(seed)

    def lin(i, o):
        return {"w": (r.standard_normal((i, o)) * 0.3).astype(np.float32), "b": (r.standard_normal(o) * 0.1).astype(np.float32)}

    def norm():
        return {"g": (1 + 0.1 * r.standard_normal(H)).astype(np.float32), "b": (0.1 * r.standard_normal(H)).astype(np.float32)}

    return {
        "embeddings": {"word": r.standard_normal((V, H)).astype(np.float32),
                       "position": r.standard_normal((P, H)).astype(np.float32),
                       "token_type": r.standard_normal((2, H)).astype(np.float32), "norm": norm()},
        "layers": [{"attention": {"query": lin(H, H), "key": lin(H, H), "value": lin(H, H), "output": lin(H, H)},
                    "attention_norm": norm(), "ffn": {"up": lin(H, F), "down": lin(F, H)}, "ffn_norm": norm()}
                   for _ in range(L)],
    }


def attention_float64(x, layer, n_heads):
    """Self-attention of one unpadded text [T, H] in float64: the reference's, softmax(q·kᵀ/√D)·v head by head."""
    a = {k: {n: v.astype(np.float64) for n, v in p.items()} for k, p in layer["attention"].items()}
    no_mask = np.zeros((1, 1, 1, len(x)))                              # every key is real
    return reference.self_attention(x[None], no_mask, **a, n_heads=n_heads)[0][0]


def test_self_attention_matches_the_float64_reference():
    params = small_params()
    x = np.random.RandomState(2).standard_normal((4, 16)).astype(np.float32)  # one text of 4 tokens
    got, probs = engine.self_attention(x, np.array([4]), **params["layers"][0]["attention"], n_heads=4,
                                     keep_probs=True)
    want = attention_float64(x.astype(np.float64), params["layers"][0], 4)
    assert np.abs(got - want).max() <= 1e-5
    assert probs.shape == (1, 4, 4, 4)
    np.testing.assert_allclose(probs.sum(-1), 1, atol=1e-6)  # each query: a distribution over keys
    assert engine.self_attention(x, np.array([4]), **params["layers"][0]["attention"], n_heads=4)[1] is None


def test_self_attention_keeps_packed_texts_apart():
    params = small_params()
    layer = params["layers"][0]
    padded = np.random.RandomState(3).standard_normal((6, 6, 16)).astype(np.float32)
    lengths = np.array([4, 4, 4, 6, 6, 2])                    # runs of equal length, and a length seen once
    x = np.concatenate([padded[b, :L] for b, L in enumerate(lengths)])     # [S, H], texts end to end
    got, probs = engine.self_attention(x, lengths, **layer["attention"], n_heads=4, keep_probs=True)
    assert got.shape == x.shape and probs.shape == (6, 4, 6, 6)
    first = np.concatenate([[0], np.cumsum(lengths)])
    for b, L in enumerate(lengths):
        want = attention_float64(padded[b, :L].astype(np.float64), layer, 4)
        assert np.abs(got[first[b]:first[b + 1]] - want).max() <= 1e-5, f"text {b}"
        np.testing.assert_allclose(probs[b, :, :L, :L].sum(-1), 1, atol=1e-6)
        assert (probs[b, :, :, L:] == 0).all() and (probs[b, :, L:] == 0).all()


def test_self_attention_rejects_lengths_that_do_not_cover_x():
    params = small_params()
    x = np.zeros((5, 16), np.float32)
    with pytest.raises(AssertionError, match="lengths add up to 4 tokens, x has 5 rows"):
        engine.self_attention(x, np.array([2, 2]), **params["layers"][0]["attention"], n_heads=4)


def test_equal_length_runs_respect_the_budget():
    runs = list(engine.equal_length_runs(np.array([2, 2, 2, 3, 3, 9]), cost=lambda L: L * L, budget=10))
    assert runs == [(0, 2, 2), (2, 3, 2), (3, 4, 3), (4, 5, 3), (5, 6, 9)]  # 9*9 alone exceeds it: still one run
    assert list(engine.equal_length_runs(np.array([5]), cost=lambda L: 1, budget=10)) == [(0, 1, 5)]
    assert list(engine.equal_length_runs(np.array([1, 1, 1]), cost=lambda L: 1, budget=10)) == [(0, 3, 1)]


@pytest.mark.parametrize("block_elements", [1, 7, 64, 65536])
def test_in_blocks_gives_the_same_numbers_as_one_call(block_elements):
    r = np.random.RandomState(4)
    x = (r.standard_normal((3, 5, 16)) * 3).astype(np.float32)
    y = r.standard_normal((3, 5, 16)).astype(np.float32)
    g, b = r.standard_normal(16).astype(np.float32), r.standard_normal(16).astype(np.float32)
    np.testing.assert_array_equal(engine.in_blocks(numerics.gelu, x, block_elements=block_elements), numerics.gelu(x))
    np.testing.assert_array_equal(engine.in_blocks(numerics.softmax_in_exp_units, x, block_elements=block_elements),
                                  numerics.softmax_in_exp_units(x))

    def add_norm(p, q):
        return engine.layer_norm(p + q, g, b, eps=1e-12)

    want = add_norm(x, y)
    got = engine.in_blocks(add_norm, x, y.copy(), block_elements=block_elements)
    np.testing.assert_array_equal(got, want)
    target = y.copy()                                         # out= one of the inputs: written block by block
    assert engine.in_blocks(add_norm, x, target, out=target, block_elements=block_elements) is not None
    np.testing.assert_array_equal(target, want)
    widened = engine.in_blocks(lambda rows: np.concatenate([rows, rows], -1), x, block_elements=block_elements)
    assert widened.shape == (3, 5, 32)                        # fn may change the row width


def test_padding_does_not_change_real_tokens_and_reads_as_zero():
    params = small_params()
    ids = np.array([[2, 7, 9, 11, 3]])
    alone, _, alone_probs = engine.encode(ids, np.ones_like(ids), params, n_heads=4, eps=1e-12, keep_attention=True)
    padded_ids = np.array([[2, 7, 9, 11, 3, 0, 0, 0], [2, 5, 5, 5, 5, 5, 5, 3]])
    mask = np.array([[1, 1, 1, 1, 1, 0, 0, 0], [1] * 8])
    padded, hidden, probs = engine.encode(padded_ids, mask, params, n_heads=4, eps=1e-12, keep_hidden=True,
                                        keep_attention=True)
    assert np.abs(padded[0, :5] - alone[0]).max() <= 1e-5
    assert all((h[0, 5:] == 0).all() for h in hidden)        # padding is not computed: it reads as 0
    assert np.abs(probs[0][0, :, :5, :5] - alone_probs[0][0]).max() <= 1e-6
    assert (probs[0][0, :, 5:] == 0).all() and (probs[0][0, :, :, 5:] == 0).all()


def test_left_padding_keeps_column_positions_as_transformers_does():
    params = small_params()
    ids = np.array([[0, 0, 2, 7, 9, 3], [2, 5, 5, 5, 5, 3]])     # text 0 left-padded
    mask = np.array([[0, 0, 1, 1, 1, 1], [1] * 6])
    last, _, probs = engine.encode(ids, mask, params, n_heads=4, eps=1e-12, keep_attention=True)
    # BERT's position ids are column numbers whatever the padding: text 0 is the text alone, positions from 2
    alone, _, alone_probs = engine.encode(ids[:1, 2:], mask[:1, 2:], params, n_heads=4, eps=1e-12, position_offset=2,
                                        keep_attention=True)
    assert (last[0, :2] == 0).all() and np.abs(last[0, 2:] - alone[0]).max() <= 1e-5
    assert np.abs(probs[0][0, :, 2:, 2:] - alone_probs[0][0]).max() <= 1e-6
    assert (probs[0][0, :, :2] == 0).all() and (probs[0][0, :, :, :2] == 0).all()


def test_encode_keeps_every_layer_when_asked():
    params = small_params()
    ids = np.array([[2, 7, 9, 3]])
    last, hidden, attentions = engine.encode(ids, np.ones_like(ids), params, n_heads=4, eps=1e-12,
                                           keep_hidden=True, keep_attention=True)
    assert len(hidden) == 3 and len(attentions) == 2
    assert hidden[-1] is last and attentions[0].shape == (1, 4, 4, 4)
    assert engine.encode(ids, np.ones_like(ids), params, n_heads=4, eps=1e-12)[1:] == (None, None)


def test_mean_pool_ignores_padding_and_l2_normalize_handles_zero():
    hidden = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    mask = np.array([[1, 1, 0], [1, 1, 1]])
    np.testing.assert_array_equal(reference.mean_pool(hidden, mask), [hidden[0, :2].mean(0), hidden[1].mean(0)])
    out = reference.l2_normalize(np.array([[3, 4], [0, 0]], dtype=np.float32))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0, 0]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ops_keep_dtype(dtype):
    params = small_params()
    params = {"embeddings": {k: (v.astype(dtype) if isinstance(v, np.ndarray) else {n: a.astype(dtype) for n, a in v.items()})
                             for k, v in params["embeddings"].items()},
              "layers": [{k: {n: ({m: a.astype(dtype) for m, a in p.items()} if isinstance(p, dict) else p.astype(dtype))
                              for n, p in v.items()} for k, v in layer.items()} for layer in params["layers"]]}
    ids = np.array([[2, 7, 9, 3]])
    last, _, _ = engine.encode(ids, np.ones_like(ids), params, n_heads=4, eps=1e-12)
    assert last.dtype == dtype


@pytest.mark.parametrize("rows", [engine.BLOCKED_PASS.start - 1, engine.BLOCKED_PASS.start, 12,
                                  engine.BLOCKED_PASS.stop - 1, engine.BLOCKED_PASS.stop])
def test_linear_multiplies_by_the_column_blocks_on_few_rows_only(rows):
    """Within BLOCKED_PASS linear reads the blocks, outside it w: here they hold different matrices, to tell."""
    x = rng.standard_normal((rows, 384)).astype(np.float32)
    w, other = (rng.standard_normal((384, 1536)).astype(np.float32) for _ in range(2))
    b = rng.standard_normal(1536).astype(np.float32)
    blocks = engine.with_blocks({"layers": [{"attention": {}, "ffn": {"up": {"w": other, "b": b}}}]})
    blocks = blocks["layers"][0]["ffn"]["up"]["blocks"]                 # other's, [8, 384, 192]
    assert blocks.shape == (1536 // engine.BLOCK_COLUMNS, 384, engine.BLOCK_COLUMNS)
    y = engine.linear(x, w, b, blocks=blocks)
    used = other if rows in engine.BLOCKED_PASS else w
    exact = x.astype(np.float64) @ used + b
    assert y.dtype == np.float32 and y.flags.c_contiguous and y.shape == (rows, 1536)
    assert np.abs(y - exact).max() <= 1e-4 * np.abs(exact).max()       # float32 sums of 384 products
