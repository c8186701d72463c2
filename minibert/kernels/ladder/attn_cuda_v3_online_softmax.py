"""GPU attention ladder, rung 3: the online softmax, one pass over the key tiles.

One step from rung 2 (``attn_cuda_v2_shared_tiles.py``): the three passes become one. Each
thread keeps, for its query row, a running max m, a running sum l and the unnormalised
output accumulator acc (D numbers, a thread-local array: registers) and, per K/V tile
staged in shared memory,

    s      = c q_i K_t^T + M_t                  the row's scores of the tile (block_k,)
    m_new  = max(m, max(s)),  alpha = exp(m - m_new)
    l      = alpha l + sum(exp(s - m_new))
    acc    = alpha acc + (exp(s - m_new) keep / (1 - p)) V_t

then O_i = acc / l and lse_i = m + log(l) (derived in ``ladder/attn_v3_online_softmax.py``
for the CPU: every term carries the factor exp(-m) of the current max, so the result is
softmax(s) V whatever the tile order). A tile whose keys are all padding leaves the state
as it is (m_new = -inf would make alpha = exp(-inf + inf) = NaN).

What it buys: K and V are staged once instead of three and one times, the exp computed
once per score instead of twice, and the output row is written once, from registers,
instead of updated in global memory once per key. What it still pays, and rung 4
(``attention_cuda.py``) removes: q_i read from global memory for every score (rung 4 holds
it in registers too), a Philox call per element (rung 4: one per four consecutive keys),
and tiles of padding only staged and scanned (rung 4 skips them for the whole block).
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
        acc = cuda.local.array(D, ftype)            # unnormalised O_i, in registers
        sr = cuda.local.array(BK, ftype)            # the row's scores of one tile
        for d in range(D):
            acc[d] = ZERO
        m = NEG_INF
        l = ZERO
        for j0 in range(0, S, BK):
            nc = min(BK, S - j0)
            stage(ks, k, b, a, j0, nc, t)
            stage(vs, v, b, a, j0, nc, t)
            for c in range(t, nc, BQ):
                bias[c] = key_bias[b, j0 + c]
            cuda.syncthreads()
            if live:
                m_tile = NEG_INF
                for c in range(nc):
                    s = ZERO
                    for d in range(D):
                        s += q[b, a, i, d] * ks[c, d]
                    s = s * scale + bias[c]
                    sr[c] = s
                    m_tile = max(m_tile, s)
                m_new = max(m, m_tile)
                if m_new > NEG_INF:                 # else: padding so far, nothing to add
                    alpha = ftype(math.exp(m - m_new))
                    for d in range(D):
                        acc[d] *= alpha
                    row_sum = ZERO
                    for c in range(nc):
                        pc = ftype(math.exp(sr[c] - m_new))
                        row_sum += pc
                        if p32 > 0:
                            e = (bh * S + i) * S + j0 + c
                            pc = pc * keep_scale if dropout_keep(seed, offset, e, p32) else ZERO
                        for d in range(D):
                            acc[d] += pc * vs[c, d]
                    l = l * alpha + row_sum
                    m = m_new
            cuda.syncthreads()
        if live:
            for d in range(D):
                out[b, a, i, d] = acc[d] / l if l > ZERO else ZERO
            lse[b, a, i] = m + ftype(math.log(l)) if l > ZERO else POS_INF

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
