"""GPU attention ladder, rung 1: the naive kernel, a thread per query row.

The GPU ladder climbs, like the CPU one (``attn_v1_naive.py`` states the contract and the
conventions), from the textbook function to the production kernel
``minibert/kernels/attention_cuda.py`` (rung 4), one step per rung, every rung behind the
forward contract of ``minibert.kernels.fused_attention_forward``::

    out, lse = forward(q, k, v, mask, scale, dropout_p=0.0, seed=0, offset=0)

on GPU arrays (CuPy, or Numba device arrays as under the simulator), the same function,
the same lse (+inf for a sequence with no real key, whose output is zeros) and the same
dropout bits (Philox element ``((b*A + a)*S + i)*S + j``, ``philox_cpu.py`` compiled for
the GPU). The rungs are forward-only: the backward's structure (recomputed statistics, a
kernel over query tiles for dQ and one over key tiles for dK and dV) belongs to the
production kernel, whose tests prove it.

This rung: a grid of (sequence x head, tile of ``block_q`` rows), a thread per query row
i, everything read from global memory, three passes over the keys:

    1. m_i = max_j s_ij,          s_ij = c q_i . k_j + M_j   (D loads of q and of k per key)
    2. l_i = sum_j exp(s_ij - m_i)                           (the scores again)
    3. O_i = sum_j exp(s_ij - m_i) / l_i keep_ij / (1 - p) v_j, added into ``out`` in
       global memory as it goes

What it costs: every thread reads all of K three times and V once from global memory, and
its q row D times per key; the threads of a block read the same k_j at the same time (the
caches catch much of it, not all); the output row is read and written S times. What the
next rungs change: stage K and V once per block in shared memory (rung 2), one pass with
the online softmax and the output in registers (rung 3), q in registers and padded tiles
skipped (rung 4).
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
def build_kernel(dtype_str, BQ):
    """The kernel for one dtype and ``BQ`` threads (query rows) per block."""
    ftype = np.dtype(dtype_str).type
    ZERO = ftype(0)
    NEG_INF, POS_INF = ftype(-np.inf), ftype(np.inf)

    @cuda.jit(device=True, inline=True)
    def score(q, k, key_bias, b, a, i, j, scale):
        """s_ij = c q_i . k_j + M_j, from global memory."""
        s = ZERO
        for d in range(q.shape[3]):
            s += q[b, a, i, d] * k[b, a, j, d]
        return s * scale + key_bias[b, j]

    @cuda.jit
    def kernel(q, k, v, key_bias, scale, p32, keep_scale, seed, offset, out, lse):
        _, A, S, D = q.shape
        bh = cuda.blockIdx.x
        b = bh // A
        a = bh - b * A
        i = cuda.blockIdx.y * BQ + cuda.threadIdx.x
        if i >= S:                                   # no barrier in this kernel: may leave
            return
        m = NEG_INF
        for j in range(S):                           # pass 1: the row max
            m = max(m, score(q, k, key_bias, b, a, i, j, scale))
        for d in range(D):
            out[b, a, i, d] = ZERO
        if m == NEG_INF:                             # no real key: zeros, lse = +inf
            lse[b, a, i] = POS_INF
            return
        l = ZERO
        for j in range(S):                           # pass 2: the row sum
            l += ftype(math.exp(score(q, k, key_bias, b, a, i, j, scale) - m))
        for j in range(S):                           # pass 3: O_i += P_ij keep / (1 - p) v_j
            pij = ftype(math.exp(score(q, k, key_bias, b, a, i, j, scale) - m)) / l
            if p32 > 0:
                pij = pij * keep_scale if dropout_keep(seed, offset, (bh * S + i) * S + j,
                                                       p32) else ZERO
            for d in range(D):
                out[b, a, i, d] += pij * v[b, a, j, d]
        lse[b, a, i] = m + ftype(math.log(l))

    return kernel


def launch(q, k, v, mask, scale, dropout_p, seed, offset, block_q):
    """Runs the kernel on validated arguments; ``(out, lse)``."""
    B, A, S, D = q.shape
    dev = Device(q)
    BQ, _ = tile_sizes(block_q, 1, D, q.dtype.itemsize)
    out, lse = dev.empty((B, A, S, D), q.dtype), dev.empty((B, A, S), q.dtype)
    if B * A * S == 0:
        return out, lse
    key_bias, _ = dev.mask_tables(mask, B, S, 1, q.dtype)
    build_kernel(q.dtype.str, BQ)[(B * A, -(-S // BQ)), BQ, dev.stream](
        dev.arg(q), dev.arg(k), dev.arg(v), dev.arg(key_bias),
        *kernel_scalars(q.dtype, scale, dropout_p, seed, offset), dev.arg(out), dev.arg(lse))
    return out, lse


def forward(q, k, v, mask, scale, dropout_p=0.0, seed=0, offset=0, *, block_q=None):
    """``(out, lse)``; see the module docstring."""
    args = cuda_forward_args(q, k, v, mask, scale, dropout_p, seed, offset)
    return launch(q, k, v, *args, block_q)
