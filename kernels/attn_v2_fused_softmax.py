"""Attention ladder, rung 2: fused softmax, one query row at a time.

Run it: ``python kernels/attn_v2_fused_softmax.py`` (``--help`` for the options) checks
this rung against minibert's op, ``minibert.ops.attention``, and times both.

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
the speed of rungs 1 to 3 (measured in kernels/README.md).

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




# --------------------------------------------------------------------------- kernels


@njit(cache=True)
def keep_bit(seed, offset, index, p):
    """``dropout_keep`` behind a function call: that function is inlined into its
    caller at every call site, which would compile Philox's ten rounds once per site and
    per dtype; the ladder calls this one compiled copy instead (dropout is not what the
    ladder measures)."""
    return dropout_keep(seed, offset, index, p)


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


# --------------------------------------------------------------------------- the rung


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
