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
_numba_cuda_ok = None  # cached answer of cuda_kernels_available()


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
    """True for a CuPy array (by its type's module: no import)."""
    return type(x).__module__.startswith("cupy")


def is_device_array(x) -> bool:
    """True for an array in GPU memory: a CuPy array, a Numba CUDA device array (also the
    simulator's ``FakeCUDAArray``, which has no ``__cuda_array_interface__``) or any
    object exposing ``__cuda_array_interface__``. Imports nothing: a Numba device array
    exists only once ``numba.cuda`` has been imported by whoever made it."""
    module = type(x).__module__
    if module.startswith(("cupy", "numba.cuda", "numba_cuda")):
        return module.startswith("cupy") or hasattr(x, "copy_to_host")
    if isinstance(x, np.ndarray) or x is None:
        return False
    try:
        return hasattr(x, "__cuda_array_interface__")
    except Exception:                     # a CPU tensor whose property raises otherwise
        return False


def cuda_kernels_available() -> bool:
    """True when NVIDIA's CUDA target for Numba (``numba-cuda``, the package the gpu and sim
    extras install, importable as ``numba_cuda``) is there: the kernels are written for it;
    the older target bundled with Numba is not enough. Found without importing it, so that
    ``import minibert`` stays off CUDA."""
    global _numba_cuda_ok
    if _numba_cuda_ok is None:
        import importlib.util
        try:
            _numba_cuda_ok = importlib.util.find_spec("numba_cuda") is not None
        except (ImportError, ValueError):
            _numba_cuda_ok = False
    return _numba_cuda_ok


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
    embedding backward needs ``np.add.at`` on the CPU. On the GPU the sum is made
    deterministic (``_scatter_add_gpu``): ``cupyx.scatter_add`` adds with float atomics, in
    whatever order the threads arrive, so two runs of one backward would differ in the last
    bits. ``indices`` is an index array into the first axis, or a tuple of them into the
    first axes; ``values`` has the indexed shape.
    """
    if is_gpu_array(target):
        _scatter_add_gpu(target, indices, values)
    else:
        np.add.at(target, indices, values)
    return target


def _scatter_add_gpu(target, indices, values):
    """The deterministic GPU scatter-add: with the N indexed rows numbered by their U distinct
    destinations (``unique``), the sums are one matrix product,

        target[dest_u] += sum_n [dest(n) = u] values_n      =  (onehot (U, N)) @ values (N, F)

    which cuBLAS computes in a fixed order (adding the zeros changes no bit), the same bits
    on every run. The one-hot matrix is U x N numbers (for BERT's word embeddings at
    B S = 1024 tokens, at most 4 MiB in float32) and the product 2 U N F flops, a small
    share of a training step."""
    cp = _import_cupy()
    lead = len(indices) if isinstance(indices, tuple) else 1
    rows_shape = tuple(target.shape[:lead])
    if isinstance(indices, tuple):
        flat = cp.ravel_multi_index(tuple(cp.asarray(i).reshape(-1) for i in
                                          cp.broadcast_arrays(*(cp.asarray(i) for i in indices))),
                                    rows_shape)                                   # (N,)
    else:
        flat = cp.asarray(indices).reshape(-1)                                     # (N,)
    n_rows = int(np.prod(rows_shape))
    dest, inverse = cp.unique(flat, return_inverse=True)                          # (U,), (N,)
    onehot = (inverse.reshape(1, -1) == cp.arange(dest.size)[:, None]).astype(target.dtype)
    sums = onehot @ values.reshape(flat.size, -1)                                  # (U, F)
    if not target.flags.c_contiguous:            # then the reshape below is a view
        raise ValueError(f"target with shape {tuple(target.shape)} is not C-contiguous, "
                         "expected a C-contiguous array for scatter_add on the GPU")
    view = target.reshape(n_rows, -1)                                              # (rows, F)
    view[dest] += sums.astype(target.dtype, copy=False)
