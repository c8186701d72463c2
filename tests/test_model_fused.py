"""The model with ``attn_implementation="fused"``: same losses, logits and gradients as the
eager (textbook) attention, in float64 and in float32, with padding and with dropout.

Both paths compute the same function with the same dropout bits (the fused kernel draws
element ((b*A + a)*S + i)*S + j of the Philox stream at the offset the model gives the
attention dropout site, as the textbook op does); they differ only in the order of their
sums. In float64 that is ~1e-16 relative per operation, which two encoder layers with their
LayerNorms and the heads amplify to a few 1e-15 of each tensor's scale (measured); the bound
below, 1e-12 of the scale max(1, max |eager|), leaves a margin of a hundred and would be
missed by any real difference (a wrong dropout bit or a wrong gradient term is O(1e-2)).
"""
import numpy as np
import pytest

from minibert import BertConfig, BertForPreTraining, BertModel
from minibert.ops import Fused
from tests.helpers import batch, encoder_gradcheck, perturb, tiny_config, to_np

REL64 = 1e-12


def _run(model, rng_seed, training):
    """Pretraining forward on a padded batch (lengths 7, 5, 2), then backward."""
    rng = np.random.default_rng(rng_seed)
    ids, mask, tt = batch(rng)
    out, cache = model.forward(
        ids, token_type_ids=tt, attention_mask=mask,
        masked_lm_positions=np.array([[1, 3, 6], [0, 2, 4], [1, 0, 0]]),
        masked_lm_ids=np.array([[5, 7, 9], [1, 2, 3], [4, 0, 0]]),
        masked_lm_weights=np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]),
        next_sentence_labels=np.array([0, 1, 0]), training=training)
    grads = {k: v.copy() for k, v in model.backward(cache).items()}
    return out, cache, grads


def _pair(impl, dtype, training, seed=7):
    cfg = tiny_config(attn_implementation=impl, hidden_dropout_prob=0.2,
                      attention_probs_dropout_prob=0.3)
    model = BertForPreTraining(cfg, dtype=dtype, seed=seed)
    model.unpad = False       # the padded kernel (tests/test_model_unpadded.py: the packed one)
    perturb(model, np.random.default_rng(1))
    return model, _run(model, 2, training)


def _close(name, got, ref, rel):
    got, ref = to_np(got).astype(np.float64), to_np(ref).astype(np.float64)
    scale = max(1.0, float(np.abs(ref).max(initial=0.0)))
    err = float(np.abs(got - ref).max(initial=0.0))
    assert err <= rel * scale, f"{name}: max diff {err:.3e} > {rel:.0e} x scale {scale:.3e}"


@pytest.mark.parametrize("training", [False, True], ids=["eval", "dropout"])
def test_fused_equals_eager_float64(training):
    _, (oe, ce, ge) = _pair("eager", np.float64, training)
    fused, (of, cf, gf) = _pair("fused", np.float64, training)
    _close("loss", of.loss, oe.loss, REL64)
    _close("mlm_logits", of.mlm_logits, oe.mlm_logits, REL64)
    _close("nsp_logits", of.nsp_logits, oe.nsp_logits, REL64)
    _close("last_hidden_state", of.last_hidden_state, oe.last_hidden_state, REL64)
    assert set(gf) == set(ge)
    for name in ge:
        _close(name, gf[name], ge[name], REL64)
    # attentions only when asked for (output_attentions=True), as Hugging Face
    assert of.attentions is None and oe.attentions is None


def test_fused_cache_keeps_out_and_lse_not_probabilities():
    model, (out, cache, _) = _pair("fused", np.float64, True)
    cfg = model.config
    A, D = cfg.num_attention_heads, cfg.head_size
    for layer in cache["bert"]["layers"]:
        c = layer["attn"]
        assert isinstance(c, Fused)                  # the kernel's cache, not the textbook dict
        q, k, v, out, lse = c.saved[:5]
        for name, t in (("q", q), ("k", k), ("v", v), ("out", out)):
            assert t.shape == (3, A, 7, D), name
        assert out.transpose(0, 2, 1, 3).flags.c_contiguous    # token-major: merged as a view
        # q, k, v are the model's views of its (B, S, 3H) product, not copies of them
        assert q.base is not None and q.base is k.base is v.base
        assert q.strides == (7 * 3 * A * D * 8, D * 8, 3 * A * D * 8, 8)
        assert lse.shape == (3, A, 7) and lse.flags.c_contiguous
        assert not any(getattr(t, "shape", ())[-2:] == (7, 7) for t in c.saved), "an (S, S) array"


def test_fused_dropout_streams_follow_the_model():
    """Each training forward draws new attention-dropout bits (a new call offset), the same
    ones as the eager path; evaluation has none."""
    cfg = tiny_config(attn_implementation="fused", hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.5)
    ids, mask, tt = batch(np.random.default_rng(3))
    model = BertModel(cfg, np.float64, seed=4)
    eager = BertModel(tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.5),
                      np.float64, seed=4)
    first, _ = model.forward(ids, attention_mask=mask, token_type_ids=tt, training=True)
    second, _ = model.forward(ids, attention_mask=mask, token_type_ids=tt, training=True)
    assert np.abs(first.last_hidden_state - second.last_hidden_state).max() > 1e-3
    for out in (first, second):
        ref, _ = eager.forward(ids, attention_mask=mask, token_type_ids=tt, training=True)
        _close("last_hidden_state", out.last_hidden_state, ref.last_hidden_state, REL64)
    e1, _ = model.forward(ids, attention_mask=mask, token_type_ids=tt)
    e2, _ = eager.forward(ids, attention_mask=mask, token_type_ids=tt)
    _close("eval last_hidden_state", e1.last_hidden_state, e2.last_hidden_state, REL64)


def test_fused_float32_against_float64():
    """float32 fused against float64 eager on the same weights, with the bounds of the eager
    float32 test in tests/test_model.py (float32 eps is 6e-8; two layers of O(H)-term sums
    and LayerNorms accumulate a few hundred roundings: 1e-5 absolute on O(1) activations,
    1e-4 of a gradient's scale)."""
    m64, (o64, _, g64) = _pair("eager", np.float64, False)
    m32 = BertForPreTraining(tiny_config(attn_implementation="fused"), dtype=np.float32, seed=7)
    m32.load_state_dict(m64.state_dict())
    m32.unpad = False                                        # both padded, as _pair's
    o32, _, g32 = _run(m32, 2, False)
    assert o32.last_hidden_state.dtype == np.float32
    err = np.abs(o32.last_hidden_state - o64.last_hidden_state).max()
    assert err <= 1e-5, f"last_hidden_state: float32 error {err:.3e}"
    assert abs(float(o32.loss) - float(o64.loss)) <= 1e-5 * max(1.0, abs(float(o64.loss)))
    for name in g64:
        scale = float(np.abs(g64[name]).max())
        if name.endswith("attention.self.key.bias"):
            # exact gradient zero (softmax ignores a per-row shift): judged on the scale of
            # the key weight's gradient, as in tests/test_model.py
            scale = float(np.abs(g64[name.replace(".bias", ".weight")]).max())
        err = float(np.abs(g32[name] - g64[name]).max())
        assert err <= 1e-4 * max(scale, 1e-6), f"{name}: float32 error {err:.3e}, scale {scale:.3e}"


@pytest.mark.slow
def test_fused_model_gradcheck_with_dropout():
    """The fused model's own backward against central differences (float64, every parameter
    along random directions), with padding and attention dropout."""
    rng = np.random.default_rng(5)
    cfg = tiny_config(attn_implementation="fused", hidden_dropout_prob=0.2,
                      attention_probs_dropout_prob=0.3)
    model = BertModel(cfg, dtype=np.float64, seed=3)
    perturb(model, rng)
    ids, mask, tt = batch(rng)
    dlast = rng.standard_normal((3, 7, 12))
    dpool = rng.standard_normal((3, 12))
    _, report = encoder_gradcheck(model, dlast, dpool, input_ids=ids, attention_mask=mask,
                                  token_type_ids=tt, training=True)
    assert report.passed


def test_fused_all_padding_sequence_is_finite():
    model = BertForPreTraining(tiny_config(attn_implementation="fused"), np.float64, seed=0)
    ids, mask, tt = batch(np.random.default_rng(0))
    mask[1] = 0
    out, cache = model.forward(ids, token_type_ids=tt, attention_mask=mask,
                               next_sentence_labels=np.array([0, 1, 0]))
    grads = model.backward(cache)
    assert np.all(np.isfinite(out.last_hidden_state)) and np.isfinite(float(out.loss))
    assert all(np.all(np.isfinite(g)) for g in grads.values())


def test_config_accepts_fused_and_still_drops_unknown_values():
    assert BertConfig(attn_implementation="fused").attn_implementation == "fused"
    d = BertConfig(attn_implementation="fused").to_dict()
    assert BertConfig.from_dict(d).attn_implementation == "fused"
    # transformers writes its own names ("sdpa", ...): read as the default
    assert BertConfig.from_dict({**d, "attn_implementation": "sdpa"}).attn_implementation == "auto"
    with pytest.raises(ValueError, match=r"attn_implementation='flash'"):
        BertConfig(attn_implementation="flash")


def test_kernel_outputs_merge_without_a_copy():
    """The CPU kernel's out and dq, dk, dv are token-major: ``merge_heads`` gives the (B, S, H)
    context and the (B, S, 3H) gradient as views of them, equal to the copy it makes of
    C-contiguous heads, and the model's split of that gradient gives dk back."""
    from minibert.kernels import fused_attention_backward, fused_attention_forward
    from minibert.model import merge_heads, split_heads
    B, A, S, D = 2, 3, 5, 4
    r = np.random.default_rng(0)
    q, k, v = split_heads(r.standard_normal((B, S, 3 * A * D)), A, 3)
    (dout,) = split_heads(r.standard_normal((B, S, A * D)), A)
    out, lse = fused_attention_forward(q, k, v, None, None)
    grads = fused_attention_backward(dout, q, k, v, out, lse, None, None)
    for parts in ((out,), grads):
        merged = merge_heads(*parts)
        assert merged.shape == (B, S, len(parts) * A * D) and merged.flags.c_contiguous
        assert np.shares_memory(merged, parts[0])
        copies = [np.ascontiguousarray(x) for x in parts]
        expected = merge_heads(*copies)
        assert not np.shares_memory(expected, copies[0])
        assert np.array_equal(merged, expected)
    assert np.array_equal(split_heads(merge_heads(*grads), A, 3)[1], grads[1])
    # the parts in another order are not the buffer's layout: a copy, in the order given
    swapped = merge_heads(grads[1], grads[0], grads[2])
    assert not np.shares_memory(swapped, grads[0])
    assert np.array_equal(split_heads(swapped, A, 3)[0], grads[1])


def test_packed_kernel_outputs_merge_without_a_copy():
    """The same for the packed kernel: its (A, T, D) out and dq, dk, dv merge into the
    model's (T, H) and (T, 3H) as views (``merge_heads``, as for a padded batch)."""
    from minibert.kernels import fused_attention_varlen_backward, fused_attention_varlen_forward
    from minibert.model import merge_heads, split_heads
    A, D, cu = 2, 4, np.array([0, 3, 8])
    r = np.random.default_rng(1)
    q, k, v = split_heads(r.standard_normal((8, 3 * A * D)), A, 3)
    (dout,) = split_heads(r.standard_normal((8, A * D)), A)
    out, lse = fused_attention_varlen_forward(q, k, v, cu, None)
    grads = fused_attention_varlen_backward(dout, q, k, v, out, lse, cu, None)
    for parts in ((out,), grads):
        merged = merge_heads(*parts)
        assert merged.shape == (8, len(parts) * A * D) and np.shares_memory(merged, parts[0])
        assert np.array_equal(merged, merge_heads(*(np.ascontiguousarray(x) for x in parts)))
