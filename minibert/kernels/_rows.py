"""Host-side helpers of the row kernels (``gelu_cpu.py``, ``layernorm_cpu.py``): an array
seen as (N, C) rows of its last axis, and the backward's dy checked against the forward's
output shape and laid out as the saved rows."""
from __future__ import annotations

import numpy as np


def rows_of(a, C):
    """a as a C-contiguous (N, C) array (a view when it already is one)."""
    return np.ascontiguousarray(a).reshape(-1, C)


def dy_rows(dy, shape, like):
    """dy as a C-contiguous array of ``like``'s (N, C) shape and dtype (converted if need
    be), after checking that dy has ``shape``, the forward's output shape: ValueError if not."""
    if tuple(np.shape(dy)) != tuple(shape):
        raise ValueError(f"dy has shape {tuple(np.shape(dy))}, expected the forward's output "
                         f"shape {tuple(shape)}")
    return np.ascontiguousarray(dy, dtype=like.dtype).reshape(like.shape)


def writes_over(y, x2, *read):
    """Whether y (N, C) is x2 itself (the same memory: y = f(x) written over x), after
    checking that y overlaps neither x2 otherwise nor any array in ``read`` (the other
    inputs): ValueError naming the overlap. y and x2 are C-contiguous of one shape."""
    same = y.ctypes.data == x2.ctypes.data and y.size == x2.size
    if not same and np.shares_memory(y, x2):
        raise ValueError("out overlaps x without being x")
    for name, a in read:
        if a is not None and np.shares_memory(y, a):
            raise ValueError(f"out overlaps {name}, which the op reads")
    return same
