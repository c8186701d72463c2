"""Softmax cross-entropy as fused Numba row passes (NumPy float32/float64 logits).

The function, the weighting and the gradient are ``minibert/ops/cross_entropy.py``'s (its
docstring derives them); the op computes the per-row scale c_n w_n / W itself, with the same
NumPy lines on both paths, so weights, ignore_index and the W = 0 case (loss 0, gradient 0)
are the op's by construction. This module does the (N, C) work:

    forward, per row n:   m_n = max_k logits[n, k]
                          s_n = sum_k exp(logits[n, k] - m_n)              (s_n in [1, C])
                          l_n = log s_n - (logits[n, label_n] - m_n)       (= lse_n - logit)
    backward, per row n:  dlogits[n, k] = dloss scale_n (exp(logits[n, k] - m_n) / s_n
                                                         - [k == label_n])

What it saves: the row log-sum-exp lse_n = m_n + log s_n, kept as its two parts m_n (the
logits' dtype) and s_n (float64), (N,) each; not the (N, C) probabilities, which the
backward recomputes from the logits (the cache holds a reference to them, no copy). For the
MLM head the logits are (B P, V) with V = 30522: the readable op keeps a probability matrix
as large as the logits, and its forward makes five passes over (N, V) arrays in memory
(max, subtract, exp, sum, divide; three of them write a new (N, V) array) and its backward
two more (times the scale, times dloss). The kernel reads the logits once in the forward
(each row is copied to a scratch row while its max is taken; exp and sum then run on the
copy, in L2) and once in the backward, which writes dlogits once.

Why the two parts and not lse alone: the backward's exp(logits - m_n) has the argument
``z = logits - m_n`` the readable op computes (the same rounding in float32; for logits
within a factor 2 of the max the difference is exact), and 1 / s_n enters as a factor in
float64. With exp(logits - lse_n) in float32 the subtraction would round at the scale of
|lse_n| instead of |z|: for logits near 300, a hundred times coarser.

Arithmetic. exp is ``_blocks.exp_row`` (a vectorised range reduction and polynomial;
the scalar libm exp costs 3 to 5 times more per element), in the logits' dtype;
measured in float32 on [-20, 0] against a long-double exp: 0.91 ulp at most, 0.30 rms
(NumPy's float32 exp: 2.35 and 0.58). The sum of the exps is accumulated in float64
for either dtype (``fastmath`` "reassoc" on that loop only, so that it vectorises; its
rounding, ~C eps64, is then far below float32's), log s_n and l_n in float64, and the
backward's per-row factor dloss scale_n / s_n too, so that each gradient is rounded once
to the dtype. In float32 the kernel thus rounds less than the readable op (which sums,
divides and scales in float32): measured over 200 random problems, the loss within 2 ulps
of the exact value (the readable op's cancellation in lse - logit loses up to 1e7 ulps on
confident rows) and the gradient's RMS error about half the readable op's (median ratio
0.5; the tests state the claim). In float64 the two differ by the order of the C-term
sum and by the exp implementations: a few eps64.

``error_model="numpy"``: a division by zero gives inf or NaN as in NumPy instead of raising,
and the loops carry no zero test that would stop them from vectorising.

Non-finite logits behave as in the readable op: a NaN anywhere in a row, a +inf, or a row
of -inf only gives that row NaN (the readable op computes inf - inf there), hence a NaN
loss and NaN gradients; -inf among finite logits is an exact 0 probability.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .. import _numba_cache  # noqa: F401  (before any @njit: see minibert/_numba_cache.py)
from ._blocks import EXP_CONSTANTS, INT_OF, exp_row
from ._threads import run_rows


@njit(nogil=True, cache=True, error_model="numpy")
def _copy_max(src, dst, n):
    """dst[:n] = src[:n] and returns max(src[:n]) for n >= 1, NaN if any element is NaN: one
    read of the row from memory serves both. The running max and the NaN flag are kept
    apart (an IEEE max that propagates NaN does not vectorise; this loop does)."""
    m = src[0]
    nan = False
    for c in range(np.uint64(n)):
        v = src[c]
        dst[c] = v
        m = v if v > m else m
        nan |= v != v
    return src.dtype.type(np.nan) if nan else m


@njit(nogil=True, cache=True, error_model="numpy", fastmath={"reassoc"})
def _sum64(e, n):
    """sum(e[:n]) accumulated in float64; reassociation lets the loop vectorise (it assumes
    nothing about NaN or infinities)."""
    s = 0.0
    for c in range(np.uint64(n)):
        s += np.float64(e[c])
    return s


@njit(nogil=True, cache=True, error_model="numpy")
def _copy(src, dst, n):
    for c in range(np.uint64(n)):
        dst[c] = src[c]


@njit(nogil=True, cache=True, error_model="numpy")
def forward_rows(logits, labels, exp_consts, int_type, row_max, row_sum, nll, r0, r1):
    """Rows r0 <= n < r1 of logits (N, C), C >= 1: row_max[n] = m_n (dtype), row_sum[n] =
    s_n and nll[n] = l_n (float64). ``labels`` (N,) int64 holds a valid class on every row
    (the op puts 0 on ignored rows, whose l_n it weighs by 0)."""
    C = logits.shape[1]
    e = np.empty(C, dtype=logits.dtype)             # exp of one row
    ebuf = np.empty(C, dtype=logits.dtype)          # exp_row's scratch
    ebits = ebuf.view(int_type)
    inf = np.inf
    for n in range(r0, r1):
        x = logits[n]                                                   # (C,)
        m = _copy_max(x, e, C)                                          # e = x, m = max x
        row_max[n] = m
        if not abs(m) < inf:            # a NaN, a +inf, or -inf everywhere: inf - inf
            row_sum[n] = np.nan
            nll[n] = np.nan
            continue
        exp_row(e, C, m, ebuf, ebits, exp_consts)                       # e = exp(x - m)
        s = _sum64(e, C)                                                # in [1, C]
        row_sum[n] = s
        # l_n = lse_n - logit[label] = log s - (logit[label] - m); the difference of two
        # float32 numbers is exact in float64
        nll[n] = np.log(s) - (np.float64(x[labels[n]]) - np.float64(m))


@njit(nogil=True, cache=True, error_model="numpy")
def backward_rows(logits, labels, row_max, row_sum, scale, dloss, exp_consts, int_type,
                  dlogits, r0, r1):
    """Rows r0 <= n < r1 of dlogits (N, C): dloss scale_n (exp(x - m_n) / s_n - onehot).
    ``dloss`` is a float64 holding the value of the dtype's dloss."""
    C = logits.shape[1]
    ftype = logits.dtype.type
    ebuf = np.empty(C, dtype=logits.dtype)
    ebits = ebuf.view(int_type)
    for n in range(r0, r1):
        g = dlogits[n]                                                  # (C,) written in place
        d = dloss * np.float64(scale[n])              # dloss c_n w_n / W: the row's weight
        coef = d / row_sum[n]                         # ... times 1 / s_n: p = exp(x - m) / s
        _copy(logits[n], g, C)
        exp_row(g, C, row_max[n], ebuf, ebits, exp_consts)             # g = exp(x - m)
        at_label = np.float64(g[labels[n]])
        for c in range(np.uint64(C)):
            g[c] = ftype(np.float64(g[c]) * coef)     # undoes nll = lse - ...: the softmax
        g[labels[n]] = ftype(at_label * coef - d)     # ... minus the one-hot of the label


def forward(logits, labels):
    """The (N, C) part of the op's forward for NumPy float32/float64 ``logits`` with C >= 1
    and ``labels`` (N,) valid on every row. Returns ``nll`` (N,) float64 and the saved row
    statistics ``row_max`` (N,) dtype, ``row_sum`` (N,) float64."""
    logits = np.ascontiguousarray(logits)
    N = logits.shape[0]
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    row_max = np.empty(N, dtype=logits.dtype)
    row_sum = np.empty(N, dtype=np.float64)
    nll = np.empty(N, dtype=np.float64)
    run_rows(forward_rows, N, logits, labels, EXP_CONSTANTS[logits.dtype],
             INT_OF[logits.dtype], row_max, row_sum, nll)
    return nll, row_max, row_sum


def backward(dloss, logits, labels, row_max, row_sum, scale):
    """``dlogits`` (N, C), a fresh array of the logits' dtype; ``dloss`` the upstream scalar
    (converted to the logits' dtype first, as the readable op does)."""
    dtype = logits.dtype
    dloss = np.asarray(dloss, dtype=dtype)
    logits = np.ascontiguousarray(logits)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    dlogits = np.empty(logits.shape, dtype=dtype)
    d = float(dloss) if dloss.shape == () else 1.0
    run_rows(backward_rows, logits.shape[0], logits, labels, row_max, row_sum,
             np.ascontiguousarray(scale), d, EXP_CONSTANTS[dtype], INT_OF[dtype], dlogits)
    if dloss.shape != ():
        dlogits = dloss * dlogits        # a non-scalar upstream broadcasts, as in the readable op
    return dlogits
