"""GELU of ``x + bias`` as fused Numba passes, forward and backward (NumPy float32/float64).

The function and its gradient are ``minibert/ops/gelu.py``'s (its docstring derives them):
``y = GELU(z)`` with ``z = x + bias``, ``dx = dy GELU'(z)`` and ``dbias = sum_n dx``; exact
(``"none"``: ``GELU(z) = z Phi(z)``, ``GELU'(z) = Phi(z) + z phi(z)``) and tanh forms.
``bias`` may be None (plain GELU).

The forward makes one pass per row: z, GELU(z) and GELU'(z), writing y and the slope
GELU'(z); or, where no backward follows (inference, ``grad=False``), y alone, which may then
overwrite x. The backward is then ``dx = dy * slope`` and, with a
bias, dx added into a float64 partial sum of dbias: blocks of ``ROWS_PER_BLOCK`` rows, block
b adding its rows in order into row b of an (n_blocks, C) buffer, so that rows can be split
between threads (as in ``layernorm_cpu.py``).

What the forward saves: the slope, an array of x's size (the readable op saves Phi or
tanh u, the same size, and x). The alternative that saves memory keeps only x and bias and
recomputes z, Phi and phi in the backward; it keeps x alive where the slope replaces it,
so the two hold the same memory, and the slope is faster. Measured on one thread, float32,
(1024, 3072) (BERT-base's intermediate activations for 1024 tokens), exact form, outputs
allocated by each call, compilation excluded (2-core AMD EPYC, AVX2, Numba 0.68, NumPy
2.4); ns per element, forward + backward, the median over 6 runs of the median of 11 calls
(from run to run they spread by some 25% on this shared machine):

    keep the slope (this module, two loops)    4.3 + 0.7 = 5.1
    keep x and bias, recompute in backward     3.9 + 4.4 = 8.3   (a variant of this module)
    readable op (erf ufunc, keeps Phi)         ~12 + ~5  = ~17

    export MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296
    python benchmarks/bench_row_kernels.py gelu

(the variables: see ``layernorm_cpu.py``). The recomputing backward repeats the forward's
arithmetic; writing the slope costs the forward ~0.4 ns per element and turns the backward
into a streaming multiply. The tanh form: this module ~3.4 to 4.4 + 0.7 to 0.9, the
readable op ~6 to 8 + 5 to 8 ns per element.

The float32 forward was then made one loop per row: it first wrote z and the two parts of
exp (p and the bits of 2^k) to scratch rows in one loop and read them back in a second,
since 2^k was read from an int64 scratch row through a float64 view; a bit cast in a
register (``_blocks._bits_float``) makes that round trip unnecessary, with the same bits.
Same command, two runs: forward 2.85 and 3.60 ns per element (exact form), 3.12 and 3.22
(tanh); in inference (``grad=False``: no slope), one run, 2.56 (exact) and 2.26 (tanh).
On two threads at (4096, 1536), in one run: 3.7-4.3 before, 2.8-3.2 after, and 1.8 in
inference writing y over x (``value_rows_*_in_place``).

float64: the readable op's formulas, element by element, with ``math.erf``, ``math.exp``
and ``math.tanh`` (the C library's, as the readable op's erf ufunc), so that float64 results
agree with the readable op to rounding and the float64 gradient checks see float64
accuracy. These are scalar calls (~18, ~6 and ~22 ns per element here) that keep the loop
from vectorising; float64 is for checking, not for speed.

float32: Phi and phi without erf, in float64 arithmetic that vectorises (four lanes of
AVX2), each result rounded to float32 once. For a = |z|, with e = exp(-a^2 / 2):

    Phi(-a) = e R(a),   R(a) = Phi(-a) exp(a^2 / 2) = erfcx(a / sqrt 2) / 2
    Phi(z)  = e R(a) for z < 0,   1 - e R(a) for z >= 0,   phi(z) = e / sqrt(2 pi)

R is smooth and slowly varying (1/2 at 0, ~1 / (a sqrt(2 pi)) for large a), so a rational
function fits it: ``_R_NUM`` / ``_R_DEN``, degrees 5 / 6, fitted to the minimax relative
error over [0, 15] (linearised least squares, reweighted by Lawson's method, on 30001
points, against 0.5 erfc(a / sqrt 2) exp(a^2 / 2) from ``math``): max relative error
8.9e-11. exp is ``_exp``: 2^k (built from k's bits) times a Taylor polynomial of
degree 8 on |r| <= ln2 / 2, relative error < 2.1e-10. So Phi carries a relative error below
5e-10, 0.01 ulp of float32, before its one rounding: the float32 Phi is within 0.51 ulp of
the true value wherever that is a normal number (z > -12.95), which
tests/kernels/test_gelu_kernel.py measures against ``math.erfc`` on a dense grid with both
tails (measured there: 0.5025 ulp; 0.5034 on 2^20 points over [-16, 16]).
For a > 15 (Phi(-15) = 3.7e-51, far below float32's smallest subnormal) e is set to 0, so
z = +-inf give the readable op's results (inf, and NaN where it multiplies inf by 0).

The tanh form computes ``(1 + tanh u) / 2`` as ``s = 1 / (1 + exp(-2u))``, and the slope's
``(1 - tanh^2 u) / 2 = 2 s (1 - s)`` with ``1 - s = exp(-2u) s``: no cancellation, where the
readable op's ``1 + t`` and ``1 - t * t`` lose digits as t -> -1 or 1.

Numba's default error model checks every division for zero (to raise ZeroDivisionError),
which keeps a loop from vectorising; the kernels use NumPy's (inf or NaN instead).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from minibert.constants import BETA, INV_SQRT_2PI, KAPPA, SQRT_HALF

from .. import _numba_cache  # noqa: F401  (before any @njit: see minibert/_numba_cache.py)
from ._blocks import _bits_float
from ._rows import dy_rows, rows_of, writes_over
from ._threads import run_rows

#: Rows per partial sum of dbias; each block writes one row of the buffer.
ROWS_PER_BLOCK = 32
#: Fused multiply-adds only.
FASTMATH = {"contract"}
_FLAGS = dict(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")

# R(a) = erfcx(a / sqrt 2) / 2 ~ (sum_i _R_NUM[i] a^i) / (sum_i _R_DEN[i] a^i) on [0, 15]
_R_NUM = (0.4999999999555062, 0.5083719037560824, 0.2513166206573215, 0.0716247489299536,
          0.01171472601125352, 0.000897002881857345)
_R_DEN = (1.0, 1.8146283598052853, 1.4504973237630567, 0.6592254755783976,
          0.18179043124728952, 0.02936428662243814, 0.002248455379634834)
_N0, _N1, _N2, _N3, _N4, _N5 = _R_NUM
_D1, _D2, _D3, _D4, _D5, _D6 = _R_DEN[1:]
#: |z| beyond which e = exp(-z^2 / 2) is taken as 0 (the end of R's fit; every float32
#: result it touches is then exactly what an exact e would give)
_A_CUT = 15.0
#: exp's argument range: 2^k stays a normal float64
_W_MAX = 708.0
_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453


@njit(inline="always", **_FLAGS)
def _exp(w):
    """exp(w) for float64 w in [-_W_MAX, _W_MAX]: 2^k exp(r) with k = round(w / ln 2) and
    r = w - k ln 2, |r| <= ln2 / 2, exp(r) by its Taylor polynomial of degree 8 (remainder
    < 0.347^9 / 9! = 2.0e-10 relative), 2^k built from its bits, (k + 1023) << 52, and
    read as a float64 (``_blocks._bits_float``, a bit cast that stays in a register)."""
    k = np.floor(w * _LOG2E + 0.5)
    r = w - k * _LN2
    p = 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    # float64 -> int32 converts four lanes at once on AVX2 (-> int64 does not)
    return p * _bits_float((np.int64(np.int32(k)) + 1023) << 52, w)


@njit(inline="always", **_FLAGS)
def _z(xr, br, has_bias, j):
    """z = x + bias (in x's dtype, as the readable op), widened to float64."""
    if has_bias:
        return np.float64(xr[j] + br[j])
    return np.float64(xr[j])


@njit(inline="always", **_FLAGS)
def _exp_arg(z, tanh_form):
    """The argument w of the one exp per element: -z^2 / 2 (exact form) or -2u (tanh form,
    u = beta (z + kappa z^3)), clamped to exp's range; and w before clamping."""
    if tanh_form:
        w = -2.0 * BETA * (z + KAPPA * (z * z * z))
    else:
        w = -0.5 * (z * z)
    return min(max(w, -_W_MAX), _W_MAX), w


@njit(inline="always", **_FLAGS)
def _cdf_and_slope_parts(z, e, w, tanh_form):
    """From z and its exp e = exp(w) (w before clamping): (s, t) with GELU(z) = z s and
    GELU'(z) = s + z t.

    exact form: s = Phi(z) and t = phi(z) = e / sqrt(2 pi).
    tanh form:  s = (1 + tanh u) / 2 and t = 2 s (1 - s) beta (1 + 3 kappa z^2)."""
    if tanh_form:
        if w < -_W_MAX:                                     # u > 354: s = 1 to rounding
            s, one_minus_s = 1.0, 0.0
        elif w > _W_MAX:                                    # u < -354: s = 0 to rounding
            s, one_minus_s = 0.0, 1.0
        else:
            s = 1.0 / (1.0 + e)                            # e = exp(-2u)
            one_minus_s = e * s
        t = 2.0 * s * one_minus_s * BETA * (1.0 + 3.0 * KAPPA * (z * z))
        return s, t
    a = abs(z)
    if a > _A_CUT:
        e = 0.0
    ac = min(a, _A_CUT)
    num = ((((_N5 * ac + _N4) * ac + _N3) * ac + _N2) * ac + _N1) * ac + _N0
    den = (((((_D6 * ac + _D5) * ac + _D4) * ac + _D3) * ac + _D2) * ac + _D1) * ac + 1.0
    q = e * (num / den)                                     # Phi(-|z|)
    s = q if z < 0.0 else 1.0 - q
    return s, e * INV_SQRT_2PI


@njit(inline="always", **_FLAGS)
def _forward_rows(x, bias, has_bias, tanh_form, y, slope, with_slope, r0, r1):
    """Rows r0 <= r < r1 of x (N, C): y = GELU(x + bias) and, ``with_slope``, slope =
    GELU'(x + bias), both (N, C) in x's dtype (bias (C,) read only when ``has_bias``), exact
    or tanh form. y may be x itself: element j of x is read before element j of y is
    written. Inlined into one kernel per (form, with_slope), where both are constants:
    with the form a runtime value, the vectorised loops computed both forms and selected
    (measured 5.1 against 3.6 ns per element)."""
    N, C = x.shape
    for r in range(r0, r1):
        xr, yr, gr = x[r], y[r], slope[r]
        if x.itemsize == 8:
            # float64: the readable op's lines (forward and backward), element by element
            for j in range(C):
                z = _z(xr, bias, has_bias, j)
                if tanh_form:
                    t = math.tanh(BETA * (z + KAPPA * (z * z * z)))
                    du_dz = BETA * (1.0 + 3.0 * KAPPA * (z * z))
                    yr[j] = 0.5 * z * (1.0 + t)
                    if with_slope:
                        gr[j] = 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * du_dz
                else:
                    cdf = 0.5 * (1.0 + math.erf(z * SQRT_HALF))
                    yr[j] = z * cdf
                    if with_slope:
                        gr[j] = cdf + z * (INV_SQRT_2PI * math.exp(-0.5 * (z * z)))
        else:
            for j in range(C):
                z = _z(xr, bias, has_bias, j)
                w_clamped, w = _exp_arg(z, tanh_form)
                s, t = _cdf_and_slope_parts(z, _exp(w_clamped), w, tanh_form)
                yr[j] = z * s                                   # y = z Phi(z), z s(u)
                if with_slope:
                    gr[j] = s + z * t                           # GELU'(z)


@njit(**_FLAGS)
def forward_rows_exact(x, bias, has_bias, y, slope, r0, r1):
    """``_forward_rows`` of the exact form, with the slope."""
    _forward_rows(x, bias, has_bias, False, y, slope, True, r0, r1)


@njit(**_FLAGS)
def forward_rows_tanh(x, bias, has_bias, y, slope, r0, r1):
    """``_forward_rows`` of the tanh form, with the slope."""
    _forward_rows(x, bias, has_bias, True, y, slope, True, r0, r1)


@njit(**_FLAGS)
def value_rows_exact(x, bias, has_bias, y, r0, r1):
    """``_forward_rows`` of the exact form, y only (inference: no backward follows)."""
    _forward_rows(x, bias, has_bias, False, y, y, False, r0, r1)


@njit(**_FLAGS)
def value_rows_tanh(x, bias, has_bias, y, r0, r1):
    """``_forward_rows`` of the tanh form, y only."""
    _forward_rows(x, bias, has_bias, True, y, y, False, r0, r1)


@njit(**_FLAGS)
def value_rows_exact_in_place(x, bias, has_bias, r0, r1):
    """``value_rows_exact`` writing y over x. Its own kernel: LLVM vectorises a loop that
    reads and writes one array, but with x and y two arguments it checks at run time
    whether they overlap, and for y = x runs its scalar loop (measured 10 against 2.6 ns
    per element)."""
    _forward_rows(x, bias, has_bias, False, x, x, False, r0, r1)


@njit(**_FLAGS)
def value_rows_tanh_in_place(x, bias, has_bias, r0, r1):
    """``value_rows_tanh`` writing y over x."""
    _forward_rows(x, bias, has_bias, True, x, x, False, r0, r1)


@njit(**_FLAGS)
def backward_blocks(dy, slope, has_bias, dx, dbias_part, b0, b1):
    """Blocks b0 <= b < b1 of ROWS_PER_BLOCK rows of dy (N, C): dx = dy slope for those
    rows and, when ``has_bias``, row b of dbias_part (n_blocks, C) float64, the block's sum
    of dx (without a bias dbias_part is (n_blocks, 0) and not written)."""
    N, C = dy.shape
    for b in range(b0, b1):
        part = dbias_part[b]                                    # (C,), or (0,) without bias
        if has_bias:
            for c in range(C):
                part[c] = 0.0
        for r in range(b * ROWS_PER_BLOCK, min(N, (b + 1) * ROWS_PER_BLOCK)):
            dyr, gr, dxr = dy[r], slope[r], dx[r]               # (C,) each
            for c in range(C):
                dxr[c] = dyr[c] * gr[c]                         # undoes y = GELU(z)
            if has_bias:
                for c in range(C):
                    part[c] += dxr[c]                           # undoes z = x + bias


@njit(**_FLAGS)
def cdf_rows(z, out, r0, r1):
    """Rows r0 <= r < r1 of z (N, C) float32: out = Phi(z), the float32 path's normal CDF
    (for the tests, which measure its error)."""
    N, C = z.shape
    for r in range(r0, r1):
        zr, outr = z[r], out[r]
        for j in range(C):
            zj = np.float64(zr[j])
            w_clamped, w = _exp_arg(zj, False)
            s, _ = _cdf_and_slope_parts(zj, _exp(w_clamped), w, False)
            outr[j] = s


def _check_approximate(approximate):
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate={approximate!r} is not known, expected 'none' or 'tanh'")
    return approximate == "tanh"


def bias_forward(x, bias, approximate="none", grad=True, out=None):
    """``(y, saved)`` of ``minibert.ops.gelu.bias_forward(x, bias, approximate)`` (bias None:
    of ``gelu.forward(x, approximate)``) for arrays the op has validated: x (..., C) and bias
    (C,) NumPy float32/float64 of one dtype, any layout. ``saved`` is the argument list of
    ``bias_backward`` and ``backward`` after dy: GELU'(x + bias), of x's shape, and what the
    backward needs to know of the shapes. With ``grad`` False, saved is None and the slope
    is not computed. ``out``: a C-contiguous array of x's shape and dtype to write y into
    (x itself if x is C-contiguous), else y is a new array."""
    tanh_form = _check_approximate(approximate)
    C = x.shape[-1]
    x2 = rows_of(x, C)                                          # (N, C)
    has_bias = bias is not None
    b = np.ascontiguousarray(bias) if has_bias else np.empty(0, dtype=x.dtype)
    y = np.empty_like(x2) if out is None else out.reshape(x2.shape)   # (N, C)
    # y over x is allowed (element j of x is read before element j of y is written)
    over_x = out is not None and writes_over(y, x2, ("bias", bias))
    if not grad and over_x:
        kernel = value_rows_tanh_in_place if tanh_form else value_rows_exact_in_place
        run_rows(kernel, x2.shape[0], x2, b, has_bias)
        return y.reshape(x.shape), None
    if not grad:
        run_rows(value_rows_tanh if tanh_form else value_rows_exact, x2.shape[0], x2, b,
                 has_bias, y)
        return y.reshape(x.shape), None
    slope = np.empty_like(x2)                                   # (N, C)
    kernel = forward_rows_tanh if tanh_form else forward_rows_exact
    run_rows(kernel, x2.shape[0], x2, b, has_bias, y, slope)
    return y.reshape(x.shape), (slope, has_bias, x.shape)


def bias_backward(dy, slope, has_bias, shape):
    """``(dx, dbias)`` from ``bias_forward``'s ``saved``: dx of x's shape, dbias (C,) (None
    when the forward had no bias), in x's dtype (dy is converted to it)."""
    N, C = slope.shape
    dy2 = dy_rows(dy, shape, slope)                             # (N, C)
    dx = np.empty_like(slope)                                   # (N, C)
    n_blocks = -(-N // ROWS_PER_BLOCK)
    part = np.empty((n_blocks, C if has_bias else 0), dtype=np.float64)
    run_rows(backward_blocks, n_blocks, dy2, slope, has_bias, dx, part)
    dbias = part.sum(axis=0).astype(slope.dtype) if has_bias else None   # (C,)
    return dx.reshape(shape), dbias


def backward(dy, slope, has_bias, shape):
    """``dx`` from ``bias_forward``'s ``saved`` (the plain GELU's backward)."""
    return bias_backward(dy, slope, has_bias, shape)[0]


def normal_cdf(z):
    """Phi(z) of a float32 array by the float32 path of the kernels (for the tests)."""
    z = np.asarray(z)
    if z.dtype != np.float32:
        raise TypeError(f"z has dtype {z.dtype}, expected float32 (float64 uses math.erf)")
    z2 = rows_of(z, z.shape[-1] if z.ndim else 1)
    out = np.empty_like(z2)
    run_rows(cdf_rows, z2.shape[0], z2, out)
    return out.reshape(z.shape)
