"""Device tests (marker ``gpu``): where a CUDA device answers CuPy's ``getDeviceCount()``,
the CUDA attention kernel at BERT sizes, a whole training step on CuPy against the same
step on NumPy, and bit-identical gradients from two backward runs. Skipped elsewhere (the
kernels are proven on the CPU by the simulator tests, ``tests/kernels/*cuda*.py``; the op
and model tests run over CuPy through the ``xp`` fixture)::

    python -m pytest -q -m gpu
"""
import numpy as np
import pytest

from minibert.backend import gpu_available
from minibert.ops import attention, readable_ops
from tests.helpers import assert_close, pretraining_step

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not gpu_available(), reason="no CUDA device answers "
                                 "cupy.cuda.runtime.getDeviceCount()")]


def _cupy():
    import cupy
    return cupy


def _textbook(q, k, v, dout, mask, p, seed, offset):
    with readable_ops():
        out, cache = attention.forward(q, k, v, attention_mask=mask, dropout_p=p, seed=seed,
                                       offset=offset, training=p > 0)
        return (out,) + tuple(attention.backward(dout, cache))


@pytest.mark.parametrize("shape", [(32, 12, 128, 64), (8, 12, 512, 64)], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_cuda_kernel_at_bert_sizes(shape, dtype):
    """Through the op (auto picks the CUDA kernel for CuPy arrays): float64 against the
    CuPy textbook op at 1e-12; float32 RMS error against the float64 textbook at most 1.25
    times the textbook float32's (as the CPU kernel's test)."""
    from minibert.kernels import fused_attention_backward, fused_attention_forward
    cp = _cupy()
    B, A, S, D = shape
    r = np.random.default_rng(0)
    q, k, v, dout = (cp.asarray(r.standard_normal(shape)) for _ in range(4))
    mask = cp.asarray((np.arange(S)[None, :] < r.integers(S // 4, S + 1, B)[:, None]).astype(np.int64))
    args = (mask, None, 0.1, 3, 2**32 + 5)
    ref = _textbook(q, k, v, dout, mask, 0.1, 3, 2**32 + 5)
    if dtype == np.float64:
        out, lse = fused_attention_forward(q, k, v, *args)
        got = (out,) + tuple(fused_attention_backward(dout, q, k, v, out, lse, *args))
        for name, a, e in zip(("out", "dq", "dk", "dv"), got, ref):
            assert isinstance(a, cp.ndarray)
            assert_close(name, a, e, atol=1e-12)
        return
    q32, k32, v32, d32 = (x.astype(cp.float32) for x in (q, k, v, dout))
    out, lse = fused_attention_forward(q32, k32, v32, *args)
    got = (out,) + tuple(fused_attention_backward(d32, q32, k32, v32, out, lse, *args))
    book = _textbook(q32, k32, v32, d32, mask, 0.1, 3, 2**32 + 5)
    for name, a, t, e in zip(("out", "dq", "dk", "dv"), got, book, ref):
        err = float(cp.sqrt(cp.mean((a.astype(cp.float64) - e) ** 2)))
        book_err = float(cp.sqrt(cp.mean((t.astype(cp.float64) - e) ** 2)))
        assert err <= 1.25 * book_err, f"{name}: {err:.3e} > 1.25 x {book_err:.3e}"


def _step(device, dtype, seed=0):
    """One pretraining step with dropout on ``device``: (loss, updated parameters, grads)."""
    return pretraining_step(device, dtype, lengths=(32, 20, 9, 32), n_predictions=5, seed=seed)[:3]


def test_training_step_cpu_and_gpu_agree():
    """The same step with dropout (the same Philox bits on both devices) gives the same
    loss and gradients to float64 rounding, and the same updated parameters."""
    loss_cpu, data_cpu, g_cpu = _step("cpu", np.float64)
    loss_gpu, data_gpu, g_gpu = _step("gpu", np.float64)
    assert abs(loss_cpu - loss_gpu) <= 1e-10 * max(1.0, abs(loss_cpu))
    for name in g_cpu:
        assert_close(name, g_gpu[name], g_cpu[name], atol=1e-9)
    assert_close("parameters after AdamW", data_gpu, data_cpu, atol=1e-9)


def test_two_gpu_backward_runs_give_identical_bits():
    """No float atomics anywhere in a step: two runs are the same bits."""
    first = _step("gpu", np.float32)
    second = _step("gpu", np.float32)
    assert first[0] == second[0]
    assert np.array_equal(first[1], second[1])
    for name in first[2]:
        assert np.array_equal(first[2][name], second[2][name]), name


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_dropout_kernel_on_cupy_has_the_textbook_bits(dtype):
    """The dropout op on CuPy arrays runs the one-launch kernel: y and dx equal the NumPy
    textbook op's bits, for an odd size and a start inside a counter block."""
    from minibert.ops import dropout
    cp = _cupy()
    r = np.random.default_rng(2)
    x, dy = (r.standard_normal((3, 127, 65)).astype(dtype) for _ in range(2))
    args = (0.1, 2**40 + 3, 7)
    with readable_ops():
        y_ref, cache = dropout.forward(x, *args, training=True, start=5)
        dx_ref = dropout.backward(dy, cache)
    y, cache = dropout.forward(cp.asarray(x), *args, training=True, start=5)
    dx = dropout.backward(cp.asarray(dy), cache)
    assert np.array_equal(y.get().view(np.uint8), y_ref.view(np.uint8))
    assert np.array_equal(dx.get().view(np.uint8), dx_ref.view(np.uint8))


def test_embedding_backward_on_cupy_is_the_segment_sum():
    """BERT-base's word-embedding backward at B S = 4096 tokens (token type ids: two long
    segments): within 1e-12 of np.add.at in float64, the same bits on two runs."""
    from minibert.ops import embedding
    cp = _cupy()
    r = np.random.default_rng(3)
    for V, H, ids in ((30522, 768, r.integers(0, 30522, (8, 512))),
                      (2, 768, r.integers(0, 2, (8, 512)))):
        dy = r.standard_normal(ids.shape + (H,))
        ref = np.zeros((V, H))
        np.add.at(ref, ids.reshape(-1), dy.reshape(-1, H))
        cache = (cp.asarray(ids), (V, H))
        first = embedding.backward(cp.asarray(dy), cache).get()
        second = embedding.backward(cp.asarray(dy), cache).get()
        assert np.abs(first - ref).max() <= 1e-12
        assert np.array_equal(first.view(np.uint8), second.view(np.uint8))
