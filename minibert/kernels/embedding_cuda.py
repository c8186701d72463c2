"""The embedding backward on the GPU: a deterministic sorted segment sum (Numba CUDA).

The sum to compute (``minibert/ops/embedding.py`` derives it), with N token rows of F
columns and their ids:

    out[v, :] += sum_{n : ids[n] = v} rows[n, :]          for every id v that occurs

No float atomics: the additions happen in one fixed order on every run, so two runs give
the same bits. And no one-hot matrix: the work is O(N F), not O(unique ids x N F).

1. Sort the positions by id, stably (``argsort(ids, kind="stable")``): ``order`` (N,) and
   ``sorted_ids = ids[order]``. Equal ids now form contiguous segments, each listing its
   positions in token order.
2. Cut the sorted rows into chunks of ``CHUNK`` rows. ``chunk_kernel``, a thread block per
   (chunk, tile of ``THREADS`` columns), one thread per column, walks its chunk's rows in
   order and sums each run of equal ids (a "piece"). A piece that is a whole segment is
   added to ``out`` at once. A piece cut by a chunk boundary is stored instead: the one at
   the start of chunk c whose segment began in an earlier chunk in ``first[c]``, the one at
   the end of chunk c whose segment goes on into chunk c + 1 in ``last[c]``.
3. ``span_kernel``, a block per (chunk, column tile): the chunk where a segment that
   crosses a boundary begins adds its pieces in chunk order,

       out[v] += last[c] + first[c + 1] + first[c + 2] + ...

   while the segment goes on (a whole chunk of one id is its ``first``).

Every id's row of ``out`` is written by exactly one thread per column, pieces in a fixed
order: deterministic. Chunks bound the serial work of a thread: an id that fills most of
the batch (the token type 0, the [PAD] token) is summed by N / CHUNK blocks in parallel,
then N / CHUNK additions, not by one thread walking all N rows.

Rounding: each piece is summed from 0 in token order and pieces are then added to ``out``,
so the result differs from ``np.add.at``'s single running sum by the reassociation of the
additions (float64: within 1e-12 in the tests, not bit for bit).

Arrays: ``out`` (V, F) C-contiguous and ``rows`` (N, F) of one float dtype, ``ids`` (N,)
integers in [0, V) (validated by the caller). CuPy arrays sort on the GPU (no host sync)
and launch on CuPy's current stream; Numba device arrays (the simulator's tests) are
sorted on the host. This module imports ``numba.cuda``.
"""
from __future__ import annotations

import functools

import numpy as np
from numba import cuda

from ._cuda_host import Launch

#: Rows of the sorted batch per chunk: a thread's longest serial walk.
CHUNK = 128
#: Columns per thread block (one thread each), at most.
THREADS = 128


@functools.cache
def build_kernels(dtype_str):
    """``(chunk_kernel, span_kernel)`` for float dtype ``dtype_str``, compiled on first launch."""
    ftype = np.dtype(dtype_str).type
    ZERO = ftype(0)

    @cuda.jit
    def chunk_kernel(sorted_ids, order, rows, chunk, first, last, out):
        """Grid (chunks, column tiles): pieces inside the chunk to ``out``, cut pieces to
        ``first`` / ``last`` (see the module docstring)."""
        c = cuda.blockIdx.x
        col = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
        n = sorted_ids.shape[0]
        if col >= rows.shape[1]:
            return
        r0 = c * chunk
        r1 = min(r0 + chunk, n)
        r = r0
        while r < r1:
            v = sorted_ids[r]
            a = r                                   # the piece's first row
            acc = ZERO
            while r < r1 and sorted_ids[r] == v:    # the rows of id v, in token order
                acc = ftype(acc + rows[order[r], col])
                r += 1
            if a == r0 and a > 0 and sorted_ids[a - 1] == v:
                first[c, col] = acc                 # began in an earlier chunk
            elif r == r1 and r < n and sorted_ids[r] == v:
                last[c, col] = acc                  # goes on into the next chunk
            else:
                out[v, col] = ftype(out[v, col] + acc)

    @cuda.jit
    def span_kernel(sorted_ids, chunk, first, last, out):
        """Grid (chunks, column tiles): the segments that begin in this chunk and cross its
        end, their pieces added in chunk order."""
        c = cuda.blockIdx.x
        col = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
        n = sorted_ids.shape[0]
        if col >= out.shape[1]:
            return
        r0 = c * chunk
        r1 = r0 + chunk
        if r1 >= n:
            return                                  # the last chunk: nothing goes on
        v = sorted_ids[r1 - 1]
        if sorted_ids[r1] != v:
            return                                  # its last piece ends inside it
        if r0 > 0 and sorted_ids[r0 - 1] == v:
            return                                  # begun earlier: that chunk adds it
        acc = last[c, col]
        k = c + 1
        while k * chunk < n and sorted_ids[k * chunk] == v:
            acc = ftype(acc + first[k, col])
            k += 1
        out[v, col] = ftype(out[v, col] + acc)

    return chunk_kernel, span_kernel


def signatures(dtype):
    """``(chunk_kernel, span_kernel)`` Numba signatures as ``segment_sum_into`` launches them
    for float ``dtype``: for ``compile_ptx`` and for compiling ahead of the first launch."""
    from numba import types
    ft = types.float32 if np.dtype(dtype) == np.float32 else types.float64
    ids, table = types.Array(types.int64, 1, "C"), types.Array(ft, 2, "C")
    return ((ids, ids, table, types.int64, table, table, table),
            (ids, types.int64, table, table, table))


def compile_eagerly(dtype):
    """Compile both kernels for ``dtype`` now, with explicit signatures (needs a GPU)."""
    kernels = build_kernels(np.dtype(dtype).str)
    return tuple(k.compile(sig) for k, sig in zip(kernels, signatures(dtype)))


def segment_sum_into(out, ids, rows, *, chunk=CHUNK, threads=THREADS):
    """``out[ids[n]] += rows[n]`` for n < N, repeated ids summed, deterministically; returns
    ``out``. out (V, F) C-contiguous, rows (N, F) of out's float dtype, ids (N,) integers in
    [0, V); GPU arrays of one kind. ``chunk`` and ``threads`` (positive integers) set the
    chunk length and the column tile (the tests make them small)."""
    for name, value in (("chunk", chunk), ("threads", threads)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}={value!r} is invalid, expected a positive integer")
    N = int(ids.shape[0])
    F = int(out.shape[1])
    if tuple(rows.shape) != (N, F):
        raise ValueError(f"rows has shape {tuple(rows.shape)}, expected {(N, F)} "
                         f"(ids {tuple(ids.shape)}, out {tuple(out.shape)})")
    if N == 0 or F == 0:
        return out
    launch = Launch(out)
    if launch.cupy:
        xp = launch.xp
        order = xp.argsort(ids, kind="stable")                     # (N,) positions by id
        sorted_ids = ids[order].astype(np.int64, copy=False)     # one compiled kernel per dtype
        rows = xp.ascontiguousarray(rows)
    else:                                       # Numba device arrays: sort on the host
        host = ids.copy_to_host()
        order_h = np.argsort(host, kind="stable")
        order = cuda.to_device(order_h.astype(np.int64))
        sorted_ids = cuda.to_device(host[order_h].astype(np.int64))
    chunks = -(-N // chunk)
    threads = min(int(threads), F)
    grid = (chunks, -(-F // threads))
    first = launch.empty((chunks, F), out.dtype)
    last = launch.empty((chunks, F), out.dtype)
    chunk_kernel, span_kernel = build_kernels(np.dtype(out.dtype).str)
    a_ids, a_out = launch.arg(sorted_ids), launch.arg(out)
    a_first, a_last = launch.arg(first), launch.arg(last)
    chunk_kernel[grid, threads, launch.stream](a_ids, launch.arg(order), launch.arg(rows),
                                               np.int64(chunk), a_first, a_last, a_out)
    # same stream: span_kernel starts once chunk_kernel has written first and last
    span_kernel[grid, threads, launch.stream](a_ids, np.int64(chunk), a_first, a_last, a_out)
    return out
