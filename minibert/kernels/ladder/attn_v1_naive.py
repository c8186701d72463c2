"""Attention ladder, rung 1: the naive kernel.

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
the Philox bit of element ``((b*A + a)*S + i)*S + j`` (``philox_cpu.dropout_keep``, the bits
of ``minibert.rng.keep_mask``) and scales it by 1/(1 - p).

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
algorithm; threads are the business of the top rungs, ``minibert/kernels/ladder/attn_v4_tiled.py``
(v4) and ``minibert/kernels/attention_cpu.py`` (v5), which the benchmark also times on one thread
for a like-for-like comparison. (A ``prange`` over (b, a) would be a one-word change, but
Numba's parallel compilation of every kernel would triple the ladder's compile time.)

Compiler flags (``_blocks.FASTMATH``, shared by the ladder and the production kernels):
``fastmath={"reassoc", "contract"}`` lets LLVM reorder sums, so that dot products
vectorize, and fuse multiply-adds. It makes no assumption about NaN or infinity, so
``-inf`` maxima and ``+inf`` lse keep their meaning.

Arguments are checked by ``_args.forward_args`` / ``backward_args``, the checks of
``minibert.kernels.fused_attention_*`` with their messages; unlike the public entry points
rungs 1 to 3 also take arrays of any strides (copied to C order) and masks as lists.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from .._args import backward_args, forward_args
from .._blocks import FASTMATH
from ..philox_cpu import dropout_keep

# --------------------------------------------------------------------------- shared helpers


def prepare_forward(q, k, v, mask, scale, dropout_p, seed, offset):
    """Validate the forward arguments and convert them for the kernels of the ladder.

    Returns ``(q, k, v, keymask, scale, p, inv_keep, seed, offset)``: C-contiguous q, k, v;
    ``keymask`` (B, S) int8, 1 = real key; ``scale`` and ``inv_keep = 1/(1 - p)`` as scalars
    of q's dtype; ``p`` as a float (0.0 turns dropout off); seed and offset as uint64.
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{name} has type {type(x).__name__}, expected a NumPy array "
                            "(these are CPU kernels)")
    q, k, v = _contiguous(q, k, v)
    if mask is not None:
        mask = np.asarray(mask)
    # shapes, dtypes, mask, scale, dropout_p, seed and offset: the checks and messages of
    # minibert.kernels.fused_attention_forward
    mask, scale, p, seed, offset = forward_args(q, k, v, mask, scale, dropout_p, seed, offset)
    B, _, S, D = q.shape
    if mask is None:
        keymask = np.ones((B, S), dtype=np.int8)
    else:
        keymask = (mask == 1).astype(np.int8)                             # (B, S)
    dtype = q.dtype.type
    scale = dtype(scale)
    inv_keep = dtype(1.0 / (1.0 - p))
    seed, offset = np.uint64(seed), np.uint64(offset)
    return q, k, v, keymask, scale, p, inv_keep, seed, offset


def prepare_backward(dout, q, k, v, out, lse, mask, scale, dropout_p, seed, offset):
    """``prepare_forward`` plus checks of dout, out (like q) and lse (B, A, S).

    Returns ``(dout, q, k, v, out, lse, keymask, scale, p, inv_keep, seed, offset)``.
    """
    prepared = prepare_forward(q, k, v, mask, scale, dropout_p, seed, offset)
    q, k, v = prepared[:3]
    for name, x in (("dout", dout), ("out", out), ("lse", lse)):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{name} has type {type(x).__name__}, expected a NumPy array "
                            "(these are CPU kernels)")
    dout, out, lse = _contiguous(dout, out, lse)
    if mask is not None:
        mask = np.asarray(mask)
    # dout and out like q, lse (B, A, S): the checks of fused_attention_backward
    backward_args(dout, q, k, v, out, lse, mask, scale, dropout_p, seed, offset)
    return (dout, q, k, v, out, lse) + prepared[3:]


def _contiguous(*arrays):
    """The ladder's rungs accept any strides (the public interface asks for C order): a
    C-contiguous copy of each array that is not."""
    return tuple(x if x.flags.c_contiguous else np.ascontiguousarray(x) for x in arrays)


# --------------------------------------------------------------------------- kernels


@njit(cache=True)
def keep_bit(seed, offset, index, p):
    """``philox_cpu.dropout_keep`` behind a function call: that function is inlined into its
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


# --------------------------------------------------------------------------- public API


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
