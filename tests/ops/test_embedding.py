"""Tests of the embedding lookup: gradients with repeated ids, torch, float32, errors."""
import numpy as np
import pytest

from minibert.gradcheck import check_op
from minibert.ops import embedding
from tests.helpers import assert_close, to_np


def _table(xp, V, H, dtype=np.float64, seed=0):
    return xp.asarray(np.random.default_rng(seed).standard_normal((V, H)).astype(dtype))


def _ids(xp, shape, V, seed=0, dtype=np.int64):
    return xp.asarray(np.random.default_rng(seed).integers(0, V, shape).astype(dtype))


@pytest.mark.parametrize("ids_shape", [(1,), (7,), (3, 5), (2, 3, 4)])
def test_gradcheck_float64(xp, ids_shape):
    # V = 5 rows for 7..24 lookups: most rows repeat, one or two may be unused
    V, H = 5, 3
    ids = _ids(xp, ids_shape, V, seed=len(ids_shape))
    w = _table(xp, V, H, seed=1)
    check_op(embedding.forward, embedding.backward, {"weight": w}, kwargs={"ids": ids},
             seed=sum(ids_shape))


@pytest.mark.parametrize("ids_dtype", [np.int64, np.int32, np.uint8])
def test_lookup_and_repeated_ids_accumulate(xp, ids_dtype):
    w = _table(xp, 6, 4, seed=2)
    ids = xp.asarray(np.array([[1, 3, 1], [1, 0, 5]], dtype=ids_dtype))
    y, cache = embedding.forward(ids, w)
    assert y.shape == (2, 3, 4)
    np.testing.assert_array_equal(to_np(y[0, 1]), to_np(w[3]))
    dy = xp.asarray(np.arange(24, dtype=np.float64).reshape(2, 3, 4))
    dw = to_np(embedding.backward(dy, cache))
    d = to_np(dy)
    np.testing.assert_array_equal(dw[1], d[0, 0] + d[0, 2] + d[1, 0])   # id 1 three times
    np.testing.assert_array_equal(dw[0], d[1, 1])
    np.testing.assert_array_equal(dw[2], 0.0)                           # unused rows get 0
    np.testing.assert_array_equal(dw[4], 0.0)


def test_broadcast_ids_view(xp):
    # the model passes position ids as a broadcast (non-contiguous, zero-stride) view
    S, H = 5, 3
    w = _table(xp, 8, H, seed=3)
    pos = xp.broadcast_to(xp.arange(S), (4, S))
    y, cache = embedding.forward(pos, w, name="position_ids")
    dw = embedding.backward(xp.ones((4, S, H)), cache)
    np.testing.assert_array_equal(to_np(dw[:S]), 4.0)
    np.testing.assert_array_equal(to_np(dw[S:]), 0.0)


def test_float32_matches_float64(xp):
    V, H = 50, 16
    w32 = _table(xp, V, H, np.float32, seed=4)
    ids = _ids(xp, (8, 64), V, seed=5)              # each row used ~10 times
    dy32 = xp.asarray(np.random.default_rng(6).standard_normal((8, 64, H)).astype(np.float32))
    y32, c32 = embedding.forward(ids, w32)
    y64, c64 = embedding.forward(ids, w32.astype(np.float64))
    dw32 = embedding.backward(dy32, c32)
    dw64 = embedding.backward(dy32.astype(np.float64), c64)
    assert y32.dtype == np.float32 and dw32.dtype == np.float32
    np.testing.assert_array_equal(to_np(y32), to_np(y64))     # a lookup copies exactly
    # dw sums k ~ 10 (at most ~25) upstream rows per id: each addition rounds by eps32
    # relative to the partial sum, so |error| <= k eps32 sum|dy| ~ 25 * 25 eps32 * 1
    eps32 = float(np.finfo(np.float32).eps)
    assert_close("dweight", dw32, dw64, atol=625 * eps32, rtol=0)


def test_matches_torch(xp):
    torch = pytest.importorskip("torch")
    V, H = 11, 6
    w = _table(xp, V, H, seed=7)
    ids = _ids(xp, (3, 9), V, seed=8)
    dy = np.random.default_rng(9).standard_normal((3, 9, H))
    y, cache = embedding.forward(ids, w)
    dw = embedding.backward(xp.asarray(dy), cache)
    tw = torch.tensor(to_np(w), requires_grad=True)
    ty = torch.nn.functional.embedding(torch.tensor(to_np(ids)), tw)
    ty.backward(torch.tensor(dy))
    assert_close("y vs torch", y, ty.detach().numpy())             # exact: a copy
    assert_close("dweight vs torch", dw, tw.grad.numpy(), atol=1e-14, rtol=1e-14)


def test_numpy_ids_with_table_of_either_backend(xp):
    w = _table(xp, 4, 2, seed=10)
    y, cache = embedding.forward(np.array([3, 0]), w)
    assert type(y) is type(w)
    np.testing.assert_array_equal(to_np(y), to_np(w)[[3, 0]])
    assert embedding.backward(xp.ones((2, 2)), cache).shape == (4, 2)


def test_backward_does_not_write_into_cache(xp):
    ids = xp.asarray(np.array([1, 1, 2]))
    _, cache = embedding.forward(ids, _table(xp, 3, 2))
    embedding.backward(xp.ones((3, 2)), cache)
    np.testing.assert_array_equal(to_np(cache[0]), [1, 1, 2])


@pytest.mark.parametrize("bad", [np.array([0.0, 1.0]), np.array([True, False])])
def test_non_integer_ids_raise(xp, bad):
    with pytest.raises(TypeError, match=rf"ids has dtype {bad.dtype}, expected an integer array"):
        embedding.forward(xp.asarray(bad), _table(xp, 3, 2))


def test_non_array_ids_raise(xp):
    with pytest.raises(TypeError, match=r"input_ids has dtype list, expected an integer array"):
        embedding.forward([0, 1], _table(xp, 3, 2), name="input_ids")


@pytest.mark.parametrize("value", [7, 5, -1])
def test_out_of_range_ids_raise(xp, value):
    ids = xp.asarray(np.array([[0, 1], [value, 2]]))
    with pytest.raises(ValueError, match=rf"input_ids contains {value}, out of range: "
                                         r"expected 0 <= input_ids < 5"):
        embedding.forward(ids, _table(xp, 5, 3), name="input_ids")


def test_token_type_name_in_message(xp):
    with pytest.raises(ValueError, match=r"token_type_ids contains 2, .* 0 <= token_type_ids < 2"):
        embedding.forward(xp.asarray(np.array([0, 2])), _table(xp, 2, 4), name="token_type_ids")


def test_bad_table_raises(xp):
    with pytest.raises(ValueError, match=r"weight has shape \(6,\), expected \(V, H\)"):
        embedding.forward(xp.asarray(np.array([0])), xp.zeros(6))


def test_backward_adds_into_out():
    """``out=`` adds the scatter into an existing gradient (repeated ids included) and
    returns it: the same numbers as adding the fresh dweight."""
    r = np.random.default_rng(0)
    w = r.standard_normal((6, 3))
    ids = np.array([[1, 4, 1], [0, 1, 5]])
    _, cache = embedding.forward(ids, w)
    dy = r.standard_normal((2, 3, 3))
    start = r.standard_normal((6, 3))
    out = start.copy()
    got = embedding.backward(dy, cache, out=out)
    assert got is out
    np.testing.assert_allclose(out, start + embedding.backward(dy, cache), rtol=1e-15, atol=1e-15)
    with pytest.raises(ValueError, match="out has shape"):
        embedding.backward(dy, cache, out=np.zeros((5, 3)))
