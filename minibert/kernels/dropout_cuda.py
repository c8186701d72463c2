"""Inverted dropout on the GPU in one launch (Numba CUDA), forward and backward.

The function and its gradient are ``minibert/ops/dropout.py``'s (its docstring derives them):

    y  = x  * keep / (1 - p)
    dx = dy * keep / (1 - p)

with ``keep`` the bits of ``minibert.rng.keep_mask(x.shape, p, seed, offset, start=start)``:
element i (C order over x's shape) is element ``start + i`` of the Philox stream (seed,
offset), and element e takes word ``e % 4`` of Philox4x32-10 at counter block ``e // 4``.
The Philox functions are ``philox_cpu.py``'s own (Numba compiles them for the GPU, as for
the fused attention kernel), so the bits are those of the NumPy op, the CPU kernel and the
attention kernels.

One kernel does both passes: forward and backward are the same map, ``z = w * keep / (1 - p)``,
of x or of dy. Each thread owns one counter block: it runs Philox once and handles the up to
four elements of the block that fall in [start, start + n). The backward regenerates the
mask instead of reading a saved one: on a GPU the pass is bound by memory traffic, and the
ten Philox rounds per four elements cost less than writing and reading one mask byte per
element (the CPU kernel, bound by arithmetic, saves the mask instead: ``dropout_cpu.py``).
So the forward saves nothing but (p, seed, offset, start, rows).

Rows form (``rows``, the op's): w is N rows of R = w.size // N elements, row r being row
rows[r] of a larger layout, so element j of row r is stream element
``g + j, g = start + rows[r] * R`` (``minibert.rng.keep_mask_rows``). A second kernel walks
it: ``per_row = (R + 6) // 4`` threads per row (the counter blocks a row of R elements
whose first element is lane 3 of its block touches), thread t handling block
``(g >> 2) + t % per_row`` of row ``t // per_row``; a thread past its row's last block returns
before Philox. So a row costs at most one Philox block more than the ceil(R / 4) it needs
(at R = 768: one in 192), and the plain form's work per element otherwise (not timed on a
GPU yet).

Rounding: as the readable op, ``(w * f) / dtype(1 - p)`` with f = 1 or 0: a multiplication
by 1 or 0 (so -0.0 for a dropped negative, NaN for a dropped inf), then an IEEE division
by 1 - p rounded to w's dtype (Numba's CUDA target divides exactly unless fastmath is on).
The keep test compares float32 numbers (``philox_cpu.keep_from_word``).

Arrays: CuPy arrays (or any ``__cuda_array_interface__`` object) on CuPy's current stream,
giving CuPy arrays back; Numba device arrays (also the simulator's) giving Numba device
arrays back (``_cuda_host.Launch``). This module imports ``numba.cuda``.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda

from ..backend import get_array_module, is_device_array, to_numpy
from ..rng import keep_mask, keep_mask_rows
from ._cuda_host import Launch
from .philox_cpu import keep_from_word, philox_block

#: Threads per block: one counter block (four elements) each.
THREADS = 256

_ONE = np.uint64(1)
_TWO = np.uint64(2)
_THREE = np.uint64(3)


@functools.cache
def build_kernel(dtype_str):
    """The masking kernel for arrays of dtype ``dtype_str`` (float32 or float64), compiled by
    Numba on first launch."""
    ftype = np.dtype(dtype_str).type
    ONE, ZERO = ftype(1), ftype(0)

    @cuda.jit
    def apply_keep(w, seed, offset, start, n, p32, denom, z):
        """z[i] = w[i] * keep(start + i) / denom for i < n (flat arrays). Thread t handles
        counter block (start >> 2) + t: elements 4 ((start >> 2) + t) + lane, lane < 4."""
        t = np.uint64(cuda.grid(1))
        block = (start >> _TWO) + t
        w0, w1, w2, w3 = philox_block(seed, offset, block)
        first = block << _TWO                       # the stream element of lane 0
        for lane in range(4):
            e = first + np.uint64(lane)
            i = e - start if e >= start else n      # the element's index in w, or past it
            if i < n:
                word = w0 if lane == 0 else (w1 if lane == 1 else (w2 if lane == 2 else w3))
                f = ONE if keep_from_word(word, p32) else ZERO
                z[i] = ftype(w[i] * f / denom)      # (w * keep) / (1 - p): the op's order

    return apply_keep


@functools.cache
def build_rows_kernel(dtype_str):
    """The masking kernel of the rows form (``apply``'s ``rows``), for arrays of dtype
    ``dtype_str`` (float32 or float64), compiled by Numba on first launch."""
    ftype = np.dtype(dtype_str).type
    ONE, ZERO = ftype(1), ftype(0)

    @cuda.jit
    def apply_keep_rows(w, rows, seed, offset, start, n_rows, row_size, per_row, p32, denom, z):
        """z = w * keep / denom on w, z flat (n_rows row_size,), element j of row r being
        stream element g + j, g = start + rows[r] row_size. Thread t handles counter block
        (g >> 2) + t % per_row of row r = t // per_row (``per_row`` blocks cover any row),
        the lanes of it that fall in [g, g + row_size)."""
        t = np.uint64(cuda.grid(1))
        r = t // per_row                            # (NVVM divides in 32 bits when t fits)
        if r >= n_rows:
            return
        g = start + rows[r] * row_size                # the row's first stream element
        block = (g >> _TWO) + (t - r * per_row)       # the (t mod per_row)-th block of the row
        if block > (g + row_size - _ONE) >> _TWO:     # past the row's last block: no work
            return
        w0, w1, w2, w3 = philox_block(seed, offset, block)
        first = block << _TWO                       # the stream element of lane 0
        base = r * row_size                         # the row's first element in w
        for lane in range(4):
            e = first + np.uint64(lane)
            if e >= g and e - g < row_size:
                i = base + (e - g)
                word = w0 if lane == 0 else (w1 if lane == 1 else (w2 if lane == 2 else w3))
                f = ONE if keep_from_word(word, p32) else ZERO
                z[i] = ftype(w[i] * f / denom)      # (w * keep) / (1 - p): the op's order

    return apply_keep_rows


def signature(dtype):
    """The Numba signature ``apply`` launches the kernel with, for ``dtype`` (float32 or
    float64): for ``compile_ptx`` and for compiling ahead of the first launch."""
    from numba import types
    ft = types.float32 if np.dtype(dtype) == np.float32 else types.float64
    flat = types.Array(ft, 1, "C")
    u64 = types.uint64
    return (flat, u64, u64, u64, u64, types.float32, ft, flat)


def signature_rows(dtype):
    """The Numba signature of the rows form's kernel (``build_rows_kernel``), for ``dtype``."""
    from numba import types
    ft = types.float32 if np.dtype(dtype) == np.float32 else types.float64
    flat = types.Array(ft, 1, "C")
    u64 = types.uint64
    return (flat, types.Array(u64, 1, "C"), u64, u64, u64, u64, u64, u64, types.float32, ft, flat)


def compile_eagerly(dtype):
    """Compile the kernels (both forms) for ``dtype`` now, with the explicit signatures
    (needs a GPU): the first launch then compiles nothing. Returns the plain form's."""
    build_rows_kernel(np.dtype(dtype).str).compile(signature_rows(dtype))
    return build_kernel(np.dtype(dtype).str).compile(signature(dtype))


def apply(w, p, seed, offset, start=0, rows=None):
    """``w * keep / (1 - p)`` of a float32/float64 GPU array ``w`` (any shape), a new array of
    w's kind and shape; keep as in the module docstring. ``p`` in (0, 1) and ``seed``,
    ``offset``, ``start`` in [0, 2**64) arrive validated by the op; ``rows`` None or, as the
    op's ``check_rows`` gives it, a uint64 (N,) array of w's kind, N = w.shape[0]."""
    launch = Launch(w)
    flat = launch.flat(w)
    n = int(flat.shape[0])
    z = launch.empty(n, w.dtype)
    ftype = np.dtype(w.dtype).type
    if n and rows is None:
        blocks = ((start & 3) + n + 3) // 4          # counter blocks the elements touch
        kernel = build_kernel(np.dtype(w.dtype).str)
        kernel[-(-blocks // THREADS), THREADS, launch.stream](
            launch.arg(flat), np.uint64(seed), np.uint64(offset), np.uint64(start), np.uint64(n),
            np.float32(p), ftype(1.0 - p), launch.arg(z))
    elif n:
        n_rows = int(rows.shape[0])
        row_size = n // n_rows
        per_row = (row_size + 6) // 4                # blocks of a row whose first lane is 3
        kernel = build_rows_kernel(np.dtype(w.dtype).str)
        kernel[-(-(n_rows * per_row) // THREADS), THREADS, launch.stream](
            launch.arg(flat), launch.arg(rows), np.uint64(seed), np.uint64(offset),
            np.uint64(start), np.uint64(n_rows), np.uint64(row_size), np.uint64(per_row),
            np.float32(p), ftype(1.0 - p), launch.arg(z))
    return z.reshape(tuple(w.shape))


def forward(x, p, seed, offset, start=0, rows=None):
    """``y`` of ``minibert.ops.dropout.forward(x, p, seed, offset, training=True,
    start=start, rows=rows)`` for 0 < p < 1, x a float32/float64 GPU array: one launch."""
    return apply(x, p, seed, offset, start, rows)


def backward(dy, p, seed, offset, start=0, rows=None):
    """``dx = dy * keep / (1 - p)``, the mask regenerated: one launch. A ``dy`` the kernel is
    not compiled for (another dtype) takes the readable line with the mask from
    ``minibert.rng``: the same bits."""
    if is_device_array(dy) and np.dtype(dy.dtype) in (np.float32, np.float64):
        return apply(dy, p, seed, offset, start, rows)
    xp = get_array_module(dy)
    if rows is None:
        keep = keep_mask(tuple(dy.shape), p, seed, offset, xp, start)
    else:
        if xp is np:                                  # a host dy: the row indices come along
            rows = rows.copy_to_host() if hasattr(rows, "copy_to_host") else to_numpy(rows)
        keep = keep_mask_rows(rows, math.prod(dy.shape[1:]), p, seed, offset, xp,
                              start).reshape(dy.shape)
    return dy * keep / (1.0 - p)
