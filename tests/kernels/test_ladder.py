"""Tests of the CPU rungs of the study ladder (kernels/attn_v1_naive.py, attn_v2_fused_softmax.py,
attn_v3_online_softmax.py, attn_v4_tiled.py, loaded by path with the ``rung`` fixture; rung
5, the production kernel, is tested in test_fused_attention.py) against the textbook op
``minibert.ops.attention``, and of the rungs as scripts and as standalone files.

Every rung computes the same function behind the same contract; the textbook op is the
reference. float64 results must agree with it to rounding (1e-12); float32 results must be
about as accurate as the textbook's own float32 (see ``test_float32_as_accurate_as_textbook``).
Odd sizes (S = 1, 7, 97, 129; D = 16, 64, 80) and masks with a full sequence, partial
padding, a single real key, no real key at all, and holes in the middle.
"""
import ast
import functools
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from minibert.ops import attention, readable_ops
from tests.helpers import assert_close

EPS32 = float(np.finfo(np.float32).eps)
CPU_RUNGS = ["attn_v1_naive", "attn_v2_fused_softmax", "attn_v3_online_softmax", "attn_v4_tiled"]
CUDA_RUNGS = ["attn_cuda_v1_naive", "attn_cuda_v2_shared_tiles", "attn_cuda_v3_online_softmax"]
VARIANTS = [pytest.param(name, id=name.split("_")[1]) for name in CPU_RUNGS]
ROOT = pathlib.Path(__file__).resolve().parents[2]
SIZES = [(S, D) for S in (1, 7, 97, 129) for D in (16, 64, 80)]
A = 2


def _mask(S, seed):
    """(5, S) 0/1 mask: full, a third padded, one real key, no real key (all padding), and
    a random pattern with holes (at least one real key)."""
    m = np.zeros((5, S), dtype=np.int64)
    for b, n in enumerate([S, max(1, S - S // 3), 1, 0]):
        m[b, :n] = 1
    m[4] = np.random.default_rng(seed).integers(0, 2, S)
    m[4, S // 2] = 1
    return m


def _problem(S, D, dtype, seed):
    r = np.random.default_rng(seed)
    q, k, v, dout = (r.standard_normal((5, A, S, D)).astype(dtype) for _ in range(4))
    return q, k, v, dout, _mask(S, seed)


def _textbook(q, k, v, dout, mask, p=0.0, seed=0, offset=0):
    """The textbook op's (out, dq, dk, dv) and probabilities, in the dtype of q (under
    ``readable_ops()``: the readable code, never a kernel, is the reference)."""
    with readable_ops():
        out, cache = attention.forward(q, k, v, attention_mask=mask, dropout_p=p, seed=seed,
                                       offset=offset, training=p > 0)
        return (out,) + tuple(attention.backward(dout, cache)), cache["probs"]


def _lse(q, k, mask):
    """log sum_{j real} exp(s_ij) computed by selecting the real keys (no additive mask), in
    the dtype of q; +inf for a sequence without a real key."""
    B, A_, S, D = q.shape
    lse = np.full((B, A_, S), np.inf, dtype=q.dtype)
    for b in range(B):
        idx = np.flatnonzero(mask[b] == 1)
        if idx.size:
            s = (q[b] @ k[b][:, idx].swapaxes(-1, -2)) * q.dtype.type(1 / math.sqrt(D))
            m = s.max(axis=-1, keepdims=True)
            lse[b] = (m + np.log(np.exp(s - m).sum(axis=-1, keepdims=True)))[..., 0]
    return lse


def _run(mod, q, k, v, dout, mask, p=0.0, seed=0, offset=0):
    out, lse = mod.forward(q, k, v, mask, None, p, seed, offset)
    grads = mod.backward(dout, q, k, v, out, lse, mask, None, p, seed, offset)
    return (out,) + tuple(grads), lse


def _assert_lse(name, lse, ref, atol):
    inf = np.isinf(ref)
    assert np.array_equal(np.isinf(lse), inf) and np.all(lse[inf] > 0), \
        f"{name}: lse is not +inf exactly at the sequences without a real key"
    assert_close(name, lse[~inf], ref[~inf], atol=atol)


# --------------------------------------------------------------------------- float64


@functools.cache
def _float64_case(S, D):
    """Inputs and textbook results, computed once and shared by the three rungs."""
    q, k, v, dout, mask = _problem(S, D, np.float64, seed=S * 1000 + D)
    ref, _ = _textbook(q, k, v, dout, mask)
    return (q, k, v, dout, mask), ref, _lse(q, k, mask)


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("S,D", SIZES)
def test_float64_matches_textbook(rung, name, S, D):
    """Same math, different summation orders: float64 differences are a few tens of eps64
    (~1e-14) on values of order one, so 1e-12 catches any wrong formula, index or mask."""
    mod = rung(name)
    inputs, ref, lse_ref = _float64_case(S, D)
    got, lse = _run(mod, *inputs)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, ref):
        assert a.dtype == np.float64
        assert_close(f"{mod.__name__} {name}", a, b, atol=1e-12)
    _assert_lse(f"{mod.__name__} lse", lse, lse_ref, atol=1e-12)


@pytest.mark.parametrize("block_k", [1, 5, 200])
def test_online_softmax_block_sizes(monkeypatch, rung, block_k):
    """Rung 3 with one key per block (a rescale at every key), blocks that do not divide S,
    and one block longer than S: the same result."""
    v3 = rung("attn_v3_online_softmax")
    monkeypatch.setattr(v3, "BLOCK_K", block_k)
    q, k, v, dout, mask = _problem(97, 16, np.float64, seed=block_k)
    # scores of very different sizes, so the running max really moves from block to block
    q *= np.linspace(0.1, 6.0, 97)[None, None, :, None]
    got, lse = _run(v3, q, k, v, dout, mask, p=0.2, seed=5, offset=1)
    ref, _ = _textbook(q, k, v, dout, mask, p=0.2, seed=5, offset=1)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, ref):
        assert_close(f"block_k={block_k} {name}", a, b, atol=1e-12 * max(1.0, np.abs(b).max()))
    _assert_lse(f"block_k={block_k} lse", lse, _lse(q, k, mask), atol=1e-12)


# --------------------------------------------------------------------------- float32


def _magnitudes(q, k, v, dout, probs, scale):
    """The textbook computation on absolute values, in float64: for each result, the size of
    the terms its sums add up (|out| <= P |V|, and so on). A rounding of relative size eps
    in any term moves a result by at most eps times this."""
    aq, ak, av, ado = (np.abs(x.astype(np.float64)) for x in (q, k, v, dout))
    adp = ado @ av.swapaxes(-1, -2)                                    # |dO| |V|^T
    ads = probs * (adp + (probs * adp).sum(-1, keepdims=True))         # |dS| bound
    return (probs @ av, scale * ads @ ak, scale * ads.swapaxes(-1, -2) @ aq,
            probs.swapaxes(-1, -2) @ ado)


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("S,D", SIZES)
def test_float32_as_accurate_as_textbook(rung, name, S, D):
    """float32 out, lse, dq, dk, dv against float64 results from the same (rounded) inputs.

    The statement (as in FlashAttention's tests): a kernel's float32 error is at most twice
    the textbook op's own float32 error, both measured against float64. One addition: where
    the textbook is exact by structure (S = 1 or a single real key: P = 1 and dS = 0
    exactly, so its error is 0), a kernel that rounds the exponent s - lse differently
    still carries one rounding of the score into P (relative error eps |s|, with |s| up to
    s_abs = max scale |q| . |k|), so the bound also allows eps32 (1 + s_abs) times the size
    of the terms of each result (``_magnitudes``). (Rung 3 meets that case in every
    sequence with one real key: dS = P (dP - dO . O) is then the difference of two equal
    dot products rounded in different orders, where the textbook's P (dP - P dP) is exactly
    0.) Measured over this grid: no error is above 0.2 of its bound; a wrong formula is off
    by 1e-1.
    """
    mod = rung(name)
    inputs, ref, bounds, lse_ref, lse_bound = _float32_case(S, D)
    got, lse = _run(mod, *inputs)
    for name, a, r, bound in zip(("out", "dq", "dk", "dv"), got, ref, bounds):
        assert a.dtype == np.float32
        assert_close(f"{mod.__name__} {name}", a, r, atol=bound)
    _assert_lse(f"{mod.__name__} lse", lse, lse_ref, atol=lse_bound)


@functools.cache
def _float32_case(S, D):
    """float32 inputs, float64 results from them, and the bound of each result."""
    q, k, v, dout, mask = _problem(S, D, np.float32, seed=S * 1000 + D + 1)
    q64, k64, v64, dout64 = (x.astype(np.float64) for x in (q, k, v, dout))
    ref, probs = _textbook(q64, k64, v64, dout64, mask)
    naive, _ = _textbook(q, k, v, dout, mask)
    scale = 1 / math.sqrt(D)
    s_abs = float((scale * np.abs(q64) @ np.abs(k64).swapaxes(-1, -2)).max())
    bounds = []
    for r, t, m in zip(ref, naive, _magnitudes(q, k, v, dout, probs, scale)):
        err_textbook = float(np.abs(t.astype(np.float64) - r).max())
        bounds.append(2 * err_textbook + EPS32 * (1 + s_abs) * float(m.max()))
    # lse: the textbook op has none; its float32 counterpart is the same formula in float32
    lse_ref, lse_naive = _lse(q64, k64, mask), _lse(q, k, mask)
    real = ~np.isinf(lse_ref)
    err_textbook = float(np.abs(lse_naive[real] - lse_ref[real]).max())
    lse_bound = 2 * err_textbook + EPS32 * (1 + s_abs)
    return (q, k, v, dout, mask), ref, bounds, lse_ref, lse_bound


# --------------------------------------------------------------------------- dropout


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("S", [7, 97])
def test_dropout_bits_match_textbook(rung, name, dtype, S):
    """With dropout the kernels must drop exactly the textbook's entries (the Philox bits of
    ``rng.keep_mask`` for the same seed and offset): one different bit moves an output by
    a whole probability times v, ~1e-2, far above the tolerances. A seed above 2**63 checks
    the unsigned path. Another offset must give another result."""
    mod = rung(name)
    D = 16
    q, k, v, dout, mask = _problem(S, D, dtype, seed=S)
    p, seed, offset = 0.3, 2**63 + 12345, 7
    got, lse = _run(mod, q, k, v, dout, mask, p, seed, offset)
    ref, _ = _textbook(q, k, v, dout, mask, p, seed, offset)
    if dtype == np.float64:
        tol = 1e-12
    else:
        # the textbook's float32 error here is ~1e-6 (test above); 1e-4 is still 100x below
        # the effect of one wrong bit
        tol = 1e-4
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, ref):
        assert_close(f"{mod.__name__} {name} with dropout", a, b, atol=tol)
    other, _ = _run(mod, q, k, v, dout, mask, p, seed, offset + 1)
    assert np.abs(other[0] - got[0]).max() > 1e-2, "another offset gave the same dropout mask"


# --------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_all_padding_sequence_gives_zeros(rung, name, dtype):
    """A sequence without a real key: zero output, lse = +inf, zero gradients, no NaN
    anywhere, also with dropout and large scores (the other sequences stay finite)."""
    mod = rung(name)
    q, k, v, dout, mask = _problem(7, 16, dtype, seed=3)
    q *= dtype(30.0)                                           # scores in the hundreds
    for p in (0.0, 0.5):
        (out, dq, dk, dv), lse = _run(mod, q, k, v, dout, mask, p, seed=1, offset=2)
        for name, x in (("out", out), ("dq", dq), ("dk", dk), ("dv", dv)):
            assert np.all(np.isfinite(x)), f"{name} has non-finite entries (p={p})"
            assert np.all(x[3] == 0), f"{name} of the all-padding sequence is not zero (p={p})"
        assert np.all(lse[3] == np.inf), "lse of the all-padding sequence is not +inf"
        assert np.all(np.isfinite(lse[[0, 1, 2, 4]])), "lse of a real sequence is not finite"


@pytest.mark.parametrize("name", VARIANTS)
def test_no_mask_and_explicit_scale(rung, name):
    """mask=None means every key is real; an explicit scale replaces 1/sqrt(D)."""
    mod = rung(name)
    q, k, v, dout, _ = _problem(7, 16, np.float64, seed=4)
    ones = np.ones((5, 7), dtype=np.int64)
    a, lse_a = mod.forward(q, k, v, None, 0.3)
    b, lse_b = mod.forward(q, k, v, ones, 0.3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(lse_a, lse_b)
    with readable_ops():
        ref, cache = attention.forward(q, k, v, attention_mask=ones, scale=0.3)
        ref_grads = attention.backward(dout, cache)
    assert_close("out with scale=0.3", a, ref, atol=1e-12)
    grads = mod.backward(dout, q, k, v, a, lse_a, None, 0.3)
    for name, g, r in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert_close(f"{name} with scale=0.3", g, r, atol=1e-12)


@pytest.mark.parametrize("name", VARIANTS)
def test_backward_returns_fresh_arrays_and_leaves_inputs_alone(rung, name):
    mod = rung(name)
    q, k, v, dout, mask = _problem(7, 16, np.float32, seed=5)
    # non-contiguous inputs are accepted (made contiguous, never written)
    qt = np.ascontiguousarray(q.swapaxes(1, 2)).swapaxes(1, 2)
    inputs = (qt, k, v, dout)
    before = [x.copy() for x in inputs]
    out, lse = mod.forward(qt, k, v, mask, None, 0.1, 3, 4)
    lse_before, out_before = lse.copy(), out.copy()
    grads = mod.backward(dout, qt, k, v, out, lse, mask, None, 0.1, 3, 4)
    for x, x0 in zip(inputs + (out, lse), before + [out_before, lse_before]):
        np.testing.assert_array_equal(x, x0)
    for g in grads:
        assert not any(np.may_share_memory(g, x) for x in inputs + (out, lse))
    ref, _ = _run(mod, q, k, v, dout, mask, 0.1, 3, 4)
    for a, b in zip((out,) + tuple(grads), ref):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("p", [0.0, 0.25])
def test_ladder_agrees_with_production_kernel(rung, p):
    """Every rung and the top of the ladder (v5, ``minibert.kernels.fused_attention_*``)
    compute the same function, ``lse`` convention included (+inf without a real key)."""
    kernels = pytest.importorskip("minibert.kernels")
    if not hasattr(kernels, "fused_attention_forward"):
        pytest.skip("minibert.kernels.fused_attention_forward is not there")
    q, k, v, dout, mask = _problem(97, 16, np.float64, seed=11)
    out4, lse4 = kernels.fused_attention_forward(q, k, v, mask, None, p, 3, 9)
    grads4 = kernels.fused_attention_backward(dout, q, k, v, out4, lse4, mask, None, p, 3, 9)
    for mod in map(rung, CPU_RUNGS):
        got, lse = _run(mod, q, k, v, dout, mask, p, 3, 9)
        _assert_lse(f"{mod.__name__} lse vs v5", lse, lse4, atol=1e-12)
        for name, a, b in zip(("out", "dq", "dk", "dv"), got, (out4,) + tuple(grads4)):
            assert_close(f"{mod.__name__} {name} vs v5", a, b, atol=1e-12)


@pytest.mark.parametrize("name", VARIANTS)
def test_bad_inputs_raise(rung, name):
    """Every rung checks its arguments itself (they stand alone): errors that name the
    argument, the value and what was expected."""
    mod = rung(name)
    q, k, v, dout, mask = _problem(4, 3, np.float64, seed=6)
    out, lse = mod.forward(q, k, v, mask, None)
    with pytest.raises(ValueError, match=r"k has shape \(5, 2, 5, 3\), expected the shape of q"):
        mod.forward(q, np.zeros((5, 2, 5, 3)), v, mask, None)
    with pytest.raises(TypeError, match=r"v has dtype float32, expected the dtype of q"):
        mod.forward(q, k, v.astype(np.float32), mask, None)
    with pytest.raises(TypeError, match=r"q has dtype float16, expected float32 or float64"):
        mod.forward(*(x.astype(np.float16) for x in (q, k, v)), mask, None)
    with pytest.raises(ValueError, match=r"mask contains the value 2, expected only 0"):
        mod.forward(q, k, v, mask * 2, None)
    with pytest.raises(ValueError, match=r"mask has shape \(5, 3\), expected \(B, S\)"):
        mod.forward(q, k, v, mask[:, :3], None)
    with pytest.raises(TypeError, match=r"scale='1' has type str, expected a real number"):
        mod.forward(q, k, v, mask, "1")
    with pytest.raises(ValueError, match=r"scale=nan is not finite"):
        mod.forward(q, k, v, mask, float("nan"))
    with pytest.raises(ValueError, match=r"dropout_p=1.0 is out of range"):
        mod.forward(q, k, v, mask, None, dropout_p=1.0)
    with pytest.raises(ValueError, match=r"seed=-1 is out of range"):
        mod.forward(q, k, v, mask, None, 0.1, seed=-1)
    with pytest.raises(ValueError,
                       match=r"lse has shape \(5, 2\), expected \(B, A, S\) = \(5, 2, 4\)"):
        mod.backward(dout, q, k, v, out, lse[..., 0], mask, None)
    with pytest.raises(TypeError, match=r"dout has dtype float32, expected the dtype of q"):
        mod.backward(dout.astype(np.float32), q, k, v, out, lse, mask, None)
    with pytest.raises(TypeError, match=r"q has type list, expected a NumPy array"):
        mod.forward(q.tolist(), k, v, mask, None)


# --------------------------------------------------------------------------- standalone files


def _minibert_imports(path):
    """``(module, name)`` for every import of a minibert module in the file at ``path``, and
    the relative imports as ``(".", name)``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            if node.level or module.split(".")[0] == "minibert":
                found += [(module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names
                      if alias.name.split(".")[0] == "minibert"]
    return found


@pytest.mark.parametrize("name", CPU_RUNGS + CUDA_RUNGS)
def test_rung_imports_only_public_names_of_minibert(name):
    """A rung stands alone: no relative import, no other rung, and from minibert only
    public modules and names (no ``_blocks``, no private helper)."""
    imports = _minibert_imports(ROOT / "kernels" / f"{name}.py")
    assert imports, f"{name} imports nothing from minibert"
    bad = [f"{module} import {n}" for module, n in imports
           if module.startswith(".") or "attn_" in module
           or any(part.startswith("_") for part in module.split(".") + [n])]
    assert not bad, f"{name}: {bad}"


def test_ladder_folder_is_not_a_package():
    """kernels/ has no __init__.py: a top-level ``kernels`` package would shadow Hugging
    Face's, which transformers imports."""
    assert (ROOT / "kernels").is_dir() and not (ROOT / "kernels" / "__init__.py").exists()
    assert sorted(p.stem for p in (ROOT / "kernels").glob("attn_*.py")) == sorted(CPU_RUNGS + CUDA_RUNGS)


def _python(args, cwd, **env):
    """Runs ``python args`` in ``cwd`` with this checkout's minibert first on the path."""
    environ = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [environ.get("PYTHONPATH")] if p])
    environ.update(env)
    return subprocess.run([sys.executable] + args, cwd=cwd, env=environ, capture_output=True,
                          text=True, timeout=600)


def test_importing_minibert_imports_no_rung(tmp_path):
    code = ("import sys, minibert, minibert.kernels, minibert.ops; "
            "print([m for m in sys.modules if 'attn_' in m or 'ladder' in m])")
    r = _python(["-c", code], tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", CPU_RUNGS)
def test_cpu_rung_runs_as_a_script(name, tmp_path):
    """``python kernels/<rung>.py``, started from another folder, checks itself against the
    textbook op and prints its time; float64 with dropout, on a small problem."""
    r = _python([str(ROOT / "kernels" / f"{name}.py"), "--batch", "3", "--heads", "2", "--seq",
                 "19", "--dim", "8", "--dtype", "float64", "--dropout", "0.2", "--repeat", "2"],
                tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "check against minibert.ops.attention: PASS" in r.stdout, r.stdout
    assert "forward+backward" in r.stdout and " ms" in r.stdout, r.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name", CUDA_RUNGS)
def test_cuda_rung_without_gpu_says_so(name, tmp_path):
    """Without a GPU and without the simulator a GPU rung prints one line and exits 0 (where
    a GPU answers, it passes its check instead)."""
    r = _python([str(ROOT / "kernels" / f"{name}.py"), "--seq", "33", "--repeat", "2"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.strip().splitlines()
    if "no CUDA GPU" in r.stdout:
        assert len(lines) == 1, r.stdout
    else:
        assert "check against minibert.ops.attention: PASS" in r.stdout, r.stdout
