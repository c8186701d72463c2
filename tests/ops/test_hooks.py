"""minibert.ops.hooks: every op's forward and backward calls the registered hooks, in order;
hooks come and go cleanly, errors included; a hook changes no result."""
import numpy as np
import pytest

import minibert.ops as ops
from minibert import BertConfig, BertModel
from minibert.ops import gelu, hooks, linear, readable_ops

CFG = dict(vocab_size=20, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
           intermediate_size=16, max_position_embeddings=8)
IDS = np.array([[2, 5, 6, 7, 3], [2, 8, 9, 3, 0]])
MASK = (IDS > 0).astype(np.int64)
LAYER_OPS = ["linear", "attention", "linear", "dropout", "layernorm",
             "linear", "gelu.bias", "linear", "dropout", "layernorm"]
MODEL_OPS = ["embedding"] * 3 + ["layernorm", "dropout"] + LAYER_OPS * 2 + ["linear", "tanh"]


class Recorder(hooks.OpHook):
    """Every callback, as (callback, op name), and the arguments and results it saw."""

    def __init__(self):
        self.calls, self.seen = [], []

    def forward_pre(self, op, args, kwargs):
        self.calls.append(("forward_pre", op))

    def forward_post(self, op, args, kwargs, result):
        self.calls.append(("forward_post", op))
        self.seen.append((args, kwargs, result))

    def backward_pre(self, op, args, kwargs):
        self.calls.append(("backward_pre", op))

    def backward_post(self, op, args, kwargs, result):
        self.calls.append(("backward_post", op))
        self.seen.append((args, kwargs, result))


@pytest.fixture(params=["kernels", "readable"])
def ops_mode(request):
    with readable_ops(request.param == "readable"):
        yield request.param


@pytest.fixture(autouse=True)
def no_hook_left():
    assert hooks.registered() == ()
    yield
    assert hooks.registered() == ()


def _run_model(seed=0):
    """A tiny BertModel's forward (dropout on) and backward: outputs and gradients."""
    model = BertModel(BertConfig(**CFG), dtype=np.float64, seed=seed)
    rng = np.random.default_rng(seed)
    out, cache = model.forward(IDS, attention_mask=MASK, training=True)
    grads = model.backward(cache, rng.standard_normal((2, 5, 8)), rng.standard_normal((2, 8)))
    return out, grads


def test_every_public_op_function_calls_the_hooks():
    for name in ops.__all__:
        module = getattr(ops, name)
        if not hasattr(module, "__file__") or name == "hooks":
            continue
        fns = [f for f in vars(module) if not f.startswith("_")
               and (f in ("forward", "backward") or f.endswith(("_forward", "_backward")))]
        assert fns, name
        for f in fns:
            fn = getattr(module, f)
            assert getattr(fn, "op_name", None) is not None, f"{name}.{f} does not call the hooks"
            assert fn.phase == ("backward" if f.endswith("backward") else "forward")


def test_hooks_see_every_forward_and_backward_in_order(ops_mode):
    rec = Recorder()
    with hooks.use(rec):
        _run_model()
    names = [op for cb, op in rec.calls]
    kinds = [cb for cb, op in rec.calls]
    n = len(MODEL_OPS)
    # each call is a pre then its post, the forward in model order, the backward reversed
    assert names == [op for op in MODEL_OPS for _ in (0, 1)] + \
        [op for op in MODEL_OPS[::-1] for _ in (0, 1)]
    assert kinds == ["forward_pre", "forward_post"] * n + ["backward_pre", "backward_post"] * n


def test_the_hook_gets_the_call_and_its_result():
    rec = Recorder()
    x, w, b = np.ones((2, 3)), np.ones((4, 3)), np.zeros(4)
    with hooks.use(rec):
        y, cache = linear.forward(x, w, bias=b)
        grads = linear.backward(np.ones_like(y), cache)
    (fargs, fkwargs, fresult), (bargs, bkwargs, bresult) = rec.seen
    assert fargs[0] is x and fargs[1] is w and fkwargs == {"bias": b}
    assert fresult[0] is y and fresult[1] is cache
    assert bargs[1] is cache and bkwargs == {} and bresult is grads


def test_results_are_identical_with_and_without_a_hook(ops_mode):
    out0, grads0 = _run_model()
    with hooks.use(Recorder()):
        out1, grads1 = _run_model()
    assert np.array_equal(out0.last_hidden_state, out1.last_hidden_state)
    assert np.array_equal(out0.pooler_output, out1.pooler_output)
    assert grads0.keys() == grads1.keys()
    for k in grads0:
        assert np.array_equal(grads0[k], grads1[k]), k


def test_a_removed_hook_is_no_longer_called():
    rec, x, w = Recorder(), np.ones((2, 3)), np.ones((4, 3))
    hooks.register(rec)
    try:
        linear.forward(x, w)
    finally:
        hooks.unregister(rec)
    assert len(rec.calls) == 2
    linear.forward(x, w)
    with hooks.use(Recorder()):
        linear.forward(x, w)
    assert len(rec.calls) == 2


def test_an_error_in_the_op_or_a_hook_leaves_the_registry_clean():
    rec = Recorder()
    with pytest.raises(ValueError, match="expected x"):
        with hooks.use(rec):
            linear.forward(np.ones((2, 3)), np.ones((4, 5)))        # shapes disagree
    assert rec.calls == [("forward_pre", "linear")]               # no post after a raise
    assert hooks.registered() == ()

    class Failing(hooks.OpHook):
        def forward_pre(self, op, args, kwargs):
            raise RuntimeError("the hook failed")
    with pytest.raises(RuntimeError, match="the hook failed"):
        with hooks.use(Failing()):
            linear.forward(np.ones((2, 3)), np.ones((4, 3)))
    # the nesting depth came back: the next op call is seen as an outermost call
    rec = Recorder()
    with hooks.use(rec):
        linear.forward(np.ones((2, 3)), np.ones((4, 3)))
    assert rec.calls == [("forward_pre", "linear"), ("forward_post", "linear")]


def test_hooks_run_in_registration_order_and_post_in_reverse():
    log = []

    class Named:                                   # any object: callbacks are optional
        def __init__(self, name):
            self.name = name

        def forward_pre(self, op, args, kwargs):
            log.append(("pre", self.name))

        def forward_post(self, op, args, kwargs, result):
            log.append(("post", self.name))
    only_backward = type("OnlyBackward", (), {"backward_post": lambda self, *a: log.append("bwd")})()
    with hooks.use(Named("a")), hooks.use(Named("b")), hooks.use(only_backward):
        y, cache = linear.forward(np.ones((2, 3)), np.ones((4, 3)))
        linear.backward(np.ones_like(y), cache)
    assert log == [("pre", "a"), ("pre", "b"), ("post", "b"), ("post", "a"), "bwd"]


def test_an_op_inside_an_op_is_part_of_its_call():
    rec = Recorder()
    with readable_ops(), hooks.use(rec):
        y, cache = gelu.bias_forward(np.ones((2, 3)), np.zeros(3))   # calls gelu.forward inside
        gelu.bias_backward(np.ones_like(y), cache)
        gelu.forward_act(np.ones(3))                                   # calls gelu.forward
    assert [op for cb, op in rec.calls] == ["gelu.bias"] * 4 + ["gelu"] * 2


def test_bad_registrations_are_refused():
    rec = Recorder()
    with hooks.use(rec):
        with pytest.raises(ValueError, match="already registered"):
            hooks.register(rec)
    with pytest.raises(ValueError, match="not registered"):
        hooks.unregister(rec)
    with pytest.raises(TypeError, match="name="):
        hooks.op("")
    with pytest.raises(ValueError, match="phase="):
        hooks.op("linear", phase="sideways")
    with pytest.raises(TypeError, match="forward_pre="):
        hooks.register(type("Bad", (), {"forward_pre": 3})())
