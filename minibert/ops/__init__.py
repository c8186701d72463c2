"""The ops: one file each, pure functions, no state.

Every op is a pair ``y, cache = forward(x, ...)`` and ``grads = backward(dy, cache)``.
``backward`` returns fresh arrays (one per differentiable input, in the order of
``forward``'s arguments) and never writes into its cache. Each module docstring derives the
gradient with shapes, and each backward line names the forward line it undoes.

Fast kernels. On NumPy arrays of float32 or float64 some ops hand their work to a fused
Numba kernel in ``minibert.kernels`` (layernorm, GELU with its bias, dropout, the
cross-entropy; the optimizer does the same for AdamW). The kernel computes the same function
with fewer passes over memory; the NumPy code in the op stays the reference it is tested
against. A kernel's forward returns a ``Fused`` cache, which the op's backward recognises and
hands back to the kernel. To study or step through the readable code instead, switch the
kernels off for the process or for a block::

    MINIBERT_READABLE_OPS=1 minibert pretrain ...        # environment, read at import

    with minibert.ops.readable_ops():                    # or in code
        out, cache = model.forward(...)
        model.backward(cache)                            # caches from inside the block
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Callable, NamedTuple

import numpy as np

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


from . import (attention, cross_entropy, dropout, embedding, gelu, layernorm, linear,  # noqa: E402
               softmax, tanh)

__all__ = ["attention", "cross_entropy", "dropout", "embedding", "gelu", "layernorm", "linear",
           "softmax", "tanh", "Fused", "readable_ops", "set_readable_ops", "use_kernel",
           "READABLE_ENV"]
