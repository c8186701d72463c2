"""minibert.internals and the model inputs it rests on (``head_mask``, ``inputs_embeds``):
float64 gradient checks against central differences, attention maps against the eager
model and live Hugging Face, completeness of integrated gradients, the logit lens against the
model's own logits, head importance against finite differences, bad input."""
import numpy as np
import pytest

from minibert import (
    BertForMaskedLM,
    BertForMultipleChoice,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    gradcheck,
)
from tests.helpers import (
    TINY,
    assert_close,
    batch,
    frozen_dropout,
    hf_twin,
    perturb,
    pretraining_arrays,
    tiny_config,
    train_config,
)

# tiny_config's layers, heads and hidden size (tests/helpers.py's TINY): small enough for
# float64 checks of every head-mask entry
L, A, H = TINY["num_hidden_layers"], TINY["num_attention_heads"], TINY["hidden_size"]


def hf_config(transformers, config):
    """Hugging Face's BertConfig for a minibert one, eager attention (output_attentions)."""
    d = {k: v for k, v in config.to_dict().items()
         if k not in ("model_type", "attn_implementation", "num_labels", "classifier_dropout")}
    return transformers.BertConfig(**d, attn_implementation="eager")


# ----------------------------------------------------------------- head_mask, inputs_embeds
@pytest.mark.slow
@pytest.mark.parametrize("training", [False, True], ids=["eval", "dropout"])
def test_head_mask_and_inputs_embeds_gradcheck(rng, training, ops_mode):
    """BertModel: every head-mask entry (full mode: one entry at a time) and the embeddings
    (a random direction) against central differences, relative 1e-7, with padding."""
    model = BertModel(tiny_config(hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.3),
                      dtype=np.float64, seed=3)
    perturb(model, rng)
    ids, mask, tt = batch(rng)
    # inside (0, 1) by more than the stencil's 2h = 2e-3: the checker steps both ways
    head_mask = rng.uniform(0.2, 0.9, size=(L, A))
    head_mask[1, 2] = 0.01                                   # a nearly masked head
    embeds = rng.standard_normal((3, 7, H))
    dlast, dpool = rng.standard_normal((3, 7, H)), rng.standard_normal((3, H))

    def loss():
        out, _ = model.forward(attention_mask=mask, token_type_ids=tt, head_mask=head_mask,
                               inputs_embeds=embeds, training=training)
        return (out.last_hidden_state * dlast).sum() + (out.pooler_output * dpool).sum()
    f = frozen_dropout(model, loss)
    out, cache = model.forward(attention_mask=mask, token_type_ids=tt, head_mask=head_mask,
                               inputs_embeds=embeds, training=training)
    grads = model.backward(cache, dlast, dpool)
    assert grads["head_mask"].shape == (L, A) and grads["inputs_embeds"].shape == (3, 7, H)
    assert not np.any(grads["embeddings.word_embeddings.weight"])   # the lookup did not run
    g = {k: np.array(v) for k, v in grads.items()}
    r = gradcheck(f, {"head_mask": head_mask}, {"head_mask": g["head_mask"]}, mode="full", rtol=1e-7)
    assert r.passed, str(r)
    r = gradcheck(f, {"inputs_embeds": embeds, **model.params},
                  {"inputs_embeds": g["inputs_embeds"], **{k: g[k] for k in model.params}},
                  mode="direction", n_directions=2, rtol=1e-7)
    assert r.passed, str(r)


def test_head_mask_of_ones_and_embeddings_lookup_change_nothing(rng):
    """A head mask of ones and inputs_embeds = E_word[ids] give the bits of the plain call."""
    model = BertModel(tiny_config(), dtype=np.float32, seed=1)
    ids, mask, tt = batch(rng)
    ref = model(ids, attention_mask=mask, token_type_ids=tt)
    E = model.params["embeddings.word_embeddings.weight"][ids]
    out = model(inputs_embeds=E, attention_mask=mask, token_type_ids=tt, head_mask=np.ones(A))
    np.testing.assert_array_equal(out.last_hidden_state, ref.last_hidden_state)
    np.testing.assert_array_equal(out.pooler_output, ref.pooler_output)


def test_head_mask_multiplies_the_probabilities(rng):
    """Hugging Face 4.x's definition, written out with the eager attention: context =
    (P * m_a) V. A zero mask removes the head; outputs.attentions carry the mask too."""
    model = BertModel(tiny_config(), dtype=np.float64, seed=2)
    perturb(model, rng)
    ids, mask, tt = batch(rng)
    hm = np.array([[1.0, 0.0, 0.5], [0.25, 1.0, 0.0]])
    out = model(ids, attention_mask=mask, token_type_ids=tt, head_mask=hm, output_attentions=True)
    # the same function by hand: scale the value projection's head slices (P (m V) = m P V)
    # of an unmasked model and compare outputs
    ref = BertModel(tiny_config(), dtype=np.float64, seed=2)
    ref.store.data[...] = model.store.data
    D = H // A
    for l in range(L):
        for a in range(A):
            sl = slice(a * D, (a + 1) * D)
            ref.params[f"encoder.layer.{l}.attention.self.value.weight"][sl] *= hm[l, a]
            ref.params[f"encoder.layer.{l}.attention.self.value.bias"][sl] *= hm[l, a]
    plain = ref(ids, attention_mask=mask, token_type_ids=tt, output_attentions=True)
    assert_close("last_hidden_state", out.last_hidden_state, plain.last_hidden_state, atol=1e-12)
    for l in range(L):
        assert_close(f"attentions[{l}]", out.attentions[l],
                     plain.attentions[l] * hm[l][:, None, None], atol=1e-12)


def _head_runs(rng):
    ids, mask, tt = batch(rng)
    return {
        "pretraining": (BertForPreTraining, (3, 7), lambda m, kw: m.forward(
            token_type_ids=tt, attention_mask=mask,
            masked_lm_positions=np.array([[1, 3, 6], [0, 2, 4], [1, 0, 0]]),
            masked_lm_ids=np.array([[5, 7, 9], [1, 2, 3], [4, 0, 0]]),
            next_sentence_labels=np.array([0, 1, 0]), **kw)),
        "masked_lm": (BertForMaskedLM, (3, 7), lambda m, kw: m.forward(
            attention_mask=mask, token_type_ids=tt, labels=np.where(mask == 1, ids, -100), **kw)),
        "sequence_classification": (BertForSequenceClassification, (3, 7), lambda m, kw: m.forward(
            attention_mask=mask, token_type_ids=tt, labels=np.array([0, 2, 1]), **kw)),
        "token_classification": (BertForTokenClassification, (3, 7), lambda m, kw: m.forward(
            attention_mask=mask, token_type_ids=tt, labels=np.where(mask == 1, ids % 3, -100), **kw)),
        "question_answering": (BertForQuestionAnswering, (3, 7), lambda m, kw: m.forward(
            attention_mask=mask, token_type_ids=tt, start_positions=np.array([1, 0, 9]),
            end_positions=np.array([4, 3, 1]), **kw)),
        "multiple_choice": (BertForMultipleChoice, (3, 2, 7), lambda m, kw: m.forward(
            attention_mask=np.stack([mask, mask[::-1]], 1), token_type_ids=np.stack([tt, tt[::-1]], 1),
            labels=np.array([1, 0, 1]), **kw)),
    }


@pytest.mark.slow
@pytest.mark.parametrize("head", ["pretraining", "masked_lm", "sequence_classification",
                                  "token_classification", "question_answering", "multiple_choice"])
def test_every_head_passes_head_mask_and_inputs_embeds(rng, head):
    cls, shape, run = _head_runs(rng)[head]
    model = cls(tiny_config(hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.3),
                dtype=np.float64, seed=5)
    perturb(model, rng)
    hm = rng.uniform(0.3, 0.9, size=(L, A))
    embeds = rng.standard_normal((*shape, H))
    kw = dict(head_mask=hm, inputs_embeds=embeds, training=True)
    f = frozen_dropout(model, lambda: run(model, kw)[0].loss)
    out, cache = run(model, kw)
    g = {k: np.array(v) for k, v in model.backward(cache).items()}
    assert g["head_mask"].shape == (L, A) and g["inputs_embeds"].shape == embeds.shape
    model.set_rng_state({"seed": 5, "dropout_calls": 0})
    r = gradcheck(f, {"head_mask": hm}, {"head_mask": g["head_mask"]}, mode="full")
    assert r.passed, str(r)
    r = gradcheck(f, {"inputs_embeds": embeds}, {"inputs_embeds": g["inputs_embeds"]},
                  mode="direction", n_directions=2)
    assert r.passed, str(r)


@pytest.mark.parametrize("kwargs, match", [
    (dict(head_mask=np.ones((3, 3))), r"head_mask has shape \(3, 3\), expected"),
    (dict(head_mask=np.ones((2,))), r"head_mask has shape \(2,\)"),
    (dict(head_mask=np.full((L, A), np.inf)), r"head_mask has the value inf, expected finite numbers"),
    (dict(head_mask=np.full((A,), -np.inf)), r"head_mask has the value -inf"),
    (dict(head_mask=np.full((A,), np.nan)), r"head_mask has the value nan"),
    (dict(inputs_embeds=np.zeros((1, 4, H))), r"input_ids and inputs_embeds: both were given"),
    (dict(input_ids=None), r"input_ids and inputs_embeds: neither was given"),
    (dict(input_ids=None, inputs_embeds=np.zeros((1, 4, H + 1))), r"inputs_embeds has shape \(1, 4, 13\)"),
    (dict(input_ids=None, inputs_embeds=np.zeros((1, 20, H))), r"sequence length 20, longer"),
])
def test_bad_head_mask_and_inputs_embeds(kwargs, match):
    model = BertModel(tiny_config(), seed=0)
    kw = {"input_ids": np.ones((1, 4), dtype=np.int64), **kwargs}
    with pytest.raises(ValueError, match=match):
        model(**kw)
    head = BertForSequenceClassification(tiny_config(), seed=0)
    with pytest.raises(ValueError, match=match):
        head(**kw)


@pytest.mark.slow
def test_inputs_embeds_matches_live_hugging_face(rng):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = tiny_config()
    model = BertModel(cfg, dtype=np.float64, seed=4)
    perturb(model, rng)
    hf = hf_twin(torch, transformers, model, hf_config(transformers, cfg))
    ids, mask, tt = batch(rng)
    embeds = rng.standard_normal((3, 7, H))
    with torch.no_grad():
        ref = hf(inputs_embeds=torch.from_numpy(embeds), attention_mask=torch.from_numpy(mask),
                 token_type_ids=torch.from_numpy(tt)).last_hidden_state.numpy()
    out = model(inputs_embeds=embeds, attention_mask=mask, token_type_ids=tt)
    real = mask.astype(bool)                  # padded positions: zeros here (padding-free)
    assert_close("last_hidden_state", out.last_hidden_state[real], np.asarray(ref)[real], atol=1e-12)


# ----------------------------------------------------------------- attention maps
from minibert import internals  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
def test_attention_maps_match_eager_outputs_and_live_hugging_face(rng, dtype, tol):
    cfg = tiny_config(attn_implementation="eager")
    model = BertForPreTraining(cfg, dtype=dtype, seed=7)
    perturb(model, rng)
    ids, mask, tt = batch(rng)
    maps = internals.attention_maps(model, ids, attention_mask=mask, token_type_ids=tt)
    assert maps.shape == (L, 3, A, 7, 7) and maps.dtype == dtype
    eager = model.bert(ids, attention_mask=mask, token_type_ids=tt, output_attentions=True).attentions
    for l in range(L):
        np.testing.assert_array_equal(maps[l], eager[l])
    # rows sum to one over the real keys; padded keys get exactly zero
    assert_close("row sums", maps.sum(-1), np.ones((L, 3, A, 7)), atol=10 * np.finfo(dtype).eps)
    assert not np.any(maps * (1 - mask)[None, :, None, None, :])
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf = transformers.BertModel(hf_config(transformers, cfg)).eval()
    hf = hf.double() if dtype == np.float64 else hf.float()
    state = {k[len("bert."):]: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()
             if k.startswith("bert.")}
    hf.load_state_dict(state, strict=False)
    with torch.no_grad():
        ref = hf(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                 token_type_ids=torch.from_numpy(tt), output_attentions=True).attentions
    for l in range(L):
        assert_close(f"attentions[{l}] vs Hugging Face", maps[l], ref[l].numpy(), atol=tol)


def test_head_stats_on_known_maps():
    """Three hand-made heads: all on [CLS], all on the previous token, uniform."""
    S = 5
    ids = np.array([[101, 7, 8, 9, 102]])
    P = np.zeros((1, 1, 3, S, S))
    P[0, 0, 0, :, 0] = 1.0                                           # [CLS] head
    P[0, 0, 1, 0, 0] = 1.0
    P[0, 0, 1, np.arange(1, S), np.arange(S - 1)] = 1.0             # previous-token head
    P[0, 0, 2] = 1.0 / S                                             # uniform head
    st = internals.head_stats(P, ids, np.ones((1, S)), {"cls": 101, "sep": 102})
    assert set(st) == set(internals.HEAD_STATS) and st["entropy"].shape == (1, 3)
    assert_close("entropy", st["entropy"][0], [0, 0, np.log(S)], atol=1e-12)
    assert_close("cls", st["cls"][0], [1, 0.4, 0.2], atol=1e-12)       # queries 0, 1 -> [CLS]
    assert_close("sep", st["sep"][0], [0, 0, 0.2], atol=1e-12)
    assert_close("self", st["self"][0], [0.2, 0.2, 0.2], atol=1e-12)
    assert_close("prev", st["prev"][0], [0.25, 1, 0.2], atol=1e-12)     # over queries 1..4
    assert_close("next", st["next"][0], [0, 0, 0.2], atol=1e-12)
    assert_close("distance", st["distance"][0], [2, 0.8, np.mean(np.abs(np.subtract.outer(
        np.arange(S), np.arange(S))).sum(1) / S)], atol=1e-12)
    # the same via a tokenizer-like object and a (cls, sep) pair
    for special in ((101, 102),):
        assert_close("cls (pair)", internals.head_stats(P, ids, None, special)["cls"], st["cls"])


def test_attention_rollout(rng):
    ids, mask, tt = batch(rng)
    model = BertModel(tiny_config(), dtype=np.float64, seed=1)
    perturb(model, rng)
    maps = internals.attention_maps(model, ids, attention_mask=mask)
    R = internals.attention_rollout(maps, mask)
    assert R.shape == (3, 7, 7)
    real = mask.astype(bool)
    assert_close("real rows sum to one", R.sum(-1)[real], np.ones(real.sum()), atol=1e-12)
    assert not R[~real].any() and not R.transpose(0, 2, 1)[~real].any()
    # by hand for sequence 0 (no padding)
    want = np.eye(7)
    for l in range(L):
        a = 0.5 * maps[l, 0].mean(0) + 0.5 * np.eye(7)
        want = (a / a.sum(-1, keepdims=True)) @ want
    assert_close("rollout", R[0], want, atol=1e-12)
    assert internals.attention_rollout(list(maps), mask, all_layers=True).shape == (L, 3, 7, 7)
    # attention to oneself only: the rollout is the identity
    eye = np.broadcast_to(np.eye(7), (L, 1, A, 7, 7))
    assert_close("identity", internals.attention_rollout(eye)[0], np.eye(7), atol=0)


# ----------------------------------------------------------------- head importance
def _pretraining_batch(rng, B=3, S=7):
    ids, mask, tt = batch(rng, B, S)
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=tt,
                masked_lm_positions=np.array([[1, 3, 6], [0, 2, 4], [1, 0, 0]]),
                masked_lm_ids=np.array([[5, 7, 9], [1, 2, 3], [4, 0, 0]]),
                masked_lm_weights=np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]),
                next_sentence_labels=np.array([0, 1, 0]))


def test_head_importance_matches_central_differences(rng):
    """At head_mask = 1 a central difference would step outside [0, 1], so the loss is
    differentiated in the value projection's scale instead: P (s V_a) = s (P V_a), the same
    function of s as of the head-mask entry, with no head mask given at all."""
    model = BertForPreTraining(tiny_config(), dtype=np.float64, seed=9)
    perturb(model, rng)
    b1, b2 = _pretraining_batch(rng), _pretraining_batch(np.random.default_rng(7))
    imp = internals.head_importance(model, [b1, b2])
    assert imp.shape == (L, A)
    D = H // A
    base = {k: np.array(v) for k, v in model.params.items()}
    scale = np.ones((L, A))

    def loss():
        for l in range(L):
            for name in ("weight", "bias"):
                p = f"bert.encoder.layer.{l}.attention.self.value.{name}"
                v = base[p].reshape(A, D, -1) * scale[l][:, None, None]
                model.params[p][...] = v.reshape(base[p].shape)
        return sum(float(model(**b).loss) for b in (b1, b2))
    r = gradcheck(loss, {"scale": scale}, {"scale": imp}, mode="full", rtol=1e-7)
    assert r.passed, str(r)
    # one batch = the "head_mask" gradient of one backward
    for k, v in base.items():
        model.params[k][...] = v
    out, cache = model.forward(**b1, head_mask=np.ones((L, A)))
    assert_close("head_importance(one batch)", internals.head_importance(model, b1),
                 model.backward(cache)["head_mask"], atol=0)


def test_prune_heads_curve(rng):
    model = BertForSequenceClassification(tiny_config(), dtype=np.float64, seed=2)
    perturb(model, rng)
    ids, mask, tt = batch(rng)
    b = dict(input_ids=ids, attention_mask=mask, token_type_ids=tt, labels=np.array([0, 2, 1]))
    curve = internals.prune_heads_curve(model, b)
    assert list(curve.n_pruned) == list(range(L * A + 1)) and curve.loss.shape == (L * A + 1,)
    assert curve.loss[0] == pytest.approx(float(model(**b).loss), abs=1e-12)
    assert curve.loss[-1] == pytest.approx(float(model(**b, head_mask=np.zeros((L, A))).loss), abs=1e-12)
    assert sorted(curve.order) == [(l, a) for l in range(L) for a in range(A)]
    # the first pruned head is the least important
    l0, a0 = curve.order[0]
    assert abs(curve.importance[l0, a0]) == np.abs(curve.importance).min()
    assert len(internals.prune_heads_curve(model, b, curve.importance, num_points=3).loss) == 3


# ----------------------------------------------------------------- attribution
def _mlm_setup(rng, dtype=np.float64):
    model = BertForPreTraining(tiny_config(), dtype=dtype, seed=11)
    perturb(model, rng)
    ids, mask, tt = batch(rng)
    return model, ids, mask, tt


def test_gradient_x_input_is_the_inputs_embeds_gradient_times_the_embeddings(rng):
    model, ids, mask, tt = _mlm_setup(rng)
    target = [(1, 5), (3, 7), (0, 2)]
    r = internals.gradient_x_input(model, ids, target, attention_mask=mask, token_type_ids=tt)
    E = model.params["bert.embeddings.word_embeddings.weight"][ids]
    pos = np.array([[1], [3], [0]])
    out, cache = model.forward(inputs_embeds=E, attention_mask=mask, token_type_ids=tt,
                               masked_lm_positions=pos)
    d = np.zeros(out.mlm_logits.shape)
    d[np.arange(3), 0, [5, 7, 2]] = 1.0
    g = model.backward(cache, d_mlm_logits=d)["inputs_embeds"]
    assert_close("gradient x input", r.scores, (g * E).sum(-1), atol=1e-13)
    assert_close("f_input", r.f_input, out.mlm_logits[np.arange(3), 0, [5, 7, 2]], atol=0)


@pytest.mark.parametrize("method", ["gauss-legendre", "trapezoid"])
def test_integrated_gradients_completeness(rng, method):
    """sum(scores) = F(x) - F(baseline) up to the quadrature error: Gauss-Legendre is
    spectrally accurate for this smooth path; the trapezoid's error falls as 1/steps^2."""
    model, ids, mask, tt = _mlm_setup(rng)
    r = internals.integrated_gradients(model, ids, (2, 4), steps=50, method=method,
                                       attention_mask=mask, token_type_ids=tt,
                                       internal_batch_size=7)
    assert r.scores.shape == (3, 7) and r.delta.shape == (3,)
    assert_close("delta", r.delta, r.scores.sum(-1) - (r.f_input - r.f_baseline), atol=1e-12)
    assert np.all(r.relative_delta <= (1e-10 if method == "gauss-legendre" else 1e-2)), r.relative_delta
    if method == "trapezoid":
        r4 = internals.integrated_gradients(model, ids, (2, 4), steps=200, method=method,
                                            attention_mask=mask, token_type_ids=tt)
        ratio = np.abs(r.delta) / np.abs(r4.delta)                 # (199 / 49)^2 ~ 16.5
        assert np.all((ratio > 12) & (ratio < 21)), ratio
    # chunking changes nothing but the rounding
    r1 = internals.integrated_gradients(model, ids, (2, 4), steps=50, method=method,
                                        attention_mask=mask, token_type_ids=tt,
                                        internal_batch_size=64)
    assert_close("chunked", r1.scores, r.scores, atol=1e-12)
    # padded tokens, whose embeddings change nothing, get nothing
    assert np.all(np.abs(r.scores[mask == 0]) < 1e-12)


def test_integrated_gradients_for_classification(rng):
    model = BertForSequenceClassification(tiny_config(), dtype=np.float64, seed=3)
    perturb(model, rng)
    ids, mask, tt = batch(rng)
    r = internals.integrated_gradients(model, ids, [0, 2, 1], steps=30, attention_mask=mask,
                                       token_type_ids=tt, baseline="zero")
    assert np.all(r.relative_delta < 1e-8)
    assert_close("f_input", r.f_input, model(ids, attention_mask=mask, token_type_ids=tt)
                 .logits[np.arange(3), [0, 2, 1]], atol=1e-12)
    tok = BertForTokenClassification(tiny_config(), dtype=np.float64, seed=3)
    perturb(tok, rng)
    r = internals.integrated_gradients(tok, ids, (1, 2), steps=30, attention_mask=mask)
    assert np.all(r.relative_delta < 1e-8)


# ----------------------------------------------------------------- logit lens
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logit_lens_last_layer_is_the_models_logits_bit_for_bit(rng, dtype):
    model, ids, mask, tt = _mlm_setup(rng, dtype)
    pos = np.array([[1, 2], [0, 4], [1, 1]])
    lens = internals.logit_lens(model, ids, pos, attention_mask=mask, token_type_ids=tt)
    assert lens.shape == (L + 1, 3, 2, 23) and lens.dtype == dtype
    out = model(ids, attention_mask=mask, token_type_ids=tt, masked_lm_positions=pos)
    np.testing.assert_array_equal(lens[-1], out.mlm_logits)
    # layer 0 is the head on the embeddings' output
    hs = model(ids, attention_mask=mask, token_type_ids=tt, output_hidden_states=True).hidden_states
    np.testing.assert_array_equal(lens[0], model.mlm_head_logits(hs[0], pos))
    assert internals.logit_lens(model, ids, [1], attention_mask=mask).shape == (L + 1, 3, 1, 23)


def test_masked_lm_model_lens_and_attributions(rng):
    """BertForMaskedLM (its logits named ``logits``, its backward taking ``d_logits``): the
    same lens and attributions as BertForPreTraining with the same weights."""
    pre, ids, mask, tt = _mlm_setup(rng)
    mlm = BertForMaskedLM(tiny_config(), dtype=np.float64)
    mlm.load_state_dict({k: v for k, v in pre.state_dict().items() if k in mlm.params})
    pos = np.array([[1], [3], [0]])
    lens = internals.logit_lens(mlm, ids, pos, attention_mask=mask, token_type_ids=tt)
    np.testing.assert_array_equal(lens[-1], mlm(ids, attention_mask=mask, token_type_ids=tt,
                                                masked_lm_positions=pos).logits)
    assert_close("lens", lens, internals.logit_lens(pre, ids, pos, mask, tt), atol=1e-12)
    a = internals.integrated_gradients(mlm, ids, (2, 4), steps=50, attention_mask=mask)
    b = internals.integrated_gradients(pre, ids, (2, 4), steps=50, attention_mask=mask)
    assert_close("integrated gradients", a.scores, b.scores, atol=1e-12)
    assert np.all(a.relative_delta < 1e-8)


# ----------------------------------------------------------------- bad input
def test_bad_input(rng):
    model, ids, mask, tt = _mlm_setup(rng, np.float32)
    with pytest.raises(ValueError,
                       match=r"target position 7 is outside the sequence, expected 0 <= position < 7"):
        internals.integrated_gradients(model, ids, (7, 1))
    with pytest.raises(ValueError, match=r"target token id 23 is out of range"):
        internals.gradient_x_input(model, ids, (1, 23))
    with pytest.raises(ValueError, match=r"target=.* is not understood"):
        internals.gradient_x_input(model, ids, 3)
    clf = BertForSequenceClassification(tiny_config(), seed=0)
    with pytest.raises(ValueError,
                       match=r"target class index 3 is out of range, expected 0 <= class index < 3"):
        internals.gradient_x_input(clf, ids, 3)
    with pytest.raises(ValueError, match=r"logit_lens needs a model with a masked-LM head .* got BertModel"):
        internals.logit_lens(BertModel(tiny_config()), ids, [1])
    with pytest.raises(ValueError, match=r"positions has the value 9"):
        internals.logit_lens(model, ids, [9])
    with pytest.raises(ValueError, match=r"has no masked-LM or classification logits"):
        internals.gradient_x_input(BertModel(tiny_config()), ids, (1, 2))
    with pytest.raises(ValueError, match=r"sequence length 20, longer than max_position_embeddings=16"):
        internals.attention_maps(model, np.ones((1, 20), dtype=np.int64))
    with pytest.raises(ValueError, match=r"sequence length 20"):
        internals.integrated_gradients(model, np.ones((1, 20), dtype=np.int64), (1, 2))
    with pytest.raises(ValueError, match=r"steps=0 is invalid"):
        internals.integrated_gradients(model, ids, (1, 2), steps=0)
    with pytest.raises(ValueError, match=r"method='simpson' is unknown"):
        internals.integrated_gradients(model, ids, (1, 2), method="simpson")
    with pytest.raises(ValueError, match=r"batch gives BertForPreTraining no loss"):
        internals.head_importance(model, dict(input_ids=ids))


# ----------------------------------------------------------------- gradient flow in training
@pytest.mark.slow
def test_internals_monitor_logs_what_the_step_did(tmp_path):
    """Every 2nd step: group gradient norms whose total is the trainer's (unclipped) norm,
    update ratios from the parameters before and after, activations, entropies; the run's
    parameters are bit for bit those of a run without the monitor."""
    from minibert.train import TrainConfig, Trainer
    data = pretraining_arrays()
    params = []
    for monitor in (None, internals.InternalsMonitor(2, tmp_path / "a")):
        model = BertForPreTraining(train_config(), seed=0)
        tc = TrainConfig(steps=4, batch_size=4, lr=1e-3, eval_every=100, save_every=100)
        t = Trainer(model, data, None, str(tmp_path / ("a" if monitor else "b")), tc, monitor=monitor)
        result = t.train()
        params.append(np.array(model.store.data))
    np.testing.assert_array_equal(params[0], params[1])
    monitor.close()
    recs = monitor.records()
    assert [r["step"] for r in recs] == [2, 4]
    assert (tmp_path / "a" / "internals.png").is_file()
    r = recs[0]
    groups = {"embeddings", "pooler", "head"} | {f"layer.{l}.{k}" for l in range(2)
                                                 for k in ("attention", "ffn", "layernorm")}
    assert set(r["grad_norm"]) == groups == set(r["update_ratio"])
    total = np.sqrt(sum(v * v for v in r["grad_norm"].values()))
    assert total == pytest.approx(result.history[1]["grad_norm"], rel=1e-5)
    assert all(0 < v < 1 for v in r["update_ratio"].values())
    assert set(r["act_std"]) == {"embeddings", "layer.0", "layer.1"}
    assert len(r["attn_entropy"]["layer.1"]) == 2
    assert all(0 <= e <= np.log(16) for e in r["attn_entropy"]["layer.0"])


@pytest.mark.slow
def test_head_mask_matches_live_hugging_face_4(rng):
    """Where the installed transformers still takes head_mask (4.x; 5.x removed it): the
    same outputs and attentions for the same mask."""
    import inspect
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    if "head_mask" not in inspect.signature(transformers.BertModel.forward).parameters:
        pytest.skip(f"transformers {transformers.__version__} has no head_mask")
    cfg = tiny_config()
    model = BertModel(cfg, dtype=np.float64, seed=4)
    perturb(model, rng)
    hf = hf_twin(torch, transformers, model, hf_config(transformers, cfg))
    ids, mask, tt = batch(rng)
    hm = np.array([[1.0, 0.0, 0.5], [0.25, 1.0, 0.75]])
    with torch.no_grad():
        ref = hf(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                 token_type_ids=torch.from_numpy(tt), head_mask=torch.from_numpy(hm),
                 output_attentions=True)
    out = model(ids, attention_mask=mask, token_type_ids=tt, head_mask=hm, output_attentions=True)
    assert_close("last_hidden_state", out.last_hidden_state, ref.last_hidden_state.numpy(), atol=1e-12)
    for l in range(L):
        assert_close(f"attentions[{l}]", out.attentions[l], ref.attentions[l].numpy(), atol=1e-12)


# ----------------------------------------------------------------- pictures
def _drawn_figure(monkeypatch, draw, *args):
    """The figure a plot function makes, drawn (layout done) instead of saved."""
    pytest.importorskip("matplotlib")
    from minibert.internals import plots
    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, path, dpi=120: figs.append(fig))
    draw(*args)
    fig = figs[0]
    fig.canvas.draw()
    return fig


def _inside(fig, artist):
    """Whether ``artist`` is drawn entirely within the figure (not cut off at an edge)."""
    box = artist.get_window_extent(fig.canvas.get_renderer())
    W, H = fig.canvas.get_width_height()
    return box.x0 >= -1 and box.y0 >= -1 and box.x1 <= W + 1 and box.y1 <= H + 1


@pytest.mark.parametrize("heads", [2, 3])
def test_attention_pictures_label_queries_and_keys(monkeypatch, heads):
    """Both attention pictures: the tokens on the axes (rows: queries on y, columns: keys
    on x), a colour bar, a title inside the figure."""
    import matplotlib.pyplot as plt

    from minibert.internals import plots
    tokens = ["[CLS]", "return", "the", "[MASK]", "of", "the", "list", ".", "[SEP]"]
    S, Lg = len(tokens), 2
    P = np.random.default_rng(0).dirichlet(np.ones(S), size=(Lg, heads, S))      # (L, A, S, S)
    fig = _drawn_figure(monkeypatch, plots.plot_attention_grid, P, "unused.png", tokens)
    maps = [ax for ax in fig.axes if ax.images]
    assert len(maps) == Lg * heads and len(fig.axes) == Lg * heads + 1          # + colour bar
    left = [ax for ax in maps if ax.get_subplotspec().is_first_col()]
    bottom = [ax for ax in maps if ax.get_subplotspec().is_last_row()]
    assert all([t.get_text() for t in ax.get_yticklabels()] == tokens for ax in left)
    assert all([t.get_text() for t in ax.get_xticklabels()] == tokens for ax in bottom)
    assert all("query" in ax.get_ylabel() for ax in left)
    assert all("key" in ax.get_xlabel() for ax in bottom)
    assert _inside(fig, fig._suptitle) and "query" in fig._suptitle.get_text()
    plt.close(fig)

    fig = _drawn_figure(monkeypatch, plots.plot_attention_layer, P[1], "unused.png", tokens, 1)
    maps = [ax for ax in fig.axes if ax.images]
    assert len(maps) == heads and len(fig.axes) == heads + 1
    for ax in maps:
        assert [t.get_text() for t in ax.get_xticklabels()] == tokens
        assert [t.get_text() for t in ax.get_yticklabels()] == tokens
        assert ax.get_xlabel() == "key token" and _inside(fig, ax.title)     # one row here
    assert maps[0].get_ylabel() == "query token"
    assert _inside(fig, fig._suptitle) and fig._suptitle.get_text().startswith("layer 1")
    plt.close(fig)


def test_head_heatmap_title_fits(monkeypatch):
    import matplotlib.pyplot as plt

    from minibert.internals import plots
    fig = _drawn_figure(monkeypatch, plots.plot_head_heatmap, np.ones((2, 2)), "unused.png",
                        "head importance |dLoss/d head_mask| (Michel et al. 2019)")
    assert _inside(fig, fig.axes[0].title)
    plt.close(fig)


def test_long_texts_label_every_kth_token(monkeypatch):
    import matplotlib.pyplot as plt

    from minibert.internals import plots
    tokens = [f"t{i}" for i in range(100)]
    P = np.full((1, 100, 100), 0.01)
    fig = _drawn_figure(monkeypatch, plots.plot_attention_layer, P, "unused.png", tokens)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == tokens[::2]
    plt.close(fig)
