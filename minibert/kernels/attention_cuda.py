"""Fused softmax attention on the GPU, in Numba CUDA: FlashAttention-2's structure, the
production kernel of the GPU ladder (rung 4; rungs 1-3 are the top-level ``kernels/attn_cuda_v*.py``).

The function and the contract are those of the CPU kernel (``attention_cpu.py``; the
algorithm is derived in ``kernels/attn_v4_tiled.py``): per (b, a), with c = scale, the key
padding mask M (0 at real keys, -inf at padding) and the dropout rate p,

    s_ij = c q_i . k_j + M_j,   P_ij = exp(s_ij - lse_i),   lse_i = log sum_j exp(s_ij)
    O_i  = sum_j P_ij keep_ij / (1 - p) v_j

with keep_ij the Philox bit of element ``start + ((b*A + a)*S + i)*S + j``, the bits of
``minibert.rng.keep_mask((B, A, S, S), p, seed, offset, start=start)`` (``start`` is 0, or
the element of a data-parallel rank's first probability in the whole batch). The Philox code is
``philox_cpu.py``'s own: Numba compiles the same functions for the GPU.

Thread layout: a row per group of L lanes
-----------------------------------------
Every kernel gives each row it owns (a query row in the forward and ``dq_kernel``, a key row
in ``dkdv_kernel``) to a group of L consecutive lanes of one warp (L = ``lanes``, a power of
two dividing D and 32). Thread t of a block serves row ``t // L`` of the block's rows as
lane ``l = t % L`` and holds only the head elements d = l, l + L, l + 2L, ... of that row's
vectors: D / L numbers per vector (16 at D = 64, L = 4), so that a thread's arrays stay in
registers. A dot product over D is then a partial sum per lane and an all-reduce over the
group by butterfly shuffles (``shfl_xor_sync`` with lane masks 1, 2, ..., L/2: log2 L
steps, after which every lane of the group holds the same sum; a + b = b + a bit for bit,
so the lanes agree exactly). A strided slice, not a contiguous one, keeps the lanes of a
group on consecutive shared-memory words (no bank conflicts) and global addresses.

The per-key (or per-query) work after a dot product, the exp and the dropout bit, is not
repeated by all L lanes: its result goes to a row of shared memory (``ps``/``ss``/``dps``,
one padded row per group) and each lane takes a share of the keys. In the forward and
``dq_kernel`` a lane owns the keys of whole Philox blocks (four consecutive elements of the
row, block g of the tile to lane g mod L), so one Philox call still serves four keys; in
``dkdv_kernel`` the elements of one key column are S apart, so query r goes to lane r mod L
with a call per element. After ``syncwarp`` every lane reads the row back for its own
slice of the output update. No lane ever indexes a register array with a run-time index:
the score rows live in shared memory, the thread's arrays are indexed by unrolled loops.

Forward, ``forward_kernel``: grid (B A, ceil(S / block_q)), ``block_q * L`` threads, a query
row per group. The block walks the key tiles of ``block_k`` keys: all its threads stage the
tile's K and V rows in shared memory (``2 block_k D`` numbers), then each group runs the
online softmax of its row, its slice of q_i and of the unnormalised output accumulator in
registers, with the running max m and (per lane, a share of it) the sum l:

    s      = c q_i K_t^T + M_t                       (block_k,) the row's scores of tile t
    m_new  = max(m, max(s)),   alpha = exp(m - m_new)
    l      = alpha l + sum(exp(s - m_new))           (before dropout)
    acc    = alpha acc + (exp(s - m_new) keep / (1 - p)) V_t

and at the end O_i = acc / l, lse_i = m + log(l). The (S, S) matrix is never formed. Key
tiles of padding only are skipped (the table ``tile_has_key``, from the mask); a sequence
with no real key skips them all and gets O = 0 and lse = +inf (FlashAttention's convention,
the CPU kernel's: exp(s - lse) = 0 for every s, so every probability and gradient of the row
is 0, never NaN).

Packed sequences ("varlen"): the three bodies (``forward_rows``, ``dq_rows``, ``dkdv_rows``)
serve the padded kernels and the ``varlen_*`` ones, which take q, k, v (A, T, D), the T real
tokens of B sequences packed (viewed as (1, A, T, D)), and offsets ``cu_seqlens`` (B + 1,):
sequence b, rows r0 = cu_seqlens[b] .. r0 + n_b - 1, attends to itself only, with no mask.
A body reads row i of its sequence at [ab, a, r0 + i] and stops at its length n (padded:
ab = b, r0 = 0, n = S; varlen: ab = 0, r0 = cu_seqlens[b], n = n_b); a varlen block whose
tile starts past n_b returns at once (the grids are the padded ones). Dropout keeps the
padded index: probability (b, a, i, j) is element start + ((b A + a) S + i) S + j with S
= ``seq_len``, the padded length: the packed batch draws the padded batch's bits.

Backward without atomics: each output element is written by exactly one thread, which sums
its terms in a fixed order (the butterfly's order is fixed too), so two runs give the same
bits.

* ``dq_kernel`` (grid and block as the forward's, a query row per group) computes the two
  row statistics and then dQ_i = c sum_j dS_ij k_j over the key tiles;
* ``dkdv_kernel`` (grid (B A, ceil(S / block_k)), ``block_k * L`` threads, a key row per
  group) stages query tiles of ``block_q`` rows (Q, dO and the row statistics) in shared
  memory and sums dV_j = sum_i Pd_ij dO_i and dK_j = c sum_i dS_ij q_i over them, its
  slices of k_j, v_j and both accumulators in registers.

The row statistics: recomputed, not D = rowsum(dO * O). FlashAttention-2 takes
D_i = dO_i . O_i (a preprocessing kernel) and P = exp(s - lse). Both are exact in exact
arithmetic, but in float32 they carry the forward's roundings (O's, and lse's, stored in
the input dtype), which the recomputed P does not share: ``benchmarks/gpu_row_statistics.py``
measures dQ and dK 1.41 and 1.38 times less accurate than the textbook float32 op (RMS,
median over random problems) with D from O, 0.99 times with the recomputed statistics
below; the tests hold the kernels to 1.25 (``kernels/attn_v4_tiled.py``, "The row
statistics", derives the effect). So, as the CPU kernel does, ``dq_kernel`` first sweeps the
key tiles for

    sigma_i = sum_j exp(s_ij - lse_i),       pi_i = sum_j exp(s_ij - lse_i) dP_ij

(dP = (dO V^T) keep / (1 - p)) and uses P = exp(s - lse) / sigma and D_i = pi_i / sigma_i,
the textbook's softmax normalised on the probabilities it is used with; it stores
1 / sigma_i and D_i, (B, A, S) each, for ``dkdv_kernel``. The price: the first sweep's
two dot products per (query, key) pair. Counting D-long products per pair, the backward
does 9: s and dP twice in ``dq_kernel`` (once per sweep) plus the dQ update, s and dP
again in ``dkdv_kernel`` plus the dK and dV updates; a split backward with D from O would
do 7, and FlashAttention-2's single kernel, which adds dQ with atomics, 5.

Numerics: float32 inputs compute in float32 (scores, exp, sums, accumulators), float64 in
float64, like the textbook op. ``math.exp`` of a float32 is CUDA's ``expf``; the results
are cast back to the input type (the simulator, which runs this code in Python, would
otherwise carry float64). Dropout's keep test compares float32 numbers, as
``minibert.rng`` does.

The simulator has no warp shuffles and no ``syncwarp`` (numba-cuda 0.30): where
``numba.cuda`` lacks them, the same butterfly exchanges its values through a shared array
between two block barriers (every thread of a block reaches every exchange: the loops
around them have block-uniform bounds), and ``syncwarp`` is a block barrier. The
arithmetic, its order and the indexing are the ones the GPU runs.

The host side (allocation, streams, scalar types, launches, launch sizes and limits) is in
``attention_cuda_launch.py``; its names are importable from here too.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
from numba import cuda

from .attention_cuda_launch import (  # noqa: F401 (the limits and the launches, importable here)
    KERNELS,
    MAX_HEAD_DIM,
    MAX_THREADS,
    MIN_BLOCKS,
    MIN_TILE,
    STATIC_SHARED_LIMIT,
    VARLEN_KERNELS,
    Device,
    LaunchConfig,
    attention_backward,
    attention_forward,
    default_lanes,
    kernel_scalars,
    launch_config,
    supports,
    varlen_backward,
    varlen_forward,
)
from .philox_cpu import dropout_keep, keep_from_word, philox_block, select_word

# --------------------------------------------------------------------------- the kernels


class Kernels(NamedTuple):
    """The compiled kernels of one (dtype, D, block_q, block_k, lanes): padded, then varlen."""
    forward: object
    dq: object
    dkdv: object
    varlen_forward: object
    varlen_dq: object
    varlen_dkdv: object


@functools.cache
def build_kernels(dtype_str, D, BQ, BK, L=None):
    """The three kernels for dtype ``dtype_str``, head size D, tiles of BQ queries and BK
    keys and L lanes a row (None: ``default_lanes``): compile-time constants of Numba CUDA
    (local and shared array shapes must be), hence a closure per combination, compiled by
    Numba on first launch or by ``compile_ptx``."""

    dtype = np.dtype(dtype_str)
    if L is None:
        L = default_lanes(D, dtype.itemsize)
    if D % L or L & (L - 1) or L > 32:
        raise ValueError(f"lanes={L} must be a power of two <= 32 dividing D={D}")
    ftype = dtype.type                   # np.float32 or np.float64: array dtype and casts
    ZERO, ONE = ftype(0), ftype(1)
    NEG_INF, POS_INF = ftype(-np.inf), ftype(np.inf)
    DL = D // L                          # head elements per lane
    STEPS = L.bit_length() - 1           # butterfly steps: log2 L
    GROUP = (1 << L) - 1                 # the lane mask of a group at lane 0 of a warp
    THREE, TWO = np.uint64(3), np.uint64(2)
    NT_Q, NT_K = BQ * L, BK * L          # threads: forward / dq, and dkdv
    BK1, BQ1 = BK + 1, BQ + 1            # score rows, padded by one against bank conflicts
    # the simulator has no warp shuffles: its exchange array, one number per thread
    SIMULATED = not hasattr(cuda, "shfl_xor_sync")
    XCH = (3, max(NT_Q, NT_K)) if SIMULATED else (1, 1)

    def kernel(threads):
        """``cuda.jit`` with launch bounds (threads, ``MIN_BLOCKS``): ptxas keeps the registers
        within what ``MIN_BLOCKS`` blocks of ``threads`` threads may use (the simulator takes
        no launch bounds)."""
        return cuda.jit if SIMULATED else cuda.jit(launch_bounds=(threads, MIN_BLOCKS))

    @cuda.jit(device=True, inline=True)
    def exp(x):
        return ftype(math.exp(x))

    if SIMULATED:
        def lane_sum(x, mask, t, xch):
            """The group's sum of x, in every lane: the butterfly's additions in its order,
            on the group's values exchanged through shared memory. One barrier an exchange:
            ``xch`` has two rows used in turn (row 2 keeps each thread's turn), so a row is
            rewritten only after the next barrier, once every thread has read it."""
            turn = int(xch[2, t])
            xch[turn, t] = x
            cuda.syncthreads()
            first = t - (t & (L - 1))
            vals = [xch[turn, first + j] for j in range(L)]
            for step in range(STEPS):
                vals = [vals[j] + vals[j ^ (1 << step)] for j in range(L)]
            xch[2, t] = 1 - turn
            return vals[t & (L - 1)]

        def xch_init(xch, t):
            xch[2, t] = ZERO

        def group_sync(mask):
            cuda.syncthreads()
    else:
        @cuda.jit(device=True, inline=True)
        def lane_sum(x, mask, t, xch):
            """The group's sum of x, in every lane: butterfly shuffles within the group."""
            for step in range(STEPS):
                x = x + cuda.shfl_xor_sync(mask, x, 1 << step)
            return x

        @cuda.jit(device=True, inline=True)
        def xch_init(xch, t):
            pass

        @cuda.jit(device=True, inline=True)
        def group_sync(mask):
            cuda.syncwarp(mask)

    @cuda.jit(device=True, inline=True)
    def group_mask(t):
        """The 32-bit mask of the warp lanes of thread t's group (L consecutive lanes)."""
        return np.uint32(GROUP << ((t & 31) - (t & (L - 1))))

    @cuda.jit(device=True, inline=True)
    def thread_place(A):
        """Where this thread works, the same in the three kernels: ``bh`` = blockIdx.x, the
        sequence ``b`` and head ``a`` of the block; thread ``t`` of the block is lane ``lane``
        of the group of L lanes of block row ``row`` (the lane owns head elements lane + L u),
        ``mask`` the group's warp lanes."""
        bh = cuda.blockIdx.x
        b = bh // A
        t = cuda.threadIdx.x
        return bh, b, bh - b * A, t, t // L, t & (L - 1), group_mask(t)

    @cuda.jit(device=True, inline=True)
    def load_rows(dst, src, b, a, r0, n, t, nthreads):
        """dst[r, :] = src[b, a, r0 + r, :] for r < n (zeros beyond), by all threads of the
        block: thread t copies elements t, t + nthreads, ... (consecutive threads read
        consecutive addresses, so the loads coalesce). dst is laid out as (rows, D / L, L):
        element d of a row at [d // L, d % L], the lane that reads it last."""
        for e in range(t, dst.shape[0] * D, nthreads):
            r = e // D
            d = e - r * D
            dst[r, d // L, d & (L - 1)] = src[b, a, r0 + r, d] if r < n else ZERO

    # The key mask (padded form only), None for "no mask": Numba types these per argument
    # and prunes the ``is None`` branch, so neither form pays for the other's.

    @cuda.jit(device=True, inline=True)
    def key_bias_at(key_bias, b, j):
        """M_j of key j of sequence b: 0 at a real key, -inf at padding (0 without a mask)."""
        if key_bias is None:
            return ZERO
        return key_bias[b, j]

    @cuda.jit(device=True, inline=True)
    def key_tiles(tile_has_key, n):
        """The number of key tiles of a sequence of n keys."""
        if tile_has_key is None:
            return (n + BK - 1) // BK
        return tile_has_key.shape[1]

    @cuda.jit(device=True, inline=True)
    def tile_is_padding(tile_has_key, b, kt):
        """True where key tile kt of sequence b holds padding only (never without a mask)."""
        if tile_has_key is None:
            return False
        return tile_has_key[b, kt] == 0

    @cuda.jit(device=True, inline=True)
    def load_key_tile(ks, vs, bias, k, v, key_bias, ab, b, a, r0, j0, nc, t):
        """The key tile j0 .. j0 + nc - 1 of (b, a) into shared memory, by the NT_Q threads of
        a query block: its K and V rows (``load_rows``, from row r0 + j0) and its key mask M
        in ``bias``."""
        load_rows(ks, k, ab, a, r0 + j0, nc, t, NT_Q)
        load_rows(vs, v, ab, a, r0 + j0, nc, t, NT_Q)
        for c in range(t, nc, NT_Q):
            bias[c] = key_bias_at(key_bias, b, j0 + c)

    @cuda.jit(device=True, inline=True)
    def forward_rows(q, k, v, key_bias, tile_has_key, scale, p32, keep_scale, seed, offset,
                     start, out, lse, batched, r0, n, S):
        """The forward of query tile blockIdx.y of the block's (b, a): rows [ab, a, r0 + i]
        for i < n (ab = b where ``batched``, else 0), Philox elements of the padded length S."""
        bh, b, a, t, row, lane, mask = thread_place(q.shape[1])
        ab = b if batched else 0                    # the arrays' first index
        i = cuda.blockIdx.y * BQ + row              # the group's query row
        live = i < n
        ks = cuda.shared.array((BK, DL, L), ftype)      # K tile
        vs = cuda.shared.array((BK, DL, L), ftype)      # V tile
        bias = cuda.shared.array(BK, ftype)         # M of the tile's keys
        ps = cuda.shared.array((BQ, BK1), ftype)     # each row's scores, then P~ keep
        xch = cuda.shared.array(XCH, ftype)         # the simulator's exchange rows
        xch_init(xch, t)
        qr = cuda.local.array(DL, ftype)            # q_i's slice, in registers
        acc = cuda.local.array(DL, ftype)           # unnormalised O_i's slice
        for u in range(DL):
            qr[u] = q[ab, a, r0 + i, lane + L * u] if live else ZERO
            acc[u] = ZERO
        m = NEG_INF
        l_part = ZERO                               # this lane's share of l
        dropping = p32 > 0
        w0 = w1 = w2 = w3 = np.uint64(0)
        for kt in range(key_tiles(tile_has_key, n)):
            if tile_is_padding(tile_has_key, b, kt):    # P = 0 there (block-uniform)
                continue
            j0 = kt * BK
            nc = min(BK, n - j0)
            load_key_tile(ks, vs, bias, k, v, key_bias, ab, b, a, r0, j0, nc, t)
            cuda.syncthreads()
            base = start + np.uint64((bh * S + i) * S + j0)     # Philox element of (i, j0)
            off = np.int64(base & THREE)            # key c is word (c + off) % 4 of its block
            m_tile = NEG_INF
            for c in range(nc):                     # s = c q_i K_t^T + M_t
                s = ZERO
                for u in range(DL):
                    s += qr[u] * ks[c, u, lane]
                s = lane_sum(s, mask, t, xch) * scale + bias[c]
                if ((c + off) >> 2) & (L - 1) == lane:      # the lane that owns key c
                    ps[row, c] = s
                m_tile = max(m_tile, s)
            # the tile has a real key, so m_new is finite; before the first tile
            # m = -inf and alpha = exp(-inf) = 0
            m_new = max(m, m_tile)
            alpha = exp(m - m_new)
            row_sum = ZERO
            for g in range(lane, (nc + off + 3) >> 2, L):  # this lane's Philox blocks
                if dropping:
                    w0, w1, w2, w3 = philox_block(seed, offset, (base >> TWO) + np.uint64(g))
                for w in range(4):
                    c = 4 * g + w - off
                    if 0 <= c < nc:
                        pc = exp(ps[row, c] - m_new)        # P~ = exp(s - m_new) <= 1
                        row_sum += pc                       # the sum is taken before dropout
                        if dropping:
                            keep = keep_from_word(select_word(w, w0, w1, w2, w3), p32)
                            pc = pc * keep_scale if keep else ZERO
                        ps[row, c] = pc
            l_part = l_part * alpha + row_sum
            group_sync(mask)                        # the group's P~ row is written
            for u in range(DL):
                acc[u] *= alpha
            for c in range(nc):                     # acc += P~ keep / (1 - p) v_j
                pc = ps[row, c]
                for u in range(DL):
                    acc[u] += pc * vs[c, u, lane]
            m = m_new
            cuda.syncthreads()                      # before the next tile overwrites ks, vs, ps
        l = lane_sum(l_part, mask, t, xch)
        if live:
            if l > ZERO:
                for u in range(DL):
                    out[ab, a, r0 + i, lane + L * u] = acc[u] / l     # one rounding, as P = e / sum
                if lane == 0:
                    lse[ab, a, r0 + i] = m + ftype(math.log(l))
            else:                                   # no real key: zeros, lse = +inf
                for u in range(DL):
                    out[ab, a, r0 + i, lane + L * u] = ZERO
                if lane == 0:
                    lse[ab, a, r0 + i] = POS_INF

    @cuda.jit(device=True, inline=True)
    def dq_rows(q, k, v, dout, lse, key_bias, tile_has_key, scale, p32, keep_scale, seed,
                offset, start, inv_sum, delta, dq, batched, r0, n, S):
        """dQ and the row statistics inv_sum = 1 / sigma, delta = pi / sigma of query tile
        blockIdx.y of the block's (b, a), a group per query row (rows as ``forward_rows``)."""
        bh, b, a, t, row, lane, mask = thread_place(q.shape[1])
        ab = b if batched else 0                    # the arrays' first index
        i = cuda.blockIdx.y * BQ + row
        live = i < n
        ks = cuda.shared.array((BK, DL, L), ftype)
        vs = cuda.shared.array((BK, DL, L), ftype)
        bias = cuda.shared.array(BK, ftype)
        ss = cuda.shared.array((BQ, BK1), ftype)     # q_i . k_j, then dS_ij
        dps = cuda.shared.array((BQ, BK1), ftype)    # dO_i . v_j
        xch = cuda.shared.array(XCH, ftype)         # the simulator's exchange rows
        xch_init(xch, t)
        qr = cuda.local.array(DL, ftype)
        dor = cuda.local.array(DL, ftype)           # dO_i's slice
        dqa = cuda.local.array(DL, ftype)           # sum_j dS_ij k_j, this slice
        for u in range(DL):
            qr[u] = q[ab, a, r0 + i, lane + L * u] if live else ZERO
            dor[u] = dout[ab, a, r0 + i, lane + L * u] if live else ZERO
            dqa[u] = ZERO
        lse_i = lse[ab, a, r0 + i] if live else POS_INF
        dropping = p32 > 0
        w0 = w1 = w2 = w3 = np.uint64(0)
        sigma = ZERO                                # this lane's shares, then the row's
        pi = ZERO
        inv_sigma = ZERO
        delta_i = ZERO
        # sweep 0: the row statistics sigma_i, pi_i; sweep 1: dQ_i (needs D_i of the whole row)
        for sweep in range(2):
            for kt in range(key_tiles(tile_has_key, n)):
                if tile_is_padding(tile_has_key, b, kt):
                    continue
                j0 = kt * BK
                nc = min(BK, n - j0)
                load_key_tile(ks, vs, bias, k, v, key_bias, ab, b, a, r0, j0, nc, t)
                cuda.syncthreads()
                base = start + np.uint64((bh * S + i) * S + j0)
                off = np.int64(base & THREE)
                for c in range(nc):
                    s = ZERO
                    dp = ZERO
                    for u in range(DL):             # s = q_i . k_j, dPd = dO_i . v_j
                        s += qr[u] * ks[c, u, lane]
                        dp += dor[u] * vs[c, u, lane]
                    s = lane_sum(s, mask, t, xch)
                    dp = lane_sum(dp, mask, t, xch)
                    if ((c + off) >> 2) & (L - 1) == lane:
                        ss[row, c] = s
                        dps[row, c] = dp
                for g in range(lane, (nc + off + 3) >> 2, L):
                    if dropping:
                        w0, w1, w2, w3 = philox_block(seed, offset, (base >> TWO) + np.uint64(g))
                    for w in range(4):
                        c = 4 * g + w - off
                        if 0 <= c < nc:
                            pc = exp(ss[row, c] * scale + bias[c] - lse_i)   # P = exp(s - lse)
                            dp = dps[row, c]
                            if dropping:            # dP = dPd keep / (1 - p)
                                keep = keep_from_word(select_word(w, w0, w1, w2, w3), p32)
                                dp = dp * keep_scale if keep else ZERO
                            if sweep == 0:
                                sigma += pc
                                pi += pc * dp
                            else:                   # dS = P (dP - D_i), P normalised by sigma
                                ss[row, c] = pc * inv_sigma * (dp - delta_i)
                if sweep == 1:
                    group_sync(mask)                # the group's dS row is written
                    for c in range(nc):             # dQ_i += dS_ij k_j
                        ds = ss[row, c]
                        for u in range(DL):
                            dqa[u] += ds * ks[c, u, lane]
                cuda.syncthreads()
            if sweep == 0:
                sigma = lane_sum(sigma, mask, t, xch)
                pi = lane_sum(pi, mask, t, xch)
                inv_sigma = ONE / sigma if sigma > ZERO else ZERO
                delta_i = pi * inv_sigma            # D_i = rowsum(dP * P)
        if live:
            for u in range(DL):
                dq[ab, a, r0 + i, lane + L * u] = dqa[u] * scale  # s = c q k^T: dQ = c dS K
            if lane == 0:
                inv_sum[ab, a, r0 + i] = inv_sigma
                delta[ab, a, r0 + i] = delta_i

    @cuda.jit(device=True, inline=True)
    def dkdv_rows(q, k, v, dout, lse, inv_sum, delta, key_bias, tile_has_key, scale, p32,
                  keep_scale, seed, offset, start, dk, dv, batched, r0, n, S):
        """dK and dV of key tile blockIdx.y of the block's (b, a), a group per key row (rows as
        ``forward_rows``); query tiles (Q, dO, lse, 1 / sigma, D_i) staged in shared memory."""
        bh, b, a, t, row, lane, mask = thread_place(q.shape[1])
        ab = b if batched else 0                    # the arrays' first index
        kt = cuda.blockIdx.y
        j = kt * BK + row                           # the group's key row
        live = j < n
        if tile_is_padding(tile_has_key, b, kt):    # padding only: dK = dV = 0 (block-uniform)
            if live:
                for u in range(DL):
                    dk[ab, a, r0 + j, lane + L * u] = ZERO
                    dv[ab, a, r0 + j, lane + L * u] = ZERO
            return
        qs = cuda.shared.array((BQ, DL, L), ftype)
        dos = cuda.shared.array((BQ, DL, L), ftype)
        ls = cuda.shared.array(BQ, ftype)           # lse_i
        isum = cuda.shared.array(BQ, ftype)         # 1 / sigma_i
        dl = cuda.shared.array(BQ, ftype)           # D_i
        ss = cuda.shared.array((BK, BQ1), ftype)     # q_i . k_j, then Pd_ij
        dps = cuda.shared.array((BK, BQ1), ftype)    # dO_i . v_j, then dS_ij
        xch = cuda.shared.array(XCH, ftype)         # the simulator's exchange rows
        xch_init(xch, t)
        kr = cuda.local.array(DL, ftype)
        vr = cuda.local.array(DL, ftype)
        dka = cuda.local.array(DL, ftype)
        dva = cuda.local.array(DL, ftype)
        real = live and key_bias_at(key_bias, b, j) == ZERO      # a padded key gets no gradient
        for u in range(DL):
            kr[u] = k[ab, a, r0 + j, lane + L * u] if live else ZERO
            vr[u] = v[ab, a, r0 + j, lane + L * u] if live else ZERO
            dka[u] = ZERO
            dva[u] = ZERO
        dropping = p32 > 0
        for i0 in range(0, n, BQ):
            nr = min(BQ, n - i0)
            load_rows(qs, q, ab, a, r0 + i0, nr, t, NT_K)
            load_rows(dos, dout, ab, a, r0 + i0, nr, t, NT_K)
            for r in range(t, nr, NT_K):
                ls[r] = lse[ab, a, r0 + i0 + r]
                isum[r] = inv_sum[ab, a, r0 + i0 + r]
                dl[r] = delta[ab, a, r0 + i0 + r]
            cuda.syncthreads()
            for r in range(nr):
                s = ZERO
                dp = ZERO
                for u in range(DL):                 # s = q_i . k_j, dPd = dO_i . v_j
                    s += qs[r, u, lane] * kr[u]
                    dp += dos[r, u, lane] * vr[u]
                s = lane_sum(s, mask, t, xch)
                dp = lane_sum(dp, mask, t, xch)
                if (r & (L - 1)) == lane:           # the lane that owns query r
                    ss[row, r] = s
                    dps[row, r] = dp
            if real:
                for r in range(lane, nr, L):
                    # P = exp(s - lse) / sigma (M_j = 0 at a real key)
                    pc = exp(ss[row, r] * scale - ls[r]) * isum[r]
                    kf = ONE
                    if dropping:                    # a Philox call per element: i varies
                        e = start + np.uint64((bh * S + i0 + r) * S + j)
                        kf = keep_scale if dropout_keep(seed, offset, e, p32) else ZERO
                    ss[row, r] = pc * kf                        # Pd = P keep / (1 - p)
                    dps[row, r] = pc * (dps[row, r] * kf - dl[r])   # dS = P (dP - D_i)
            group_sync(mask)                        # the group's Pd and dS rows are written
            if real:
                for r in range(nr):
                    pd = ss[row, r]
                    ds = dps[row, r]
                    for u in range(DL):
                        dva[u] += pd * dos[r, u, lane]     # O = Pd V: dV_j += Pd_ij dO_i
                        dka[u] += ds * qs[r, u, lane]      # dK_j += c dS_ij q_i
            cuda.syncthreads()
        if live:
            for u in range(DL):
                dk[ab, a, r0 + j, lane + L * u] = dka[u] * scale
                dv[ab, a, r0 + j, lane + L * u] = dva[u]

    # The padded kernels: (B, A, S, D) arrays and the mask's tables; grids as described above.

    @kernel(NT_Q)
    def forward_kernel(q, k, v, key_bias, tile_has_key, scale, p32, keep_scale, seed, offset,
                       start, out, lse):
        """out (B, A, S, D), lse (B, A, S)."""
        forward_rows(q, k, v, key_bias, tile_has_key, scale, p32, keep_scale, seed, offset,
                     start, out, lse, True, 0, q.shape[2], q.shape[2])

    @kernel(NT_Q)
    def dq_kernel(q, k, v, dout, lse, key_bias, tile_has_key, scale, p32, keep_scale, seed,
                  offset, start, inv_sum, delta, dq):
        """dq (B, A, S, D), the row statistics inv_sum, delta (B, A, S)."""
        dq_rows(q, k, v, dout, lse, key_bias, tile_has_key, scale, p32, keep_scale, seed,
                offset, start, inv_sum, delta, dq, True, 0, q.shape[2], q.shape[2])

    @kernel(NT_K)
    def dkdv_kernel(q, k, v, dout, lse, inv_sum, delta, key_bias, tile_has_key, scale, p32,
                    keep_scale, seed, offset, start, dk, dv):
        """dk, dv (B, A, S, D)."""
        dkdv_rows(q, k, v, dout, lse, inv_sum, delta, key_bias, tile_has_key, scale, p32,
                  keep_scale, seed, offset, start, dk, dv, True, 0, q.shape[2], q.shape[2])

    # The varlen kernels: packed (A, T, D) arrays as (1, A, T, D), (A, T) as (1, A, T); no mask.

    @cuda.jit(device=True, inline=True)
    def sequence(cu_seqlens, A, rows):
        """(first row, length) of the block's sequence; True if its tile starts past the end."""
        b = cuda.blockIdx.x // A
        r0 = cu_seqlens[b]
        n = cu_seqlens[b + 1] - r0
        return r0, n, cuda.blockIdx.y * rows >= n

    @kernel(NT_Q)
    def varlen_forward_kernel(q, k, v, cu_seqlens, scale, p32, keep_scale, seed, offset, start,
                              seq_len, out, lse):
        """out (1, A, T, D), lse (1, A, T)."""
        r0, n, past = sequence(cu_seqlens, q.shape[1], BQ)
        if not past:
            forward_rows(q, k, v, None, None, scale, p32, keep_scale, seed, offset, start, out,
                         lse, False, r0, n, seq_len)

    @kernel(NT_Q)
    def varlen_dq_kernel(q, k, v, dout, lse, cu_seqlens, scale, p32, keep_scale, seed, offset,
                         start, seq_len, inv_sum, delta, dq):
        """dq (1, A, T, D), the row statistics inv_sum, delta (1, A, T)."""
        r0, n, past = sequence(cu_seqlens, q.shape[1], BQ)
        if not past:
            dq_rows(q, k, v, dout, lse, None, None, scale, p32, keep_scale, seed, offset, start,
                    inv_sum, delta, dq, False, r0, n, seq_len)

    @kernel(NT_K)
    def varlen_dkdv_kernel(q, k, v, dout, lse, inv_sum, delta, cu_seqlens, scale, p32,
                           keep_scale, seed, offset, start, seq_len, dk, dv):
        """dk, dv (1, A, T, D)."""
        r0, n, past = sequence(cu_seqlens, q.shape[1], BK)
        if not past:
            dkdv_rows(q, k, v, dout, lse, inv_sum, delta, None, None, scale, p32, keep_scale,
                      seed, offset, start, dk, dv, False, r0, n, seq_len)

    return Kernels(forward_kernel, dq_kernel, dkdv_kernel, varlen_forward_kernel,
                   varlen_dq_kernel, varlen_dkdv_kernel)
