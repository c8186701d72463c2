"""The GPU embedding backward (``minibert/kernels/embedding_cuda.py``, a sorted segment sum)
under Numba's CUDA simulator (or on a GPU where one answers), against the NumPy reference
``np.add.at``: float64 within 1e-12, float32 within a few roundings of the sum, identical
bits on two runs, repeated ids, ids that never occur, one id everywhere, segments that span
several chunks (small ``chunk``), several column tiles (small ``threads``).

Run in its own process, the simulator on before ``numba.cuda`` is first imported::

    NUMBA_ENABLE_CUDASIM=1 python -m pytest -q tests/kernels/test_embedding_cuda.py
"""
import numpy as np
import pytest

from tests.helpers import skip_unless_cuda_kernels_can_run

skip_unless_cuda_kernels_can_run()

from numba import cuda  # noqa: E402  (after the skip: the main run never imports numba.cuda)

from minibert.kernels.embedding_cuda import segment_sum_into  # noqa: E402


def _ids(kind, N, V, r):
    if kind == "random":                           # repeats, and ids that never occur
        return r.integers(0, V, N)
    if kind == "one id":
        return np.full(N, V // 2)
    if kind == "two ids":                          # token types: long segments
        return r.integers(0, 2, N)
    if kind == "runs":                             # sorted already, with runs across chunks
        return np.sort(r.integers(0, 4, N))
    raise ValueError(kind)


def _run(ids, rows, V, chunk, threads, start=None):
    out = np.zeros((V, rows.shape[1]), rows.dtype) if start is None else start.copy()
    d_out = cuda.to_device(out)
    segment_sum_into(d_out, cuda.to_device(ids), cuda.to_device(rows), chunk=chunk,
                     threads=threads)
    return d_out.copy_to_host()


@pytest.mark.parametrize("kind", ["random", "one id", "two ids", "runs"])
@pytest.mark.parametrize("N,chunk,threads", [(1, 4, 3), (23, 4, 3), (40, 7, 8), (37, 128, 5)],
                         ids=str)
def test_float64_matches_add_at(kind, N, chunk, threads):
    r = np.random.default_rng(N + chunk)
    V, F = 11, 7
    ids = _ids(kind, N, V, r)
    rows = r.standard_normal((N, F))
    start = r.standard_normal((V, F))              # it adds into what is there
    ref = start.copy()
    np.add.at(ref, ids, rows)
    got = _run(ids, rows, V, chunk, threads, start)
    assert np.abs(got - ref).max() <= 1e-12
    untouched = np.setdiff1d(np.arange(V), ids)
    assert np.array_equal(got[untouched], start[untouched])   # absent ids: not even +0.0
    again = _run(ids, rows, V, chunk, threads, start)
    assert np.array_equal(got.view(np.uint8), again.view(np.uint8))


def test_float32_error_is_that_of_a_sum():
    """float32 against the float64 sum: within a few roundings of the largest partial sum."""
    r = np.random.default_rng(3)
    N, V, F = 50, 6, 9
    ids = r.integers(0, V, N)
    rows = r.standard_normal((N, F))
    ref = np.zeros((V, F))
    np.add.at(ref, ids, rows)
    got = _run(ids, rows.astype(np.float32), V, 4, 4)
    assert got.dtype == np.float32
    scale = np.abs(rows).sum()
    assert np.abs(got - ref).max() <= 4 * N * np.finfo(np.float32).eps * scale / N


def test_int32_ids_and_bad_shapes():
    r = np.random.default_rng(4)
    ids = r.integers(0, 5, 9).astype(np.int32)
    rows = r.standard_normal((9, 3))
    ref = np.zeros((5, 3))
    np.add.at(ref, ids, rows)
    assert np.abs(_run(ids, rows, 5, 2, 2) - ref).max() <= 1e-12
    with pytest.raises(ValueError, match=r"rows has shape \(9, 3\), expected \(8, 3\)"):
        segment_sum_into(cuda.to_device(np.zeros((5, 3))), cuda.to_device(ids[:8]),
                         cuda.to_device(rows))
    with pytest.raises(ValueError, match=r"chunk=0 is invalid"):
        segment_sum_into(cuda.to_device(np.zeros((5, 3))), cuda.to_device(ids),
                         cuda.to_device(rows), chunk=0)
