"""Attention ladder, rung 3: online softmax over key blocks.

Run it: ``python kernels/attn_v3_online_softmax.py`` (``--help`` for the options) checks
this rung against minibert's op, ``minibert.ops.attention``, and times both.

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
tiled kernel ``kernels/attn_v4_tiled.py`` (v4). Like rungs 1 and 2, this rung
computes every score, padded keys included, and only gives padded keys zero weight.

Parallelism: none (the (b, a) problems run one after the other; see rung 1).
"""
from __future__ import annotations

import argparse
import math
import numbers
import pathlib
import statistics
import sys
import time

import numpy as np
from numba import njit

from minibert.kernels.philox_cpu import dropout_keep
from minibert.ops import attention, readable_ops
from minibert.rng import check_u64

#: Numba's fastmath flags: reordered sums (vectorised dot products) and fused multiply-adds,
#: no assumption about NaN or infinities
FASTMATH = {"reassoc", "contract"}

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


def prepare_forward(q, k, v, mask, scale, dropout_p, seed, offset):
    """Validate the forward arguments and convert them for the kernels.

    Returns ``(q, k, v, keymask, scale, p, inv_keep, seed, offset)``: C-contiguous q, k, v;
    ``keymask`` (B, S) int8, 1 = real key; ``scale`` and ``inv_keep = 1/(1 - p)`` as scalars
    of q's dtype; ``p`` as a float (0.0 turns dropout off); seed and offset as uint64.
    """
    q, k, v = as_arrays([("q", q), ("k", k), ("v", v)])
    check_tensors([("q", q), ("k", k), ("v", v)])
    B, _, S, D = q.shape
    keymask = np.ones((B, S), dtype=np.int8)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != (B, S):
            raise ValueError(f"mask has shape {mask.shape}, expected (B, S) = {(B, S)} "
                             "with 1 = attend and 0 = padding")
        bad = mask[(mask != 0) & (mask != 1)]
        if bad.size:
            raise ValueError(f"mask contains the value {bad[0].item()!r}, expected only 0 "
                             "(padding) and 1 (attend)")
        keymask = (mask == 1).astype(np.int8)                             # (B, S)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    for name, x in (("scale", scale), ("dropout_p", dropout_p)):
        if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):
            raise TypeError(f"{name}={x!r} has type {type(x).__name__}, expected a real number")
    if not math.isfinite(scale):
        raise ValueError(f"scale={scale!r} is not finite, expected a finite number or None")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p={dropout_p!r} is out of range, expected 0 <= dropout_p < 1")
    seed, offset = check_u64("seed", seed), check_u64("offset", offset)
    dtype = q.dtype.type
    p = float(dropout_p)
    return (q, k, v, keymask, dtype(scale), p, dtype(1.0 / (1.0 - p)), np.uint64(seed),
            np.uint64(offset))


def prepare_backward(dout, q, k, v, out, lse, mask, scale, dropout_p, seed, offset):
    """``prepare_forward`` plus checks of dout, out (like q) and lse (B, A, S).

    Returns ``(dout, q, k, v, out, lse, keymask, scale, p, inv_keep, seed, offset)``.
    """
    prepared = prepare_forward(q, k, v, mask, scale, dropout_p, seed, offset)
    q = prepared[0]
    dout, out, lse = as_arrays([("dout", dout), ("out", out), ("lse", lse)])
    check_tensors([("q", q), ("out", out), ("dout", dout)])
    if lse.shape != q.shape[:3]:
        raise ValueError(f"lse has shape {lse.shape}, expected (B, A, S) = {q.shape[:3]}")
    if lse.dtype != q.dtype:
        raise TypeError(f"lse has dtype {lse.dtype}, expected the dtype of q ({q.dtype})")
    return (dout,) + prepared[:3] + (out, lse) + prepared[3:]


# keys per block: 64 scores (256 B in float32) plus a block of K and V (2 x 64 x D numbers,
# 32 KiB at D = 64 in float32) stay in L1 while the block is used
BLOCK_K = 64


# --------------------------------------------------------------------------- kernels


@njit(cache=True)
def keep_bit(seed, offset, index, p):
    """``dropout_keep`` behind a function call: that function is inlined into its
    caller at every call site, which would compile Philox's ten rounds once per site and
    per dtype; the ladder calls this one compiled copy instead (dropout is not what the
    ladder measures)."""
    return dropout_keep(seed, offset, index, p)


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


# --------------------------------------------------------------------------- the rung


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
    print(f"time, median of {args.repeat} interleaved rounds (the rung on one thread):")
    for label, t_rung, t_book in (("forward", fwd_rung, fwd_book),
                                  ("forward+backward", step_rung, step_book)):
        print(f"  {label:<16} {name} {1e3 * t_rung:8.2f} ms   textbook op {1e3 * t_book:8.2f} ms"
              f"   (textbook / rung = {t_book / t_rung:.2f})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
