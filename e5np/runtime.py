"""The process-wide parts of e5np: what every model, thread and forked child of one process shares.

An application that embeds on many threads (a web server), a process pool, or a Ray actor shares exactly these,
and nothing else: models hold no threads of their own.

- BLAS threads. NumPy's OpenBLAS has one thread count for the whole process. `one_blas_thread()` sets it to 1
  while e5np's workers each run a whole batch (so that two workers don't each take every core) and puts back the
  count it found when the last of them finishes.
- Workers. `workers(n)` is the process's one pool of n threads: every encode() running n batches at once, on any
  model, queues its batches there, so that concurrent calls share the cores instead of each starting threads.
- Forks. A child forked while workers ran (gunicorn --preload, multiprocessing) has none of the parent's
  threads: it starts with no pools and the BLAS count the parent found.
- Directory locks. `lock_directory(path)` holds an exclusive lock on path/.lock until the process ends, or
  `unlock_directory(path)` (a build from Python, done): two builds of one search index would interleave their
  chunks.
- CPUs. `available_cpus()` counts the CPUs this process may keep busy (affinity, cgroup quota,
  OMP_NUM_THREADS): encode()'s default number of workers.

NumPy has no API for BLAS threads. Its wheels bundle OpenBLAS, which exports openblas_get_num_threads and
openblas_set_num_threads (under the names of the build: scipy_openblas_set_num_threads64_ in NumPy 2's wheels);
they are called through ctypes. The count they set is the whole process's, as is, in the pthreads builds NumPy
ships, the one openblas_set_num_threads_local sets (which some OpenBLAS builds do not export). With any other
BLAS (MKL, Accelerate) the guard does nothing and e5np stays correct.
"""

import contextlib
import ctypes
import functools
import glob
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

# --- BLAS threads ------------------------------------------------------------------------------
# (get, set) as each kind of OpenBLAS build names them: NumPy 2's wheels (scipy-openblas, 64-bit integers), the
# 32-bit-integer scipy-openblas, NumPy 1's wheels (openblas64_), and a plain OpenBLAS (a system's, conda's). The
# Fortran-style names (openblas_set_num_threads_, ..._64_) take a pointer, not an int: not these.
THREAD_FUNCTIONS = [(f"{prefix}openblas_get_num_threads{suffix}", f"{prefix}openblas_set_num_threads{suffix}")
                    for prefix, suffix in (("scipy_", "64_"), ("scipy_", ""), ("", "64_"), ("", ""))]


def openblas_candidates(numpy_dir=os.path.dirname(np.__file__), maps="/proc/self/maps"):
    """Paths of the OpenBLAS libraries NumPy may be using: the one its wheel bundles (numpy.libs on Linux and
    Windows, numpy/.dylibs on macOS), then any other this process has loaded (Linux: a conda or system NumPy's)."""
    bundled = [path for pattern in (os.path.join(os.path.dirname(numpy_dir), "numpy.libs", "*openblas*"),
                                    os.path.join(numpy_dir, ".dylibs", "*openblas*"))
               for path in sorted(glob.glob(pattern))]
    try:
        with open(maps) as lines:                                      # address perms offset dev inode path
            loaded = [fields[5] for fields in (line.rstrip("\n").split(None, 5) for line in lines)
                      if len(fields) == 6 and "openblas" in os.path.basename(fields[5])]
    except OSError:                                                    # not Linux
        loaded = []
    return list(dict.fromkeys(bundled + loaded))


@functools.lru_cache(maxsize=None)
def openblas_threads():
    """(get, set) for the thread count of the OpenBLAS NumPy uses, or None where there is none to find."""
    for path in openblas_candidates():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get_name, set_name in THREAD_FUNCTIONS:
            get, set_ = getattr(lib, get_name, None), getattr(lib, set_name, None)
            if get and set_:
                get.argtypes, get.restype, set_.argtypes, set_.restype = [], ctypes.c_int, [ctypes.c_int], None
                return get, set_
    return None


def blas_threads():
    """The thread count of NumPy's OpenBLAS now, or None where it cannot be read."""
    functions = openblas_threads()
    return functions[0]() if functions else None


_held = {"blocks": 0, "found": None}
_held_lock = threading.Lock()


@contextlib.contextmanager
def one_blas_thread():
    """NumPy's BLAS on one thread while the block runs: for worker threads that each run a whole batch (two
    workers whose products each took every core would slow each other down). Blocks may overlap (several encode()
    calls at once): the count found by the first is put back when the last ends. Other threads' BLAS calls
    meanwhile run on one thread too, as the count is the process's."""
    functions = openblas_threads()
    if functions is None:
        yield
        return
    get, set_ = functions
    with _held_lock:
        if _held["blocks"] == 0:
            _held["found"] = get()
            set_(1)
        _held["blocks"] += 1
    try:
        yield
    finally:
        with _held_lock:
            _held["blocks"] -= 1
            if _held["blocks"] == 0:
                set_(_held["found"])


# --- workers ---------------------------------------------------------------------------------
_pools = {}                                                            # threads -> the process's pool of that size
_pools_lock = threading.Lock()


def workers(threads):
    """The process's pool of `threads` worker threads, made on first use and kept for the process's life. Every
    caller asking for the same size gets the same pool, so concurrent encode() calls (a web app's request threads,
    several models) queue their batches for the same cores instead of each running threads of their own. A pool
    is never shut down: a caller may have taken it and be about to hand it batches."""
    with _pools_lock:
        pool = _pools.get(threads)
        if pool is None:
            pool = _pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix=f"e5np-worker-{threads}")
        return pool


# --- directory locks ---------------------------------------------------------------------------
class LockedError(OSError):
    """Another process holds the directory's lock."""


_held_locks = {}                                                       # directory -> its open .lock file


def lock_directory(directory):
    """An exclusive lock on directory/.lock for the rest of this process (taken once; later calls return at
    once). LockedError if another process holds it, OSError if the file cannot be written; no lock where fcntl
    is missing (Windows)."""
    try:
        import fcntl
    except ImportError:
        return
    directory = Path(directory).absolute()
    if directory in _held_locks:
        return
    lock = open(directory / ".lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise LockedError(f"{directory} is locked by another process") from None
    _held_locks[directory] = lock


def unlock_directory(directory):
    """Releases the lock lock_directory took on directory (nothing if this process holds none)."""
    lock = _held_locks.pop(Path(directory).absolute(), None)
    if lock is not None:
        lock.close()                                                   # closing the file releases its flock


# --- forks -------------------------------------------------------------------------------------
def _after_fork_in_child():
    """A child forked while workers ran has none of their threads: no pools (work handed to a parent's pool would
    never run), fresh locks no parent thread may be holding, and the BLAS count the parent found. Directory locks
    stay held: flock locks belong to the open file, which the child shares with the parent."""
    global _held_lock, _pools_lock
    _held_lock, _pools_lock = threading.Lock(), threading.Lock()
    _pools.clear()
    if _held["blocks"]:
        _held["blocks"] = 0
        openblas_threads()[1](_held["found"])


if hasattr(os, "register_at_fork"):                                    # not on Windows
    os.register_at_fork(after_in_child=_after_fork_in_child)


# --- CPUs --------------------------------------------------------------------------------------
def available_cpus(cgroup_root="/sys/fs/cgroup", proc_self_cgroup="/proc/self/cgroup", environ=os.environ):
    """How many CPUs this process can keep busy: those its affinity allows (taskset, a cpuset), capped by the CPU
    time its cgroups allow (a container's --cpus, a Kubernetes CPU limit), rounded up, and by the thread budget a
    scheduler gave the process in OMP_NUM_THREADS (Ray, Spark and Dask set it to a task's or an actor's CPUs, and
    leave the affinity whole: K actors on a node would each start a worker per core). os.cpu_count() counts the
    machine's: 64 workers, and 64 batches' memory, for a container allowed 2."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):                                  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(Path(cgroup_root), Path(proc_self_cgroup))
    if quota:
        cpus = min(cpus, math.ceil(quota))
    budget = omp_threads(environ)
    return max(1, min(cpus, budget) if budget else cpus)


def omp_threads(environ=os.environ):
    """OMP_NUM_THREADS as a positive int (its first level, for a nested "4,2"), or None when unset or not one."""
    first = environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(first) if first.isdigit() and int(first) > 0 else None


def cgroup_cpu_quota(root, proc_self_cgroup):
    """CPUs' worth of time a period that this process's cgroup and those above it allow (the least), or None.

    cgroup v2: <group>/cpu.max holds "QUOTA PERIOD" or "max PERIOD". v1: the cpu controller's
    cpu.cfs_quota_us (-1: none) and cpu.cfs_period_us. In a container the group's path as /proc/self/cgroup names
    it may not exist under /sys/fs/cgroup (mounted at the container's own group): the walk up reaches that."""
    try:
        lines = proc_self_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            base, read = root, _cgroup2_quota
        elif "cpu" in controllers.split(","):
            base, read = root / "cpu", _cgroup1_quota
        else:
            continue
        group = base / path.lstrip("/")
        while True:
            if (quota := read(group)) is not None:
                quotas.append(quota)
            if group == base or base not in group.parents:
                break
            group = group.parent
    return min(quotas, default=None)


def _cgroup2_quota(group):
    try:
        quota, period = (group / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _cgroup1_quota(group):
    try:
        quota = int((group / "cpu.cfs_quota_us").read_text())
        return None if quota <= 0 else quota / int((group / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError, ZeroDivisionError):
        return None
