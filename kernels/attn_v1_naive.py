"""Attention ladder, rung 1: the naive kernel.

Run it: ``python kernels/attn_v1_naive.py`` (``--help`` for the options) checks this rung
against minibert's op, ``minibert.ops.attention``, and times both.

The kernel ladder is a sequence of CPU attention kernels, each one step away from the one
before, all behind the contract of ``minibert.kernels.fused_attention_forward`` /
``fused_attention_backward``:

    forward(q, k, v, mask, scale, dropout_p=0.0, seed=0, offset=0) -> (out, lse)
    backward(dout, q, k, v, out, lse, mask, scale, dropout_p=0.0, seed=0, offset=0)
        -> (dq, dk, dv)

q, k, v, out, dout are (B, A, S, D); ``mask`` is the (B, S) 0/1 key padding mask (1 = attend,
None = all ones); ``scale`` multiplies the scores (None = 1/sqrt(D)). ``lse`` (B, A, S) is the
only state the forward saves for the backward: the log-sum-exp of each row of scores over
its real keys,

    lse_i = log sum_{j real} exp(s_ij),    s_ij = scale * q_i . k_j,

so that the probabilities can be recomputed exactly as ``P_ij = exp(s_ij - lse_i)``.
A sequence with no real key has ``lse = +inf`` (then ``exp(s - lse) = 0``), output zeros
and zero gradients, as ``minibert.ops.attention``. Dropout keeps probability ``P_ij`` with
the Philox bit of element ``((b*A + a)*S + i)*S + j`` (``minibert.kernels.philox_cpu.dropout_keep``,
the bits of ``minibert.rng.keep_mask``) and scales it by 1/(1 - p).

This rung is ``minibert/ops/attention.py`` written as loops: for every (b, a)

    1. scores   S = scale * Q K^T          into a fresh (S, S) buffer
    2. softmax  row max, exp, row sum, divide, each a pass over the (S, S) buffer
    3. dropout  another pass: P *= keep / (1 - p)
    4. output   O = P V

and the backward recomputes the whole (S, S) matrix P from ``lse``, then does the textbook
matrix products

    dV = Pd^T dO,  dPd = dO V^T,  dP = dPd * keep / (1 - p),
    dS = P * (dP - rowsum(dP * P)),  dQ = scale dS K,  dK = scale dS^T Q

with two (S, S) buffers (P, and dPd -> dP -> dS in place; a third, Pd, with dropout).

What it costs: per (b, a) the forward makes five passes over an (S, S) buffer (write the
scores; max; exp and sum; divide; product with V; one more for dropout) and the backward
holds two or three of them, so the memory traffic of the scores grows like S^2 and, once
an (S, S) matrix no longer fits in the L2 cache (S = 512 in float32 is 1 MiB, the whole
L2 of a core of the benchmark machine), every pass goes to the next cache level. Each
(b, a) allocates its own buffers. Nothing is tiled: the matrix products are plain i, j, d
loops, dot products (scores, dO V^T) or row updates (P V, dS K, dS^T Q, Pd^T dO), one load
of K or V per multiply-add.

Parallelism: none. Every rung of the ladder (v1 to v3) runs the B * A independent (b, a)
problems one after the other on one thread, so that the rungs differ only by the
algorithm; threads are the business of the top rungs, ``kernels/attn_v4_tiled.py`` (v4)
and ``minibert/kernels/attention_cpu.py`` (v5), which the benchmark also times on one
thread for a like-for-like comparison. (A ``prange`` over (b, a) would be a one-word
change, but Numba's parallel compilation of every kernel would triple the rung's compile
time.)

Compiler flags (``FASTMATH``, those of the production kernels too):
``fastmath={"reassoc", "contract"}`` lets LLVM reorder sums, so that dot products
vectorize, and fuse multiply-adds. It makes no assumption about NaN or infinity, so
``-inf`` maxima and ``+inf`` lse keep their meaning.

Arguments are checked by the rung itself (TypeError or ValueError naming the argument, the
value and what was expected); unlike ``minibert.kernels.fused_attention_*`` the rungs also
take arrays of any strides (copied to C order) and masks as lists.

The rung stands alone (as the rungs of llm.c's ``dev/cuda``): it imports only public names
of minibert, and what it shares with the other rungs (argument checks, the self-check and
the timer at the bottom) is written out in each of them.
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
    for ba in range(B * A):       # the independent (b, a) problems, one after the other
        b, a = ba // A, ba % A
        qh, kh, vh, oh = q[b, a], k[b, a], v[b, a], out[b, a]             # (S, D) views
        km = keymask[b]                                                     # (S,)
        base = ba * S * S           # dropout element index of (b, a, 0, 0)
        if km.sum() == 0:
            # no key to attend to: zero output, lse = +inf so that exp(s - lse) = 0
            lse[b, a, :] = -neg_inf
            oh[:, :] = zero
            continue

        # 1. scores = scale * q k^T: the whole (S, S) matrix, fresh for every (b, a)
        P = np.empty((S, S), dtype=q.dtype)                                # (S, S)
        for i in range(S):
            for j in range(S):
                acc = zero
                for d in range(D):
                    acc += qh[i, d] * kh[j, d]
                P[i, j] = acc * scale

        # 2. softmax over the real keys, one pass per step: max, exp and sum, divide
        for i in range(S):
            m = neg_inf
            for j in range(S):
                if km[j] != 0 and P[i, j] > m:
                    m = P[i, j]
            total = zero
            for j in range(S):
                # a padded key gets exactly 0, as exp(finfo.min / 2 - m) in the textbook op
                e = math.exp(P[i, j] - m) if km[j] != 0 else zero
                P[i, j] = e
                total += e
            for j in range(S):
                P[i, j] = P[i, j] / total
            lse[b, a, i] = m + math.log(total)

        # 3. dropout: P <- P * keep / (1 - p), the same Philox bits as rng.keep_mask
        if p > 0.0:
            for i in range(S):
                for j in range(S):
                    if keep_bit(seed, offset, base + i * S + j, p):
                        P[i, j] = P[i, j] * inv_keep
                    else:
                        P[i, j] = zero

        # 4. out = P v
        for i in range(S):
            for d in range(D):
                oh[i, d] = zero
            for j in range(S):
                pij = P[i, j]
                for d in range(D):
                    oh[i, d] += pij * vh[j, d]


@njit(cache=True, fastmath=FASTMATH)
def _backward_kernel(dout, q, k, v, lse, keymask, scale, p, inv_keep, seed, offset,
                     dq, dk, dv):
    B, A, S, D = q.shape
    zero = q.dtype.type(0)
    for ba in range(B * A):
        b, a = ba // A, ba % A
        qh, kh, vh, doh = q[b, a], k[b, a], v[b, a], dout[b, a]            # (S, D) views
        dqh, dkh, dvh = dq[b, a], dk[b, a], dv[b, a]                        # (S, D), zeroed
        km = keymask[b]                                                     # (S,)
        base = ba * S * S
        if km.sum() == 0:
            continue                # dq, dk, dv stay zero: the output was a constant

        # recompute P = exp(scale q k^T - lse) on the real keys (0 on padded keys)
        P = np.empty((S, S), dtype=q.dtype)                                # (S, S)
        for i in range(S):
            for j in range(S):
                acc = zero
                for d in range(D):
                    acc += qh[i, d] * kh[j, d]
                P[i, j] = math.exp(acc * scale - lse[b, a, i]) if km[j] != 0 else zero
        # Pd = P * keep / (1 - p)
        Pd = P
        if p > 0.0:
            Pd = np.empty((S, S), dtype=q.dtype)                           # (S, S)
            for i in range(S):
                for j in range(S):
                    keep = keep_bit(seed, offset, base + i * S + j, p)
                    Pd[i, j] = P[i, j] * inv_keep if keep else zero

        # out = Pd v  ->  dv = Pd^T dout
        for i in range(S):
            for j in range(S):
                pd = Pd[i, j]
                for d in range(D):
                    dvh[j, d] += pd * doh[i, d]
        # out = Pd v  ->  dPd = dout v^T
        G = np.empty((S, S), dtype=q.dtype)                                # (S, S)
        for i in range(S):
            for j in range(S):
                acc = zero
                for d in range(D):
                    acc += doh[i, d] * vh[j, d]
                G[i, j] = acc
        # Pd = P * keep / (1 - p)  ->  dP = dPd * keep / (1 - p)
        if p > 0.0:
            for i in range(S):
                for j in range(S):
                    keep = keep_bit(seed, offset, base + i * S + j, p)
                    G[i, j] = G[i, j] * inv_keep if keep else zero
        # P = softmax(S)  ->  dS = P * (dP - rowsum(dP * P))
        for i in range(S):
            row_dot = zero
            for j in range(S):
                row_dot += G[i, j] * P[i, j]
            for j in range(S):
                G[i, j] = P[i, j] * (G[i, j] - row_dot)
        # S = scale q k^T  ->  dq = scale dS k,  dk = scale dS^T q
        for i in range(S):
            for j in range(S):
                gs = G[i, j] * scale
                for d in range(D):
                    dqh[i, d] += gs * kh[j, d]
                    dkh[j, d] += gs * qh[i, d]


# --------------------------------------------------------------------------- the rung


def forward(q, k, v, mask, scale, dropout_p=0.0, seed=0, offset=0):
    """Attention forward, naive: returns ``(out, lse)``, (B, A, S, D) and (B, A, S)."""
    q, k, v, keymask, scale, p, inv_keep, seed, offset = prepare_forward(
        q, k, v, mask, scale, dropout_p, seed, offset)
    out = np.empty_like(q)                                                   # (B, A, S, D)
    lse = np.empty(q.shape[:3], dtype=q.dtype)                               # (B, A, S)
    _forward_kernel(q, k, v, keymask, scale, p, inv_keep, seed, offset, out, lse)
    return out, lse


def backward(dout, q, k, v, out, lse, mask, scale, dropout_p=0.0, seed=0, offset=0):
    """Attention backward, naive: returns fresh ``(dq, dk, dv)``, each (B, A, S, D)."""
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
