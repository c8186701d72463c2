"""Tests of the fused AdamW kernel (minibert/kernels/adamw_cpu.py) behind ``minibert.optim.AdamW``.

The readable step is the reference and the kernel must equal it bit for bit: parameters,
m and v after every step, both variants ("bert", "torch", and torch's two lerp branches),
float32 and float64, with the default decay mask, with decay everywhere and with no decay,
with a changing rate (a warmup that starts at 0), on the tests' small BERT-named store and
on a buffer spanning several of the kernel's rows. Equal bits are possible because every
readable operation is one correctly rounded IEEE operation per element, which the kernel
repeats in the same order and dtype, scalars included (see the module docstring); they
make every accuracy statement of the readable step hold for the kernel as it is, float32
against float64 included. AdamW has no backward, hence no gradient check here.
"""
import numpy as np
import pytest

from minibert.kernels import adamw_cpu
from minibert.ops import readable_ops
from minibert.optim import AdamW, LRSchedule
from minibert.params import FlatParams, ParamSpec
from tests.helpers import make_store, random_grad

FLOATS = [pytest.param(np.float32, id="float32"), pytest.param(np.float64, id="float64")]


def _twins(store_fn, dtype, **hparams):
    """Two identical stores, each with its AdamW, for the kernel and the readable path."""
    stores = [store_fn(dtype) for _ in range(2)]
    return stores, [AdamW(s, **hparams) for s in stores]


def _assert_same(what, a, b):
    """The same bits (so also the same signs of zeros and the same NaNs)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    bits = {4: np.uint32, 8: np.uint64}[a.itemsize]
    bad = np.flatnonzero(a.view(bits) != b.view(bits))
    assert bad.size == 0, (f"{what}: {bad.size} elements differ, first at {bad[0]}: "
                           f"{a[bad[0]]!r} vs {b[bad[0]]!r}")


def _run_both(stores, opts, steps, seed=0, lrs=None, grad_fn=None):
    r = np.random.default_rng(seed)
    (s_k, s_r), (o_k, o_r) = stores, opts
    for k in range(steps):
        g = (grad_fn or random_grad)(r, s_k.size).astype(s_k.data.dtype)
        s_k.grad[...] = g
        s_r.grad[...] = g
        lr = None if lrs is None else lrs(k)
        o_k.step(lr)
        with readable_ops():
            o_r.step(lr)
        for what, a, b in (("param", s_k.data, s_r.data), ("m", o_k.m, o_r.m), ("v", o_k.v, o_r.v)):
            _assert_same(f"step {k + 1} {what}", a, b)
    assert o_k.t == o_r.t == steps


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("variant", ["bert", "torch"])
@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.3, 0.6)], ids=["b1=0.9", "b1=0.3"])
@pytest.mark.parametrize("decay", ["default_mask", "everywhere", "none"])
def test_bit_equal_to_readable(dtype, variant, betas, decay):
    # b1 = 0.3: torch's lerp weight 1 - b1 >= 1/2 takes lerp's other branch
    hparams = dict(lr=1.0, betas=betas, eps=1e-6, variant=variant,
                   weight_decay=0.0 if decay == "none" else 0.1,
                   no_decay=() if decay == "everywhere" else ("bias", "LayerNorm.weight"))
    stores, opts = _twins(lambda dt: make_store(np, dt, seed=1), dtype, **hparams)
    schedule = LRSchedule("linear_warmup_linear_decay", 3e-2, warmup_steps=2, total_steps=8)
    _run_both(stores, opts, 8, seed=2, lrs=schedule.lr)            # rate 0 at the first step


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("variant", ["bert", "torch"])
def test_bit_equal_on_several_rows(dtype, variant):
    """A buffer of 2 rows and a bit of the kernel (CHUNK flat indices each), the decay mask
    switching inside a row, the rate from the optimizer (step() without a rate)."""
    n = 2 * adamw_cpu.CHUNK + 37

    def store_fn(dt):
        specs = [ParamSpec("a.weight", (n // 3,)), ParamSpec("a.bias", (n // 3,)),
                 ParamSpec("b.weight", (n - 2 * (n // 3),))]
        store = FlatParams(specs, dt, np)
        store.data[...] = np.random.default_rng(3).standard_normal(n).astype(dt)
        return store
    stores, opts = _twins(store_fn, dtype, lr=1e-3, weight_decay=0.01, variant=variant)
    _run_both(stores, opts, 3, seed=4)


@pytest.mark.parametrize("variant", ["bert", "torch"])
def test_bit_equal_with_special_gradients(variant):
    """Zeros, gradients far below eps, huge ones, an inf and a NaN: IEEE arithmetic in the
    same order gives the same infinities and NaNs."""
    def grads(r, n):
        g = random_grad(r, n)
        g[:6] = [0.0, -0.0, 1e-30, 1e30, np.inf, np.nan]
        return g
    stores, opts = _twins(lambda dt: make_store(np, dt, seed=5), np.float32, lr=1e-2,
                          weight_decay=0.01, variant=variant)
    with np.errstate(all="ignore"):
        _run_both(stores, opts, 3, seed=6, grad_fn=grads)


def test_float32_error_equals_readable():
    """Against float64 steps on the same (float32) parameters and gradients, the float32
    kernel's error is exactly the readable float32 step's: the same bits."""
    r = np.random.default_rng(7)
    p0 = r.standard_normal(500).astype(np.float32)
    results = {}
    for path, dt in (("kernel", np.float32), ("readable", np.float32), ("ref", np.float64)):
        store = FlatParams([ParamSpec("w.weight", (500,))], dt, np)
        store.data[...] = p0
        opt = AdamW(store, lr=1e-3, weight_decay=0.01, variant="torch")
        rg = np.random.default_rng(8)
        for _ in range(5):
            store.grad[...] = rg.standard_normal(500).astype(np.float32)
            with readable_ops(path == "readable"):
                opt.step()
        results[path] = store.data.astype(np.float64)
    np.testing.assert_array_equal(np.abs(results["kernel"] - results["ref"]),
                                  np.abs(results["readable"] - results["ref"]))


def test_dispatch(monkeypatch):
    """NumPy float buffers run the kernel; under readable_ops() and for other dtypes the
    readable step runs."""
    calls = []
    for name in ("step_bert", "step_torch"):
        fn = getattr(adamw_cpu, name)
        monkeypatch.setattr(adamw_cpu, name, lambda *a, _fn=fn, _name=name: (calls.append(_name), _fn(*a)))
    for variant in ("bert", "torch"):
        store = make_store(np, np.float32)
        opt = AdamW(store, lr=1e-3, variant=variant)
        opt.step()
        with readable_ops():
            opt.step()
    assert calls == ["step_bert", "step_torch"]
    store16 = FlatParams([ParamSpec("w", (5,))], np.float16, np)
    store16.grad[...] = 1.0
    AdamW(store16, lr=1e-3).step()                         # float16: the readable step
    assert calls == ["step_bert", "step_torch"] and np.all(store16.data != 0)


@pytest.mark.parametrize("variant", ["bert", "torch"])
def test_state_dict_resume_mixes_paths(variant):
    """Checkpoints are path-independent: state saved after kernel steps, resumed on the
    readable path, gives the bits of kernel steps all the way."""
    a, b = make_store(np, np.float32, seed=9), make_store(np, np.float32, seed=9)
    oa = AdamW(a, lr=1e-3, variant=variant)
    r = np.random.default_rng(10)
    grads = [random_grad(r, a.size).astype(np.float32) for _ in range(4)]
    for g in grads[:2]:
        a.grad[...] = g
        oa.step()
    ob = AdamW(b, lr=1e-3, variant=variant)
    b.data[...] = a.data
    ob.load_state_dict(oa.state_dict())
    for g in grads[2:]:
        a.grad[...] = g
        b.grad[...] = g
        oa.step()
        with readable_ops():
            ob.step()
    _assert_same("param", a.data, b.data)
    _assert_same("m", oa.m, ob.m)
    assert oa.t == ob.t == 4


def test_errors_unchanged():
    opt = AdamW(make_store(np, np.float32), lr=1e-3)
    with pytest.raises(ValueError, match=r"lr=-1.0 is invalid"):
        opt.step(lr=-1.0)
    with pytest.raises(TypeError, match=r"lr='x' has type str"):
        opt.step(lr="x")
    assert opt.t == 0
