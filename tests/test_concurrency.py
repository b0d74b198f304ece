"""encode() called from several threads at once, from a forked child, after pickling: the model's one pool of
workers."""

import gc
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
    """Wraps a model's _run: counts its calls and the most that ran at once, each held for `hold` seconds."""

    def __init__(self, model, hold=0.01, fail=False):
        self.run, self.hold, self.fail = model._run, hold, fail
        self.lock, self.running, self.peak, self.calls = threading.Lock(), 0, 0, 0
        model._run = self

    def __call__(self, *args, **kwargs):
        with self.lock:
            self.running, self.calls = self.running + 1, self.calls + 1
            self.peak = max(self.peak, self.running)
        try:
            time.sleep(self.hold)
            if self.fail:
                raise MemoryError("a batch failed")
            return self.run(*args, **kwargs)
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
    The old pool is let go instead, and its threads end once nothing holds it."""
    model = e5np.load(TINY_DIR, threads=2)
    expected = model.encode(TEXTS)
    taken = model._shared_workers()                                    # a call between taking the pool and submitting
    model.threads = 3
    assert_same_vectors(model.encode(TEXTS), expected)                # on a new pool of 3 (batched otherwise)
    assert model._workers[0] is not taken
    assert taken.submit(len, "abc").result(timeout=10) == 3
    threads = list(taken._threads)
    assert threads and all(thread.is_alive() for thread in threads)
    del taken
    gc.collect()
    for thread in threads:
        thread.join(timeout=10)
        assert not thread.is_alive()


def test_a_failed_batch_cancels_the_batches_not_begun():
    """The error reaches the caller, and the model's workers, which outlive the call, do not go on running its
    other batches for nobody."""
    model = e5np.load(TINY_DIR, threads=2)
    batches = len(e5np.model.length_batches([len(e.ids) for e in e5np.tokenizer.encode_batch(model.tokenizer, TEXTS)],
                                            8, model.max_batch_tokens, 2))
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
