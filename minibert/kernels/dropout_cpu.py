"""Inverted dropout as one fused Numba pass (NumPy float32/float64 arrays).

The function and its gradient are ``minibert/ops/dropout.py``'s (its docstring derives them):
``y = x * keep / (1 - p)`` and ``dx = dy * keep / (1 - p)``, with ``keep`` the bits of
``minibert.rng.keep_mask(x.shape, p, seed, offset)``: element i in C order over x.shape
takes word i % 4 of Philox4x32-10 at counter block i // 4 (``philox_cpu.py``).

What the readable op does in several NumPy passes (the Philox rounds on whole arrays of
counters, each round a handful of temporaries, then the mask, the product, the division),
the forward kernel does in one: per row of ``CHUNK`` elements it runs Philox once per four
elements into a row of keep factors (1 or 0; this loop vectorises, four counter blocks per
AVX2 instruction), then writes ``y = x * factor / (1 - p)`` and the mask.

Rows form (the op's ``rows``): x is N rows of R elements, row t being row rows[t] of a larger
layout, element j of it stream element ``start + rows[t] * R + j``
(``minibert.rng.keep_mask_rows``; a packed batch of real tokens drawing its padded batch's
bits). ``forward_rows_at`` walks x by runs of rows that are consecutive in the larger
layout too (a sequence's tokens), each run in pieces of up to ``CHUNK`` elements, each
piece as a row of ``forward_rows``: its Philox blocks from the block of its first element,
then the same writes. The threads split the N rows. A run costs at most one Philox block
more than its elements / 4; walking row by row instead cost 1.2-1.35x at R = 100 (the few
blocks left over after the vector loop of each short row run one at a time). Measured on a
packed batch of 32 sequences (T = 1366 of B S = 4096 rows), one thread, the two forms' calls
interleaved, medians of 101 pairs (on a loaded 2-core machine): rows / plain form on the same
(T, H) 0.99-1.02 at H = 384 and 768, 1.02-1.04 at H = 100 (one piece more per sequence);
rows in no order (no runs) 1.4x at H = 100. The backward is the same in both forms: the mask
is saved.

Bit for bit the readable op. NumPy computes ``x * keep`` (bool promoted to x's dtype:
x * 1 or x * 0, so -0.0 for a negative x and NaN for an infinite one), then divides by the
Python float ``1 - p`` converted to x's dtype (a Python float is a "weak" scalar: it takes
the array's dtype). The kernel does the same two roundings on the same operands: a
multiplication by 1 or 0, then a division by ``dtype(1 - p)`` (not a multiplication by the
reciprocal, which would round differently). The keep test is ``philox_cpu.keep_from_word``,
in float32 as the convention says.

What the forward saves: the boolean mask (1 byte per element), not the means to regenerate
it. Measured on one thread, float32, p = 0.1, median of 11 calls in one run (AMD EPYC with
AVX2, Numba 0.68, NumPy 2.4; compilation excluded; glibc's trimming of freed memory off,
so that page faults of fresh arrays do not blur the comparison):

    shape          store the mask: fwd + bwd      regenerate it: fwd + bwd      readable: fwd + bwd
    (1024, 768)    0.85 + 0.15 = 1.00 ms           0.85 + 0.84 = 1.69 ms         13.4 + 0.44 ms
    (1024, 3072)   4.36 + 1.40 = 5.76 ms           3.88 + 4.02 = 7.90 ms         84.1 + 3.50 ms

Writing the mask costs the forward little (the Philox rounds, ~1 ns per element, dominate
it), and reading it back makes the backward a plain streaming pass, several times cheaper
than running Philox again: storing is 1.7x (H = 768) and 1.4x (I = 3072) faster for the
pair. The memory is what the readable op keeps too (the same bool mask), a quarter of the
float32 output the model keeps anyway. (The fused attention kernels regenerate instead:
their mask would be (S, S) per head.)

``error_model="numpy"``: a division by zero would give inf or NaN as in NumPy instead of
raising (1 - p > 0 here; it keeps the loops free of the test). Indices in the inner loops
are unsigned: Numba then drops its negative-index wraparound test, which otherwise stops
the loops from vectorising (measured: the backward pass went from about 2 ns to 0.3 ns per
element).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .. import _numba_cache  # noqa: F401  (before any @njit: see minibert/_numba_cache.py)
from ._threads import run_rows
from .philox_cpu import keep_from_word, philox4x32_10

#: Elements per row of the kernels: a multiple of 4, so that every row but the last starts
#: and ends on a Philox counter block; its keep factors (16 KiB in float32) stay in L1.
CHUNK = 4096

_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
_U1, _U2, _U3, _U4 = np.uint64(1), np.uint64(2), np.uint64(3), np.uint64(4)


@njit(nogil=True, cache=True, error_model="numpy")
def _keep_factors(seed, offset, p32, e0, e1, one, zero, kf):
    """kf[i - e0] = one where element i of the stream (seed, offset) is kept, else zero, for
    e0 <= i < e1 (uint64) with e0 a multiple of 4. One Philox call per four elements; the
    last call may fill up to three factors past e1 - e0 (kf has room for them)."""
    s, o = np.uint64(seed), np.uint64(offset)
    s_lo, s_hi, o_lo, o_hi = s & _MASK32, s >> _SHIFT32, o & _MASK32, o >> _SHIFT32
    first = e0 >> _U2                               # counter block of element e0
    for b in range((e1 - e0 + _U3) >> _U2):
        block = first + b
        w0, w1, w2, w3 = philox4x32_10(block & _MASK32, block >> _SHIFT32, o_lo, o_hi, s_lo, s_hi)
        i = _U4 * b
        kf[i] = one if keep_from_word(w0, p32) else zero
        kf[i + _U1] = one if keep_from_word(w1, p32) else zero
        kf[i + _U2] = one if keep_from_word(w2, p32) else zero
        kf[i + _U3] = one if keep_from_word(w3, p32) else zero


@njit(nogil=True, cache=True, error_model="numpy")
def forward_rows(x, seed, offset, start, p32, denom, y, keep, chunk, r0, r1):
    """Rows r0 <= r < r1 (elements r chunk .. (r + 1) chunk - 1) of the flat x (n,):
    y = x * keep / denom and the mask ``keep`` (bool); element i of x is element
    start + i of the stream. ``denom`` is dtype(1 - p), ``p32`` float32(p), ``seed``,
    ``offset`` and ``start`` uint64 (see ``philox_cpu.py`` on why)."""
    n = x.shape[0]
    one, zero = x.dtype.type(1.0), x.dtype.type(0.0)
    kf = np.empty(chunk + 8, dtype=x.dtype)         # keep factors of one row, 1 or 0
    for r in range(r0, r1):
        e0 = r * chunk
        e1 = min(e0 + chunk, n)
        u0 = np.uint64(e0)
        g0 = start + u0                             # the row's first element in the stream
        lane = g0 & _U3                             # its word in its counter block
        _keep_factors(seed, offset, p32, g0 - lane, g0 + np.uint64(e1 - e0), one, zero, kf)
        for i in range(np.uint64(e1 - e0)):
            # (x * keep) / (1 - p): the readable op's two roundings, in its order
            f = kf[lane + i]
            y[u0 + i] = x[u0 + i] * f / denom
            keep[u0 + i] = f != zero


@njit(nogil=True, cache=True, error_model="numpy")
def forward_rows_at(x, rows, seed, offset, start, p32, denom, y, keep, chunk, t0, t1):
    """Rows t0 <= t < t1 of x (N rows of R elements, flat (N R,)): y = x * keep / denom and
    the mask ``keep``; element j of row t is element start + rows[t] R + j of the stream.
    A run of rows that follow each other in the stream too (rows[t + 1] = rows[t] + 1: the
    tokens of one sequence of a packed batch) is one contiguous span of x and of the stream,
    walked as ``forward_rows`` walks x: in pieces of at most ``chunk`` elements, each one
    call of ``_keep_factors`` from the counter block of its first element, then the writes.
    ``rows`` uint64 (N,), the rest as in ``forward_rows``."""
    n_rows = rows.shape[0]
    R = np.uint64(x.shape[0] // n_rows) if n_rows else _U1
    one, zero = x.dtype.type(1.0), x.dtype.type(0.0)
    kf = np.empty(chunk + 8, dtype=x.dtype)         # keep factors of one piece, 1 or 0
    t = t0
    while t < t1:
        t_end = t + 1                               # the run: rows t .. t_end - 1
        while t_end < t1 and rows[t_end] == rows[t_end - 1] + _U1:
            t_end += 1
        g_run = start + rows[t] * R                 # the run's first element in the stream
        u_run = np.uint64(t) * R                    # ... and in x
        size = np.uint64(t_end - t) * R
        for c0 in range(np.uint64(0), size, np.uint64(chunk)):
            m = min(size - c0, np.uint64(chunk))    # elements of this piece
            g0 = g_run + c0
            lane = g0 & _U3                         # its word in its counter block
            _keep_factors(seed, offset, p32, g0 - lane, g0 + m, one, zero, kf)
            u0 = u_run + c0
            for i in range(m):
                f = kf[lane + i]                    # (x * keep) / (1 - p), as forward_rows
                y[u0 + i] = x[u0 + i] * f / denom
                keep[u0 + i] = f != zero
        t = t_end


@njit(nogil=True, cache=True, error_model="numpy")
def backward_rows(dy, keep, denom, dx, chunk, r0, r1):
    """Rows r0 <= r < r1 of the flat dy (n,): dx = dy * keep / denom."""
    n = dy.shape[0]
    one, zero = dy.dtype.type(1.0), dy.dtype.type(0.0)
    for r in range(r0, r1):
        for i in range(np.uint64(r * chunk), np.uint64(min((r + 1) * chunk, n))):
            dx[i] = dy[i] * (one if keep[i] else zero) / denom   # undoes y = x * keep / (1 - p)


def _rows(n):
    return -(-n // CHUNK)


def forward(x, p, seed, offset, start=0, rows=None):
    """``y`` and the bool mask ``keep`` (both of x's shape) of
    ``minibert.ops.dropout.forward(x, p, seed, offset, training=True, start=start, rows=rows)``
    for 0 < p < 1 (the op validates them; ``rows`` arrives as the op's checked uint64 (N,)
    array, N = x.shape[0]); x a NumPy float32/float64 array of any shape (at least 1-D with
    ``rows``). The op saves ``(keep, p)`` for ``backward``."""
    flat = np.ascontiguousarray(x).reshape(-1)              # C order: the element index
    n = flat.shape[0]
    y = np.empty(n, dtype=x.dtype)
    keep = np.empty(n, dtype=np.bool_)
    common = (np.uint64(seed), np.uint64(offset), np.uint64(start), np.float32(p),
              x.dtype.type(1.0 - p), y, keep, CHUNK)
    if rows is None:
        run_rows(forward_rows, _rows(n), flat, *common)
    else:
        rows = np.ascontiguousarray(rows, dtype=np.uint64)
        run_rows(forward_rows_at, rows.shape[0], flat, rows, *common)
    return y.reshape(x.shape), keep.reshape(x.shape)


def backward(dy, keep, p):
    """``dx = dy * keep / (1 - p)`` in dy's dtype, as the readable op (a fresh array)."""
    if not (type(dy) is np.ndarray and dy.dtype in (np.float32, np.float64)
            and dy.shape == keep.shape):
        return dy * keep / (1.0 - p)             # anything else: the readable line itself
    flat = np.ascontiguousarray(dy).reshape(-1)
    n = flat.shape[0]
    dx = np.empty(n, dtype=dy.dtype)
    run_rows(backward_rows, _rows(n), flat, keep.reshape(-1), dy.dtype.type(1.0 - p), dx, CHUNK)
    return dx.reshape(dy.shape)
