"""One BLAS thread per e5np worker thread, so workers running whole batches don't oversubscribe the cores; and how
many cores there are to keep busy.

NumPy has no API for this. NumPy's wheels bundle OpenBLAS, whose `openblas_set_num_threads_local`
(OpenBLAS >= 0.3.27) sets the thread count for the calling thread only; we call it through ctypes.
With any other BLAS (MKL, Accelerate, an older OpenBLAS) this does nothing and e5np stays correct.
"""

import ctypes
import functools
import glob
import math
import os
from pathlib import Path

import numpy as np


@functools.lru_cache(maxsize=None)
def _openblas():
    libs = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    for path in sorted(glob.glob(os.path.join(libs, "*openblas*"))):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        if hasattr(lib, "openblas_set_num_threads_local"):
            lib.openblas_set_num_threads_local.argtypes = [ctypes.c_int]
            return lib
    return None


def use_one_blas_thread():
    """Make BLAS calls from the current thread single-threaded. True if it could."""
    lib = _openblas()
    if lib is None:
        return False
    lib.openblas_set_num_threads_local(1)
    return True


def available_cpus(cgroup_root="/sys/fs/cgroup", proc_self_cgroup="/proc/self/cgroup"):
    """How many CPUs this process can keep busy: those its affinity allows (taskset, a cpuset), capped by the CPU
    time its cgroups allow (a container's --cpus, a Kubernetes CPU limit), rounded up. os.cpu_count() counts the
    machine's: 64 workers, and 64 batches' memory, for a container allowed 2."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):                                  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(Path(cgroup_root), Path(proc_self_cgroup))
    return max(1, min(cpus, math.ceil(quota))) if quota else cpus


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
