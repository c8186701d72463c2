"""Fused softmax attention on the CPU, all in Numba (rung 4 of the ladder): FlashAttention-2's
algorithm, forward and backward, never forming an (S, S) matrix.

This is where the algorithm is derived. The production kernel, ``minibert/kernels/attention_cpu.py``
(rung 5), runs the same algorithm on the same tiles with the block products handed to BLAS;
its fused row passes are this file's. The building blocks both use (exp, row max, dropout
factors, key-block spans, argument checks) live in ``minibert/kernels/_blocks.py``, and this rung
imports them from there like the production kernel does.

The function is the one of ``minibert/ops/attention.py`` (the readable reference): per
(b, a), with ``c = scale``, the key padding mask M (0 at real keys, -inf-like at padding)
and the dropout rate ``p``,

    s_ij = c q_i . k_j + M_j,   P_ij = exp(s_ij - lse_i),   lse_i = log sum_j exp(s_ij)
    O_i  = sum_j P_ij keep_ij / (1 - p) v_j

with keep_ij the Philox bit of element ``((b*A + a)*S + i)*S + j`` (``philox_cpu.py``): the
bits of ``minibert.rng.keep_mask((B, A, S, S), p, seed, offset)``.

Forward: online softmax
-----------------------
The work is split into independent tasks (b, a, query block of ``block_q`` rows). A task
walks the key blocks of ``block_k`` keys and keeps, per row, a running max m, a running sum
l and an unnormalised output accumulator acc (block_q, D). For each key block:

    s      = c Q_blk K_blk^T + M_blk              scores of the block      (block_q, block_k)
    m_new  = max(m, rowmax(s))
    alpha  = exp(m - m_new)                       rescales what was summed under the old max
    P~     = exp(s - m_new)                       (each <= 1: no overflow)
    l      = alpha l + rowsum(P~)                 (before dropout: dropout does not renormalise)
    acc    = alpha acc + (P~ keep / (1 - p)) V_blk

and at the end O = acc / l, lse = m + log(l). Every term carries the factor exp(-m) of the
current max, so the result is exactly softmax(s) V whatever the block order; only rounding
differs. The state of a task is O(block_q (D + block_k)), never (S, S). (With the default
block_k = 512 a BERT sequence is a single key block; the tests run small blocks too.)

Padding. A padded key has probability exactly 0 in the reference (exp of finfo.min / 2
minus a row max underflows), so it can be skipped instead of computed: each key block is
trimmed to the span between its first and last real key, a block with no real key is
skipped altogether (a typical padded batch loses a large share of its work that way), and
a hole of a non-prefix mask inside a span gets the score -inf, whose exp is exactly 0.
A sequence with no real key at all processes no block: l = 0, and we store out = 0 and
``lse = +inf`` (FlashAttention's convention: exp(s - lse) = 0 for every s, so the
probabilities of such a row, and with them all its gradients, are zero). This is what the
reference gives with its factor h.

Backward: recompute instead of store
------------------------------------
Given dO and the saved lse, per key block j and query block i (the reference derives each
line):

    P     = exp(c Q_i K_j^T + M_j - lse_i)        the probabilities, recomputed
    Pd    = P keep / (1 - p)                      the keep-mask regenerated from Philox
    dV_j += Pd^T dO_i
    dP    = (dO_i V_j^T) keep / (1 - p)
    dS    = P * (dP - D_i),   D_i = rowsum(dP * P)
    dQ_i += c dS K_j,      dK_j += c dS^T Q_i

dK and dV are sums over query blocks and dQ a sum over key blocks: one task per head (b, a)
owns all three for its head, so no two threads ever write the same element, and the result
is the same bits whatever the number of threads.

The row statistics. D_i is a sum over all the keys of row i, needed before any dS of the
row. FlashAttention gets it without a pass over the keys from the identity

    rowsum(dP * P)_i = sum_j (dO_i . v_j) keep_ij / (1 - p) P_ij = dO_i . O_i

(O contains the dropout), and takes exp(s - lse) as P. Both are exact in exact arithmetic
and fine in half precision, whose own rounding dwarfs what they add; in float32 they are
not: O and lse carry the forward's roundings, which the recomputed P does not share. lse is
stored in the input dtype, half an ulp of |lse| off (8 eps32 for lse ~ 16), and that scales
every P of the row by the same 1 + delta; D_i from O is off by dO . (O's rounding error). The
measured effect in float32 was dQ and dK about 1.4 times less accurate than the textbook
op (median over random problems), often more than twice. So this backward computes, per
row, the two sums the textbook has,

    sigma_i = sum_j exp(s_ij - lse_i)  (= 1 up to the rounding of lse)
    pi_i    = sum_j exp(s_ij - lse_i) dP_ij

and uses P = exp(s - lse) / sigma and D_i = pi_i / sigma_i: a softmax normalised on the
probabilities it is used with, as in the reference, and as accurate (median error ratio
1.0). When the real keys of a sequence fit in one key block (the default block covers
S <= 512) the sums come with that block at no cost; with several key blocks a first sweep
over the blocks computes them (two more block products per block pair: 7 instead of 5).
``out`` is therefore not read by this backward; it stays in the signature, which is
FlashAttention's.

Arithmetic
----------
float32 inputs are computed in float32 throughout (scores, exp, running sums, accumulators),
like the float32 reference op, and land within about the same distance of the float64
result (the tests hold them to twice the reference's own float32 error); float64 in float64.

* Block products (``_gemm_acc``) are "row += coefficient x row" loops, two output rows and
  four terms at a time, whose innermost loop runs over contiguous memory: LLVM turns it into
  SIMD fused multiply-adds. For Q K^T and dO V^T that needs K^T and V^T: each call makes
  one transposed copy (B, A, D, S) of K (and V), shared read-only by all tasks.
* exp (``_blocks.exp_row``) is evaluated a row at a time in a form LLVM can vectorise too (the
  scalar C library exp cannot be): exp(x) = 2^k exp(r) with k = round(x / ln 2) and
  r = x - k ln 2 in [-ln2/2, ln2/2] (Cody and Waite: ln 2 split in a short high part, so
  k ln2_hi is exact, and a low part), exp(r) by its Taylor polynomial (degree 7 in float32,
  13 in float64: truncation below a quarter of an ulp), and 2^k built directly in the
  exponent bits. Measured against a long-double exp: within 0.6 ulp. Below the smallest
  normal number it returns 0 (the true value is below 1.2e-38 in float32), and exp(-inf) = 0.
* ``fastmath={"reassoc", "contract"}`` lets LLVM reorder sums (so reductions vectorise) and
  fuse multiply-adds. It makes no assumption about infinities, so the -inf and +inf above
  keep their meaning. ``exp_row`` has only "contract": reassociation could merge the two
  halves of ln 2 and lose the point of splitting it.
* Typed scalars come from the input dtype (``q.dtype.type``): in Numba a float32 mixed with
  a Python float or int silently becomes float64.
"""
from __future__ import annotations

from contextlib import contextmanager

import numba
import numpy as np
from numba import njit, prange

from ...validation import check_block_sizes
from .._args import backward_args, forward_args
from .._blocks import (
    EXP_CONSTANTS,
    FASTMATH,
    INT_OF,
    exp_row,
    keep_factors,
    kernel_args,
    row_max,
)

#: Default block sizes, chosen by measurement at the benchmark's shapes (D = 64, S = 128 and
#: 512, float32, one thread): block_k = 512 against 128 took the backward at S = 512 from
#: about 110 to 77 ms (one key block: no first sweep for the row statistics) and left the
#: forward unchanged; a (64, 512) block of scores is 128 KiB, within the L2 cache.
BLOCK_Q = 64
BLOCK_K = 512

#: Below this many multiply-adds (B A S^2 D) a call runs on the calling thread alone: waking
#: the worker threads costs about 10 us on an idle machine and a scheduler time slice (ms)
#: on a busy one, more than a small problem takes. The result is the same bits either way.
MIN_PARALLEL_WORK = 1 << 20


# --------------------------------------------------------------------------- block products


@njit(cache=True, fastmath=FASTMATH)
def _gemm_acc(out, o0, a, a0, trans_a, b, b0, bj0, nr, nx, n):
    """out[o0 + r, :n] += sum_x A[r, x] * b[b0 + x, bj0 : bj0 + n] for r < nr and x < nx, with
    A[r, x] = a[a0 + r, x], or a[a0 + x, r] when ``trans_a`` (``out += A @ B`` on blocks).

    The register tile of a matrix product, as far as Numba lets us write one: two output
    rows and four terms x at a time. The innermost loop runs over contiguous memory (and
    vectorises); per element it loads four rows of b once for both output rows and does
    eight fused multiply-adds for two loads and two stores of the output, which keeps the
    FMA units, not the load/store ports, the bottleneck. Rows are indexed in place, not
    taken as views: a view costs a reference-count update, which in a loop this short
    (n = D = 64) cost as much as the arithmetic.
    """
    # unsigned column indices: Numba then skips its negative-index wraparound test, which
    # in the innermost loop would stop the vectorisation
    bj, nn = np.uint64(bj0), np.uint64(n)
    r = 0
    while r < nr:
        two = r + 1 < nr                        # a pair of rows, or the last odd one
        x = 0
        while x + 4 <= nx:
            if trans_a:
                c0, c1, c2, c3 = a[a0 + x, r], a[a0 + x + 1, r], a[a0 + x + 2, r], a[a0 + x + 3, r]
            else:
                c0, c1, c2, c3 = a[a0 + r, x], a[a0 + r, x + 1], a[a0 + r, x + 2], a[a0 + r, x + 3]
            if two:
                if trans_a:
                    e0, e1, e2, e3 = (a[a0 + x, r + 1], a[a0 + x + 1, r + 1], a[a0 + x + 2, r + 1],
                                      a[a0 + x + 3, r + 1])
                else:
                    e0, e1, e2, e3 = (a[a0 + r + 1, x], a[a0 + r + 1, x + 1], a[a0 + r + 1, x + 2],
                                      a[a0 + r + 1, x + 3])
                for j in range(nn):
                    u0, u1, u2, u3 = (b[b0 + x, bj + j], b[b0 + x + 1, bj + j], b[b0 + x + 2, bj + j],
                                      b[b0 + x + 3, bj + j])
                    out[o0 + r, j] += c0 * u0 + c1 * u1 + c2 * u2 + c3 * u3
                    out[o0 + r + 1, j] += e0 * u0 + e1 * u1 + e2 * u2 + e3 * u3
            else:
                for j in range(nn):
                    out[o0 + r, j] += (c0 * b[b0 + x, bj + j] + c1 * b[b0 + x + 1, bj + j]
                                       + c2 * b[b0 + x + 2, bj + j] + c3 * b[b0 + x + 3, bj + j])
            x += 4
        while x < nx:                           # the last nx % 4 terms
            c0 = a[a0 + x, r] if trans_a else a[a0 + r, x]
            if two:
                e0 = a[a0 + x, r + 1] if trans_a else a[a0 + r + 1, x]
                for j in range(nn):
                    u0 = b[b0 + x, bj + j]
                    out[o0 + r, j] += c0 * u0
                    out[o0 + r + 1, j] += e0 * u0
            else:
                for j in range(nn):
                    out[o0 + r, j] += c0 * b[b0 + x, bj + j]
            x += 1
        r += 2


# --------------------------------------------------------------------------- forward


@njit(cache=True, parallel=True, fastmath=FASTMATH)
def forward_kernel(q, k_t, v, key_bias, key_lo, key_hi, scale, dropout_p, keep_scale, seed,
                   offset, block_q, block_k, exp_consts, int_type, out, lse):
    """Writes out (B, A, S, D) and lse (B, A, S), one task per (b, a, query block).

    ``k_t`` is K transposed, (B, A, D, S). ``key_bias`` (B, S) is the additive mask in q's
    dtype (0 real, -inf padding) and ``key_lo``/``key_hi`` come from
    ``_blocks.key_block_ranges`` (all of them from ``_blocks.kernel_args``); ``scale`` and
    ``keep_scale``
    (1 / (1 - p)) have q's dtype, ``dropout_p`` is float32 (the keep test compares in
    float32), ``seed`` and ``offset`` uint64; ``exp_consts`` and ``int_type`` the entries of
    ``EXP_CONSTANTS`` and ``INT_OF`` for q's dtype.
    """
    B, A, S, D = q.shape
    ftype = q.dtype.type
    zero, neg_inf, pos_inf = ftype(0), ftype(-np.inf), ftype(np.inf)
    top = np.int64(0)        # first row of a scratch buffer (a literal 0 would be compiled
    #                          into a separate specialisation of _gemm_acc)
    no = top != 0            # and a runtime False, not a literal one, for the same reason
    dropping = dropout_p > 0
    nk = key_lo.shape[1]
    nq = (S + block_q - 1) // block_q
    # b varies fastest: Numba hands each thread a contiguous range of tasks, and this order
    # gives every range the same mix of long and heavily padded sequences. Tasks write
    # disjoint rows of out and lse.
    for task in prange(B * A * nq):
        b = task % B
        a = (task // B) % A
        i0 = (task // (B * A)) * block_q
        nr = min(S, i0 + block_q) - i0
        qh, kth, vh, bias = q[b, a], k_t[b, a], v[b, a], key_bias[b]  # (S, D), (D, S), (S, D), (S,)
        acc = np.zeros((nr, D), dtype=q.dtype)                 # unnormalised output
        m = np.empty(nr, dtype=q.dtype)                        # running row max
        l = np.zeros(nr, dtype=q.dtype)                        # running row sum of exp
        for r in range(nr):
            m[r] = neg_inf
        s = np.empty((nr, block_k), dtype=q.dtype)             # scores, then probabilities
        kf = np.empty(block_k, dtype=q.dtype)                  # dropout factors of one row
        ebuf = np.empty(block_k, dtype=q.dtype)                # exp_row scratch
        ebits = ebuf.view(int_type)
        for kb in range(nk):
            j0, j1 = key_lo[b, kb], key_hi[b, kb]
            if j0 == j1:                                       # padding only: P = 0 there
                continue
            nc = j1 - j0
            bias_blk = bias[j0:j1]                             # (nc,)
            for r in range(nr):
                for c in range(nc):
                    s[r, c] = zero
            _gemm_acc(s, top, qh, i0, no, kth, top, j0, nr, D, nc)   # Q K^T (nr, nc)
            for r in range(nr):
                srow = s[r]
                for c in range(nc):
                    srow[c] = srow[c] * scale + bias_blk[c]     # scores = (q k^T) * scale + mask
                m_new = max(m[r], row_max(srow, nc))
                # a block's span starts and ends at real keys, so m_new is finite; before
                # the first block m[r] = -inf and alpha = exp(-inf) = 0
                alpha = np.exp(m[r] - m_new)
                exp_row(srow, nc, m_new, ebuf, ebits, exp_consts)      # P~ = exp(s - m_new)
                row_sum = zero
                for c in range(nc):
                    row_sum += srow[c]
                l[r] = l[r] * alpha + row_sum                  # the sum is taken before dropout
                m[r] = m_new
                if dropping:
                    base = ((b * A + a) * S + i0 + r) * S + j0
                    keep_factors(seed, offset, base, nc, dropout_p, keep_scale, zero, kf)
                    for c in range(nc):
                        srow[c] *= kf[c]
                for d in range(D):
                    acc[r, d] *= alpha
            _gemm_acc(acc, top, s, top, no, vh, j0, top, nr, nc, D)  # acc += P~ V (nr, D)
        for r in range(nr):
            orow = out[b, a, i0 + r]
            lr = l[r]
            if lr > zero:
                for d in range(D):
                    orow[d] = acc[r, d] / lr                   # one rounding, as P = e / sum
                lse[b, a, i0 + r] = m[r] + np.log(lr)
            else:                                              # no real key in the sequence
                for d in range(D):
                    orow[d] = zero
                lse[b, a, i0 + r] = pos_inf


# --------------------------------------------------------------------------- backward


@njit(cache=True, parallel=True, fastmath=FASTMATH)
def backward_kernel(dout, q, k, k_t, v_t, lse, key_bias, key_lo, key_hi, scale, dropout_p,
                    keep_scale, seed, offset, block_q, block_k, exp_consts, int_type,
                    dq, dk, dv):
    """Adds the gradients into dq, dk, dv (B, A, S, D), which the caller zeroes; one task
    per head (b, a), so no two threads write the same element (dK and dV sum over all the
    query blocks of their head). ``k_t``, ``v_t`` are K and V transposed (B, A, D, S); the
    other arguments as in ``forward_kernel``, whose output ``lse`` is."""
    B, A, S, D = q.shape
    ftype = q.dtype.type
    zero, one = ftype(0), ftype(1)
    top = np.int64(0)
    no, yes = top != 0, top == 0
    dropping = dropout_p > 0
    nk = key_lo.shape[1]
    for task in prange(B * A):
        b = task % B
        a = task // B
        qh, kh, doh = q[b, a], k[b, a], dout[b, a]              # (S, D) each
        kth, vth = k_t[b, a], v_t[b, a]                         # (D, S) each
        lh, bias = lse[b, a], key_bias[b]                       # (S,)
        dqh, dkh, dvh = dq[b, a], dk[b, a], dv[b, a]
        p = np.empty((block_q, block_k), dtype=q.dtype)        # P, then Pd
        ds = np.empty((block_q, block_k), dtype=q.dtype)       # dO V^T, then c dS
        kf = np.empty(block_k, dtype=q.dtype)                  # dropout factors of one row
        for c in range(block_k):
            kf[c] = one
        ebuf = np.empty(block_k, dtype=q.dtype)
        ebits = ebuf.view(int_type)
        n_blocks = 0
        for kb in range(nk):
            if key_lo[b, kb] < key_hi[b, kb]:
                n_blocks += 1
        # Per row: sum_j exp(s_ij - lse_i) and sum_j exp(s_ij - lse_i) dP_ij, which give the
        # normaliser of P and D_i = rowsum(dP * P) (see "Backward: the row statistics" in
        # the module docstring). With one key block they come with the block itself; with
        # several, from a first pass over the blocks.
        row_sum = np.zeros(S, dtype=q.dtype)
        row_pdp = np.zeros(S, dtype=q.dtype)
        for sweep in range(2 if n_blocks > 1 else 1):
            last = sweep == 1 or n_blocks == 1                 # the sweep that writes gradients
            for kb in range(nk):
                j0, j1 = key_lo[b, kb], key_hi[b, kb]
                if j0 == j1:                                   # padding only: no gradient
                    continue
                nc = j1 - j0
                bias_blk = bias[j0:j1]                         # (nc,)
                for i0 in range(0, S, block_q):
                    nr = min(S, i0 + block_q) - i0
                    for r in range(nr):
                        for c in range(nc):
                            p[r, c] = zero
                            ds[r, c] = zero
                    _gemm_acc(p, top, qh, i0, no, kth, top, j0, nr, D, nc)    # Q K^T  (nr, nc)
                    _gemm_acc(ds, top, doh, i0, no, vth, top, j0, nr, D, nc)  # dO V^T (nr, nc)
                    for r in range(nr):
                        i = i0 + r
                        prow, dsrow = p[r], ds[r]
                        # P = exp(scores - lse), scores = (q k^T) * scale + mask
                        lse_i = lh[i]
                        for c in range(nc):
                            prow[c] = prow[c] * scale + bias_blk[c] - lse_i
                        exp_row(prow, nc, zero, ebuf, ebits, exp_consts)
                        if dropping:
                            base = ((b * A + a) * S + i) * S + j0
                            keep_factors(seed, offset, base, nc, dropout_p, keep_scale, zero, kf)
                        if not last or n_blocks == 1:
                            # dP = dPd keep / (1 - p)
                            t_sum = zero
                            t_pdp = zero
                            for c in range(nc):
                                t_sum += prow[c]
                                t_pdp += prow[c] * (dsrow[c] * kf[c])
                            row_sum[i] += t_sum
                            row_pdp[i] += t_pdp
                        if not last:
                            continue
                        inv_sum = one / row_sum[i] if row_sum[i] > zero else zero
                        delta_i = row_pdp[i] * inv_sum                  # D_i = rowsum(dP * P)
                        for c in range(nc):
                            pc = prow[c] * inv_sum
                            # dS = P (dP - D_i), times c for dQ = c dS K and dK = c dS^T Q
                            dsrow[c] = pc * (dsrow[c] * kf[c] - delta_i) * scale
                            prow[c] = pc * kf[c]                        # Pd = P keep / (1 - p)
                    if last:
                        _gemm_acc(dvh, j0, p, top, yes, doh, i0, top, nc, nr, D)    # dV_j += Pd^T dO_i
                        _gemm_acc(dkh, j0, ds, top, yes, qh, i0, top, nc, nr, D)    # dK_j += c dS^T Q_i
                        _gemm_acc(dqh, i0, ds, top, no, kh, j0, top, nr, nc, D)   # dQ_i += c dS K_j


# --------------------------------------------------------------------------- entry points


@contextmanager
def _threads_for(work):
    """Numba's threads for a call of ``work`` multiply-adds: all of them, or one."""
    if work >= MIN_PARALLEL_WORK or numba.get_num_threads() == 1:
        yield
        return
    threads = numba.get_num_threads()          # per calling thread in Numba
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(threads)


def attention_forward(q, k, v, mask, scale, dropout_p=0.0, seed=0, offset=0, *,
                      block_q=BLOCK_Q, block_k=BLOCK_K):
    """``(out, lse)`` for inputs validated by ``minibert.kernels.fused_attention_forward``:
    NumPy arrays, ``scale`` a float, ``mask`` (B, S) of 0/1 or None."""
    check_block_sizes(block_q, block_k)
    B, A, S, D = q.shape
    args = kernel_args(q, mask, scale, dropout_p, seed, offset, block_k)
    out = np.empty_like(q)                                               # (B, A, S, D)
    lse = np.empty((B, A, S), dtype=q.dtype)                             # (B, A, S)
    block_q, block_k = max(1, min(block_q, S)), max(1, min(block_k, S))
    k_t = np.ascontiguousarray(k.transpose(0, 1, 3, 2))                  # (B, A, D, S)
    with _threads_for(B * A * S * S * D):
        forward_kernel(q, k_t, v, *args, int(block_q), int(block_k), EXP_CONSTANTS[q.dtype],
                       INT_OF[q.dtype], out, lse)
    return out, lse


def attention_backward(dout, q, k, v, out, lse, mask, scale, dropout_p=0.0, seed=0, offset=0,
                       *, block_q=BLOCK_Q, block_k=BLOCK_K):
    """``(dq, dk, dv)`` for inputs validated by ``minibert.kernels.fused_attention_backward``."""
    check_block_sizes(block_q, block_k)
    args = kernel_args(q, mask, scale, dropout_p, seed, offset, block_k)
    B, A, S, D = q.shape
    block_q, block_k = max(1, min(block_q, S)), max(1, min(block_k, S))
    dq, dk, dv = np.zeros_like(q), np.zeros_like(q), np.zeros_like(q)    # (B, A, S, D) each
    k_t = np.ascontiguousarray(k.transpose(0, 1, 3, 2))                  # (B, A, D, S)
    v_t = np.ascontiguousarray(v.transpose(0, 1, 3, 2))                  # (B, A, D, S)
    with _threads_for(B * A * S * S * D):
        backward_kernel(dout, q, k, k_t, v_t, lse, *args, int(block_q), int(block_k),
                        EXP_CONSTANTS[q.dtype], INT_OF[q.dtype], dq, dk, dv)
    return dq, dk, dv


def _contiguous(*arrays):
    """The ladder's rungs accept any strides (the public interface asks for C order)."""
    return [np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x for x in arrays]


def forward(q, k, v, mask, scale, dropout_p=0.0, seed=0, offset=0):
    """Rung 4 behind the ladder's contract (inputs validated as by ``minibert.kernels``)."""
    q, k, v = _contiguous(q, k, v)
    return attention_forward(q, k, v, *forward_args(q, k, v, mask, scale, dropout_p, seed,
                                                    offset))


def backward(dout, q, k, v, out, lse, mask, scale, dropout_p=0.0, seed=0, offset=0):
    """Rung 4's backward behind the ladder's contract."""
    dout, q, k, v, out, lse = _contiguous(dout, q, k, v, out, lse)
    return attention_backward(dout, q, k, v, out, lse,
                              *backward_args(dout, q, k, v, out, lse, mask, scale, dropout_p,
                                             seed, offset))
