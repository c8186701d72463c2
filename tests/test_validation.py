"""The shared argument checks (``minibert.validation``): one checker for attention's mask,
scale and dropout rate across the model, the op and the kernel; the mask checked and its
forms built once per model forward; ``head_mask`` as Hugging Face's, any finite multiplier,
with its float64 gradient at values above 1 and below 0; the one Philox lane selection and
the one tile-size rule."""
import numpy as np
import pytest

from minibert import BertModel, gradcheck
from minibert import validation as V
from minibert.kernels import fused_attention_forward
from minibert.ops import attention
from minibert.rng import keep_mask
from tests.helpers import batch, frozen_dropout, perturb, tiny_config

L, A, H = 2, 3, 12


# ----------------------------------------------------------------- head_mask


@pytest.mark.usefixtures("ops_mode")              # the kernels, then the readable ops
@pytest.mark.parametrize("training", [False, True], ids=["eval", "dropout"])
def test_head_mask_gradcheck_beyond_zero_and_one(rng, training):
    """Every head-mask entry against central differences (float64, relative 1e-7) at values
    above 1, below 0, and exactly 1 and 0 (a central difference there steps outside [0, 1],
    which the multiplier allows)."""
    model = BertModel(tiny_config(hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.3),
                      dtype=np.float64, seed=3)
    perturb(model, rng)
    ids, mask, tt = batch(rng)
    head_mask = np.array([[2.5, -0.7, 1.0], [0.0, 1.8, -2.2]])
    dlast, dpool = rng.standard_normal((3, 7, H)), rng.standard_normal((3, H))

    def run():
        return model.forward(ids, attention_mask=mask, token_type_ids=tt, head_mask=head_mask,
                             training=training)

    def loss():
        out, _ = run()
        return (out.last_hidden_state * dlast).sum() + (out.pooler_output * dpool).sum()
    f = frozen_dropout(model, loss)
    _, cache = run()
    g = np.array(model.backward(cache, dlast, dpool)["head_mask"])
    r = gradcheck(f, {"head_mask": head_mask}, {"head_mask": g}, mode="full", rtol=1e-7)
    assert r.passed, str(r)


def test_head_mask_multiplies_its_head(rng):
    """A head mask of c on one head equals that head's probabilities times c (the eager
    attentions returned), and the hidden states change with c outside [0, 1]."""
    model = BertModel(tiny_config(), dtype=np.float64, seed=1)
    perturb(model, rng)
    ids, mask, tt = batch(rng)
    hm = np.ones((L, A))
    hm[0, 1] = 3.0
    base = model(ids, attention_mask=mask, token_type_ids=tt, output_attentions=True)
    scaled = model(ids, attention_mask=mask, token_type_ids=tt, head_mask=hm,
                   output_attentions=True)
    assert np.array_equal(scaled.attentions[0][:, 1], 3.0 * base.attentions[0][:, 1])
    assert np.array_equal(scaled.attentions[0][:, 0], base.attentions[0][:, 0])
    assert not np.allclose(scaled.last_hidden_state, base.last_hidden_state)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_head_mask_refuses_nan_and_infinities(value):
    model = BertModel(tiny_config(), seed=0)
    hm = np.ones((L, A))
    hm[1, 2] = value
    with pytest.raises(ValueError, match=rf"^head_mask has the value {value!r}, expected finite"):
        model(np.ones((1, 4), dtype=np.int64), head_mask=hm)


def test_head_mask_too_large_for_float32_is_refused_by_its_value():
    model = BertModel(tiny_config(), dtype=np.float32, seed=0)
    with pytest.raises(ValueError, match=r"head_mask has the value 1e\+300, expected finite "
                                         r"numbers in float32"):
        model(np.ones((1, 4), dtype=np.int64), head_mask=np.full((A,), 1e300))


def test_head_mask_of_strings_is_a_type_error():
    with pytest.raises(TypeError, match=r"head_mask has dtype <U1, expected real numbers"):
        BertModel(tiny_config(), seed=0)(np.ones((1, 4), dtype=np.int64),
                                         head_mask=np.array(["a"] * A))


# ----------------------------------------------------------------- one checker


def test_model_op_and_kernel_refuse_a_bad_mask_alike(rng):
    """The model, the op and the kernel give one message for one mistake (their argument
    names aside)."""
    bad = np.array([[1, 1, 0, -10000], [1, 1, 1, 1]])
    q = rng.standard_normal((2, 3, 4, 5))
    model = BertModel(tiny_config(), seed=0)
    expected = ("contains the value -10000, expected only 0 (padding) and 1 (attend); pass "
                "the 0/1 mask, not an additive one")
    for name, call in [
            ("attention_mask", lambda: model(np.ones((2, 4), dtype=np.int64), attention_mask=bad)),
            ("attention_mask", lambda: attention.forward(q, q, q, bad)),
            ("mask", lambda: fused_attention_forward(q, q, q, bad, 0.5))]:
        with pytest.raises(ValueError) as info:
            call()
        assert str(info.value) == f"{name} {expected}"


def test_scale_and_dropout_checks_are_shared(rng):
    q = rng.standard_normal((1, 1, 3, 4))
    for call in (lambda s, p: attention.forward(q, q, q, None, s, p),
                 lambda s, p: fused_attention_forward(q, q, q, None, s, p)):
        with pytest.raises(ValueError, match=r"^scale=inf is not finite"):
            call(float("inf"), 0.0)
        with pytest.raises(TypeError, match=r"^scale=True has type bool"):
            call(True, 0.0)
        with pytest.raises(ValueError, match=r"^dropout_p=1.0 is out of range"):
            call(None, 1.0)
    assert V.check_scale(None, 4) == 0.5 and V.check_dropout_p(np.float32(0.25)) == 0.25


def test_an_attention_mask_is_checked_once_and_its_forms_built_once(rng, monkeypatch):
    """A model forward and backward through the CPU kernel and through the textbook op:
    one value check of the mask, and every form (additive mask, has-key factor, key bias,
    key-block spans) built once, whatever the number of layers."""
    checks, builds = [], []
    require, form = V.require, V.AttentionMask._form

    def counting_require(ok, error):
        checks.append(ok.shape)
        return require(ok, error)

    def counting_form(self, key, build):
        if key not in self._forms:
            builds.append(key if isinstance(key, str) else key[0])
        return form(self, key, build)
    monkeypatch.setattr(V, "require", counting_require)
    monkeypatch.setattr(V.AttentionMask, "_form", counting_form)
    ids, mask, tt = batch(rng)
    for impl, forms in (("fused", ["real", "key_bias", "key_spans"]),
                        ("eager", ["real", "additive", "has_key"])):
        checks.clear()
        builds.clear()
        model = BertModel(tiny_config(attn_implementation=impl, num_hidden_layers=3),
                          dtype=np.float64, seed=0)
        model.unpad = False                   # the padded model: the forms of its mask
        _, cache = model.forward(ids, attention_mask=mask, token_type_ids=tt, training=True)
        model.backward(cache, np.ones((3, 7, H)))
        assert checks == [mask.shape], checks
        assert sorted(builds) == sorted(forms), (impl, builds)


def test_a_checked_mask_gives_the_op_the_same_bits(rng):
    """Passing an AttentionMask or the raw 0/1 array gives the same context, both paths."""
    q, k, v = (rng.standard_normal((2, 3, 5, 4)) for _ in range(3))
    mask = np.array([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]])
    checked = V.check_attention_mask(mask, 2, 5)
    for impl in ("eager", "fused"):
        raw, _ = attention.forward(q, k, v, mask, implementation=impl)
        once, _ = attention.forward(q, k, v, checked, implementation=impl)
        assert np.array_equal(raw, once), impl


def test_check_attention_mask_messages():
    with pytest.raises(ValueError, match=r"^attention_mask has shape \(2, 3\), expected \(B, S\) "
                                         r"= \(2, 4\)"):
        V.check_attention_mask(np.ones((2, 3)), 2, 4)
    with pytest.raises(TypeError, match=r"^m has dtype <U1, expected bool, integer or float"):
        V.check_attention_mask(np.array([["a"] * 4]), 1, 4, name="m")
    with pytest.raises(TypeError, match=r"^m has type list, expected an array"):
        V.check_attention_mask([[1, 0]], 1, 2, name="m")
    assert V.check_attention_mask([[1, 0]], 1, 2, xp=np).shape == (1, 2)
    assert V.check_attention_mask(None, 1, 2) is None


# ----------------------------------------------------------------- deferred checks


def test_deferred_checks_raise_numpy_errors_at_once():
    """NumPy checks are never deferred: the error comes where the op makes it."""
    seen = []
    with pytest.raises(ValueError, match="bad"):
        with V.deferred_checks():
            V.require(np.array([True, False]), lambda: ValueError("bad"))
            seen.append("after")
    assert seen == []


def test_checks_read_returns_scalars():
    with V.deferred_checks() as checks:
        assert checks.read([np.float64(1.5), 2]) == [1.5, 2.0]
        assert checks.read() == []


# ----------------------------------------------------------------- Philox lanes, tiles


def test_select_word_gives_the_bits_of_rng():
    """``philox_uint32`` (through ``select_word``) and ``keep_factors`` against
    ``minibert.rng.keep_mask`` at every lane of a few blocks."""
    from minibert.kernels._blocks import keep_factors
    from minibert.kernels.philox_cpu import dropout_keep
    p, seed, offset = 0.37, 2**40 + 3, 5
    ref = keep_mask((23,), p, seed, offset)
    got = np.array([dropout_keep(np.uint64(seed), np.uint64(offset), i, p) for i in range(23)])
    assert np.array_equal(got, ref)
    for base in (0, 1, 2, 3, 6):
        dst = np.empty(23 - base)
        keep_factors(np.uint64(seed), np.uint64(offset), np.int64(base), 23 - base,
                     np.float32(p), 2.0, 0.0, dst)
        assert np.array_equal(dst, np.where(ref[base:], 2.0, 0.0)), base


def test_one_tile_size_rule():
    assert V.check_block_sizes(4, np.int64(8)) == (4, 8)
    assert V.check_block_sizes(None, 3, default=16) == (16, 3)
    for bad in (0, -1, True, 2.0, None):
        with pytest.raises(ValueError, match=r"^block_q=.* is invalid, expected a positive"):
            V.check_block_sizes(bad, 4)


def test_the_cuda_kernels_mask_tables():
    """``key_bias`` and ``tile_has_key``: the tables the CUDA kernel takes (0 / -inf per key,
    1 per key tile holding a real key), built once and kept."""
    mask = np.zeros((3, 10), dtype=np.int64)
    mask[0, :10] = 1
    mask[1, 4:6] = 1                    # real keys in the second tile of 4 only
    checked = V.check_attention_mask(mask, 3, 10)
    bias = checked.key_bias(np.float32)
    assert bias.dtype == np.float32 and bias.flags.c_contiguous
    assert np.array_equal(bias, np.where(mask == 1, 0.0, -np.inf))
    tiles = checked.tile_has_key(4)
    assert tiles.dtype == np.int32
    assert np.array_equal(tiles, [[1, 1, 1], [0, 1, 0], [0, 0, 0]])
    assert checked.tile_has_key(4) is tiles and checked.key_bias(np.float32) is bias
