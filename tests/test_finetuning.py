"""A fine-tuning run end to end (``minibert.finetuning.finetune`` and ``minibert finetune``)
on a tiny checkpoint saved in the Hugging Face layout: metrics.json, predictions and the
confusion matrix written; nothing written on bad input; dynamic padding; exact resume.

The run is driven through a small classification family defined here (the ``Family``
protocol on ``minibert.finetune_data``), so that these tests check the run, not a family;
the families' own tests are under tests/tasks/."""
import json
import os

import numpy as np
import pytest

from minibert import BertConfig, BertForPreTraining, BertForSequenceClassification
from minibert.backend import to_numpy
from minibert.cli import main
from minibert.finetuning import finetune
from minibert.tasks.base import Encoded, Family, TaskOptions, predict, trim_batch
from minibert.tokenization import BertTokenizer, write_vocab

CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"
# every word splits into single characters: any lowercase text tokenizes without [UNK]
WORDS = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(CHARS) + ["##" + c for c in CHARS]
         + list(".,:;()'\"-_=*/"))


class TinyClassification(Family):
    """A minimal classification family: CSV/JSONL via ``minibert.finetune_data``."""
    name = "classification"
    model_class = BertForSequenceClassification
    metric = "acc"

    def read(self, path, options):
        from minibert.finetune_data import read_classification_file
        return read_classification_file(path, options.text_column, options.text_pair_column,
                                        options.label_column)

    def builtin(self, seed=0):
        return self.split(_synthetic(40, seed), seed)

    def split(self, data, seed=0):
        from minibert.finetune_data import train_test_split
        return train_test_split(data, 0.2, seed)

    def prepare(self, train):
        self.label_names = list(train.label_names)

    def model_kwargs(self):
        return dict(num_labels=len(self.label_names))

    def encode(self, data, tokenizer, seq_len, options):
        enc = tokenizer(list(data.texts), None if data.text_pairs is None else list(data.text_pairs),
                        padding="max_length", truncation=True, max_length=seq_len)
        arrays = {k: np.asarray(enc[k]) for k in ("input_ids", "token_type_ids", "attention_mask")}
        arrays["labels"] = np.asarray(data.labels, np.int64)
        return Encoded(arrays, np.arange(len(data)))

    def metrics(self, out, batch):
        pred = to_numpy(out.logits).argmax(-1)
        labels = np.asarray(batch["labels"])
        B = len(labels)
        return dict(examples=B, loss=float(out.loss) * B, correct=float((pred == labels).sum()))

    def summarize(self, m):
        return dict(loss=m["loss"] / m["examples"], acc=m["correct"] / m["examples"])

    def outputs(self, out, batch):
        return {"logits": to_numpy(out.logits)}

    def evaluate(self, data, encoded, outputs, options):
        pred = np.array([int(np.argmax(v)) for v in outputs["logits"]])
        gold = np.asarray(data.labels)
        majority = np.bincount(gold).max() / len(gold)
        return dict(acc=float((pred == gold).mean()), baseline_acc=float(majority)), pred

    def write_predictions(self, out_dir, data, encoded, predictions, options):
        path = os.path.join(out_dir, "predictions.tsv")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write("index\tprediction\n")
            fh.writelines(f"{i}\t{self.label_names[p]}\n" for i, p in enumerate(predictions))
        return [path]


def _synthetic(n, seed):
    from minibert.finetune_data import ClassificationData
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    texts = [f"return the {'list' if y else 'file'} number {rng.integers(1000)}" + " x" * rng.integers(9)
             for y in labels]
    return ClassificationData(texts, None, labels.astype(np.int64), ["file", "list"])


def _write_csv(path, data):
    rows = ["text,label"] + [f"{t},{data.label_names[y]}" for t, y in zip(data.texts, data.labels)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny BertForPreTraining in the Hugging Face layout (config.json, model.safetensors)
    with its vocab.txt."""
    d = tmp_path_factory.mktemp("ckpt")
    config = BertConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    BertForPreTraining(config, dtype=np.float32, seed=0).save_pretrained(str(d))
    write_vocab(WORDS, str(d / "vocab.txt"))
    return str(d)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    return _write_csv(d / "train.csv", _synthetic(32, 1)), _write_csv(d / "dev.csv", _synthetic(12, 2))


@pytest.fixture
def family(monkeypatch):
    """The command line's ``get_family`` returns the family defined here."""
    import minibert.tasks
    monkeypatch.setattr(minibert.tasks, "get_family", lambda name: TinyClassification())
    return TinyClassification


SMALL = dict(steps=4, batch_size=4, seq_len=32)


# ------------------------------------------------------------------------------ the run
@pytest.mark.slow
def test_run_writes_metrics_predictions_and_confusion_matrix(checkpoint, files, tmp_path):
    out = tmp_path / "ft"
    stages = []
    r = finetune(TinyClassification(), train=files[0], eval=files[1], checkpoint=checkpoint,
                 out_dir=out, on_stage=stages.append, **SMALL)
    assert r.train.step == 4 and os.path.basename(r.train.checkpoint) == "checkpoint-0000004"
    written = json.loads((out / "metrics.json").read_text())
    assert written == {**r.metrics, "seconds": written["seconds"]}
    assert written["task"] == "classification" and written["steps"] == 4
    assert (written["train_examples"], written["eval_examples"]) == (32, 12)
    assert 0 <= written["acc"] <= 1 and written["baseline_acc"] == 0.5
    lines = (out / "predictions.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 13
    png = (out / "confusion_matrix.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(r.files) == {str(out / n) for n in ("metrics.json", "predictions.tsv",
                                                   "confusion_matrix.png")}
    assert r.label_names == ["file", "list"]
    assert any("newly initialized" in s for s in stages), stages


def test_the_builtin_task_when_no_file_is_given(checkpoint, tmp_path):
    r = finetune(TinyClassification(), checkpoint=checkpoint, out_dir=tmp_path / "ft", **SMALL)
    assert (r.metrics["train_examples"], r.metrics["eval_examples"]) == (32, 8)


def test_confusion_matrix_counts(tmp_path):
    from minibert.internals.plots import plot_confusion_matrix
    counts = plot_confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], ["a", "b", "c"],
                                   str(tmp_path / "cm.png"))
    np.testing.assert_array_equal(counts, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])   # rows gold
    with pytest.raises(ValueError, match="expected class ids"):
        plot_confusion_matrix([0, 3], [0, 1], ["a", "b"], str(tmp_path / "x.png"))


@pytest.mark.slow
def test_resume_continues_exactly(checkpoint, files, tmp_path):
    """A run stopped at step 2 and resumed ends with the straight run's weights and metrics."""
    from minibert.checkpoint import read_state_dict
    kw = dict(train=files[0], eval=files[1], checkpoint=checkpoint, **SMALL)
    straight = finetune(TinyClassification(), out_dir=tmp_path / "a", **kw)
    finetune(TinyClassification(), out_dir=tmp_path / "b", stop_at=2, **kw)
    resumed = finetune(TinyClassification(), out_dir=tmp_path / "b", resume=True, **kw)
    a, b = read_state_dict(straight.train.checkpoint), read_state_dict(resumed.train.checkpoint)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    drop = ("seconds",)
    assert {k: v for k, v in straight.metrics.items() if k not in drop} == \
        {k: v for k, v in resumed.metrics.items() if k not in drop}


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("change, needle", [
    (dict(train="missing.csv"), "does not exist"),
    (dict(train=None, eval="x.csv"), "given without train"),
    (dict(seq_len=65), "max_position_embeddings=64"),
    (dict(options=TaskOptions(label_column="gold")), "gold"),
    (dict(steps=0), "steps=0"),
    (dict(feature_based=True, feature_combine="mean"), "feature_combine='mean'"),
    (dict(feature_based=True, feature_layers=[-4]), "feature_layers=[-4]"),
    (dict(feature_layers=[-1]), "without feature_based"),
])
def test_bad_input_raises_before_anything_is_written(checkpoint, files, tmp_path, change, needle):
    out = tmp_path / "ft"
    kw = dict(dict(train=files[0], eval=files[1], checkpoint=checkpoint, out_dir=out, **SMALL),
              **change)
    with pytest.raises(ValueError, match=None) as e:
        finetune(TinyClassification(), **kw)
    assert needle in str(e.value), e.value
    assert not out.exists()


def test_an_existing_run_is_refused_and_untouched(checkpoint, files, tmp_path):
    out = tmp_path / "ft"
    finetune(TinyClassification(), train=files[0], eval=files[1], checkpoint=checkpoint,
             out_dir=out, steps=1, batch_size=4, seq_len=32)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="already holds a training run"):
        finetune(TinyClassification(), train=files[0], checkpoint=checkpoint, out_dir=out, **SMALL)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


# ------------------------------------------------------------------------------ dynamic padding
def test_trim_batch_cuts_to_the_longest_row():
    mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    batch = dict(input_ids=np.arange(12).reshape(2, 6), attention_mask=mask,
                 token_type_ids=np.zeros((2, 6), np.int64), labels=np.array([0, 1]))
    t = trim_batch(batch)
    assert {k: v.shape for k, v in t.items()} == dict(input_ids=(2, 3), attention_mask=(2, 3),
                                                      token_type_ids=(2, 3), labels=(2,))
    np.testing.assert_array_equal(t["input_ids"], [[0, 1, 2], [6, 7, 8]])
    choices = np.ones((2, 4, 6), np.int64)
    choices[..., 5:] = 0                                            # multiple choice: (B, C, S)
    assert trim_batch(dict(attention_mask=choices))["attention_mask"].shape == (2, 4, 5)


def test_padding_does_not_change_what_the_model_computes(checkpoint, files):
    """The held-out logits of batches cut to their longest row equal those of batches padded
    to seq_len, and so do the metrics. A padded key gets an additive mask whose exp is exactly
    0 (``ops.attention.additive_mask``), so the real tokens' outputs differ only by the
    rounding of sums of different lengths (matrix-product blocking): a few float32 ulps of
    the logits' scale (eps 1.2e-7); the bound is 1e-6 of that scale. A real token cut or a
    padded key attended to changes the logits by far more."""
    fam = TinyClassification()
    data = fam.read(files[1], TaskOptions())
    fam.prepare(data)
    tokenizer = BertTokenizer.from_pretrained(checkpoint)
    enc = fam.encode(data, tokenizer, 48, TaskOptions())
    lengths = enc.arrays["attention_mask"].sum(1)
    assert lengths.max() < 40                         # every batch is cut by at least 8 tokens
    model = BertForSequenceClassification.from_pretrained(checkpoint, new_head=True, num_labels=2)
    trimmed = predict(model, enc, fam, batch_size=4)
    full = [to_numpy(model(**{k: enc.arrays[k][i:i + 4] for k in fam.input_keys}).logits)
            for i in range(0, len(enc), 4)]
    full = list(np.concatenate(full))
    scale = max(1.0, float(np.abs(full).max()))
    err = float(np.abs(np.array(trimmed["logits"]) - np.array(full)).max())
    assert err <= 1e-6 * scale, err
    m_trim, _ = fam.evaluate(data, enc, trimmed, TaskOptions())
    m_full, _ = fam.evaluate(data, enc, {"logits": full}, TaskOptions())
    assert m_trim == m_full


@pytest.mark.slow
def test_training_on_trimmed_batches_is_finite_and_uses_short_rows(checkpoint, files, tmp_path):
    shapes = []
    fam = TinyClassification()
    forward = BertForSequenceClassification.forward

    def spy(self, *a, **kw):
        shapes.append(np.shape(kw.get("input_ids", a[0] if a else None)))
        return forward(self, *a, **kw)
    import unittest.mock
    with unittest.mock.patch.object(BertForSequenceClassification, "forward", spy):
        r = finetune(fam, train=files[0], eval=files[1], checkpoint=checkpoint,
                     out_dir=tmp_path / "ft", steps=4, batch_size=4, seq_len=64)
    assert all(np.isfinite(h["loss"]) for h in r.train.history)
    assert shapes and max(s[1] for s in shapes) < 64, shapes       # no batch is padded to 64


# ------------------------------------------------------------------------------ the command line
def _argv(checkpoint, files, out, *more):
    return ["finetune", "--checkpoint", checkpoint, "--train", files[0], "--eval", files[1],
            "--out", str(out), "--steps", "4", "--batch-size", "4", "--seq-len", "32", *more]


def test_cli_prints_the_metrics_and_the_files(checkpoint, files, tmp_path, capsys, family):
    out = tmp_path / "ft"
    assert main(_argv(checkpoint, files, out)) == 0
    text = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    line = next(s for s in text.splitlines() if s.startswith("held-out"))
    assert line.startswith(f"held-out accuracy {metrics['acc']:.4f} (trivial baseline: "
                           "accuracy 0.5000)"), line
    for name in ("metrics.json", "predictions.tsv", "confusion_matrix.png"):
        assert f"wrote {out / name}" in text
    # the finished run again: refused without --resume, scored again with it
    _one_line_error(capsys, _argv(checkpoint, files, out), "pass --resume")
    assert main(_argv(checkpoint, files, out, "--resume")) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert {k: v for k, v in again.items() if k != "seconds"} == \
        {k: v for k, v in metrics.items() if k != "seconds"}


def test_cli_data_is_another_name_for_train(checkpoint, files, tmp_path, capsys, family):
    argv = _argv(checkpoint, files, tmp_path / "ft")
    argv[argv.index("--train")] = "--data"
    assert main(argv) == 0


def _one_line_error(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("more, needle", [
    (["--label-column", "gold"], "gold"),
    (["--seq-len", "100"], "max_position_embeddings=64"),
    (["--feature-based", "--feature-layers", "-1,x"], "--feature-layers '-1,x'"),
    (["--label-list", "a,,b"], "--label-list 'a,,b'"),
])
def test_cli_bad_input_is_one_line_exit_2_nothing_written(checkpoint, files, tmp_path, capsys,
                                                          family, more, needle):
    out = tmp_path / "ft"
    _one_line_error(capsys, _argv(checkpoint, files, out, *more), needle)
    assert not out.exists()


def test_cli_encode_layers_needs_out(checkpoint, tmp_path, capsys):
    _one_line_error(capsys, ["encode", checkpoint, "a text", "--layers", "-1"], "without --out")
    _one_line_error(capsys, ["encode", checkpoint, "a text", "--layers", "-1", "--out",
                             str(tmp_path / "f.txt")], "does not end in .npz")
    _one_line_error(capsys, ["encode", checkpoint, "a text", "--out", str(tmp_path / "f.npz")],
                    "without --layers")
    assert os.listdir(tmp_path) == []


def test_cli_every_finetune_option_says_its_default():
    from minibert.cli import build_parser
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    for name in ("finetune", "encode"):
        for action in sub[name]._actions:
            if action.dest in ("help", "checkpoint", "text"):
                continue
            assert action.help and "default" in action.help, (name, action.dest)


# ------------------------------------------------------------------------------ every family
DATA = os.path.join(os.path.dirname(__file__), "data")
FAMILY_RUNS = {   # the published formats of tests/data, each family's predictions file
    "classification": (["--train", "mrpc_train.tsv", "--eval", "mrpc_dev.tsv", "--text-column",
                        "#1 String", "--text-pair-column", "#2 String", "--label-column",
                        "Quality"], ["predictions.tsv", "confusion_matrix.png"],
                       ["acc", "f1", "matthews", "baseline_acc"]),
    "regression": (["--train", "stsb.tsv", "--text-column", "sentence1", "--text-pair-column",
                    "sentence2", "--label-column", "score"], ["predictions.tsv"],
                   ["pearson", "spearman", "mse", "baseline_pearson"]),
    "ner": (["--train", "conll2003_sample.conll"], ["predictions.conll"],
            ["precision", "recall", "f1", "token_acc", "baseline_f1"]),
    "qa": (["--train", "squad_v2.0.json", "--eval", "squad_v2.0.json", "--seq-len", "64",
            "--max-query-length", "16", "--doc-stride", "24"],
           ["predictions.json", "nbest_predictions.json"], ["exact", "f1", "NoAns_exact"]),
    "multiple-choice": (["--train", "swag.csv"], ["predictions.csv"], ["acc", "baseline_acc"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("task", list(FAMILY_RUNS))
def test_every_family_runs_from_its_published_format(checkpoint, tmp_path, capsys, task):
    """``minibert finetune --task X`` on tests/data's fixture files and the tiny checkpoint:
    the run ends, metrics.json holds the family's metric keys, its predictions file exists."""
    args, written, keys = FAMILY_RUNS[task]
    args = [os.path.join(DATA, a) if a.endswith((".tsv", ".conll", ".json", ".csv")) else a
            for a in args]
    out = tmp_path / "ft"
    argv = ["finetune", "--task", task, "--checkpoint", checkpoint, "--out", str(out),
            "--steps", "2", "--batch-size", "4", "--seq-len", "48", *args]
    assert main(argv) == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == task and set(keys) <= set(metrics), sorted(metrics)
    assert all(np.isfinite(v) for k, v in metrics.items() if isinstance(v, float))
    for name in written:
        assert (out / name).is_file(), name
    text = capsys.readouterr().out
    assert any(line.startswith("held-out ") for line in text.splitlines()), text


@pytest.mark.slow
def test_feature_based_run_leaves_the_encoder_as_it_was(checkpoint, tmp_path, capsys):
    """``minibert finetune --task ner --feature-based`` on the CoNLL fixture: the run ends
    with the ner metrics, trains at the feature-based default learning rate (1e-3), and the
    encoder in its checkpoint is bit for bit the pretrained one (only the task model moved)."""
    from minibert.checkpoint import read_state_dict
    out = tmp_path / "fb"
    argv = ["finetune", "--task", "ner", "--feature-based", "--checkpoint", checkpoint,
            "--out", str(out), "--steps", "3", "--batch-size", "4", "--seq-len", "48",
            "--train", os.path.join(DATA, "conll2003_sample.conll")]
    assert main(argv) == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["feature_based"] is True and {"f1", "token_acc"} <= set(metrics)
    last = sorted(p for p in out.iterdir() if p.name.startswith("checkpoint-"))[-1]
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["train_config"]["lr"] == 1e-3
    before, after = read_state_dict(checkpoint), read_state_dict(str(last))
    encoder = [k for k in after if k.startswith("bert.") and ".pooler." not in k]
    assert encoder and all(np.array_equal(after[k], before[k]) for k in encoder)
    assert any(not np.array_equal(after[k], before.get(k)) for k in after if k.startswith("classifier."))
