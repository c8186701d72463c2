"""Launch sizes and launches of the CUDA attention kernels (``attention_cuda.py``): the limits
every CUDA GPU sets, the default tiles and lanes for a head size and dtype, ``supports`` /
``launch_config``, which check a configuration against those limits before any launch, and
the host side: ``attention_forward`` / ``attention_backward`` (padded (B, A, S, D) with a
mask) and ``varlen_forward`` / ``varlen_backward`` (packed (A, T, D) with ``cu_seqlens``).

No CUDA import at load: the op's dispatch asks ``supports`` without loading ``numba.cuda``,
which the launches import (with ``attention_cuda``) only once GPU arrays have arrived. The
thread layout these sizes describe (a row per group of lanes, tiles of rows staged in
shared memory) is derived in ``attention_cuda.py``'s docstring.

Sizes and limits (``LaunchConfig``): threads per block ``rows * L`` at most 1024; static
shared memory per block (named per kernel in ``LaunchConfig.shared_bytes``) at most 48 KiB,
the most a kernel gets without opting in. The simulator enforces neither, so
``launch_config`` (where every launch size is computed) checks both before any launch.
Head sizes above ``MAX_HEAD_DIM``, or whose tiles would shrink below ``MIN_TILE`` rows to
fit, are not covered: ``supports(D, dtype)`` says so, and the attention op's "auto" choice
(``minibert.ops.attention``) runs its textbook code for them.
``attention_cuda_resources.py`` reports each kernel's registers, local memory and shared
memory: ``ptxas_report`` (no GPU: NVVM and ptxas) and ``device_report`` (Numba's counts on
a GPU).

Arrays: CuPy arrays (anything with ``__cuda_array_interface__``) run on CuPy's current
stream and come back as CuPy arrays; Numba device arrays (``numba.cuda.to_device``: how
the simulator tests call these kernels) come back as Numba device arrays. The arguments
arrive validated by ``minibert.kernels.fused_attention_forward`` / ``_backward``
(``_args.cuda_forward_args`` / ``cuda_backward_args``) and
``fused_attention_varlen_forward`` / ``_backward`` (``_args.varlen_forward_args`` /
``varlen_backward_args``); every scalar is cast here to the type the kernels are compiled
for (``kernel_scalars``). The varlen grids are sized without a device sync: from the
longest sequence where ``cu_seqlens`` is a NumPy array, else from ``seq_len``.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..validation import AttentionMask
from ._cuda_host import Launch

#: The most threads a block may have on every CUDA GPU.
MAX_THREADS = 1024

#: Static shared memory a block may use, in bytes: the 48 KiB a kernel gets without opting in.
STATIC_SHARED_LIMIT = 48 * 1024

#: The largest head size the kernels cover; larger ones run the textbook op.
MAX_HEAD_DIM = 128

#: Threads per block of the default tiles: rows per block (and per staged tile) are this
#: over the lanes a row, before shrinking to fit the shared memory.
DEFAULT_THREADS = 128

#: Tiles below this many rows would leave most of a block idle: such head sizes are not covered.
MIN_TILE = 8

#: Head elements per lane the default lane count aims at (D / L): 16 keeps a thread's
#: three or four register arrays at 48 to 64 numbers.
HEAD_SLICE = 16

#: Blocks an SM should hold at once: the kernels are compiled with launch bounds (threads,
#: MIN_BLOCKS), so that ptxas keeps registers within 65536 / (MIN_BLOCKS threads).
MIN_BLOCKS = 4

#: The kernels' names, in launch order.
KERNELS = ("forward", "dq", "dkdv")

#: The varlen kernels' names (packed sequences from ``cu_seqlens``): the same blocks, threads
#: and shared memory as the padded kernel of the same name without the prefix.
VARLEN_KERNELS = ("varlen_forward", "varlen_dq", "varlen_dkdv")

def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r} is invalid, expected a positive integer")
    return int(value)


# --------------------------------------------------------------------------- launch sizes


class LaunchConfig(NamedTuple):
    """The compile-time sizes of one kernel build and the launch sizes they imply.

    ``block_q`` query rows and ``block_k`` key rows: per block and per staged tile (the
    forward and ``dq_kernel`` own ``block_q`` query rows and stage ``block_k`` keys;
    ``dkdv_kernel`` owns ``block_k`` key rows and stages ``block_q`` queries). ``lanes``
    threads per row, each holding ``head_slice = D / lanes`` elements of a row's vectors.
    """
    D: int
    itemsize: int
    block_q: int
    block_k: int
    lanes: int

    @property
    def head_slice(self):
        return self.D // self.lanes

    def threads(self, kernel):
        """Threads per block: a group of ``lanes`` per owned row."""
        kernel = kernel.removeprefix("varlen_")
        return (self.block_k if kernel == "dkdv" else self.block_q) * self.lanes

    def shared_bytes(self, kernel):
        """Static shared memory per block, from the arrays each kernel declares (the score
        rows are padded by one number against bank conflicts)."""
        kernel = kernel.removeprefix("varlen_")
        BQ, BK, D = self.block_q, self.block_k, self.D
        if kernel == "forward":     # K, V tiles; P~ rows; key bias
            words = 2 * BK * D + BQ * (BK + 1) + BK
        elif kernel == "dq":        # K, V tiles; score and dP rows; key bias
            words = 2 * BK * D + 2 * BQ * (BK + 1) + BK
        elif kernel == "dkdv":      # Q, dO tiles; score and dP rows; lse, 1/sigma, D_i
            words = 2 * BQ * D + 2 * BK * (BQ + 1) + 3 * BQ
        else:
            raise ValueError(f"kernel={kernel!r} is not known, expected one of {KERNELS}")
        return words * self.itemsize

    def grid(self, kernel, B, A, S):
        """(sequence x head, row tile): one block per ``block_q`` queries or ``block_k`` keys
        of a sequence of S rows (the varlen kernels: S at least the longest sequence)."""
        rows = self.block_k if kernel.removeprefix("varlen_") == "dkdv" else self.block_q
        return (B * A, -(-S // rows))


def default_lanes(D, itemsize=4):
    """L = D / ``HEAD_SLICE`` in float32, twice that in float64 (a float64 takes two
    registers), clamped to [2, 16] and lowered to divide D: 4 at D = 64 in float32, 8 in
    float64."""
    return _lanes_dividing(D, min(16, max(2, D * itemsize // (4 * HEAD_SLICE))))


def _lanes_dividing(D, lanes):
    while D % lanes:
        lanes //= 2
    return lanes


def _fits(cfg):
    return all(cfg.shared_bytes(k) <= STATIC_SHARED_LIMIT for k in KERNELS)


def default_tiles(D, itemsize, lanes):
    """(block_q, block_k): ``DEFAULT_THREADS / lanes`` each (at least ``MIN_TILE``), the
    larger halved until every kernel's static shared memory fits in ``STATIC_SHARED_LIMIT``
    (32 x 32 for float32 at D = 64, 16 x 16 for float64)."""
    bq = bk = max(MIN_TILE, DEFAULT_THREADS // lanes)
    while not _fits(LaunchConfig(D, itemsize, bq, bk, lanes)) and max(bq, bk) > 1:
        if bk >= bq:
            bk //= 2
        else:
            bq //= 2
    return bq, bk


def supports(head_dim, dtype) -> bool:
    """True when the CUDA kernels cover head size ``head_dim`` in ``dtype``: float32 or
    float64, 1 <= D <= ``MAX_HEAD_DIM``, and default tiles of at least ``MIN_TILE`` rows.
    The attention op runs its textbook code where this is False."""
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        return False
    if isinstance(head_dim, bool) or not isinstance(head_dim, (int, np.integer)):
        return False
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        return False
    return min(default_tiles(int(head_dim), dtype.itemsize,
                             default_lanes(int(head_dim), dtype.itemsize))) >= MIN_TILE


def launch_config(D, dtype, block_q=None, block_k=None, lanes=None):
    """The ``LaunchConfig`` for head size D and ``dtype``; None takes the defaults
    (``default_lanes``, ``default_tiles``). Raises ValueError before any launch where the
    GPU would refuse or the kernels do not cover the case: a head size beyond
    ``supports``, more than ``MAX_THREADS`` threads a block, more than
    ``STATIC_SHARED_LIMIT`` bytes of static shared memory."""
    itemsize = np.dtype(dtype).itemsize
    if not supports(D, dtype):
        raise ValueError(f"head size D={D} with dtype {np.dtype(dtype)} is not covered by the "
                         f"CUDA attention kernels (float32/float64, 1 <= D <= {MAX_HEAD_DIM}); "
                         "the attention op runs its textbook code for it")
    if lanes is None:
        lanes = default_lanes(D, itemsize)
    else:
        lanes = _positive("lanes", lanes)
        if lanes > 32 or lanes & (lanes - 1):
            raise ValueError(f"lanes={lanes} is invalid, expected a power of two <= 32 "
                             "(the lanes of one row share a warp)")
        lanes = _lanes_dividing(D, lanes)
    dq_, dk_ = default_tiles(D, itemsize, lanes)
    block_q = dq_ if block_q is None else _positive("block_q", block_q)
    block_k = dk_ if block_k is None else _positive("block_k", block_k)
    cfg = LaunchConfig(int(D), itemsize, block_q, block_k, lanes)
    for kernel in KERNELS:
        if cfg.threads(kernel) > MAX_THREADS:
            rows = "block_k" if kernel == "dkdv" else "block_q"
            raise ValueError(f"{rows}={getattr(cfg, rows)} with lanes={lanes} gives "
                             f"{cfg.threads(kernel)} threads a block in the {kernel} kernel, "
                             f"expected at most {MAX_THREADS}")
        if cfg.shared_bytes(kernel) > STATIC_SHARED_LIMIT:
            raise ValueError(f"block_q={block_q}, block_k={block_k} at D={D} "
                             f"({np.dtype(dtype)}) need {cfg.shared_bytes(kernel)} bytes of "
                             f"shared memory in the {kernel} kernel, expected at most "
                             f"{STATIC_SHARED_LIMIT} (smaller tiles)")
    return cfg


# --------------------------------------------------------------------------- the launches
# Each imports ``attention_cuda`` (and with it ``numba.cuda``) when it runs: only once GPU
# arrays have arrived.


class Device(Launch):
    """``_cuda_host.Launch`` (the kind of GPU array that came in, its allocation, conversion
    and stream) with the attention mask's device tables."""

    def mask_tables(self, mask, B, S, block_k, dtype):
        """``(key_bias, tile_has_key)`` on the device: the additive key mask (B, S) in
        ``dtype`` (0 at real keys, -inf at padding, whose exp is exactly 0) and, per
        sequence and key tile of ``block_k`` keys, 1 if the tile holds a real key, else 0
        (B, ceil(S / block_k)) int32. ``mask`` is a checked ``AttentionMask`` or None; its
        forms are built once and kept, so every layer of a forward and backward reuses them."""
        if mask is None:
            mask = AttentionMask(np.ones((B, S), dtype=np.int8))
        elif not isinstance(mask, AttentionMask):       # a checked (B, S) 0/1 array
            mask = AttentionMask(mask)
        key_bias, tiles = mask.key_bias(dtype), mask.tile_has_key(block_k)
        return self.to_device(key_bias), self.to_device(tiles)     # CuPy: no copy when on device

    def sequences(self, cu_seqlens, seq_len):
        """``(cu_seqlens on the device, rows)``: rows is the grids' sequence length, the
        longest sequence where ``cu_seqlens`` is a NumPy array (read on the host, so no
        device sync), else ``seq_len`` (>= every length: blocks past a sequence's end
        return at once)."""
        if not isinstance(cu_seqlens, np.ndarray):
            return cu_seqlens, seq_len
        host = np.ascontiguousarray(cu_seqlens, dtype=np.int64)
        return self.to_device(host), int(np.diff(host).max(initial=0))

    def packed(self, x):
        """A packed (A, T, ...) array as the varlen kernels take it: a (1, A, T, ...) view,
        C-contiguous (CuPy copies a strided array; a strided Numba array is refused)."""
        if self.cupy:
            x = self.xp.ascontiguousarray(x)
        elif not x.is_c_contiguous():
            raise ValueError(f"a Numba device array of shape {tuple(x.shape)} is not "
                             "C-contiguous, expected a C-contiguous array (A, T, D)")
        return self.arg(x.reshape((1,) + tuple(x.shape)))


def kernel_scalars(dtype, scale, dropout_p, seed, offset):
    """The kernels' scalar arguments, typed: in Numba a float32 mixed with a Python float
    becomes float64, and an int64 mixed with a uint64 too. The kernels take ``start`` after
    them, as a uint64 too."""
    ftype = dtype.type
    return (ftype(scale), np.float32(dropout_p), ftype(1.0 / (1.0 - dropout_p)),
            np.uint64(seed), np.uint64(offset))


def attention_forward(q, k, v, mask, scale, dropout_p=0.0, seed=0, offset=0, *, start=0,
                      block_q=None, block_k=None, lanes=None):
    """``(out, lse)`` for inputs validated by ``minibert.kernels.fused_attention_forward``:
    GPU arrays of one kind, ``scale`` a float, ``mask`` (B, S) of 0/1 (NumPy, or CuPy with
    CuPy inputs) or None. ``block_q``, ``block_k``, ``lanes``: see ``launch_config``."""
    from .attention_cuda import build_kernels
    B, A, S, D = q.shape
    cfg = launch_config(D, q.dtype, block_q, block_k, lanes)
    dev = Device(q)
    out = dev.empty((B, A, S, D), q.dtype)
    lse = dev.empty((B, A, S), q.dtype)
    if B * A * S == 0:
        return out, lse
    kern = build_kernels(q.dtype.str, D, cfg.block_q, cfg.block_k, cfg.lanes)
    key_bias, tiles = dev.mask_tables(mask, B, S, cfg.block_k, q.dtype)
    kern.forward[cfg.grid("forward", B, A, S), cfg.threads("forward"), dev.stream](
        dev.arg(q), dev.arg(k), dev.arg(v), dev.arg(key_bias), dev.arg(tiles),
        *kernel_scalars(q.dtype, scale, dropout_p, seed, offset), np.uint64(start),
        dev.arg(out), dev.arg(lse))
    return out, lse


def attention_backward(dout, q, k, v, out, lse, mask, scale, dropout_p=0.0, seed=0, offset=0,
                       *, start=0, block_q=None, block_k=None, lanes=None):
    """``(dq, dk, dv)`` for inputs validated by ``minibert.kernels.fused_attention_backward``.
    ``out`` is not read (the row statistics are recomputed: see the module docstring); it
    stays in FlashAttention's signature."""
    from .attention_cuda import build_kernels
    B, A, S, D = q.shape
    cfg = launch_config(D, q.dtype, block_q, block_k, lanes)
    dev = Device(q)
    dq, dk, dv = (dev.empty((B, A, S, D), q.dtype) for _ in range(3))
    if B * A * S == 0:
        return dq, dk, dv
    kern = build_kernels(q.dtype.str, D, cfg.block_q, cfg.block_k, cfg.lanes)
    key_bias, tiles = dev.mask_tables(mask, B, S, cfg.block_k, q.dtype)
    inv_sum = dev.empty((B, A, S), q.dtype)                       # 1 / sigma_i
    delta = dev.empty((B, A, S), q.dtype)                         # D_i
    scalars = kernel_scalars(q.dtype, scale, dropout_p, seed, offset) + (np.uint64(start),)
    qa, ka, va, da, la = (dev.arg(x) for x in (q, k, v, dout, lse))
    kb, ta = dev.arg(key_bias), dev.arg(tiles)
    kern.dq[cfg.grid("dq", B, A, S), cfg.threads("dq"), dev.stream](
        qa, ka, va, da, la, kb, ta, *scalars, dev.arg(inv_sum), dev.arg(delta), dev.arg(dq))
    # same stream: dkdv_kernel starts after dq_kernel has written the row statistics
    kern.dkdv[cfg.grid("dkdv", B, A, S), cfg.threads("dkdv"), dev.stream](
        qa, ka, va, da, la, dev.arg(inv_sum), dev.arg(delta), kb, ta, *scalars,
        dev.arg(dk), dev.arg(dv))
    return dq, dk, dv


def varlen_forward(q, k, v, cu_seqlens, scale, dropout_p=0.0, seed=0, offset=0, *, seq_len,
                   start=0, block_q=None, block_k=None, lanes=None):
    """``(out (A, T, D), lse (A, T))`` of the packed sequences, for inputs validated by
    ``minibert.kernels.fused_attention_varlen_forward``: q, k, v (A, T, D) GPU arrays of one
    kind; ``cu_seqlens`` (B + 1,) integer offsets, NumPy or a GPU array (sequence b is
    tokens cu_seqlens[b] .. cu_seqlens[b + 1] - 1, attending to itself only, no mask);
    ``seq_len`` the padded length S >= every n_b whose dropout elements are drawn:
    probability (b, a, i, j) is Philox element start + ((b A + a) S + i) S + j, as in the
    padded kernels on the padded batch. Other arguments as ``attention_forward``."""
    from .attention_cuda import build_kernels
    A, T, D = q.shape
    B = cu_seqlens.shape[0] - 1
    cfg = launch_config(D, q.dtype, block_q, block_k, lanes)
    dev = Device(q)
    out, lse = dev.empty((A, T, D), q.dtype), dev.empty((A, T), q.dtype)
    if B * A * T == 0:
        return out, lse
    kern = build_kernels(q.dtype.str, D, cfg.block_q, cfg.block_k, cfg.lanes)
    cu, rows = dev.sequences(cu_seqlens, seq_len)
    kern.varlen_forward[cfg.grid("varlen_forward", B, A, rows), cfg.threads("forward"),
                        dev.stream](
        dev.packed(q), dev.packed(k), dev.packed(v), dev.arg(cu),
        *kernel_scalars(q.dtype, scale, dropout_p, seed, offset), np.uint64(start),
        np.int64(seq_len), dev.packed(out), dev.packed(lse))
    return out, lse


def varlen_backward(dout, q, k, v, out, lse, cu_seqlens, scale, dropout_p=0.0, seed=0, offset=0,
                    *, seq_len, start=0, block_q=None, block_k=None, lanes=None):
    """``(dq, dk, dv)``, (A, T, D) each, of the packed sequences, for inputs validated by
    ``minibert.kernels.fused_attention_varlen_backward`` (as ``varlen_forward``; ``lse``
    (A, T) as the forward returns it). ``out`` is not read, as in ``attention_backward``."""
    from .attention_cuda import build_kernels
    A, T, D = q.shape
    B = cu_seqlens.shape[0] - 1
    cfg = launch_config(D, q.dtype, block_q, block_k, lanes)
    dev = Device(q)
    dq, dk, dv = (dev.empty((A, T, D), q.dtype) for _ in range(3))
    if B * A * T == 0:
        return dq, dk, dv
    kern = build_kernels(q.dtype.str, D, cfg.block_q, cfg.block_k, cfg.lanes)
    cu, rows = dev.sequences(cu_seqlens, seq_len)
    inv_sum, delta = (dev.packed(dev.empty((A, T), q.dtype)) for _ in range(2))
    scalars = kernel_scalars(q.dtype, scale, dropout_p, seed, offset) + (
        np.uint64(start), np.int64(seq_len))
    qa, ka, va, da, la = (dev.packed(x) for x in (q, k, v, dout, lse))
    kern.varlen_dq[cfg.grid("varlen_dq", B, A, rows), cfg.threads("dq"), dev.stream](
        qa, ka, va, da, la, dev.arg(cu), *scalars, inv_sum, delta, dev.packed(dq))
    # same stream: the dK/dV kernel starts after the dQ kernel has written the row statistics
    kern.varlen_dkdv[cfg.grid("varlen_dkdv", B, A, rows), cfg.threads("dkdv"), dev.stream](
        qa, ka, va, da, la, inv_sum, delta, dev.arg(cu), *scalars, dev.packed(dk),
        dev.packed(dv))
    return dq, dk, dv
