"""Tests of the threaded linear layer (minibert/kernels/linear_cpu.py) behind ``minibert.ops.linear``
and of the threading policy it shares with every kernel (minibert/kernels/_threads.py).

The readable op (under ``readable_ops()``) is the reference: the kernel runs the same BLAS
products on pieces of the matrices, so float64 results agree to 1e-12 of each tensor's
scale and float32 results are as accurate as the readable op's against float64. The cut
into pieces depends on the shape only: one thread and two give the same bits. Sizes cross
the cuts (N = 255, 256, 257, 600 rows; O below and above ``PARTS * MIN_DW_ROWS``).
"""
import numba
import numpy as np
import pytest

from minibert.gradcheck import check_op
from minibert.kernels import _threads, linear_cpu
from minibert.ops import Fused, linear, readable_ops

FLOATS = [pytest.param(np.float32, id="float32"), pytest.param(np.float64, id="float64")]
SHAPES = [((1,), 1, 1), ((7,), 5, 3), ((2, 3), 97, 129), ((255,), 33, 300),
          ((256,), 64, 257), ((3, 199), 40, 17), ((600,), 130, 70),
          ((160,), 24, 1100), ((2, 50), 9, 513)]      # few rows, many outputs: cut by columns


@pytest.fixture(autouse=True)
def always_parallel(monkeypatch):
    """Every product takes the threaded path, however small."""
    monkeypatch.setattr(linear_cpu, "MIN_PARALLEL_MACS", 0)


def _problem(lead, I, O, dtype, seed=0):
    r = np.random.default_rng(seed)
    x = r.standard_normal((*lead, I)).astype(dtype)
    w = r.standard_normal((O, I)).astype(dtype)
    b = r.standard_normal(O).astype(dtype)
    dy = r.standard_normal((*lead, O)).astype(dtype)
    return x, w, b, dy


def _run(x, w, b, dy):
    y, cache = linear.forward(x, w, b)
    dx, dw, db = linear.backward(dy, cache)
    return {"y": y, "dx": dx, "dw": dw, "db": db}, cache


def _rel(a, ref):
    return float(np.max(np.abs(a - ref)) / max(np.max(np.abs(ref)), 1e-300))


@pytest.mark.parametrize("lead,I,O", SHAPES)
def test_float64_matches_readable(lead, I, O):
    x, w, b, dy = _problem(lead, I, O, np.float64)
    got, cache = _run(x, w, b, dy)
    assert isinstance(cache, Fused)
    with readable_ops():
        ref, ref_cache = _run(x, w, b, dy)
    assert not isinstance(ref_cache, Fused)
    for name in ref:
        assert got[name].shape == ref[name].shape and got[name].dtype == np.float64
        assert _rel(got[name], ref[name]) <= 1e-12, name


@pytest.mark.parametrize("lead,I,O", SHAPES[2:])
def test_float32_as_accurate_as_readable(lead, I, O):
    """Error against the float64 result, RMS: within 1.25x the readable float32 op's (both
    are the same dot products in BLAS, cut differently)."""
    x, w, b, dy = _problem(lead, I, O, np.float32, seed=1)
    with readable_ops():
        ref, _ = _run(*(a.astype(np.float64) for a in (x, w, b, dy)))
        mine, _ = _run(x, w, b, dy)
    got, _ = _run(x, w, b, dy)

    def rms(a, name):
        return float(np.sqrt(np.mean((a.astype(np.float64) - ref[name]) ** 2)))
    eps = np.finfo(np.float32).eps
    for name in ref:
        scale = float(np.sqrt(np.mean(ref[name] ** 2)))
        assert got[name].dtype == np.float32
        assert rms(got[name], name) <= 1.25 * rms(mine[name], name) + eps * scale, name


def test_gradcheck_float64():
    x, w, b, _ = _problem((2, 3), 5, 4, np.float64)
    check_op(linear.forward, linear.backward, {"x": x, "weight": w, "bias": b})
    check_op(linear.forward, linear.backward, {"x": x, "weight": w})
    assert isinstance(linear.forward(x, w, b)[1], Fused)


def test_no_bias_and_strided_input():
    x, w, _, dy = _problem((300,), 48, 90, np.float64, seed=2)
    xt = np.asfortranarray(x)                        # not C-contiguous
    got, _ = _run(xt, w, None, dy)
    assert got["db"] is None
    with readable_ops():
        ref, _ = _run(x, w, None, dy)
    for name in ("y", "dx", "dw"):
        assert _rel(got[name], ref[name]) <= 1e-12, name


@pytest.mark.parametrize("dtype", FLOATS)
def test_same_bits_at_any_thread_count(dtype):
    x, w, b, dy = _problem((600,), 130, 300, dtype, seed=3)
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one, _ = _run(x, w, b, dy)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two, _ = _run(x, w, b, dy)
    finally:
        numba.set_num_threads(old)
    for name in one:
        assert np.array_equal(one[name], two[name]), name


def test_run_rows_covers_every_row_once(monkeypatch):
    """``run_rows`` hands out disjoint ranges that cover [0, n), in parallel or not."""
    monkeypatch.setattr(_threads, "MIN_PARALLEL_ELEMENTS", 0)
    for n in (1, 2, 7, 8, 9, 1000):
        seen = np.zeros(n, np.int64)

        def kernel(counts, r0, r1):
            counts[r0:r1] += 1
        _threads.run_rows(kernel, n, seen)
        assert np.all(seen == 1), n


def test_nested_tasks_run_inline():
    """A task that starts tasks of its own runs them itself instead of waiting for a pool
    worker that may be busy with it (a deadlock otherwise)."""
    out = np.zeros((4, 4))

    def inner(i, j):
        out[i, j] = 1

    def outer(i):
        _threads.run_tasks(inner, [(i, j) for j in range(4)])
    _threads.run_tasks(outer, [(i,) for i in range(4)])
    assert np.all(out == 1)


def test_task_error_is_raised():
    def task(i):
        if i == 3:
            raise ValueError("task 3 failed")
    with pytest.raises(ValueError, match="task 3"):
        _threads.run_tasks(task, [(i,) for i in range(8)])


@pytest.mark.parametrize("readable", [False, True], ids=["kernel", "readable"])
@pytest.mark.parametrize("O", [1100, 5000])
def test_dweight_out_is_added_into_and_returned(readable, O):
    """dweight_out means "add into" (as embedding.backward(out=)): the tied MLM decoder and
    the word-embedding backward both add into one buffer, in either order."""
    x, w, b, dy = _problem((160,), 24, O, np.float64, seed=4)
    with readable_ops(readable):
        _, cache = linear.forward(x, w, b)
        ref = linear.backward(dy, cache)
        start = np.random.default_rng(5).standard_normal(w.shape)
        out = start.copy()
        got = linear.backward(dy, cache, dweight_out=out)
        assert got[1] is out
        assert _rel(out, start + ref[1]) <= 1e-12
        for a, r in zip((got[0], got[2]), (ref[0], ref[2])):
            assert _rel(a, r) <= 1e-12
        with pytest.raises(ValueError, match="dweight_out has shape"):
            linear.backward(dy, cache, dweight_out=np.zeros((3, 3)))
