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
