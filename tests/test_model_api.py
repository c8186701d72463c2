"""The model's calling conventions: attention implementations ("auto" is the fused kernel
wherever one exists, the textbook op when probabilities are asked for), keyword-only
arguments in Hugging Face's names, and inference through ``model(...)`` without caches."""
import tracemalloc

import numpy as np
import pytest

from minibert import BertForMultipleChoice, BertModel
from minibert.ops import Fused, readable_ops
from tests.helpers import MODEL_CLASSES, batch, perturb, tiny_config

REL64 = 1e-12        # float64, same function, different order of sums (tests/test_model_fused.py)


def _model(impl="auto", cls=BertModel, **kw):
    model = cls(tiny_config(attn_implementation=impl, **kw), dtype=np.float64, seed=2)
    perturb(model, np.random.default_rng(0))
    return model


def _attention_caches(cache):
    return [layer["attn"] for layer in cache["layers"]]


def test_auto_is_the_default_and_runs_the_kernel():
    model = _model()
    assert model.config.attn_implementation == "auto"
    ids, mask, tt = batch(np.random.default_rng(1))
    out, cache = model.forward(ids, attention_mask=mask, token_type_ids=tt)
    assert all(isinstance(c, Fused) for c in _attention_caches(cache))
    with readable_ops():                                   # the readable switch: textbook op
        ref, rcache = model.forward(ids, attention_mask=mask, token_type_ids=tt)
    assert all(isinstance(c, dict) for c in _attention_caches(rcache))
    real = mask.astype(bool)                 # the default runs on the real tokens alone
    assert cache["packing"] is not None and rcache["packing"] is None
    scale = max(1.0, float(np.abs(ref.last_hidden_state).max()))
    assert np.abs(out.last_hidden_state - ref.last_hidden_state)[real].max() <= REL64 * scale


def test_output_attentions_gives_the_probabilities():
    """"auto" switches to the textbook op when the caller asks for probabilities; they equal
    those of "eager"; "fused" refuses, naming the implementations that return them."""
    ids, mask, tt = batch(np.random.default_rng(1))
    auto, eager = _model("auto"), _model("eager")
    out, cache = auto.forward(ids, attention_mask=mask, token_type_ids=tt, output_attentions=True)
    ref, _ = eager.forward(ids, attention_mask=mask, token_type_ids=tt, output_attentions=True)
    assert len(out.attentions) == auto.config.num_hidden_layers
    for a, r in zip(out.attentions, ref.attentions):
        assert a.shape == (3, 3, 7, 7)
        np.testing.assert_allclose(a, r, rtol=0, atol=1e-15)
        np.testing.assert_allclose(a.sum(-1)[mask.astype(bool)[:, None, :].repeat(3, 1)], 1.0,
                                   atol=1e-12)
    assert all(isinstance(c, dict) for c in _attention_caches(cache))
    assert auto(ids, attention_mask=mask, output_attentions=True).attentions[0].shape == (3, 3, 7, 7)
    assert out.hidden_states is None
    hs = auto(ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert len(hs) == auto.config.num_hidden_layers + 1
    with pytest.raises(ValueError, match="output_attentions=True.*'fused'.*'eager' or 'auto'"):
        _model("fused").forward(ids, attention_mask=mask, output_attentions=True)


def _head_inputs(cls, ids, mask, tt):
    if cls is BertForMultipleChoice:
        return np.stack([ids, ids], 1), np.stack([mask, mask], 1), np.stack([tt, tt], 1)
    return ids, mask, tt


@pytest.mark.parametrize("cls", MODEL_CLASSES)
def test_positional_arguments_after_input_ids_are_refused(cls):
    """BertForPreTraining once took (input_ids, token_type_ids, attention_mask) and BertModel
    (input_ids, attention_mask, token_type_ids): two 0/1 arrays of one shape, silently
    swapped. Now every argument after input_ids is keyword-only, with an error naming them."""
    model = _model(cls=cls)
    ids, mask, tt = _head_inputs(cls, *batch(np.random.default_rng(1)))
    for call in (model.forward, model):
        with pytest.raises(TypeError, match="attention_mask=.*token_type_ids="):
            call(ids, tt, mask)
        with pytest.raises(TypeError, match="attention_mask=.*token_type_ids="):
            call(ids, mask)


@pytest.mark.parametrize("cls", MODEL_CLASSES)
def test_call_is_forward_without_cache(cls):
    model = _model(cls=cls)
    ids, mask, tt = _head_inputs(cls, *batch(np.random.default_rng(1)))
    ref, cache = model.forward(ids, attention_mask=mask, token_type_ids=tt)
    out = model(ids, attention_mask=mask, token_type_ids=tt)
    assert type(out) is type(ref) and cache is not None
    for name in ("last_hidden_state", "pooler_output", "logits", "mlm_logits", "nsp_logits"):
        if getattr(ref, name, None) is not None:
            np.testing.assert_array_equal(getattr(out, name), getattr(ref, name), err_msg=name)
    assert model.forward(ids, attention_mask=mask, token_type_ids=tt, keep_cache=False)[1] is None
    with pytest.raises(TypeError, match="training"):
        model(ids, attention_mask=mask, training=True)
    with pytest.raises(ValueError, match="cache is None"):
        model.backward(None)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_call_writes_gelu_over_its_input_only_without_hooks(dtype):
    """Inference writes GELU's output over the intermediate product (no backward reads it):
    the same bits as the training forward. With an op hook registered it does not, since a
    hook may hold the op's input (a trace reads it after the op)."""
    from minibert.ops import hooks

    class Inputs(hooks.OpHook):
        def __init__(self):
            self.seen = []

        def forward_pre(self, op, args, kwargs):
            if op == "gelu.bias":
                self.seen.append((args[0], args[0].copy(), kwargs.get("out")))

    model = BertModel(tiny_config(), dtype=dtype, seed=2)
    ids, mask, tt = batch(np.random.default_rng(1))
    ref, _ = model.forward(ids, attention_mask=mask, token_type_ids=tt)
    out = model(ids, attention_mask=mask, token_type_ids=tt)
    np.testing.assert_array_equal(out.last_hidden_state, ref.last_hidden_state)
    hook = Inputs()
    with hooks.use(hook):
        hooked = model(ids, attention_mask=mask, token_type_ids=tt)
    np.testing.assert_array_equal(hooked.last_hidden_state, ref.last_hidden_state)
    assert len(hook.seen) == model.config.num_hidden_layers
    for x, before, dest in hook.seen:
        assert dest is None
        np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("unpad", [None, False], ids=["default", "padded"])
def test_call_writes_in_place_and_keeps_the_bits(monkeypatch, unpad):
    """Without hooks, inference really hands GELU and both LayerNorms of every layer their
    input as out= with grad=False; the outputs (hidden states, pooled) are forward()'s bits,
    and inputs_embeds is left as it was."""
    from minibert.kernels import gelu_cpu, layernorm_cpu
    calls = []

    def spy(module, name):
        real = getattr(module, name)

        def wrapped(x, *args):
            out, grad = args[-1], args[-2]
            calls.append((name, out is x, grad))
            return real(x, *args)
        monkeypatch.setattr(module, name, wrapped)
    spy(gelu_cpu, "bias_forward")
    spy(layernorm_cpu, "forward")
    model = BertModel(tiny_config(), dtype=np.float32, seed=2)
    ids, mask, tt = batch(np.random.default_rng(1))
    kw = dict(attention_mask=mask, token_type_ids=tt, output_hidden_states=True, unpad=unpad)
    ref, _ = model.forward(ids, **kw)
    calls.clear()
    out = model(ids, **kw)
    layers = model.config.num_hidden_layers
    assert sorted(calls) == sorted([("bias_forward", True, False)] * layers
                                   + [("forward", True, False)] * 2 * layers
                                   + [("forward", False, True)])     # the embeddings' LN
    for a, r in zip(out.hidden_states + [out.pooler_output],
                    ref.hidden_states + [ref.pooler_output]):
        np.testing.assert_array_equal(a, r)
    embeds = model.params["embeddings.word_embeddings.weight"][ids]
    before = embeds.copy()
    model(inputs_embeds=embeds, attention_mask=mask, token_type_ids=tt, unpad=unpad)
    np.testing.assert_array_equal(embeds, before)


def test_call_draws_no_dropout_stream():
    model = _model(hidden_dropout_prob=0.3)
    ids, mask, tt = batch(np.random.default_rng(1))
    model(ids, attention_mask=mask)
    assert model.dropout_calls == 0
    model.forward(ids, attention_mask=mask, training=True)
    assert model.dropout_calls == 1


def _peak_bytes(fn):
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("readable", [False, True], ids=["kernels", "readable"])
def test_call_keeps_one_layer_of_activations(readable):
    """Inference drops each layer's cache when the layer is done: with 8 layers its peak
    memory is a fraction of the training forward's, which keeps all 8 (NumPy's allocations
    are traced by tracemalloc)."""
    model = BertModel(tiny_config(num_hidden_layers=8, hidden_size=48, num_attention_heads=4,
                                  intermediate_size=192, max_position_embeddings=64),
                      dtype=np.float32, seed=0)
    ids = np.random.default_rng(0).integers(1, 23, size=(8, 64))
    with readable_ops(readable):
        model(ids)                                          # compile the kernels first
        kept = _peak_bytes(lambda: model.forward(ids))
        dropped = _peak_bytes(lambda: model(ids))
    assert dropped < 0.35 * kept, f"model(...) peak {dropped} B vs forward's {kept} B"
