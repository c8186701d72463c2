"""The training loop: batch order, exact resume, atomic checkpoints, divergence, learning."""
import json
import os

import numpy as np
import pytest

from minibert import BertForPreTraining, BertForSequenceClassification
from minibert.train import (
    TrainConfig,
    Trainer,
    TrainingError,
    batch_indices,
    latest_checkpoint,
    list_checkpoints,
    resolve_checkpoint,
)
from tests.helpers import pretraining_arrays
from tests.helpers import train_config as tiny_config

V, S = 50, 16          # the vocabulary of train_config and the length of pretraining_arrays


def make_trainer(out, steps=6, data=None, **kw):
    model = BertForPreTraining(tiny_config(), seed=0)
    tc = TrainConfig(steps=steps, batch_size=4, lr=1e-3, eval_every=2, save_every=2,
                     eval_batches=2, **kw)
    data = pretraining_arrays() if data is None else data
    return Trainer(model, data, pretraining_arrays(8, seed=1), str(out), tc)


# ------------------------------------------------------------------------------ batch order
def test_batch_indices_cover_each_epoch_once():
    n, bs = 10, 4
    rows = np.concatenate([batch_indices(t, n, bs, seed=3) for t in range(5)])   # 2 epochs
    assert sorted(rows[:10]) == list(range(10)) and sorted(rows[10:20]) == list(range(10))
    assert np.array_equal(batch_indices(2, n, bs, 3), batch_indices(2, n, bs, 3))
    assert not np.array_equal(rows[:10], rows[10:20])            # each epoch its own order
    assert not np.array_equal(batch_indices(0, n, bs, 3), batch_indices(0, n, bs, 4))


def test_batch_larger_than_data():
    rows = batch_indices(0, 3, 7, seed=0)
    assert rows.shape == (7,) and set(rows) == {0, 1, 2}


# ------------------------------------------------------------------------------ exact resume
@pytest.mark.slow
def test_resume_is_bitwise_exact(tmp_path):
    straight = make_trainer(tmp_path / "a")
    straight.train()
    half = make_trainer(tmp_path / "b")
    half.train(stop_at=3)
    assert half.step == 3 and latest_checkpoint(str(tmp_path / "b")).endswith("checkpoint-0000003")
    resumed = make_trainer(tmp_path / "b")                        # a fresh process, in effect
    resumed.train(resume=True)
    assert resumed.step == 6
    # dropout is on (p = 0.1): the same masks must have been drawn after the resume
    assert straight.model.config.hidden_dropout_prob > 0
    assert np.array_equal(straight.model.store.data, resumed.model.store.data)
    a, b = straight.optimizer.state_dict(), resumed.optimizer.state_dict()
    for k in a:
        assert np.array_equal(np.asarray(a[k]), np.asarray(b[k])), k
    assert [h["loss"] for h in straight.history] == [h["loss"] for h in resumed.history]


@pytest.mark.slow
def test_resume_refuses_other_data(tmp_path):
    make_trainer(tmp_path, steps=4).train(stop_at=2)
    other = make_trainer(tmp_path, steps=4, data=pretraining_arrays(seed=5))
    with pytest.raises(TrainingError, match="other data"):
        other.train(resume=True)


def test_existing_run_is_never_overwritten(tmp_path):
    make_trainer(tmp_path, steps=2).train()
    before = {p: open(os.path.join(p, "model.safetensors"), "rb").read()
              for p in list_checkpoints(str(tmp_path))}
    with pytest.raises(ValueError, match="already holds checkpoints"):
        make_trainer(tmp_path, steps=2).train()
    after = {p: open(os.path.join(p, "model.safetensors"), "rb").read()
             for p in list_checkpoints(str(tmp_path))}
    assert before == after


def test_resume_without_checkpoint_is_clear(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        make_trainer(tmp_path / "nothing").train(resume=True)
    os.makedirs(tmp_path / "empty")
    with pytest.raises(ValueError, match="holds no checkpoint"):
        make_trainer(tmp_path / "empty").train(resume=True)


# ------------------------------------------------------------------------------ checkpoints
@pytest.mark.slow
def test_checkpoint_contents_and_pruning(tmp_path):
    t = make_trainer(tmp_path, steps=6)
    t.train()
    names = sorted(os.listdir(tmp_path))
    assert names == ["checkpoint-0000004", "checkpoint-0000006", "latest", "loss_curve.png"]
    ck = resolve_checkpoint(str(tmp_path))
    assert ck.endswith("checkpoint-0000006")
    assert {"config.json", "model.safetensors", "optimizer.npz", "trainer_state.json"} <= set(os.listdir(ck))
    state = json.load(open(os.path.join(ck, "trainer_state.json")))
    assert state["step"] == 6 and state["rng_state"]["dropout_calls"] == 6
    assert [e["step"] for e in state["evals"]] == [0, 2, 4, 6]
    with open(tmp_path / "loss_curve.png", "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    reloaded = BertForPreTraining.from_pretrained(ck)
    assert np.array_equal(reloaded.store.data, t.model.store.data)


def test_interrupted_save_keeps_previous_checkpoint(tmp_path):
    t = make_trainer(tmp_path, steps=4)
    t.train(stop_at=2)
    good = latest_checkpoint(str(tmp_path))
    good_bytes = open(os.path.join(good, "model.safetensors"), "rb").read()

    def crash(directory):                         # dies half-way through writing step 4
        open(os.path.join(directory, "partial"), "w").write("x")
        raise KeyboardInterrupt

    t2 = make_trainer(tmp_path, steps=4)
    t2.save_extra = crash
    with pytest.raises(KeyboardInterrupt):
        t2.train(resume=True)
    assert latest_checkpoint(str(tmp_path)) == good
    assert open(os.path.join(good, "model.safetensors"), "rb").read() == good_bytes
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]       # no temp left
    # and the run can still be resumed to the end from the good checkpoint
    t3 = make_trainer(tmp_path, steps=4)
    t3.train(resume=True)
    assert t3.step == 4


def test_non_finite_loss_stops_with_last_good_checkpoint(tmp_path):
    t = make_trainer(tmp_path, steps=6)
    forward = t.model.forward

    def poisoned(*args, **kwargs):                # the loss turns NaN at the fifth step
        out, cache = forward(*args, **kwargs)
        if kwargs.get("training") and t.step == 4:
            out.loss = out.loss * np.nan
        return out, cache

    t.model.forward = poisoned
    with pytest.raises(TrainingError, match=r"step 5: loss is nan.*checkpoint-0000004.*intact"):
        t.train()
    good = latest_checkpoint(str(tmp_path))
    assert good.endswith("checkpoint-0000004")
    reloaded = BertForPreTraining.from_pretrained(good)
    assert np.all(np.isfinite(reloaded.store.data))
    assert np.array_equal(reloaded.store.data, t.model.store.data)   # no update was applied


# ------------------------------------------------------------------------------ learning
@pytest.mark.slow
def test_pretraining_overfits_a_small_set(tmp_path):
    data = pretraining_arrays(8)
    model = BertForPreTraining(tiny_config(hidden_dropout_prob=0.0,
                                           attention_probs_dropout_prob=0.0), seed=0)
    tc = TrainConfig(steps=60, batch_size=8, lr=3e-3, warmup_steps=5, eval_every=60,
                     save_every=60)
    t = Trainer(model, data, data, str(tmp_path), tc)
    r = t.train()
    assert r.evals[0]["step"] == 0 and r.evals[-1]["step"] == 60
    # the eight rows are memorised: the loss falls far below ln(V) + ln(2) and MLM accuracy rises
    assert r.evals[0]["loss"] > 0.9 * (np.log(V) + np.log(2))
    assert r.evals[-1]["loss"] < 0.5 * r.evals[0]["loss"]
    assert r.evals[-1]["mlm_acc"] > r.evals[0]["mlm_acc"] + 0.3


@pytest.mark.slow
def test_classification_learns_a_separable_task(tmp_path):
    rng = np.random.default_rng(0)
    n = 32
    labels = rng.integers(0, 2, n)
    ids = rng.integers(5, V, (n, S))
    ids[:, 1] = np.where(labels == 1, 3, 4)          # the label is written in token 1
    data = dict(input_ids=ids, token_type_ids=np.zeros_like(ids), attention_mask=np.ones_like(ids),
                labels=labels)
    model = BertForSequenceClassification(tiny_config(num_labels=2), seed=0)
    tc = TrainConfig(steps=80, batch_size=8, lr=3e-3, eval_every=40, save_every=80,
                     eval_batches=4, optimizer="torch")
    r = Trainer(model, data, data, str(tmp_path), tc, task="classification").train()
    assert r.evals[-1]["acc"] == 1.0


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("field,value,needle", [
    ("steps", 0, "steps=0"), ("batch_size", 0, "batch_size=0"), ("lr", -1.0, "lr=-1.0"),
    ("warmup_steps", 999, "warmup_steps=999"), ("schedule", "cosine", "schedule='cosine'"),
])
def test_bad_config(field, value, needle):
    with pytest.raises(ValueError, match=needle):
        TrainConfig(**{field: value}).validate()


def test_bad_data(tmp_path):
    model = BertForPreTraining(tiny_config(), seed=0)
    data = pretraining_arrays()
    del data["masked_lm_ids"]
    with pytest.raises(ValueError, match="masked_lm_ids"):
        Trainer(model, data, None, str(tmp_path), TrainConfig())
    with pytest.raises(ValueError, match="task='mlm'"):
        Trainer(model, pretraining_arrays(), None, str(tmp_path), TrainConfig(), task="mlm")


# ------------------------------------------------------------------------------ layering
def test_the_directory_helpers_are_checkpoints_and_training_loads_no_matplotlib():
    """The run-directory helpers live in minibert.checkpoint (train re-exports them), the
    loss curve is drawn by minibert.internals.plots, and importing the trainer loads neither
    matplotlib nor the plots."""
    import subprocess
    import sys

    from minibert import checkpoint, train
    for name in ("list_checkpoints", "latest_checkpoint", "resolve_checkpoint", "read_trainer_state"):
        assert getattr(train, name) is getattr(checkpoint, name)
    code = ("import sys, minibert.train; "
            "print('matplotlib' in sys.modules, 'minibert.internals.plots' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
