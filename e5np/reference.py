"""BERT / XLM-RoBERTa as the paper and transformers write it: the readable model, and e5np's float64 ground truth.

Pure functions over the nested dict of weights `e5np.checkpoint.load_weights` reads (linear weights stored
[in, out], so that a linear layer is `x @ w + b`). Texts are padded to a common length and an additive mask
keeps every query off the padded keys. Nothing here is tuned for speed: `e5np.engine` computes the same
numbers fast (in float32), and the tests hold it to this module. Shape comments use

    B  batch size          T  tokens per text (after padding)
    H  hidden size (384 in e5-small)        F  feed-forward size (1536)
    N  attention heads (12)                 D  head size, H // N (32)

The whole model, top to bottom, is `forward`; `POOLINGS` and `l2_normalize` turn its output into sentence vectors.
"""

import math

import numpy as np

_math_erf = np.frompyfunc(math.erf, 1, 1)


def erf(x):
    """The error function of the C library (NumPy has none), element by element, in float64, rounded to x's dtype."""
    x = np.asarray(x)
    return _math_erf(x).astype(x.dtype)


def gelu(x):
    return x * 0.5 * (1 + erf(x * math.sqrt(0.5)))                     # x Φ(x), Φ the standard normal CDF


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))                      # shifted by the row's max: no overflow
    return e / e.sum(axis=-1, keepdims=True)                           # each row sums to 1


def layer_norm(x, g, b, eps):
    mean = x.mean(axis=-1, keepdims=True)                              # [..., H] -> [..., 1]
    variance = np.square(x - mean).mean(axis=-1, keepdims=True)        # [..., 1]
    return (x - mean) / np.sqrt(variance + eps) * g + b                # [..., H]: mean 0, variance 1, then g, b


def linear(x, w, b):
    return x @ w + b                                                   # [..., in] @ [in, out] -> [..., out]


def embed(input_ids, positions, word, position, token_type, norm, eps):
    x = word[input_ids] + token_type[0]                                # [B, T] -> [B, T, H], every token segment A
    x = x + position[positions]                                        # [T] -> [T, H], broadcast over the batch
    return layer_norm(x, **norm, eps=eps)                              # [B, T, H]


def split_heads(x, n_heads):
    B, T, H = x.shape
    return x.reshape(B, T, n_heads, H // n_heads).transpose(0, 2, 1, 3)  # [B, T, H] -> [B, N, T, D]


def merge_heads(x):
    B, N, T, D = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, N * D)                # [B, N, T, D] -> [B, T, H]


def attention(q, k, v, mask):
    p = softmax(q @ k.swapaxes(-1, -2) / math.sqrt(q.shape[-1]) + mask)  # [B, N, T, D] @ [B, N, D, T] -> [B, N, T, T]
    return p @ v, p                                                    # [B, N, T, T] @ [B, N, T, D] -> [B, N, T, D]


def self_attention(x, mask, query, key, value, output, n_heads):
    q, k, v = (split_heads(linear(x, **p), n_heads) for p in (query, key, value))  # [B, T, H] -> [B, N, T, D]
    context, probs = attention(q, k, v, mask)                          # [B, N, T, D], [B, N, T, T]
    return linear(merge_heads(context), **output), probs               # [B, T, H], heads side by side, projected


def feed_forward(x, up, down):
    return linear(gelu(linear(x, **up)), **down)                       # [B, T, H] -> [B, T, F] -> [B, T, H]


def encoder_layer(x, mask, layer, n_heads, eps):
    attended, probs = self_attention(x, mask, **layer["attention"], n_heads=n_heads)  # [B, T, H], [B, N, T, T]
    x = layer_norm(x + attended, **layer["attention_norm"], eps=eps)   # [B, T, H]: residual, then LayerNorm (post-LN)
    x = layer_norm(x + feed_forward(x, **layer["ffn"]), **layer["ffn_norm"], eps=eps)  # [B, T, H]
    return x, probs


def forward(input_ids, attention_mask, params, n_heads, eps, position_offset=0, keep_hidden=False,
            keep_attention=False):
    """Token ids [B, T] -> last hidden state [B, T, H]; optionally every layer's output and attention.

    Returns (last_hidden, hidden_states, attentions), as `e5np.engine.encode` does: hidden_states is the embedding
    output followed by each layer's output (num_layers + 1 arrays), attentions each layer's [B, N, T, T]
    probabilities; each is None unless asked for, and padding positions read 0. Position ids are column numbers
    plus position_offset: BERT counts from 0, RoBERTa / XLM-R from padding_idx + 1 (for the right padding e5np
    makes, what transformers' count of real tokens gives).
    """
    T = input_ids.shape[1]
    dtype = params["embeddings"]["word"].dtype
    real = attention_mask > 0                                          # [B, T]
    mask = np.where(real, 0, -np.inf).astype(dtype)[:, None, None, :]  # [B, 1, 1, T]: -inf on padded keys
    tokens, queries = real[:, :, None], real[:, None, :, None]         # [B, T, 1], [B, 1, T, 1]: the real rows

    x = embed(input_ids, np.arange(T) + position_offset, **params["embeddings"], eps=eps)  # [B, T, H]
    hidden_states = [np.where(tokens, x, 0)] if keep_hidden else None  # padding reads 0 (computed, not used)
    attentions = [] if keep_attention else None
    for layer in params["layers"]:
        x, probs = encoder_layer(x, mask, layer, n_heads, eps)         # [B, T, H], [B, N, T, T]
        if keep_hidden:
            hidden_states.append(np.where(tokens, x, 0))               # [B, T, H]
        if keep_attention:
            attentions.append(np.where(queries, probs, 0))             # [B, N, T, T]: padded keys are 0 already
    last = hidden_states[-1] if keep_hidden else np.where(tokens, x, 0)
    return last, hidden_states, attentions


# --- sentence vectors ----------------------------------------------------------------------------
def mean_pool(hidden, attention_mask):
    mask = attention_mask[:, :, None].astype(hidden.dtype)             # [B, T] -> [B, T, 1]
    summed = (hidden * mask).sum(axis=1)                               # [B, T, H] -> [B, H], real tokens only
    return summed / mask.sum(axis=1)                                   # [B, H] / [B, 1]


def cls_pool(hidden, attention_mask):
    return hidden[:, 0]                                                # [B, T, H] -> [B, H], the [CLS] token


def max_pool(hidden, attention_mask):
    real = attention_mask[:, :, None] > 0                              # [B, T, 1]
    return np.where(real, hidden, -1e9).max(axis=1).astype(hidden.dtype)  # [B, T, H] -> [B, H], padding -1e9


def mean_sqrt_len_pool(hidden, attention_mask):
    mask = attention_mask[:, :, None].astype(hidden.dtype)             # [B, T, 1]
    return (hidden * mask).sum(axis=1) / np.sqrt(mask.sum(axis=1))     # sum / sqrt(number of real tokens)


POOLINGS = {"mean": mean_pool, "cls": cls_pool, "max": max_pool, "mean_sqrt_len": mean_sqrt_len_pool}


def l2_normalize(x, eps=1e-12):
    norm = np.sqrt(np.square(x).sum(axis=-1, keepdims=True))           # [B, H] -> [B, 1]
    return x / np.maximum(norm, eps)                                   # unit length rows
