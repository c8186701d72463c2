"""LayerNorm of ``x`` or of ``x + residual`` as one Numba pass per row, forward and backward
(NumPy float32/float64 arrays).

The function and its gradient are ``minibert/ops/layernorm.py``'s (its docstring derives
them): per row of the sum ``s = x + residual``, ``mu``, the biased ``var``, ``rstd =
1 / sqrt(var + eps)``, ``xhat = (s - mu) rstd``, ``y = xhat weight + bias``; backward
``dbias = sum_n dy``, ``dweight = sum_n dy xhat``, ``dxhat = dy weight`` and ``dx = rstd
(dxhat - mean(dxhat) - xhat mean(dxhat xhat))``, also the residual's gradient.

Forward, per row, while the row stays in the L1 cache: the sum s (rounded to x's dtype, as
the readable ``x + residual``), its mean, then the sum of squared deviations from that
mean (the readable op's two passes, which keep the variance accurate for rows whose mean
is large against their spread), rstd, y. Backward, per row: a loop that forms xhat and
dxhat into two float64 scratch rows, one that adds the row's share of dweight and dbias,
one that sums the scratch rows, one that writes dx; a row and its scratch stay in the L1
cache (the first two as one loop measured no faster).

What the forward saves: the sum s (without a residual, x itself: nothing is written, and
x, like the inputs other ops keep, must not be changed in place before the backward), and
mean and rstd per row in float64; the backward recomputes xhat from them, one subtraction
and one product per element. The readable op saves xhat instead: the same memory, but a
write of (N, H) even without a residual.

Precision. Every row statistic and every intermediate is float64, whatever the input
dtype; the results are rounded to it once, which for float32 input is more accurate than
the readable op (it rounds each statistic, xhat and dxhat to float32). The kernels fuse
multiply-adds and nothing else, except the row sums, which may also be reordered
(``FASTMATH_SUMS``).

dweight and dbias are sums over all rows. So that rows can be split between threads with
no two of them writing the same memory, the backward works on blocks of
``ROWS_PER_BLOCK`` rows: block b adds its rows, in order, into row b of a float64 buffer
(n_blocks, H), and the blocks are summed afterwards. The result does not depend on how
the blocks are shared out.

Measured on one thread, float32, N = 1024 rows of H = 768 (BERT-base, 1024 tokens), median
of 21 calls, compilation excluded, outputs allocated by each call (2-core AMD EPYC, AVX2,
Numba 0.68, NumPy 2.4), ms, the spread of three runs::

                                   forward       backward
    no residual   kernel           0.36 - 0.45   0.75 - 1.1
                  readable         1.6 - 2.7     2.5 - 3.8
    residual      kernel           0.51 - 0.59   0.76 - 1.05
                  readable         2.1 - 2.3     2.3 - 2.5      (x + residual, then the op)

    export MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296
    python benchmarks/bench_row_kernels.py layernorm

The two variables keep glibc from handing each freed temporary of a few MB back to the
system. Without them the readable op's forward took 2 to 12 ms from one run to the next
here: when glibc gave its temporaries fresh pages, a call took ~3000 page faults (counted
with ``resource.getrusage``), some 3 us each in this VM, more than the arithmetic.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .. import _numba_cache  # noqa: F401  (before any @njit: see minibert/_numba_cache.py)
from ._rows import dy_rows, rows_of, writes_over
from ._threads import run_rows

#: Rows per partial sum of dweight and dbias; each block writes one row of the buffer.
ROWS_PER_BLOCK = 32
#: The kernels' flags: fused multiply-adds only.
FASTMATH = {"contract"}
#: The row sums' flags: reassociation too, so that the compiler can split a sum into
#: vector-wide partial sums. Without it a float64 sum is one chain of dependent additions
#: (measured 0.33 ns per float32 element against 0.11, and explicit lanes in a scratch array
#: did no better: the compiler keeps them in memory). The order of a sum changes its result
#: by rounding alone, ~1e-16 relative in float64.
FASTMATH_SUMS = {"contract", "reassoc"}


@njit(nogil=True, cache=True, fastmath=FASTMATH_SUMS, error_model="numpy")
def _row_sum(v):
    """sum_j v[j] of a row (H,), in float64."""
    total = 0.0
    for j in range(v.shape[0]):
        total += v[j]
    return total


@njit(nogil=True, cache=True, fastmath=FASTMATH_SUMS, error_model="numpy")
def _row_sum_sq_dev(v, mu):
    """sum_j (v[j] - mu)^2 of a row (H,), in float64."""
    total = 0.0
    for j in range(v.shape[0]):
        d = v[j] - mu
        total += d * d
    return total


@njit(nogil=True, cache=True, fastmath=FASTMATH_SUMS, error_model="numpy")
def _row_sum_and_dot(g, xh):
    """(sum_j g[j], sum_j g[j] xh[j]) of two float64 rows (H,)."""
    sum_g = 0.0
    sum_gx = 0.0
    for j in range(g.shape[0]):
        sum_g += g[j]
        sum_gx += g[j] * xh[j]
    return sum_g, sum_gx


@njit(inline="always", nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _forward_row(xr, rr, has_residual, weight, bias, eps, yr, sr):
    """One row (H,): sr = xr + rr (when ``has_residual``; else sr is xr), then yr; returns
    the row's (mean, rstd) in float64. sr and yr may be xr itself."""
    H = xr.shape[0]
    if has_residual:
        for j in range(H):
            sr[j] = xr[j] + rr[j]                             # x = x + residual, in x's dtype
    mu = _row_sum(sr) / H                                     # mu = mean(x)
    var = _row_sum_sq_dev(sr, mu) / H                         # var = mean((x - mu)^2)
    rs = 1.0 / np.sqrt(var + eps)
    for j in range(H):
        yr[j] = (sr[j] - mu) * rs * weight[j] + bias[j]       # y = xhat * weight + bias
    return mu, rs


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def forward_rows(x, residual, has_residual, weight, bias, eps, y, s, mean, rstd, r0, r1):
    """Rows r0 <= r < r1 of x (N, H): s = x + residual (only when ``has_residual``; the
    caller then passes a fresh s, else s is x and ``residual`` is not read), mean and rstd
    (N,) float64, and y (N, H)."""
    for r in range(r0, r1):
        mean[r], rstd[r] = _forward_row(x[r], residual[r], has_residual, weight, bias, eps,
                                        y[r], s[r])


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def forward_rows_in_place(x, residual, has_residual, weight, bias, eps, r0, r1):
    """Rows r0 <= r < r1 of x (N, H): y written over x, no statistics kept (inference). Its
    own kernel, as in ``gelu_cpu.py``: with x, s and y three arguments that are one array,
    LLVM's run-time overlap checks would send the loops to their scalar versions."""
    for r in range(r0, r1):
        xr = x[r]
        _forward_row(xr, residual[r], has_residual, weight, bias, eps, xr, xr)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def backward_blocks(dy, s, mean, rstd, weight, dx, dweight_part, dbias_part, b0, b1):
    """Blocks b0 <= b < b1 of ROWS_PER_BLOCK rows of s (N, H): dx for those rows, and
    rows b of dweight_part and dbias_part (n_blocks, H) float64, the block's partial sums."""
    N, H = s.shape
    # one row of dxhat and of xhat, kept for the second loop: it then subtracts the mean
    # of exactly the values it was computed from (recomputing them could round the product
    # dy * weight differently, fused or not, and with H = 1, where dx is exactly zero,
    # leave rstd times that rounding)
    g = np.empty(H, dtype=np.float64)
    xh = np.empty(H, dtype=np.float64)
    for b in range(b0, b1):
        pw, pb = dweight_part[b], dbias_part[b]               # (H,) each
        for j in range(H):
            pw[j] = 0.0
            pb[j] = 0.0
        for r in range(b * ROWS_PER_BLOCK, min(N, (b + 1) * ROWS_PER_BLOCK)):
            sr, dyr, dxr = s[r], dy[r], dx[r]                 # (H,) each
            mu, rs = mean[r], rstd[r]
            # undoes y = xhat * weight + bias: dxhat, then this row's dweight and dbias
            for j in range(H):
                xh[j] = (sr[j] - mu) * rs
                g[j] = np.float64(dyr[j]) * weight[j]
            for j in range(H):
                pw[j] += dyr[j] * xh[j]
                pb[j] += dyr[j]
            sum_g, sum_gx = _row_sum_and_dot(g, xh)
            mean_g = sum_g / H
            mean_gx = sum_gx / H
            # undoes xhat = (x - mu) * rstd, with mu and rstd functions of x
            for j in range(H):
                dxr[j] = rs * (g[j] - mean_g - xh[j] * mean_gx)


def forward(x, weight, bias, eps, residual=None, grad=True, out=None):
    """``(y, saved)`` of ``minibert.ops.layernorm.forward(x, weight, bias, eps, residual)``
    for arrays the op has validated: x (..., H) and residual (of x's shape, or None) NumPy
    float32/float64 of weight's and bias's dtype (H,), any layout. ``saved`` is
    ``backward``'s argument list after dy, or None with ``grad`` False (inference: nothing
    is kept); ``out`` (C-contiguous, x's shape and dtype) receives y, and with ``grad``
    False may be x itself."""
    H = x.shape[-1]
    x2 = rows_of(x, H)                                        # (N, H)
    w, b = np.ascontiguousarray(weight), np.ascontiguousarray(bias)
    N = x2.shape[0]
    res = x2 if residual is None else rows_of(residual, H)    # (N, H); x2: not read
    y = np.empty_like(x2) if out is None else out.reshape(x2.shape)   # (N, H)
    over_x = out is not None and writes_over(y, x2, ("residual", residual),
                                             ("weight", weight), ("bias", bias))
    if over_x and grad:
        raise ValueError("out is x, which the backward reads: expected grad=False")
    if over_x:
        run_rows(forward_rows_in_place, N, x2, res, residual is not None, w, b, float(eps))
        return y.reshape(x.shape), None
    s = x2 if residual is None else np.empty_like(x2)         # the sum (N, H)
    mean = np.empty(N, dtype=np.float64)
    rstd = np.empty(N, dtype=np.float64)
    run_rows(forward_rows, N, x2, res, residual is not None, w, b, float(eps), y, s, mean, rstd)
    return y.reshape(x.shape), ((s, mean, rstd, w, x.shape) if grad else None)


def backward(dy, s, mean, rstd, weight, shape):
    """``(dx, dweight, dbias)`` from the forward's ``saved``: dx of the forward's x shape
    (also the residual's gradient), dweight and dbias (H,), all in s's dtype (dy is
    converted to it)."""
    N, H = s.shape
    dy2 = dy_rows(dy, shape, s)                               # (N, H)
    dx = np.empty_like(s)                                     # (N, H)
    n_blocks = -(-N // ROWS_PER_BLOCK)
    dweight_part = np.empty((n_blocks, H), dtype=np.float64)
    dbias_part = np.empty((n_blocks, H), dtype=np.float64)
    run_rows(backward_blocks, n_blocks, dy2, s, mean, rstd, weight, dx, dweight_part, dbias_part)
    dweight = dweight_part.sum(axis=0).astype(s.dtype)       # (H,)
    dbias = dbias_part.sum(axis=0).astype(s.dtype)           # (H,)
    return dx.reshape(shape), dweight, dbias
