"""GPU attention ladder, rung 1: the naive kernel, a thread per query row.

Run it: ``python kernels/attn_cuda_v1_naive.py`` (``--help`` for the options) checks
this rung against minibert's op, ``minibert.ops.attention``, and times both on a GPU;
``NUMBA_ENABLE_CUDASIM=1 python kernels/attn_cuda_v1_naive.py`` runs the check in Numba's CUDA
simulator, without a GPU.

The GPU ladder climbs, like the CPU one (``attn_v1_naive.py`` states the contract and the
conventions), from the textbook function to the production kernel
``minibert/kernels/attention_cuda.py`` (rung 4), one step per rung, every rung behind the
forward contract of ``minibert.kernels.fused_attention_forward``::

    out, lse = forward(q, k, v, mask, scale, dropout_p=0.0, seed=0, offset=0)

on GPU arrays (CuPy, or Numba device arrays as under the simulator), the same function,
the same lse (+inf for a sequence with no real key, whose output is zeros) and the same
dropout bits (Philox element ``((b*A + a)*S + i)*S + j``, ``minibert/kernels/philox_cpu.py`` compiled for
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

import argparse
import functools
import math
import numbers
import os
import pathlib
import statistics
import sys
import time

import numpy as np

from minibert.backend import is_device_array
from minibert.kernels.philox_cpu import dropout_keep
from minibert.ops import attention, readable_ops
from minibert.rng import check_u64

try:
    from numba import cuda
except ImportError:                 # no CUDA target for Numba: the script says so and stops
    cuda = None

# --------------------------------------------------------------------------- kernel


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


# --------------------------------------------------------------------------- host side

#: Shared memory a block may use for its two staged tiles, in bytes: below the 48 KiB a
#: kernel gets without opting in. The largest tile is 64 rows (64 x 64 at D = 64, float32).
SHARED_BUDGET = 40 * 1024
MAX_TILE = 64


def default_tile(D, itemsize):
    """The largest power of two <= ``MAX_TILE`` whose two staged (tile, D) blocks fit in
    ``SHARED_BUDGET`` (64 for float32 at D = 64, 32 for float64)."""
    tile = MAX_TILE
    while tile > 1 and 2 * tile * D * itemsize > SHARED_BUDGET:
        tile //= 2
    return tile


def tile_size(name, value, default):
    """``value`` as a positive int, or ``default`` for None."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r} is invalid, expected a positive integer")
    return int(value)


def check_args(q, k, v, mask, scale, dropout_p, seed, offset):
    """Validates the forward's arguments; returns ``(key_bias, scalars)``: the additive key
    mask (B, S) on the host in q's dtype (0 at real keys, -inf at padding, whose exp is
    exactly 0) and the kernel's typed scalars ``(scale, p, 1 / (1 - p), seed, offset)`` (in
    Numba a float32 mixed with a Python float becomes float64, an int64 mixed with a uint64
    too). Raises TypeError or ValueError naming the argument."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not is_device_array(x):
            raise TypeError(f"{name} has type {type(x).__name__}, expected a GPU array (CuPy "
                            "or a Numba device array)")
        shape, dtype = tuple(x.shape), np.dtype(x.dtype)
        if len(shape) != 4:
            raise ValueError(f"{name} has shape {shape}, expected rank 4 (B, A, S, D)")
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"{name} has dtype {dtype}, expected float32 or float64")
        if shape != tuple(q.shape):
            raise ValueError(f"{name} has shape {shape}, expected the shape of q {tuple(q.shape)}")
        if dtype != np.dtype(q.dtype):
            raise TypeError(f"{name} has dtype {dtype}, expected the dtype of q ({q.dtype})")
        if not (x.is_c_contiguous() if hasattr(x, "is_c_contiguous") else x.flags.c_contiguous):
            raise ValueError(f"{name} is not C-contiguous, expected a C-contiguous array")
    B, _, S, D = q.shape
    real = np.ones((B, S), dtype=bool)
    if mask is not None:
        # a small (B, S) table: checked and turned into the additive mask on the host
        mask = mask.copy_to_host() if hasattr(mask, "copy_to_host") else mask
        mask = np.asarray(mask.get() if hasattr(mask, "get") else mask)
        if mask.shape != (B, S):
            raise ValueError(f"mask has shape {mask.shape}, expected (B, S) = {(B, S)} "
                             "with 1 = attend and 0 = padding")
        bad = mask[(mask != 0) & (mask != 1)]
        if bad.size:
            raise ValueError(f"mask contains the value {bad[0].item()!r}, expected only 0 "
                             "(padding) and 1 (attend)")
        real = mask == 1
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    for name, x in (("scale", scale), ("dropout_p", dropout_p)):
        if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):
            raise TypeError(f"{name}={x!r} has type {type(x).__name__}, expected a real number")
    if not math.isfinite(scale):
        raise ValueError(f"scale={scale!r} is not finite, expected a finite number or None")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p={dropout_p!r} is out of range, expected 0 <= dropout_p < 1")
    ftype = np.dtype(q.dtype).type
    key_bias = np.where(real, ftype(0), ftype(-np.inf)).astype(q.dtype)           # (B, S)
    scalars = (ftype(scale), np.float32(dropout_p), ftype(1.0 / (1.0 - dropout_p)),
               np.uint64(check_u64("seed", seed)), np.uint64(check_u64("offset", offset)))
    return key_bias, scalars


def device_of(q):
    """``(empty, arg, stream)`` for q's kind of GPU array: CuPy (launch on CuPy's current
    stream, CuPy outputs; ``arg`` views a CuPy array through its array interface, without
    synchronising) or Numba device arrays (the default stream, Numba outputs)."""
    if type(q).__module__.startswith("cupy"):
        import cupy
        ptr = cupy.cuda.get_current_stream().ptr
        stream = cuda.external_stream(ptr) if ptr else cuda.default_stream()
        return ((lambda shape, dtype: cupy.empty(shape, dtype=dtype)),
                (lambda x: cuda.as_cuda_array(x, sync=False)), stream)
    stream = cuda.default_stream()
    return (lambda shape, dtype: cuda.device_array(shape, dtype=dtype, stream=stream)), \
        (lambda x: x), stream


def forward(q, k, v, mask, scale, dropout_p=0.0, seed=0, offset=0, *, block_q=None):
    """``(out, lse)`` on GPU arrays; see the module docstring."""
    key_bias, scalars = check_args(q, k, v, mask, scale, dropout_p, seed, offset)
    B, A, S, D = q.shape
    BQ = tile_size("block_q", block_q, default_tile(D, q.dtype.itemsize))
    empty, arg, stream = device_of(q)
    out, lse = empty((B, A, S, D), q.dtype), empty((B, A, S), q.dtype)
    if B * A * S == 0:
        return out, lse
    build_kernel(np.dtype(q.dtype).str, BQ)[(B * A, -(-S // BQ)), BQ, stream](
        arg(q), arg(k), arg(v), cuda.to_device(key_bias, stream=stream), *scalars, arg(out),
        arg(lse))
    return out, lse


# --------------------------------------------------------------------------- as a script

#: The check's tolerance on max |rung - textbook in float64| / max(1, max |textbook|): float64
#: results differ from the textbook's by summation order (~1e-15), float32 ones by float32
#: roundings (~1e-6); a wrong formula, index or dropout bit is off by ~1e-2 or more.
TOLERANCE = {"float64": 1e-10, "float32": 1e-4}


def make_problem(batch, heads, seq, dim, dtype, seed):
    """q, k, v (B, A, S, D) standard normal on the host, and a (B, S) mask whose first
    sequence is full and whose others are padded at the end to a random length in [S/2, S]."""
    r = np.random.default_rng(seed)
    q, k, v = (r.standard_normal((batch, heads, seq, dim)).astype(dtype) for _ in range(3))
    lengths = r.integers((seq + 1) // 2, seq + 1, size=batch)
    lengths[0] = seq
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)    # (B, S)
    return q, k, v, mask


def textbook_forward(q, k, v, mask, p, seed):
    """minibert's readable op (the reference, never a kernel): its output."""
    with readable_ops():
        return attention.forward(q, k, v, attention_mask=mask, dropout_p=p, seed=seed,
                                 training=p > 0)[0]


def main(argv=None):
    name = pathlib.Path(__file__).stem
    ap = argparse.ArgumentParser(description=f"{name}: check this rung against minibert's "
                                 "attention op (minibert.ops.attention), then time both (on a "
                                 "GPU; under NUMBA_ENABLE_CUDASIM=1 the check only, on a small "
                                 "shape by default).")
    ap.add_argument("--batch", type=int, help="sequences B (default: 4; simulator 2)")
    ap.add_argument("--heads", type=int, help="heads A (default: 12; simulator 2)")
    ap.add_argument("--seq", type=int, help="sequence length S (default: 512; simulator 33)")
    ap.add_argument("--dim", type=int, help="head size D (default: 64; simulator 16)")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                    help="dtype (default: float32)")
    ap.add_argument("--dropout", type=float, default=0.0, help="dropout rate (default: 0.0)")
    ap.add_argument("--repeat", type=int, default=10, help="timed rounds (default: 10)")
    ap.add_argument("--seed", type=int, default=0, help="seed of inputs and dropout (default: 0)")
    args = ap.parse_args(argv)
    simulator = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"
    if cuda is None or not cuda.is_available():
        print(f"{name}: no CUDA GPU answers here (and NUMBA_ENABLE_CUDASIM=1, Numba's CUDA "
              "simulator, is not set): nothing to run")
        return 0
    shape = (2, 2, 33, 16) if simulator else (4, 12, 512, 64)
    B, A, S, D = (given if given is not None else default for given, default in
                  zip((args.batch, args.heads, args.seq, args.dim), shape))
    p, seed = args.dropout, args.seed
    q, k, v, mask = make_problem(B, A, S, D, args.dtype, seed)
    where = "Numba's CUDA simulator" if simulator else "the GPU"
    print(f"{name}: (B, A, S, D) = {q.shape}, {args.dtype}, {1 - mask.mean():.0%} padding, "
          f"dropout {p}, on {where}")

    # the check: this rung in the chosen dtype against the textbook op in float64 on the
    # same (rounded) inputs, on the host
    gq, gk, gv = (cuda.to_device(x) for x in (q, k, v))
    out, _ = forward(gq, gk, gv, mask, None, p, seed)
    ref = textbook_forward(*(x.astype(np.float64) for x in (q, k, v)), mask, p, seed)
    err = float(np.abs(out.copy_to_host() - ref).max() / max(1.0, np.abs(ref).max()))
    tol = TOLERANCE[args.dtype]
    print(f"  out max error {err:.1e} (tolerance {tol:.0e}) {'ok' if err <= tol else 'FAILED'}")
    print(f"check against minibert.ops.attention: {'PASS' if err <= tol else 'FAIL'}")
    if simulator:
        print("time: not measured under the simulator (it runs the kernel as Python threads)")
        return 0 if err <= tol else 1

    # the time: the rung's forward against the textbook op's, on CuPy arrays where CuPy is
    # installed (else on the host, and said so); each call waits for the GPU
    try:
        import cupy
        xq, xk, xv, xmask = (cupy.asarray(x) for x in (q, k, v, mask))
        book_where, book_sync = "on the GPU (CuPy)", cupy.cuda.Device().synchronize
    except ImportError:
        xq, xk, xv, xmask = q, k, v, mask
        book_where, book_sync = "on the CPU (no CuPy)", (lambda: None)

    def run_rung():
        forward(gq, gk, gv, mask, None, p, seed)
        cuda.synchronize()

    def run_book():
        textbook_forward(xq, xk, xv, xmask, p, seed)
        book_sync()

    run_book()
    times = [[], []]
    for _ in range(args.repeat):
        for fn, t in zip((run_rung, run_book), times):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
    t_rung, t_book = (statistics.median(t) for t in times)
    print(f"time of the forward, median of {args.repeat} interleaved rounds:")
    print(f"  {name} {1e3 * t_rung:8.3f} ms   textbook op {book_where} {1e3 * t_book:8.3f} ms"
          f"   (textbook / rung = {t_book / t_rung:.2f})")
    return 0 if err <= tol else 1


if __name__ == "__main__":
    sys.exit(main())
