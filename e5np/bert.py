"""The BERT encoder as NumPy math: embeddings, self-attention, feed-forward, pooling.

Every function here is pure: arrays in, arrays out, no I/O and no hidden state. The weights are a
nested dict of arrays (see `e5np.checkpoint.load_weights`), linear weights stored as [in, out] so
that a linear layer reads `x @ w + b`. Shape comments use

    B  batch size          T  tokens per text (after padding)
    S  the batch's real tokens, every text's end to end (no padding), Σ of the texts' lengths
    H  hidden size (384 in e5-small)        F  feed-forward size (1536)
    N  attention heads (12)                 D  head size, H // N (32)

Between the embeddings and the pooling the model works on [S, H] rows: every step but attention
treats each token on its own, and attention slices each text's rows out.

The whole model, top to bottom, is `encode` at the end of this file.
"""

import math

import numpy as np


# --- exponentials --------------------------------------------------------------------------------
# GELU's Gaussian and softmax take e^y as EXP(y * EXP_UNITS), the scale folded into the constants they already
# multiply by. Which function is faster depends on the CPU: NumPy vectorizes exp2 only in its AVX-512 loops, where
# it is twice as fast as exp and more accurate (within 1 ulp, not 2.5): there e^y = 2^(y log2 e). Elsewhere exp2 is
# a scalar loop at twice exp's cost (AVX2: 2.5 ns an element against 1.3), and e^y is exp(y).
def exp2_is_vectorized(dispatch=None):
    """Whether NumPy's float32 exp2 runs a SIMD loop on this CPU. dispatch: numpy.lib.introspect.opt_func_info's
    answer for it (NumPy >= 2.0), which names the loop in use; "baseline" is the plain C loop."""
    if dispatch is None:
        try:
            from numpy.lib.introspect import opt_func_info
        except ImportError:                                            # NumPy 1: no way to tell, and exp is safe
            return False
        dispatch = opt_func_info(func_name="^exp2$", signature="float32")
    return not dispatch.get("exp2", {}).get("ff", {}).get("current", "baseline").startswith("baseline")


EXP, EXP_UNITS = (np.exp2, math.log2(math.e)) if exp2_is_vectorized() else (np.exp, 1.0)


# --- GELU ----------------------------------------------------------------------------------------
# GELU(x) = x Φ(x), Φ the standard normal CDF. Writing Q(z) = 1 - Φ(z) for the upper tail,
# Φ(x) = 1 - Q(|x|) when x >= 0 and Q(|x|) when x < 0, so for every x
#     GELU(x) = relu(x) - |x| Q(|x|)
# one formula for both signs, and no cancellation: |x| Q(|x|) <= relu(x) / 2 where they meet.
# NumPy has no erf or erfc. Q(|x|) = e^{-x²/2} R(s), s = a / (2 + a), a = |x|/√2, where
# R(s) ≈ erfc(a) e^{a²} / 2 is a polynomial fitted by tools/fit_gelu.py on a in [0, 6] (relative error
# within 1.3e-8 (1 + x²/2): float32's own rounding of x² in e^{-x²/2} grows like x²/2, so the fit may
# too; further out |x| Q(|x|) is far below float32's resolution of x).
NORMAL_TAIL = (0.500000006344287, -1.128380333248073, 0.8716570350396993, -0.13781769210671013,
               -0.15301548176850888, -0.003474641613179023, 0.04969099389613947, 0.023543697567671596,
               -0.022362426687394358)


def polynomial(coefficients, t):
    """c0 + c1 t + c2 t^2 + ..., by Horner's rule in t's dtype."""
    result = t * coefficients[-1]                                      # the first step's product: no fill pass
    result += coefficients[-2]
    for c in coefficients[-3::-1]:
        result *= t
        result += c
    return result


def normal_tail(x):
    """Q(x) = P(Z > x) = erfc(x/√2) / 2 for x >= 0, in float32.

    Relative error within 4 ulps * (1 + x²/2): the x²/2 part is float32 rounding x² inside e^{-x²/2}.
    """
    s = x + 2 * math.sqrt(2)
    np.divide(x, s, out=s)                                             # a / (2 + a) with a = x/√2, in [0, 1)
    with np.errstate(over="ignore"):                                   # x² = inf past 1.8e19; 2^-inf = 0 is right
        gaussian = x * (-0.5 * EXP_UNITS)
        gaussian *= x                                                  # -x²/2, in EXP's units
        EXP(gaussian, out=gaussian)                                    # e^{-x²/2}
    gaussian *= polynomial(NORMAL_TAIL, s)
    return gaussian                                                    # e^{-x²/2} R(s)


_math_erf = np.frompyfunc(math.erf, 1, 1)


def erf(x):
    """The error function of the C library, element by element, in float64 (slow; ground truth)."""
    return _math_erf(np.asarray(x, np.float64)).astype(np.float64)


def gelu(x):
    """Exact GELU, x Φ(x) (BERT's "gelu"), to the precision of x's dtype."""
    if x.dtype == np.float64:
        return x * 0.5 * (1 + erf(x * math.sqrt(0.5)))                 # the definition, with libm's erf
    magnitude = np.abs(x)
    tail = normal_tail(magnitude)                                      # Q(|x|), a new array: scaled in place
    tail *= magnitude                                                  # |x| Q(|x|)
    relu = np.add(x, magnitude, out=magnitude)                         # magnitude's last use: reuse its memory
    relu *= 0.5                                                        # (x + |x|) / 2 = relu(x), exactly
    relu -= tail
    return relu                                                        # relu(x) - |x| Q(|x|)


# --- the building blocks -------------------------------------------------------------------------
def in_blocks(fn, *arrays, out=None, block_elements=262144):
    """fn applied to the arrays' rows a few at a time: the same numbers as fn(*arrays), several times faster.

    fn must treat each row (last axis) on its own: elementwise (GELU) or row-wise (softmax, LayerNorm).
    A chain of NumPy ufuncs over a whole [S, F] array streams every temporary through main memory;
    on 256K-element blocks (1 MB) the temporaries stay in the L3 cache. Not smaller: every NumPy call hands
    the GIL over, and worker threads wait for each other at those hand-overs (measured here: two
    workers ran GELU 1.4x as fast as one on 64K-element blocks, 1.8x on 256K). The arrays share their
    leading axes.
    out (C-contiguous, the result's shape) may be one of the arrays: each block is read before its
    result is written over it.
    """
    rows = [a.reshape(-1, a.shape[-1]) for a in arrays]                # [..., C] -> [R, C]
    step = max(1, block_elements // max(r.shape[-1] for r in rows))
    result = None if out is None else out.reshape(-1, out.shape[-1])
    for start in range(0, len(rows[0]), step):
        block = fn(*(r[start:start + step] for r in rows))
        if result is None:
            result = np.empty((len(rows[0]), block.shape[-1]), block.dtype)
        result[start:start + step] = block
    return result.reshape(*arrays[0].shape[:-1], result.shape[-1])


def linear(x, w, b=None):
    y = x @ w                                                          # [S, in] @ [in, out] -> [S, out]
    if b is not None:
        y += b                                                         # in place: y is ours, saves a copy
    return y


def layer_norm(x, g, b, eps):
    centered = x - x.mean(axis=-1, keepdims=True)                      # [S, H], each token's mean removed
    variance = np.square(centered).mean(axis=-1, keepdims=True)        # [S, H] -> [S, 1]
    centered /= np.sqrt(variance + eps)                                # in place from here: centered is ours
    centered *= g
    centered += b
    return centered                                                    # [S, H]


def row_max(x):
    """x.max(axis=-1, keepdims=True), exactly. NumPy's reduction along rows pays a fixed cost per row (~8 ns
    here), more than the arithmetic when rows are short, as a 13-token query's scores are: short rows are
    reduced one column at a time instead, each step a vectorized maximum across all the rows."""
    if x.shape[-1] > 24:                                               # past ~24 columns the row reduction wins
        return x.max(axis=-1, keepdims=True)
    peak = x[..., :1].copy()                                           # [..., 1]
    for j in range(1, x.shape[-1]):
        np.maximum(peak, x[..., j:j + 1], out=peak)
    return peak


def softmax_in_exp_units(x):
    """EXP(x) / Σ EXP(x) along the last axis: the softmax of x / EXP_UNITS. Attention measures its scores in
    EXP's units (see EXP), the scale folded into its 1/√D."""
    e = x - row_max(x)                                                 # shift for overflow safety
    EXP(e, out=e)                                                      # in place: e is ours
    e /= e.sum(axis=-1, keepdims=True)
    return e


def embed(token_ids, positions, word, position, token_type, norm, eps):
    x = word[token_ids] + token_type[0]                                # [S] -> [S, H], segment A
    x = x + position[positions]                                        # absolute positions
    return layer_norm(x, **norm, eps=eps)                              # [S, H]


def equal_length_runs(lengths, cost, budget):
    """(start, stop, L): runs of consecutive texts of equal length L, each run costing at most budget
    (cost(L) per text) unless a single text costs more."""
    start = 0
    for stop in range(1, len(lengths) + 1):
        L = int(lengths[start])
        if stop == len(lengths) or lengths[stop] != L or (stop + 1 - start) * cost(L) > budget:
            yield start, stop, L
            start = stop


SCORES_PER_STEP = 2**15  # 128 KB of float32 scores: they stay in cache from one matmul through softmax to the next


def self_attention(x, lengths, query, key, value, output, n_heads, keep_probs=False):
    """Multi-head scaled dot-product self-attention of each text over its own tokens.

    x holds the texts' tokens end to end, no padding: text b is lengths[b] rows, after those of texts
    0..b-1. transformers pads texts to a common length and adds -inf to the scores of padded keys;
    attending within each text's own rows gives the same result without computing the padded part.
    The [L, L] score matrices are made a few at a time: several heads (and several texts of equal
    length: batches are sorted by length) per step when they are small, one head per step when they
    are large. probs, if kept: [B, N, longest, longest], 0 past each text's end.
    """
    assert lengths.sum() == len(x), f"lengths add up to {lengths.sum()} tokens, x has {len(x)} rows"
    D = x.shape[-1] // n_heads
    q = linear(x, **query)                                             # [S, H]
    k = linear(x, **key)                                               # [S, H]
    v = linear(x, **value)                                             # [S, H]
    context = np.empty_like(q)                                         # [S, H]: every row is some text's
    first_row = np.concatenate([[0], np.cumsum(lengths)])              # text b is rows first_row[b]:first_row[b+1]
    longest = int(lengths.max(initial=0))
    probs = np.zeros((len(lengths), n_heads, longest, longest), x.dtype) if keep_probs else None
    scale = EXP_UNITS / math.sqrt(D)                                   # q·k/√D, in EXP's units
    for start, stop, L in equal_length_runs(lengths, cost=lambda L: n_heads * L * L, budget=SCORES_PER_STEP):
        rows = slice(first_row[start], first_row[stop])                # n texts of L tokens, end to end

        def split_heads(y):  # [n*L, H] -> [n, N, L, D], a view: BLAS reads each head's [L, D] rows H apart
            return y[rows].reshape(stop - start, L, n_heads, D).transpose(0, 2, 1, 3)  # (copies cost more)

        q_run, k_run, v_run, context_run = split_heads(q), split_heads(k), split_heads(v), split_heads(context)
        heads_per_step = max(1, SCORES_PER_STEP // ((stop - start) * L * L))
        for first in range(0, n_heads, heads_per_step):
            heads = slice(first, first + heads_per_step)               # h heads
            scores = q_run[:, heads] @ k_run[:, heads].swapaxes(-1, -2)  # [n, h, L, D] @ [n, h, D, L] -> [n, h, L, L]
            scores *= scale
            p = softmax_in_exp_units(scores)                           # each query's weights over keys sum to 1
            np.matmul(p, v_run[:, heads], out=context_run[:, heads])   # [n, h, L, L] @ [n, h, L, D], into context
            if keep_probs:
                probs[start:stop, heads, :L, :L] = p
    return linear(context, **output), probs                            # [S, H], probs or None


def feed_forward(x, up, down):
    h = linear(x, up["w"])                                             # [S, H] -> [S, F]
    def bias_gelu(rows):                                               # rows of h: ours to add to in place
        rows += up["b"]
        return gelu(rows)
    h = in_blocks(bias_gelu, h, out=h)                                 # bias and GELU while the rows are in cache
    return linear(h, **down)                                           # [S, F] -> [S, H]


def encoder_layer(x, lengths, layer, n_heads, eps, keep_probs=False):
    """One post-LayerNorm transformer block: attention then feed-forward, each with a residual."""
    def add_and_norm(residual, update, norm):                          # LayerNorm(residual + update), over update
        return in_blocks(lambda r, u: layer_norm(r + u, **norm, eps=eps), residual, update, out=update)

    attended, probs = self_attention(x, lengths, **layer["attention"], n_heads=n_heads, keep_probs=keep_probs)
    x = add_and_norm(x, attended, layer["attention_norm"])             # [S, H]
    x = add_and_norm(x, feed_forward(x, **layer["ffn"]), layer["ffn_norm"])  # [S, H]
    return x, probs


# --- pooling ------------------------------------------------------------------------------------
def mean_pool(hidden, attention_mask):
    mask = attention_mask[:, :, None].astype(hidden.dtype)             # [B, T] -> [B, T, 1]
    summed = (hidden * mask).sum(axis=1)                               # [B, T, H] -> [B, H], real tokens only
    return summed / mask.sum(axis=1)                                   # [B, H] / [B, 1]


def cls_pool(hidden, attention_mask):
    return hidden[:, 0]                                                # [B, T, H] -> [B, H], the [CLS] token


def max_pool(hidden, attention_mask):
    real = attention_mask[:, :, None] > 0                              # [B, T, 1]
    return np.where(real, hidden, -1e9).max(axis=1).astype(hidden.dtype)  # [B, T, H] -> [B, H]


def mean_sqrt_len_pool(hidden, attention_mask):
    mask = attention_mask[:, :, None].astype(hidden.dtype)             # [B, T, 1]
    return (hidden * mask).sum(axis=1) / np.sqrt(mask.sum(axis=1))     # sum / sqrt(number of real tokens)


POOLINGS = {"mean": mean_pool, "cls": cls_pool, "max": max_pool, "mean_sqrt_len": mean_sqrt_len_pool}


def l2_normalize(x, eps=1e-12):
    norm = np.sqrt(np.square(x).sum(axis=-1, keepdims=True))           # [B, H] -> [B, 1]
    return x / np.maximum(norm, eps)                                   # unit length rows


# --- the whole model -----------------------------------------------------------------------------
def encode(input_ids, attention_mask, params, n_heads, eps, position_offset=0, keep_hidden=False,
           keep_attention=False):
    """Token ids -> last hidden state [B, T, H]; optionally every layer's output and attention.

    Returns (last_hidden, hidden_states, attentions): hidden_states is the embedding output followed
    by each layer's output (num_layers + 1 arrays), attentions each layer's [B, N, T, T]
    probabilities; each is None unless asked for. Padding positions hold 0: only the real tokens
    (attention_mask 1) are computed, packed end to end, so no work goes to padding. Position ids are
    column numbers plus position_offset, as transformers' BERT has them for any padding (RoBERTa counts
    real tokens instead: the same for right padding, the only kind e5np makes).
    """
    B, T = input_ids.shape
    real = attention_mask.astype(bool)                                 # [B, T]
    lengths = real.sum(axis=1)                                         # [B] real tokens per text
    positions = np.broadcast_to(np.arange(T) + position_offset, (B, T))  # RoBERTa's positions start past 0

    def unpack(tokens):                                                # [S, H] -> [B, T, H], padding 0
        padded = np.zeros((B, T, tokens.shape[-1]), tokens.dtype)
        padded[real] = tokens
        return padded

    def unpack_probs(probs):                                           # [B, N, L, L] -> [B, N, T, T], padding 0
        padded = np.zeros((B, n_heads, T, T), probs.dtype)
        for b, L in enumerate(lengths):
            where = np.flatnonzero(real[b])                            # text b's token positions
            padded[b][:, where[:, None], where] = probs[b, :, :L, :L]
        return padded

    x = embed(input_ids[real], positions[real], **params["embeddings"], eps=eps)  # [B, T] -> [S, H]
    hidden_states = [unpack(x)] if keep_hidden else None
    attentions = [] if keep_attention else None
    for layer in params["layers"]:
        x, probs = encoder_layer(x, lengths, layer, n_heads, eps, keep_attention)  # [S, H] -> [S, H]
        if keep_hidden:
            hidden_states.append(unpack(x))
        if keep_attention:
            attentions.append(unpack_probs(probs))
    last = hidden_states[-1] if keep_hidden else unpack(x)
    return last, hidden_states, attentions
