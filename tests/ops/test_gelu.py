"""Tests of GELU (exact erf and tanh forms, with and without a bias): gradients, erf accuracy,
float32, torch, names.

Every test runs twice: on the readable op (``readable_ops()``) and with the kernels on,
where NumPy float arrays take ``minibert.kernels.gelu_cpu`` (tested against the readable
op in tests/kernels/test_gelu_kernel.py); CuPy arrays take the readable op either way.
"""
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from minibert.gradcheck import check_op
from minibert.ops import READABLE_ENV, Fused, gelu
from tests.helpers import assert_close, to_np

EPS32 = float(np.finfo(np.float32).eps)
APPROXIMATIONS = ["none", "tanh"]


pytestmark = pytest.mark.usefixtures("ops_mode")    # every test on the kernels and the readable ops


def _randn(xp, shape, dtype=np.float64, seed=0, scale=1.0):
    return xp.asarray((scale * np.random.default_rng(seed).standard_normal(shape)).astype(dtype))


@pytest.mark.parametrize("approximate", APPROXIMATIONS)
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (2, 3, 7)])
def test_gradcheck_float64(xp, approximate, shape):
    x = _randn(xp, shape, seed=len(shape), scale=2.5)
    check_op(gelu.forward, gelu.backward, {"x": x}, kwargs={"approximate": approximate},
             seed=sum(shape))


@pytest.mark.parametrize("approximate", APPROXIMATIONS)
def test_gradcheck_over_the_whole_range(xp, approximate):
    # the tails (|x| ~ 6: y -> 0 or y -> x) and the curved middle, in one input
    x = xp.asarray(np.linspace(-6.0, 6.0, 49))
    check_op(gelu.forward, gelu.backward, {"x": x}, kwargs={"approximate": approximate})


def test_erf_matches_libm(xp):
    x = np.linspace(-7.0, 7.0, 2001)
    ref = np.array([math.erf(v) for v in x])
    e = to_np(gelu.erf(xp.asarray(x)))
    assert e.dtype == np.float64
    # libm (CPU) and CUDA's erf are both within an ulp or two of the true value
    np.testing.assert_allclose(e, ref, rtol=4 * np.finfo(np.float64).eps, atol=1e-300)


def test_erf_float32_stays_float32(xp):
    x = np.linspace(-5.0, 5.0, 1001).astype(np.float32)
    e = gelu.erf(xp.asarray(x))
    assert e.dtype == np.float32          # not silently computed in float64
    np.testing.assert_allclose(to_np(e), [math.erf(v) for v in x.astype(np.float64)],
                               rtol=0, atol=2 * EPS32)


@pytest.mark.parametrize("approximate", APPROXIMATIONS)
def test_float32_matches_float64(xp, approximate):
    x32 = _randn(xp, (5, 97), np.float32, seed=3, scale=3.0)
    dy32 = _randn(xp, (5, 97), np.float32, seed=4)
    y32, c32 = gelu.forward(x32, approximate)
    y64, c64 = gelu.forward(x32.astype(np.float64), approximate)
    dx32 = gelu.backward(dy32, c32)
    dx64 = gelu.backward(dy32.astype(np.float64), c64)
    assert y32.dtype == np.float32 and dx32.dtype == np.float32
    # A handful of float32 operations, each rounding to eps32 relative: erf/tanh of an
    # argument with relative error eps32, times x. y and dx are O(|x|) and O(|dy|) <= ~4
    # for |x| <= ~10 here, where GELU' is bounded by ~1.13.
    tol = 16 * EPS32
    assert_close("y", y32, y64, atol=tol, rtol=tol)
    assert_close("dx", dx32, dx64, atol=4 * tol, rtol=tol)


@pytest.mark.parametrize("approximate", APPROXIMATIONS)
def test_matches_torch(xp, approximate):
    torch = pytest.importorskip("torch")
    x = np.concatenate([np.linspace(-8, 8, 33), np.random.default_rng(5).standard_normal(40)])
    dy = np.random.default_rng(6).standard_normal(x.shape)
    y, cache = gelu.forward(xp.asarray(x), approximate)
    dx = gelu.backward(xp.asarray(dy), cache)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.gelu(tx, approximate=approximate)
    ty.backward(torch.tensor(dy))
    tol = 1e-14       # float64 on both sides; the erfs (libm or CUDA vs torch's) agree to ~1 ulp
    assert_close("y vs torch", y, ty.detach().numpy(), atol=tol, rtol=tol)
    assert_close("dx vs torch", dx, tx.grad.numpy(), atol=tol, rtol=tol)


@pytest.mark.parametrize("approximate", APPROXIMATIONS)
def test_float32_matches_torch_float32(xp, approximate):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(7).standard_normal(200).astype(np.float32) * 3
    y, _ = gelu.forward(xp.asarray(x), approximate)
    ty = torch.nn.functional.gelu(torch.tensor(x), approximate=approximate).numpy()
    # two float32 implementations of the same formula: each within ~8 eps32 of exact
    assert_close("y vs torch float32", y, ty, atol=16 * EPS32, rtol=16 * EPS32)


def test_hidden_act_names():
    assert gelu.APPROXIMATE_FOR_ACT == {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}
    x = np.linspace(-3, 3, 13)
    for act, approx in gelu.APPROXIMATE_FOR_ACT.items():
        np.testing.assert_array_equal(gelu.forward_act(x, act)[0], gelu.forward(x, approx)[0])
    # the two forms differ by at most ~5e-4 (Hendrycks and Gimpel's tanh fit)
    diff = np.abs(gelu.forward(x, "none")[0] - gelu.forward(x, "tanh")[0]).max()
    assert 0 < diff < 1e-3


def test_matches_hugging_face_activations():
    pytest.importorskip("torch")
    acts = pytest.importorskip("transformers.activations")
    import torch
    x = np.linspace(-6, 6, 61)
    for act in gelu.APPROXIMATE_FOR_ACT:
        ref = acts.ACT2FN[act](torch.tensor(x)).numpy()
        assert_close(f"hidden_act={act!r}", gelu.forward_act(x, act)[0], ref, atol=1e-14, rtol=1e-14)


def test_unknown_names_raise():
    with pytest.raises(ValueError, match=r"approximate='sigmoid' is not known, expected 'none' or 'tanh'"):
        gelu.forward(np.ones(3), approximate="sigmoid")
    with pytest.raises(ValueError, match=r"hidden_act='relu' is not a GELU known to minibert"):
        gelu.forward_act(np.ones(3), "relu")


def test_no_writable_numba_cache_falls_back(monkeypatch, ops_mode):
    # A read-only install with no NUMBA_CACHE_DIR: Numba finds no cache locator and raises
    # RuntimeError from vectorize(cache=True); the op must compile in memory instead.
    # (The erf ufunc is the readable op's: with the kernels on, NumPy arrays never reach it.)
    if ops_mode != "readable":
        pytest.skip("the erf ufunc runs on the readable path only")
    numba_caching = pytest.importorskip("numba.core.caching")
    monkeypatch.setattr(numba_caching.CacheImpl, "_locator_classes", [])
    monkeypatch.setattr(gelu, "_numba_erf", None)
    from numba import vectorize
    with pytest.raises(RuntimeError, match="cannot cache function"):
        vectorize(["float64(float64)"], cache=True)(gelu._erf_scalar)
    y, _ = gelu.forward(np.array([0.0, 1.0]))
    np.testing.assert_allclose(y, [0.0, 0.5 * (1 + math.erf(1 / math.sqrt(2)))], rtol=1e-15)


def test_gelu_module_imports_without_numba(ops_mode):
    # On the readable path Numba is needed only when exact GELU first runs on NumPy arrays
    # (with the kernels on, every NumPy GELU runs the Numba kernel: the environment switch
    # is how to run without them)
    if ops_mode != "readable":
        pytest.skip("the subprocess sets the readable switch itself")
    code = ("import sys; sys.modules['numba'] = None\n"
            "import numpy as np\n"
            "from minibert.ops import gelu\n"
            "gelu.forward(np.ones(3), approximate='tanh')\n"
            "print('ok')")
    env = dict(os.environ, **{READABLE_ENV: "1"})
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def _cached_arrays(cache):
    """The arrays a cache holds (the readable tuples, or a Fused cache's saved arguments)."""
    if isinstance(cache, Fused):
        return [a for a in cache.saved if hasattr(a, "dtype")]
    return [a for a in cache if hasattr(a, "dtype")] + (
        _cached_arrays(cache[0]) if isinstance(cache[0], tuple) else [])


def test_backward_returns_fresh_array(xp):
    x = _randn(xp, (4,), seed=8)
    for approximate in APPROXIMATIONS:
        y, cache = gelu.forward(x, approximate)
        before = [to_np(a).copy() for a in _cached_arrays(cache)]
        dy = xp.ones(4)
        dx = gelu.backward(dy, cache)
        for a, a0 in zip(_cached_arrays(cache), before):
            np.testing.assert_array_equal(to_np(a), a0)
        assert all(dx is not a for a in [x, y, dy] + _cached_arrays(cache))


# --------------------------------------------------------------------------- with a bias


def _bias_backward(dy, cache):
    return gelu.bias_backward(dy, cache)


@pytest.mark.parametrize("approximate", APPROXIMATIONS)
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (2, 3, 7)])
def test_bias_gradcheck_float64(xp, approximate, shape):
    x = _randn(xp, shape, seed=len(shape) + 10, scale=2.5)
    b = _randn(xp, shape[-1:], seed=11)
    check_op(gelu.bias_forward, _bias_backward, {"x": x, "bias": b},
             kwargs={"approximate": approximate}, seed=sum(shape) + 1)


@pytest.mark.parametrize("approximate", APPROXIMATIONS)
def test_bias_is_gelu_of_the_sum(xp, approximate):
    x = _randn(xp, (2, 3, 6), seed=12, scale=2.0)
    b = _randn(xp, (6,), seed=13)
    dy = _randn(xp, (2, 3, 6), seed=14)
    y, cache = gelu.bias_forward(x, b, approximate)
    dx, db = gelu.bias_backward(dy, cache)
    y_sum, cache_sum = gelu.forward(x + b, approximate)
    dx_sum = gelu.backward(dy, cache_sum)
    assert dx.shape == x.shape and db.shape == b.shape
    # the same sum, rounded once, then the same arithmetic
    tol = 4 * np.finfo(np.float64).eps
    assert_close("y", y, y_sum, atol=tol, rtol=tol)
    assert_close("dx", dx, dx_sum, atol=tol, rtol=tol)
    # dbias sums dx over the 6 rows: a few roundings of sums of O(1) terms
    assert_close("dbias", db, dx_sum.reshape(-1, 6).sum(axis=0), atol=16 * tol, rtol=16 * tol)


@pytest.mark.parametrize("approximate", APPROXIMATIONS)
def test_bias_float32_matches_float64(xp, approximate):
    x32 = _randn(xp, (5, 97), np.float32, seed=15, scale=3.0)
    b32 = _randn(xp, (97,), np.float32, seed=16)
    dy32 = _randn(xp, (5, 97), np.float32, seed=17)
    y32, c32 = gelu.bias_forward(x32, b32, approximate)
    dx32, db32 = gelu.bias_backward(dy32, c32)
    y64, c64 = gelu.bias_forward(x32.astype(np.float64), b32.astype(np.float64), approximate)
    dx64, db64 = gelu.bias_backward(dy32.astype(np.float64), c64)
    assert y32.dtype == dx32.dtype == db32.dtype == np.float32
    # as test_float32_matches_float64, plus the rounding of x + bias (relative eps32 of z,
    # times GELU' <= 1.13 and GELU'' |z| <= ~1 for the slope); dbias sums 5 rows of dx
    tol = 16 * EPS32
    assert_close("y", y32, y64, atol=tol, rtol=tol)
    assert_close("dx", dx32, dx64, atol=4 * tol, rtol=tol)
    assert_close("dbias", db32, db64, atol=4 * math.sqrt(5) * tol, rtol=tol)


def test_bias_bad_input_raises(xp):
    x = xp.ones((2, 4))
    with pytest.raises(ValueError, match=r"x has shape \(2, 4\) and bias \(3,\): expected x "
                                         r"\(\.\.\., C\) and bias \(C,\)"):
        gelu.bias_forward(x, xp.ones(3))
    with pytest.raises(ValueError, match=r"approximate='erf' is not known"):
        gelu.bias_forward(x, xp.ones(4), approximate="erf")
