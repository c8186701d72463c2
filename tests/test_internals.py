"""minibert.internals and the model inputs it rests on (``head_mask``, ``inputs_embeds``):
float64 gradient checks against central differences, attention maps against the eager
model and live Hugging Face, completeness of integrated gradients, the logit lens against the
model's own logits, head importance against finite differences, bad input."""
import numpy as np
import pytest

from minibert import (BertConfig, BertForMultipleChoice, BertForPreTraining,
                      BertForQuestionAnswering, BertForSequenceClassification,
                      BertForTokenClassification, BertModel, gradcheck)
from minibert.ops import readable_ops
from tests.helpers import assert_close, to_np

# odd sizes on purpose; small enough for float64 checks of every head-mask entry
TINY = dict(vocab_size=23, hidden_size=12, num_hidden_layers=2, num_attention_heads=3,
            intermediate_size=17, max_position_embeddings=16, type_vocab_size=2, num_labels=3,
            pad_token_id=0)
L, A, H = 2, 3, 12


def tiny_config(**kw):
    return BertConfig(**{**TINY, **kw})


def hf_config(transformers, config):
    """Hugging Face's BertConfig for a minibert one, eager attention (output_attentions)."""
    d = {k: v for k, v in config.to_dict().items()
         if k not in ("model_type", "attn_implementation", "num_labels", "classifier_dropout")}
    return transformers.BertConfig(**d, attn_implementation="eager")


def batch(rng, B=3, S=7, V=23, lengths=(7, 5, 2)):
    ids = rng.integers(1, V, size=(B, S))
    mask = np.zeros((B, S), dtype=np.int64)
    tt = np.zeros((B, S), dtype=np.int64)
    for b, n in enumerate(lengths[:B]):
        mask[b, :n] = 1
        tt[b, n // 2:n] = 1
        ids[b, n:] = 0
    return ids, mask, tt


def perturb(model, rng, scale=0.3):
    """Move every parameter off its initial value so no gradient is trivially zero."""
    model.store.data[...] += model.xp.asarray(rng.standard_normal(model.store.size) * scale)


def frozen_dropout(model, fn):
    """Wrap ``fn`` so every call sees the same dropout masks (same RNG state)."""
    state = model.rng_state()

    def f():
        model.set_rng_state(state)
        return fn()
    return f


@pytest.fixture(params=["kernels", "readable"])
def ops_mode(request):
    with readable_ops(request.param == "readable"):
        yield request.param


# ----------------------------------------------------------------- head_mask, inputs_embeds
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


@pytest.mark.parametrize("head", ["pretraining", "sequence_classification", "token_classification",
                                  "question_answering", "multiple_choice"])
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
    (dict(head_mask=np.full((L, A), 1.5)), r"head_mask has the value 1.5, expected values in \[0, 1\]"),
    (dict(head_mask=np.full((A,), -0.1)), r"head_mask has the value -0.1"),
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


def test_inputs_embeds_matches_live_hugging_face(rng):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = tiny_config()
    model = BertModel(cfg, dtype=np.float64, seed=4)
    perturb(model, rng)
    hf = transformers.BertModel(hf_config(transformers, cfg)).double().eval()
    hf.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()},
                       strict=False)
    ids, mask, tt = batch(rng)
    embeds = rng.standard_normal((3, 7, H))
    with torch.no_grad():
        ref = hf(inputs_embeds=torch.from_numpy(embeds), attention_mask=torch.from_numpy(mask),
                 token_type_ids=torch.from_numpy(tt)).last_hidden_state.numpy()
    out = model(inputs_embeds=embeds, attention_mask=mask, token_type_ids=tt)
    assert_close("last_hidden_state", out.last_hidden_state, ref, atol=1e-12)
