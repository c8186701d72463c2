"""Fused softmax attention on the GPU, in Numba CUDA: FlashAttention-2's structure, the
production kernel of the GPU ladder (rung 4; the rungs are ``ladder/attn_cuda_v*.py``).

The function and the contract are those of the CPU kernel (``attention_cpu.py``; the
algorithm is derived in ``ladder/attn_v4_tiled.py``): per (b, a), with c = scale, the key
padding mask M (0 at real keys, -inf at padding) and the dropout rate p,

    s_ij = c q_i . k_j + M_j,   P_ij = exp(s_ij - lse_i),   lse_i = log sum_j exp(s_ij)
    O_i  = sum_j P_ij keep_ij / (1 - p) v_j

with keep_ij the Philox bit of element ``start + ((b*A + a)*S + i)*S + j``, the bits of
``minibert.rng.keep_mask((B, A, S, S), p, seed, offset, start=start)`` (``start`` is 0, or
the element of a data-parallel rank's first probability in the whole batch). The Philox code is
``philox_cpu.py``'s own: Numba compiles the same functions for the GPU.

Work split (grid, block and shared memory are named constants below)
--------------------------------------------------------------------
Forward, ``forward_kernel``: a thread block per (sequence x head, tile of ``block_q``
queries), one thread per query row. The block walks the key tiles of ``block_k`` keys: all
its threads stage the tile's K and V rows in shared memory (``2 block_k D`` numbers), then
each thread runs the online softmax of its row in registers: its query row q_i (D numbers)
and its unnormalised output accumulator (D numbers) live in thread-local arrays (the
register tile), with the running max m and sum l:

    s      = c q_i K_t^T + M_t                       (block_k,) the row's scores of tile t
    m_new  = max(m, max(s)),   alpha = exp(m - m_new)
    l      = alpha l + sum(exp(s - m_new))           (before dropout)
    acc    = alpha acc + (exp(s - m_new) keep / (1 - p)) V_t

and at the end O_i = acc / l, lse_i = m + log(l). The (S, S) matrix is never formed: a
thread holds at most one tile's ``block_k`` scores. Key tiles of padding only are skipped
(the table ``tile_has_key``, from the mask); a sequence with no real key skips them all and
gets O = 0 and lse = +inf (FlashAttention's convention, the CPU kernel's: exp(s - lse) = 0
for every s, so every probability and gradient of the row is 0, never NaN).

Backward without atomics: each output element is written by exactly one thread, which sums
its terms in a fixed order, so two runs give the same bits.

* ``dq_kernel`` (query tiles, one thread per query row) computes the two row statistics
  and then dQ_i = c sum_j dS_ij k_j over the key tiles;
* ``dkdv_kernel`` (key tiles, one thread per key row) stages query tiles (Q, dO and the
  row statistics) in shared memory and sums dV_j = sum_i Pd_ij dO_i and
  dK_j = c sum_i dS_ij q_i over them, k_j, v_j and both accumulators in registers.

The row statistics: recomputed, not D = rowsum(dO * O). FlashAttention-2 takes
D_i = dO_i . O_i (a preprocessing kernel) and P = exp(s - lse). Both are exact in exact
arithmetic, but in float32 they carry the forward's roundings (O's, and lse's, stored in
the input dtype), which the recomputed P does not share: ``benchmarks/gpu_row_statistics.py``
measures dQ and dK 1.41 and 1.38 times less accurate than the textbook float32 op (RMS,
median over random problems) with D from O, 0.99 times with the recomputed statistics
below; the tests hold the kernels to 1.25 (``ladder/attn_v4_tiled.py``, "The row
statistics", derives the effect). So, as the CPU kernel does, ``dq_kernel`` first sweeps the key tiles for

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

Arrays: CuPy arrays (anything with ``__cuda_array_interface__``) run on CuPy's current
stream and come back as CuPy arrays; Numba device arrays (``numba.cuda.to_device``: how
the simulator tests call these kernels) come back as Numba device arrays. The arguments
arrive validated by ``minibert.kernels.fused_attention_forward`` / ``_backward``
(``_blocks.cuda_forward_args`` / ``cuda_backward_args``); every scalar is cast here to the
type the kernels are compiled for.

This module imports ``numba.cuda``: ``minibert.kernels`` imports it only when a GPU array
arrives, so ``import minibert`` never touches CUDA.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
from numba import cuda

from .philox_cpu import dropout_keep, keep_from_word, philox_block

#: Shared memory a block may use for its tiles, in bytes: below the 48 KiB a kernel gets
#: without opting in, leaving room for the small per-row arrays.
SHARED_BUDGET = 40 * 1024

#: The largest tile, in rows: 64 query rows (threads) x 64 keys for float32 at D = 64.
MAX_TILE = 64


def default_tile(D, itemsize):
    """The tile edge (queries per block and keys per shared tile) for head size D: the
    largest power of two <= ``MAX_TILE`` whose two staged (tile, D) blocks fit in
    ``SHARED_BUDGET`` (64 for float32 at D = 64, 32 for float64)."""
    tile = MAX_TILE
    while tile > 1 and 2 * tile * D * itemsize > SHARED_BUDGET:
        tile //= 2
    return tile


class Kernels(NamedTuple):
    """The compiled kernels of one (dtype, D, block_q, block_k)."""
    forward: object
    dq: object
    dkdv: object


@functools.cache
def build_kernels(dtype_str, D, BQ, BK):
    """The three kernels for dtype ``dtype_str``, head size D and tiles of BQ queries and BK
    keys: compile-time constants of Numba CUDA (local and shared array shapes must be), hence
    a closure per combination, compiled by Numba on first launch."""
    dtype = np.dtype(dtype_str)
    ftype = dtype.type                   # np.float32 or np.float64: array dtype and casts
    ZERO, ONE = ftype(0), ftype(1)
    NEG_INF, POS_INF = ftype(-np.inf), ftype(np.inf)

    @cuda.jit(device=True, inline=True)
    def exp(x):
        return ftype(math.exp(x))

    @cuda.jit(device=True, inline=True)
    def load_rows(dst, src, b, a, r0, n, t, nthreads):
        """dst[r, :] = src[b, a, r0 + r, :] for r < n (zeros beyond), by all threads of the
        block: thread t copies elements t, t + nthreads, ... (consecutive threads read
        consecutive addresses, so the loads coalesce)."""
        for e in range(t, dst.shape[0] * D, nthreads):
            r = e // D
            d = e - r * D
            dst[r, d] = src[b, a, r0 + r, d] if r < n else ZERO

    @cuda.jit
    def forward_kernel(q, k, v, key_bias, tile_has_key, scale, p32, keep_scale, seed, offset,
                       start, out, lse):
        """out (B, A, S, D), lse (B, A, S); grid (B A, ceil(S / BQ)), BQ threads."""
        _, A, S, _ = q.shape
        bh = cuda.blockIdx.x                        # sequence x head
        b = bh // A
        a = bh - b * A
        t = cuda.threadIdx.x
        i = cuda.blockIdx.y * BQ + t                # this thread's query row
        live = i < S
        ks = cuda.shared.array((BK, D), ftype)      # K tile
        vs = cuda.shared.array((BK, D), ftype)      # V tile
        bias = cuda.shared.array(BK, ftype)         # M of the tile's keys
        qr = cuda.local.array(D, ftype)             # q_i, in registers
        acc = cuda.local.array(D, ftype)            # unnormalised O_i
        sr = cuda.local.array(BK, ftype)            # the row's scores of one tile
        for d in range(D):
            qr[d] = q[b, a, i, d] if live else ZERO
            acc[d] = ZERO
        m = NEG_INF
        l = ZERO
        dropping = p32 > 0
        for kt in range(tile_has_key.shape[1]):
            if tile_has_key[b, kt] == 0:            # padding only: P = 0 there (block-uniform)
                continue
            j0 = kt * BK
            nc = min(BK, S - j0)
            load_rows(ks, k, b, a, j0, nc, t, BQ)
            load_rows(vs, v, b, a, j0, nc, t, BQ)
            for c in range(t, nc, BQ):
                bias[c] = key_bias[b, j0 + c]
            cuda.syncthreads()
            if live:
                m_tile = NEG_INF
                for c in range(nc):                 # s = c q_i K_t^T + M_t
                    s = ZERO
                    for d in range(D):
                        s += qr[d] * ks[c, d]
                    s = s * scale + bias[c]
                    sr[c] = s
                    m_tile = max(m_tile, s)
                # the tile has a real key, so m_new is finite; before the first tile
                # m = -inf and alpha = exp(-inf) = 0
                m_new = max(m, m_tile)
                alpha = exp(m - m_new)
                for d in range(D):
                    acc[d] *= alpha
                row_sum = ZERO
                base = start + (bh * S + i) * S + j0    # Philox element of score (i, j0)
                w0 = w1 = w2 = w3 = np.uint64(0)
                for c in range(nc):
                    pc = exp(sr[c] - m_new)         # P~ = exp(s - m_new) <= 1
                    row_sum += pc                   # the sum is taken before dropout
                    if dropping:
                        e = base + c
                        if c == 0 or (e & 3) == 0:  # one Philox call per four elements
                            w0, w1, w2, w3 = philox_block(seed, offset, e >> 2)
                        lane = e & 3
                        w = w0 if lane == 0 else (w1 if lane == 1 else (w2 if lane == 2 else w3))
                        pc = pc * keep_scale if keep_from_word(w, p32) else ZERO
                    for d in range(D):              # acc += P~ keep / (1 - p) v_j
                        acc[d] += pc * vs[c, d]
                l = l * alpha + row_sum
                m = m_new
            cuda.syncthreads()                      # before the next tile overwrites ks, vs
        if live:
            if l > ZERO:
                for d in range(D):
                    out[b, a, i, d] = acc[d] / l    # one rounding, as P = e / sum
                lse[b, a, i] = m + ftype(math.log(l))
            else:                                   # no real key: zeros, lse = +inf
                for d in range(D):
                    out[b, a, i, d] = ZERO
                lse[b, a, i] = POS_INF

    @cuda.jit
    def dq_kernel(q, k, v, dout, lse, key_bias, tile_has_key, scale, p32, keep_scale, seed,
                  offset, start, inv_sum, delta, dq):
        """dq (B, A, S, D) and the row statistics inv_sum = 1 / sigma, delta = pi / sigma
        (B, A, S); grid (B A, ceil(S / BQ)), BQ threads, a thread per query row."""
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
        qr = cuda.local.array(D, ftype)
        dor = cuda.local.array(D, ftype)            # dO_i
        dqa = cuda.local.array(D, ftype)            # sum_j dS_ij k_j
        for d in range(D):
            qr[d] = q[b, a, i, d] if live else ZERO
            dor[d] = dout[b, a, i, d] if live else ZERO
            dqa[d] = ZERO
        lse_i = lse[b, a, i] if live else POS_INF
        dropping = p32 > 0
        sigma = ZERO
        pi = ZERO
        inv_sigma = ZERO
        delta_i = ZERO
        # sweep 0: the row statistics sigma_i, pi_i; sweep 1: dQ_i (needs D_i of the whole row)
        for sweep in range(2):
            for kt in range(tile_has_key.shape[1]):
                if tile_has_key[b, kt] == 0:
                    continue
                j0 = kt * BK
                nc = min(BK, S - j0)
                load_rows(ks, k, b, a, j0, nc, t, BQ)
                load_rows(vs, v, b, a, j0, nc, t, BQ)
                for c in range(t, nc, BQ):
                    bias[c] = key_bias[b, j0 + c]
                cuda.syncthreads()
                if live:
                    base = start + (bh * S + i) * S + j0
                    w0 = w1 = w2 = w3 = np.uint64(0)
                    for c in range(nc):
                        s = ZERO
                        dp = ZERO
                        for d in range(D):          # s = q_i . k_j, dPd = dO_i . v_j
                            s += qr[d] * ks[c, d]
                            dp += dor[d] * vs[c, d]
                        pc = exp(s * scale + bias[c] - lse_i)    # P = exp(s - lse)
                        if dropping:                # dP = dPd keep / (1 - p)
                            e = base + c
                            if c == 0 or (e & 3) == 0:
                                w0, w1, w2, w3 = philox_block(seed, offset, e >> 2)
                            lane = e & 3
                            w = w0 if lane == 0 else (w1 if lane == 1 else (w2 if lane == 2 else w3))
                            dp = dp * keep_scale if keep_from_word(w, p32) else ZERO
                        if sweep == 0:
                            sigma += pc
                            pi += pc * dp
                        else:                       # dS = P (dP - D_i), P normalised by sigma
                            ds = pc * inv_sigma * (dp - delta_i)
                            for d in range(D):      # dQ_i += dS_ij k_j
                                dqa[d] += ds * ks[c, d]
                cuda.syncthreads()
            if sweep == 0:
                inv_sigma = ONE / sigma if sigma > ZERO else ZERO
                delta_i = pi * inv_sigma            # D_i = rowsum(dP * P)
        if live:
            for d in range(D):
                dq[b, a, i, d] = dqa[d] * scale     # s = c q k^T: dQ = c dS K
            inv_sum[b, a, i] = inv_sigma
            delta[b, a, i] = delta_i

    @cuda.jit
    def dkdv_kernel(q, k, v, dout, lse, inv_sum, delta, key_bias, tile_has_key, scale, p32,
                    keep_scale, seed, offset, start, dk, dv):
        """dk, dv (B, A, S, D); grid (B A, ceil(S / BK)), BK threads, a thread per key row;
        query tiles of BQ rows (Q, dO, lse, 1 / sigma, D_i) staged in shared memory."""
        _, A, S, _ = q.shape
        bh = cuda.blockIdx.x
        b = bh // A
        a = bh - b * A
        t = cuda.threadIdx.x
        kt = cuda.blockIdx.y
        j = kt * BK + t                             # this thread's key row
        live = j < S
        if tile_has_key[b, kt] == 0:                # padding only: dK = dV = 0 (block-uniform)
            if live:
                for d in range(D):
                    dk[b, a, j, d] = ZERO
                    dv[b, a, j, d] = ZERO
            return
        qs = cuda.shared.array((BQ, D), ftype)
        dos = cuda.shared.array((BQ, D), ftype)
        ls = cuda.shared.array(BQ, ftype)           # lse_i
        isum = cuda.shared.array(BQ, ftype)         # 1 / sigma_i
        dl = cuda.shared.array(BQ, ftype)           # D_i
        kr = cuda.local.array(D, ftype)
        vr = cuda.local.array(D, ftype)
        dka = cuda.local.array(D, ftype)
        dva = cuda.local.array(D, ftype)
        real = live and key_bias[b, j] == ZERO      # a padded key gets no gradient
        for d in range(D):
            kr[d] = k[b, a, j, d] if live else ZERO
            vr[d] = v[b, a, j, d] if live else ZERO
            dka[d] = ZERO
            dva[d] = ZERO
        dropping = p32 > 0
        for i0 in range(0, S, BQ):
            nr = min(BQ, S - i0)
            load_rows(qs, q, b, a, i0, nr, t, BK)
            load_rows(dos, dout, b, a, i0, nr, t, BK)
            for r in range(t, nr, BK):
                ls[r] = lse[b, a, i0 + r]
                isum[r] = inv_sum[b, a, i0 + r]
                dl[r] = delta[b, a, i0 + r]
            cuda.syncthreads()
            if real:
                for r in range(nr):
                    s = ZERO
                    dp = ZERO
                    for d in range(D):              # s = q_i . k_j, dPd = dO_i . v_j
                        s += qs[r, d] * kr[d]
                        dp += dos[r, d] * vr[d]
                    # P = exp(s - lse) / sigma (M_j = 0 at a real key)
                    pc = exp(s * scale - ls[r]) * isum[r]
                    kf = ONE
                    if dropping:                    # a Philox call per element: i varies
                        e = start + (bh * S + i0 + r) * S + j
                        kf = keep_scale if dropout_keep(seed, offset, e, p32) else ZERO
                    pd = pc * kf                    # Pd = P keep / (1 - p)
                    ds = pc * (dp * kf - dl[r])     # dS = P (dP - D_i)
                    for d in range(D):
                        dva[d] += pd * dos[r, d]    # O = Pd V: dV_j += Pd_ij dO_i
                        dka[d] += ds * qs[r, d]     # s = c q k^T: dK_j += c dS_ij q_i
            cuda.syncthreads()
        if live:
            for d in range(D):
                dk[b, a, j, d] = dka[d] * scale
                dv[b, a, j, d] = dva[d]

    return Kernels(forward_kernel, dq_kernel, dkdv_kernel)


# --------------------------------------------------------------------------- host side


class Device:
    """How to allocate, convert and launch for the kind of GPU array that came in: CuPy
    (any ``__cuda_array_interface__`` object: the kernels launch on CuPy's current stream,
    outputs are CuPy arrays) or Numba device arrays (the default stream; outputs are Numba
    device arrays, as under the simulator)."""

    def __init__(self, like):
        self.cupy = type(like).__module__.startswith("cupy")
        if self.cupy:
            import cupy
            self.xp = cupy
            ptr = cupy.cuda.get_current_stream().ptr
            self.stream = cuda.external_stream(ptr) if ptr else cuda.default_stream()
        else:
            self.xp = None
            self.stream = cuda.default_stream()

    def empty(self, shape, dtype):
        if self.cupy:
            return self.xp.empty(shape, dtype=dtype)
        return cuda.device_array(shape, dtype=dtype, stream=self.stream)

    def arg(self, x):
        """``x`` as the kernels take it (CuPy: a view through its array interface, with no
        synchronisation: the launch is on the same stream)."""
        if cuda.devicearray.is_cuda_ndarray(x):
            return x
        if not hasattr(cuda, "as_cuda_array"):     # the simulator: it takes host arrays
            return x
        return cuda.as_cuda_array(x, sync=False)

    def mask_tables(self, mask, B, S, block_k, dtype):
        """``(key_bias, tile_has_key)`` on the device: the additive key mask (B, S) in
        ``dtype`` (0 at real keys, -inf at padding, whose exp is exactly 0) and, per
        sequence and key tile of ``block_k`` keys, 1 if the tile holds a real key, else 0
        (B, ceil(S / block_k)) int32. ``mask`` is a validated (B, S) 0/1 array (NumPy, or
        CuPy for CuPy launches) or None."""
        xp = self.xp if self.cupy else np
        real = xp.ones((B, S), dtype=bool) if mask is None else xp.asarray(mask) != 0
        key_bias = xp.where(real, dtype.type(0), dtype.type(-np.inf)).astype(dtype)
        nk = -(-S // block_k)
        padded = xp.zeros((B, nk * block_k), dtype=bool)
        padded[:, :S] = real
        tiles = padded.reshape(B, nk, block_k).any(axis=-1).astype(np.int32)     # (B, nk)
        if self.cupy:
            return key_bias, tiles
        return (cuda.to_device(np.ascontiguousarray(key_bias), stream=self.stream),
                cuda.to_device(np.ascontiguousarray(tiles), stream=self.stream))


def tile_sizes(block_q, block_k, D, itemsize):
    """(BQ, BK): the given sizes, or ``default_tile`` for None; positive integers."""
    tile = default_tile(D, itemsize)
    sizes = []
    for name, value in (("block_q", block_q), ("block_k", block_k)):
        if value is None:
            value = tile
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}={value!r} is invalid, expected a positive integer")
        sizes.append(int(value))
    return tuple(sizes)


def kernel_scalars(dtype, scale, dropout_p, seed, offset):
    """The kernels' scalar arguments, typed: in Numba a float32 mixed with a Python float
    becomes float64, and an int64 mixed with a uint64 too. (The ladder's rungs take these;
    the production kernels take ``start`` after them, as a uint64 too.)"""
    ftype = dtype.type
    return (ftype(scale), np.float32(dropout_p), ftype(1.0 / (1.0 - dropout_p)),
            np.uint64(seed), np.uint64(offset))


def attention_forward(q, k, v, mask, scale, dropout_p=0.0, seed=0, offset=0, *, start=0,
                      block_q=None, block_k=None):
    """``(out, lse)`` for inputs validated by ``minibert.kernels.fused_attention_forward``:
    GPU arrays of one kind, ``scale`` a float, ``mask`` (B, S) of 0/1 (NumPy, or CuPy with
    CuPy inputs) or None. ``block_q`` / ``block_k`` default to ``default_tile``."""
    B, A, S, D = q.shape
    dev = Device(q)
    BQ, BK = tile_sizes(block_q, block_k, D, q.dtype.itemsize)
    out = dev.empty((B, A, S, D), q.dtype)
    lse = dev.empty((B, A, S), q.dtype)
    if B * A * S == 0:
        return out, lse
    kern = build_kernels(q.dtype.str, D, BQ, BK)
    key_bias, tiles = dev.mask_tables(mask, B, S, BK, q.dtype)
    grid = (B * A, -(-S // BQ))                                   # (sequence x head, query tile)
    kern.forward[grid, BQ, dev.stream](
        dev.arg(q), dev.arg(k), dev.arg(v), dev.arg(key_bias), dev.arg(tiles),
        *kernel_scalars(q.dtype, scale, dropout_p, seed, offset), np.uint64(start),
        dev.arg(out), dev.arg(lse))
    return out, lse


def attention_backward(dout, q, k, v, out, lse, mask, scale, dropout_p=0.0, seed=0, offset=0,
                       *, start=0, block_q=None, block_k=None):
    """``(dq, dk, dv)`` for inputs validated by ``minibert.kernels.fused_attention_backward``.
    ``out`` is not read (the row statistics are recomputed: see the module docstring); it
    stays in FlashAttention's signature."""
    B, A, S, D = q.shape
    dev = Device(q)
    BQ, BK = tile_sizes(block_q, block_k, D, q.dtype.itemsize)
    dq, dk, dv = (dev.empty((B, A, S, D), q.dtype) for _ in range(3))
    if B * A * S == 0:
        return dq, dk, dv
    kern = build_kernels(q.dtype.str, D, BQ, BK)
    key_bias, tiles = dev.mask_tables(mask, B, S, BK, q.dtype)
    inv_sum = dev.empty((B, A, S), q.dtype)                       # 1 / sigma_i
    delta = dev.empty((B, A, S), q.dtype)                         # D_i
    scalars = kernel_scalars(q.dtype, scale, dropout_p, seed, offset) + (np.uint64(start),)
    qa, ka, va, da, la = (dev.arg(x) for x in (q, k, v, dout, lse))
    kb, ta = dev.arg(key_bias), dev.arg(tiles)
    kern.dq[(B * A, -(-S // BQ)), BQ, dev.stream](
        qa, ka, va, da, la, kb, ta, *scalars, dev.arg(inv_sum), dev.arg(delta), dev.arg(dq))
    # same stream: dkdv_kernel starts after dq_kernel has written the row statistics
    kern.dkdv[(B * A, -(-S // BK)), BK, dev.stream](
        qa, ka, va, da, la, dev.arg(inv_sum), dev.arg(delta), kb, ta, *scalars,
        dev.arg(dk), dev.arg(dv))
    return dq, dk, dv
