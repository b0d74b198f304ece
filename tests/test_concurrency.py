"""encode() called from several threads at once, from a forked child, after pickling: the process's one pool of
workers (runtime.workers)."""

import functools
import multiprocessing
import pickle
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import e5np
from tests.checkpoints import TINY_DIR
from tests.row_independence import assert_same_vectors

TEXTS = [f"text number {i} " + "word " * (i % 40) for i in range(200)]   # many batches


class CountingRuns:
    """Wraps models' _run: counts their calls and the most that ran at once (all the models' together), each held
    for `hold` seconds."""

    def __init__(self, *models, hold=0.01, fail=False):
        self.hold, self.fail = hold, fail
        self.lock, self.running, self.peak, self.calls = threading.Lock(), 0, 0, 0
        for model in models:
            model._run = functools.partial(self.run, model._run)

    def run(self, inner, *args, **kwargs):
        with self.lock:
            self.running, self.calls = self.running + 1, self.calls + 1
            self.peak = max(self.peak, self.running)
        try:
            time.sleep(self.hold)
            if self.fail:
                raise MemoryError("a batch failed")
            return inner(*args, **kwargs)
        finally:
            with self.lock:
                self.running -= 1


def test_concurrent_calls_share_the_models_workers():
    """Six threads each calling encode on a model of 2 threads ran 12 batches at once (each call made its own
    workers): on 2 cores that is 12 batches' activations in memory and no work done sooner."""
    model = e5np.load(TINY_DIR, threads=2)
    expected = model.encode(TEXTS)
    runs = CountingRuns(model)
    with ThreadPoolExecutor(6) as callers:
        results = list(callers.map(lambda _: model.encode(TEXTS), range(6)))
    assert runs.peak == 2, runs.peak
    for result in results:
        np.testing.assert_array_equal(result, expected)

    model.threads = 3                                                  # set after the workers were made
    runs.peak = 0
    with ThreadPoolExecutor(6) as callers:
        list(callers.map(lambda _: model.encode(TEXTS), range(6)))
    assert runs.peak == 3, runs.peak


def test_setting_threads_does_not_shut_the_pool_a_call_is_about_to_use():
    """A call that had taken the model's pool (to submit its batches) when another thread set model.threads and
    encoded failed: the old pool was shut down under it (RuntimeError: cannot schedule new futures after shutdown).
    Pools are the process's, one of each size, never shut down: a size used again is the same pool, so no threads
    pile up however often threads is set."""
    model = e5np.load(TINY_DIR, threads=2)
    expected = model.encode(TEXTS)
    taken = e5np.runtime.workers(2)                                    # a call between taking the pool and submitting
    model.threads = 3
    assert_same_vectors(model.encode(TEXTS), expected)                # on a pool of 3 (batched otherwise)
    assert e5np.runtime.workers(3) is not taken
    assert taken.submit(len, "abc").result(timeout=10) == 3
    model.threads = 2
    np.testing.assert_array_equal(model.encode(TEXTS), expected)
    assert e5np.runtime.workers(2) is taken
    assert len(taken._threads) <= 2


def test_concurrent_calls_on_two_models_share_the_processes_workers():
    """A query model and a passage model in one web app: their calls queue for the same cores."""
    first, second = e5np.load(TINY_DIR, threads=2), e5np.load(TINY_DIR, threads=2)
    expected = first.encode(TEXTS)
    runs = CountingRuns(first, second)
    with ThreadPoolExecutor(6) as callers:
        results = list(callers.map(lambda k: (first, second)[k % 2].encode(TEXTS), range(6)))
    assert runs.peak == 2, runs.peak
    for result in results:
        np.testing.assert_array_equal(result, expected)


def test_a_failed_batch_cancels_the_batches_not_begun():
    """The error reaches the caller, and the model's workers, which outlive the call, do not go on running its
    other batches for nobody."""
    model = e5np.load(TINY_DIR, threads=2)
    lengths = [len(e.ids) for e in e5np.tokenizer.encode_batch(model.tokenizer, TEXTS)]
    batches = len(e5np.batching.length_batches(lengths, 8, model.max_batch_tokens, 2))
    runs = CountingRuns(model, hold=0.05, fail=True)
    with pytest.raises(MemoryError, match="a batch failed"):
        model.encode(TEXTS, batch_size=8)
    time.sleep(0.3)
    assert batches >= 20 and runs.calls <= 4, (runs.calls, batches)
    runs.fail = False
    assert model.encode(TEXTS[:40], batch_size=8).shape == (40, model.dim)      # the workers still serve


def _encode_in_child(model, queue):
    queue.put(model.encode(TEXTS))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork here")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")  # the case under test
def test_a_forked_child_gets_workers_of_its_own():
    """A model that has encoded (its workers started) and is then forked (gunicorn --preload, multiprocessing): the
    child's encode would hand its batches to the parent's threads, which are not in the child, and wait forever."""
    model = e5np.load(TINY_DIR, threads=2)
    expected = model.encode(TEXTS)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_encode_in_child, args=(model, queue))
    child.start()
    try:
        result = queue.get(timeout=60)
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
    np.testing.assert_array_equal(result, expected)


def test_a_model_that_has_encoded_pickles():
    """For a spawned process: the model goes without its threads and lock, and makes new ones there."""
    model = e5np.load(TINY_DIR, threads=2)
    expected = model.encode(TEXTS)
    copy = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(copy.encode(TEXTS), expected)
