"""What the CPU benchmarks share: thread environment, the CPU's name, the SGEMM yardstick.

Imported by the ``bench_*.py`` scripts next to it (run as ``python benchmarks/bench_x.py``,
this folder is on ``sys.path``). It imports neither NumPy nor Numba: the thread counts must
be in the environment before they are loaded.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SGEMM_N = 1024

_SGEMM_CODE = """
import sys, time, numpy as np
n, repeat = int(sys.argv[1]), int(sys.argv[2])
r = np.random.default_rng(0)
a = r.standard_normal((n, n)).astype(np.float32)
b = r.standard_normal((n, n)).astype(np.float32)
c = np.empty((n, n), np.float32)
np.matmul(a, b, out=c)
times = []
for _ in range(repeat):
    t = time.perf_counter(); np.matmul(a, b, out=c); times.append(time.perf_counter() - t)
times.sort()
print(2 * n ** 3 / times[len(times) // 2] / 1e9)
"""


def configure_environment(threads):
    """Thread counts and Numba's cache directory; must run before numpy/numba are imported."""
    notes = []
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    # Numba's pool is sized at import; allow more threads than cores if asked
    os.environ["NUMBA_NUM_THREADS"] = str(max(threads, os.cpu_count() or 1))
    kernels_dir = ROOT / "minibert" / "kernels"          # where @njit(cache=True) writes
    if "NUMBA_CACHE_DIR" not in os.environ and not os.access(kernels_dir, os.W_OK):
        cache = Path.home() / ".cache" / "minibert" / "numba"
        cache.mkdir(parents=True, exist_ok=True)
        os.environ["NUMBA_CACHE_DIR"] = str(cache)
        notes.append(f"{kernels_dir} is not writable: Numba's cache is in {cache}")
    return notes


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sgemm_gflops(threads, repeat=15):
    """Median SGEMM rate of ``np.matmul`` (1024^3) with ``threads`` BLAS threads, measured in
    a fresh interpreter (OpenBLAS fixes its thread count when it is loaded); ``threads=None``
    leaves the environment as it is (the BLAS library's own default)."""
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if threads is not None:
            env[var] = str(threads)
    out = subprocess.run([sys.executable, "-c", _SGEMM_CODE, str(SGEMM_N), str(repeat)],
                         env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip())
