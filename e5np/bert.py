"""The BERT encoder as NumPy math: embeddings, self-attention, feed-forward, pooling.

Every function here is pure: arrays in, arrays out, no I/O and no hidden state. The weights are a
nested dict of arrays (see `e5np.checkpoint.load_weights`), linear weights stored as [in, out] so
that a linear layer reads `x @ w + b`. Shape comments use

    B  batch size          T  tokens per text (after padding)
    H  hidden size (384 in e5-small)        F  feed-forward size (1536)
    N  attention heads (12)                 D  head size, H // N (32)

The whole model, top to bottom, is `encode` at the end of this file.
"""

import math

import numpy as np

# --- erf and GELU --------------------------------------------------------------------------------
# NumPy has no erf. In float32 we evaluate two polynomial fits made by tools/fit_erf.py (least
# squares on relative error against math.erf); measured error <= 2.7 float32 ulps over the line.
ERF_SMALL = (1.128379166509964, -0.3761262884283033, 0.11283612422318223, -0.026854808267527508,
             0.0051900530189001376, -0.0008024348790295686, 7.898191134634727e-05)
ERF_LARGE = (-1.747788565090705e-05, 0.28242407321437907, 0.27944917988084494, 0.2584056361753531,
             0.14786816066333916, 0.11620654565476934, 0.004984889959139878, -0.11655589356745849,
             -0.04898993611498917, 0.11734923161905016, -0.0411886200648701)
ERF_SATURATES_AT = 4.0  # 1 - erf(4) = 1.5e-8, below float32's spacing just under 1


def polynomial(coefficients, t):
    """c0 + c1 t + c2 t^2 + ..., by Horner's rule in t's dtype."""
    result = np.full_like(t, coefficients[-1])
    for c in coefficients[-2::-1]:
        result *= t
        result += c
    return result


_math_erf = np.frompyfunc(math.erf, 1, 1)


def erf(x):
    """The error function, accurate to the precision of x's dtype."""
    if x.dtype == np.float64:
        # Ground-truth mode: the C library's erf, element by element. Slow, exact to ~1 ulp.
        return _math_erf(x).astype(np.float64)
    a = np.minimum(np.abs(x), np.float32(ERF_SATURATES_AT))
    c = np.clip(x, -1, 1)                                             # this branch is only kept for |x| <= 1
    near_zero = c * polynomial(ERF_SMALL, c * c)                      # erf(x) = x P(x^2)
    tail = 1 - np.exp(-a * a) * polynomial(ERF_LARGE, 1 / (1 + a / 2))  # erf(a) = 1 - e^{-a^2} R(t)
    return np.where(a <= 1, near_zero, np.copysign(tail, x))


def gelu(x):
    """Exact GELU, x * Phi(x), Phi the standard normal CDF (BERT's "gelu")."""
    return x * 0.5 * (1 + erf(x * np.asarray(math.sqrt(0.5), x.dtype)))


# --- the building blocks -------------------------------------------------------------------------
def in_blocks(fn, x, block_elements=32768):
    """fn applied to x's rows a few at a time: the same numbers as fn(x), several times faster.

    fn must treat each row (last axis) on its own: elementwise (GELU) or row-wise (softmax, LayerNorm).
    A chain of NumPy ufuncs over a whole [B, T, F] array streams every temporary through main memory;
    on 32K-element blocks (128 KB) the temporaries stay in cache.
    """
    rows = x.reshape(-1, x.shape[-1])                                  # [..., C] -> [R, C]
    step = max(1, block_elements // x.shape[-1])
    out = np.empty_like(rows)
    for start in range(0, len(rows), step):
        out[start:start + step] = fn(rows[start:start + step])
    return out.reshape(x.shape)


def linear(x, w, b):
    # One [B*T, in] @ [in, out] product: given [B, T, in], NumPy's matmul would run B small ones.
    y = x.reshape(-1, x.shape[-1]) @ w                                 # [B*T, in] -> [B*T, out]
    y += b                                                             # in place: y is ours, saves a copy
    return y.reshape(*x.shape[:-1], w.shape[-1])                       # [B, T, out]


def layer_norm(x, g, b, eps):
    mean = x.mean(axis=-1, keepdims=True)                              # [B, T, H] -> [B, T, 1]
    variance = np.square(x - mean).mean(axis=-1, keepdims=True)        # [B, T, H] -> [B, T, 1]
    return (x - mean) / np.sqrt(variance + eps) * g + b                # [B, T, H]


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))                      # shift for overflow safety
    return e / e.sum(axis=-1, keepdims=True)


def embed(input_ids, word, position, token_type, norm, eps, position_offset=0):
    T = input_ids.shape[1]
    x = word[input_ids] + token_type[0]                                # [B, T] -> [B, T, H], segment A
    x = x + position[position_offset:position_offset + T]              # absolute positions (RoBERTa's start past 0)
    return layer_norm(x, **norm, eps=eps)                              # [B, T, H]


def self_attention(x, lengths, query, key, value, output, n_heads, keep_probs=False):
    """Multi-head scaled dot-product self-attention of each text over its own real tokens.

    Texts in a batch are right-padded to T tokens; text b has lengths[b] real ones. transformers adds
    -inf to the scores of padded keys; slicing each text to its real tokens gives the same result
    without computing the padded part, and keeps the [N, L, L] score matrix to one text at a time.
    """
    B, T, H = x.shape
    D = H // n_heads

    def split_heads(y):
        return y.reshape(B, T, n_heads, D).transpose(0, 2, 1, 3)        # [B, T, H] -> [B, N, T, D]

    q = split_heads(linear(x, **query))                                # [B, N, T, D]
    k = split_heads(linear(x, **key))                                  # [B, N, T, D]
    v = split_heads(linear(x, **value))                                # [B, N, T, D]
    context = np.zeros_like(q)                                         # padded rows stay 0
    probs = np.zeros((B, n_heads, T, T), x.dtype) if keep_probs else None
    for b, L in enumerate(lengths):
        scores = q[b, :, :L] @ k[b, :, :L].transpose(0, 2, 1)          # [N, L, D] @ [N, D, L] -> [N, L, L]
        scores *= D**-0.5                                              # in place: the largest array here
        p = in_blocks(softmax, scores)                                 # each query's weights over keys sum to 1
        context[b, :, :L] = p @ v[b, :, :L]                            # [N, L, L] @ [N, L, D] -> [N, L, D]
        if keep_probs:
            probs[b, :, :L, :L] = p
    context = context.transpose(0, 2, 1, 3).reshape(B, T, H)           # [B, N, T, D] -> [B, T, H]
    return linear(context, **output), probs                           # [B, T, H], [B, N, T, T] or None


def feed_forward(x, up, down):
    return linear(in_blocks(gelu, linear(x, **up)), **down)            # [B, T, H] -> [B, T, F] -> [B, T, H]


def encoder_layer(x, lengths, layer, n_heads, eps, keep_probs=False):
    """One post-LayerNorm transformer block: attention then feed-forward, each with a residual."""
    attended, probs = self_attention(x, lengths, **layer["attention"], n_heads=n_heads, keep_probs=keep_probs)
    x = layer_norm(x + attended, **layer["attention_norm"], eps=eps)   # [B, T, H]
    x = layer_norm(x + feed_forward(x, **layer["ffn"]), **layer["ffn_norm"], eps=eps)  # [B, T, H]
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
    probabilities; each is None unless asked for.
    """
    x = embed(input_ids, **params["embeddings"], eps=eps, position_offset=position_offset)  # [B, T] -> [B, T, H]
    lengths = attention_mask.sum(axis=1)                               # [B] real tokens per text (right-padded)
    hidden_states = [x] if keep_hidden else None
    attentions = [] if keep_attention else None
    for layer in params["layers"]:
        x, probs = encoder_layer(x, lengths, layer, n_heads, eps, keep_attention)  # [B, T, H] -> [B, T, H]
        if keep_hidden:
            hidden_states.append(x)
        if keep_attention:
            attentions.append(probs)
    return x, hidden_states, attentions
