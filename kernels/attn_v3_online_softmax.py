"""Attention ladder, rung 3: online softmax over key blocks.

Same contract, same math and same ``lse`` as rung 1 (``attn_v1_naive``, whose docstring
states them). What changes relative to rung 2 (``attn_v2_fused_softmax``): rung 2 needs the
whole row of S scores before it can exponentiate, because the softmax subtracts the row
max. The online softmax (Milakov & Gimelshein, 2018, "Online normalizer calculation for
softmax"; the core of FlashAttention, Dao et al., 2022) walks the keys in blocks of
``BLOCK_K`` and keeps, for query row i, a running max m, a running sum l and an
unnormalized output accumulator o (D numbers). For each key block J:

    s_j   = scale * q_i . k_j                              j in J (real keys only)
    m'    = max(m, max_j s_j)
    alpha = exp(m - m')                        rescales what was summed against the old max
    l     = alpha l + sum_j exp(s_j - m')
    o     = alpha o + sum_j exp(s_j - m') keep_ij / (1 - p) v_j
    m     = m'

and at the end ``out_i = o / l``, ``lse_i = m + log l``. Every term ever added was
exp(s - m_old) and is rescaled to exp(s - m_new) by the product of the alphas, so the
result is exactly the softmax, computed in one pass over the keys, with exponents <= 0
at every step (no overflow), from a scratch of BLOCK_K scores.

The backward recomputes each block of probabilities from the saved ``lse``
(``p_j = exp(s_j - lse_i)``: no max, no sum, no second pass), and replaces rung 2's row sum
``sum_j p_j dP_j``, which needs the whole row, by the identity (FlashAttention-2)

    sum_j P_ij dP_ij = sum_j Pd_ij dPd_ij = sum_j Pd_ij (dO_i . v_j) = dO_i . O_i

(``dP = dPd keep/(1-p)``, ``Pd = P keep/(1-p)``, ``O_i = sum_j Pd_ij v_j``): one dot product of
length D per row, computed before the key loop from the forward's ``out``. Then, per key
block, ``dS = P (dP - dO_i . O_i)`` and the dq, dk, dv updates of rung 2.

What it buys: the scratch no longer grows with S (BLOCK_K scores instead of S), and the
forward makes one pass over the keys instead of three passes over a row (scores, exp and
sum, product with V): each key block's k_j and v_j are used while they are in L1. This is
what lets a kernel tile the keys at all; on a CPU, where one row of S = 512 scores already
fits in L1, the gain of this rung alone is small, and the rescaling costs D
multiplications per block. The tiling of queries (reusing one loaded key block for many
query rows), threads and the skipping of fully padded key blocks are the next rung, the
tiled kernel ``minibert/kernels/ladder/attn_v4_tiled.py`` (v4). Like rungs 1 and 2, this rung
computes every score, padded keys included, and only gives padded keys zero weight.

Parallelism: none (the (b, a) problems run one after the other; see rung 1).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from .._blocks import FASTMATH
from .attn_v1_naive import keep_bit, prepare_backward, prepare_forward

# keys per block: 64 scores (256 B in float32) plus a block of K and V (2 x 64 x D numbers,
# 32 KiB at D = 64 in float32) stay in L1 while the block is used
BLOCK_K = 64


@njit(cache=True, fastmath=FASTMATH)
def _forward_kernel(q, k, v, keymask, scale, p, inv_keep, seed, offset, block_k, out, lse):
    B, A, S, D = q.shape
    zero = q.dtype.type(0)
    neg_inf = q.dtype.type(-np.inf)
    blk = np.empty(block_k, dtype=q.dtype)      # the scores of one key block
    acc = np.empty(D, dtype=q.dtype)            # the unnormalized output row o
    for ba in range(B * A):
        b, a = ba // A, ba % A
        qh, kh, vh, oh = q[b, a], k[b, a], v[b, a], out[b, a]             # (S, D) views
        km = keymask[b]                                                     # (S,)
        if km.sum() == 0:
            lse[b, a, :] = -neg_inf             # no real key: zeros, lse = +inf
            oh[:, :] = zero
            continue
        for i in range(S):
            base = ((b * A + a) * S + i) * S
            m = neg_inf                         # running max
            total = zero                        # running sum l
            acc[:] = zero
            for j0 in range(0, S, block_k):
                j1 = min(j0 + block_k, S)
                # scores of the block and their max over its real keys
                m_blk = neg_inf
                for j in range(j0, j1):
                    s = zero
                    for d in range(D):
                        s += qh[i, d] * kh[j, d]
                    s *= scale
                    blk[j - j0] = s
                    if km[j] != 0 and s > m_blk:
                        m_blk = s
                if m_blk == neg_inf:
                    continue                    # no real key in this block: nothing to add
                m_new = max(m, m_blk)
                # rescale the sum and the accumulator to the new max (alpha = 0 at the first
                # block with a real key, where m = -inf)
                alpha = math.exp(m - m_new)
                total *= alpha
                for d in range(D):
                    acc[d] *= alpha
                for j in range(j0, j1):
                    if km[j] == 0:
                        continue
                    e = math.exp(blk[j - j0] - m_new)
                    total += e
                    if p > 0.0 and not keep_bit(seed, offset, base + j, p):
                        continue                # dropped: in the sum l, not in the output
                    for d in range(D):
                        acc[d] += e * vh[j, d]
                m = m_new
            norm = inv_keep / total
            for d in range(D):
                oh[i, d] = acc[d] * norm
            lse[b, a, i] = m + math.log(total)


@njit(cache=True, fastmath=FASTMATH)
def _backward_kernel(dout, q, k, v, out, lse, keymask, scale, p, inv_keep, seed, offset,
                     block_k, dq, dk, dv):
    B, A, S, D = q.shape
    zero = q.dtype.type(0)
    pblk = np.empty(block_k, dtype=q.dtype)     # the probabilities of one key block
    for ba in range(B * A):
        b, a = ba // A, ba % A
        qh, kh, vh, doh, oh = q[b, a], k[b, a], v[b, a], dout[b, a], out[b, a]   # (S, D)
        dqh, dkh, dvh = dq[b, a], dk[b, a], dv[b, a]                        # (S, D), zeroed
        km = keymask[b]
        if km.sum() == 0:
            continue                    # dq, dk, dv stay zero: the output was a constant
        for i in range(S):
            base = ((b * A + a) * S + i) * S
            lse_i = lse[b, a, i]
            # sum_j P_ij dP_ij = dout_i . out_i: known before the key loop
            delta = zero
            for d in range(D):
                delta += doh[i, d] * oh[i, d]
            for j0 in range(0, S, block_k):
                j1 = min(j0 + block_k, S)
                # recompute the block of probabilities from lse, 0 on padded keys
                for j in range(j0, j1):
                    s = zero
                    for d in range(D):
                        s += qh[i, d] * kh[j, d]
                    pblk[j - j0] = math.exp(s * scale - lse_i) if km[j] != 0 else zero
                for j in range(j0, j1):
                    pij = pblk[j - j0]
                    kf = inv_keep
                    if p > 0.0 and not keep_bit(seed, offset, base + j, p):
                        kf = zero
                    # out_i = sum_j Pd_ij v_j  ->  dv_j += Pd_ij dout_i,  dPd_ij = dout_i . v_j
                    pd = pij * kf
                    g = zero
                    for d in range(D):
                        dvh[j, d] += pd * doh[i, d]
                        g += doh[i, d] * vh[j, d]
                    # dS_ij = P_ij (dP_ij - dout_i . out_i), dP_ij = dPd_ij keep / (1 - p)
                    gs = pij * (g * kf - delta) * scale
                    for d in range(D):
                        dqh[i, d] += gs * kh[j, d]
                        dkh[j, d] += gs * qh[i, d]


def forward(q, k, v, mask, scale, dropout_p=0.0, seed=0, offset=0):
    """Attention forward, online softmax: returns ``(out, lse)``, (B, A, S, D) and (B, A, S)."""
    q, k, v, keymask, scale, p, inv_keep, seed, offset = prepare_forward(
        q, k, v, mask, scale, dropout_p, seed, offset)
    out = np.empty_like(q)                                                   # (B, A, S, D)
    lse = np.empty(q.shape[:3], dtype=q.dtype)                               # (B, A, S)
    _forward_kernel(q, k, v, keymask, scale, p, inv_keep, seed, offset, BLOCK_K, out, lse)
    return out, lse


def backward(dout, q, k, v, out, lse, mask, scale, dropout_p=0.0, seed=0, offset=0):
    """Attention backward, blockwise from lse: returns fresh ``(dq, dk, dv)``, (B, A, S, D)."""
    dout, q, k, v, out, lse, keymask, scale, p, inv_keep, seed, offset = prepare_backward(
        dout, q, k, v, out, lse, mask, scale, dropout_p, seed, offset)
    dq, dk, dv = (np.zeros_like(q) for _ in range(3))                       # (B, A, S, D)
    _backward_kernel(dout, q, k, v, out, lse, keymask, scale, p, inv_keep, seed, offset,
                     BLOCK_K, dq, dk, dv)
    return dq, dk, dv
