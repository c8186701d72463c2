"""Launch sizes of the CUDA attention kernels (``attention_cuda.py``): the limits every
CUDA GPU sets, the default tiles and lanes for a head size and dtype, and ``supports`` /
``launch_config``, which check a configuration against those limits before any launch.

Plain arithmetic, with no CUDA import: the op's dispatch asks ``supports`` without loading
``numba.cuda``. The thread layout these sizes describe (a row per group of lanes, tiles of
rows staged in shared memory) is derived in ``attention_cuda.py``'s docstring.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

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
        return (self.block_k if kernel == "dkdv" else self.block_q) * self.lanes

    def shared_bytes(self, kernel):
        """Static shared memory per block, from the arrays each kernel declares (the score
        rows are padded by one number against bank conflicts)."""
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
        """(sequence x head, row tile): one block per ``block_q`` queries or ``block_k`` keys."""
        rows = self.block_k if kernel == "dkdv" else self.block_q
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
