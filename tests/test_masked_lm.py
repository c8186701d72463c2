"""BertForMaskedLM: float64 gradient checks of the whole backward (labels with -100, BERT's
gathered positions with weights, a random upstream gradient on the logits; dropout on and
off), parity of loss, logits and every gradient with transformers' autograd, float32
against float64, and bad input."""
import os

import numpy as np
import pytest

from minibert import BertForMaskedLM, BertForPreTraining, gradcheck
from tests.helpers import assert_close, batch, frozen_dropout, perturb, tiny_config, to_np

V = 23                      # tiny_config's vocabulary


def _labels(ids, mask):
    """Hugging Face's targets: a few real positions predicted, the rest -100."""
    lab = np.full(ids.shape, -100)
    lab[0, [1, 4, 6]] = (ids[0, [1, 4, 6]] + 3) % V
    lab[1, [0, 2]] = (ids[1, [0, 2]] + 5) % V
    lab[2, 1] = 7
    return np.where(mask == 1, lab, -100)


POS = np.array([[1, 3, 6], [0, 2, 4], [1, 0, 0]])
IDS = np.array([[5, 7, 9], [1, 2, 3], [4, 0, 0]])
W = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])


def _case(kind, rng):
    ids, mask, tt = batch(rng)
    if kind == "labels":
        kw = dict(labels=_labels(ids, mask))
    elif kind == "gathered":
        kw = dict(masked_lm_positions=POS, masked_lm_ids=IDS, masked_lm_weights=W)
    else:                                               # no targets: d_logits only
        kw = {}
    return ids, mask, tt, kw


@pytest.mark.slow
@pytest.mark.parametrize("training", [False, True], ids=["eval", "dropout"])
@pytest.mark.parametrize("kind", ["labels", "gathered"])
def test_gradcheck_loss(rng, kind, training, ops_mode):
    model = BertForMaskedLM(tiny_config(hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.3),
                            dtype=np.float64, seed=5)
    perturb(model, rng)
    ids, mask, tt, kw = _case(kind, rng)

    def run():
        return model.forward(ids, attention_mask=mask, token_type_ids=tt, training=training, **kw)
    f = frozen_dropout(model, lambda: run()[0].loss)
    out, cache = run()
    assert np.isfinite(float(out.loss)) and float(out.loss) > 0
    grads = {k: v.copy() for k, v in model.backward(cache).items()}
    assert set(grads) == set(model.params) and not any("pooler" in k for k in grads)
    model.set_rng_state({"seed": 5, "dropout_calls": 0})
    assert gradcheck(f, model.params, grads, mode="direction", n_directions=2).passed


@pytest.mark.slow
@pytest.mark.parametrize("positions", [None, POS], ids=["all", "gathered"])
@pytest.mark.parametrize("pooler", [False, True], ids=["no_pooler", "pooler"])
def test_gradcheck_random_upstream(rng, positions, pooler):
    """A random dL/dlogits (B, P, V), with d_loss on top where labels are given too."""
    model = BertForMaskedLM(tiny_config(), dtype=np.float64, seed=2, add_pooling_layer=pooler)
    perturb(model, rng)
    ids, mask, tt = batch(rng)
    P = 7 if positions is None else positions.shape[1]
    dl = rng.standard_normal((3, P, V))
    kw = dict(masked_lm_positions=positions)
    if positions is None:
        kw = dict(labels=_labels(ids, mask))

    def f():
        out = model.forward(ids, attention_mask=mask, token_type_ids=tt, **kw)[0]
        return (out.logits * dl).sum() + (0.7 * out.loss if out.loss is not None else 0.0)
    out, cache = model.forward(ids, attention_mask=mask, token_type_ids=tt, **kw)
    assert out.logits.shape == (3, P, V)
    grads = {k: v.copy() for k, v in model.backward(cache, d_logits=dl, d_loss=0.7).items()}
    if pooler:                          # the pooler feeds nothing the head reads
        assert not np.any(grads["bert.pooler.dense.weight"])
    assert gradcheck(f, model.params, grads, mode="direction", n_directions=2).passed


def test_gathered_loss_equals_labels_loss(rng):
    """BERT's (positions, ids, weights) and Hugging Face's labels are two spellings of the
    same loss when the positions are distinct and every weight is 1."""
    model = BertForMaskedLM(tiny_config(), dtype=np.float64, seed=3)
    perturb(model, rng)
    ids, mask, tt = batch(rng)
    pos = np.array([[1, 4], [0, 2], [1, 0]])
    tgt = np.array([[3, 8], [2, 11], [7, 5]])
    lab = np.full(ids.shape, -100)
    lab[np.arange(3)[:, None], pos] = tgt
    a, ca = model.forward(ids, attention_mask=mask, token_type_ids=tt, labels=lab)
    b, cb = model.forward(ids, attention_mask=mask, token_type_ids=tt, masked_lm_positions=pos,
                          masked_lm_ids=tgt)
    assert abs(float(a.loss) - float(b.loss)) < 1e-14
    assert_close("gathered logits", b.logits, a.logits[np.arange(3)[:, None], pos], atol=1e-14)
    ga = {k: v.copy() for k, v in model.backward(ca).items()}
    gb = model.backward(cb)
    for name in ga:
        assert_close(name, gb[name], ga[name], atol=1e-14)


def test_same_head_as_pretraining(rng):
    """BertForMaskedLM and BertForPreTraining share the MLM head: on the same weights, the
    same logits and the same MLM loss."""
    pt = BertForPreTraining(tiny_config(), dtype=np.float64, seed=4)
    perturb(pt, rng)
    mlm = BertForMaskedLM(tiny_config(), dtype=np.float64, seed=0, add_pooling_layer=True)
    mlm.load_state_dict({k: v for k, v in pt.state_dict().items() if k in mlm.params})
    ids, mask, tt = batch(rng)
    kw = dict(attention_mask=mask, token_type_ids=tt, masked_lm_positions=POS, masked_lm_ids=IDS,
              masked_lm_weights=W)
    a = pt(ids, **kw)
    b = mlm(ids, **kw)
    assert np.array_equal(a.mlm_logits, b.logits) and float(a.mlm_loss) == float(b.loss)
    assert np.array_equal(a.pooler_output, b.pooler_output)


def test_no_prediction_gives_zero_loss_and_gradient(rng):
    model = BertForMaskedLM(tiny_config(), dtype=np.float64, seed=1)
    ids, mask, tt = batch(rng)
    out, cache = model.forward(ids, attention_mask=mask, labels=np.full(ids.shape, -100))
    assert float(out.loss) == 0.0
    model.backward(cache)
    assert not np.any(model.store.grad)


def test_float32_matches_float64(rng):
    """Same tolerances and reasoning as tests/test_model.py: two tiny layers in float32
    (eps 6e-8) accumulate a few hundred roundings on O(1) values."""
    m64 = BertForMaskedLM(tiny_config(), dtype=np.float64, seed=7)
    perturb(m64, rng)
    m32 = BertForMaskedLM(tiny_config(), dtype=np.float32, seed=7)
    m32.load_state_dict(m64.state_dict())
    ids, mask, tt = batch(rng)
    lab = _labels(ids, mask)
    o64, c64 = m64.forward(ids, attention_mask=mask, token_type_ids=tt, labels=lab)
    o32, c32 = m32.forward(ids, attention_mask=mask, token_type_ids=tt, labels=lab)
    assert o32.logits.dtype == np.float32
    assert_close("logits", o32.logits, o64.logits, atol=1e-5)
    assert_close("loss", o32.loss, o64.loss, atol=1e-5, rtol=1e-5)
    g64, g32 = m64.backward(c64), m32.backward(c32)
    for name in g64:
        scale = float(np.abs(to_np(g64[name])).max())
        assert_close(name, g32[name], g64[name], atol=1e-4 * max(scale, 1e-3))


def test_backends_agree(xp, rng):
    """The same float64 model on NumPy and on the backend under test (CuPy where a GPU
    answers): logits, loss and gradients agree to float64 rounding."""
    ref = BertForMaskedLM(tiny_config(), dtype=np.float64, seed=6)
    perturb(ref, rng)
    model = BertForMaskedLM(tiny_config(), dtype=np.float64, seed=6,
                            device="cpu" if xp is np else "gpu")
    model.load_state_dict(ref.state_dict())
    ids, mask, tt = batch(rng)
    lab = _labels(ids, mask)
    o_ref, c_ref = ref.forward(ids, attention_mask=mask, token_type_ids=tt, labels=lab)
    out, cache = model.forward(xp.asarray(ids), attention_mask=xp.asarray(mask),
                               token_type_ids=xp.asarray(tt), labels=xp.asarray(lab))
    assert_close("logits", out.logits, o_ref.logits, atol=1e-12)
    assert_close("loss", out.loss, o_ref.loss, atol=1e-12)
    g_ref = ref.backward(c_ref)
    grads = model.backward(cache)
    for name in g_ref:
        assert_close(name, grads[name], g_ref[name], atol=1e-12)


def test_inference_call_is_forward_without_cache(rng):
    model = BertForMaskedLM(tiny_config(), seed=0)
    ids, mask, tt = batch(rng)
    out = model(ids, attention_mask=mask, token_type_ids=tt)
    ref, _ = model.forward(ids, attention_mask=mask, token_type_ids=tt)
    assert np.array_equal(out.logits, ref.logits) and out.loss is None
    with pytest.raises(TypeError, match="takes no training="):
        model(ids, training=True)


# ---------------------------------------------------------------- against transformers
def _hf():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    return torch, transformers


@pytest.mark.slow
def test_loss_and_every_gradient_match_transformers(rng, tmp_path):
    """float64 on both sides, dropout off: loss, logits and the gradient of every parameter
    against torch autograd through Hugging Face's BertForMaskedLM. The tied decoder's
    gradient arrives in the word embeddings on both sides. 1e-13: a few hundred float64
    roundings (eps 1.1e-16) over two tiny layers, on gradients of size O(0.1)-O(1)
    (measured: 1.5e-16 on gradients up to 0.57)."""
    torch, transformers = _hf()
    model = BertForMaskedLM(tiny_config(), dtype=np.float64, seed=9)
    perturb(model, rng, scale=0.1)
    model.save_pretrained(tmp_path)
    hf = transformers.BertForMaskedLM.from_pretrained(tmp_path, attn_implementation="eager")
    hf = hf.double().eval()
    ids, mask, tt = batch(rng)
    lab = _labels(ids, mask)
    out, cache = model.forward(ids, attention_mask=mask, token_type_ids=tt, labels=lab)
    grads = model.backward(cache)
    ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(tt),
             labels=torch.tensor(lab))
    ref.loss.backward()
    real = mask[..., None].astype(bool)
    assert_close("logits", np.where(real, out.logits, 0),
                 np.where(real, ref.logits.detach().numpy(), 0), atol=1e-13)
    assert abs(float(out.loss) - float(ref.loss.detach())) < 1e-13
    hf_params = dict(hf.named_parameters())
    for name, g in grads.items():
        want = hf_params[name].grad
        want = np.zeros(g.shape) if want is None else want.numpy()
        assert_close(f"grad {name}", g, want, atol=1e-13)


# ---------------------------------------------------------------- bad input
def test_bad_input(rng):
    model = BertForMaskedLM(tiny_config(), dtype=np.float64, seed=0)
    ids, mask, tt = batch(rng)
    with pytest.raises(ValueError, match="labels .* was given with masked_lm_positions"):
        model.forward(ids, labels=_labels(ids, mask), masked_lm_positions=POS)
    with pytest.raises(ValueError, match=r"labels has shape \(3, 2\), expected \(3, 7\)"):
        model.forward(ids, labels=np.zeros((3, 2), np.int64))
    with pytest.raises(ValueError, match=r"labels has value 23, expected 0 <= labels < 23 or -100"):
        model.forward(ids, labels=np.full(ids.shape, 23))
    with pytest.raises(TypeError, match="labels has dtype float64"):
        model.forward(ids, labels=np.zeros(ids.shape))
    with pytest.raises(ValueError, match="masked_lm_positions has value 7"):
        model.forward(ids, masked_lm_positions=np.array([[7], [0], [0]]))
    out, cache = model.forward(ids)
    with pytest.raises(ValueError, match="backward needs a loss"):
        model.backward(cache)
    with pytest.raises(ValueError, match=r"d_logits has shape \(3, 7, 2\), expected \(3, 7, 23\)"):
        model.backward(cache, d_logits=np.zeros((3, 7, 2)))
    with pytest.raises(ValueError, match="cache is None"):
        model.backward(None)
    with pytest.raises(TypeError, match="takes input_ids as its only positional"):
        model.forward(ids, mask)


REAL = os.environ.get("MINIBERT_REAL_CHECKPOINT")


@pytest.mark.slow
@pytest.mark.skipif(not REAL, reason="set MINIBERT_REAL_CHECKPOINT to a BERT directory")
def test_real_checkpoint_masked_lm_matches_transformers():
    """Opt-in, as tests/test_real_checkpoint.py: a real pretrained checkpoint with a masked-LM
    head (bert-base-uncased and the like) as BertForMaskedLM against transformers, float32.
    Hidden states agree to ~1e-4 there (that test's bound); the decoder turns a hidden error
    d into a logit error of about |d| |E_row| (word embedding rows of norm ~1-2) summed over
    the 768 dimensions with random signs, so 1e-3 on logits; the top 5 at each [MASK] agree."""
    torch, transformers = _hf()
    from minibert import BertTokenizer
    from minibert.checkpoint import tensor_names
    if not any(n.startswith("cls.predictions.") for n in tensor_names(REAL)):
        pytest.skip("the checkpoint has no masked-LM head")
    model = BertForMaskedLM.from_pretrained(REAL)
    hf = transformers.BertForMaskedLM.from_pretrained(REAL, attn_implementation="eager").eval()
    tok = BertTokenizer.from_pretrained(REAL)
    enc = tok(["The capital of France is [MASK].", "She opened the [MASK] and read the letter."],
              padding="longest")
    out = model(enc["input_ids"], attention_mask=enc["attention_mask"],
                token_type_ids=enc["token_type_ids"])
    with torch.no_grad():
        ref = hf(**{k: torch.tensor(np.asarray(enc[k])) for k in
                    ("input_ids", "attention_mask", "token_type_ids")}).logits.numpy()
    real = np.asarray(enc["attention_mask"])[..., None].astype(bool)
    diff = np.abs(np.where(real, out.logits - ref, 0)).max()
    assert diff <= 1e-3, f"logits differ by {diff:.3e}"
    for b, s in zip(*np.nonzero(np.asarray(enc["input_ids"]) == tok.mask_token_id)):
        assert list(np.argsort(-out.logits[b, s])[:5]) == list(np.argsort(-ref[b, s])[:5])
