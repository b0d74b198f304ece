"""What every benchmark table names: the CPU, its cores, and the NumPy / BLAS build that ran it.

A speed figure holds only for the CPU it was measured on (a Xeon's L3 holds e5-small's 85 MB of weights, a Zen 4's
32 MB does not, and one query's cost follows), so each table the tools print starts with `describe()`.
"""

import ctypes
import os
import platform
from pathlib import Path

import numpy as np


def cpu():
    """'AMD EPYC (family 25 model 17, AVX-512), 2 cores': /proc/cpuinfo's name and model numbers (Linux), else
    what platform knows."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fields = {}
    for line in info.splitlines():                                     # the first processor's fields
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" not in fields:
        return f"{name}, {os.cpu_count()} cores"
    flags = fields.get("flags", "").split()
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    amx = ", AMX" if "amx_tile" in flags else ""
    l3 = Path("/sys/devices/system/cpu/cpu0/cache/index3/size")
    cache = f", L3 {l3.read_text().strip()}" if l3.exists() else ""
    return f"{name} (family {fields['cpu family']} model {fields['model']}, {isa}{amx}{cache}), {os.cpu_count()} cores"


def blas():
    """'OpenBLAS 0.3.31 (SkylakeX kernels)': the library NumPy's products run on and the kernels it picked for
    this CPU (OpenBLAS chooses per CPU at load time; a Zen 4 gets SkylakeX's)."""
    import e5np.runtime

    for path in e5np.runtime.openblas_candidates():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_", "64_"), ("scipy_", ""), ("", "64_"), ("", "")):
            config = getattr(lib, f"{prefix}openblas_get_config{suffix}", None)
            core = getattr(lib, f"{prefix}openblas_get_corename{suffix}", None)
            if config and core:
                config.restype = core.restype = ctypes.c_char_p
                version = config().decode().split()[1] if len(config().split()) > 1 else "?"
                return f"OpenBLAS {version} ({core().decode()} kernels)"
    return "BLAS: not OpenBLAS (see numpy.show_config())"


def describe():
    """One line for the top of a table: CPU, cores, NumPy and BLAS, and the load the machine had."""
    return (f"CPU: {cpu()}; NumPy {np.__version__}, {blas()}; Python {platform.python_version()}; "
            f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    print(describe())
