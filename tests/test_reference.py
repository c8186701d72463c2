"""minibert against PyTorch / Hugging Face transformers, tensor by tensor.

Two kinds of comparison:

* the stored debug state tests/reference/bert_debug_state.npz (written by
  tests/reference/generate.py with torch + transformers in float64): every forward tensor and
  every parameter gradient of one BertForPreTraining step on a padded batch. These tests need
  neither torch nor transformers;
* live comparisons against transformers on random small configs (hypothesis) and on the
  tiny / mini presets; they skip where torch or transformers is not installed.

Every failure names the tensor and its max difference (tests/helpers.py assert_close).
"""
import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minibert import BertConfig, BertForPreTraining, BertModel
from minibert.optim import AdamW, LRSchedule
from tests.helpers import assert_close, max_abs_diff, to_np

REF_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference", "bert_debug_state.npz")
with np.load(REF_PATH) as _z:
    REF = {k: _z[k] for k in _z.files}
PARAM_NAMES = sorted(k[len("param."):] for k in REF if k.startswith("param."))
L_REF = len([k for k in REF if k.startswith("hidden_states.")]) - 1
INPUT_KEYS = ("input_ids", "token_type_ids", "attention_mask", "masked_lm_positions",
              "masked_lm_ids", "masked_lm_weights", "next_sentence_labels")

# float64 minibert vs the float64 reference. Both are float64 implementations of the same
# math; they differ only in the order of additions (BLAS blocking, where a sum is reduced,
# erf and tanh implementations), each a rounding of ~1e-16 relative. Two layers, LayerNorms
# dividing by standard deviations of order 1 and the backward's products of Jacobians
# amplify that by a few orders of magnitude at most on O(1) tensors; 1e-10 leaves room for
# that and is still 8 orders of magnitude below any real mistake (a wrong sign, a missing
# term, a transposed weight all show as differences of order 1e-2 or more here).
TOL64 = dict(atol=1e-10, rtol=1e-10)
# float32 minibert vs the float64 reference: float32 rounds at 6e-8 relative; through two
# layers the hidden states stay within 1e-5 and the gradients within 1e-4 of their scale.
ATOL32_HIDDEN = 1e-5
RTOL32_GRAD = 1e-4
# key biases: their gradient is exactly zero in exact arithmetic (softmax is invariant to a
# per-row shift, and q . b_k shifts the whole row of scores), so only their absolute size
# can be checked, against the scale of the key weights' gradient.
ZERO_GRAD_SUFFIX = "attention.self.key.bias"


# ---------------------------------------------------------------------------- helpers
def ref_config():
    return BertConfig.from_dict(json.loads(str(REF["config_json"])))


def ref_inputs(dtype=np.float64):
    inputs = {k: REF[k] for k in INPUT_KEYS}
    inputs["masked_lm_weights"] = inputs["masked_lm_weights"].astype(dtype)
    return inputs


def ref_model(dtype):
    model = BertForPreTraining(ref_config(), dtype=dtype, seed=0)
    model.load_state_dict({n: REF["param." + n].astype(dtype) for n in PARAM_NAMES}, strict=True)
    return model


def run_pretraining(model, inputs):
    """Forward and backward on the default attention (the fused kernel wherever one exists),
    plus the attention probabilities of an inference call that asks for them (which runs the
    textbook attention, the one that forms them)."""
    outputs, cache = model.forward(**inputs, output_hidden_states=True, training=False)
    grads = model.backward(cache)
    outputs.attentions = model(**inputs, output_attentions=True).attentions
    return outputs, grads


def real_query_rows(attn, mask):
    """(B, A, S, S) attention probabilities -> (N, A, S): the rows whose query is a real token."""
    return to_np(attn).transpose(0, 2, 1, 3)[to_np(mask).astype(bool)]


HIDDEN_KEYS = ["embedding_output"] + [f"hidden_states.{i}" for i in range(L_REF + 1)] + \
    ["last_hidden_state"]


def real_tokens(t, mask):
    """(B, S, ...) -> (N, ...): the real tokens' rows."""
    return to_np(t)[to_np(mask).astype(bool)]


def rel_err(actual, expected):
    """max|a - e| / max|e| over one tensor."""
    return max_abs_diff(actual, expected) / float(np.max(np.abs(to_np(expected))))


@pytest.fixture(scope="module")
def f64():
    """float64 minibert on the reference weights and batch: (model, outputs, grads)."""
    model = ref_model(np.float64)
    outputs, grads = run_pretraining(model, ref_inputs(np.float64))
    return model, outputs, grads


@pytest.fixture(scope="module")
def f32():
    model = ref_model(np.float32)
    outputs, grads = run_pretraining(model, ref_inputs(np.float32))
    return model, outputs, grads


def forward_tensor(outputs, key):
    """The minibert output that corresponds to a key of the .npz."""
    if key == "embedding_output":
        return outputs.hidden_states[0]
    if key.startswith("hidden_states."):
        return outputs.hidden_states[int(key.split(".")[1])]
    if key.startswith("attentions."):
        return outputs.attentions[int(key.split(".")[1])]
    return getattr(outputs, key)


FORWARD_KEYS = (["embedding_output"] + [f"hidden_states.{i}" for i in range(L_REF + 1)]
                + [f"attentions.{i}" for i in range(L_REF)]
                + ["last_hidden_state", "pooler_output", "mlm_logits", "nsp_logits",
                   "loss", "mlm_loss", "nsp_loss"])


# ---------------------------------------------------------------------------- stored reference
def test_reference_file_is_complete():
    assert set(FORWARD_KEYS) <= set(REF)
    assert {k[len("grad."):] for k in REF if k.startswith("grad.")} == set(PARAM_NAMES)
    assert os.path.getsize(REF_PATH) < 1 << 20


def test_float64_parameters_load_exactly(f64):
    model, _, _ = f64
    assert set(model.params) == set(PARAM_NAMES), set(model.params) ^ set(PARAM_NAMES)
    for n in PARAM_NAMES:
        assert_close(f"param {n}", model.params[n], REF["param." + n])


def test_float64_output_structure(f64):
    _, outputs, _ = f64
    assert len(outputs.hidden_states) == L_REF + 1
    assert len(outputs.attentions) == L_REF


@pytest.mark.parametrize("key", FORWARD_KEYS)
def test_float64_forward_matches_reference(f64, key):
    _, outputs, _ = f64
    actual, expected = forward_tensor(outputs, key), REF[key]
    mask = REF["attention_mask"]
    if key.startswith("attentions."):
        # a padded query row is not part of the contract (it is never read): compare real rows
        actual, expected = real_query_rows(actual, mask), real_query_rows(expected, mask)
    elif key in HIDDEN_KEYS:
        # the default model runs on the real tokens alone (minibert/packing.py): zeros at the
        # padded positions, which no real token reads; the padded model below matches there too
        actual, expected = real_tokens(actual, mask), real_tokens(expected, mask)
    assert_close(key, actual, expected, **TOL64)


@pytest.mark.parametrize("key", HIDDEN_KEYS)
def test_float64_padded_model_matches_reference_everywhere(key):
    model = ref_model(np.float64)
    model.unpad = False
    outputs = model(**ref_inputs(np.float64), output_hidden_states=True)
    assert_close(key, forward_tensor(outputs, key), REF[key], **TOL64)


@pytest.mark.parametrize("name", PARAM_NAMES)
def test_float64_gradient_matches_reference(f64, name):
    _, _, grads = f64
    assert set(grads) == set(PARAM_NAMES), set(grads) ^ set(PARAM_NAMES)
    assert_close(f"grad {name}", grads[name], REF["grad." + name], **TOL64)


def test_float32_last_hidden_state_close_to_float64_reference(f32):
    _, outputs, _ = f32
    assert to_np(outputs.last_hidden_state).dtype == np.float32
    mask = REF["attention_mask"]
    assert_close("float32 last_hidden_state", real_tokens(outputs.last_hidden_state, mask),
                 real_tokens(REF["last_hidden_state"], mask), atol=ATOL32_HIDDEN)


@pytest.mark.parametrize("name", PARAM_NAMES)
def test_float32_gradient_close_to_float64_reference(f32, name):
    _, _, grads = f32
    g32, g64 = grads[name], REF["grad." + name]
    assert to_np(g32).dtype == np.float32, f"grad {name}: dtype {to_np(g32).dtype}"
    if name.endswith(ZERO_GRAD_SUFFIX):
        scale = float(np.max(np.abs(REF["grad." + name[:-len("bias")] + "weight"])))
        err = max_abs_diff(g32, g64) / scale
    else:
        err = rel_err(g32, g64)
    assert err <= RTOL32_GRAD, f"float32 grad {name}: relative error {err:.3e} > {RTOL32_GRAD:.0e}"


@pytest.mark.parametrize("pad_ids", ["zeros", "junk"])
def test_appending_padding_changes_nothing_at_real_tokens(f64, pad_ids):
    """Five more padded positions (ids 0, or random junk ids and segment types: the mask alone
    must hide them) leave every output at real tokens, the losses and every gradient unchanged
    up to rounding (1e-12: the same float64 sums, a few longer by exact zeros)."""
    _, out0, g0 = f64
    extra, rng = 5, np.random.default_rng(7)
    inputs = ref_inputs(np.float64)
    B, S = inputs["input_ids"].shape
    def pad():
        return rng.integers(1, 99, (B, extra)) if pad_ids == "junk" else np.zeros((B, extra), np.int64)
    inputs["input_ids"] = np.concatenate([inputs["input_ids"], pad()], axis=1)
    inputs["token_type_ids"] = np.concatenate(
        [inputs["token_type_ids"], pad() % 2 if pad_ids == "junk" else pad()], axis=1)
    inputs["attention_mask"] = np.concatenate([inputs["attention_mask"], np.zeros((B, extra), np.int64)],
                                              axis=1)
    out1, g1 = run_pretraining(ref_model(np.float64), inputs)

    real = REF["attention_mask"].astype(bool)
    tol = dict(atol=1e-12, rtol=1e-12)
    for i in range(L_REF + 1):
        assert_close(f"hidden_states.{i}[real]", to_np(out1.hidden_states[i])[:, :S][real],
                     to_np(out0.hidden_states[i])[real], **tol)
    for i in range(L_REF):
        a1 = to_np(out1.attentions[i])
        appended = real_query_rows(a1[:, :, :S, S:], real)          # padded keys get no weight
        assert_close(f"attentions.{i}[real rows, appended keys]", appended, np.zeros_like(appended), **tol)
        assert_close(f"attentions.{i}[real rows]", real_query_rows(a1[:, :, :S, :S], real),
                     real_query_rows(out0.attentions[i], real), **tol)
    for key in ("pooler_output", "mlm_logits", "nsp_logits", "loss", "mlm_loss", "nsp_loss"):
        assert_close(key, getattr(out1, key), getattr(out0, key), **tol)
    for n in PARAM_NAMES:
        scale = float(np.max(np.abs(to_np(g0[n]))))
        assert_close(f"grad {n}", g1[n], g0[n], atol=1e-12 * max(scale, 1.0))


# ---------------------------------------------------------------------------- live vs torch
TIED = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")


@pytest.fixture(scope="module")
def torch_mods():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)                 # CI has 2 cores
    yield torch, transformers
    torch.set_num_threads(threads)


def hf_config(transformers, config: BertConfig):
    """The Hugging Face BertConfig for a minibert config, with eager attention (needed for
    output_attentions, and the textbook math minibert implements)."""
    d = {k: v for k, v in config.to_dict().items()
         if k not in ("model_type", "attn_implementation", "num_labels", "classifier_dropout")}
    return transformers.BertConfig(**d, attn_implementation="eager")


def perturb_(torch, model, gen, weight_std=0.2):
    """LayerNorm gains 1 + 0.1 N, biases 0.1 N, other tensors weight_std N (as generate.py)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            z = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
            if "LayerNorm" in name and name.endswith(".weight"):
                p.copy_(1.0 + 0.1 * z)
            elif name.endswith("bias"):
                p.copy_(0.1 * z)
            elif weight_std is not None:
                p.copy_(weight_std * z)


def hf_state(model, dtype):
    return {n: t.detach().numpy().astype(dtype) for n, t in model.state_dict().items() if n not in TIED}


def hf_grads(model, dtype):
    return {n: p.grad.detach().numpy().astype(dtype) for n, p in model.named_parameters()}


@st.composite
def small_cases(draw):
    """A random small config and a padded batch (every row has at least one real token)."""
    A = draw(st.sampled_from([1, 2, 4]))
    cfg = dict(vocab_size=23, hidden_size=A * draw(st.sampled_from([4, 8])), num_attention_heads=A,
               num_hidden_layers=draw(st.integers(1, 2)), intermediate_size=draw(st.integers(5, 40)),
               hidden_act=draw(st.sampled_from(["gelu", "gelu_new", "gelu_pytorch_tanh"])),
               max_position_embeddings=16, type_vocab_size=2)
    B, S = draw(st.integers(1, 3)), draw(st.integers(1, 9))
    right_padding = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    if right_padding:                        # real tokens first, padding id 0 after them
        lengths = rng.integers(1, S + 1, B)
        mask = (np.arange(S)[None, :] < lengths[:, None]).astype(np.int64)
        ids = np.where(mask == 1, rng.integers(1, cfg["vocab_size"], (B, S)), 0)
    else:                                    # any mask; ids never 0, so that Hugging Face's
        mask = (rng.random((B, S)) < 0.6).astype(np.int64)     # padding_idx=0 never matters
        mask[np.arange(B), rng.integers(0, S, B)] = 1
        ids = rng.integers(1, cfg["vocab_size"], (B, S))
    types = rng.integers(0, 2, (B, S)) * mask
    return cfg, ids.astype(np.int64), types.astype(np.int64), mask, seed


def _perturbed_pair(torch, transformers, hf_name, cls, config, seed):
    """(hf, model): Hugging Face's ``hf_name`` built from ``config`` in float64 with
    weights perturbed off their initialisation (``seed``), and minibert's ``cls`` loaded
    with the same weights."""
    torch.manual_seed(seed)
    hf = getattr(transformers, hf_name)(hf_config(transformers, config)).double().eval()
    perturb_(torch, hf, torch.Generator().manual_seed(seed))
    model = cls(config, dtype=np.float64, seed=0)
    model.load_state_dict(hf_state(hf, np.float64), strict=True)
    return hf, model


@pytest.mark.slow
@settings(max_examples=10)
@given(case=small_cases())
def test_bert_model_matches_transformers(torch_mods, case):
    torch, transformers = torch_mods
    cfg, ids, types, mask, seed = case
    hf, model = _perturbed_pair(torch, transformers, "BertModel", BertModel, BertConfig(**cfg), seed)

    t = torch.from_numpy
    out = hf(input_ids=t(ids), attention_mask=t(mask), token_type_ids=t(types))
    rng = np.random.default_rng(seed + 1)
    d_last = rng.standard_normal(out.last_hidden_state.shape) * mask[:, :, None]  # real tokens only
    d_pool = rng.standard_normal(out.pooler_output.shape)
    ((out.last_hidden_state * t(d_last)).sum() + (out.pooler_output * t(d_pool)).sum()).backward()

    outputs, cache = model.forward(ids, attention_mask=mask, token_type_ids=types, training=False)
    # at the real tokens: the padding-free default has zeros at the padded positions
    assert_close("last_hidden_state", real_tokens(outputs.last_hidden_state, mask),
                 real_tokens(out.last_hidden_state.detach().numpy(), mask), **TOL64)
    assert_close("pooler_output", outputs.pooler_output, out.pooler_output.detach().numpy(), **TOL64)
    grads = model.backward(cache, d_last, d_pool)
    expected = hf_grads(hf, np.float64)
    assert set(grads) == set(expected), set(grads) ^ set(expected)
    for n in expected:
        assert_close(f"grad {n}", grads[n], expected[n], **TOL64)


@pytest.mark.slow
@settings(max_examples=10)
@given(case=small_cases(), P=st.integers(1, 3))
def test_bert_for_pretraining_matches_transformers(torch_mods, case, P):
    torch, transformers = torch_mods
    cfg, ids, types, mask, seed = case
    config = BertConfig(**cfg)
    B, S = ids.shape
    V = cfg["vocab_size"]
    rng = np.random.default_rng(seed + 2)
    positions, lm_ids, weights = np.zeros((B, P), np.int64), np.zeros((B, P), np.int64), np.zeros((B, P))
    labels = np.full((B, S), -100, np.int64)
    for b in range(B):                        # distinct real positions; the rest padded slots
        real = np.flatnonzero(mask[b])
        k = min(P, len(real))
        positions[b, :k] = rng.choice(real, k, replace=False)
        lm_ids[b, :k] = rng.integers(0, V, k)
        weights[b, :k] = 1.0
        labels[b, positions[b, :k]] = lm_ids[b, :k]
    nsp = rng.integers(0, 2, B).astype(np.int64)

    hf, model = _perturbed_pair(torch, transformers, "BertForPreTraining", BertForPreTraining, config, seed)

    t = torch.from_numpy
    out = hf(input_ids=t(ids), attention_mask=t(mask), token_type_ids=t(types), labels=t(labels),
             next_sentence_label=t(nsp))
    out.loss.backward()
    outputs, cache = model.forward(input_ids=ids, token_type_ids=types, attention_mask=mask,
                                   masked_lm_positions=positions, masked_lm_ids=lm_ids,
                                   masked_lm_weights=weights, next_sentence_labels=nsp, training=False)
    gathered = out.prediction_logits.detach().numpy()[np.arange(B)[:, None], positions]   # (B, P, V)
    assert_close("loss", outputs.loss, out.loss.item(), **TOL64)
    assert_close("mlm_logits", outputs.mlm_logits, gathered, **TOL64)
    assert_close("nsp_logits", outputs.nsp_logits, out.seq_relationship_logits.detach().numpy(), **TOL64)
    grads = model.backward(cache)
    expected = hf_grads(hf, np.float64)
    assert set(grads) == set(expected), set(grads) ^ set(expected)
    for n in expected:
        assert_close(f"grad {n}", grads[n], expected[n], **TOL64)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["tiny", "mini"])
def test_preset_float32_matches_transformers(torch_mods, preset):
    """The real miniature-BERT shapes (vocab 30522) in float32 on both sides, same weights:
    Hugging Face's init (std 0.02) with non-trivial biases and LayerNorm parameters."""
    torch, transformers = torch_mods
    config = BertConfig.preset(preset)
    torch.manual_seed(0)
    hf = transformers.BertModel(hf_config(transformers, config)).float().eval()
    perturb_(torch, hf, torch.Generator().manual_seed(0), weight_std=None)
    model = BertModel(config, dtype=np.float32, seed=0)
    model.load_state_dict(hf_state(hf, np.float32), strict=True)

    B, S = 2, 16
    rng = np.random.default_rng(0)
    mask = (np.arange(S)[None, :] < np.array([[S], [9]])).astype(np.int64)
    ids = np.where(mask == 1, rng.integers(1, config.vocab_size, (B, S)), 0).astype(np.int64)
    types = ((np.arange(S)[None, :] >= np.array([[8], [5]])) * mask).astype(np.int64)
    t = torch.from_numpy
    with torch.no_grad():
        expected = hf(input_ids=t(ids), attention_mask=t(mask),
                      token_type_ids=t(types)).last_hidden_state.numpy()
    outputs, _ = model.forward(ids, attention_mask=mask, token_type_ids=types, training=False)
    assert to_np(outputs.last_hidden_state).dtype == np.float32
    assert_close(f"{preset} float32 last_hidden_state", real_tokens(outputs.last_hidden_state, mask),
                 real_tokens(expected, mask), atol=1e-5)


# ---------------------------------------------------------------------------- training trajectory
# tests/reference/generate.py also trained the reference model for T steps with
# torch.optim.AdamW (foreach=False) and transformers' linear warmup/decay schedule, one
# stored batch per step ("train.*" keys). minibert's BertForPreTraining + AdamW("torch") +
# LRSchedule retrace it from the same initial parameters.
#
# float64: the two sides compute the same gradients up to summation order (at most 5e-15
# relative per tensor in the debug state above) and the same Adam arithmetic up to torch's
# fused multiply-adds (an ulp per operation). Where |g| >> eps, Adam's step m_hat / (sqrt(v_hat) + eps) is
# scale-free, so its relative error is that of the gradients, and the parameters, which move
# by at most ~sum(lr) = 5e-3 in all, differ by ~5e-3 * 5e-15. Where |g| is near eps, the step's
# sensitivity to the gradient is at most 1/eps = 1e6; an absolute gradient error of 1e-16
# (rounding at gradients of O(1)) then moves a parameter by lr * 1e-10 per step, 5e-13 over
# the run, 1e-12 of parameters of O(0.5), and ten steps of feedback through the gradients at
# lr <= 1e-3 do not amplify that by orders of magnitude. 1e-11 covers it; every optimizer
# mistake is far above: the decay applied to a bias or a LayerNorm gain is ~wd * sum(lr) =
# 5e-5 relative, a missing bias correction a factor of 3 on the first steps (~1e-2).
# Measured: losses within 1e-15, parameters within 1.2e-15.
TRAIN_HP = json.loads(str(REF["train.hparams_json"]))
TRAIN_STEPS = int(TRAIN_HP["steps"])
TRAIN_RTOL64 = 1e-11
# float32 against the float64 reference: required within 1e-5 relative per tensor. The
# parameters are rounded to float32 (half an ulp, 3e-8 relative) at the start and after each
# of the updates, a random walk of ~2e-7 over ten steps; the float32 gradients' relative
# error (~1e-6) enters Adam's scale-free steps as a relative error of the step, 1e-6 of
# 5e-3 of movement. Measured: ~3e-7 for parameters, ~1e-6 for the losses.
TRAIN_RTOL32 = 1e-5


def run_trajectory(dtype, variant="torch"):
    """Retrace the reference run: (model, optimizer, losses (T, 3) as loss / mlm / nsp, rates)."""
    model = ref_model(dtype)
    opt = AdamW(model.store, lr=TRAIN_HP["peak_lr"], betas=tuple(TRAIN_HP["betas"]),
                eps=TRAIN_HP["eps"], weight_decay=TRAIN_HP["weight_decay"], variant=variant,
                no_decay=tuple(TRAIN_HP["no_decay"]))
    schedule = LRSchedule("linear_warmup_linear_decay", TRAIN_HP["peak_lr"],
                          warmup_steps=TRAIN_HP["warmup_steps"], total_steps=TRAIN_STEPS)
    losses, rates = [], []
    for k in range(TRAIN_STEPS):
        batch = {key: REF["train." + key][k] for key in INPUT_KEYS}
        batch["masked_lm_weights"] = batch["masked_lm_weights"].astype(dtype)
        outputs, cache = model.forward(**batch, training=False)
        model.backward(cache)
        losses.append([float(outputs.loss), float(outputs.mlm_loss), float(outputs.nsp_loss)])
        rates.append(schedule.lr(k))
        opt.step(lr=rates[-1])
    return model, opt, np.array(losses), np.array(rates)


@pytest.fixture(scope="module")
def traj64():
    return run_trajectory(np.float64)


@pytest.fixture(scope="module")
def traj32():
    return run_trajectory(np.float32)


def reference_losses():
    return np.stack([REF["train.loss"], REF["train.mlm_loss"], REF["train.nsp_loss"]], axis=1)


def key_bias_bound(lrs, scale):
    """Largest total move of a parameter whose true gradient is 0 and whose computed gradient
    is rounding noise of size <= ``scale``: each step is lr_t |m_hat| / (sqrt(v_hat) + eps),
    and m_hat, a weighted mean of past gradients, is at most ``scale``, while sqrt(v_hat) >= 0.
    Also, whatever the noise, |m_hat| / sqrt(v_hat) <= (by Cauchy-Schwarz over the past
    gradients) (1 - b1) / sqrt(1 - b2) * sqrt(sum_{k<t} (b1^2 / b2)^k) * sqrt(1 - b2^t) / (1 - b1^t),
    about 1 for t <= 10. Returns the smaller of the two sums over the steps."""
    b1, b2 = TRAIN_HP["betas"]
    t = np.arange(1, len(lrs) + 1)
    r = np.cumsum((b1 * b1 / b2) ** (t - 1))
    adam = (1 - b1) / np.sqrt(1 - b2) * np.sqrt(r) * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
    return float(np.sum(lrs * np.minimum(scale / TRAIN_HP["eps"], adam)))


def test_trajectory_reference_is_complete():
    assert {k for k in REF if k.startswith("train.param.")} == {"train.param." + n for n in PARAM_NAMES}
    for key in INPUT_KEYS:
        assert REF["train." + key].shape == (TRAIN_STEPS,) + REF[key].shape, key
    for key in ("train.lr", "train.loss", "train.mlm_loss", "train.nsp_loss"):
        assert REF[key].shape == (TRAIN_STEPS,), key


def test_trajectory_schedule_matches_reference_rates():
    """minibert's schedule does Hugging Face's float operations: the very same rates."""
    schedule = LRSchedule("linear_warmup_linear_decay", TRAIN_HP["peak_lr"],
                          warmup_steps=TRAIN_HP["warmup_steps"], total_steps=TRAIN_STEPS)
    assert [schedule.lr(k) for k in range(TRAIN_STEPS)] == REF["train.lr"].tolist()
    assert REF["train.lr"][0] == 0.0 and REF["train.lr"].max() == TRAIN_HP["peak_lr"]


def test_float64_trajectory_matches_reference(traj64):
    model, opt, losses, _ = traj64
    assert opt.t == TRAIN_STEPS
    assert_close("float64 losses (loss, mlm, nsp) per step", losses, reference_losses(),
                 rtol=TRAIN_RTOL64)
    for n in PARAM_NAMES:
        if n.endswith(ZERO_GRAD_SUFFIX):
            continue                      # not determined by the math: test_trajectory_key_bias
        expected, start = REF["train.param." + n], REF["param." + n]
        err = rel_err(model.params[n], expected)
        assert err <= TRAIN_RTOL64, f"float64 final {n}: relative error {err:.3e} > {TRAIN_RTOL64:.0e}"
        # the comparison means something only if the parameter moved far beyond the tolerance
        moved = rel_err(start, expected)
        assert moved >= 1e4 * TRAIN_RTOL64, f"{n} moved only {moved:.2e} in the reference run"


def test_float32_trajectory_close_to_float64_reference(traj32):
    model, opt, losses, _ = traj32
    assert to_np(model.store.data).dtype == np.float32 and opt.m.dtype == np.float32
    err = float(np.max(np.abs(losses - reference_losses()) / np.abs(reference_losses())))
    assert err <= TRAIN_RTOL32, f"float32 losses: relative error {err:.3e} > {TRAIN_RTOL32:.0e}"
    for n in PARAM_NAMES:
        if n.endswith(ZERO_GRAD_SUFFIX):
            continue
        err = rel_err(model.params[n], REF["train.param." + n])
        assert err <= TRAIN_RTOL32, f"float32 final {n}: relative error {err:.3e} > {TRAIN_RTOL32:.0e}"


def test_trajectory_key_bias(traj64, traj32):
    """The key biases' gradient is exactly zero in exact arithmetic (softmax ignores the
    per-row shift q . b_k), so every computed gradient there is rounding noise, and Adam
    turns noise into steps: their trajectory is not fixed by the math, and minibert's and
    the reference's need not agree. What the math does fix is how far they can go.

    float64: the noise is ~3e-17 (grad.*key.bias in the debug state), far below eps = 1e-6,
    so each step is at most lr * noise / eps. With noise up to 1e-14 times the key weights'
    gradient scale (about fifty ulps of it) that is ~1e-11 in all for the reference and for
    minibert alike (measured: 6e-14); a bias following a real gradient would move by
    ~sum(lr) = 5e-3.
    float32: the noise (~1e-8) is no longer small against eps, so only Adam's own bound on
    |m_hat| / sqrt(v_hat) (about 1 per step here, see key_bias_bound) is left: ~sum(lr) =
    5e-3 (measured: 4e-5)."""
    lrs = REF["train.lr"]
    for n in PARAM_NAMES:
        if not n.endswith(ZERO_GRAD_SUFFIX):
            continue
        start = REF["param." + n]
        noise64 = 1e-14 * float(np.max(np.abs(REF["grad." + n[:-len("bias")] + "weight"])))
        bound64 = key_bias_bound(lrs, noise64)
        assert bound64 < 1e-9, bound64
        for who, final in (("reference", REF["train.param." + n]), ("float64", traj64[0].params[n])):
            moved = max_abs_diff(final, start)
            assert moved <= bound64, f"{who} {n} moved {moved:.3e} > {bound64:.3e}"
        bound32 = key_bias_bound(lrs, np.inf)
        assert 0.9 * lrs.sum() < bound32 < 1.1 * lrs.sum(), bound32
        moved = max_abs_diff(traj32[0].params[n], start)
        assert moved <= bound32, f"float32 {n} moved {moved:.3e} > {bound32:.3e}"


def test_trajectory_tells_the_optimizers_apart():
    """The comparison would catch the other AdamW: original BERT's variant (no bias
    correction, decay inside the update) ends 1.5e-2 or more (relative, per tensor) away
    from the reference, 9 orders of magnitude above TRAIN_RTOL64."""
    model, _, _, _ = run_trajectory(np.float64, variant="bert")
    errs = [rel_err(model.params[n], REF["train.param." + n]) for n in PARAM_NAMES
            if not n.endswith(ZERO_GRAD_SUFFIX)]
    assert min(errs) > 1e-3, min(errs)
