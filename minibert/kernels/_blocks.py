"""Building blocks shared by the production kernels: exp, row max, Philox keep factors,
key-block spans, the compiler flags, and the argument checks of fused attention.

Everything here is imported by name by the kernels that use it (``attention_cpu.py``,
``cross_entropy_cpu.py``, ``__init__.py``) and may be by the ladder's rungs
(``ladder/``), which derive it: the vectorised exp and the online softmax that uses it
are explained in ``ladder/attn_v4_tiled.py`` ("Arithmetic"). Production code imports from
this module, ``_threads.py`` and ``philox_cpu.py``, never from a rung, and nothing here
imports ``minibert.ops`` (the ops import the kernels).

Compiled pieces (Numba, ``cache=True``):

* ``exp_row``: exp of a row in place, in a form LLVM vectorises, with ``EXP_CONSTANTS``
  and ``INT_OF`` giving its per-dtype constants and integer type;
* ``row_max``: the max of a row with eight running maxima;
* ``keep_factors``: a row of dropout factors (0 or 1 / (1 - p)) from the Philox stream.

Python pieces:

* ``key_block_ranges`` and ``kernel_args``: the additive key mask and the span of real keys
  of every key block, with the typed scalars the attention kernels take;
* ``check_blocks``: block sizes are positive integers;
* ``check_tensors``, ``check_mask``, ``check_scalars``, ``reject_gpu_arrays`` and the two that
  combine them, ``forward_args`` and ``backward_args``: the validation of
  ``fused_attention_forward`` / ``fused_attention_backward``, with their messages;
* ``check_cuda_tensors``, ``check_cuda_mask``, ``cuda_forward_args`` and
  ``cuda_backward_args``: the same for GPU arrays (CuPy, anything with
  ``__cuda_array_interface__``, Numba device arrays), before any CUDA kernel launches.
  They need neither CuPy nor ``numba.cuda``: they read only attributes of the arrays.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
from numba import njit

from minibert.backend import is_device_array
from minibert.rng import check_u64

from .philox_cpu import keep_from_word, philox_block

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
    a long-double exp: within 0.6 ulp; exp(-inf) = 0. Three loops that each vectorise (the
    scalar C library exp does not): the polynomial and k, then 2^k from k's bits, then the
    product. Only "contract" as fastmath flag: reassociation could merge the two halves of
    ln 2 and lose the point of splitting it.
    """
    magic_f, magic_i, mant_bits, lo, hi = consts
    ftype = x.dtype.type
    zero = ftype(0)
    for c in range(n):
        t = x[c] - shift
        tc = min(max(t, lo), hi)                                # keeps 2^k a normal number
        k = np.floor(tc * ftype(LOG2E) + ftype(0.5))            # nearest integer to t / ln 2
        r = (tc - k * ftype(LN2_HI)) - k * ftype(LN2_LO)        # |r| <= ln2 / 2
        # Taylor polynomial of exp(r) by Horner's rule; x.itemsize is a compile-time constant
        if x.itemsize == 4:
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
        x[c] = e if t >= lo else zero                           # exp(-inf) = 0
        scratch[c] = k + magic_f                                # k + bias in the low bits
    for c in range(n):
        scratch_bits[c] = (scratch_bits[c] - magic_i) << mant_bits   # ... moved to the exponent
    for c in range(n):
        x[c] *= scratch[c]                                      # exp(r) 2^k


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
            w = w0 if t == 0 else (w1 if t == 1 else (w2 if t == 2 else w3))
            dst[c] = keep_scale if keep_from_word(w, p32) else zero
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

    ``key_bias`` (B, S) is the additive key mask in q's dtype (0 at real keys, -inf at
    padding: exp gives exactly 0 there); ``key_lo``/``key_hi`` the spans of
    ``key_block_ranges`` for blocks of ``block_k`` keys (at most S); ``scale`` and
    ``keep_scale`` = 1 / (1 - p) have q's dtype, ``dropout_p`` is float32 (the keep test
    compares in float32), ``seed`` and ``offset`` uint64. Typed scalars matter: in Numba a
    float32 mixed with a Python float silently becomes float64.
    """
    B, _, S, _ = q.shape
    block_k = max(1, min(block_k, S))           # no scratch beyond the sequence
    ftype = q.dtype.type
    real = np.ones((B, S), dtype=bool) if mask is None else np.asarray(mask) != 0
    key_bias = np.where(real, ftype(0), ftype(-np.inf)).astype(q.dtype)          # (B, S)
    key_lo, key_hi = key_block_ranges(real, block_k)
    # the keep test compares float32 numbers (minibert.rng); 1 / (1 - p) in q's dtype
    return (key_bias, key_lo, key_hi, ftype(scale), np.float32(dropout_p),
            ftype(1.0 / (1.0 - dropout_p)), np.uint64(seed), np.uint64(offset))


def check_blocks(block_q, block_k):
    """Raises ValueError unless both block sizes are positive integers (bool is not)."""
    for name, value in (("block_q", block_q), ("block_k", block_k)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}={value!r} is invalid, expected a positive integer")


# --------------------------------------------------------------------------- argument checks


def reject_gpu_arrays(named):
    """Raises TypeError if any of ``named`` (a list of (name, array)) is a GPU array
    (``minibert.backend.is_device_array``) on the CPU path: NumPy and GPU arrays are not
    mixed in one call, and the CPU kernels are never handed a GPU array."""
    for name, x in named:
        if is_device_array(x):
            raise TypeError(f"{name} is a GPU array ({type(x).__module__}.{type(x).__name__}) "
                            "while q is a NumPy array, expected all arrays on one device")


def check_tensors(named):
    """Rank 4, C-contiguous, float32/float64, one shape and one dtype for all of ``named``
    (a list of (name, array)); the first one sets the shape and dtype. Raises TypeError or
    ValueError naming the argument."""
    first_name, first = named[0]
    for name, x in named:
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{name} has type {type(x).__name__}, expected a NumPy or CuPy array")
        if x.ndim != 4:
            raise ValueError(f"{name} has shape {tuple(x.shape)}, expected rank 4 (B, A, S, D)")
        if x.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} has dtype {x.dtype}, expected float32 or float64")
        if x is not first:
            if tuple(x.shape) != tuple(first.shape):
                raise ValueError(f"{name} has shape {tuple(x.shape)}, expected the shape of "
                                 f"{first_name} {tuple(first.shape)} (B, A, S, D)")
            if x.dtype != first.dtype:
                raise TypeError(f"{name} has dtype {x.dtype}, expected the dtype of "
                                f"{first_name} ({first.dtype})")
        if not x.flags.c_contiguous:
            raise ValueError(f"{name} with shape {tuple(x.shape)} and strides {x.strides} is not "
                             "C-contiguous, expected a C-contiguous array "
                             "(np.ascontiguousarray)")


def check_mask(mask, B, S):
    """The key padding mask: None, or a NumPy (B, S) array of 0/1 (bool, integer or float;
    1 = attend, 0 = padding). Returns it unchanged; raises TypeError or ValueError (an
    additive mask, with large negative values, is rejected by name)."""
    if mask is None:
        return None
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"mask has type {type(mask).__name__}, expected a NumPy array (B, S) "
                        "of 0/1 or None")
    if mask.ndim != 2 or tuple(mask.shape) != (B, S):
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected (B, S) = {(B, S)} "
                         "with 1 = attend and 0 = padding")
    if mask.dtype.kind not in "biuf":
        raise TypeError(f"mask has dtype {mask.dtype}, expected bool, integer or float 0/1")
    valid = (mask == 0) | (mask == 1)
    if not bool(np.all(valid)):
        bad = mask[~valid].reshape(-1)[0]
        raise ValueError(f"mask contains the value {bad.item()!r}, expected only 0 (padding) "
                         "and 1 (attend); pass the 0/1 mask, not an additive one")
    return mask


def check_scalars(scale, dropout_p, seed, offset, D):
    """``(scale, dropout_p, seed, offset)`` as float, float, int, int: ``scale`` a finite
    real or None (then 1/sqrt(D)), ``dropout_p`` a real in [0, 1), seed and offset integers
    in [0, 2**64) (``minibert.rng.check_u64``). Raises TypeError or ValueError."""
    if scale is not None and (isinstance(scale, (bool, np.bool_))
                              or not isinstance(scale, numbers.Real)):
        raise TypeError(f"scale={scale!r} has type {type(scale).__name__}, expected a real "
                        "number or None (1/sqrt(D))")
    if scale is not None and not math.isfinite(scale):
        raise ValueError(f"scale={scale!r} is not finite, expected a finite number or None")
    if isinstance(dropout_p, (bool, np.bool_)) or not isinstance(dropout_p, numbers.Real):
        raise TypeError(f"dropout_p={dropout_p!r} has type {type(dropout_p).__name__}, "
                        "expected a float in [0, 1)")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p={dropout_p!r} is out of range, expected 0 <= dropout_p < 1")
    seed = check_u64("seed", seed)
    offset = check_u64("offset", offset)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    return scale, float(dropout_p), seed, offset


def forward_args(q, k, v, mask, scale, dropout_p, seed, offset):
    """Validates the inputs of fused attention's forward; returns ``(mask, scale, dropout_p,
    seed, offset)`` as the CPU kernels take them (``kernel_args`` types them further)."""
    reject_gpu_arrays([("q", q), ("k", k), ("v", v), ("mask", mask)])
    check_tensors([("q", q), ("k", k), ("v", v)])
    B, A, S, D = q.shape
    mask = check_mask(mask, B, S)
    return (mask,) + tuple(check_scalars(scale, dropout_p, seed, offset, D))


def backward_args(dout, q, k, v, out, lse, mask, scale, dropout_p, seed, offset):
    """Validates the inputs of fused attention's backward (``out`` and ``dout`` like q,
    ``lse`` (B, A, S) of q's dtype, C-contiguous); returns what ``forward_args`` returns."""
    reject_gpu_arrays([("dout", dout), ("q", q), ("k", k), ("v", v), ("out", out),
                       ("lse", lse), ("mask", mask)])
    check_tensors([("q", q), ("k", k), ("v", v), ("out", out), ("dout", dout)])
    B, A, S, D = q.shape
    if not isinstance(lse, np.ndarray):
        raise TypeError(f"lse has type {type(lse).__name__}, expected a NumPy array (B, A, S)")
    if tuple(lse.shape) != (B, A, S):
        raise ValueError(f"lse has shape {tuple(lse.shape)}, expected (B, A, S) = {(B, A, S)}")
    if lse.dtype != q.dtype:
        raise TypeError(f"lse has dtype {lse.dtype}, expected the dtype of q ({q.dtype})")
    if not lse.flags.c_contiguous:
        raise ValueError(f"lse with strides {lse.strides} is not C-contiguous, expected a "
                         "C-contiguous array")
    mask = check_mask(mask, B, S)
    return (mask,) + tuple(check_scalars(scale, dropout_p, seed, offset, D))


# --------------------------------------------------------------------------- GPU arguments


def _c_contiguous(x):
    """C-contiguity of a CuPy array (``flags``), a Numba device array
    (``is_c_contiguous()``) or another ``__cuda_array_interface__`` object (strides None or
    the C strides)."""
    if hasattr(x, "is_c_contiguous"):
        return bool(x.is_c_contiguous())
    flags = getattr(x, "flags", None)
    if flags is not None and hasattr(flags, "c_contiguous"):
        return bool(flags.c_contiguous)
    cai = getattr(x, "__cuda_array_interface__", None)
    if cai is None:
        return False
    if cai.get("strides") is None:
        return True
    expected, step = [], np.dtype(cai["typestr"]).itemsize
    for n in reversed(cai["shape"]):
        expected.append(step)
        step *= n
    return tuple(cai["strides"]) == tuple(reversed(expected))


def check_cuda_tensors(named):
    """``check_tensors`` for GPU arrays: each of ``named`` (a list of (name, array)) a GPU
    array (``minibert.backend.is_device_array``) of the first one's kind (CuPy or Numba),
    rank 4, float32/float64, C-contiguous, with the first one's shape and dtype (and, for
    CuPy, device). Raises TypeError or ValueError naming the argument."""
    first_name, first = named[0]
    for name, x in named:                   # the kinds first: the checks below read attributes
        if not is_device_array(x):
            raise TypeError(f"{name} has type {type(x).__module__}.{type(x).__name__}, expected a "
                            f"GPU array like {first_name} (CuPy or a Numba device array)")
        if type(x).__module__.split(".")[0] != type(first).__module__.split(".")[0]:
            raise TypeError(f"{name} has type {type(x).__module__}.{type(x).__name__}, expected "
                            f"the array kind of {first_name} ({type(first).__name__})")
    for name, x in named:
        shape = tuple(x.shape)
        if len(shape) != 4:
            raise ValueError(f"{name} has shape {shape}, expected rank 4 (B, A, S, D)")
        if np.dtype(x.dtype) not in FLOAT_DTYPES:
            raise TypeError(f"{name} has dtype {x.dtype}, expected float32 or float64")
        if x is not first:
            if shape != tuple(first.shape):
                raise ValueError(f"{name} has shape {shape}, expected the shape of "
                                 f"{first_name} {tuple(first.shape)} (B, A, S, D)")
            if np.dtype(x.dtype) != np.dtype(first.dtype):
                raise TypeError(f"{name} has dtype {x.dtype}, expected the dtype of "
                                f"{first_name} ({first.dtype})")
            dev, first_dev = getattr(x, "device", None), getattr(first, "device", None)
            if hasattr(dev, "id") and hasattr(first_dev, "id") and dev.id != first_dev.id:
                raise ValueError(f"{name} is on GPU {dev.id}, expected the GPU of {first_name} "
                                 f"({first_dev.id})")
        if not _c_contiguous(x):
            raise ValueError(f"{name} with shape {shape} and strides {tuple(x.strides)} is not "
                             "C-contiguous, expected a C-contiguous array (ascontiguousarray)")
    if first.shape[3] == 0:
        raise ValueError(f"{first_name} has shape {tuple(first.shape)}, expected a head size "
                         "D >= 1 on the GPU")


def check_cuda_mask(mask, B, S, cupy_inputs=True):
    """``check_mask`` for the GPU path: None, a NumPy (B, S) array of 0/1, a CuPy one (with
    CuPy inputs: ``cupy_inputs``), or a Numba device array (copied to the host, B S
    numbers). Returns None, the NumPy mask or the CuPy mask; checking a CuPy mask's values
    waits for the device, as the textbook op's ``additive_mask`` does."""
    if mask is None:
        return None
    if isinstance(mask, np.ndarray):
        return check_mask(mask, B, S)
    if not is_device_array(mask):
        raise TypeError(f"mask has type {type(mask).__name__}, expected a NumPy, CuPy or Numba "
                        "device array (B, S) of 0/1, or None")
    if hasattr(mask, "copy_to_host"):                       # Numba: small, check on the host
        return check_mask(mask.copy_to_host(), B, S)
    if not type(mask).__module__.startswith("cupy") or not cupy_inputs:
        raise TypeError(f"mask has type {type(mask).__name__}, expected a NumPy, CuPy or Numba "
                        "device array (B, S) of 0/1, or None")
    if mask.ndim != 2 or tuple(mask.shape) != (B, S):
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected (B, S) = {(B, S)} "
                         "with 1 = attend and 0 = padding")
    if np.dtype(mask.dtype).kind not in "biuf":
        raise TypeError(f"mask has dtype {mask.dtype}, expected bool, integer or float 0/1")
    valid = (mask == 0) | (mask == 1)
    if not bool(valid.all()):
        bad = mask[~valid].reshape(-1)[0]
        raise ValueError(f"mask contains the value {bad.item()!r}, expected only 0 (padding) "
                         "and 1 (attend); pass the 0/1 mask, not an additive one")
    return mask


def cuda_forward_args(q, k, v, mask, scale, dropout_p, seed, offset):
    """Validates the inputs of fused attention's forward on GPU arrays; returns ``(mask,
    scale, dropout_p, seed, offset)`` as ``attention_cuda.attention_forward`` takes them."""
    check_cuda_tensors([("q", q), ("k", k), ("v", v)])
    B, A, S, D = q.shape
    mask = check_cuda_mask(mask, B, S, type(q).__module__.startswith("cupy"))
    return (mask,) + tuple(check_scalars(scale, dropout_p, seed, offset, D))


def cuda_backward_args(dout, q, k, v, out, lse, mask, scale, dropout_p, seed, offset):
    """``cuda_forward_args`` for the backward (``lse`` (B, A, S) of q's kind and dtype)."""
    check_cuda_tensors([("q", q), ("k", k), ("v", v), ("out", out), ("dout", dout)])
    B, A, S, D = q.shape
    if not is_device_array(lse) or type(lse).__module__.split(".")[0] != type(q).__module__.split(".")[0]:
        raise TypeError(f"lse has type {type(lse).__module__}.{type(lse).__name__}, expected a "
                        f"GPU array (B, A, S) of the kind of q ({type(q).__name__})")
    if tuple(lse.shape) != (B, A, S):
        raise ValueError(f"lse has shape {tuple(lse.shape)}, expected (B, A, S) = {(B, A, S)}")
    if np.dtype(lse.dtype) != np.dtype(q.dtype):
        raise TypeError(f"lse has dtype {lse.dtype}, expected the dtype of q ({q.dtype})")
    if not _c_contiguous(lse):
        raise ValueError(f"lse with strides {tuple(lse.strides)} is not C-contiguous, expected "
                         "a C-contiguous array")
    mask = check_cuda_mask(mask, B, S, type(q).__module__.startswith("cupy"))
    return (mask,) + tuple(check_scalars(scale, dropout_p, seed, offset, D))
