"""Tests of the GPU attention ladder (``minibert/kernels/ladder/attn_cuda_v*.py``) under
Numba's CUDA simulator, or on a GPU where one answers: every rung's forward against the
textbook op, as ``test_attention_cuda.py`` tests the production kernel (rung 4)::

    NUMBA_ENABLE_CUDASIM=1 python -m pytest -q tests/kernels/test_ladder_cuda.py
"""
import os

import numpy as np
import pytest

from minibert.backend import gpu_available
from minibert.ops import attention, readable_ops
from tests.helpers import assert_close

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"
if not SIMULATOR and not gpu_available():
    pytest.skip("CUDA kernels: set NUMBA_ENABLE_CUDASIM=1 (simulator) or run where a GPU answers",
                allow_module_level=True)

from numba import cuda  # noqa: E402

from minibert.kernels import attention_cuda  # noqa: E402
from minibert.kernels.ladder import attn_cuda_v1_naive, attn_cuda_v2_shared_tiles, attn_cuda_v3_online_softmax  # noqa: E402

TOL64 = 1e-12


def _production(q, k, v, mask, scale, p, seed, offset, block_q, block_k):
    return attention_cuda.attention_forward(q, k, v, mask, scale, p, seed, offset,
                                            block_q=block_q, block_k=block_k)


RUNGS = {
    "v1": lambda q, k, v, mask, scale, p, seed, offset, bq, bk:
        attn_cuda_v1_naive.forward(q, k, v, mask, scale, p, seed, offset, block_q=bq),
    "v2": lambda q, k, v, mask, scale, p, seed, offset, bq, bk:
        attn_cuda_v2_shared_tiles.forward(q, k, v, mask, scale, p, seed, offset,
                                          block_q=bq, block_k=bk),
    "v3": lambda q, k, v, mask, scale, p, seed, offset, bq, bk:
        attn_cuda_v3_online_softmax.forward(q, k, v, mask, scale, p, seed, offset,
                                            block_q=bq, block_k=bk),
    "v4": _production,
}


def _mask(S):
    """(3, S): padding at the end, no real key at all, holes."""
    m = np.ones((3, S), dtype=np.int64)
    m[0, S - S // 3:] = 0
    m[1] = 0
    m[2, ::3] = 0
    m[2, S // 2] = 1
    return m


def _textbook(q, k, v, mask, p, seed, offset):
    with readable_ops():
        return attention.forward(q, k, v, attention_mask=mask, dropout_p=p, seed=seed,
                                 offset=offset, training=p > 0)[0]


CASES = [(1, 16, 0.0), (7, 16, 0.3), (33, 16, 0.0), (33, 64, 0.3)]


@pytest.mark.parametrize("rung", sorted(RUNGS))
@pytest.mark.parametrize("S,D,p", CASES, ids=[f"S{S}-D{D}-p{p}" for S, D, p in CASES])
def test_rung_matches_textbook_float64(rung, S, D, p):
    """Tiles of 8 queries and 16 keys (several of each at S = 33, the last partial)."""
    r = np.random.default_rng(S + D)
    q, k, v = (r.standard_normal((3, 1, S, D)) for _ in range(3))
    mask = _mask(S)
    ref = _textbook(q, k, v, mask, p, 5, 2**32 + 1)
    out, lse = RUNGS[rung](*(cuda.to_device(x) for x in (q, k, v)), mask, D ** -0.5, p, 5,
                           2**32 + 1, 8, 16)
    out, lse = out.copy_to_host(), lse.copy_to_host()
    assert_close(f"out ({rung})", out, ref, atol=TOL64)
    assert np.all(out[1] == 0) and np.all(lse[1] == np.inf), "the all-padding sequence"
    assert np.all(np.isfinite(lse[[0, 2]]))


@pytest.mark.parametrize("rung", sorted(RUNGS))
def test_rung_float32_as_accurate_as_textbook(rung):
    """RMS error against the float64 textbook at most 1.25 times the float32 textbook's."""
    S, D = 33, 16
    r = np.random.default_rng(3)
    q, k, v = (2 * r.standard_normal((3, 2, S, D)).astype(np.float32) for _ in range(3))
    mask = _mask(S)
    ref = _textbook(*(x.astype(np.float64) for x in (q, k, v)), mask, 0.2, 7, 1)
    book = _textbook(q, k, v, mask, 0.2, 7, 1)
    out, lse = RUNGS[rung](*(cuda.to_device(x) for x in (q, k, v)), mask, D ** -0.5, 0.2, 7, 1,
                           8, 16)
    out = out.copy_to_host()
    assert out.dtype == np.float32 and lse.dtype == np.float32
    err = float(np.sqrt(np.mean((out.astype(np.float64) - ref) ** 2)))
    book_err = float(np.sqrt(np.mean((book.astype(np.float64) - ref) ** 2)))
    assert err <= 1.25 * book_err, f"{rung}: RMS error {err:.3e} > 1.25 x textbook {book_err:.3e}"
