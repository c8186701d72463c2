"""Tests of the fused GELU kernel (minibert/kernels/gelu_cpu.py) behind ``minibert.ops.gelu``: the
plain op and the op with a bias, exact and tanh forms.

The readable op (run under ``readable_ops()``) is the reference: float64 results agree with
it to 1e-12 of each tensor's scale; float32 results are at least as accurate as the readable
float32 op against the float64 readable op (RMS error at most 1.25 times its, plus the one
rounding of a float32 result); the float32 normal CDF that replaces erf is within 0.51 ulp
of the true one over a dense grid with both tails; the kernel passes the float64 gradient
check on its own. Odd widths (C = 1, 7, 97, 129, 768 and 1030), several
leading shapes, non-contiguous inputs, infinities and NaN, the dispatch, the row blocks of
dbias, and the inference forms (no slope, y written over x) bit for bit.
"""
import math

import numpy as np
import pytest

from minibert.gradcheck import check_op
from minibert.kernels import gelu_cpu
from minibert.ops import Fused, gelu, readable_ops
from tests.helpers import assert_as_accurate_as_textbook, assert_close_to_scale

FLOATS = [pytest.param(np.float32, id="float32"), pytest.param(np.float64, id="float64")]
APPROXIMATIONS = ["none", "tanh"]
EPS32 = float(np.finfo(np.float32).eps)
#: float64: the same formulas with the same libm calls; fused multiply-adds and the order
#: of dbias's sum change the last bits (the tanh form's 1 - t^2 by up to ~1e-14 at |z| ~ 9)
TOL64 = 1e-12
NAMES = ("y", "dx", "dbias")


def _problem(shape, dtype, seed=0, scale=3.0):
    """x (shape), bias (C,), dy (shape); x spread over both tails of GELU."""
    r = np.random.default_rng(seed)
    x = scale * r.standard_normal(shape)
    b = r.standard_normal(shape[-1:])
    dy = r.standard_normal(shape)
    return x.astype(dtype), b.astype(dtype), dy.astype(dtype)


def _run(x, b, dy, approximate):
    """(y, dx, dbias) of the op in the current mode (dbias None without a bias), and its cache."""
    if b is None:
        y, cache = gelu.forward(x, approximate)
        return (y, gelu.backward(dy, cache), None), cache
    y, cache = gelu.bias_forward(x, b, approximate)
    return (y,) + tuple(gelu.bias_backward(dy, cache)), cache


def _readable(*args):
    with readable_ops():
        return _run(*args)[0]


# --------------------------------------------------------------------------- the float32 normal CDF


def test_float32_normal_cdf_within_half_an_ulp():
    """Phi of float32 z (the float32 path's replacement for 0.5 (1 + erf(z / sqrt 2))) against
    0.5 erfc(-z / sqrt 2) in float64 (libm, ~1e-16 relative), in ulps of the float32 result:
    a correctly rounded Phi would be within 0.5; the kernel's approximations add < 5e-10
    relative (0.01 ulp; module docstring). The grid: 2^18 points over [-16, 16] (both tails:
    Phi tiny for z < 0, 1 - Phi below half an ulp for z > 5.4), 4001 points on each side of
    zero from 1e-30 to 1e-3, and a dense stretch where Phi leaves the normal numbers."""
    z = np.concatenate([np.linspace(-16.0, 16.0, 1 << 18),
                        np.geomspace(1e-30, 1e-3, 4001), -np.geomspace(1e-30, 1e-3, 4001),
                        np.linspace(-13.5, -12.0, 20001), [0.0, -0.0]]).astype(np.float32)
    phi = gelu_cpu.normal_cdf(z).astype(np.float64)
    z64 = z.astype(np.float64)
    ref = np.array([0.5 * math.erfc(-v / math.sqrt(2.0)) for v in z64])
    normal = ref >= np.finfo(np.float32).tiny
    # ulp of the float32 number nearest the true value
    ulp = np.spacing(ref[normal].astype(np.float32)).astype(np.float64)
    ulps = np.abs(phi[normal] - ref[normal]) / ulp
    worst = int(np.argmax(ulps))
    assert ulps[worst] <= 0.51, (f"Phi({z64[normal][worst]!r}) = {phi[normal][worst]!r}, true "
                                 f"{ref[normal][worst]!r}: {ulps[worst]:.4f} ulp")
    # below the normal range (z < -12.95): within float32's subnormal spacing
    smallest = float(np.finfo(np.float32).smallest_subnormal)
    assert float(np.abs(phi[~normal] - ref[~normal]).max()) <= smallest
    assert float(np.abs(phi[z64 < -14.5]).max()) == 0.0          # Phi(-14.5) < smallest / 2


def test_normal_cdf_refuses_float64():
    with pytest.raises(TypeError, match=r"z has dtype float64, expected float32"):
        gelu_cpu.normal_cdf(np.zeros(3))


# ---------------------------------------------------------------------- against the readable op


LEADS = [(), (3,), (2, 5), (1, 1), (70,)]


@pytest.mark.parametrize("approximate", APPROXIMATIONS)
@pytest.mark.parametrize("C", [1, 7, 97, 129, 768, 1030])
@pytest.mark.parametrize("lead", LEADS, ids=[str(lead) for lead in LEADS])
@pytest.mark.parametrize("with_bias", [False, True], ids=["plain", "bias"])
def test_float64_matches_readable(approximate, C, lead, with_bias):
    x, b, dy = _problem(lead + (C,), np.float64, seed=C + len(lead))
    b = b if with_bias else None
    got, cache = _run(x, b, dy, approximate)
    assert isinstance(cache, Fused)
    for name, a, e in zip(NAMES, got, _readable(x, b, dy, approximate)):
        if e is None:
            assert a is None, name
            continue
        assert a.dtype == np.float64 and a.shape == e.shape, name
        assert_close_to_scale(name, a, e, rel=TOL64)


@pytest.mark.parametrize("approximate", APPROXIMATIONS)
@pytest.mark.parametrize("shape", [(5, 7), (33, 97), (16, 1030), (64, 768)])
@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_float32_as_accurate_as_readable(approximate, shape, scale):
    """Both float32 results against the float64 readable op on the same (rounded) inputs:
    the kernel's RMS error at most 1.25 times the readable float32 op's, tensor by tensor,
    plus half an eps32 of the reference's RMS (the floor of one final rounding).

    The kernel evaluates GELU and its slope in float64 and rounds once; the readable op
    rounds erf (or tanh), 1 + erf, and each product: measured over 30 draws of each shape,
    the kernel's RMS error is at most 0.91 times the readable op's (exact form) and 0.88
    (tanh form, whose slope the readable op computes with the cancellation 1 - t^2: there
    the ratio is ~0.2)."""
    x, b, dy = _problem(shape, np.float32, seed=shape[-1], scale=scale)
    ref = _readable(x.astype(np.float64), b.astype(np.float64), dy.astype(np.float64), approximate)
    book = _readable(x, b, dy, approximate)
    got, _ = _run(x, b, dy, approximate)
    assert_as_accurate_as_textbook("kernel", NAMES, got, book, ref, factor=1.25, floor_rel=0.5 * EPS32,
                                   book_label="readable")


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("approximate", APPROXIMATIONS)
def test_infinities_and_nan_as_readable(dtype, approximate):
    """+inf -> (inf, NaN slope), -inf -> (NaN, NaN): where the readable op multiplies inf by
    an exact 0 (Phi(-inf), phi(+-inf), 1 - tanh^2); NaN stays NaN."""
    x = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1.0, -40.0, 40.0], dtype=dtype)
    dy = np.ones_like(x)
    got = _run(x, None, dy, approximate)[0][:2]
    with np.errstate(invalid="ignore"):                     # the readable op's inf * 0
        ref = _readable(x, None, dy, approximate)[:2]
    for name, a, e in zip(NAMES, got, ref):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(e), err_msg=name)
        finite = ~np.isnan(e)
        np.testing.assert_allclose(a[finite], e[finite], rtol=4 * EPS32, atol=0, err_msg=name)
        np.testing.assert_array_equal(np.signbit(a[finite]), np.signbit(e[finite]), err_msg=name)


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("approximate", APPROXIMATIONS)
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (2, 3, 7), (40, 3)])
def test_gradcheck_float64(approximate, shape):
    x, b, _ = _problem(shape, np.float64, seed=sum(shape), scale=2.5)
    check_op(gelu.bias_forward, gelu.bias_backward, {"x": x, "bias": b},
             kwargs={"approximate": approximate}, seed=len(shape))
    check_op(gelu.forward, gelu.backward, {"x": x}, kwargs={"approximate": approximate},
             seed=len(shape) + 1)
    assert isinstance(gelu.bias_forward(x, b, approximate)[1], Fused)   # the check ran the kernel


@pytest.mark.parametrize("approximate", APPROXIMATIONS)
def test_gradcheck_over_the_whole_range(approximate):
    x = np.linspace(-6.0, 6.0, 49)
    check_op(gelu.forward, gelu.backward, {"x": x}, kwargs={"approximate": approximate})


# --------------------------------------------------------------------------- layouts and dispatch


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("approximate", APPROXIMATIONS)
def test_non_contiguous_inputs(dtype, approximate):
    r = np.random.default_rng(5)
    x = (3 * r.standard_normal((12, 2 * 33))).astype(dtype)[::2, ::2]    # (6, 33), strided
    b = r.standard_normal(66).astype(dtype)[1::2]
    dy = r.standard_normal((33, 6)).astype(dtype).T                      # (6, 33), transposed
    got, cache = _run(x, b, dy, approximate)
    assert isinstance(cache, Fused)
    ref = _run(*(np.ascontiguousarray(a) for a in (x, b, dy)), approximate)[0]
    for name, a, e in zip(NAMES, got, ref):
        np.testing.assert_array_equal(a, e, err_msg=name)               # the same arithmetic


def test_dispatch():
    x, b, dy = _problem((2, 3, 8), np.float32)
    y, cache = gelu.bias_forward(x, b)
    assert isinstance(cache, Fused) and cache.backward is gelu_cpu.bias_backward
    y, cache = gelu.forward(x, "tanh")
    assert isinstance(cache, Fused) and cache.backward is gelu_cpu.backward
    assert y.shape == x.shape and y.dtype == np.float32
    with readable_ops():
        assert not isinstance(gelu.bias_forward(x, b)[1], Fused)
        assert not isinstance(gelu.forward(x)[1], Fused)
    # a bias of another dtype: the readable bias line (NumPy promotes), then the plain kernel
    y, cache = gelu.bias_forward(x, b.astype(np.float64))
    assert not isinstance(cache, Fused) and y.dtype == np.float64
    dx, db = gelu.bias_backward(dy, cache)
    assert dx.dtype == db.dtype == np.float64


def test_backward_converts_dy_and_checks_its_shape():
    x, b, dy = _problem((4, 5), np.float32, seed=6)
    _, cache = gelu.bias_forward(x, b)
    dx, db = gelu.bias_backward(dy.astype(np.float64), cache)
    assert dx.dtype == db.dtype == np.float32
    ref = gelu.bias_backward(dy, cache)
    np.testing.assert_array_equal(dx, ref[0])
    np.testing.assert_array_equal(db, ref[1])
    with pytest.raises(ValueError, match=r"dy has shape \(5, 4\), expected the forward's output "
                                         r"shape \(4, 5\)"):
        gelu.bias_backward(dy.T, cache)


def test_forward_does_not_write_into_inputs():
    x, b, dy = _problem((3, 9), np.float32, seed=7)
    x0, b0 = x.copy(), b.copy()
    y, cache = gelu.bias_forward(x, b)
    slope0 = cache.saved[0].copy()
    dx, db = gelu.bias_backward(dy, cache)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(b, b0)
    np.testing.assert_array_equal(cache.saved[0], slope0)
    assert dx is not dy and dx is not cache.saved[0]


@pytest.mark.parametrize("dtype", FLOATS)
def test_row_blocks_can_be_split(dtype):
    """Any split of the blocks between calls (threads, later) gives the same bits."""
    N, C = 3 * gelu_cpu.ROWS_PER_BLOCK + 5, 21
    x, b, dy = _problem((N, C), dtype, seed=8)
    _, (slope, has_bias, shape) = gelu_cpu.bias_forward(x, b, "none")
    dx_whole, db_whole = gelu_cpu.bias_backward(dy, slope, has_bias, shape)
    n_blocks = -(-N // gelu_cpu.ROWS_PER_BLOCK)
    dx = np.empty_like(slope)
    part = np.empty((n_blocks, C))
    for b0, b1 in ((2, 4), (0, 1), (1, 2)):                         # out of order on purpose
        gelu_cpu.backward_blocks(dy, slope, True, dx, part, b0, b1)
    np.testing.assert_array_equal(dx, dx_whole)
    np.testing.assert_array_equal(part.sum(axis=0).astype(dtype), db_whole)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("approximate", APPROXIMATIONS)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_inference_forms_give_the_same_bits(dtype, approximate, with_bias):
    """grad=False (no GELU'(z)) and out=x (y written over x, its own kernel) give the bits
    of the training forward, and no cache; out is checked."""
    x, b, _ = _problem((3, 5, 97), dtype, seed=9)
    x[0, 0, :4] = [np.inf, -np.inf, np.nan, 0.0]
    b = b if with_bias else None
    y, cache = gelu_cpu.bias_forward(x, b, approximate)
    y_value, saved = gelu_cpu.bias_forward(x, b, approximate, grad=False)
    assert saved is None
    np.testing.assert_array_equal(y_value, y)
    over = x.copy()
    y_over, _ = gelu_cpu.bias_forward(over, b, approximate, False, over)
    assert np.shares_memory(y_over, over)
    np.testing.assert_array_equal(over, y)
    out = np.empty_like(x)
    assert gelu_cpu.bias_forward(x, b, approximate, True, out)[0].base is out
    np.testing.assert_array_equal(out, y)


def test_op_inference_options():
    """The op's grad= and out= on both paths, and its check of out."""
    x, b, _ = _problem((4, 6), np.float32, seed=10)
    ref, _ = gelu.bias_forward(x, b)
    for readable in (False, True):
        with readable_ops(readable):
            over = x.copy()
            y, cache = gelu.bias_forward(over, b, grad=False, out=over)
            assert cache is None and np.shares_memory(y, over)
            np.testing.assert_allclose(over, ref, rtol=1e-6, atol=1e-7)
    for bad in (np.empty((6, 4), np.float32), np.empty((4, 6), np.float64),
                np.empty((4, 12), np.float32)[:, ::2]):
        with pytest.raises(ValueError, match="out has shape .* expected a writeable C-contiguous array"):
            gelu.bias_forward(x, b, out=bad)
    buf = np.zeros((5, 6), np.float32)
    buf[:4] = x
    with pytest.raises(ValueError, match="out overlaps x without being x"):
        gelu_cpu.bias_forward(buf[:4], b, "none", False, buf[1:])


def test_out_over_x_with_grad_and_partial_overlaps():
    """out = x with grad=True gives the training forward's y and slope (x is read before y
    is written); an out that overlaps x other than exactly, or the bias, is refused."""
    x, b, _ = _problem((4, 16), np.float32, seed=12)
    y, cache = gelu.bias_forward(x, b)
    over = x.copy()
    y_over, cache_over = gelu.bias_forward(over, b, out=over)
    np.testing.assert_array_equal(over, y)
    np.testing.assert_array_equal(cache_over.saved[0], cache.saved[0])
    buf = np.zeros((5, 16), np.float32)
    buf[:4] = x
    with pytest.raises(ValueError, match="out overlaps x without being x"):
        gelu.bias_forward(buf[:4], b, out=buf[1:])
    flat = np.zeros(64, np.float32)                   # the bias is the first row of out
    flat[:16] = b
    with pytest.raises(ValueError, match="out overlaps bias, which the op reads"):
        gelu_cpu.bias_forward(x, flat[:16], "none", False, flat.reshape(4, 16))
