"""One BLAS thread per e5np worker thread, so workers running whole batches don't oversubscribe the cores.

NumPy has no API for this. NumPy's wheels bundle OpenBLAS, whose `openblas_set_num_threads_local`
(OpenBLAS >= 0.3.27) sets the thread count for the calling thread only; we call it through ctypes.
With any other BLAS (MKL, Accelerate, an older OpenBLAS) this does nothing and e5np stays correct.
"""

import ctypes
import functools
import glob
import os

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
