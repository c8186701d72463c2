"""Tests of tanh: gradients, saturation, float32 against float64, torch."""
import numpy as np
import pytest

from minibert.gradcheck import check_op
from minibert.ops import tanh
from tests.helpers import assert_close, to_np

EPS32 = float(np.finfo(np.float32).eps)


def _randn(xp, shape, dtype=np.float64, seed=0, scale=1.0):
    return xp.asarray((scale * np.random.default_rng(seed).standard_normal(shape)).astype(dtype))


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (2, 3, 7)])
def test_gradcheck_float64(xp, shape):
    x = _randn(xp, shape, seed=len(shape), scale=1.5)
    check_op(tanh.forward, tanh.backward, {"x": x}, seed=sum(shape))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_saturation_is_finite(xp, dtype):
    x = xp.asarray(np.array([-1e4, -30.0, 0.0, 30.0, 1e4], dtype=dtype))
    y, cache = tanh.forward(x)
    dx = tanh.backward(xp.ones_like(x), cache)
    np.testing.assert_array_equal(to_np(y), [-1.0, -1.0, 0.0, 1.0, 1.0])
    np.testing.assert_array_equal(to_np(dx), [0.0, 0.0, 1.0, 0.0, 0.0])


def test_float32_matches_float64(xp):
    x32 = _randn(xp, (5, 64), np.float32, seed=3, scale=2.0)
    dy32 = _randn(xp, (5, 64), np.float32, seed=4)
    y32, c32 = tanh.forward(x32)
    y64, c64 = tanh.forward(x32.astype(np.float64))
    dx32 = tanh.backward(dy32, c32)
    dx64 = tanh.backward(dy32.astype(np.float64), c64)
    assert y32.dtype == np.float32 and dx32.dtype == np.float32
    # tanh is well conditioned (|x tanh'(x) / tanh(x)| <= 1), so y carries a few eps32;
    # 1 - y^2 cancels where |y| -> 1, but there the result is small: its absolute error is
    # ~2 |y| err(y) ~ 4 eps32, times |dy| <= ~4.
    assert_close("y", y32, y64, atol=4 * EPS32, rtol=4 * EPS32)
    assert_close("dx", dx32, dx64, atol=32 * EPS32, rtol=8 * EPS32)


def test_matches_torch(xp):
    torch = pytest.importorskip("torch")
    x = _randn(xp, (4, 9), seed=5, scale=2.0)
    dy = np.random.default_rng(6).standard_normal((4, 9))
    y, cache = tanh.forward(x)
    dx = tanh.backward(xp.asarray(dy), cache)
    tx = torch.tensor(to_np(x), requires_grad=True)
    ty = torch.tanh(tx)
    ty.backward(torch.tensor(dy))
    assert_close("y vs torch", y, ty.detach().numpy(), atol=1e-15, rtol=1e-15)
    assert_close("dx vs torch", dx, tx.grad.numpy(), atol=1e-15, rtol=1e-14)


def test_backward_returns_fresh_array(xp):
    x = _randn(xp, (3,), seed=7)
    y, cache = tanh.forward(x)
    y0 = to_np(cache).copy()
    dx = tanh.backward(xp.ones(3), cache)
    np.testing.assert_array_equal(to_np(cache), y0)
    assert dx is not cache
