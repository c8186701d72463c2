"""Padding-free execution (``minibert/packing.py``): the encoder on the real tokens alone
computes the padded model's numbers.

The packed forward runs the same float64 operations on the real tokens as the padded one, with
the same dropout bits (drawn at each token's padded element index); only the order of some sums
differs (a matrix product over T rows instead of B S, the attention kernel's blocks). That is a
few 1e-16 relative per operation, which the layers amplify to ~1e-15 of each tensor's scale;
the bound, 1e-12 of max(1, max |padded|), leaves a margin of a hundred and would be missed by
any real difference (a wrong position id, dropout bit or gradient row is O(1e-2)). Compared:
outputs at the real positions (at padded positions the packed model has zeros), the loss and
every gradient.
"""
import numpy as np
import pytest

import minibert
from minibert import ops
from minibert.packing import UNPAD_THRESHOLD, pack, pad, padding_share, unpad
from tests.helpers import perturb, tiny_config, to_np

REL64 = 1e-12
LENGTHS = {"odd": (7, 5, 1, 3), "none": (7, 7, 7, 7)}     # a length-1 row; a batch without padding


def _close(name, got, ref, rel=REL64):
    got, ref = to_np(got).astype(np.float64), to_np(ref).astype(np.float64)
    assert got.shape == ref.shape, f"{name}: shape {got.shape} != {ref.shape}"
    scale = max(1.0, float(np.abs(ref).max(initial=0.0)))
    err = float(np.abs(got - ref).max(initial=0.0))
    assert err <= rel * scale, f"{name}: max diff {err:.3e} > {rel:.0e} x scale {scale:.3e}"


def _batch(lengths, S=7, V=23, seed=3):
    rng = np.random.default_rng(seed)
    B = len(lengths)
    ids = rng.integers(1, V, size=(B, S))
    mask = (np.arange(S) < np.array(lengths)[:, None]).astype(np.int64)
    tt = np.zeros((B, S), dtype=np.int64)
    for b, n in enumerate(lengths):
        tt[b, n // 2:n] = 1
    return ids * mask, mask, tt


def _inputs(cls, lengths, rng):
    """Keyword arguments of ``cls.forward`` with targets whose loss ignores padding."""
    ids, mask, tt = _batch(lengths)
    B, S = ids.shape
    real = mask.astype(bool)
    kw = dict(attention_mask=mask, token_type_ids=tt)
    if cls is minibert.BertForPreTraining:
        kw.update(masked_lm_positions=np.array([[1, 3, 6], [0, 2, 4], [0, 0, 0], [1, 2, 0]]),
                  masked_lm_ids=rng.integers(0, 23, size=(B, 3)),
                  masked_lm_weights=np.array([[1.0, 1, 1], [1, 1, 1], [1, 0, 0], [1, 1, 0]]),
                  next_sentence_labels=rng.integers(0, 2, size=B))
    elif cls in (minibert.BertForMaskedLM, minibert.BertForTokenClassification):
        n = 23 if cls is minibert.BertForMaskedLM else 3
        kw["labels"] = np.where(real, rng.integers(0, n, size=(B, S)), -100)
    elif cls is minibert.BertForSequenceClassification:
        kw["labels"] = rng.integers(0, 3, size=B)
    elif cls is minibert.BertForMultipleChoice:           # the rows as B/2 questions x 2 choices
        kw = {k: v.reshape(B // 2, 2, S) for k, v in kw.items()}
        kw["labels"] = rng.integers(0, 2, size=B // 2)
        return ids.reshape(B // 2, 2, S), kw
    return ids, kw


def _run(model, ids, kw, unpad, training):
    """(outputs, cache, gradients) of one forward and backward (state restored first)."""
    model.set_rng_state({"seed": 5, "dropout_calls": 2})
    model.unpad = unpad
    out, cache = model.forward(ids, training=training, **kw)
    if isinstance(model, minibert.BertModel):
        rng = np.random.default_rng(4)
        real = kw["attention_mask"].astype(bool)[..., None]
        dlast = rng.standard_normal(out.last_hidden_state.shape) * real    # zero at padding
        grads = model.backward(cache, dlast, rng.standard_normal(out.pooler_output.shape))
    else:
        grads = model.backward(cache)
    return out, cache, {k: v.copy() for k, v in grads.items()}


HEADS = [minibert.BertModel, minibert.BertForPreTraining, minibert.BertForMaskedLM,
         minibert.BertForSequenceClassification, minibert.BertForTokenClassification,
         minibert.BertForMultipleChoice]


@pytest.mark.parametrize("lengths", list(LENGTHS), ids=list(LENGTHS))
@pytest.mark.parametrize("training", [False, True], ids=["eval", "dropout"])
@pytest.mark.parametrize("cls", HEADS, ids=lambda c: c.__name__)
def test_unpadded_equals_padded_float64(cls, training, lengths):
    cfg = tiny_config(hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.3)
    model = cls(cfg, dtype=np.float64, seed=7)
    perturb(model, np.random.default_rng(1))
    ids, kw = _inputs(cls, LENGTHS[lengths], np.random.default_rng(2))
    ref, cref, gref = _run(model, ids, kw, False, training)
    got, cgot, ggot = _run(model, ids, kw, True, training)
    bert_cache = cgot if cls is minibert.BertModel else cgot["bert"]
    assert bert_cache["packing"] is not None                 # it did run padding-free
    real = kw["attention_mask"].astype(bool).reshape(-1, ids.shape[-1])
    _close("last_hidden_state", got.last_hidden_state[real], ref.last_hidden_state[real])
    assert not np.any(got.last_hidden_state[~real])          # zeros at padding
    for name in ("pooler_output", "loss", "mlm_loss", "nsp_loss", "nsp_logits"):
        if getattr(ref, name, None) is not None:
            _close(name, getattr(got, name), getattr(ref, name))
    logits = getattr(ref, "logits", None)
    if logits is not None:                  # token logits: the real positions only
        at = real.reshape(logits.shape[:2]) if logits.shape[:2] == ids.shape[:2] and logits.ndim == 3 \
            else slice(None)
        _close("logits", got.logits[at], logits[at])
    assert set(ggot) == set(gref)
    for name in gref:
        _close(name, ggot[name], gref[name])


def test_packing_round_trip_and_share():
    _, mask, _ = _batch((7, 5, 1, 3))
    packing = pack(mask)
    assert packing.num_tokens == 16 and packing.shape == (4, 7)
    assert list(packing.cu_seqlens) == [0, 7, 12, 13, 16]
    assert list(packing.positions()[7:12]) == [0, 1, 2, 3, 4]
    x = np.arange(4 * 7 * 2.0).reshape(4, 7, 2)
    back = pad(unpad(x, packing), packing)
    assert np.array_equal(back, x * mask[..., None])
    assert padding_share(packing) == pytest.approx(1 - 16 / 28)
    assert pack(np.array([[0, 1, 1], [1, 1, 0]])) is None     # left padding: not packed
    assert pack(np.array([[1, 1, 1], [0, 0, 0]])) is None     # a row with no token


def _default_packing(model, mask, **kw):
    ids = np.ones(mask.shape, dtype=np.int64)
    return model.forward(ids, attention_mask=mask, **kw)[1]["packing"]


def test_default_rule():
    model = minibert.BertModel(tiny_config(), dtype=np.float32)
    S = 16
    enough = (np.arange(S) < np.array([[16], [16], [16], [15]])).astype(int)   # 1.6% padding
    assert padding_share(pack(enough)) > UNPAD_THRESHOLD
    assert _default_packing(model, enough) is not None
    assert _default_packing(model, np.ones((4, S), dtype=int)) is None          # no padding
    assert _default_packing(model, enough, output_attentions=True) is None      # (B, A, S, S)
    assert _default_packing(model, enough, unpad=False) is None
    with ops.readable_ops():                                                    # textbook path
        assert _default_packing(model, enough) is None
    with ops.hooks.use(ops.hooks.OpHook()):                                     # hooks see what runs
        assert _default_packing(model, enough) is not None
    left = enough[:, ::-1].copy()
    assert _default_packing(model, left) is None                                # left padding
    with pytest.raises(ValueError, match="unpad=True runs on the real tokens of a right-padded"):
        _default_packing(model, left, unpad=True)
    with pytest.raises(TypeError, match="unpad='yes' is invalid"):
        _default_packing(model, enough, unpad="yes")


def test_a_gradient_at_padding_goes_nowhere():
    """Packed, the outputs at padded positions are the constant 0: the gradient of a loss
    that reads them is the gradient of the loss on the real tokens alone."""
    model = minibert.BertModel(tiny_config(), dtype=np.float64)
    perturb(model, np.random.default_rng(1))
    ids, mask, tt = _batch((7, 5, 1, 3))
    out, cache = model.forward(ids, attention_mask=mask, unpad=True)
    dlast = np.random.default_rng(2).standard_normal(out.last_hidden_state.shape)
    everywhere = {k: v.copy() for k, v in model.backward(cache, dlast).items()}
    real_only = model.backward(cache, dlast * mask[..., None])
    for name in everywhere:
        assert np.array_equal(everywhere[name], real_only[name]), name


def test_question_answering_loss_runs_padded():
    """Its loss is a softmax over every position, padding included (as Hugging Face)."""
    model = minibert.BertForQuestionAnswering(tiny_config(), dtype=np.float64)
    ids, mask, tt = _batch((7, 5, 1, 3))
    kw = dict(attention_mask=mask, token_type_ids=tt, unpad=None)
    kw.pop("unpad")
    _, cache = model.forward(ids, start_positions=np.array([1, 2, 0, 1]),
                             end_positions=np.array([3, 4, 0, 2]), **kw)
    assert cache["bert"]["packing"] is None
    _, cache = model.forward(ids, **kw)                       # inference: padding-free
    assert cache["bert"]["packing"] is not None


def test_head_mask_and_inputs_embeds_packed():
    cfg = tiny_config(hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.3)
    model = minibert.BertModel(cfg, dtype=np.float64, seed=7)
    perturb(model, np.random.default_rng(1))
    ids, mask, tt = _batch((7, 5, 1, 3))
    embeds = np.random.default_rng(6).standard_normal((4, 7, cfg.hidden_size))
    head_mask = np.array([[1.0, 0.5, 2.0], [0.0, 1.0, 1.5]])
    kw = dict(inputs_embeds=embeds, attention_mask=mask, token_type_ids=tt, head_mask=head_mask)
    ref = _run(model, None, kw, False, True)
    got = _run(model, None, kw, True, True)
    assert got[1]["packing"] is not None
    for name in ("inputs_embeds", "head_mask", "bert.embeddings.position_embeddings.weight"
                 if "bert.embeddings.position_embeddings.weight" in ref[2]
                 else "embeddings.position_embeddings.weight"):
        _close(name, got[2][name], ref[2][name])
    assert not np.any(got[2]["inputs_embeds"][mask == 0])


def test_batch_start_slices_draw_the_whole_batch_bits():
    """A data-parallel rank's slice (rows 2..3, batch_start 2) packed draws the dropout bits
    of those rows of the whole batch."""
    cfg = tiny_config(hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.3)
    model = minibert.BertModel(cfg, dtype=np.float64, seed=7)
    ids, mask, tt = _batch((7, 5, 1, 3))
    whole, _, _ = _run(model, ids, dict(attention_mask=mask, token_type_ids=tt), False, True)
    model.batch_start = 2
    part, _, _ = _run(model, ids[2:], dict(attention_mask=mask[2:], token_type_ids=tt[2:]), True, True)
    real = mask[2:].astype(bool)
    _close("rows 2..3", part.last_hidden_state[real], whole.last_hidden_state[2:][real])


def test_float32_packed_against_float64():
    """float32 padding-free against the float64 padded model: float32 rounding only."""
    cfg = tiny_config()
    ids, mask, tt = _batch((7, 5, 1, 3))
    m64 = minibert.BertModel(cfg, dtype=np.float64, seed=7)
    m32 = minibert.BertModel(cfg, dtype=np.float32, seed=7)
    m32.store.data[...] = m64.store.data
    ref = m64(ids, attention_mask=mask, token_type_ids=tt, unpad=False).last_hidden_state
    got = m32(ids, attention_mask=mask, token_type_ids=tt, unpad=True).last_hidden_state
    real = mask.astype(bool)
    # LayerNorm outputs are O(1): a few float32 ulps (6e-8) per op over two layers
    _close("last_hidden_state", got[real], ref[real], rel=2e-5)
