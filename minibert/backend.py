"""One code path for NumPy and CuPy.

Every op asks its inputs which array module they belong to (``xp = get_array_module(x)``)
and then calls ``xp.matmul``, ``xp.exp`` and so on. NumPy arrays run on the CPU, CuPy arrays
on the GPU, through the same lines of code. CuPy is imported lazily: ``import minibert``
works without it and never touches CUDA unless a CuPy array (or ``device="gpu"``) is used.
"""
from __future__ import annotations

import numpy as np

_cupy = None          # the cupy module once imported, False when it cannot be imported
_gpu_ok = None        # cached answer of gpu_available()


def _import_cupy():
    """Import CuPy once; return the module or None when it is not installed."""
    global _cupy
    if _cupy is None:
        try:
            import cupy  # noqa: F401  (optional dependency)
            _cupy = cupy
        except Exception:  # ImportError, or a broken CUDA install
            _cupy = False
    return _cupy or None


def get_array_module(*arrays):
    """Return ``cupy`` if any argument is a CuPy array, else ``numpy``.

    Checks the type's module name first, so no CuPy import happens for NumPy input.
    """
    for a in arrays:
        if type(a).__module__.startswith("cupy"):
            return _import_cupy()
    return np


def is_gpu_array(x) -> bool:
    return type(x).__module__.startswith("cupy")


def gpu_available() -> bool:
    """True when CuPy imports and at least one CUDA device answers."""
    global _gpu_ok
    if _gpu_ok is None:
        cp = _import_cupy()
        try:
            _gpu_ok = bool(cp is not None and cp.cuda.runtime.getDeviceCount() > 0)
        except Exception:
            _gpu_ok = False
    return _gpu_ok


def get_xp(device: str):
    """The array module for ``device`` ("cpu" or "gpu")."""
    if device == "cpu":
        return np
    if device == "gpu":
        if not gpu_available():
            raise ValueError("device='gpu' was requested but no CUDA device is available "
                             "(install cupy and check the driver), expected 'cpu' or a GPU")
        return _import_cupy()
    raise ValueError(f"device={device!r} is not known, expected 'cpu' or 'gpu'")


def to_device(x, device: str):
    """Move an array to ``device`` ("cpu" or "gpu"); a no-op when it is already there."""
    if device == "cpu":
        return to_numpy(x)
    xp = get_xp(device)
    return xp.asarray(x)


def to_numpy(x):
    """A NumPy array from a NumPy or CuPy array (copies from the GPU)."""
    if is_gpu_array(x):
        return x.get()
    return np.asarray(x)


def scatter_add(target, indices, values):
    """``target[indices] += values`` with repeated indices summed (unbuffered).

    NumPy's fancy-index ``+=`` keeps only the last write of a repeated index, so the
    embedding backward needs ``np.add.at`` (CPU) or ``cupyx.scatter_add`` (GPU).
    """
    if is_gpu_array(target):
        import cupyx
        cupyx.scatter_add(target, indices, values)
    else:
        np.add.at(target, indices, values)
    return target
