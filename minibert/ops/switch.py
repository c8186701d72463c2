"""The kernel switch: whether an op hands its work to a fused kernel, and the cache it then
keeps. Its own module so that every op can import it while ``minibert.ops`` imports the ops
(see the package docstring)."""
from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np

from ..backend import cuda_kernels_available, is_gpu_array

READABLE_ENV = "MINIBERT_READABLE_OPS"
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_state = {"readable": os.environ.get(READABLE_ENV, "0").strip() not in ("", "0")}


class Fused(NamedTuple):
    """The cache of an op whose forward ran a kernel: ``backward(dy, *saved)`` undoes it."""
    backward: Callable
    saved: tuple


def set_readable_ops(readable: bool) -> bool:
    """Force the readable NumPy ops (True) or let kernels run (False); returns the old value."""
    if not isinstance(readable, (bool, np.bool_)):
        raise TypeError(f"readable={readable!r} has type {type(readable).__name__}, expected a bool")
    old, _state["readable"] = _state["readable"], bool(readable)
    return old


@contextmanager
def readable_ops(readable: bool = True):
    """``with readable_ops():`` runs the block on the readable ops, then restores the setting."""
    old = set_readable_ops(readable)
    try:
        yield
    finally:
        set_readable_ops(old)


def use_kernel(*arrays) -> bool:
    """True when the kernels are on and every array is a NumPy float32/float64 array of one
    dtype: the inputs the Numba kernels are compiled for. CuPy arrays (and the readable
    switch) keep the op's own code."""
    if _state["readable"] or not arrays:
        return False
    dtype = arrays[0].dtype if type(arrays[0]) is np.ndarray else None
    return dtype in _FLOATS and all(type(a) is np.ndarray and a.dtype == dtype for a in arrays)


def use_cuda_kernel(*arrays) -> bool:
    """True when the kernels are on, every array is a CuPy float32/float64 array of one
    dtype and Numba's CUDA target is installed: the inputs the CUDA kernels
    (``minibert/kernels/attention_cuda.py``) take. Only the ops that have a CUDA kernel ask;
    ``use_kernel`` stays False for CuPy arrays, so no CPU kernel ever sees one."""
    if _state["readable"] or not arrays or not all(is_gpu_array(a) for a in arrays):
        return False
    dtype = np.dtype(arrays[0].dtype)
    return (dtype in _FLOATS and all(np.dtype(a.dtype) == dtype for a in arrays)
            and cuda_kernels_available())


def check_out(out, x):
    """An op's ``out=`` (where it writes its result; see ``gelu.bias_forward``): None, or a
    writeable C-contiguous array of x's type, shape and dtype; TypeError or ValueError
    otherwise. (Whether it overlaps an input is the kernel's check.)"""
    if out is None:
        return
    if type(out) is not type(x):
        raise TypeError(f"out is a {type(out).__name__}, expected an array of x's type "
                        f"({type(x).__name__})")
    if (tuple(out.shape) != tuple(x.shape) or out.dtype != x.dtype or not out.flags.c_contiguous
            or not out.flags.writeable):
        raise ValueError(f"out has shape {tuple(out.shape)} and dtype {out.dtype}: expected a "
                         f"writeable C-contiguous array of x's shape {tuple(x.shape)} and "
                         f"dtype {x.dtype}")
