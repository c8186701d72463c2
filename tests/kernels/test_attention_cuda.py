"""Tests of the GPU fused attention (``minibert/kernels/attention_cuda.py``), run by Numba's
CUDA simulator on the CPU, or on a GPU where one answers.

Run them in their own process, the simulator switched on before ``numba.cuda`` is first
imported (the main test run skips this file without importing it)::

    NUMBA_ENABLE_CUDASIM=1 python -m pytest -q tests/kernels/test_attention_cuda.py

The simulator runs every thread of every block as a Python thread, with real shared
memory and barriers: the kernels' indexing, tiling, synchronisation and arithmetic are
exercised as written; it proves neither speed nor the hardware's exp. So the shapes are
small and odd, with tiles smaller than S (several query tiles and key tiles, partial last
tiles), B A small. The textbook op ``minibert.ops.attention`` is the reference, as for
the CPU kernel (``test_fused_attention.py``): float64 within 1e-12, float32 within
1.25 times the textbook float32's own RMS error against the float64 textbook. The lanes a
row (1, 2, 4, 8) and groups in partial warps are exercised too; the simulator has no warp
shuffles, so there the kernels' butterfly runs through shared memory (see the kernel
module's docstring), with the same additions in the same order.
"""
import math

import numpy as np
import pytest

from minibert import rng as mrng
from minibert.gradcheck import check_op
from minibert.ops import attention, readable_ops
from tests.helpers import assert_as_accurate_as_textbook, assert_close, skip_unless_cuda_kernels_can_run

skip_unless_cuda_kernels_can_run()

from numba import cuda  # noqa: E402  (after the skip: the main run never imports numba.cuda)

from minibert.kernels import attention_cuda_launch, fused_attention_backward, fused_attention_forward  # noqa: E402

TOL64 = 1e-12
NAMES = ("out", "dq", "dk", "dv")


def _problem(B, A, S, D, dtype, seed=0, magnitude=1.0):
    r = np.random.default_rng(seed)
    q, k = (magnitude * r.standard_normal((B, A, S, D)) for _ in range(2))
    v, dout = (r.standard_normal((B, A, S, D)) for _ in range(2))
    return tuple(x.astype(dtype) for x in (q, k, v, dout))


def _mixed_mask(S, seed=0):
    """(4, S): all real, the last third padded, no real key at all, random holes."""
    m = np.ones((4, S), dtype=np.int64)
    m[1, S - S // 3:] = 0
    m[2] = 0
    m[3] = np.random.default_rng(seed).integers(0, 2, S)
    m[3, S // 2] = 1
    return m


def _textbook(q, k, v, dout, mask, scale=None, p=0.0, seed=0, offset=0):
    """(out, dq, dk, dv) of the readable op (training=True when p > 0)."""
    with readable_ops():
        out, cache = attention.forward(q, k, v, attention_mask=mask, scale=scale, dropout_p=p,
                                       seed=seed, offset=offset, training=p > 0)
        return (out,) + tuple(attention.backward(dout, cache))


def _cuda(q, k, v, dout, mask, scale=None, p=0.0, seed=0, offset=0, start=0, **tiles):
    """(out, dq, dk, dv) and lse of the CUDA kernels, on the host. With ``tiles`` the
    kernel module is called directly (validated scalars), else through the dispatch."""
    dq_, dk_, dv_, ddo = (cuda.to_device(x) for x in (q, k, v, dout))
    if tiles:
        scale = 1.0 / math.sqrt(q.shape[3]) if scale is None else scale
        out, lse = attention_cuda_launch.attention_forward(dq_, dk_, dv_, mask, scale, p, seed, offset,
                                                    start=start, **tiles)
        grads = attention_cuda_launch.attention_backward(ddo, dq_, dk_, dv_, out, lse, mask, scale, p,
                                                  seed, offset, start=start, **tiles)
    else:
        out, lse = fused_attention_forward(dq_, dk_, dv_, mask, scale, p, seed, offset,
                                           start=start)
        grads = fused_attention_backward(ddo, dq_, dk_, dv_, out, lse, mask, scale, p, seed,
                                         offset, start=start)
    return tuple(x.copy_to_host() for x in (out,) + tuple(grads)), lse.copy_to_host()


# --------------------------------------------------------------------------- float64


#: (S, D, dropout): every S with D = 16, S = 7 to 41 with D = 64, dropout on and off. The
#: simulator's time grows as S squared (S = 65 took 80-90 s a case), so the longest rows
#: are 41: more query and key tiles than one, the last of each partial, as at any S.
CASES = [(1, 16, 0.0), (1, 16, 0.3), (7, 16, 0.0), (7, 16, 0.3), (33, 16, 0.0), (41, 16, 0.3),
         (7, 64, 0.0), (33, 64, 0.3), (41, 64, 0.0)]


@pytest.mark.parametrize("S,D,p", CASES, ids=[f"S{S}-D{D}-p{p}" for S, D, p in CASES])
def test_float64_matches_textbook(S, D, p):
    """Query tiles of 8 and key tiles of 16 (S = 41: six and three of them, the last
    partial); a sequence with holes, one with padding at the end, one with no real key.
    Two lanes a row: the simulator's cost grows with the lanes (a barrier per exchange);
    the other lane counts run below."""
    mask = _mixed_mask(S, seed=S)
    q, k, v, dout = _problem(4, 1, S, D, np.float64, seed=S + D, magnitude=2.0)
    ref = _textbook(q, k, v, dout, mask, p=p, seed=11, offset=2**32 + 3)
    got, lse = _cuda(q, k, v, dout, mask, p=p, seed=11, offset=2**32 + 3, block_q=8, block_k=16,
                     lanes=2)
    for name, a, e in zip(NAMES, got, ref):
        assert_close(f"{name} (S={S}, D={D}, p={p})", a, e, atol=TOL64)
    # the sequence with no real key: zeros, lse = +inf, never NaN
    for name, x in zip(NAMES, got):
        assert np.all(x[2] == 0), f"{name} of the all-padding sequence is not zero"
    assert np.all(lse[2] == np.inf) and np.all(np.isfinite(lse[[0, 1, 3]]))


@pytest.mark.parametrize("tiles", [(1, 2, 2), (3, 5, 1), (16, 4, 4), (32, 32, 2), (4, 8, 8)],
                         ids=str)
def test_tile_sizes_do_not_change_the_function(tiles):
    """One-row tiles, odd tiles, more query than key rows, one tile larger than S: the
    online softmax's rescaling, partial tiles and single-tile paths; and a scale. Lanes
    1 (no exchange), 2, 4 and 8 a row (D = 16: two head elements a lane), groups that fill
    a partial warp (3 x 1, 4 x 8 threads)."""
    block_q, block_k, lanes = tiles
    S, D = 13, 16
    mask = _mixed_mask(S, seed=1)[[0, 1, 3]]
    q, k, v, dout = _problem(3, 1, S, D, np.float64, seed=2, magnitude=3.0)
    ref = _textbook(q, k, v, dout, mask, scale=0.3, p=0.2, seed=4, offset=1)
    got, _ = _cuda(q, k, v, dout, mask, scale=0.3, p=0.2, seed=4, offset=1,
                   block_q=block_q, block_k=block_k, lanes=lanes)
    for name, a, e in zip(NAMES, got, ref):
        assert_close(name, a, e, atol=TOL64)


def test_dispatch_gives_device_arrays_back_and_mask_none():
    """Through ``fused_attention_forward``/``_backward`` with the default tiles: Numba device
    arrays in, Numba device arrays out; mask None; a device mask is accepted too."""
    S, D = 9, 16
    q, k, v, dout = _problem(2, 2, S, D, np.float64, seed=3)
    dq_, dk_, dv_ = (cuda.to_device(x) for x in (q, k, v))
    out, lse = fused_attention_forward(dq_, dk_, dv_, None, None)
    assert cuda.devicearray.is_cuda_ndarray(out) and cuda.devicearray.is_cuda_ndarray(lse)
    assert out.shape == (2, 2, S, D) and lse.shape == (2, 2, S)
    ref = _textbook(q, k, v, dout, None)
    got, _ = _cuda(q, k, v, dout, None)
    for name, a, e in zip(NAMES, got, ref):
        assert_close(name, a, e, atol=TOL64)
    mask = np.array([[1] * S, [1] * 4 + [0] * (S - 4)])
    out_m, _ = fused_attention_forward(dq_, dk_, dv_, cuda.to_device(mask), None)
    assert_close("out (device mask)", out_m.copy_to_host(), _textbook(q, k, v, dout, mask)[0],
                 atol=TOL64)


def test_lse_is_the_log_sum_exp_of_masked_scores():
    S, D = 21, 16
    mask = _mixed_mask(S, seed=3)
    q, k, v, dout = _problem(4, 1, S, D, np.float64, seed=8, magnitude=3.0)
    _, lse = _cuda(q, k, v, dout, mask, block_q=8, block_k=8)
    scores = q @ k.swapaxes(-1, -2) / math.sqrt(D) + np.where(mask == 1, 0.0, -np.inf)[:, None, None, :]
    real = mask.any(axis=1)
    top = scores[real].max(axis=-1, keepdims=True)
    ref = (top + np.log(np.exp(scores[real] - top).sum(axis=-1, keepdims=True)))[..., 0]
    assert_close("lse", lse[real], ref, atol=TOL64)
    assert np.all(lse[~real] == np.inf)


# --------------------------------------------------------------------------- float32


@pytest.mark.parametrize("S,D,p", [(41, 16, 0.0), (33, 64, 0.2), (49, 16, 0.1)])
def test_float32_as_accurate_as_textbook(S, D, p):
    """Both float32 results against the float64 textbook on the same rounded inputs: the
    kernel's RMS error at most 1.25 times the textbook float32's, tensor by tensor (the
    statement of the CPU kernel's test, whose docstring gives the measured spread)."""
    mask = _mixed_mask(S, seed=S)
    q, k, v, dout = _problem(4, 1, S, D, np.float32, seed=S, magnitude=2.0)
    kw = dict(p=p, seed=7, offset=5)
    ref = _textbook(*(x.astype(np.float64) for x in (q, k, v, dout)), mask, **kw)
    book = _textbook(q, k, v, dout, mask, **kw)
    got, lse = _cuda(q, k, v, dout, mask, block_q=16, block_k=16, **kw)
    assert lse.dtype == np.float32
    assert_as_accurate_as_textbook("CUDA", NAMES, got, book, ref, factor=1.25)


# --------------------------------------------------------------------------- dropout bits


@pytest.mark.parametrize("S,D", [(7, 16), (33, 64)])
def test_keep_masks_are_minibert_rng_bits(S, D):
    """The keep mask read back from the kernels equals ``minibert.rng.keep_mask`` bit for
    bit, in the forward (four keys per Philox call) and in the dK/dV kernel (a call per
    element). With q = 0 every probability is 1/S; with v_j = e_j (D >= S) column j of
    out is P_ij keep_ij / (1 - p); with dO_i = e_i row j of dV is Pd_ij over i."""
    B, A, p = 2, 2, 0.4
    seed, offset = 2**40 + 7, 2**33 + 5
    q = np.zeros((B, A, S, D))
    k = np.random.default_rng(0).standard_normal((B, A, S, D))
    eye = np.zeros((B, A, S, D))
    eye[..., np.arange(S), np.arange(S)] = 1.0
    (out, _, _, dv), _ = _cuda(q, k, eye, eye, None, p=p, seed=seed, offset=offset,
                               block_q=8, block_k=8)
    keep = mrng.keep_mask((B, A, S, S), p, seed, offset)
    np.testing.assert_array_equal(out[..., :S] > 0, keep)
    np.testing.assert_array_equal(dv[..., :S].swapaxes(-1, -2) > 0, keep)
    kept = out[..., :S][keep]
    assert_close("kept value", kept, np.full_like(kept, 1.0 / (S * (1 - p))), atol=TOL64)


def test_a_slice_of_a_batch_draws_the_whole_batchs_masks():
    """``start`` = b0 A S S: rows b0.. of a batch, run alone (a data-parallel rank's share),
    give the bits of those rows run with the whole batch, forward and backward, through the
    dispatch as the attention op calls it; the keep bits are ``minibert.rng``'s from start."""
    B, A, S, D, p, seed, offset = 3, 2, 9, 16, 0.3, 77, 2**21 + 3
    mask = _mixed_mask(S, seed=2)[:B]
    q, k, v, dout = _problem(B, A, S, D, np.float64, seed=8)
    whole, lse_whole = _cuda(q, k, v, dout, mask, p=p, seed=seed, offset=offset)
    b0 = 1
    part, lse_part = _cuda(*(x[b0:] for x in (q, k, v, dout)), mask[b0:], p=p, seed=seed,
                           offset=offset, start=b0 * A * S * S)
    assert np.array_equal(lse_part, lse_whole[b0:])
    for name, a, e in zip(NAMES, part, whole):
        assert np.array_equal(a, e[b0:]), f"{name} of the slice differs from the whole batch's"
    # the slice alone, drawn from element 0, would differ: start is what makes them equal
    other, _ = _cuda(*(x[b0:] for x in (q, k, v, dout)), mask[b0:], p=p, seed=seed,
                     offset=offset)
    assert not np.array_equal(other[0], whole[0][b0:])
    # and the masks are minibert.rng's from start on
    z, eye = np.zeros((1, A, S, D)), np.zeros((1, A, S, D))
    eye[..., np.arange(S), np.arange(S)] = 1.0
    start = 5 * A * S * S + 3                   # any element, not a multiple of four
    (out, _, _, dv), _ = _cuda(z, k[:1], eye, eye, None, p=p, seed=seed, offset=offset,
                               start=start, block_q=4, block_k=8)
    keep = mrng.keep_mask((1, A, S, S), p, seed, offset, start=start)
    np.testing.assert_array_equal(out[..., :S] > 0, keep)
    np.testing.assert_array_equal(dv[..., :S].swapaxes(-1, -2) > 0, keep)


def test_dropout_off_is_the_plain_function_and_seeds_matter():
    S, D = 7, 16
    q, k, v, dout = _problem(2, 1, S, D, np.float64, seed=4)
    plain = _textbook(q, k, v, dout, None)
    got, _ = _cuda(q, k, v, dout, None, p=0.0, seed=123, offset=9, block_q=4, block_k=4)
    for name, a, e in zip(NAMES, got, plain):
        assert_close(name, a, e, atol=TOL64)
    one, _ = _cuda(q, k, v, dout, None, p=0.4, seed=1, offset=0, block_q=4, block_k=4)
    other, _ = _cuda(q, k, v, dout, None, p=0.4, seed=1, offset=1, block_q=4, block_k=4)
    assert np.abs(one[0] - other[0]).max() > 0.1


def test_two_backward_runs_give_the_same_bits():
    """No atomics: every element is summed by one thread in a fixed order."""
    S, D = 19, 16
    mask = _mixed_mask(S, seed=5)
    q, k, v, dout = _problem(4, 1, S, D, np.float32, seed=5)
    first, lse1 = _cuda(q, k, v, dout, mask, p=0.1, seed=3, block_q=4, block_k=8)
    second, lse2 = _cuda(q, k, v, dout, mask, p=0.1, seed=3, block_q=4, block_k=8)
    assert np.array_equal(lse1, lse2)
    for name, a, b in zip(NAMES, first, second):
        assert np.array_equal(a, b), f"{name} differs between two runs"


# --------------------------------------------------------------------------- gradients


def _op_forward(q, k, v, mask=None, dropout_p=0.0, seed=0, offset=0):
    d = [cuda.to_device(x) for x in (q, k, v)]
    out, lse = fused_attention_forward(*d, mask, None, dropout_p, seed, offset)
    return out.copy_to_host(), (d, out, lse, mask, dropout_p, seed, offset)


def _op_backward(dout, cache):
    d, out, lse, mask, dropout_p, seed, offset = cache
    grads = fused_attention_backward(cuda.to_device(np.ascontiguousarray(dout)), *d, out, lse,
                                     mask, None, dropout_p, seed, offset)
    return tuple(g.copy_to_host() for g in grads)


@pytest.mark.parametrize("dropout", [False, True], ids=["nodrop", "dropout"])
def test_gradcheck_float64(dropout):
    """Central differences of the kernel's own forward against its backward along random
    directions (Chainer's check: a few forwards, not one per element, which the simulator
    could not afford), a random upstream gradient, a sequence of padding only."""
    q, k, v, _ = _problem(3, 1, 5, 4, np.float64, seed=6)
    kwargs = {"mask": np.array([[1] * 5, [1, 1, 0, 0, 0], [0] * 5])}
    if dropout:
        kwargs.update(dropout_p=0.3, seed=12345, offset=2**33)
    report = check_op(_op_forward, _op_backward, {"q": q, "k": k, "v": v}, kwargs=kwargs, seed=1,
                      mode="direction", n_directions=4)
    assert report.passed and report.max_rel_err <= 1e-7


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_before_launch():
    q, k, v, _ = _problem(2, 1, 4, 3, np.float64)
    dq_, dk_, dv_ = (cuda.to_device(x) for x in (q, k, v))
    with pytest.raises(TypeError, match=r"k has type numpy.ndarray, expected a GPU array like q"):
        fused_attention_forward(dq_, k, dv_, None, None)
    with pytest.raises(TypeError, match=r"v has dtype float32, expected the dtype of q"):
        fused_attention_forward(dq_, dk_, cuda.to_device(v.astype(np.float32)), None, None)
    with pytest.raises(ValueError, match=r"k has shape \(2, 1, 4, 2\), expected the shape of q"):
        fused_attention_forward(dq_, cuda.to_device(k[..., :2].copy()), dv_, None, None)
    with pytest.raises(ValueError, match=r"mask contains the value 2, expected only 0"):
        fused_attention_forward(dq_, dk_, dv_, cuda.to_device(np.full((2, 4), 2)), None)
    with pytest.raises(ValueError, match=r"mask has shape \(2, 3\), expected \(B, S\)"):
        fused_attention_forward(dq_, dk_, dv_, np.ones((2, 3)), None)
    with pytest.raises(ValueError, match=r"dropout_p=1.0 is out of range"):
        fused_attention_forward(dq_, dk_, dv_, None, None, 1.0)
    out, lse = fused_attention_forward(dq_, dk_, dv_, None, None)
    with pytest.raises(TypeError, match=r"lse has type numpy.ndarray, expected a GPU array"):
        fused_attention_backward(out, dq_, dk_, dv_, out, lse.copy_to_host(), None, None)
    with pytest.raises(ValueError, match=r"block_q=0 is invalid"):
        attention_cuda_launch.attention_forward(dq_, dk_, dv_, None, 0.5, block_q=0)


def test_launch_limits_are_checked_before_launch():
    """What the simulator does not enforce and a GPU refuses: more than 1024 threads a
    block, more than 48 KiB of static shared memory; head sizes the kernels do not cover
    (``supports``) are refused by name, and the op runs its textbook code for them."""
    q = cuda.to_device(np.zeros((1, 1, 4, 64)))
    with pytest.raises(ValueError, match=r"block_q=512 with lanes=4 gives 2048 threads a block"):
        attention_cuda_launch.attention_forward(q, q, q, None, 0.5, block_q=512, lanes=4)
    with pytest.raises(ValueError, match=r"bytes of shared memory in the \w+ kernel, expected at "
                                         r"most 49152"):
        attention_cuda_launch.attention_forward(q, q, q, None, 0.5, block_q=64, block_k=64)
    with pytest.raises(ValueError, match=r"lanes=3 is invalid"):
        attention_cuda_launch.attention_forward(q, q, q, None, 0.5, lanes=3)
    wide = cuda.to_device(np.zeros((1, 1, 4, 256), dtype=np.float32))
    with pytest.raises(ValueError, match=r"head size D=256 with dtype float32 is not covered"):
        attention_cuda_launch.attention_forward(wide, wide, wide, None, 0.5)
    supports = attention_cuda_launch.supports
    assert supports(64, np.float32) and supports(128, np.float64)
    assert not supports(129, np.float32) and not supports(64, np.int32)
    for dtype, D in ((np.float32, 64), (np.float64, 64), (np.float32, 128), (np.float64, 128),
                     (np.float32, 7)):
        cfg = attention_cuda_launch.launch_config(D, dtype)
        for kernel in attention_cuda_launch.KERNELS:
            assert cfg.threads(kernel) <= 1024 and cfg.shared_bytes(kernel) <= 48 * 1024
            assert min(cfg.block_q, cfg.block_k) >= attention_cuda_launch.MIN_TILE
        assert D % cfg.lanes == 0 and 32 % cfg.lanes == 0


def test_op_runs_textbook_code_where_the_kernels_do_not_reach():
    """The attention op's "auto" choice asks ``attention_cuda_launch.supports``: a head size above
    128 stays on the textbook code."""
    from minibert.ops.attention import _cuda_covers
    assert _cuda_covers(np.zeros((1, 1, 2, 64), dtype=np.float32))
    assert not _cuda_covers(np.zeros((1, 1, 2, 256), dtype=np.float32))
    assert not _cuda_covers(np.zeros((1, 1, 2, 129), dtype=np.float64))


# --------------------------------------------------------------------------- the GPU benchmark


def test_benchmark_dry_run_lists_the_sweep_and_the_model():
    """``bench_attention_gpu.py --dry-run``'s code, with no GPU: every sweep setting passes
    ``launch_config``, and the expected times are the FLOP/byte model's."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_attention_gpu.py"
    spec = importlib.util.spec_from_file_location("bench_attention_gpu", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    lines = bench.dry_run([(32, 12, 128, 64)])
    assert not any("refused" in line for line in lines)
    assert sum("lanes=" in line for line in lines) == len(bench.SWEEP)
    assert "block_q=32 block_k=32 lanes=4" in lines[1]             # the default first
    flops, nbytes = bench.kernel_counts((2, 3, 5, 8), 4)["forward"]
    assert flops == 4 * 2 * 3 * 25 * 8 and nbytes == 4 * (4 * 2 * 3 * 5 * 8 + 2 * 3 * 5)
    assert bench.expected_ms(67e12, 1.0, "H100", 4) == pytest.approx(1e3)      # FLOP-bound
    assert bench.expected_ms(1.0, 4.3e12, "H200", 8) == pytest.approx(1e3)     # byte-bound
    assert bench.device_kind("NVIDIA H200") == "H200"
    assert bench.device_kind("NVIDIA H100 80GB HBM3") == "H100"
