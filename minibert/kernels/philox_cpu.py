"""Philox4x32-10 as scalar Numba functions: the dropout bits of ``minibert.rng``, one
element at a time, for kernels that regenerate a keep-mask inside their loops.

The convention is ``minibert/rng.py``'s (its docstring is the specification); for element
``index`` of the stream ``(seed, offset)``:

    key     = (seed mod 2**32, seed >> 32)
    counter = (index // 4 mod 2**32, index // 4 >> 32, offset mod 2**32, offset >> 32)
    word    = philox4x32_10(counter, key)[index % 4]
    u       = (word >> 8) * 2**-24            24 random bits, exact in float32, in [0, 1)
    keep    = u >= float32(p)                  compared in float32

so ``dropout_keep(seed, offset, i, p)`` equals ``minibert.rng.keep_mask(shape, p, seed,
offset).reshape(-1)[i]`` bit for bit, whatever the implementation that asks.

One Philox call yields four words (four consecutive elements); a kernel that walks a row
of a mask can call ``philox_block`` once per group of four and pick each element's word
with ``select_word`` (see ``_blocks.keep_factors``) instead of ``philox_uint32`` per
element.

Integer typing in Numba: a Python int below 2**63 arrives as int64, above as uint64, and
int64 mixed with uint64 becomes float64. Every argument is therefore converted to uint64
first and every constant is a uint64, so all arithmetic stays in unsigned 64-bit integers
holding 32-bit values (the 32 x 32 -> 64-bit products cannot overflow). Callers in plain
Python should pass ``np.uint64(seed)`` and ``np.uint64(offset)`` to their jitted kernels:
once Numba has compiled a function for int64 arguments, its dispatcher raises OverflowError
for a Python int >= 2**63 instead of compiling a uint64 version.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .. import _numba_cache  # noqa: F401  (before any @njit: see minibert/_numba_cache.py)

# Philox4x32 multipliers and Weyl key increments (Salmon et al., SC'11, Table 2)
_M0 = np.uint64(0xD2511F53)
_M1 = np.uint64(0xCD9E8D57)
_W0 = np.uint64(0x9E3779B9)
_W1 = np.uint64(0xBB67AE85)
_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
_TWO = np.uint64(2)
_THREE = np.uint64(3)
_INV_2_24 = np.float32(2.0 ** -24)


@njit(cache=True, inline="always")
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """The four output words (uint64 holding uint32 values) of Philox4x32 with ten rounds.

    Each round multiplies two counter words by the Philox constants, splits the 64-bit
    products into high and low halves and mixes them with the other two words and the key;
    the key is bumped by the Weyl constants between rounds.
    """
    c0, c1, c2, c3 = np.uint64(c0), np.uint64(c1), np.uint64(c2), np.uint64(c3)
    k0, k1 = np.uint64(k0), np.uint64(k1)
    for r in range(10):
        if r > 0:
            k0 = (k0 + _W0) & _MASK32
            k1 = (k1 + _W1) & _MASK32
        p0 = c0 * _M0
        p1 = c2 * _M1
        c0, c1, c2, c3 = ((p1 >> _SHIFT32) ^ c1 ^ k0, p1 & _MASK32,
                          (p0 >> _SHIFT32) ^ c3 ^ k1, p0 & _MASK32)
    return c0, c1, c2, c3


@njit(cache=True, inline="always")
def philox_block(seed, offset, block):
    """The four words of counter block ``block`` (elements 4 block .. 4 block + 3)."""
    s, o, blk = np.uint64(seed), np.uint64(offset), np.uint64(block)
    return philox4x32_10(blk & _MASK32, blk >> _SHIFT32, o & _MASK32, o >> _SHIFT32,
                         s & _MASK32, s >> _SHIFT32)


@njit(cache=True, inline="always")
def select_word(lane, w0, w1, w2, w3):
    """Word ``lane`` (0 to 3) of a Philox block: element ``index`` is word ``index % 4`` of
    block ``index // 4``. The one lane selection of every kernel that keeps a block's four
    words while it walks a row (a register array indexed at run time would live in local
    memory on the GPU; a chain of selects stays in registers)."""
    return w0 if lane == 0 else (w1 if lane == 1 else (w2 if lane == 2 else w3))


@njit(cache=True, inline="always")
def philox_uint32(seed, offset, index):
    """Word ``index % 4`` of Philox4x32-10 at counter (index // 4, offset), key seed."""
    i = np.uint64(index)
    w0, w1, w2, w3 = philox_block(seed, offset, i >> _TWO)
    return np.uint32(select_word(i & _THREE, w0, w1, w2, w3))


@njit(cache=True, inline="always")
def keep_from_word(word, p32):
    """``(word >> 8) * 2**-24 >= p32``: the keep decision for one word, in float32."""
    u = np.float32(np.uint64(word) >> np.uint64(8)) * _INV_2_24
    return u >= p32


@njit(cache=True, inline="always")
def dropout_keep(seed, offset, index, p):
    """True where element ``index`` of the stream (seed, offset) is kept by dropout ``p``."""
    return keep_from_word(philox_uint32(seed, offset, index), np.float32(p))
