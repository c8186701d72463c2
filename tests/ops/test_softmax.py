"""Tests of softmax: gradients, stability, float32 against float64, torch, properties."""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minibert.gradcheck import check_op
from minibert.ops import softmax
from tests.helpers import assert_close, to_np

EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)


def _randn(xp, shape, dtype=np.float64, seed=0, scale=1.0):
    return xp.asarray((scale * np.random.default_rng(seed).standard_normal(shape)).astype(dtype))


@pytest.mark.parametrize("shape,axis", [((7,), -1), ((3, 5), -1), ((3, 5), 0),
                                        ((2, 3, 7), 1), ((2, 1, 9), -1), ((4, 1), -1)])
def test_gradcheck_float64(xp, shape, axis):
    x = _randn(xp, shape, seed=sum(shape), scale=2.0)
    check_op(softmax.forward, softmax.backward, {"x": x}, kwargs={"axis": axis}, seed=len(shape))


def test_gradcheck_large_logits(xp):
    # logits around 500: exp would overflow without the max shift
    x = 500.0 + _randn(xp, (3, 6), seed=4, scale=3.0)
    check_op(softmax.forward, softmax.backward, {"x": x})


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stable_for_huge_and_tiny_logits(xp, dtype):
    big = np.finfo(dtype).max / 4
    x = xp.asarray(np.array([[big, 0.0, -big], [-1e4, -1e4, -1e4], [1e4, 1e4 - 1, -1e4]], dtype=dtype))
    y, cache = softmax.forward(x)
    dx = softmax.backward(xp.ones_like(x), cache)
    y, dx = to_np(y), to_np(dx)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))
    np.testing.assert_allclose(y[0], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(y[1], 1.0 / 3.0, rtol=4 * np.finfo(dtype).eps)
    np.testing.assert_allclose(y[2, 0] / y[2, 1], math.e, rtol=8 * np.finfo(dtype).eps)
    # sum(y) is the constant 1: a uniform upstream gradient gives zero, to rounding
    np.testing.assert_allclose(dx, 0.0, atol=4 * np.finfo(dtype).eps)


@pytest.mark.parametrize("shape", [(4, 97), (2, 3, 129)])
def test_float32_matches_float64(xp, shape):
    x32 = _randn(xp, shape, np.float32, seed=5, scale=3.0)
    dy32 = _randn(xp, shape, np.float32, seed=6)
    y32, c32 = softmax.forward(x32)
    y64, c64 = softmax.forward(x32.astype(np.float64))
    dx32 = softmax.backward(dy32, c32)
    dx64 = softmax.backward(dy32.astype(np.float64), c64)
    assert y32.dtype == np.float32 and dx32.dtype == np.float32
    # z = x - m is rounded by eps32 |z|, which moves exp(z) by as much relatively: an absolute
    # error y |z| eps32 <= eps32 / e (the max of |z| exp(-|z|)). The normalizing K-term sum
    # adds ~sqrt(K) eps32 relative, on y <= 1. dx = y (dy - <dy, y>) with |dy| <= ~4 carries
    # the same errors times ~4.
    K = shape[-1]
    tol = 2 * (1 + math.sqrt(K)) * EPS32
    assert_close("y", y32, y64, atol=tol, rtol=tol)
    assert_close("dx", dx32, dx64, atol=4 * tol, rtol=tol)


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_matches_torch(xp, axis):
    torch = pytest.importorskip("torch")
    shape = (3, 5, 7)
    x = _randn(xp, shape, seed=7, scale=2.0)
    dy = np.random.default_rng(8).standard_normal(shape)
    y, cache = softmax.forward(x, axis=axis)
    dx = softmax.backward(xp.asarray(dy), cache)
    tx = torch.tensor(to_np(x), requires_grad=True)
    ty = torch.nn.functional.softmax(tx, dim=axis)
    ty.backward(torch.tensor(dy))
    tol = 1e-14       # float64 against float64, values of order 1
    assert_close("y vs torch", y, ty.detach().numpy(), atol=tol, rtol=tol)
    assert_close("dx vs torch", dx, tx.grad.numpy(), atol=tol, rtol=tol)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=3), data=st.data(),
       seed=st.integers(0, 2**32 - 1), scale=st.floats(0.01, 30.0), shift=st.floats(-1e3, 1e3))
def test_hypothesis_gradcheck_and_properties(xp, shape, data, seed, scale, shift):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    x = shift + _randn(xp, tuple(shape), seed=seed, scale=scale)
    y, _ = softmax.forward(x, axis=axis)
    y = to_np(y)
    assert np.all(y >= 0) and np.all(y <= 1)
    np.testing.assert_allclose(y.sum(axis=axis), 1.0, atol=1e-14 * (1 + shape[axis]))
    # shift invariance: adding a constant along the axis changes nothing (to rounding)
    y2, _ = softmax.forward(x + 7.0, axis=axis)
    np.testing.assert_allclose(to_np(y2), y, atol=1e-12 * (1 + abs(shift)))
    # A saturated softmax (a gap of ~17 between logits) has gradients ~1e-8 everywhere,
    # below what the stencil can resolve. f = sum(y * dy) is rounded in ~4 operations and a
    # K-term sum, each to eps64 relative, and x - max moves by eps64 |x|, which moves y by as
    # much relatively; the stencil divides f's error by h = 1e-3 (weights summing to < 2).
    # The floor ``tiny`` = that error / rtol judges such gradients by the absolute error the
    # stencil can resolve; larger gradients are still held to the relative 1e-7.
    x_np = to_np(x)
    dy = np.random.default_rng(seed).standard_normal(y.shape)     # check_op's own dy
    f_round = (4 + math.log2(y.size)) * EPS64 * float(np.sum(np.abs(y * dy) * (1 + np.abs(x_np))))
    check_op(softmax.forward, softmax.backward, {"x": x}, kwargs={"axis": axis}, seed=seed,
             tiny=2 * f_round / 1e-3 / 1e-7)


def test_backward_does_not_write_into_cache(xp):
    x = _randn(xp, (3, 4), seed=1)
    y, cache = softmax.forward(x)
    y0 = to_np(cache[0]).copy()
    dx = softmax.backward(_randn(xp, (3, 4), seed=2), cache)
    np.testing.assert_array_equal(to_np(cache[0]), y0)
    assert dx is not cache[0]
