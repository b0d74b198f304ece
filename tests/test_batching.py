"""How encode() cuts texts into batches: every text once, within the batch and token limits, longest first,
and, with several workers, a tail of small batches so that no worker finishes long after the others."""

import numpy as np
import pytest

from e5np.batching import length_batches


def padded_tokens(batch, lengths):
    return len(batch) * max(lengths[i] for i in batch)


def random_lengths(seed, n=500):
    rng = np.random.RandomState(seed)
    return rng.randint(2, 513, n).tolist()


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_every_text_once_within_the_limits_longest_first(seed, workers):
    lengths = random_lengths(seed)
    batches = length_batches(lengths, batch_size=32, max_tokens=2048, workers=workers)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 32
        assert len(batch) == 1 or padded_tokens(batch, lengths) <= 2048, batch
    longest = [max(lengths[i] for i in batch) for batch in batches]
    assert longest == sorted(longest, reverse=True)                    # the costliest batches go first


def test_one_worker_fills_every_batch():
    lengths = random_lengths(2)
    batches = length_batches(lengths, batch_size=32, max_tokens=2048)
    for batch in batches[:-1]:                         # full, or the next text (no longer than these) would not fit
        assert len(batch) == 32 or (len(batch) + 1) * lengths[batch[0]] > 2048


def test_a_lone_text_over_the_budget_gets_its_own_batch():
    assert length_batches([600, 5, 700], batch_size=32, max_tokens=512) == [[2], [0], [1]]


def test_several_workers_end_on_small_batches():
    """500 passages of 300 tokens: one worker gets batches of 6 (1,800 tokens) to the end; two workers'
    batches shrink as the waiting work does, to a text each, so neither idles through a last 6-text batch
    while the other has finished."""
    lengths = [300] * 500
    one = length_batches(lengths, batch_size=32, max_tokens=2048, workers=1)
    two = length_batches(lengths, batch_size=32, max_tokens=2048, workers=2)
    assert [len(b) for b in one] == [6] * 83 + [2]
    sizes = [len(b) for b in two]
    assert sizes[0] == 6 and sizes == sorted(sizes, reverse=True) and sizes[-4:] == [4, 2, 1, 1]
    waiting = sum(lengths)
    for batch in two:                                                  # each at most half of what is still waiting
        assert len(batch) == 1 or padded_tokens(batch, lengths) <= waiting / 2
        waiting -= sum(lengths[i] for i in batch)


def test_the_shrinking_stops_at_an_eighth_of_max_tokens():
    """Short queries: tiny batches would cost more in per-batch overhead than the tail they save."""
    lengths = [10] * 1000
    batches = length_batches(lengths, batch_size=32, max_tokens=2048, workers=2)
    sizes = [len(b) for b in batches]
    assert sizes[-2:] == [25, 15]                                      # 25 texts of 10 tokens fit in 2,048 / 8;
    assert min(sizes[:-1]) == 25                                       # the last batch is what is left
    smaller_floor = length_batches(lengths, batch_size=32, max_tokens=1024, workers=2)
    assert min(len(b) for b in smaller_floor[:-1]) == 12                # 1,024 / 8 = 128 tokens


def test_empty():
    assert length_batches([], batch_size=32, max_tokens=2048, workers=2) == []
