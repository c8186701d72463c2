"""BertModel and every head: float64 gradient checks of the full backward (all parameters,
padding, dropout on and off), float32 against float64, padding invariance, bad input."""
import numpy as np
import pytest

from minibert import (
    BertConfig,
    BertForMultipleChoice,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    count_parameters,
    gradcheck,
)
from tests.helpers import assert_close, batch, encoder_gradcheck, frozen_dropout, perturb, tiny_config, to_np


@pytest.mark.slow
@pytest.mark.parametrize("training", [False, True], ids=["eval", "dropout"])
@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new"])
def test_bert_model_gradcheck(xp, rng, training, hidden_act, ops_mode):
    cfg = tiny_config(hidden_act=hidden_act, hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.3)
    model = BertModel(cfg, dtype=np.float64, seed=3, device="cpu" if xp is np else "gpu")
    perturb(model, rng)
    ids, mask, tt = batch(rng)
    dlast = xp.asarray(rng.standard_normal((3, 7, 12)))
    dpool = xp.asarray(rng.standard_normal((3, 12)))
    grads, report = encoder_gradcheck(model, dlast, dpool, input_ids=ids, attention_mask=mask,
                                      token_type_ids=tt, training=training)
    assert set(grads) == set(model.params)
    assert report.passed


def _head_cases(rng):
    ids, mask, tt = batch(rng)
    return {
        "pretraining": (BertForPreTraining, lambda m, tr: m.forward(
            ids, token_type_ids=tt, attention_mask=mask,
            masked_lm_positions=np.array([[1, 3, 6], [0, 2, 4], [1, 0, 0]]),
            masked_lm_ids=np.array([[5, 7, 9], [1, 2, 3], [4, 0, 0]]),
            masked_lm_weights=np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]),
            next_sentence_labels=np.array([0, 1, 0]), training=tr)),
        "sequence_classification": (BertForSequenceClassification, lambda m, tr: m.forward(
            ids, attention_mask=mask, token_type_ids=tt, labels=np.array([0, 2, 1]), training=tr)),
        "token_classification": (BertForTokenClassification, lambda m, tr: m.forward(
            ids, attention_mask=mask, token_type_ids=tt, labels=np.where(mask == 1, ids % 3, -100),
            training=tr)),
        "question_answering": (BertForQuestionAnswering, lambda m, tr: m.forward(
            ids, attention_mask=mask, token_type_ids=tt, start_positions=np.array([1, 0, 9]),
            end_positions=np.array([4, 3, 1]), training=tr)),
        "multiple_choice": (BertForMultipleChoice, lambda m, tr: m.forward(
            np.stack([ids, ids[::-1]], 1), attention_mask=np.stack([mask, mask[::-1]], 1),
            token_type_ids=np.stack([tt, tt[::-1]], 1), labels=np.array([1, 0, 1]), training=tr)),
    }


@pytest.mark.slow
@pytest.mark.parametrize("training", [False, True], ids=["eval", "dropout"])
@pytest.mark.parametrize("head", ["pretraining", "sequence_classification", "token_classification",
                                  "question_answering", "multiple_choice"])
def test_head_gradcheck(rng, head, training, ops_mode):
    cls, run = _head_cases(rng)[head]
    model = cls(tiny_config(hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.3),
                dtype=np.float64, seed=5)
    perturb(model, rng)
    f = frozen_dropout(model, lambda: run(model, training)[0].loss)
    out, cache = run(model, training)
    assert np.isfinite(float(out.loss))
    grads = {k: v.copy() for k, v in model.backward(cache).items()}
    assert set(grads) == set(model.params)
    model.set_rng_state({"seed": 5, "dropout_calls": 0})
    assert gradcheck(f, model.params, grads, mode="direction", n_directions=2).passed
    # the model allocates exactly what the formula counts
    assert model.num_parameters() == count_parameters(model.config, head)


@pytest.mark.slow
def test_sequence_regression_gradcheck(rng):
    model = BertForSequenceClassification(tiny_config(num_labels=1), dtype=np.float64, seed=1)
    perturb(model, rng)
    ids, mask, tt = batch(rng)
    y = rng.standard_normal(3)
    out, cache = model.forward(ids, attention_mask=mask, token_type_ids=tt, labels=y)
    grads = {k: v.copy() for k, v in model.backward(cache).items()}
    assert gradcheck(lambda: model.forward(ids, attention_mask=mask, token_type_ids=tt,
                                           labels=y)[0].loss,
                     model.params, grads, mode="direction").passed


@pytest.mark.slow
def test_backward_with_d_logits_only(rng):
    model = BertForTokenClassification(tiny_config(), dtype=np.float64, seed=2)
    perturb(model, rng)
    ids, mask, tt = batch(rng)
    dl = rng.standard_normal((3, 7, 3))
    out, cache = model.forward(ids, attention_mask=mask, token_type_ids=tt)
    grads = {k: v.copy() for k, v in model.backward(cache, d_logits=dl).items()}
    f = lambda: (model.forward(ids, attention_mask=mask, token_type_ids=tt)[0].logits * dl).sum()  # noqa: E731
    assert gradcheck(f, model.params, grads, mode="direction").passed


def test_float32_matches_float64(rng):
    """float32 forward and gradients against the float64 model with the same weights.

    Tolerances: float32 eps is 6e-8; two layers of O(H)-term dot products and layernorms
    accumulate a few hundred roundings, so 1e-5 absolute on O(1) activations and 1e-4
    relative on gradients leave a margin of about ten over what we measure."""
    cfg = tiny_config()
    m64 = BertForPreTraining(cfg, dtype=np.float64, seed=7)
    perturb(m64, rng)
    m32 = BertForPreTraining(cfg, dtype=np.float32, seed=7)
    m32.load_state_dict(m64.state_dict())
    run = _head_cases(rng)["pretraining"][1]
    o64, c64 = run(m64, False)
    o32, c32 = run(m32, False)
    assert o32.last_hidden_state.dtype == np.float32
    assert_close("last_hidden_state", o32.last_hidden_state, o64.last_hidden_state, atol=1e-5)
    assert_close("loss", o32.loss, o64.loss, atol=1e-5, rtol=1e-5)
    g64 = m64.backward(c64)
    g32 = m32.backward(c32)
    for name in g64:
        scale = float(np.abs(to_np(g64[name])).max())
        if name.endswith("attention.self.key.bias"):
            # Its exact gradient is zero: q . b_k adds the same constant to every score of a
            # query row, and softmax ignores a per-row shift. Both values are roundings of
            # cancelling sums, so they are judged on the scale of the key weight's gradient.
            scale = float(np.abs(to_np(g64[name.replace(".bias", ".weight")])).max())
        err = float(np.abs(to_np(g32[name]) - to_np(g64[name])).max())
        assert err <= 1e-4 * max(scale, 1e-6), f"{name}: float32 gradient error {err:.3e}, scale {scale:.3e}"


def test_padding_does_not_change_real_tokens(rng):
    model = BertModel(tiny_config(), dtype=np.float64, seed=0)
    perturb(model, rng)
    ids, mask, tt = batch(rng, B=2, S=5, lengths=(5, 3))
    out, _ = model.forward(ids, attention_mask=mask, token_type_ids=tt)
    pad = np.zeros((2, 4), dtype=np.int64)
    out2, _ = model.forward(np.concatenate([ids, pad + 7], 1),
                            attention_mask=np.concatenate([mask, pad], 1),
                            token_type_ids=np.concatenate([tt, pad], 1))
    for b, n in enumerate((5, 3)):
        assert_close(f"row {b}", out2.last_hidden_state[b, :n], out.last_hidden_state[b, :n], atol=1e-12)
    assert_close("pooler_output", out2.pooler_output, out.pooler_output, atol=1e-12)


def test_fully_masked_row_is_finite(rng):
    model = BertForSequenceClassification(tiny_config(), dtype=np.float64, seed=0)
    ids, mask, tt = batch(rng)
    mask[1] = 0
    out, cache = model.forward(ids, attention_mask=mask, token_type_ids=tt, labels=np.array([0, 1, 2]))
    grads = model.backward(cache)
    assert np.all(np.isfinite(out.last_hidden_state))
    assert all(np.all(np.isfinite(g)) for g in grads.values())


def test_dropout_is_deterministic_and_off_in_eval(rng):
    cfg = tiny_config(hidden_dropout_prob=0.5)
    ids, mask, tt = batch(rng)
    a, b = BertModel(cfg, np.float64, seed=1), BertModel(cfg, np.float64, seed=1)
    oa, _ = a.forward(ids, attention_mask=mask, token_type_ids=tt, training=True)
    ob, _ = b.forward(ids, attention_mask=mask, token_type_ids=tt, training=True)
    assert np.array_equal(oa.last_hidden_state, ob.last_hidden_state)
    oa2, _ = a.forward(ids, attention_mask=mask, token_type_ids=tt, training=True)  # new masks
    assert not np.array_equal(oa.last_hidden_state, oa2.last_hidden_state)
    e1, _ = a.forward(ids, attention_mask=mask, token_type_ids=tt)
    e2, _ = b.forward(ids, attention_mask=mask, token_type_ids=tt)
    assert np.array_equal(e1.last_hidden_state, e2.last_hidden_state)


def test_init_follows_bert(rng):
    cfg = BertConfig.preset("tiny")
    m = BertModel(cfg, seed=0)
    w = m.params["encoder.layer.0.attention.self.query.weight"]
    assert abs(float(w.std()) - 0.02) < 0.002
    assert np.all(m.params["encoder.layer.1.output.LayerNorm.weight"] == 1)
    assert np.all(m.params["pooler.dense.bias"] == 0)
    assert m.store.data.dtype == np.float32
    # params are views into the one flat buffer
    m.store.data[:] = 0
    assert np.all(w == 0)


def test_qkv_is_one_view_of_the_three_projections():
    """q, k and v are one GEMM: [Wq; Wk; Wv] and [bq; bk; bv] are views of the flat buffer
    (data and gradient), rows in that order; the initialization is the one of Hugging
    Face's parameter order (biases draw no random numbers)."""
    cfg = tiny_config()
    m = BertModel(cfg, seed=0)
    H = cfg.hidden_size
    for layer in range(cfg.num_hidden_layers):
        p = f"encoder.layer.{layer}.attention.self."
        for grads, named in ((False, m.params), (True, m.grads)):
            w, b = m._layer_params(layer, grads=grads).qkv
            assert w.shape == (3 * H, H) and b.shape == (3 * H,)
            for j, which in enumerate(("query", "key", "value")):
                assert np.shares_memory(w, named[p + which + ".weight"])
                assert np.array_equal(w[j * H:(j + 1) * H], named[p + which + ".weight"])
                assert np.array_equal(b[j * H:(j + 1) * H], named[p + which + ".bias"])
    # the random numbers depend only on the order of the normal-initialized weights, which
    # is Hugging Face's: a store of those weights alone draws the same numbers
    from minibert.params import FlatParams
    specs = [s for s in m.store.specs if s.init == "normal"]
    ref = FlatParams(specs, np.float64)
    ref.initialize(0, cfg.initializer_range)
    for s in specs:
        assert np.allclose(ref.params[s.name], m.params[s.name], rtol=1e-6), s.name


@pytest.mark.parametrize("kwargs,match", [
    (dict(input_ids=np.array([[1, 2, 23]])), "input_ids"),
    (dict(input_ids=np.array([[1, -1]])), "input_ids"),
    (dict(input_ids=np.array([[1.0, 2.0]])), "input_ids.*dtype"),
    (dict(input_ids=np.ones((1, 17), dtype=np.int64)), "max_position_embeddings"),
    (dict(input_ids=np.array([[1, 2]]), token_type_ids=np.array([[0, 2]])), "token_type_ids"),
    (dict(input_ids=np.array([[1, 2]]), token_type_ids=np.array([[0, 1, 1]])), "token_type_ids.*shape"),
    (dict(input_ids=np.array([[1, 2]]), attention_mask=np.array([[1, 1, 0]])), "attention_mask.*shape"),
    (dict(input_ids=np.array([[1, 2]]), attention_mask=np.array([[1, 2]])), "attention_mask"),
    (dict(input_ids=np.array([1, 2])), "input_ids.*shape"),
])
def test_bad_input(kwargs, match):
    model = BertModel(tiny_config(), dtype=np.float64)
    with pytest.raises((ValueError, TypeError), match=match):
        model.forward(**kwargs)


def test_bad_labels():
    model = BertForSequenceClassification(tiny_config(), dtype=np.float64)
    with pytest.raises(ValueError, match="labels has value 3"):
        model.forward(np.array([[1, 2]]), labels=np.array([3]))
    pt = BertForPreTraining(tiny_config(), dtype=np.float64)
    with pytest.raises(ValueError, match="masked_lm_positions"):
        pt.forward(np.array([[1, 2]]), masked_lm_positions=np.array([[2]]), masked_lm_ids=np.array([[1]]))


def test_mlm_logits_default_to_every_position(rng):
    model = BertForPreTraining(tiny_config(), dtype=np.float64, seed=0)
    ids, mask, tt = batch(rng)
    every, _ = model.forward(ids, token_type_ids=tt, attention_mask=mask)
    explicit, _ = model.forward(ids, token_type_ids=tt, attention_mask=mask,
                                masked_lm_positions=np.tile(np.arange(7), (3, 1)))
    assert every.mlm_logits.shape == (3, 7, 23) and every.loss is None
    assert np.array_equal(every.mlm_logits, explicit.mlm_logits)
