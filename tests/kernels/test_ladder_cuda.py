"""Tests of the GPU rungs of the study ladder (``kernels/attn_cuda_v*.py``, loaded by path
with the ``rung`` fixture) under Numba's CUDA simulator, or on a GPU where one answers:
every rung's forward against the textbook op, as ``test_attention_cuda.py`` tests the
production kernel (rung 4), and each rung run as a script::

    NUMBA_ENABLE_CUDASIM=1 python -m pytest -q tests/kernels/test_ladder_cuda.py
"""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from minibert.ops import attention, readable_ops
from tests.helpers import assert_close, skip_unless_cuda_kernels_can_run

SIMULATOR = skip_unless_cuda_kernels_can_run()

from numba import cuda  # noqa: E402

from minibert.kernels import attention_cuda_launch  # noqa: E402

TOL64 = 1e-12
ROOT = pathlib.Path(__file__).resolve().parents[2]
RUNG_FILES = {"v1": "attn_cuda_v1_naive", "v2": "attn_cuda_v2_shared_tiles",
              "v3": "attn_cuda_v3_online_softmax"}
RUNGS = sorted(RUNG_FILES) + ["v4"]


@pytest.fixture
def run_rung(rung):
    """``run_rung(name, q, k, v, mask, scale, p, seed, offset, block_q, block_k)``: the
    forward of GPU rung ``name`` (v1 to v3 from kernels/, v4 the production kernel); rung 1
    has no key tiles and ignores block_k."""
    def run(name, q, k, v, mask, scale, p, seed, offset, block_q, block_k):
        if name == "v4":
            return attention_cuda_launch.attention_forward(q, k, v, mask, scale, p, seed, offset,
                                                    block_q=block_q, block_k=block_k)
        tiles = {"block_q": block_q} if name == "v1" else {"block_q": block_q, "block_k": block_k}
        return rung(RUNG_FILES[name]).forward(q, k, v, mask, scale, p, seed, offset, **tiles)
    return run


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


@pytest.mark.parametrize("name", RUNGS)
@pytest.mark.parametrize("S,D,p", CASES, ids=[f"S{S}-D{D}-p{p}" for S, D, p in CASES])
def test_rung_matches_textbook_float64(run_rung, name, S, D, p):
    """Tiles of 8 queries and 16 keys (several of each at S = 33, the last partial)."""
    r = np.random.default_rng(S + D)
    q, k, v = (r.standard_normal((3, 1, S, D)) for _ in range(3))
    mask = _mask(S)
    ref = _textbook(q, k, v, mask, p, 5, 2**32 + 1)
    out, lse = run_rung(name, *(cuda.to_device(x) for x in (q, k, v)), mask, D ** -0.5, p, 5,
                        2**32 + 1, 8, 16)
    out, lse = out.copy_to_host(), lse.copy_to_host()
    assert_close(f"out ({name})", out, ref, atol=TOL64)
    assert np.all(out[1] == 0) and np.all(lse[1] == np.inf), "the all-padding sequence"
    assert np.all(np.isfinite(lse[[0, 2]]))


@pytest.mark.parametrize("name", RUNGS)
def test_rung_float32_as_accurate_as_textbook(run_rung, name):
    """RMS error against the float64 textbook at most 1.25 times the float32 textbook's."""
    S, D = 33, 16
    r = np.random.default_rng(3)
    q, k, v = (2 * r.standard_normal((3, 2, S, D)).astype(np.float32) for _ in range(3))
    mask = _mask(S)
    ref = _textbook(*(x.astype(np.float64) for x in (q, k, v)), mask, 0.2, 7, 1)
    book = _textbook(q, k, v, mask, 0.2, 7, 1)
    out, lse = run_rung(name, *(cuda.to_device(x) for x in (q, k, v)), mask, D ** -0.5, 0.2, 7,
                        1, 8, 16)
    out = out.copy_to_host()
    assert out.dtype == np.float32 and lse.dtype == np.float32
    err = float(np.sqrt(np.mean((out.astype(np.float64) - ref) ** 2)))
    book_err = float(np.sqrt(np.mean((book.astype(np.float64) - ref) ** 2)))
    assert err <= 1.25 * book_err, f"{name}: RMS error {err:.3e} > 1.25 x textbook {book_err:.3e}"


@pytest.mark.parametrize("name", sorted(RUNG_FILES))
def test_rung_refuses_bad_input(rung, name):
    """Each rung checks its arguments itself, before any launch."""
    mod = rung(RUNG_FILES[name])
    q = cuda.to_device(np.zeros((2, 1, 5, 4)))
    with pytest.raises(TypeError, match=r"q has type ndarray, expected a GPU array"):
        mod.forward(np.zeros((2, 1, 5, 4)), q, q, None, None)
    with pytest.raises(TypeError, match=r"k has dtype float32, expected the dtype of q"):
        mod.forward(q, cuda.to_device(np.zeros((2, 1, 5, 4), np.float32)), q, None, None)
    with pytest.raises(ValueError, match=r"mask contains the value 2, expected only 0"):
        mod.forward(q, q, q, np.full((2, 5), 2), None)
    with pytest.raises(ValueError, match=r"mask has shape \(2, 4\), expected \(B, S\)"):
        mod.forward(q, q, q, np.ones((2, 4)), None)
    with pytest.raises(ValueError, match=r"dropout_p=1.5 is out of range"):
        mod.forward(q, q, q, None, None, 1.5)
    with pytest.raises(ValueError, match=r"block_q=0 is invalid, expected a positive integer"):
        mod.forward(q, q, q, None, None, block_q=0)


@pytest.mark.skipif(not SIMULATOR, reason="the script's simulator run")
@pytest.mark.parametrize("name", sorted(RUNG_FILES))
def test_rung_runs_as_a_script_in_the_simulator(name, tmp_path):
    """``NUMBA_ENABLE_CUDASIM=1 python kernels/<rung>.py``, started from another folder:
    the check on a small shape passes; the time is not measured under the simulator."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    r = subprocess.run([sys.executable, str(ROOT / "kernels" / f"{RUNG_FILES[name]}.py"),
                        "--dtype", "float64", "--dropout", "0.3", "--seq", "13"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "check against minibert.ops.attention: PASS" in r.stdout, r.stdout
    assert "Numba's CUDA simulator" in r.stdout
