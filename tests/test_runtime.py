"""BLAS threads: e5np's workers run their matrix products on one thread each while they run, and leave the process's
BLAS as they found it. NumPy's OpenBLAS keeps one thread count for the whole process (openblas_set_num_threads_local
too, in the pthreads builds NumPy's wheels ship; NumPy 2.5's OpenBLAS does not export it at all)."""

import multiprocessing
import os
import threading

import numpy as np
import pytest

import e5np
from e5np import runtime
from tests.checkpoints import TINY_DIR

NUMPY_DIR = os.path.dirname(np.__file__)
BUNDLED = runtime.openblas_candidates(NUMPY_DIR, maps="/nonexistent")     # the OpenBLAS NumPy's wheel ships, if any
needs_openblas = pytest.mark.skipif(not BUNDLED, reason="this NumPy bundles no OpenBLAS (MKL, Accelerate, a "
                                                          "system BLAS): e5np leaves its threads alone")


@pytest.fixture
def three_blas_threads():
    """The process's OpenBLAS on 3 threads (not its default here, nor 1), put back afterwards."""
    get, set_ = runtime.openblas_threads()
    found = get()
    set_(3)
    assert get() == 3
    yield
    set_(found)


@needs_openblas
def test_the_thread_count_of_numpys_openblas_is_found():
    """NumPy 2.5's OpenBLAS exports openblas_set_num_threads_local no more: e5np, looking for that one only, found
    nothing to call there and ran two workers' products on two threads each (1.3-1.4x slower on 2 cores)."""
    assert runtime.openblas_threads() is not None
    assert runtime.blas_threads() >= 1


@needs_openblas
def test_one_blas_thread_sets_one_and_puts_back_what_it_found(three_blas_threads):
    with runtime.one_blas_thread():
        assert runtime.blas_threads() == 1
    assert runtime.blas_threads() == 3


@needs_openblas
def test_overlapping_blocks_put_the_count_back_when_the_last_ends(three_blas_threads):
    """Two encode() calls at once: the first to end must not give the other's workers all the threads back."""
    first, second = runtime.one_blas_thread(), runtime.one_blas_thread()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert runtime.blas_threads() == 1
    second.__exit__(None, None, None)
    assert runtime.blas_threads() == 3


@needs_openblas
def test_the_count_is_put_back_when_the_block_fails(three_blas_threads):
    with pytest.raises(KeyboardInterrupt), runtime.one_blas_thread():
        raise KeyboardInterrupt
    assert runtime.blas_threads() == 3


def blas_threads_per_batch(model, monkeypatch):
    """A list that each batch model runs appends the process's BLAS thread count to, as the batch runs."""
    seen, run = [], model._run

    def run_and_look(*args, **kwargs):
        seen.append((runtime.blas_threads(), threading.current_thread().name))
        return run(*args, **kwargs)
    monkeypatch.setattr(model, "_run", run_and_look)
    return seen


TEXTS = [f"text number {i} " + "word " * i for i in range(12)]


@needs_openblas
@pytest.mark.parametrize("shared", [True, False], ids=["the model's workers", "workers of the call's own"])
def test_workers_run_blas_on_one_thread_and_leave_the_count_as_it_was(three_blas_threads, monkeypatch, shared):
    """Before, each worker set the count to 1 for good: after one encode() on workers, every matrix product in
    the process (encode(threads=1)'s, the application's) ran on one thread."""
    model = e5np.load(TINY_DIR, threads=2 if shared else 1)
    seen = blas_threads_per_batch(model, monkeypatch)
    model.encode(TEXTS, batch_size=2, threads=None if shared else 2)
    assert len(seen) == 6 and {count for count, _ in seen} == {1}
    assert any(name != threading.current_thread().name for _, name in seen)     # on workers, not this thread
    assert runtime.blas_threads() == 3


@needs_openblas
def test_one_batch_at_a_time_runs_blas_on_the_process_threads(three_blas_threads, monkeypatch):
    """threads=1: batches one by one, BLAS on every core (what the process's count gives), after workers too."""
    model = e5np.load(TINY_DIR, threads=2)
    model.encode(TEXTS, batch_size=2)                                  # on the workers first
    seen = blas_threads_per_batch(model, monkeypatch)
    model.encode(TEXTS, batch_size=2, threads=1)
    assert len(seen) == 6 and {count for count, _ in seen} == {3}



@needs_openblas
def test_a_pass_of_few_tokens_runs_blas_on_one_thread_a_longer_one_on_the_process_threads(three_blas_threads,
                                                                                            monkeypatch):
    """A query's products are a few rows each: a second BLAS thread saves about what handing work to it costs, and
    waits for a core whenever another process holds it (a query took ~1.3 s instead of ~45 ms on a busy 2-core
    machine). A batch's products are large enough to share out."""
    from e5np import engine

    model = e5np.load(TINY_DIR, threads=1)
    seen, encode = [], engine.encode

    def encode_and_look(input_ids, attention_mask, *args, **kwargs):
        seen.append((int(attention_mask.sum()), runtime.blas_threads()))
        return encode(input_ids, attention_mask, *args, **kwargs)
    monkeypatch.setattr(engine, "encode", encode_and_look)
    model.encode("a short query")
    model.encode(["word " * (engine.ONE_THREAD_TOKENS // 4)] * 8, batch_size=8)
    (short, short_count), (long, long_count) = seen
    assert short <= engine.ONE_THREAD_TOKENS < long
    assert (short_count, long_count) == (1, 3)
    assert runtime.blas_threads() == 3

def test_candidates_are_the_bundled_openblas_then_those_the_process_loaded(tmp_path):
    """A conda or system NumPy links an OpenBLAS outside its package: /proc/self/maps names it."""
    numpy_dir, libs = tmp_path / "site-packages" / "numpy", tmp_path / "site-packages" / "numpy.libs"
    numpy_dir.mkdir(parents=True)
    libs.mkdir()
    for name in ("libscipy_openblas64_-4b78795a.so", "libgfortran-040039e1.so.5.0.0"):
        (libs / name).write_bytes(b"")
    bundled = str(libs / "libscipy_openblas64_-4b78795a.so")
    maps = tmp_path / "maps"
    maps.write_text(
        "7f0000000000-7f0000001000 r-xp 00000000 08:01 1234 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
        "7f0000001000-7f0000002000 r-xp 00000000 08:01 1235 /opt/conda env/lib/libopenblasp-r0.3.28.so\n"
        "7f0000002000-7f0000003000 r--p 00001000 08:01 1235 /opt/conda env/lib/libopenblasp-r0.3.28.so\n"
        f"7f0000003000-7f0000004000 r-xp 00000000 08:01 1236 {bundled}\n"
        "7f0000004000-7f0000005000 rw-p 00000000 00:00 0 \n"
        "7ffd00000000-7ffd00001000 rw-p 00000000 00:00 0                  [stack]\n")
    assert runtime.openblas_candidates(str(numpy_dir), maps=str(maps)) == [
        bundled, "/opt/conda env/lib/libopenblasp-r0.3.28.so"]
    assert runtime.openblas_candidates(str(numpy_dir), maps=str(tmp_path / "none")) == [bundled]


def _count_in_child(queue):
    found = runtime.blas_threads()
    with runtime.one_blas_thread():
        inside = runtime.blas_threads()
    queue.put((found, inside, runtime.blas_threads()))


@needs_openblas
@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork here")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")  # the case under test
def test_a_child_forked_while_workers_run_starts_with_the_count_they_found(three_blas_threads):
    """Forked inside a block (another thread's encode() on workers): the child has none of those workers; it would
    keep one thread for good, its blocks never all ending."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    with runtime.one_blas_thread():
        child = context.Process(target=_count_in_child, args=(queue,))
        child.start()
    try:
        assert queue.get(timeout=60) == (3, 1, 3)
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
