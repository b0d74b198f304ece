"""The fast BERT encoder: the math of `e5np.reference`, computed on packed rows in cache-sized steps (float32).

Every function here is pure: arrays in, arrays out, no I/O and no hidden state. The weights are the nested dict
of `e5np.checkpoint.load_weights`, linear weights stored as [in, out], with their column blocks (`with_blocks`).
`e5np.reference` is the same model as the paper writes it (padded texts, an additive mask, erf GELU); this module
gives its numbers to float32's precision (tests/test_reference.py holds the two together) by doing less work, and
the same functions more cheaply:

- no padding: between the embeddings and the last layer a batch is one [S, H] array of its texts' real tokens end
  to end. Every step but attention treats each token on its own, and attention slices each text's rows out, which
  is what the -inf mask achieves, without computing the padded part.
- attention in cache-sized steps (`self_attention`): several small heads, and texts of equal length
  (`equal_length_runs`), share one product; a long text's heads go one at a time.
- a pass of few tokens (a query) multiplies by weights cut into column blocks (`linear`), which OpenBLAS packs
  in its L2 cache.
- bias + GELU and residual + LayerNorm over blocks of rows that stay in cache (`in_blocks`), written in place.
- GELU without erf and the exponential NumPy runs fastest on this CPU: `e5np.numerics`.

Shape comments use

    B  batch size          T  tokens per text (after padding)
    S  the batch's real tokens, every text's end to end (no padding), Σ of the texts' lengths
    H  hidden size (384 in e5-small)        F  feed-forward size (1536)
    N  attention heads (12)                 D  head size, H // N (32)

The whole forward pass is `encode` at the end of this file.
"""

import math

import numpy as np

from . import numerics
from .numerics import gelu, softmax_in_exp_units


# --- the building blocks -------------------------------------------------------------------------
def in_blocks(fn, *arrays, out=None, block_elements=262144):
    """fn applied to the arrays' rows a few at a time: the same numbers as fn(*arrays), several times faster.

    fn must treat each row (last axis) on its own: elementwise (GELU) or row-wise (softmax, LayerNorm).
    A chain of NumPy ufuncs over a whole [S, F] array streams every temporary through main memory;
    on 256K-element blocks (1 MB) the temporaries stay in the L3 cache. Not smaller: every NumPy call hands
    the GIL over, and worker threads wait for each other at those hand-overs, which smaller blocks multiply
    (docs/performance.md, Engine notes). The arrays share their leading axes.
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


# A pass of this many tokens (a query, a few) multiplies each weight cut into column blocks (`with_blocks`).
# OpenBLAS packs the whole weight matrix on every call before it multiplies, and for so few rows the packing
# costs more than the arithmetic: a [12, 384] @ [384, 1536] product runs 1.9x faster as eight [384, 192] blocks
# held contiguous, each small enough to pack in the L2 cache (docs/performance.md, Speed, second round). Not below
# BLOCKED_PASS.start: there OpenBLAS takes a [S, 1536] @ [1536, 192] block to its small-matrix kernel, which rounds
# differently from the whole product, and a text would get other bits alone than in a batch. Not above 64 tokens:
# from there the whole matrix is as fast, and from a few hundred faster.
BLOCKED_PASS = range(6, 65)
BLOCK_COLUMNS = 192


def with_blocks(params):
    """params with every linear layer's weight also cut into column blocks: "blocks" [out / c, in, c], c =
    BLOCK_COLUMNS, each block contiguous (for `linear` on few rows). A layer whose width c does not divide is left
    as it is, and so is the rest: the arrays are shared, not copied."""
    def blocked(linear_layer):
        w = linear_layer["w"]                                          # [in, out]
        if w.shape[1] % BLOCK_COLUMNS or w.shape[1] == BLOCK_COLUMNS:
            return linear_layer
        blocks = w.reshape(w.shape[0], -1, BLOCK_COLUMNS).transpose(1, 0, 2)  # [in, out] -> [out / c, in, c], a view
        return {**linear_layer, "blocks": np.ascontiguousarray(blocks)}
    layers = [{**layer,
               "attention": {name: blocked(part) for name, part in layer["attention"].items()},
               "ffn": {name: blocked(part) for name, part in layer["ffn"].items()}}
              for layer in params["layers"]]
    return {**params, "layers": layers}


def linear(x, w, b=None, blocks=None):
    if blocks is not None and len(x) in BLOCKED_PASS:
        y = np.matmul(x, blocks)                                       # [S, in] @ [n, in, c] -> [n, S, c]
        y = y.transpose(1, 0, 2).reshape(len(x), -1)                   # -> [S, n * c] = [S, out], a copy: ours
    else:
        y = x @ w                                                      # [S, in] @ [in, out] -> [S, out]
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


# Forward passes of at most this many tokens are worth no second BLAS thread (e5np.Model._run runs them on one):
# on products of so few rows a thread's hand-over costs about what it saves, and far more when the core it waits
# for is busy.
ONE_THREAD_TOKENS = 64

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
    scale = numerics.EXP_UNITS / math.sqrt(D)                          # q·k/√D, in EXP's units
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
    h = linear(x, up["w"], blocks=up.get("blocks"))                    # [S, H] -> [S, F], the bias comes next
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
