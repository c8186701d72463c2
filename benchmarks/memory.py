"""Peak resident memory of a piece of work, each in a fresh process (Linux ``VmHWM``).

A benchmark script runs itself again with an option that names the work
(``peak_in_fresh_process``); there the child side measures it (``measure_peak``) and prints
the returned dict as one JSON line, which the parent reads back. The peak is counted above
the resident memory after the imports, so it holds what the work allocates: parameters,
gradients, optimizer state, activations and whatever the allocators keep.

Imports neither NumPy nor torch: the caller's thread environment is left alone.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def rss_mib(field):
    """``field`` of /proc/self/status ("VmRSS", "VmHWM") in MiB, or None without /proc."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024                              # kB -> MiB
    return None


def measure_peak(work) -> dict:
    """Child side: runs ``work()`` and returns ``{"peak_mib": ...}``, the peak resident
    memory above the resident memory before the call (None without /proc)."""
    base = rss_mib("VmRSS")
    work()
    peak = rss_mib("VmHWM")
    return {"peak_mib": None if base is None or peak is None else peak - base}


def peak_in_fresh_process(script, argv, env=None):
    """Parent side: runs ``python script *argv`` and returns the ``peak_mib`` of the JSON
    line it prints last (None where /proc is missing)."""
    if rss_mib("VmHWM") is None:
        return None
    out = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True,
                         env=env)
    if out.returncode != 0:
        raise RuntimeError(f"memory probe {' '.join(argv)} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]
