"""Tests of LayerNorm: gradients, float32 against float64, torch, properties, errors.

Every test runs twice: on the readable op (``readable_ops()``) and with the kernels on,
where NumPy float arrays take ``minibert.kernels.layernorm_cpu`` (tested against the
readable op in tests/kernels/test_layernorm_kernel.py); CuPy arrays take the readable op
either way.
"""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minibert.gradcheck import check_op
from minibert.ops import Fused, layernorm
from tests.helpers import assert_close, to_np

EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)


pytestmark = pytest.mark.usefixtures("ops_mode")    # every test on the kernels and the readable ops


def _forward_with_residual(x, weight, bias, residual, eps=1e-12):
    return layernorm.forward(x, weight, bias, eps, residual=residual)


def _backward_with_residual(dy, cache):
    """(dx, dweight, dbias, dresidual): the residual's gradient is dx (module docstring)."""
    dx, dw, db = layernorm.backward(dy, cache)
    return dx, dw, db, dx


def _inputs(xp, shape, dtype=np.float64, seed=0, shift=0.0):
    """x (shape), weight (H,), bias (H,); weight is random so dweight/dx see a non-trivial scale."""
    r = np.random.default_rng(seed)
    H = shape[-1]
    x = r.standard_normal(shape) + shift
    w = 1.0 + 0.5 * r.standard_normal(H)
    b = 0.5 * r.standard_normal(H)
    return tuple(xp.asarray(a.astype(dtype)) for a in (x, w, b))


@pytest.mark.parametrize("shape", [(7,), (3, 3), (3, 7), (2, 5, 11), (1, 3, 1, 9)])
@pytest.mark.parametrize("eps", [1e-12, 1e-5])
def test_gradcheck_float64(xp, shape, eps):
    x, w, b = _inputs(xp, shape, seed=len(shape) * 10 + shape[-1])
    check_op(layernorm.forward, layernorm.backward, {"x": x, "weight": w, "bias": b},
             kwargs={"eps": eps}, seed=shape[-1])


def test_gradcheck_large_offset(xp):
    # rows with mean ~1000 and unit spread: the centred form x - mu keeps the signal (the
    # spread stays >> the stencil step 1e-3, whose truncation error grows as (h / sigma)^4)
    x, w, b = _inputs(xp, (4, 6), seed=3, shift=1000.0)
    check_op(layernorm.forward, layernorm.backward, {"x": x, "weight": w, "bias": b})


@pytest.mark.parametrize("shape", [(5, 64), (2, 3, 33)])
def test_float32_matches_float64(xp, shape):
    x32, w32, b32 = _inputs(xp, shape, np.float32, seed=7)
    x64, w64, b64 = (a.astype(np.float64) for a in (x32, w32, b32))   # the same rounded inputs
    dy32 = xp.asarray(np.random.default_rng(8).standard_normal(shape).astype(np.float32))
    y32, c32 = layernorm.forward(x32, w32, b32)
    y64, c64 = layernorm.forward(x64, w64, b64)
    g32 = layernorm.backward(dy32, c32)
    g64 = layernorm.backward(dy32.astype(np.float64), c64)
    assert y32.dtype == np.float32 and all(g.dtype == np.float32 for g in g32)
    # float32 rounds each operation to eps32 = 1.2e-7 relative. The row statistics are sums
    # of H terms (error ~ sqrt(H) eps32 with pairwise summation), xhat inherits them times
    # |x - mu| / sigma <= ~4 for normal data, and y, dx are O(|w| |dy|) = O(1) here.
    H = shape[-1]
    tol = 16 * math.sqrt(H) * EPS32
    assert_close("y", y32, y64, atol=tol, rtol=tol)
    assert_close("dx", g32[0], g64[0], atol=tol, rtol=tol)
    # dweight, dbias sum over N rows: sqrt(N) more
    n_rows = int(np.prod(shape[:-1]))
    tol_w = tol * math.sqrt(n_rows)
    assert_close("dweight", g32[1], g64[1], atol=tol_w, rtol=tol)
    assert_close("dbias", g32[2], g64[2], atol=tol_w, rtol=tol)


@pytest.mark.parametrize("eps", [1e-12, 1e-5])
def test_matches_torch(xp, eps):
    torch = pytest.importorskip("torch")
    shape = (3, 4, 10)
    x, w, b = _inputs(xp, shape, seed=11, shift=2.0)
    dy = np.random.default_rng(12).standard_normal(shape)
    y, cache = layernorm.forward(x, w, b, eps)
    dx, dw, db = layernorm.backward(xp.asarray(dy), cache)

    tx, tw, tb = (torch.tensor(to_np(a), requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.layer_norm(tx, (shape[-1],), tw, tb, eps)
    ty.backward(torch.tensor(dy))
    tol = 1e-12       # float64 against float64: only the order of the sums differs
    assert_close("y vs torch", y, ty.detach().numpy(), atol=tol, rtol=tol)
    assert_close("dx vs torch", dx, tx.grad.numpy(), atol=tol, rtol=tol)
    assert_close("dweight vs torch", dw, tw.grad.numpy(), atol=tol, rtol=tol)
    assert_close("dbias vs torch", db, tb.grad.numpy(), atol=tol, rtol=tol)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(lead=st.lists(st.integers(1, 4), min_size=0, max_size=2), H=st.integers(3, 17),
       seed=st.integers(0, 2**32 - 1), shift=st.floats(-50, 50))
def test_hypothesis_gradcheck_and_normalization(xp, lead, H, seed, shift):
    shape = tuple(lead) + (H,)
    x, w, b = _inputs(xp, shape, seed=seed, shift=shift)
    # xhat changes on the scale of a row's spread sigma, so the stencil's truncation error
    # grows as (h / sigma)^4: a draw with a narrow row (sigma ~ 0.02) needs a smaller step.
    x_np, w_np, b_np = (to_np(a) for a in (x, w, b))
    sigma = x_np.std(axis=-1, keepdims=True)
    h = 1e-3 * min(1.0, float(sigma.min()))
    # With H = 3 only one direction of dxhat survives the two projections, and a draw can
    # make all of dx ~1e-6, below what the stencil resolves. f = sum(y * dy) is rounded in
    # ~4 operations and a sum over its terms, each to eps64 relative, and the centring
    # x - mu drops x's leading digits, so each y moves by ~eps64 |w| (|x| / sigma + 1)
    # + eps64 |b|; the stencil divides f's error by h (weights summing to < 2). The floor
    # ``tiny`` = that error / rtol judges such gradients by the absolute error the stencil
    # can resolve; larger gradients are still held to the relative 1e-7.
    dy = np.random.default_rng(seed).standard_normal(shape)                # check_op's own dy
    f_round = (4 + math.log2(dy.size)) * EPS64 * float(np.sum(
        np.abs(dy) * (np.abs(w_np) * (np.abs(x_np) / sigma + 1) + np.abs(b_np))))
    check_op(layernorm.forward, layernorm.backward, {"x": x, "weight": w, "bias": b}, seed=seed,
             eps=h, tiny=2 * f_round / h / 1e-7)
    # with weight 1, bias 0 and eps 0 every row has mean 0 and (biased) variance 1
    ones, zeros = xp.ones(H), xp.zeros(H)
    y, _ = layernorm.forward(x, ones, zeros, eps=0.0)
    y = to_np(y)
    np.testing.assert_allclose(y.mean(-1), 0.0, atol=1e-12)
    np.testing.assert_allclose(y.var(-1), 1.0, atol=1e-9)


def test_two_features_give_zero_input_gradient(xp, ops_mode):
    # H = 2: with eps = 0 each row normalizes to (-1, 1) or (1, -1) whatever x is, so y does
    # not depend on x and dx = 0 (with eps > 0, dx = O(eps / |x_1 - x_0|^3), tiny but real).
    # The finite-difference check would only compare roundings here, which is why the
    # grid above starts at H = 3; check the analytic zero instead, to rounding (eps64 * rstd).
    x, w, b = _inputs(xp, (4, 2), seed=5)
    y, cache = layernorm.forward(x, w, b, eps=0.0)
    if ops_mode == "readable" or xp is not np:
        np.testing.assert_allclose(np.abs(to_np(cache[0])), 1.0, atol=1e-15)
    dy = xp.asarray(np.random.default_rng(6).standard_normal((4, 2)))
    dx, _, _ = layernorm.backward(dy, cache)
    rstd = 2.0 / np.abs(np.diff(to_np(x), axis=-1))          # 1 / sigma, sigma = |x_1 - x_0| / 2
    bound = 8 * np.finfo(np.float64).eps * float(rstd.max()) * float(np.abs(to_np(dy * w)).max())
    assert float(np.abs(to_np(dx)).max()) <= bound


def _cached_arrays(cache):
    """The arrays a cache holds (the readable tuple, or a Fused cache's saved arguments)."""
    items = cache.saved if isinstance(cache, Fused) else cache
    return [a for a in items if hasattr(a, "shape") and hasattr(a, "dtype")]


@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
def test_backward_does_not_write_into_cache_or_inputs(xp, with_residual):
    x, w, b = _inputs(xp, (3, 5), seed=2)
    r = xp.asarray(np.random.default_rng(3).standard_normal((3, 5))) if with_residual else None
    inputs_before = [to_np(a).copy() for a in (x, w, b) + ((r,) if with_residual else ())]
    _, cache = layernorm.forward(x, w, b, residual=r)
    before = [to_np(a).copy() for a in _cached_arrays(cache)]
    assert before, "the cache holds no arrays"
    dy = xp.ones((3, 5))
    grads = layernorm.backward(dy, cache)
    for i, (a, a0) in enumerate(zip(_cached_arrays(cache), before)):
        np.testing.assert_array_equal(to_np(a), a0, err_msg=f"cached array {i}")
    for name, a, a0 in zip(("x", "weight", "bias", "residual"), (x, w, b, r), inputs_before):
        np.testing.assert_array_equal(to_np(a), a0, err_msg=name)
    for g in grads:                                            # fresh arrays
        assert all(g is not a for a in (x, w, b, r, dy) + tuple(_cached_arrays(cache)))


@pytest.mark.parametrize("shape", [(7,), (3, 7), (2, 3, 5)])
def test_residual_gradcheck_float64(xp, shape):
    x, w, b = _inputs(xp, shape, seed=21 + shape[-1])
    r = xp.asarray(np.random.default_rng(22).standard_normal(shape))
    check_op(_forward_with_residual, _backward_with_residual,
             {"x": x, "weight": w, "bias": b, "residual": r}, seed=len(shape))


def test_residual_is_layernorm_of_the_sum(xp):
    x, w, b = _inputs(xp, (2, 3, 9), seed=23)
    r = xp.asarray(np.random.default_rng(24).standard_normal((2, 3, 9)))
    dy = xp.asarray(np.random.default_rng(25).standard_normal((2, 3, 9)))
    y, cache = layernorm.forward(x, w, b, residual=r)
    y_sum, cache_sum = layernorm.forward(x + r, w, b)
    # the same sum, rounded once, then the same arithmetic: equal to the last rounding
    assert_close("y", y, y_sum, atol=4 * EPS64, rtol=4 * EPS64)
    for name, g, g_sum in zip(("dx", "dweight", "dbias"), layernorm.backward(dy, cache),
                              layernorm.backward(dy, cache_sum)):
        assert_close(name, g, g_sum, atol=64 * EPS64, rtol=64 * EPS64)


def test_bad_residual_shape_raises(xp):
    x, w, b = _inputs(xp, (2, 4))
    with pytest.raises(ValueError,
                       match=r"residual has shape \(4, 2\), expected x's shape \(2, 4\)"):
        layernorm.forward(x, w, b, residual=xp.zeros((4, 2)))


def test_dtype_kept_with_numpy_scalar_eps(xp):
    x, w, b = _inputs(xp, (2, 4), np.float32)
    y, _ = layernorm.forward(x, w, b, np.float64(1e-5))
    assert y.dtype == np.float32


def test_bad_shapes_raise(xp):
    x, w, b = _inputs(xp, (2, 4))
    with pytest.raises(ValueError, match=r"weight \(3,\).*expected x \(\.\.\., H\), weight \(H,\)"):
        layernorm.forward(x, w[:3], b)
    with pytest.raises(ValueError, match=r"bias \(5,\)"):
        layernorm.forward(x, w, xp.zeros(5))


def test_bad_eps_raises(xp):
    x, w, b = _inputs(xp, (2, 4))
    with pytest.raises(ValueError, match=r"eps=-1e-05 is not valid, expected a number >= 0"):
        layernorm.forward(x, w, b, eps=-1e-5)
