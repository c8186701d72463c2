"""GPU attention ladder, rung 2: K and V tiles in shared memory.

One step from rung 1 (``attn_cuda_v1_naive.py``, which states the contract): the same
three passes over the keys, a thread per query row, but the keys come in tiles of
``block_k`` rows that the block's threads stage together in shared memory (``ks``, ``vs``,
``2 block_k D`` numbers) before any thread reads them:

    for each pass:  for each key tile t:
        all threads: K_t (and V_t in pass 3) -> shared memory;  barrier
        each thread: its row's work on the tile, reading k_j from shared memory;  barrier

What it buys: a block reads each K row from global memory once per pass instead of once
per thread (block_q times less global traffic for K and V, 64 times at the default tile),
with coalesced loads (consecutive threads copy consecutive addresses); every thread of a
block then reads the same k_j element at the same time, which shared memory serves as a
broadcast. What it still pays: three passes (K staged three times), q read from global
memory for every score, and the output row updated in global memory once per key. The
barriers are block-wide, so every thread, also one past the last row, walks every tile.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda

from .._args import cuda_forward_args
from ..attention_cuda import Device, kernel_scalars, tile_sizes
from ..philox_cpu import dropout_keep


@functools.cache
def build_kernel(dtype_str, D, BQ, BK):
    """The kernel for one dtype, head size D, BQ threads per block and tiles of BK keys."""
    ftype = np.dtype(dtype_str).type
    ZERO = ftype(0)
    NEG_INF, POS_INF = ftype(-np.inf), ftype(np.inf)

    @cuda.jit(device=True, inline=True)
    def stage(dst, src, b, a, j0, n, t):
        """dst[r, :] = src[b, a, j0 + r, :] for r < n, by all BQ threads of the block."""
        for e in range(t, n * D, BQ):
            r = e // D
            dst[r, e - r * D] = src[b, a, j0 + r, e - r * D]

    @cuda.jit(device=True, inline=True)
    def score(q, ks, bias, b, a, i, c, scale):
        """s = c q_i . k_j + M_j with k_j = ks[c] from shared memory."""
        s = ZERO
        for d in range(D):
            s += q[b, a, i, d] * ks[c, d]
        return s * scale + bias[c]

    @cuda.jit
    def kernel(q, k, v, key_bias, scale, p32, keep_scale, seed, offset, out, lse):
        _, A, S, _ = q.shape
        bh = cuda.blockIdx.x
        b = bh // A
        a = bh - b * A
        t = cuda.threadIdx.x
        i = cuda.blockIdx.y * BQ + t
        live = i < S
        ks = cuda.shared.array((BK, D), ftype)
        vs = cuda.shared.array((BK, D), ftype)
        bias = cuda.shared.array(BK, ftype)
        m = NEG_INF
        l = ZERO
        if live:
            for d in range(D):
                out[b, a, i, d] = ZERO
        for step in range(3):                        # pass 0: max, 1: sum, 2: output
            for j0 in range(0, S, BK):
                nc = min(BK, S - j0)
                stage(ks, k, b, a, j0, nc, t)
                if step == 2:
                    stage(vs, v, b, a, j0, nc, t)
                for c in range(t, nc, BQ):
                    bias[c] = key_bias[b, j0 + c]
                cuda.syncthreads()
                if live and (step == 0 or m > NEG_INF):
                    for c in range(nc):
                        s = score(q, ks, bias, b, a, i, c, scale)
                        if step == 0:
                            m = max(m, s)
                        elif step == 1:
                            l += ftype(math.exp(s - m))
                        else:
                            pij = ftype(math.exp(s - m)) / l
                            if p32 > 0:
                                e = (bh * S + i) * S + j0 + c
                                pij = pij * keep_scale if dropout_keep(seed, offset, e,
                                                                       p32) else ZERO
                            for d in range(D):
                                out[b, a, i, d] += pij * vs[c, d]
                cuda.syncthreads()
        if live:
            lse[b, a, i] = m + ftype(math.log(l)) if m > NEG_INF else POS_INF

    return kernel


def forward(q, k, v, mask, scale, dropout_p=0.0, seed=0, offset=0, *, block_q=None,
            block_k=None):
    """``(out, lse)``; see ``attn_cuda_v1_naive``."""
    mask, scale, dropout_p, seed, offset = cuda_forward_args(q, k, v, mask, scale, dropout_p,
                                                             seed, offset)
    B, A, S, D = q.shape
    dev = Device(q)
    BQ, BK = tile_sizes(block_q, block_k, D, q.dtype.itemsize)
    out, lse = dev.empty((B, A, S, D), q.dtype), dev.empty((B, A, S), q.dtype)
    if B * A * S == 0:
        return out, lse
    key_bias, _ = dev.mask_tables(mask, B, S, BK, q.dtype)
    build_kernel(q.dtype.str, D, BQ, BK)[(B * A, -(-S // BQ)), BQ, dev.stream](
        dev.arg(q), dev.arg(k), dev.arg(v), dev.arg(key_bias),
        *kernel_scalars(q.dtype, scale, dropout_p, seed, offset), dev.arg(out), dev.arg(lse))
    return out, lse
