"""AdamW (both variants), the learning-rate schedules and gradient clipping.

* "torch" against torch.optim.AdamW (foreach=False) step by step in float64, on the same
  parameters and gradients, with a decay group and a no-decay group and a changing rate;
* "bert" against a plain per-tensor NumPy transcription of the original equations, and both
  variants against a first step worked out by hand;
* the schedules against transformers' schedules, clipping against
  torch.nn.utils.clip_grad_norm_; checkpoints (state_dict) resume bit for bit; bad
  hyper-parameters raise errors that name them.
"""
import io
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minibert.optim import (
    AdamW,
    LRSchedule,
    clip_grad_norm,
    constant,
    constant_with_warmup,
    linear_warmup_linear_decay,
)
from minibert.params import FlatParams, ParamSpec
from tests.helpers import make_store, random_grad, to_np

NO_DECAY = ("bias", "LayerNorm.weight")
# the weights of make_store's OPTIM_SPECS (tests/helpers.py): the names that decay
DECAYED = {"bert.embeddings.word_embeddings.weight", "bert.encoder.layer.0.attention.self.query.weight"}
FAST = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def rel(actual, expected) -> float:
    """max |a - e| / max |e| over one tensor."""
    a, e = to_np(actual).astype(np.float64), to_np(expected).astype(np.float64)
    return float(np.max(np.abs(a - e)) / max(np.max(np.abs(e)), np.finfo(np.float64).tiny))


# ---------------------------------------------------------------------------- decay mask
def test_decay_mask_from_names(xp):
    store = make_store(xp)
    opt = AdamW(store, lr=1e-3)
    mask = to_np(opt.decay_mask)
    assert mask.dtype == bool and mask.shape == (store.size,)
    for name, (a, b) in store.offsets.items():
        assert np.all(mask[a:b] == (name in DECAYED)), name
    assert np.all(to_np(AdamW(store, lr=1e-3, no_decay=()).decay_mask))
    only = to_np(AdamW(store, lr=1e-3, no_decay=("embeddings",)).decay_mask)
    for name, (a, b) in store.offsets.items():
        assert np.all(only[a:b] == ("embeddings" not in name)), name


# ---------------------------------------------------------------------------- hand-computed steps
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("variant", ["bert", "torch"])
def test_first_step_by_hand(xp, variant, dtype):
    """b1 = 1/2, b2 = 3/4, eps = 1, lr = 1/2, wd = 1/2, every p = 2, g = +2 or -2, on a
    decayed weight and a bias. Both variants: m = (1 - b1) g = +-1, v = (1 - b2) g^2 = 1.

    bert:  u = m / (sqrt(v) + eps) = +-1/2, plus wd p = 1 where decayed; p <- p - lr u:
           weight 2 - 3/4 = 5/4 (g = +2), 2 - 1/4 = 7/4 (g = -2); bias 2 -+ 1/4 = 7/4, 9/4.
    torch: weight first decays to 2 (1 - lr wd) = 3/2; step lr / (1 - b1) = 1, denominator
           sqrt(v) / sqrt(1 - b2) + eps = 2 + 1 = 3, so p <- p -+ 1/3:
           weight 3/2 -+ 1/3 = 7/6, 11/6; bias 2 -+ 1/3 = 5/3, 7/3.
    Within two roundings of the dtype (the thirds are not exact)."""
    specs = [ParamSpec("w.weight", (2,)), ParamSpec("w.bias", (2,))]
    store = FlatParams(specs, dtype, xp)
    store.data[...] = xp.asarray(np.array([2, 2, 2, 2], dtype))
    store.grad[...] = xp.asarray(np.array([2, -2, 2, -2], dtype))
    opt = AdamW(store, lr=0.5, betas=(0.5, 0.75), eps=1.0, weight_decay=0.5, variant=variant)
    opt.step()
    expected = {"bert": [5 / 4, 7 / 4, 7 / 4, 9 / 4], "torch": [7 / 6, 11 / 6, 5 / 3, 7 / 3]}[variant]
    assert store.data.dtype == dtype and opt.m.dtype == dtype and opt.v.dtype == dtype
    np.testing.assert_allclose(to_np(store.data), expected, rtol=2 * np.finfo(dtype).eps, atol=0)
    np.testing.assert_array_equal(to_np(opt.m), np.array([1, -1, 1, -1], dtype))
    np.testing.assert_array_equal(to_np(opt.v), np.ones(4, dtype))
    assert opt.t == 1


def test_variants_differ_by_the_bias_correction():
    """With wd = 0 and a constant gradient g (|g| >> eps), torch's step is lr (the corrected
    m_hat / sqrt(v_hat) = g / |g|), BERT's is lr (1 - b1^t) / sqrt(1 - b2^t): 3.16 lr at t = 1."""
    b1, b2, lr = 0.9, 0.999, 1e-3
    steps = {}
    for variant in ("bert", "torch"):
        store = FlatParams([ParamSpec("w", (3,))], np.float64)
        store.grad[...] = [1.0, -3.0, 1e3]
        opt = AdamW(store, lr=lr, betas=(b1, b2), eps=1e-12, weight_decay=0.0, variant=variant)
        trace = []
        for _ in range(5):
            before = store.data.copy()
            opt.step()
            trace.append((before - store.data) / np.sign(store.grad))
        steps[variant] = np.array(trace)                         # (t, element)
    t = np.arange(1, 6)[:, None]
    np.testing.assert_allclose(steps["torch"], np.full((5, 3), lr), rtol=1e-9)
    bert_step = lr * (1 - b1 ** t) / np.sqrt(1 - b2 ** t)      # uncorrected m / sqrt(v), times lr
    np.testing.assert_allclose(steps["bert"], np.broadcast_to(bert_step, (5, 3)), rtol=1e-9)
    assert steps["bert"][0, 0] / lr == pytest.approx(0.1 / math.sqrt(0.001), rel=1e-9)


@pytest.mark.parametrize("variant", ["bert", "torch"])
def test_zero_gradient_only_decays(xp, variant):
    store = make_store(xp)
    before = to_np(store.data).copy()
    lr, wd = 0.1, 0.05
    opt = AdamW(store, lr=lr, weight_decay=wd, variant=variant)
    opt.step()
    after = to_np(store.data)
    mask = to_np(opt.decay_mask)
    np.testing.assert_array_equal(after[~mask], before[~mask])      # exactly untouched
    # bert: p - lr (wd p); torch: p (1 - lr wd): the same number up to one rounding each
    np.testing.assert_allclose(after[mask], before[mask] * (1 - lr * wd),
                               rtol=4 * np.finfo(np.float64).eps, atol=0)
    assert not np.any(to_np(opt.m)) and not np.any(to_np(opt.v)) and opt.t == 1


@pytest.mark.parametrize("variant", ["bert", "torch"])
def test_step_rate(xp, variant):
    """step(lr=0) leaves the parameters exactly as they were (the moments still advance, as a
    schedule's first warmup step does); step() uses the rate given at construction."""
    rng = np.random.default_rng(3)
    store = make_store(xp)
    store.grad[...] = xp.asarray(random_grad(rng, store.size))
    before = to_np(store.data).copy()
    opt = AdamW(store, lr=1e-2, variant=variant)
    opt.step(lr=0.0)
    np.testing.assert_array_equal(to_np(store.data), before)
    assert opt.t == 1 and np.any(to_np(opt.m))
    twin = make_store(xp)
    twin.grad[...] = store.grad
    other = AdamW(twin, lr=1e-2, variant=variant)
    other.load_state_dict(opt.state_dict())
    opt.step()
    other.step(lr=1e-2)
    np.testing.assert_array_equal(to_np(store.data), to_np(twin.data))
    assert not np.array_equal(to_np(store.data), before)


# ---------------------------------------------------------------------------- "bert" vs its equations
def bert_reference_step(params, grads, ms, vs, names, lr, b1, b2, eps, wd):
    """Devlin et al.'s AdamWeightDecayOptimizer, one tensor at a time, as the TF code reads."""
    for n in names:
        p, g = params[n], grads[n]
        ms[n] = b1 * ms[n] + (1.0 - b1) * g
        vs[n] = b2 * vs[n] + (1.0 - b2) * np.square(g)
        update = ms[n] / (np.sqrt(vs[n]) + eps)
        if not any(s in n for s in NO_DECAY):
            update += wd * p
        params[n] = p - lr * update


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.3, 0.6)])
def test_bert_variant_matches_its_equations(xp, betas):
    """Float64, 20 steps, changing rate. The transcription does the same correctly rounded
    operations in the same order, so the two agree to the last bit on NumPy; 1e-15 relative
    leaves an ulp for a GPU's kernels. A wrong term is off by 1e-3 or more."""
    rng = np.random.default_rng(1)
    store = make_store(xp)
    names = list(store.params)
    params = {n: to_np(v).copy() for n, v in store.params.items()}
    ms = {n: np.zeros_like(p) for n, p in params.items()}
    vs = {n: np.zeros_like(p) for n, p in params.items()}
    b1, b2, eps, wd = betas[0], betas[1], 1e-6, 0.1
    opt = AdamW(store, lr=1.0, betas=betas, eps=eps, weight_decay=wd, variant="bert")
    schedule = LRSchedule("linear_warmup_linear_decay", 1e-2, warmup_steps=4, total_steps=20)
    for k in range(20):
        g = random_grad(rng, store.size)
        store.grad[...] = xp.asarray(g)
        grads = {n: g[a:b].reshape(params[n].shape) for n, (a, b) in store.offsets.items()}
        bert_reference_step(params, grads, ms, vs, names, schedule.lr(k), b1, b2, eps, wd)
        opt.step(lr=schedule.lr(k))
        for n, (a, b) in store.offsets.items():
            for what, mine, ref in (("param", store.params[n], params[n]),
                                    ("m", opt.m[a:b], ms[n].ravel()), ("v", opt.v[a:b], vs[n].ravel())):
                err = rel(mine, ref)
                assert err <= 1e-15, f"step {k + 1}, {what} {n}: relative error {err:.2e}"


# ---------------------------------------------------------------------------- "torch" vs torch
def torch_adamw(torch, store, lr, betas, eps, wd):
    """torch.optim.AdamW (single-tensor) on copies of the store's tensors, in two groups."""
    tensors = {n: torch.tensor(to_np(p).copy(), requires_grad=True) for n, p in store.params.items()}
    groups = [dict(params=[t for n, t in tensors.items() if not any(s in n for s in NO_DECAY)],
                   weight_decay=wd),
              dict(params=[t for n, t in tensors.items() if any(s in n for s in NO_DECAY)],
                   weight_decay=0.0)]
    return tensors, torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, foreach=False)


@FAST
@given(b1=st.sampled_from([0.0, 0.3, 0.9, 0.99]), b2=st.sampled_from([0.0, 0.5, 0.999, 0.9999]),
       eps=st.sampled_from([1e-8, 1e-6, 1e-3]), wd=st.sampled_from([0.0, 0.01, 0.3]),
       seed=st.integers(0, 2**32 - 1))
def test_torch_variant_matches_torch_adamw(xp, b1, b2, eps, wd, seed):
    """Float64, 20 steps, rate from a warmup/decay schedule (0 at the first step, as there).

    torch's CPU kernels fuse the multiply-adds of lerp and addcmul (one rounding where NumPy
    does two): each step differs by an ulp or so per operation. The gradients are given,
    not recomputed, so nothing amplifies that: 20 steps stay within 20 ulps ~ 5e-15 of
    each tensor's scale; 1e-14 says 'equal to rounding'."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    store = make_store(xp, seed=seed)
    tensors, ref = torch_adamw(torch, store, 1.0, (b1, b2), eps, wd)
    opt = AdamW(store, lr=1.0, betas=(b1, b2), eps=eps, weight_decay=wd, variant="torch")
    schedule = LRSchedule("linear_warmup_linear_decay", 3e-2, warmup_steps=3, total_steps=20)
    for k in range(20):
        g = random_grad(rng, store.size)
        store.grad[...] = xp.asarray(g)
        for n, (a, b) in store.offsets.items():
            tensors[n].grad = torch.from_numpy(g[a:b].reshape(tensors[n].shape).copy())
        for group in ref.param_groups:
            group["lr"] = schedule.lr(k)
        ref.step()
        opt.step(lr=schedule.lr(k))
        for n, (a, b) in store.offsets.items():
            state = ref.state[tensors[n]]
            for what, mine, expected in (("param", store.params[n], tensors[n].detach().numpy()),
                                         ("m", opt.m[a:b], state["exp_avg"].numpy().ravel()),
                                         ("v", opt.v[a:b], state["exp_avg_sq"].numpy().ravel())):
                err = rel(mine, expected)
                assert err <= 1e-14, f"step {k + 1}, {what} {n}: relative error {err:.2e}"
            assert int(state["step"]) == opt.t


# ---------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("variant", ["bert", "torch"])
def test_state_dict_round_trip_is_bitwise(xp, variant, dtype):
    """6 steps straight == 3 steps, state_dict -> .npz -> a fresh optimizer on a fresh copy
    of the parameters, 3 more steps: the same bits in the parameters, m and v."""
    rng = np.random.default_rng(5)
    grads = [xp.asarray(random_grad(rng, make_store(xp).size).astype(dtype)) for _ in range(6)]
    kw = dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, variant=variant)

    store = make_store(xp, dtype)
    straight = AdamW(store, **kw)
    for k, g in enumerate(grads):
        store.grad[...] = g
        straight.step(lr=1e-2 * (k + 1))

    first = make_store(xp, dtype)
    opt = AdamW(first, **kw)
    for k, g in enumerate(grads[:3]):
        first.grad[...] = g
        opt.step(lr=1e-2 * (k + 1))
    buf = io.BytesIO()
    np.savez(buf, **opt.state_dict())
    buf.seek(0)
    with np.load(buf) as z:
        saved = {k: z[k] for k in z.files}
    second = make_store(xp, dtype, seed=99)                     # other values, then restored
    second.data[...] = first.data
    resumed = AdamW(second, lr=0.5, variant="bert" if variant == "torch" else "torch")
    resumed.load_state_dict(saved)
    assert (resumed.variant, resumed.t, resumed.lr) == (variant, 3, 1e-2)
    for k, g in enumerate(grads[3:], start=3):
        second.grad[...] = g
        resumed.step(lr=1e-2 * (k + 1))

    for what, a, b in (("param", store.data, second.data), ("m", straight.m, resumed.m),
                       ("v", straight.v, resumed.v)):
        assert to_np(a).dtype == dtype
        np.testing.assert_array_equal(to_np(a), to_np(b), err_msg=what)
    assert straight.state_dict().keys() == resumed.state_dict().keys()


def test_load_state_dict_rejects_bad_state(xp):
    store = make_store(xp)
    store.grad[...] = 1.0
    opt = AdamW(store, lr=1e-2)
    opt.step()
    good = opt.state_dict()
    m_before = to_np(opt.m).copy()

    def bad(**changes):
        s = dict(good)
        for k, v in changes.items():
            if v is None:
                del s[k]
            else:
                s[k] = v
        return s

    n = store.size
    cases = [(bad(m=good["m"].astype(np.float32)), "state\\['m'\\] has shape .* float32, expected"),
             (bad(v=good["v"][:-1]), f"state\\['v'\\] has shape \\({n - 1},\\)"),
             (bad(t=None), "missing keys \\['t'\\]"),
             (bad(extra=1), "unexpected keys \\['extra'\\]"),
             (bad(t=-1), "state\\['t'\\]=-1"),
             (bad(t=1.5), "state\\['t'\\]=1.5"),
             (bad(variant="adam"), "variant='adam'"),
             (bad(beta1=1.0), "betas\\[0\\]=1.0"),
             (bad(eps=0.0), "eps=0.0"),
             (bad(decay_mask=np.ones(n, bool)), "decay_mask'\\] differs .* no_decay"),
             (bad(decay_mask=np.ones(n)), "decay_mask'\\] has shape .* float64, expected .* bool")]
    for state, match in cases:
        with pytest.raises(ValueError, match=match):
            opt.load_state_dict(state)
    with pytest.raises(TypeError, match="state has type list"):
        opt.load_state_dict([])
    # nothing was changed by the refused loads
    np.testing.assert_array_equal(to_np(opt.m), m_before)
    assert opt.t == 1 and opt.variant == "bert" and opt.beta1 == 0.9


# ---------------------------------------------------------------------------- bad hyper-parameters
@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(lr=-1e-3), ValueError, "lr=-0.001 is invalid"),
    (dict(lr=float("nan")), ValueError, "lr=nan is invalid"),
    (dict(lr="1e-3"), TypeError, "lr='1e-3' has type str"),
    (dict(lr=True), TypeError, "lr=True has type bool"),
    (dict(betas=(1.0, 0.999)), ValueError, "betas\\[0\\]=1.0 is invalid, expected 0 <= beta < 1"),
    (dict(betas=(0.9, -0.1)), ValueError, "betas\\[1\\]=-0.1 is invalid"),
    (dict(betas=(0.9,)), ValueError, "betas=\\(0.9,\\) is invalid, expected a pair"),
    (dict(eps=0.0), ValueError, "eps=0.0 is invalid, expected a finite number > 0"),
    (dict(eps=-1e-6), ValueError, "eps=-1e-06 is invalid"),
    (dict(weight_decay=-0.01), ValueError, "weight_decay=-0.01 is invalid, expected a finite number >= 0"),
    (dict(variant="adam"), ValueError, "variant='adam' is unknown, expected one of \\('bert', 'torch'\\)"),
    (dict(no_decay="bias"), TypeError, "no_decay='bias' is invalid, expected a tuple"),
])
def test_bad_hyper_parameters_raise(kwargs, exc, match):
    args = dict(lr=1e-3)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        AdamW(make_store(np), **args)


def test_bad_store_and_step_rate_raise():
    with pytest.raises(TypeError, match="store of type dict has no attribute 'data'"):
        AdamW({}, lr=1e-3)
    store = make_store(np)
    store.grad = store.grad.astype(np.float32)
    with pytest.raises(ValueError, match="store.grad has shape .* float32 .* expected .* float64"):
        AdamW(store, lr=1e-3)
    opt = AdamW(make_store(np), lr=1e-3)
    with pytest.raises(ValueError, match="lr=-1.0 is invalid"):
        opt.step(lr=-1.0)
    assert opt.t == 0


# ---------------------------------------------------------------------------- schedules
def test_linear_schedule_by_hand():
    s = LRSchedule("linear_warmup_linear_decay", 2.0, warmup_steps=3, total_steps=10)
    expected = [0, 1 / 3, 2 / 3, 1, 6 / 7, 5 / 7, 4 / 7, 3 / 7, 2 / 7, 1 / 7, 0, 0]
    np.testing.assert_allclose([s.multiplier(k) for k in range(12)], expected, rtol=1e-15, atol=0)
    assert [s.lr(k) for k in range(12)] == [2.0 * s.multiplier(k) for k in range(12)]
    assert linear_warmup_linear_decay(0, 0, 5) == 1.0              # no warmup: full rate at once
    assert linear_warmup_linear_decay(5, 5, 5) == 0.0
    assert constant(7) == 1.0
    assert [constant_with_warmup(k, 4) for k in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert LRSchedule("constant", 3e-4).lr(123) == 3e-4


@pytest.mark.parametrize("warmup, total", [(3, 10), (0, 7), (5, 5), (1, 1), (10, 100)])
def test_schedules_match_transformers(warmup, total):
    """The same float operations as Hugging Face's schedules: equal to the bit, step by step
    (the rate of update k is the scheduler's after k calls of scheduler.step())."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    base = 1e-3
    cases = [("linear_warmup_linear_decay",
              lambda o: transformers.get_linear_schedule_with_warmup(o, warmup, total)),
             ("constant_with_warmup",
              lambda o: transformers.get_constant_schedule_with_warmup(o, warmup)),
             ("constant", lambda o: transformers.get_constant_schedule(o))]
    for kind, make in cases:
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
        sched = make(opt)
        mine = LRSchedule(kind, base, warmup_steps=warmup, total_steps=total)
        for k in range(total + 3):
            assert mine.lr(k) == opt.param_groups[0]["lr"], (kind, k)
            opt.step()
            sched.step()


@pytest.mark.parametrize("args, kwargs, match", [
    (("cosine", 1e-3), {}, "kind='cosine' is unknown"),
    (("constant", -1.0), {}, "base_lr=-1.0 is invalid"),
    (("linear_warmup_linear_decay", 1e-3), dict(warmup_steps=3), "total_steps=None is invalid"),
    (("linear_warmup_linear_decay", 1e-3), dict(warmup_steps=11, total_steps=10),
     "warmup_steps=11 is invalid, expected at most total_steps=10"),
    (("constant_with_warmup", 1e-3), dict(warmup_steps=-1), "warmup_steps=-1 is invalid"),
    (("constant_with_warmup", 1e-3), dict(warmup_steps=2.5), "warmup_steps=2.5 is invalid"),
    (("constant", 1e-3), dict(total_steps=0), "total_steps=0 is invalid"),
])
def test_schedule_validation(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        LRSchedule(*args, **kwargs)


def test_schedule_rejects_bad_steps():
    s = LRSchedule("linear_warmup_linear_decay", 1e-3, warmup_steps=2, total_steps=5)
    for step in (-1, 1.0, True):
        with pytest.raises(ValueError, match=f"step={step!r} is invalid"):
            s.lr(step)


# ---------------------------------------------------------------------------- clipping
@FAST
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=5),
       log_scale=st.floats(-6, 3), ratio=st.sampled_from([0.1, 0.9, 1.1, 10.0]),
       seed=st.integers(0, 2**32 - 1))
def test_clip_grad_norm_matches_torch(xp, sizes, log_scale, ratio, seed):
    """Float64: the same norm (torch takes a norm of per-tensor norms, here one flat sum, so
    they agree to rounding, 1e-14) and the same scaled gradient; unchanged bit for bit when
    the norm is below the bound."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    g = rng.standard_normal(sum(sizes)) * 10.0 ** log_scale
    norm_true = float(np.sqrt(np.sum(g * g)))
    max_norm = ratio * norm_true
    tensors = [torch.zeros(n, dtype=torch.float64, requires_grad=True) for n in sizes]
    for t, part in zip(tensors, np.split(g, np.cumsum(sizes)[:-1])):
        t.grad = torch.from_numpy(part.copy())
    expected_norm = float(torch.nn.utils.clip_grad_norm_(tensors, max_norm))
    expected = np.concatenate([t.grad.numpy() for t in tensors])

    grad = xp.asarray(g.copy())
    norm = clip_grad_norm(grad, max_norm)
    assert isinstance(norm, float)
    assert norm == pytest.approx(expected_norm, rel=1e-14)
    coef = max_norm / (norm_true + 1e-6)          # below 1 also for ratio 1.1 at tiny norms
    if coef >= 1:
        np.testing.assert_array_equal(to_np(grad), g)
    else:
        assert rel(grad, expected) <= 1e-14
        assert float(np.sqrt(np.sum(to_np(grad) ** 2))) == pytest.approx(coef * norm_true, rel=1e-14)


def test_clip_grad_norm_float32_norm_is_accurate(xp):
    """float32 squares summed in float64: the norm is within float32 rounding (6e-8) of the
    exact norm of the same float32 numbers, even over a million elements."""
    g = np.random.default_rng(0).standard_normal(1 << 20).astype(np.float32)
    exact = float(np.sqrt(np.sum(g.astype(np.float64) ** 2)))   # float64 squares: exact
    grad = xp.asarray(g)
    assert clip_grad_norm(grad, 1e9) == pytest.approx(exact, rel=1e-7)
    assert grad.dtype == np.float32


def test_clip_grad_norm_non_finite_and_zero(xp):
    for bad in (np.inf, np.nan):
        g = np.array([1.0, bad, -2.0])
        grad = xp.asarray(g.copy())
        norm = clip_grad_norm(grad, 1.0)
        assert not math.isfinite(norm) and (math.isnan(norm) if np.isnan(bad) else norm == math.inf)
        np.testing.assert_array_equal(to_np(grad), g)                  # left as it was
    grad = xp.zeros(5)
    assert clip_grad_norm(grad, 1.0) == 0.0 and not np.any(to_np(grad))


def test_clip_grad_norm_bad_arguments():
    for max_norm in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=f"max_norm={max_norm!r} is invalid"):
            clip_grad_norm(np.ones(3), max_norm)
    with pytest.raises(TypeError, match="max_norm='1' has type str"):
        clip_grad_norm(np.ones(3), "1")
    with pytest.raises(TypeError, match="expected a float array"):
        clip_grad_norm(np.ones(3, dtype=np.int64), 1.0)
