"""Keeping P instead of recomputing it, as a measured prototype: would the CPU attention
kernel's backward be faster at short sequences if the forward kept the probabilities?

    python benchmarks/prototype_attention_keep_p.py [--shape B,A,S,D] [--rounds R]

Why it exists. At S = 128 the kernel's backward spends about a sixth of its time on the
product Q K^T and the exponentials that recompute P (FlashAttention's choice: keep only
the row log-sum-exp, recompute P from it). Keeping P, (B, A, S, S), in the forward
removes both: four block products and no exp instead of five and exp. It costs that much
memory per layer (25 MB at 32 x 12 x 128 x 32 in float32, as much as the intermediate
activation) and the time to write P out and read it back. This script measures the
trade against the kernel (``minibert.kernels.attention_cpu``) in the same process.
Nothing in minibert imports it.

The prototype reuses the kernel's row pass, threads and layouts, and handles what the
measurement needs only: no mask, no dropout, one key block (S <= the kernel's block_k),
one tile of all queries per head group. Its outputs and gradients are checked against the
kernel's first (float32 rounding apart).

Measured (2-core AMD EPYC, 32 x 12 x 128 x 32, float32, forward + backward, 9 interleaved
rounds): 1.04x the kernel on one thread (60.0 -> 57.7 ms), 0.99x on two (31.4 -> 32.2 ms).
Writing P and reading it back costs what the recompute saves, so the kernel keeps
recomputing. Prints; writes no file.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from numba import njit

from minibert.kernels import attention_cpu as ac
from minibert.kernels._blocks import EXP_CONSTANTS, FASTMATH, INT_OF, kernel_args
from minibert.kernels.layouts import token_major


@njit(cache=False, nogil=True, fastmath=FASTMATH)
def _normalise(s, l):
    """P = P~ / l, row by row, in place (G, nr, nc)."""
    G, nr, nc = s.shape
    for g in range(G):
        for r in range(nr):
            inv = s.dtype.type(1) / l[g, r]
            for c in range(nc):
                s[g, r, c] *= inv


@njit(cache=False, nogil=True, fastmath=FASTMATH)
def _ds_from_kept(p, ds, scale):
    """ds (dP = dO V^T on entry) leaves as scale dS = scale P (dP - D_i), with
    D_i = sum_j P_ij dP_ij: the backward's row pass without recomputing P."""
    G, nr, nc = p.shape
    for g in range(G):
        for r in range(nr):
            prow, dsrow = p[g, r], ds[g, r]
            d_i = p.dtype.type(0)
            for c in range(nc):
                d_i += prow[c] * dsrow[c]
            for c in range(nc):
                dsrow[c] = prow[c] * (dsrow[c] - d_i) * scale


def _forward_task(b, h0, h1, q, k, v, out, lse, P, args):
    key_bias, _, _, scale, dropout_p, keep_scale, seed, offset = args
    _, A, S, D = q.shape
    G = h1 - h0
    acc = np.empty((G, S, D), q.dtype)
    m, l = np.full((G, S), -np.inf, q.dtype), np.zeros((G, S), q.dtype)
    s = P[b, h0:h1]                                             # (G, S, S), kept
    np.matmul(q[b, h0:h1], k[b, h0:h1].transpose(0, 2, 1), out=s)
    ac._forward_block(s, acc, m, l, key_bias[b, 0:S], scale, True, dropout_p, keep_scale,
                      seed, offset, np.int64(0), b, h0, A, S, 0, 0, EXP_CONSTANTS[q.dtype],
                      INT_OF[q.dtype])
    _normalise(s, l)
    np.matmul(s, v[b, h0:h1], out=acc)
    lse[b, h0:h1] = m + np.log(l)
    out[b, h0:h1] = acc


def _backward_task(b, h0, h1, dout, q, k, v, P, dq, dk, dv, scale):
    p = P[b, h0:h1]
    ds = np.empty(p.shape, q.dtype)
    np.matmul(dout[b, h0:h1], v[b, h0:h1].transpose(0, 2, 1), out=ds)      # dP
    _ds_from_kept(p, ds, scale)
    np.matmul(p.transpose(0, 2, 1), dout[b, h0:h1], out=dv[b, h0:h1])
    np.matmul(ds.transpose(0, 2, 1), q[b, h0:h1], out=dk[b, h0:h1])
    np.matmul(ds, k[b, h0:h1], out=dq[b, h0:h1])


def _run(task, q):
    B, A, S, D = q.shape
    ac._run(task, ac.head_groups(B, A), B * A * S * S * D)


def forward_kept(q, k, v, scale):
    """(out, lse, P) for q, k, v (B, A, S, D), no mask, no dropout."""
    B, A, S, D = q.shape
    if S > ac.BLOCK_K:
        raise ValueError(f"S={S}: the prototype takes one key block, S <= {ac.BLOCK_K}")
    args = kernel_args(q, None, scale, 0.0, 0, 0, S)
    (out,) = token_major((B,), A, S, D, q.dtype, empty=np.empty)
    lse, P = np.empty((B, A, S), q.dtype), np.empty((B, A, S, S), q.dtype)
    _run(lambda b, h0, h1: _forward_task(b, h0, h1, q, k, v, out, lse, P, args), q)
    return out, lse, P


def backward_kept(dout, q, k, v, P, scale):
    """(dq, dk, dv) from the kept P (which it overwrites)."""
    B, A, S, D = q.shape
    dq, dk, dv = token_major((B,), A, S, D, q.dtype, 3, np.empty)
    _run(lambda b, h0, h1: _backward_task(b, h0, h1, dout, q, k, v, P, dq, dk, dv, scale), q)
    return dq, dk, dv


def check(q, k, v, dout, scale):
    """Max relative difference of out, lse, dq, dk, dv from the kernel's."""
    out, lse = ac.attention_forward(q, k, v, None, scale)
    ref = (out, lse) + ac.attention_backward(dout, q, k, v, out, lse, None, scale)
    o, l, P = forward_kept(q, k, v, scale)
    ours = (o, l) + backward_kept(dout, q, k, v, P, scale)
    return max(float(np.abs(a - b).max() / np.abs(a).max()) for a, b in zip(ref, ours))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="32,12,128,32", help="B,A,S,D (default 32,12,128,32)")
    ap.add_argument("--rounds", type=int, default=9, help="interleaved rounds (default 9)")
    args = ap.parse_args(argv)
    import numba
    B, A, S, D = (int(x) for x in args.shape.split(","))
    r = np.random.default_rng(0)
    q, k, v, dout = (r.standard_normal((B, A, S, D)).astype(np.float32) for _ in range(4))
    scale = 1 / np.sqrt(D)
    print(f"(B, A, S, D) = {(B, A, S, D)}, float32: max relative difference from the kernel "
          f"{check(q, k, v, dout, scale):.1e}")

    def kernel():
        out, lse = ac.attention_forward(q, k, v, None, scale)
        ac.attention_backward(dout, q, k, v, out, lse, None, scale)

    def keep_p():
        _, _, P = forward_kept(q, k, v, scale)
        backward_kept(dout, q, k, v, P, scale)

    for threads in (1, numba.config.NUMBA_NUM_THREADS):
        numba.set_num_threads(threads)
        ms = {"kernel": [], "keep P": []}
        for _ in range(args.rounds):
            for name, fn in (("kernel", kernel), ("keep P", keep_p)):
                fn()
                t0 = time.perf_counter()
                fn()
                ms[name].append((time.perf_counter() - t0) * 1e3)
        ratio = statistics.median(a / b for a, b in zip(ms["kernel"], ms["keep P"]))
        print(f"{threads} thread(s), forward + backward, median of {args.rounds} rounds: kernel "
              f"{statistics.median(ms['kernel']):.1f} ms, keep P "
              f"{statistics.median(ms['keep P']):.1f} ms, kernel / keep P {ratio:.2f}")


if __name__ == "__main__":
    main()
