"""Fused softmax attention on the CPU, all in Numba (rung 4 of the ladder): FlashAttention-2's
algorithm, forward and backward, never forming an (S, S) matrix.

Run it: ``python kernels/attn_v4_tiled.py`` (``--help`` for the options) checks this rung
against minibert's op, ``minibert.ops.attention``, and times both.

This is where the algorithm is derived. The production kernel, ``minibert/kernels/attention_cpu.py``
(rung 5), runs the same algorithm on the same tiles with the block products handed to BLAS;
its fused row passes are this file's. The building blocks (exp, row max, dropout factors,
key-block spans, argument checks) are written out in this file, so that the rung stands
alone; the production kernel has its own copies in ``minibert/kernels/``.

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
* exp (``exp_row``) is evaluated a row at a time in a form LLVM can vectorise too (the
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

import argparse
import math
import numbers
import pathlib
import statistics
import sys
import time
from contextlib import contextmanager

import numba
import numpy as np
from numba import njit, prange

from minibert.kernels.philox_cpu import keep_from_word, philox_block
from minibert.ops import attention, readable_ops
from minibert.rng import check_u64

#: Numba's fastmath flags: reordered sums (vectorised reductions and dot products) and fused
#: multiply-adds, no assumption about NaN or infinities (-inf scores, +inf lse)
FASTMATH = {"reassoc", "contract"}

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


# --------------------------------------------------------------------------- arguments


def check_tensors(named):
    """Each of ``named`` ((name, array) pairs) a NumPy float32/float64 array of rank 4 with
    the first one's shape and dtype; raises TypeError or ValueError naming the argument."""
    first_name, first = named[0]
    for name, x in named:
        if x.ndim != 4:
            raise ValueError(f"{name} has shape {x.shape}, expected rank 4 (B, A, S, D)")
        if x.dtype not in (np.float32, np.float64):
            raise TypeError(f"{name} has dtype {x.dtype}, expected float32 or float64")
        if x.shape != first.shape:
            raise ValueError(f"{name} has shape {x.shape}, expected the shape of {first_name} "
                             f"{first.shape} (B, A, S, D)")
        if x.dtype != first.dtype:
            raise TypeError(f"{name} has dtype {x.dtype}, expected the dtype of {first_name} "
                            f"({first.dtype})")


def as_arrays(named):
    """The arrays of ``named`` in C order (a copy where they are not); TypeError for
    anything that is not a NumPy array."""
    for name, x in named:
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{name} has type {type(x).__name__}, expected a NumPy array "
                            "(these are CPU kernels)")
    return tuple(np.ascontiguousarray(x) for _, x in named)


def check_args(q, k, v, mask, scale, dropout_p, seed, offset):
    """Validated forward arguments: ``(q, k, v, mask, scale, dropout_p, seed, offset)`` with
    q, k, v C-contiguous, ``mask`` a (B, S) array of 0/1 or None, ``scale`` a float (None
    means 1/sqrt(D)), ``dropout_p`` a float in [0, 1), seed and offset ints in [0, 2**64)."""
    q, k, v = as_arrays([("q", q), ("k", k), ("v", v)])
    check_tensors([("q", q), ("k", k), ("v", v)])
    B, _, S, D = q.shape
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != (B, S):
            raise ValueError(f"mask has shape {mask.shape}, expected (B, S) = {(B, S)} "
                             "with 1 = attend and 0 = padding")
        bad = mask[(mask != 0) & (mask != 1)]
        if bad.size:
            raise ValueError(f"mask contains the value {bad[0].item()!r}, expected only 0 "
                             "(padding) and 1 (attend)")
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    for name, x in (("scale", scale), ("dropout_p", dropout_p)):
        if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):
            raise TypeError(f"{name}={x!r} has type {type(x).__name__}, expected a real number")
    if not math.isfinite(scale):
        raise ValueError(f"scale={scale!r} is not finite, expected a finite number or None")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p={dropout_p!r} is out of range, expected 0 <= dropout_p < 1")
    return (q, k, v, mask, float(scale), float(dropout_p), check_u64("seed", seed),
            check_u64("offset", offset))


# --------------------------------------------------------------------------- exp, row max

# exp(x) = 2^k exp(r): ln 2 = LN2_HI + LN2_LO with LN2_HI = 355/512 (9 significant bits,
# so k * LN2_HI is exact for |k| < 2^15 in float32) and LN2_LO the float64 remainder
LOG2E = 1.4426950408889634
LN2_HI = 0.693359375
LN2_LO = -2.1219444005469057e-4

#: Per dtype, the constants of ``exp_row``: (2^m + bias as a float, the bits of 2^m, m, log
#: of the smallest normal, a bound below the log of the largest; the arguments are <= 0
#: anyway). Adding 2^m + bias to an integer k puts k + bias in the low mantissa bits;
#: subtracting the bits of 2^m and shifting by m moves it into the exponent: 2^k.
EXP_CONSTANTS = {
    np.dtype(np.float32): (np.float32(2.0 ** 23 + 127), np.int32(0x4B000000), np.int32(23),
                           np.float32(-87.33654), np.float32(88.0)),
    np.dtype(np.float64): (np.float64(2.0 ** 52 + 1023), np.int64(0x4330000000000000),
                           np.int64(52), np.float64(-708.3964185322641), np.float64(709.0)),
}

#: Per dtype, the integer type of the same size: ``exp_row``'s scratch viewed as bits.
INT_OF = {np.dtype(np.float32): np.int32, np.dtype(np.float64): np.int64}


@njit(cache=True, fastmath={"contract"})
def exp_row(x, n, shift, scratch, scratch_bits, consts):
    """x[c] = exp(x[c] - shift) for c < n, in place; 0 below the smallest normal number.

    ``scratch`` is a buffer of x's dtype and ``scratch_bits`` the same memory viewed as the
    integer type of that size (``INT_OF``); ``consts`` the entry of ``EXP_CONSTANTS`` for
    the dtype. exp(t) = 2^k exp(r) with k = round(t / ln 2) and r = t - k ln 2 in
    [-ln2/2, ln2/2] (Cody and Waite: ln 2 in a short high part, so that k ln2_hi is exact,
    and a low part), exp(r) by its Taylor polynomial (degree 7 in float32, 13 in float64:
    truncation below a quarter of an ulp), 2^k built in the exponent bits. Measured against
    a long-double exp: within 0.6 ulp; exp(-inf) = 0. Three loops that each vectorise (the
    scalar C library exp does not): the polynomial and k, then 2^k from k's bits, then the
    product. Only "contract" as fastmath flag: reassociation could merge the two halves of
    ln 2 and lose the point of splitting it.
    """
    magic_f, magic_i, mant_bits, lo, hi = consts
    ftype = x.dtype.type
    zero = ftype(0)
    for c in range(n):
        t = x[c] - shift
        tc = min(max(t, lo), hi)                                # keeps 2^k a normal number
        k = np.floor(tc * ftype(LOG2E) + ftype(0.5))            # nearest integer to t / ln 2
        r = (tc - k * ftype(LN2_HI)) - k * ftype(LN2_LO)        # |r| <= ln2 / 2
        # Taylor polynomial of exp(r) by Horner's rule; x.itemsize is a compile-time constant
        if x.itemsize == 4:
            e = ftype(1.0 / 5040)
            e = e * r + ftype(1.0 / 720)
            e = e * r + ftype(1.0 / 120)
            e = e * r + ftype(1.0 / 24)
            e = e * r + ftype(1.0 / 6)
        else:
            e = ftype(1.0 / 6227020800)
            e = e * r + ftype(1.0 / 479001600)
            e = e * r + ftype(1.0 / 39916800)
            e = e * r + ftype(1.0 / 3628800)
            e = e * r + ftype(1.0 / 362880)
            e = e * r + ftype(1.0 / 40320)
            e = e * r + ftype(1.0 / 5040)
            e = e * r + ftype(1.0 / 720)
            e = e * r + ftype(1.0 / 120)
            e = e * r + ftype(1.0 / 24)
            e = e * r + ftype(1.0 / 6)
        e = e * r + ftype(0.5)
        e = e * r + ftype(1.0)
        e = e * r + ftype(1.0)
        x[c] = e if t >= lo else zero                           # exp(-inf) = 0
        scratch[c] = k + magic_f                                # k + bias in the low bits
    for c in range(n):
        scratch_bits[c] = (scratch_bits[c] - magic_i) << mant_bits   # ... moved to the exponent
    for c in range(n):
        x[c] *= scratch[c]                                      # exp(r) 2^k


@njit(cache=True)
def row_max(x, n):
    """max(x[:n]) for n >= 1 with eight running maxima: one running max is a chain of
    dependent compare-and-selects (latency-bound, about four cycles per element), and an
    IEEE max does not vectorise without assuming there is no NaN."""
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = x[0]
    c = 0
    while c + 8 <= n:
        m0, m1, m2, m3 = max(m0, x[c]), max(m1, x[c + 1]), max(m2, x[c + 2]), max(m3, x[c + 3])
        m4, m5, m6, m7 = max(m4, x[c + 4]), max(m5, x[c + 5]), max(m6, x[c + 6]), max(m7, x[c + 7])
        c += 8
    while c < n:
        m0 = max(m0, x[c])
        c += 1
    return max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))


# --------------------------------------------------------------------------- dropout and key blocks


@njit(cache=True)
def keep_factors(seed, offset, base, n, p32, keep_scale, zero, dst):
    """dst[c] = keep_scale (1 / (1 - p)) if element base + c of the Philox stream is kept,
    else ``zero``, for c < n: the bits of ``minibert.rng.keep_mask``. ``p32`` is the rate
    as a float32 (the keep test compares float32 numbers). One Philox call serves four
    consecutive elements."""
    e = base
    end = base + n
    c = 0
    while e < end:
        block = e >> 2
        w0, w1, w2, w3 = philox_block(seed, offset, block)
        lane = e - 4 * block
        for t in range(lane, min(4, lane + end - e)):
            w = w0 if t == 0 else (w1 if t == 1 else (w2 if t == 2 else w3))
            dst[c] = keep_scale if keep_from_word(w, p32) else zero
            c += 1
        e = 4 * (block + 1)


def key_block_ranges(key_mask, block_k):
    """Per sequence and key block, the span [lo, hi) from the block's first to its last real
    key; lo == hi for a block of padding only. key_mask (B, S) of 0/1; returns two
    (B, n_key_blocks) int64 arrays. A kernel that works on the spans skips the padding at
    the ends of a block and every block of padding only."""
    B, S = key_mask.shape
    nk = -(-S // block_k)
    real = np.zeros((B, nk * block_k), dtype=bool)
    real[:, :S] = key_mask != 0
    real = real.reshape(B, nk, block_k)                                     # (B, nk, block_k)
    any_real = real.any(axis=-1)
    first = real.argmax(axis=-1)
    last = block_k - 1 - real[..., ::-1].argmax(axis=-1)
    start = np.arange(nk, dtype=np.int64) * block_k                         # (nk,)
    lo = np.where(any_real, start + first, start).astype(np.int64)          # (B, nk)
    hi = np.where(any_real, start + last + 1, start).astype(np.int64)
    return np.ascontiguousarray(lo), np.ascontiguousarray(hi)


def kernel_args(q, mask, scale, dropout_p, seed, offset, block_k):
    """What the tiled attention kernels take besides the tensors, from validated arguments:
    ``(key_bias, key_lo, key_hi, scale, dropout_p, keep_scale, seed, offset)``.

    ``key_bias`` (B, S) is the additive key mask in q's dtype (0 at real keys, -inf at
    padding: exp gives exactly 0 there); ``key_lo``/``key_hi`` the spans of
    ``key_block_ranges`` for blocks of ``block_k`` keys (at most S); ``scale`` and
    ``keep_scale`` = 1 / (1 - p) have q's dtype, ``dropout_p`` is float32 (the keep test
    compares in float32), ``seed`` and ``offset`` uint64. Typed scalars matter: in Numba a
    float32 mixed with a Python float silently becomes float64.
    """
    B, _, S, _ = q.shape
    block_k = max(1, min(block_k, S))           # no scratch beyond the sequence
    ftype = q.dtype.type
    real = np.ones((B, S), dtype=bool) if mask is None else np.asarray(mask) != 0
    key_bias = np.where(real, ftype(0), ftype(-np.inf)).astype(q.dtype)          # (B, S)
    key_lo, key_hi = key_block_ranges(real, block_k)
    # the keep test compares float32 numbers (minibert.rng); 1 / (1 - p) in q's dtype
    return (key_bias, key_lo, key_hi, ftype(scale), np.float32(dropout_p),
            ftype(1.0 / (1.0 - dropout_p)), np.uint64(seed), np.uint64(offset))


def check_blocks(block_q, block_k):
    """Raises ValueError unless both block sizes are positive integers (bool is not)."""
    for name, value in (("block_q", block_q), ("block_k", block_k)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}={value!r} is invalid, expected a positive integer")


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
    ``key_block_ranges`` (all of them from ``kernel_args``); ``scale`` and
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
    """``(out, lse)`` for inputs validated by ``check_args``: C-contiguous NumPy arrays,
    ``scale`` a float, ``mask`` (B, S) of 0/1 or None."""
    check_blocks(block_q, block_k)
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
    """``(dq, dk, dv)`` for inputs validated as by ``backward``."""
    check_blocks(block_q, block_k)
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


def forward(q, k, v, mask, scale, dropout_p=0.0, seed=0, offset=0):
    """Rung 4 behind the ladder's contract: ``(out, lse)``."""
    return attention_forward(*check_args(q, k, v, mask, scale, dropout_p, seed, offset))


def backward(dout, q, k, v, out, lse, mask, scale, dropout_p=0.0, seed=0, offset=0):
    """Rung 4's backward behind the ladder's contract: fresh ``(dq, dk, dv)``."""
    q, k, v, mask, scale, dropout_p, seed, offset = check_args(q, k, v, mask, scale, dropout_p,
                                                               seed, offset)
    dout, out, lse = as_arrays([("dout", dout), ("out", out), ("lse", lse)])
    check_tensors([("q", q), ("out", out), ("dout", dout)])
    if lse.shape != q.shape[:3]:
        raise ValueError(f"lse has shape {lse.shape}, expected (B, A, S) = {q.shape[:3]}")
    if lse.dtype != q.dtype:
        raise TypeError(f"lse has dtype {lse.dtype}, expected the dtype of q ({q.dtype})")
    return attention_backward(dout, q, k, v, out, lse, mask, scale, dropout_p, seed, offset)


# --------------------------------------------------------------------------- as a script

#: The check's tolerance on max |rung - textbook in float64| / max(1, max |textbook|): float64
#: results differ from the textbook's by summation order (~1e-15), float32 ones by float32
#: roundings (~1e-6); a wrong formula, index or dropout bit is off by ~1e-2 or more.
TOLERANCE = {"float64": 1e-10, "float32": 1e-4}


def make_problem(batch, heads, seq, dim, dtype, seed):
    """q, k, v, dout (B, A, S, D) standard normal, and a (B, S) mask whose first sequence is
    full and whose others are padded at the end to a random length in [S/2, S]."""
    r = np.random.default_rng(seed)
    q, k, v, dout = (r.standard_normal((batch, heads, seq, dim)).astype(dtype) for _ in range(4))
    lengths = r.integers((seq + 1) // 2, seq + 1, size=batch)
    lengths[0] = seq
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)    # (B, S)
    return q, k, v, dout, mask


def textbook_forward(q, k, v, mask, p, seed):
    """minibert's readable op (the reference, never a kernel): ``(out, cache)``."""
    with readable_ops():
        return attention.forward(q, k, v, attention_mask=mask, dropout_p=p, seed=seed,
                                 training=p > 0)


def textbook(q, k, v, dout, mask, p, seed):
    """The readable op's ``(out, dq, dk, dv)``."""
    out, cache = textbook_forward(q, k, v, mask, p, seed)
    with readable_ops():
        return (out,) + tuple(attention.backward(dout, cache))


def rung(q, k, v, dout, mask, p, seed):
    """This rung's ``(out, dq, dk, dv)``."""
    out, lse = forward(q, k, v, mask, None, p, seed)
    return (out,) + tuple(backward(dout, q, k, v, out, lse, mask, None, p, seed))


def time_interleaved(fns, repeat):
    """Median seconds of each of ``fns`` over ``repeat`` rounds, one call of each per round
    (interleaved: a slow spell of the machine hits all of them alike)."""
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, t in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def main(argv=None):
    name = pathlib.Path(__file__).stem
    ap = argparse.ArgumentParser(description=f"{name}: check this rung against minibert's "
                                 "attention op (minibert.ops.attention), then time both.")
    ap.add_argument("--batch", type=int, default=4, help="sequences B (default: 4)")
    ap.add_argument("--heads", type=int, default=4, help="heads A (default: 4)")
    ap.add_argument("--seq", type=int, default=128, help="sequence length S (default: 128)")
    ap.add_argument("--dim", type=int, default=64, help="head size D (default: 64)")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                    help="dtype of the timed run (default: float32)")
    ap.add_argument("--dropout", type=float, default=0.0, help="dropout rate (default: 0.0)")
    ap.add_argument("--repeat", type=int, default=5, help="timed rounds (default: 5)")
    ap.add_argument("--seed", type=int, default=0, help="seed of inputs and dropout (default: 0)")
    args = ap.parse_args(argv)
    p, seed = args.dropout, args.seed
    q, k, v, dout, mask = make_problem(args.batch, args.heads, args.seq, args.dim, args.dtype, seed)
    print(f"{name}: (B, A, S, D) = {q.shape}, {args.dtype}, {1 - mask.mean():.0%} padding, "
          f"dropout {p}")

    # the check: this rung in the chosen dtype against the textbook op in float64 on the
    # same (rounded) inputs; the first call also compiles the rung
    got = rung(q, k, v, dout, mask, p, seed)
    ref = textbook(*(x.astype(np.float64) for x in (q, k, v, dout)), mask, p, seed)
    tol, ok = TOLERANCE[args.dtype], True
    for label, a, b in zip(("out", "dq", "dk", "dv"), got, ref):
        err = float(np.abs(a - b).max() / max(1.0, np.abs(b).max()))
        ok &= err <= tol
        print(f"  {label:<3} max error {err:.1e} (tolerance {tol:.0e}) "
              f"{'ok' if err <= tol else 'FAILED'}")
    print(f"check against minibert.ops.attention: {'PASS' if ok else 'FAIL'}")

    # the time: forward, and forward + backward, of the rung and of the textbook op
    textbook(q, k, v, dout, mask, p, seed)                     # warm the textbook's path too
    fwd_rung, fwd_book, step_rung, step_book = time_interleaved([
        lambda: forward(q, k, v, mask, None, p, seed),
        lambda: textbook_forward(q, k, v, mask, p, seed),
        lambda: rung(q, k, v, dout, mask, p, seed),
        lambda: textbook(q, k, v, dout, mask, p, seed)], args.repeat)
    print(f"time, median of {args.repeat} interleaved rounds (the rung on "
          f"{numba.get_num_threads()} threads):")
    for label, t_rung, t_book in (("forward", fwd_rung, fwd_book),
                                  ("forward+backward", step_rung, step_book)):
        print(f"  {label:<16} {name} {1e3 * t_rung:8.2f} ms   textbook op {1e3 * t_book:8.2f} ms"
              f"   (textbook / rung = {t_book / t_rung:.2f})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
