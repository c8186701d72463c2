"""Token-major outputs of the CPU attention kernels, and the merge of heads they make free.

The model splits its (..., 3H) product into heads (``minibert.model.split_heads``: views
(..., A, S, D)) and merges the context and the gradients back (``merge_heads``: (..., H)
and (..., 3H)). The CPU kernels write their outputs into one C-contiguous buffer
(..., S, n, A, D) and hand out n views (..., A, S, D) of it (``token_major``): the buffer
viewed as (..., S, n A D) is the merged array, so ``merged_view`` gives it without a copy.
The leading axes are (B,) for a padded batch (``attention_cpu.py``) and () for a packed
one, whose token axis T takes the place of S (``attention_varlen_cpu.py``). NumPy only; it
imports nothing from the rest of the package.
"""
from __future__ import annotations

import numpy as np

__all__ = ["token_major", "merged_view"]


def token_major(lead, A, S, D, dtype, n=1, empty=np.empty):
    """n arrays (*lead, A, S, D), views of one C-contiguous (*lead, S, n, A, D) buffer made
    by ``empty(shape, dtype)`` (uninitialised: the kernels write every element)."""
    buf = empty((*lead, S, n, A, D), dtype)
    return tuple(np.moveaxis(buf[..., j, :, :], -3, -2) for j in range(n))


def merged_view(parts):
    """The (..., S, n A D) array whose columns j A D .. (j + 1) A D - 1 hold part j, as a
    view, where the n parts (..., A, S, D) are views of one C-contiguous NumPy buffer
    (..., S, n, A, D) in that order (``token_major``); else None."""
    base = parts[0].base
    *lead, A, S, D = parts[0].shape
    n = len(parts)
    if not (isinstance(base, np.ndarray) and base.flags.c_contiguous
            and base.shape == (*lead, S, n, A, D) and base.dtype == parts[0].dtype):
        return None
    for j, p in enumerate(parts):
        view = np.moveaxis(base[..., j, :, :], -3, -2)                        # (..., A, S, D)
        if not (isinstance(p, np.ndarray) and p.base is base and p.shape == view.shape
                and p.strides == view.strides
                and p.__array_interface__["data"][0] == view.__array_interface__["data"][0]):
            return None
    return base.reshape(*lead, S, n * A * D)
