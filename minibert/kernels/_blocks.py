"""Building blocks shared by the production kernels: exp, row max, Philox keep factors,
key-block spans and the compiler flags; numerics only (the argument checks of fused
attention are ``_args.py``'s, built on ``minibert.validation``).

Everything here is imported by name by the kernels that use it (``attention_cpu.py``,
``cross_entropy_cpu.py``, ``__init__.py``). The study ladder's rungs (``kernels/`` at the
repository root) stand alone and import none of it: they derive it instead, the vectorised
exp and the online softmax that uses it in ``kernels/attn_v4_tiled.py`` ("Arithmetic").
Nothing here imports ``minibert.ops`` (the ops import the kernels).

Compiled pieces (Numba, ``cache=True``):

* ``exp_row``: exp of a row in place, in a form LLVM vectorises, with ``EXP_CONSTANTS``
  and ``INT_OF`` giving its per-dtype constants and integer type;
* ``exp_scalar``: the same exp, bit for bit, as a scalar function that a caller's loop
  inlines and vectorises, so that the loop can do more than exp in one pass over a row
  (``exp_sum``: exp and the row sum; the attention row passes);
* ``row_max``: the max of a row with eight running maxima;
* ``keep_factors``: a row of dropout factors (0 or 1 / (1 - p)) from the Philox stream.

Python pieces:

* ``key_block_ranges`` and ``kernel_args``: the additive key mask and the span of real keys
  of every key block, with the typed scalars the attention kernels take.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import types
from numba.extending import intrinsic

from minibert.validation import AttentionMask

from .. import _numba_cache  # noqa: F401  (before any @njit: see minibert/_numba_cache.py)
from .philox_cpu import keep_from_word, philox_block, select_word

#: Numba's fastmath flags of the kernels: "reassoc" lets LLVM reorder sums (so that
#: reductions and dot products vectorise), "contract" fuses multiply-adds. Neither assumes
#: anything about NaN or infinities, so -inf scores and +inf lse keep their meaning.
FASTMATH = {"reassoc", "contract"}

#: The dtypes the CPU kernels compute in.
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# --------------------------------------------------------------------------- exp, row max

# exp(x) = 2^k exp(r): ln 2 = LN2_HI + LN2_LO with LN2_HI = 355/512 (9 significant bits,
# so k * LN2_HI is exact for |k| < 2^15 in float32) and LN2_LO the float64 remainder
LOG2E = 1.4426950408889634
LN2_HI = 0.693359375
LN2_LO = -2.1219444005469057e-4

#: Per dtype, the constants of ``exp_row``: (2^m + bias as a float, the bits of 2^m, m, log
#: of the smallest normal, a bound below the log of the largest; the arguments are <= 0
#: anyway). Adding 2^m + bias to an integer k puts k + bias in the low mantissa bits;
#: subtracting the bits of 2^m and shifting by m moves it into the exponent: 2^k.
EXP_CONSTANTS = {
    np.dtype(np.float32): (np.float32(2.0 ** 23 + 127), np.int32(0x4B000000), np.int32(23),
                           np.float32(-87.33654), np.float32(88.0)),
    np.dtype(np.float64): (np.float64(2.0 ** 52 + 1023), np.int64(0x4330000000000000),
                           np.int64(52), np.float64(-708.3964185322641), np.float64(709.0)),
}

#: Per dtype, the integer type of the same size: ``exp_row``'s scratch viewed as bits.
INT_OF = {np.dtype(np.float32): np.int32, np.dtype(np.float64): np.int64}


@njit(cache=True, fastmath={"contract"})
def exp_row(x, n, shift, scratch, scratch_bits, consts):
    """x[c] = exp(x[c] - shift) for c < n, in place; 0 below the smallest normal number.

    ``scratch`` is a buffer of x's dtype and ``scratch_bits`` the same memory viewed as the
    integer type of that size (``INT_OF``); ``consts`` the entry of ``EXP_CONSTANTS`` for
    the dtype. exp(t) = 2^k exp(r) with k = round(t / ln 2) and r = t - k ln 2 in
    [-ln2/2, ln2/2] (Cody and Waite: ln 2 in a short high part, so that k ln2_hi is exact,
    and a low part), exp(r) by its Taylor polynomial (degree 7 in float32, 13 in float64:
    truncation below a quarter of an ulp), 2^k built in the exponent bits. Measured against
    a long-double exp: within 0.6 ulp; exp(-inf) = 0 and exp(NaN) = NaN. Three loops that
    each vectorise (the scalar C library exp does not): the polynomial and k, then 2^k from
    k's bits, then the product. Only "contract" as fastmath flag: reassociation could merge
    the two halves of ln 2 and lose the point of splitting it.
    """
    magic_f, magic_i, mant_bits, lo, hi = consts
    ftype = x.dtype.type
    zero = ftype(0)
    for c in range(n):
        t = x[c] - shift
        e, k = exp_reduced(t, consts)                           # exp(r), k
        x[c] = zero if t < lo else e                            # exp(-inf) = 0, NaN stays
        scratch[c] = k + magic_f                                # k + bias in the low bits
    for c in range(n):
        scratch_bits[c] = (scratch_bits[c] - magic_i) << mant_bits   # ... moved to the exponent
    for c in range(n):
        x[c] *= scratch[c]                                      # exp(r) 2^k


@intrinsic
def _bits_float(typingctx, i, like):
    """The float of ``like``'s type whose bits are the low bits of integer ``i`` (Numba's
    integer arithmetic widens int32 to int64: the bits are cut back to the float's size)."""
    if isinstance(i, types.Integer) and isinstance(like, types.Float):
        def codegen(context, builder, sig, args):
            width = ir.IntType(like.bitwidth)
            bits = args[0]
            if i.bitwidth > like.bitwidth:
                bits = builder.trunc(bits, width)
            elif i.bitwidth < like.bitwidth:
                bits = builder.sext(bits, width)
            return builder.bitcast(bits, context.get_value_type(like))
        return like(i, like), codegen
    return None


@intrinsic
def _pow2(typingctx, k):
    """2^k as a float of ``k``'s type, for an integer-valued float ``k`` whose 2^k is a
    normal number (float32: -126 <= k <= 127), by ``exp_row``'s steps: k + 2^m + bias puts
    k + bias in the low mantissa bits, subtracting the bits of 2^m and shifting by m moves
    it into the exponent field (m = 23 for float32, 52 for float64). Written as LLVM
    instructions because Numba's own integer arithmetic widens int32 to int64, which halves
    the lanes of a float32 loop and adds shuffles between them (exp of a row of 128 float32
    numbers, ``exp_sum``: 0.75 ns a number that way, 0.64 this way, one thread)."""
    if isinstance(k, types.Float):
        m = 23 if k.bitwidth == 32 else 52
        bias = 127 if k.bitwidth == 32 else 1023

        def codegen(context, builder, sig, args):
            width = ir.IntType(k.bitwidth)
            shifted = builder.fadd(args[0], ir.Constant(args[0].type, float(2 ** m + bias)))
            two_m_bits = ir.Constant(width, (m + bias) << m)              # the bits of 2^m
            low = builder.sub(builder.bitcast(shifted, width), two_m_bits)
            return builder.bitcast(builder.shl(low, ir.Constant(width, m)),
                                   context.get_value_type(k))
        return k(k), codegen
    return None


@intrinsic
def _is_single(typingctx, x):
    """True for a float32 ``x``, False for a float64: a constant that LLVM folds, so that a
    branch on it costs nothing."""
    if isinstance(x, types.Float):
        def codegen(context, builder, sig, args):
            return context.get_constant(types.boolean, x.bitwidth == 32)
        return types.boolean(x), codegen
    return None


@njit(cache=True, fastmath={"contract"})
def exp_reduced(t, consts):
    """``(exp(r), k)`` with exp(t) = 2^k exp(r): the range reduction and the polynomial that
    ``exp_row`` and ``exp_scalar`` share (``exp_row``'s docstring: Cody and Waite's split of
    ln 2, the Taylor polynomial by Horner's rule, degree 7 in float32 and 13 in float64). t
    is clamped to [lo, hi] first, which keeps 2^k a normal number; each caller builds 2^k
    its own way and maps t < lo to 0."""
    magic_f, magic_i, mant_bits, lo, hi = consts
    ftype = type(lo)                                        # float32 or float64
    tc = min(max(t, lo), hi)
    k = np.floor(tc * ftype(LOG2E) + ftype(0.5))            # nearest integer to t / ln 2
    r = (tc - k * ftype(LN2_HI)) - k * ftype(LN2_LO)        # |r| <= ln2 / 2
    if _is_single(lo):                                      # a constant that LLVM folds
        e = ftype(1.0 / 5040)
        e = e * r + ftype(1.0 / 720)
        e = e * r + ftype(1.0 / 120)
        e = e * r + ftype(1.0 / 24)
        e = e * r + ftype(1.0 / 6)
    else:
        e = ftype(1.0 / 6227020800)
        e = e * r + ftype(1.0 / 479001600)
        e = e * r + ftype(1.0 / 39916800)
        e = e * r + ftype(1.0 / 3628800)
        e = e * r + ftype(1.0 / 362880)
        e = e * r + ftype(1.0 / 40320)
        e = e * r + ftype(1.0 / 5040)
        e = e * r + ftype(1.0 / 720)
        e = e * r + ftype(1.0 / 120)
        e = e * r + ftype(1.0 / 24)
        e = e * r + ftype(1.0 / 6)
    e = e * r + ftype(0.5)
    e = e * r + ftype(1.0)
    e = e * r + ftype(1.0)
    return e, k


@njit(cache=True, fastmath={"contract"})
def exp_scalar(t, consts):
    """exp(t) for a float32 or float64 ``t``, ``consts`` its dtype's ``EXP_CONSTANTS``: the
    arithmetic of ``exp_row`` (the same bits), with 2^k put together by bit casts in
    registers instead of through a scratch row, so that a loop that calls it stays one
    vectorised loop (LLVM inlines it; its own fastmath flags, "contract" only, stay with
    its instructions inside a caller that reassociates)."""
    lo = consts[3]                                          # log of the smallest normal
    ftype = type(lo)                                        # float32 or float64
    e, k = exp_reduced(t, consts)
    two_k = _pow2(k)                                        # in registers, all lanes
    return ftype(0) if t < lo else e * two_k               # exp(-inf) = 0, exp(NaN) = NaN


@njit(cache=True, fastmath={"reassoc", "contract"})
def exp_sum(x, n, shift, consts):
    """x[c] = exp(x[c] - shift) for c < n, in place, and returns their sum: one pass over
    the row (``exp_scalar``; the sum in any order, "reassoc")."""
    total = type(shift)(0)
    for c in range(n):
        e = exp_scalar(x[c] - shift, consts)
        x[c] = e
        total += e
    return total


@njit(cache=True)
def row_max(x, n):
    """max(x[:n]) for n >= 1 with eight running maxima: one running max is a chain of
    dependent compare-and-selects (latency-bound, about four cycles per element), and an
    IEEE max does not vectorise without assuming there is no NaN."""
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = x[0]
    c = 0
    while c + 8 <= n:
        m0, m1, m2, m3 = max(m0, x[c]), max(m1, x[c + 1]), max(m2, x[c + 2]), max(m3, x[c + 3])
        m4, m5, m6, m7 = max(m4, x[c + 4]), max(m5, x[c + 5]), max(m6, x[c + 6]), max(m7, x[c + 7])
        c += 8
    while c < n:
        m0 = max(m0, x[c])
        c += 1
    return max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))


# --------------------------------------------------------------------------- dropout


@njit(cache=True)
def keep_factors(seed, offset, base, n, p32, keep_scale, zero, dst):
    """dst[c] = keep_scale (1 / (1 - p)) if element base + c of the Philox stream is kept,
    else ``zero``, for c < n: the bits of ``minibert.rng.keep_mask``. ``p32`` is the rate
    as a float32 (the keep test compares float32 numbers). One Philox call serves four
    consecutive elements."""
    e = base
    end = base + n
    c = 0
    while e < end:
        block = e >> 2
        w0, w1, w2, w3 = philox_block(seed, offset, block)
        lane = e - 4 * block
        for t in range(lane, min(4, lane + end - e)):
            dst[c] = keep_scale if keep_from_word(select_word(t, w0, w1, w2, w3), p32) else zero
            c += 1
        e = 4 * (block + 1)


# --------------------------------------------------------------------------- key blocks


def key_block_ranges(key_mask, block_k):
    """Per sequence and key block, the span [lo, hi) from the block's first to its last real
    key; lo == hi for a block of padding only. key_mask (B, S) of 0/1; returns two
    (B, n_key_blocks) int64 arrays. A kernel that works on the spans skips the padding at
    the ends of a block and every block of padding only."""
    B, S = key_mask.shape
    nk = -(-S // block_k)
    real = np.zeros((B, nk * block_k), dtype=bool)
    real[:, :S] = key_mask != 0
    real = real.reshape(B, nk, block_k)                                     # (B, nk, block_k)
    any_real = real.any(axis=-1)
    first = real.argmax(axis=-1)
    last = block_k - 1 - real[..., ::-1].argmax(axis=-1)
    start = np.arange(nk, dtype=np.int64) * block_k                         # (nk,)
    lo = np.where(any_real, start + first, start).astype(np.int64)          # (B, nk)
    hi = np.where(any_real, start + last + 1, start).astype(np.int64)
    return np.ascontiguousarray(lo), np.ascontiguousarray(hi)


def kernel_args(q, mask, scale, dropout_p, seed, offset, block_k):
    """What the tiled attention kernels take besides the tensors, from validated arguments:
    ``(key_bias, key_lo, key_hi, scale, dropout_p, keep_scale, seed, offset)``.

    ``mask`` is None, a checked (B, S) 0/1 NumPy array or a ``minibert.validation.
    AttentionMask``, which keeps the tables it builds. ``key_bias`` (B, S) is the additive
    key mask in q's dtype (0 at real keys, -inf at
    padding: exp gives exactly 0 there); ``key_lo``/``key_hi`` the spans of
    ``key_block_ranges`` for blocks of ``block_k`` keys (at most S); ``scale`` and
    ``keep_scale`` = 1 / (1 - p) have q's dtype, ``dropout_p`` is float32 (the keep test
    compares in float32), ``seed`` and ``offset`` uint64. Typed scalars matter: in Numba a
    float32 mixed with a Python float silently becomes float64.
    """
    B, _, S, _ = q.shape
    block_k = max(1, min(block_k, S))           # no scratch beyond the sequence
    ftype = q.dtype.type
    if mask is None:
        mask = AttentionMask(np.ones((B, S), dtype=bool))
    elif not isinstance(mask, AttentionMask):   # a checked 0/1 array
        mask = AttentionMask(np.asarray(mask))
    # an AttentionMask keeps both: a model's layers build them once per forward
    key_bias = mask.key_bias(q.dtype)                                            # (B, S)
    key_lo, key_hi = mask.key_spans(block_k, key_block_ranges)
    # the keep test compares float32 numbers (minibert.rng); 1 / (1 - p) in q's dtype
    return (key_bias, key_lo, key_hi, ftype(scale), np.float32(dropout_p),
            ftype(1.0 / (1.0 - dropout_p)), np.uint64(seed), np.uint64(offset))
