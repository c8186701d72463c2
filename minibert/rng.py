"""Counter-based random numbers: Philox4x32-10 (Salmon et al., SC'11, "Parallel random
numbers: as easy as 1, 2, 3").

A counter-based generator is a pure function ``bits = philox(counter, key)``: no state is
carried from one number to the next, so element ``i`` of a dropout mask can be computed by
whichever thread (NumPy, a Numba kernel, a CUDA kernel) happens to need it, and a fused
backward can regenerate the mask instead of storing it.

minibert's convention, shared by every implementation:

    key     = (seed mod 2**32, seed >> 32)                      two 32-bit words
    counter = (block mod 2**32, block >> 32,                    block = element_index // 4
               offset mod 2**32, offset >> 32)
    word    = philox(counter, key)[element_index % 4]           one uint32 per element
    u       = (word >> 8) * 2**-24                              uniform in [0, 1), exact in float32
    keep    = u >= p                                            dropout keeps with probability 1 - p

``offset`` separates independent streams under one seed (each dropout site of each forward
call gets its own offset; see ``BertModel``). ``start`` is the element index of the first
element asked for: a tensor that is rows r0.. of a larger batch (one rank's slice of a
data-parallel batch) draws the bits of those rows of the whole batch's mask, so the ranks
together draw exactly the mask of one process running the whole batch.

Rows of a larger layout. ``keep_mask_rows(rows, row_size, ...)`` draws the mask at chosen
rows of a C-order layout of rows of ``row_size`` elements: element (t, j) of its
(N, row_size) result is stream element

    start + rows[t] * row_size + j          t < N, j < row_size

the element that row rows[t] has in the larger layout. A packed batch of real tokens
(T, H), token t being row rows[t] = b * S + i of the padded (B * S, H) layout, so draws the
bits its tokens have in the padded (B, S, H) batch: padding-free execution gives the
padded model's numbers. ``keep_mask(shape, ...)`` is the case rows = 0, 1, ..., N - 1.
"""
from __future__ import annotations

import numpy as np

from .backend import get_array_module

# Philox4x32 multipliers and Weyl key increments (Salmon et al., Table 2).
PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
MASK32 = 0xFFFFFFFF


def check_u64(name, value):
    """``int(value)`` for an integer ``value`` in [0, 2**64) (a seed or an offset); raises
    TypeError for a non-integer (bool included) and ValueError out of range, naming
    ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}={value!r} has type {type(value).__name__}, expected an integer")
    if not 0 <= int(value) < 2**64:
        raise ValueError(f"{name}={value!r} is out of range, expected 0 <= {name} < 2**64")
    return int(value)


def philox4x32(c0, c1, c2, c3, k0, k1, rounds: int = 10):
    """Philox4x32 on arrays of uint32 counter words (any shape) and scalar/array key words.

    Returns the four uint32 output words. Each round multiplies two words by the Philox
    constants, splits the 64-bit products into high and low halves and mixes them with the
    other two words and the key; the key is bumped by the Weyl constants between rounds.
    """
    xp = get_array_module(c0)
    u32, u64 = xp.uint32, xp.uint64
    c0, c1, c2, c3 = (xp.asarray(c, dtype=u32) for c in (c0, c1, c2, c3))
    k0 = xp.asarray(k0, dtype=u32)
    k1 = xp.asarray(k1, dtype=u32)
    m0, m1 = u64(PHILOX_M0), u64(PHILOX_M1)
    for r in range(rounds):
        if r > 0:  # bump the key between rounds (wraps mod 2**32)
            k0 = (k0.astype(u64) + u64(PHILOX_W0)).astype(u32)
            k1 = (k1.astype(u64) + u64(PHILOX_W1)).astype(u32)
        p0 = c0.astype(u64) * m0          # 64-bit products of 32-bit words: never overflow
        p1 = c2.astype(u64) * m1
        hi0, lo0 = (p0 >> u64(32)).astype(u32), (p0 & u64(MASK32)).astype(u32)
        hi1, lo1 = (p1 >> u64(32)).astype(u32), (p1 & u64(MASK32)).astype(u32)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def random_bits(n: int, seed: int, offset: int = 0, xp=np, start: int = 0):
    """Words ``start`` .. ``start + n - 1`` of the stream (seed, offset), uint32 (n,): word i
    for element i."""
    seed = check_u64("seed", seed)
    offset = check_u64("offset", offset)
    start = check_u64("start", start)
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n={n!r} is not a valid element count, expected an integer >= 0")
    first, lane = divmod(start, 4)                  # the block of element start, its word
    n_blocks = (lane + int(n) + 3) // 4
    block = xp.arange(n_blocks, dtype=xp.uint64) + xp.uint64(first)     # (n_blocks,)
    c0 = (block & xp.uint64(MASK32)).astype(xp.uint32)
    c1 = (block >> xp.uint64(32)).astype(xp.uint32)
    c2 = xp.full(n_blocks, offset & MASK32, dtype=xp.uint32)
    c3 = xp.full(n_blocks, offset >> 32, dtype=xp.uint32)
    words = philox4x32(c0, c1, c2, c3, seed & MASK32, seed >> 32)
    # element 4*b + j takes word j of block b
    return xp.stack(words, axis=1).reshape(-1)[lane:lane + n]            # (n,)


def uniform(shape, seed: int, offset: int = 0, xp=np, dtype=np.float32, start: int = 0):
    """Uniform numbers in [0, 1) with 24 random bits each, laid out in C order over ``shape``
    from element ``start`` of the stream on."""
    shape = tuple(int(s) for s in np.atleast_1d(shape)) if not isinstance(shape, tuple) else shape
    n = int(np.prod(shape, dtype=np.int64))
    bits = random_bits(n, seed, offset, xp, start)
    u = (bits >> xp.uint32(8)).astype(dtype) * dtype(2.0 ** -24)
    return u.reshape(shape)


def keep_mask(shape, p: float, seed: int, offset: int = 0, xp=np, start: int = 0):
    """Boolean dropout keep-mask: True where ``uniform >= p`` (kept with probability 1 - p).

    The comparison is done in float32 on values that are exact multiples of 2**-24, so every
    implementation that follows the convention above produces the same bits.
    """
    u = uniform(shape, seed, offset, xp, np.float32, start)
    return u >= np.float32(p)


def check_rows(rows, n_rows=None, row_size: int = 0, start: int = 0, xp=np):
    """``rows`` as a uint64 array of ``xp``, after checking that it is a 1-D integer array
    of ``xp`` (NumPy or CuPy: the device of the data), of length ``n_rows`` unless that is
    None, with values >= 0 whose last stream element ``start + (max(rows) + 1) * row_size - 1``
    is below 2**64. Raises TypeError or ValueError naming ``rows``. (The check reads min and
    max back from the device: one small synchronisation on a GPU.)"""
    if not hasattr(rows, "dtype") or not hasattr(rows, "shape") or get_array_module(rows) is not xp:
        raise TypeError(f"rows has type {type(rows).__module__}.{type(rows).__name__}, expected a "
                        f"{xp.__name__} integer array (row indices, on the device of the data)")
    if np.dtype(rows.dtype).kind not in "iu":
        raise TypeError(f"rows has dtype {rows.dtype}, expected an integer dtype (row indices)")
    if len(rows.shape) != 1:
        raise ValueError(f"rows has shape {tuple(rows.shape)}, expected a 1-D array of row indices")
    if n_rows is not None and rows.shape[0] != n_rows:
        raise ValueError(f"rows has length {rows.shape[0]}, expected {n_rows}: one row index per "
                         "row of the data")
    if rows.shape[0]:
        low, high = (int(v) for v in xp.stack([rows.min(), rows.max()]).tolist())
        if low < 0:
            raise ValueError(f"rows holds {low} (at index {int(xp.argmin(rows))}), expected row "
                             "indices >= 0")
        if start + (high + 1) * row_size > 2**64:
            raise ValueError(f"rows holds {high}: with row_size={row_size} and start={start} its "
                             "last element index is >= 2**64, expected indices below 2**64")
    return rows.astype(xp.uint64, copy=False)


def keep_mask_rows(rows, row_size: int, p: float, seed: int, offset: int = 0, xp=np, start: int = 0):
    """Boolean keep-mask (N, row_size) at rows ``rows`` (N,) of a larger C-order layout of
    rows of ``row_size`` elements: element (t, j) is stream element
    ``start + rows[t] * row_size + j`` (module docstring), kept where its uniform is >= p,
    as in ``keep_mask``. ``rows``: a 1-D integer array of ``xp``, values >= 0 (``check_rows``).

    Each element computes the Philox block of its own index and takes its word: four times
    the work of ``keep_mask`` (which shares one block among four consecutive elements), and
    the plainest statement of the convention; the kernels do it at full speed."""
    seed, offset, start = check_u64("seed", seed), check_u64("offset", offset), check_u64("start", start)
    if isinstance(row_size, (bool, np.bool_)) or not isinstance(row_size, (int, np.integer)) or row_size < 0:
        raise ValueError(f"row_size={row_size!r} is not a valid row size, expected an integer >= 0")
    u64, row_size = xp.uint64, int(row_size)
    rows = check_rows(rows, None, row_size, start, xp)
    index = (u64(start) + rows[:, None] * u64(row_size)
             + xp.arange(row_size, dtype=u64)[None, :])                     # (N, row_size)
    block, lane = index >> u64(2), (index & u64(3)).astype(xp.intp)         # element e: word e % 4
    words = philox4x32((block & u64(MASK32)).astype(xp.uint32), (block >> u64(32)).astype(xp.uint32),
                       offset & MASK32, offset >> 32, seed & MASK32, seed >> 32)  # of block e // 4
    word = xp.take_along_axis(xp.stack(words, axis=-1), lane[..., None], axis=-1)[..., 0]
    u = (word >> xp.uint32(8)).astype(xp.float32) * xp.float32(2.0 ** -24)
    return u >= np.float32(p)
