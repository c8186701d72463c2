"""Attention ladder, rung 2: fused softmax, one query row at a time.

Same contract, same math and same ``lse`` as rung 1 (``attn_v1_naive``, whose docstring
states them). What changes: rung 1 finishes each step for the whole (S, S) matrix before
it starts the next; this rung takes one query row i and carries it through every step
before it moves on:

    s_j  = scale * q_i . k_j                   for all keys j   -> a length-S scratch row
    m    = max_{j real} s_j
    e_j  = exp(s_j - m) on real keys, 0 on padded keys;  l = sum_j e_j
    out_i = (1 / l) * sum_j e_j * keep_ij / (1 - p) * v_j
    lse_i = m + log l

The division by the row sum moves from every entry (S^2 divisions in rung 1) to once per
row, applied to the D outputs. The backward does the same row by row: recompute the row
of probabilities ``p_j = exp(s_j - lse_i)``, then with ``g_j = (dO_i . v_j) keep/(1 - p)``

    dv_j += p_j keep/(1 - p) dO_i,   ds_j = p_j (g_j - sum_l p_l g_l),
    dq_i += scale sum_j ds_j k_j,    dk_j += scale ds_j q_i

using two length-S scratch rows (p and g) for the row sum ``sum_l p_l g_l``.

What it buys: no (S, S) buffer. The working set of one row is two or three rows of S
numbers (2 KiB at S = 512 in float32), which stays in L1, instead of an (S, S) matrix
that is written and re-read five times per (b, a) and, at S = 512, fills the L2 cache.
The scratch rows are allocated once per call, not per (b, a). The number of arithmetic
operations is the same as rung 1; the memory traffic of the scores drops from ~5 S^2 to
~0 (they never leave L1). What it does not change are the inner loops: K and V are still
read once per query row, S times per (b, a) (from L1/L2: one head's K and V are 2 S D
numbers, 256 KiB at S = 512, D = 64), one load per multiply-add. At BERT's sizes the
(S, S) matrix of rung 1 still fits in L2, so the inner loops, not the score traffic, set
the speed of rungs 1 to 3 (measured in minibert/kernels/README.md).

Parallelism: none (the (b, a) problems run one after the other; see rung 1).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from .._blocks import FASTMATH
from .attn_v1_naive import keep_bit, prepare_backward, prepare_forward


@njit(cache=True, fastmath=FASTMATH)
def _forward_kernel(q, k, v, keymask, scale, p, inv_keep, seed, offset, out, lse):
    B, A, S, D = q.shape
    zero = q.dtype.type(0)
    neg_inf = q.dtype.type(-np.inf)
    row = np.empty(S, dtype=q.dtype)        # the one scratch row, reused by every row i
    for ba in range(B * A):
        b, a = ba // A, ba % A
        qh, kh, vh, oh = q[b, a], k[b, a], v[b, a], out[b, a]             # (S, D) views
        km = keymask[b]                                                     # (S,)
        if km.sum() == 0:
            lse[b, a, :] = -neg_inf             # no real key: zeros, lse = +inf
            oh[:, :] = zero
            continue
        for i in range(S):
            # scores of row i and their max over the real keys
            m = neg_inf
            for j in range(S):
                acc = zero
                for d in range(D):
                    acc += qh[i, d] * kh[j, d]
                row[j] = acc * scale
                if km[j] != 0 and row[j] > m:
                    m = row[j]
            # exp and sum in one pass; padded keys get exactly 0
            total = zero
            for j in range(S):
                e = math.exp(row[j] - m) if km[j] != 0 else zero
                row[j] = e
                total += e
            # out_i = sum_j e_j keep_ij v_j / ((1 - p) l): the division once per row
            for d in range(D):
                oh[i, d] = zero
            base = ((b * A + a) * S + i) * S
            for j in range(S):
                e = row[j]
                if p > 0.0 and not keep_bit(seed, offset, base + j, p):
                    continue
                for d in range(D):
                    oh[i, d] += e * vh[j, d]
            norm = inv_keep / total
            for d in range(D):
                oh[i, d] *= norm
            lse[b, a, i] = m + math.log(total)


@njit(cache=True, fastmath=FASTMATH)
def _backward_kernel(dout, q, k, v, lse, keymask, scale, p, inv_keep, seed, offset,
                     dq, dk, dv):
    B, A, S, D = q.shape
    zero = q.dtype.type(0)
    prow = np.empty(S, dtype=q.dtype)       # probabilities of row i
    grow = np.empty(S, dtype=q.dtype)       # dP of row i, then dS
    for ba in range(B * A):
        b, a = ba // A, ba % A
        qh, kh, vh, doh = q[b, a], k[b, a], v[b, a], dout[b, a]            # (S, D) views
        dqh, dkh, dvh = dq[b, a], dk[b, a], dv[b, a]                        # (S, D), zeroed
        km = keymask[b]
        if km.sum() == 0:
            continue                    # dq, dk, dv stay zero: the output was a constant
        for i in range(S):
            base = ((b * A + a) * S + i) * S
            lse_i = lse[b, a, i]
            row_dot = zero
            for j in range(S):
                # recompute p_ij = exp(scale q_i . k_j - lse_i), 0 on padded keys
                acc = zero
                for d in range(D):
                    acc += qh[i, d] * kh[j, d]
                pij = math.exp(acc * scale - lse_i) if km[j] != 0 else zero
                # Pd = P * keep / (1 - p): the keep factor of (i, j)
                kf = inv_keep
                if p > 0.0 and not keep_bit(seed, offset, base + j, p):
                    kf = zero
                # out_i = sum_j Pd_ij v_j  ->  dv_j += Pd_ij dout_i,  dPd_ij = dout_i . v_j
                pd = pij * kf
                acc = zero
                for d in range(D):
                    dvh[j, d] += pd * doh[i, d]
                    acc += doh[i, d] * vh[j, d]
                prow[j] = pij
                grow[j] = acc * kf                  # dP_ij = dPd_ij * keep / (1 - p)
                row_dot += grow[j] * pij
            # softmax: dS_ij = p_ij (dP_ij - sum_l dP_il p_il); scores: dq, dk
            for j in range(S):
                gs = prow[j] * (grow[j] - row_dot) * scale
                for d in range(D):
                    dqh[i, d] += gs * kh[j, d]
                    dkh[j, d] += gs * qh[i, d]


def forward(q, k, v, mask, scale, dropout_p=0.0, seed=0, offset=0):
    """Attention forward, fused softmax: returns ``(out, lse)``, (B, A, S, D) and (B, A, S)."""
    q, k, v, keymask, scale, p, inv_keep, seed, offset = prepare_forward(
        q, k, v, mask, scale, dropout_p, seed, offset)
    out = np.empty_like(q)                                                   # (B, A, S, D)
    lse = np.empty(q.shape[:3], dtype=q.dtype)                               # (B, A, S)
    _forward_kernel(q, k, v, keymask, scale, p, inv_keep, seed, offset, out, lse)
    return out, lse


def backward(dout, q, k, v, out, lse, mask, scale, dropout_p=0.0, seed=0, offset=0):
    """Attention backward, row by row: returns fresh ``(dq, dk, dv)``, each (B, A, S, D)."""
    dout, q, k, v, out, lse, keymask, scale, p, inv_keep, seed, offset = prepare_backward(
        dout, q, k, v, out, lse, mask, scale, dropout_p, seed, offset)
    dq, dk, dv = (np.zeros_like(q) for _ in range(3))                       # (B, A, S, D)
    _backward_kernel(dout, q, k, v, lse, keymask, scale, p, inv_keep, seed, offset,
                     dq, dk, dv)
    return dq, dk, dv
