"""One code path for NumPy and CuPy.

Every op asks its inputs which array module they belong to (``xp = get_array_module(x)``)
and then calls ``xp.matmul``, ``xp.exp`` and so on. NumPy arrays run on the CPU, CuPy arrays
on the GPU, through the same lines of code. CuPy is imported lazily: ``import minibert``
works without it and never touches CUDA unless a CuPy array (or ``device="gpu"``) is used.
"""
from __future__ import annotations

import os

import numpy as np

_cupy = None          # the cupy module once imported, False when it cannot be imported
_gpu_ok = None        # cached answer of gpu_available()
_numba_cuda_ok = None  # cached answer of cuda_kernels_available()
_numba_cuda_problem = None   # why it is False
_numba_cuda_installed = None  # cached answer of numba_cuda_installed()
_selected_device = None      # the CUDA device select_gpu chose, once it has


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


def numba_cuda_installed() -> bool:
    """True when NVIDIA's CUDA target for Numba (``numba-cuda``, the package the gpu and sim
    extras install, importable as ``numba_cuda``) is there: the kernels are written for it;
    the older target bundled with Numba is not enough. Found without importing it, so that
    ``import minibert`` stays off CUDA."""
    global _numba_cuda_installed
    if _numba_cuda_installed is None:
        import importlib.util
        try:
            _numba_cuda_installed = importlib.util.find_spec("numba_cuda") is not None
        except (ImportError, ValueError):
            _numba_cuda_installed = False
    return _numba_cuda_installed


def _probe_cuda_kernels():
    """Compile and launch a one-thread kernel on the current device and read its result back:
    what every CUDA kernel of minibert needs (NVVM to compile, a driver that loads the PTX,
    a device that runs it). Raises whatever fails. Under the CUDA simulator it runs there."""
    from numba import cuda

    @cuda.jit
    def probe(out):
        out[0] = out[0] * np.float32(2) + np.float32(1)

    buf = cuda.to_device(np.full(1, 3, dtype=np.float32))
    probe[1, 1](buf)
    got = buf.copy_to_host()[0]
    if got != 7:
        raise RuntimeError(f"the probe kernel computed {got}, expected 7.0")


def cuda_kernels_available() -> bool:
    """True when minibert's Numba CUDA kernels can run here: ``numba-cuda`` is installed
    (``numba_cuda_installed``) and a probe kernel compiles, launches on the current device
    and returns the right value (``_probe_cuda_kernels``). Asked only when GPU arrays reach
    an op with a CUDA kernel, so ``import minibert`` and CPU work never touch CUDA.

    The answer is computed once per process and cached. When the probe fails (no NVVM,
    a driver older than the PTX Numba emits, ...), the ops fall back to their textbook code
    on CuPy, and one RuntimeWarning says why; ``cuda_kernels_problem()`` keeps the reason.
    """
    global _numba_cuda_ok, _numba_cuda_problem
    if _numba_cuda_ok is None:
        if not numba_cuda_installed():
            _numba_cuda_ok = False
            _numba_cuda_problem = NOT_INSTALLED
        else:
            try:
                _probe_cuda_kernels()
                _numba_cuda_ok = True
            except Exception as exc:          # CudaSupportError, NvvmError, a link error, ...
                _numba_cuda_ok = False
                _numba_cuda_problem = (f"a probe kernel failed on the current device "
                                       f"({type(exc).__name__}: {exc})")
                import warnings
                warnings.warn(f"minibert's CUDA kernels cannot run: {_numba_cuda_problem}; "
                              "the ops run their textbook code on CuPy instead",
                              RuntimeWarning, stacklevel=2)
    return _numba_cuda_ok


def cuda_kernels_problem() -> str | None:
    """Why ``cuda_kernels_available()`` said False (None before it was asked, or when True)."""
    return _numba_cuda_problem


NOT_INSTALLED = ("numba-cuda is not installed (pip install 'numba-cuda[cu12]' or "
                 "'numba-cuda[cu13]', or minibert's gpu extra)")


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


#: Where launchers put a process's rank among the processes of its machine: Open MPI,
#: MPICH's Hydra and Intel MPI, MVAPICH2, Slurm's srun, Cray PALS.
LOCAL_RANK_VARS = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MV2_COMM_WORLD_LOCAL_RANK",
                   "SLURM_LOCALID", "PALS_LOCAL_RANKID")


def launcher_local_rank() -> int:
    """This process's rank among the processes of its machine as the MPI launcher's
    environment gives it (``LOCAL_RANK_VARS``), else 0; read without starting MPI.
    ``minibert.distributed.local_rank()`` prefers the communicator's once it exists."""
    for var in LOCAL_RANK_VARS:
        v = os.environ.get(var, "").strip()
        if v.isdigit():
            return int(v)
    return 0


def select_gpu(local_rank: int = 0):
    """Make device ``local_rank % device_count`` CuPy's (and Numba's) current device, before
    either allocates anything; returns its index, or None without a GPU. With several MPI
    ranks on one machine, each rank passes its rank among the ranks of that machine
    (``minibert.distributed.local_rank()``), so that they spread over its GPUs instead of
    all working on device 0. The first selection holds for the process (CUDA contexts are
    per device); later calls return it."""
    global _selected_device
    if _selected_device is not None:
        return _selected_device
    if isinstance(local_rank, bool) or not isinstance(local_rank, (int, np.integer)) or local_rank < 0:
        raise ValueError(f"local_rank={local_rank!r} is invalid, expected an integer >= 0")
    cp = _import_cupy()
    if cp is None:
        return None
    try:
        count = int(cp.cuda.runtime.getDeviceCount())
    except Exception:                         # no driver, or no device
        return None
    if count < 1:
        return None
    device = int(local_rank) % count
    if device != 0:                           # device 0 is every library's default already
        cp.cuda.Device(device).use()
        if numba_cuda_installed():
            try:
                from numba import cuda
                cuda.select_device(device)
            except Exception:                 # cuda_kernels_available's probe then says why
                pass
    _selected_device = device
    return device


def get_xp(device: str):
    """The array module for ``device`` ("cpu" or "gpu"). For "gpu", the first call selects
    this process's device (``select_gpu`` with the launcher's local rank)."""
    if device == "cpu":
        return np
    if device == "gpu":
        if not gpu_available():
            raise ValueError("device='gpu' was requested but no CUDA device is available "
                             "(install cupy and check the driver), expected 'cpu' or a GPU")
        if _selected_device is None:
            # distributed.world(), once made, has already selected with the communicator's rank
            select_gpu(launcher_local_rank())
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
    deterministic: ``cupyx.scatter_add`` adds with float atomics, in whatever order the
    threads arrive, so two runs of one backward would differ in the last bits. Where the
    CUDA kernels run (``cuda_kernels_available``) it is a sorted segment sum
    (``minibert.kernels.embedding_cuda``: O(tokens x F) work, no host sync), else a one-hot
    matrix product (``_scatter_add_onehot``). ``indices`` is an index array into the first
    axis, or a tuple of them into the first axes; ``values`` has the indexed shape.
    """
    if is_gpu_array(target):
        _scatter_add_gpu(target, indices, values)
    else:
        np.add.at(target, indices, values)
    return target


def _flat_rows(xp, indices, rows_shape):
    """The row numbers (N,) of ``target.reshape(prod(rows_shape), -1)`` that ``indices`` (an
    array, or a tuple of broadcastable arrays into the first axes) address, by Horner's rule
    (``ravel_multi_index`` would check the bounds on the host: a device sync; the callers
    validated them)."""
    if not isinstance(indices, tuple):
        return xp.asarray(indices).reshape(-1)
    parts = xp.broadcast_arrays(*(xp.asarray(i) for i in indices))
    flat = parts[0].astype(np.int64)
    for dim, part in zip(rows_shape[1:], parts[1:]):
        flat = flat * dim + part
    return flat.reshape(-1)


def _scatter_add_gpu(target, indices, values):
    """The deterministic GPU scatter-add: the segment-sum kernel where the CUDA kernels run,
    else the one-hot product."""
    cp = _import_cupy()
    if not target.flags.c_contiguous:            # then the reshape below is a view
        raise ValueError(f"target with shape {tuple(target.shape)} is not C-contiguous, "
                         "expected a C-contiguous array for scatter_add on the GPU")
    lead = len(indices) if isinstance(indices, tuple) else 1
    rows_shape = tuple(target.shape[:lead])
    flat = _flat_rows(cp, indices, rows_shape)                                     # (N,)
    view = target.reshape(int(np.prod(rows_shape)), -1)                            # (rows, F)
    rows = values.reshape(flat.size, -1)                                           # (N, F)
    if np.dtype(target.dtype) in (np.float32, np.float64) and cuda_kernels_available():
        from .kernels.embedding_cuda import segment_sum_into
        segment_sum_into(view, flat, rows.astype(target.dtype, copy=False))
    else:
        _scatter_add_onehot(cp, view, flat, rows)


def _scatter_add_onehot(cp, view, flat, rows):
    """``view[flat] += rows`` as a matrix product: with the N indexed rows numbered by their
    U distinct destinations (``unique``),

        view[dest_u] += sum_n [dest(n) = u] rows_n      =  (onehot (U, N)) @ rows (N, F)

    which cuBLAS computes in a fixed order (adding the zeros changes no bit), the same bits
    on every run. But the one-hot matrix is U x N numbers and the product 2 U N F flops
    (O(unique ids x tokens)), and ``unique`` syncs with the host: the fallback where the
    segment-sum kernel cannot run."""
    dest, inverse = cp.unique(flat, return_inverse=True)                          # (U,), (N,)
    onehot = (inverse.reshape(1, -1) == cp.arange(dest.size)[:, None]).astype(view.dtype)
    sums = onehot @ rows                                                           # (U, F)
    view[dest] += sums.astype(view.dtype, copy=False)
