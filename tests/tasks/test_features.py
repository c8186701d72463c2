"""The feature-based approach (minibert.tasks.features): the features are BertModel's hidden
states combined, the task model's backward is its gradient (float64 finite differences),
nothing runs backward through the frozen encoder and Trainer never changes it, checkpoints
load and resume exactly, the .npz export round-trips, and bad layers/combine are refused."""
import json
import os
import shutil

import numpy as np
import pytest

import minibert
from minibert import BertForPreTraining, gradcheck
from minibert.heads import (
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
)
from minibert.model import BertModel
from minibert.tasks.base import TOKEN_KEYS, Family
from minibert.tasks.feature_export import encode_features, read_features_npz, write_features_npz
from minibert.tasks.features import FeatureBasedModel, feature_based_model, resolve_layers
from minibert.train import TrainConfig, Trainer
from tests.helpers import DATA, batch, frozen_dropout, perturb, tiny_config

K = 3


class Tagging(Family):
    """A token-classification family as Trainer sees one: token accuracy over labeled tokens."""
    name = "tagging"
    model_class = BertForTokenClassification
    metric = "acc"
    token_keys = TOKEN_KEYS + ("labels",)

    def __init__(self, num_labels=K):
        self.num_labels = num_labels

    def model_kwargs(self):
        return {"num_labels": self.num_labels}

    def metrics(self, out, batch):
        pred = np.asarray(out.logits).argmax(-1)
        lab = np.asarray(batch["labels"])
        counted = lab != -100
        return dict(examples=len(lab), loss=float(out.loss) * len(lab),
                    correct=float((pred == lab)[counted].sum()), count=float(counted.sum()),
                    tokens=float(np.asarray(batch["attention_mask"]).sum()))

    def summarize(self, m):
        return dict(loss=m["loss"] / max(m["examples"], 1), acc=m["correct"] / max(m["count"], 1))


class Sentences(Tagging):
    name = "sentences"
    model_class = BertForSequenceClassification


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A BertForPreTraining checkpoint of the tiny model (pooler and MLM head included: the
    feature-based model skips them), with dropout on, so that the encoder's inference mode
    and the task model's dropout both matter."""
    path = tmp_path_factory.mktemp("pretrained")
    model = BertForPreTraining(tiny_config(hidden_dropout_prob=0.1,
                                           attention_probs_dropout_prob=0.1), seed=4)
    perturb(model, np.random.default_rng(0), 0.1)
    model.save_pretrained(str(path))
    return str(path)


def reference_hidden_states(ckpt, ids, mask, tt, dtype=np.float32):
    enc = BertModel.from_pretrained(ckpt, dtype=dtype)
    return enc(ids, attention_mask=mask, token_type_ids=tt, output_hidden_states=True).hidden_states


@pytest.mark.parametrize("layers, combine, chosen", [
    (None, "concat", [0, 1, 2]), ([-1], "concat", [2]), ([0, -1], "sum", [0, 2]),
    ("-2, -1", "concat", [1, 2]), ([2, 0, 1], "sum", [2, 0, 1])])
def test_features_are_the_hidden_states_combined(ckpt, layers, combine, chosen):
    ids, mask, tt = batch(np.random.default_rng(1))
    model = feature_based_model(ckpt, Tagging(), layers=layers, combine=combine)
    assert model.layers == chosen
    hs = reference_hidden_states(ckpt, ids, mask, tt)
    if combine == "concat":
        want = np.concatenate([hs[i] for i in chosen], axis=-1)
    else:
        want = hs[chosen[0]].copy()
        for i in chosen[1:]:
            want += hs[i]
    got = model.features(ids, attention_mask=mask, token_type_ids=tt)
    assert got.shape == (3, 7, model.feature_size) == want.shape
    assert np.array_equal(got, want)
    # training=True changes nothing in the encoder (inference mode, no dropout)
    again = model.features(ids, attention_mask=mask, token_type_ids=tt)
    model.forward(ids, attention_mask=mask, token_type_ids=tt, training=True)
    assert np.array_equal(again, want)


def test_default_layers_are_the_last_four():
    assert resolve_layers(None, 12) == [9, 10, 11, 12]
    assert resolve_layers(None, 2) == [0, 1, 2]             # fewer: all L + 1
    assert resolve_layers("-4,-3,-2,-1", 5) == [2, 3, 4, 5]
    assert resolve_layers([0, 5], 5) == [0, 5]


def check_head_gradients(model, labels, inputs, d_logits=None):
    xp_inputs = dict(inputs, labels=labels, training=True)
    state = model.rng_state()

    def loss():
        out, _ = model.forward(**xp_inputs)
        value = 0.7 * out.loss
        return value if d_logits is None else value + (out.logits * d_logits).sum()
    f = frozen_dropout(model, loss)
    model.set_rng_state(state)
    out, cache = model.forward(**xp_inputs)
    grads = {k: v.copy() for k, v in model.backward(cache, d_logits=d_logits, d_loss=0.7).items()}
    assert set(grads) == set(model.store.params)
    assert all(np.abs(g).max() > 0 for g in grads.values())
    return gradcheck(f, model.store.params, grads, mode="direction", n_directions=3)


@pytest.mark.parametrize("family, head, combine", [
    (Tagging(), "mlp", "concat"), (Tagging(), "linear", "sum"), (Sentences(), "mlp", "sum"),
    (Sentences(num_labels=1), "linear", "concat")])
def test_task_model_gradients_float64(ckpt, family, head, combine):
    r = np.random.default_rng(2)
    model = feature_based_model(ckpt, family, combine=combine, dtype=np.float64, head=head,
                                seed=3)
    assert model.config.num_labels == family.num_labels and model.dtype == np.float64
    perturb(model, r, 0.3)
    ids, mask, tt = batch(r)
    if family.model_class is BertForTokenClassification:
        labels = r.integers(0, K, (3, 7))
        labels[mask == 0] = -100
        d_logits = r.standard_normal((3, 7, K))
    elif family.num_labels == 1:
        labels, d_logits = r.standard_normal(3), r.standard_normal((3, 1))
    else:
        labels, d_logits = r.integers(0, K, 3), None
    report = check_head_gradients(model, labels, dict(input_ids=ids, attention_mask=mask,
                                                      token_type_ids=tt), d_logits)
    assert report.passed


def test_backward_runs_nothing_through_the_encoder(ckpt):
    """The only backward ops are the task model's; the encoder has no gradient buffer (a
    read-only zero-stride view), and the model's store is the task model's alone."""
    model = feature_based_model(ckpt, Tagging())
    ids, mask, tt = batch(np.random.default_rng(3))
    labels = np.where(mask == 1, ids % K, -100)
    with minibert.ops.trace() as t:
        out, cache = model.forward(ids, attention_mask=mask, token_type_ids=tt, labels=labels,
                                   training=True)
        n_forward = len(t.events)
        model.backward(cache)
    backward = [e.op for e in t.events[n_forward:]]
    assert all(e.phase == "backward" for e in t.events[n_forward:])
    # cross-entropy, out_proj, dropout, GELU with its bias, dense (dropout p=0.1 on features
    # is not undone: its input gradient is not needed)
    assert backward == ["cross_entropy", "linear", "dropout", "gelu.bias", "linear"], backward
    grad = model.encoder.store.grad
    assert grad.strides == (0,) and not grad.flags.writeable
    with pytest.raises(ValueError):
        model.encoder.grads["bert.encoder.layer.0.output.dense.weight"][...] += 1.0
    assert model.store.size == model.num_parameters(only_trainable=True)
    assert model.num_parameters() == model.store.size + model.encoder.store.size
    assert set(model.store.params) == {"classifier.dense.weight", "classifier.dense.bias",
                                       "classifier.out_proj.weight", "classifier.out_proj.bias"}


def tagging_arrays(n, seed, S=12, V=23):
    """Rows of random tokens; each token's tag is a function of its id and its left
    neighbour's (a context the encoder's features carry); [CLS], [SEP] and padding -100."""
    r = np.random.default_rng(seed)
    lengths = r.integers(4, S + 1, n)
    mask = (np.arange(S)[None] < lengths[:, None]).astype(np.int64)
    ids = r.integers(5, V, (n, S)) * mask
    ids[:, 0] = 2
    ids[np.arange(n), lengths - 1] = 3
    labels = np.where(mask == 1, (ids + np.roll(ids, 1, axis=1)) % K, -100)
    labels[:, 0] = -100
    labels[np.arange(n), lengths - 1] = -100
    return dict(input_ids=ids, token_type_ids=np.zeros_like(ids), attention_mask=mask,
                labels=labels)


def train(ckpt, out_dir, steps=6, stop_at=None, resume=False):
    model = feature_based_model(ckpt, Tagging(), layers=[-2, -1], seed=1)
    cfg = TrainConfig(steps=steps, batch_size=4, lr=5e-3, eval_every=3, eval_batches=2,
                      save_every=3, seed=0, optimizer="torch")
    trainer = Trainer(model, tagging_arrays(24, 0), tagging_arrays(8, 1), str(out_dir), cfg,
                      task=Tagging())
    result = trainer.train(resume=resume, stop_at=stop_at)
    return model, result


@pytest.mark.slow
def test_trainer_runs_resumes_and_never_touches_the_encoder(ckpt, tmp_path):
    before = feature_based_model(ckpt, Tagging(), layers=[-2, -1], seed=1)
    model, result = train(ckpt, tmp_path / "full")
    assert result.step == 6 and all(np.isfinite(h["loss"]) for h in result.history)
    # the encoder bit for bit as loaded, the task model trained
    assert np.array_equal(model.encoder.store.data.view(np.uint32),
                          before.encoder.store.data.view(np.uint32))
    assert not np.array_equal(model.store.data, before.store.data)
    # the checkpoint: its layout, and a model loaded from it computes the same logits
    ck = result.checkpoint
    assert {"config.json", "model.safetensors", "feature_based.json"} <= set(os.listdir(ck))
    with open(os.path.join(ck, "feature_based.json")) as fh:
        spec = json.load(fh)
    assert spec["layers"] == [1, 2] and spec["combine"] == "concat" and spec["head"] == "mlp"
    loaded = FeatureBasedModel.from_pretrained(ck)
    ids, mask, tt = batch(np.random.default_rng(5))
    assert np.array_equal(loaded(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits)
    # the encoder in it is a BertModel checkpoint in Hugging Face's names
    enc = BertModel.from_pretrained(ck)
    assert np.array_equal(enc(ids).last_hidden_state, BertModel.from_pretrained(ckpt)(ids).last_hidden_state)
    # half the run, then a resume from its checkpoint in a fresh process's state: the same bits
    train(ckpt, tmp_path / "half", stop_at=3)
    resumed, result2 = train(ckpt, tmp_path / "half", resume=True)
    assert result2.step == 6
    assert np.array_equal(resumed.store.data.view(np.uint32), model.store.data.view(np.uint32))
    assert [h["loss"] for h in result2.history] == [h["loss"] for h in result.history]
    assert resumed.rng_state() == model.rng_state()


@pytest.fixture(scope="module")
def vocab_ckpt(tmp_path_factory):
    """A tiny encoder with the bert-base-uncased vocabulary, as ``minibert encode`` reads it."""
    path = tmp_path_factory.mktemp("encoder")
    BertModel(tiny_config(vocab_size=30522), seed=2).save_pretrained(str(path))
    shutil.copy(os.path.join(DATA, "bert-base-uncased-vocab.txt"), path / "vocab.txt")
    return str(path)


def test_encode_features_and_the_npz_round_trip(vocab_ckpt, tmp_path):
    texts = ["Return the sum of the arguments.", "split a string on whitespace"]
    result = encode_features(vocab_ckpt, texts, layers=[0, -1], combine="concat")
    assert result["layers"] == [0, 2] and result["combine"] == "concat"
    tokenizer = minibert.BertTokenizer.from_pretrained(vocab_ckpt)
    enc = BertModel.from_pretrained(vocab_ckpt)
    for text, toks, ids, f in zip(texts, result["tokens"], result["ids"], result["features"]):
        e = tokenizer(text, truncation=True, max_length=16)
        assert ids == [int(i) for i in e["input_ids"][0]] and toks[0] == "[CLS]"
        hs = enc(e["input_ids"], attention_mask=e["attention_mask"],
                 token_type_ids=e["token_type_ids"], output_hidden_states=True).hidden_states
        assert f.dtype == np.float32 and f.shape == (len(toks), 24)
        assert np.array_equal(f, np.concatenate([hs[0][0], hs[2][0]], axis=-1))
    path = tmp_path / "features.npz"
    assert write_features_npz(str(path), result) == str(path)
    with np.load(path, allow_pickle=False) as z:            # the documented layout, no pickles
        assert int(z["num_texts"]) == 2 and list(z["layers"]) == [0, 2]
        assert str(z["combine"]) == "concat"
        assert list(z["tokens_1"]) == result["tokens"][1]
        assert np.array_equal(z["features_0"], result["features"][0])
        assert np.array_equal(z["ids_1"], result["ids"][1])
    back = read_features_npz(path)
    assert back["tokens"] == result["tokens"] and back["ids"] == result["ids"]
    assert all(np.array_equal(a, b) for a, b in zip(back["features"], result["features"]))
    summed = encode_features(vocab_ckpt, texts[0], combine="sum")
    assert summed["layers"] == [0, 1, 2] and summed["features"][0].shape[1] == 12


@pytest.mark.parametrize("layers, message", [
    ([3], "layer 3 is out of range, expected -3 .. 2"), ([-4], "layer -4 is out of range"),
    ([], "is empty"), ([-1, 2], "layer 2 (hidden state 2) is given twice"),
    ("last", "expected comma-separated integers"), ([1.0], "1.0 is not an integer")])
def test_bad_layers_are_refused_before_anything_is_read(tmp_path, layers, message):
    missing = tmp_path / "config-only"       # no tensors at all: refused on the layers
    os.makedirs(missing)
    (missing / "config.json").write_text(tiny_config().to_json_string())
    with pytest.raises(ValueError) as e:
        feature_based_model(str(missing), Tagging(), layers=layers)
    assert message in str(e.value)


def test_bad_combine_family_and_npz_input(ckpt, vocab_ckpt, tmp_path):
    with pytest.raises(ValueError, match="combine='mean' is unknown, expected one of concat, sum"):
        feature_based_model(ckpt, Tagging(), combine="mean")
    with pytest.raises(ValueError, match="combine='max' is unknown"):
        encode_features(vocab_ckpt, ["a text"], combine="max")
    with pytest.raises(ValueError, match="layer 5 is out of range"):
        encode_features(vocab_ckpt, ["a text"], layers=[5])

    class Spans(Tagging):
        model_class = BertForQuestionAnswering
    with pytest.raises(ValueError, match="uses BertForQuestionAnswering"):
        feature_based_model(ckpt, Spans())
    result = encode_features(vocab_ckpt, ["a text"])
    target = tmp_path / "absent" / "f.npz"
    with pytest.raises(ValueError, match="does not exist"):
        write_features_npz(target, result)
    bad = dict(result, features=[result["features"][0][:-1]])
    with pytest.raises(ValueError, match="expected \\(tokens, F\\)"):
        write_features_npz(tmp_path / "f.npz", bad)
    assert not os.path.exists(tmp_path / "f.npz") and os.listdir(tmp_path) == []


def test_feature_cache_runs_each_row_once_and_alone(ckpt):
    """With cache_features each row's real tokens run through the encoder alone, once:
    the features equal that lone run bit for bit (whatever batch the row comes in), match
    the batched features to float32 rounding, and padding gets zeros."""
    model = feature_based_model(ckpt, Tagging(), cache_features=True)
    plain = feature_based_model(ckpt, Tagging())
    ids, mask, tt = batch(np.random.default_rng(6))
    got = model.cached_features(ids, attention_mask=mask, token_type_ids=tt)
    assert len(model._feature_cache) == 3
    batched = plain.features(ids, attention_mask=mask, token_type_ids=tt)
    for b, n in enumerate(mask.sum(1)):
        alone = plain.features(ids[b:b + 1, :n], token_type_ids=tt[b:b + 1, :n])[0]
        assert np.array_equal(got[b, :n], alone)
        assert np.allclose(got[b, :n], batched[b, :n], rtol=0, atol=1e-5)
        assert not got[b, n:].any()
    # the rows again, in another order and batch: looked up, not recomputed
    calls = []
    model.features = lambda *a, **k: calls.append(1)
    again = model.cached_features(ids[::-1], attention_mask=mask[::-1], token_type_ids=tt[::-1])
    assert calls == [] and np.array_equal(again, got[::-1])
    labels = np.where(mask == 1, ids % K, -100)
    out, cache = model.forward(ids, attention_mask=mask, token_type_ids=tt, labels=labels,
                               training=True)
    assert np.isfinite(out.loss) and calls == []
    bad = mask.copy()
    bad[0, 0] = 0
    with pytest.raises(ValueError, match="real tokens first"):
        model.cached_features(ids, attention_mask=bad, token_type_ids=tt)
