"""Sequence (pair) classification and regression: GLUE's files as published (their quirks
and bad input), the families' encoding, evaluation on hand-made outputs and predictions
file, a short Trainer run, and the built-in tasks (deterministic, module-disjoint)."""
import json
import os

import numpy as np
import pytest

from minibert.finetune_data import (
    ClassificationData,
    RegressionData,
    group_split,
    read_classification_file,
    read_regression_file,
)
from minibert.tasks import get_family
from minibert.tasks.base import TaskOptions, predict
from minibert.tasks.classification import jaccard, stdlib_overlap_pairs, word_set
from minibert.tasks.stdlib_functions import FunctionDoc
from minibert.tokenization import BertTokenizer
from tests.helpers import DATA

MRPC = dict(text_column="#1 String", text_pair_column="#2 String", label_column="Quality")
STSB = dict(text_column="sentence1", text_pair_column="sentence2", label_column="score")


def data(name):
    return os.path.join(DATA, name)


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer():
    return BertTokenizer(data("bert-base-uncased-vocab.txt"))


# ----------------------------------------------------------------------------- GLUE files
def test_mrpc_as_published():
    train = read_classification_file(data("mrpc_train.tsv"), **MRPC)      # starts with a BOM
    dev = read_classification_file(data("mrpc_dev.tsv"), **MRPC)
    assert (len(train), len(dev)) == (10, 6)
    assert train.label_names == ["0", "1"] and train.labels.tolist() == [1, 0, 1, 0, 1, 0, 1, 0, 1, 0]
    # bare quotes: inside a sentence, at the start of a field, and an odd one (5")
    assert train.texts[2] == ('He called the decision "a victory for every family in this state" '
                              'and promised to appeal any challenge.')
    assert train.texts[3] == '"We are not going to comment on rumours," a spokeswoman said on Friday.'
    assert train.texts[5] == 'The senator\'s 5" binder of notes was entered into the record.'
    assert train.text_pairs[2] == 'He said the ruling was "a victory for every family in this state."'
    assert dev.texts[2].startswith('"It was a mistake,"')


def test_other_glue_layouts():
    sts = read_regression_file(data("stsb.tsv"), **STSB)
    assert sts.labels.dtype == np.float64 and sts.labels[:3].tolist() == [4.8, 3.25, 0.0]
    assert sts.texts[5] == '"Yes, you can freeze bread for a month.'       # an unclosed quote
    assert sts.text_pairs[3] == "Officials report no injuries after explosion"
    sst = read_classification_file(data("sst2.tsv"), "sentence", None, "label",
                                   label_list=["negative", "positive"])
    assert sst.label_names == ["negative", "positive"] and sst.labels.tolist() == [1, 0] * 4
    assert sst.texts[2].startswith('" the lives of others "') and sst.text_pairs is None
    qqp = read_classification_file(data("qqp.tsv"), "question1", "question2", "is_duplicate")
    assert qqp.labels.tolist() == [1, 0, 1, 0] and '"hello world"' in qqp.texts[2]
    order = ["contradiction", "entailment", "neutral"]
    mnli = read_classification_file(data("mnli.tsv"), "sentence1", "sentence2", "gold_label",
                                    label_list=order)
    assert mnli.label_names == order and mnli.labels.tolist() == [1, 0, 2, 1, 0, 2]
    again = read_classification_file(data("mnli.tsv"), "sentence1", "sentence2", "gold_label",
                                     label_list=["entailment", "neutral", "contradiction"])
    assert again.labels.tolist() == [0, 2, 1, 0, 2, 1]                    # the list fixes the ids


def test_cola_without_header():
    for cols in ((3, None, 1), ("3", "text_pair", "1")):
        cola = read_classification_file(data("cola.tsv"), *cols)
        assert len(cola) == 8 and cola.text_pairs is None
        assert cola.labels.tolist() == [1, 0] * 4 and cola.label_names == ["0", "1"]
        assert cola.texts[0] == "Our friends won't buy this analysis, let alone the next one we propose."
        assert cola.texts[6] == '"Stop," she said, and the bus stopped.'
    # the original-label column (empty or '*') as the label, by index: names
    star = read_classification_file(data("cola.tsv"), 3, None, 0)
    assert star.label_names == ["ad03", "bc01", "gj04", "m_02"]


def test_tsv_has_no_quote_processing_but_csv_does(tmp_path):
    tsv = _write(tmp_path / "q.tsv", 'text\tlabel\n"quoted\ttab"\t1\n"a"\t0\n')
    with pytest.raises(ValueError, match=r"line 2: 3 fields, expected 2"):
        read_classification_file(tsv)          # a tab is always a field boundary in a TSV
    tsv = _write(tmp_path / "q.tsv", 'text\tlabel\n"a"\t1\n"b\t0\n')
    assert read_classification_file(tsv).texts == ['"a"', '"b']
    csv_file = _write(tmp_path / "q.csv", 'text,label\n"a, b",1\n"c ""d""",0\n')
    assert read_classification_file(csv_file).texts == ["a, b", 'c "d"']


def test_json_lines_and_array(tmp_path):
    rows = [{"sentence1": "a b", "sentence2": "c", "score": 1.5},
            {"sentence1": "d", "sentence2": "e f", "score": 4}]
    jl = _write(tmp_path / "s.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    assert read_regression_file(jl, **STSB).labels.tolist() == [1.5, 4.0]
    arr = _write(tmp_path / "s.json", json.dumps(rows, indent=1))
    got = read_regression_file(arr, **STSB)
    assert got.texts == ["a b", "d"] and got.text_pairs == ["c", "e f"]
    bad = _write(tmp_path / "b.json", json.dumps([rows[0], {"sentence1": "x", "score": 1}]))
    with pytest.raises(ValueError, match=r"b.json.*record 2: no key 'sentence2'"):
        read_regression_file(bad, **STSB)
    with pytest.raises(ValueError, match="expected a string or an integer label"):
        read_classification_file(jl, "sentence1", "sentence2", "score")


@pytest.mark.parametrize("name, kwargs, match", [
    ("mrpc_train.tsv", dict(text_column="sentence1", label_column="Quality"),
     r"no column 'sentence1' in the header \['Quality', '#1 ID', '#2 ID', '#1 String', '#2 String'\]"),
    ("mnli.tsv", dict(text_column="sentence1", label_column="gold_label",
                      label_list=["entailment", "contradiction"]),
     r"line 4: the label 'neutral' is not in label_list \['entailment', 'contradiction'\]"),
    ("cola.tsv", dict(text_column=7, label_column=1), r"line 1: 4 fields, expected at least 8"),
    ("cola.tsv", dict(text_column=3, label_column="label"), "mix a column index and a name"),
    ("cola.tsv", dict(text_column=3, text_pair_column="sentence", label_column=1),
     "text_pair_column='sentence' is a name"),
])
def test_classification_errors(name, kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        read_classification_file(data(name), **kwargs)
    assert name in str(err.value)
    with pytest.raises(ValueError, match=r"label_list=\['a', 'a'\] is invalid, expected distinct"):
        read_classification_file(data("mnli.tsv"), label_list=["a", "a"])


def test_regression_and_encoding_errors(tmp_path):
    bad = _write(tmp_path / "sts.tsv", "sentence1\tsentence2\tscore\na\tb\t3.2\nc\td\tfour\n")
    with pytest.raises(ValueError, match=r"sts.tsv' line 3: the label 'four' is not a finite number"):
        read_regression_file(bad, **STSB)
    nan = _write(tmp_path / "n.jsonl", '{"text": "a", "label": NaN}\n')
    with pytest.raises(ValueError, match=r"line 1: the label nan is not a finite number"):
        read_regression_file(nan)
    with pytest.raises(ValueError, match=r"no column 'score' in the header \['sentence1', 'sentence2'"):
        read_regression_file(_write(tmp_path / "m.tsv", "sentence1\tsentence2\nx\ty\n"), **STSB)
    latin = tmp_path / "l.tsv"
    latin.write_bytes("sentence\tlabel\nfine\t1\nna\u00efve\t0\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"l.tsv.*line 3.*expected UTF-8"):
        read_classification_file(latin, "sentence", None, "label")
    # UTF-8 text beyond ASCII, with CRLF line ends, reads back exactly
    ok = tmp_path / "u.tsv"
    ok.write_bytes("sentence\tlabel\r\ncaf\u00e9 \u201cquoted\u201d\t1\r\n\u00fcber\t0\r\n".encode())
    assert read_classification_file(ok, "sentence", None, "label").texts == \
        ["caf\u00e9 \u201cquoted\u201d", "\u00fcber"]


# ----------------------------------------------------------------------------- the families
def _logits_for(pred, K, rng):
    """Hand-made logits whose argmax is ``pred``."""
    z = rng.standard_normal((len(pred), K))
    z[np.arange(len(pred)), pred] = z.max(axis=1) + 1.0
    return list(z)


def test_classification_family_evaluate_and_write(tokenizer, tmp_path):
    fam = get_family("classification")
    opts = TaskOptions(**MRPC)
    train, dev = fam.read(data("mrpc_train.tsv"), opts), fam.read(data("mrpc_dev.tsv"), opts)
    fam.prepare(train)
    assert fam.model_kwargs() == dict(num_labels=2) and fam.majority == 0     # 5 each: the first
    enc = fam.encode(dev, tokenizer, 40, opts)
    assert enc.arrays["input_ids"].shape == (6, 40) and enc.example_index.tolist() == list(range(6))
    assert enc.arrays["token_type_ids"][0].max() == 1                          # a pair
    gold = np.array([1, 0, 1, 0, 1, 0])
    pred = np.array([1, 1, 1, 0, 0, 0])              # TP 2, FP 1, FN 1, TN 2
    m, p = fam.evaluate(dev, enc, dict(logits=_logits_for(pred, 2, np.random.default_rng(0))), opts)
    assert m["acc"] == pytest.approx(4 / 6)
    assert m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert m["matthews"] == pytest.approx((2 * 2 - 1 * 1) / 9)                  # each margin 3
    assert m["baseline_acc"] == pytest.approx(0.5) and m["baseline_f1"] == 0.0
    assert m["baseline_matthews"] == 0.0
    np.testing.assert_array_equal(p["pred"], pred)
    np.testing.assert_array_equal(p["gold"], gold)
    assert p["names"] == ["0", "1"] and p["logits"].shape == (6, 2)
    files = fam.write_predictions(str(tmp_path), dev, enc, p, opts)
    assert files == [str(tmp_path / "predictions.tsv")]
    assert (tmp_path / "predictions.tsv").read_text() == \
        "index\tprediction\n" + "".join(f"{i}\t{k}\n" for i, k in enumerate(pred))


def test_classification_family_maps_held_out_labels_by_name(tokenizer, tmp_path):
    fam = get_family("classification")
    opts = TaskOptions(text_column="sentence1", text_pair_column="sentence2", label_column="gold_label")
    train = fam.read(data("mnli.tsv"), opts)
    fam.prepare(train)
    assert fam.label_names == ["contradiction", "entailment", "neutral"]
    held = _write(tmp_path / "h.tsv", "sentence1\tsentence2\tgold_label\na\tb\tneutral\nc\td\tneutral\n")
    dev = fam.read(held, opts)                       # one class: allowed for held-out data
    assert dev.label_names == ["neutral"]
    enc = fam.encode(dev, tokenizer, 16, opts)
    assert enc.arrays["labels"].tolist() == [2, 2]
    m, p = fam.evaluate(dev, enc, dict(logits=[np.array([0.0, 0.0, 1.0]), np.array([1.0, 0, 0])]), opts)
    assert m["acc"] == 0.5 and "f1" not in m and m["baseline_acc"] == 0.0     # majority: class 0
    fam.write_predictions(str(tmp_path), dev, enc, p, opts)
    assert (tmp_path / "predictions.tsv").read_text() == "index\tprediction\n0\tneutral\n1\tcontradiction\n"
    other = _write(tmp_path / "o.tsv", "sentence1\tsentence2\tgold_label\na\tb\tunknown\n")
    with pytest.raises(ValueError, match=r"the label\(s\) \['unknown'\], which the training data lacks"):
        fam.encode(fam.read(other, opts), tokenizer, 16, opts)
    one = ClassificationData(["a", "b"], None, np.array([1, 1]), ["x", "y"])
    with pytest.raises(ValueError, match=r"1 class\(es\) \['y'\], expected at least 2"):
        get_family("classification").prepare(one)


def test_regression_family_evaluate_and_write(tokenizer, tmp_path):
    fam = get_family("regression")
    opts = TaskOptions(**STSB)
    sts = fam.read(data("stsb.tsv"), opts)
    train, test = fam.split(sts, seed=0)
    assert (len(train), len(test)) == (8, 2)
    assert sorted(train.texts + test.texts) == sorted(sts.texts)
    fam.prepare(train)
    assert fam.model_kwargs() == dict(num_labels=1)
    assert fam.train_mean == pytest.approx(train.labels.mean())
    enc = fam.encode(sts, tokenizer, 32, opts)
    assert enc.arrays["labels"].dtype == np.float32
    pred = sts.labels * 0.5 + np.array([0.3, -0.2, 0.1, 0.0, 0.4, -0.1, 0.2, 0.0, -0.3, 0.1])
    m, p = fam.evaluate(sts, enc, dict(score=list(pred)), opts)
    g = sts.labels
    r = np.sum((g - g.mean()) * (pred - pred.mean())) / np.sqrt(
        np.sum((g - g.mean()) ** 2) * np.sum((pred - pred.mean()) ** 2))
    assert m["pearson"] == pytest.approx(r, abs=1e-6)
    assert m["mse"] == pytest.approx(np.mean((pred - g) ** 2), abs=1e-6)
    assert m["baseline_pearson"] == 0.0
    assert m["baseline_mse"] == pytest.approx(np.mean((g - fam.train_mean) ** 2), abs=1e-6)
    assert 0.9 < m["spearman"] <= 1.0
    np.testing.assert_allclose(p["gold"], g, rtol=1e-6)
    fam.write_predictions(str(tmp_path), sts, enc, p, opts)
    lines = (tmp_path / "predictions.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 11
    assert lines[1] == f"0\t{pred[0]:.6f}"


@pytest.mark.slow
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_family_trains_and_predicts(task, tokenizer, tmp_path):
    """A few Trainer steps of a tiny model on the fixtures, then predict + evaluate."""
    from minibert import BertConfig
    from minibert.train import TrainConfig, Trainer
    fam = get_family(task)
    if task == "classification":
        opts = TaskOptions(**MRPC)
        train, test = fam.read(data("mrpc_train.tsv"), opts), fam.read(data("mrpc_dev.tsv"), opts)
    else:
        opts = TaskOptions(**STSB)
        train, test = fam.split(fam.read(data("stsb.tsv"), opts), seed=0)
    fam.prepare(train)
    cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=24, max_position_embeddings=64,
                     **fam.model_kwargs())
    model = fam.model_class(cfg, seed=0)
    etr, ete = fam.encode(train, tokenizer, 64, opts), fam.encode(test, tokenizer, 64, opts)
    tc = TrainConfig(steps=4, batch_size=4, lr=1e-3, seed=0, eval_every=2, eval_batches=2,
                     save_every=4, optimizer="torch")
    result = Trainer(model, etr.arrays, ete.arrays, str(tmp_path / "run"), tc, task=fam).train()
    assert fam.metric in result.evals[-1] and np.isfinite(result.evals[-1]["loss"])
    m, p = fam.evaluate(test, ete, predict(model, ete, fam, batch_size=4), opts)
    assert fam.metric in m and all(np.isfinite(v) for v in m.values())
    assert len(p["pred"]) == len(test)


# ----------------------------------------------------------------------------- built-in tasks
def _fd(module, name, paragraph):
    return FunctionDoc(module.split(".")[0], module, name, name, (), (), f"{name}()", paragraph,
                       (paragraph,))


def test_overlap_pairs_on_hand_made_functions():
    texts = ["Return the value of the key", "Return the value of the name", "Set the value of the key",
             "Close the file and flush it", "Open a file for reading text", "Return the key"]
    funcs = [_fd(m, f"f{i}", t) for m in ("alpha", "beta", "gamma.sub", "delta", "_private")
             for i, t in enumerate(texts)]
    train, test = stdlib_overlap_pairs(seed=3, n_train=20, n_test=5, min_words=3, bins=5,
                                       test_fraction=0.25, functions=funcs)
    assert not set(train.groups) & set(test.groups)
    assert "_private" not in set(train.groups) | set(test.groups)
    for d in (train, test):
        assert d.labels.tolist() == [jaccard(a, b) for a, b in zip(d.texts, d.text_pairs)]
    again = stdlib_overlap_pairs(seed=3, n_train=20, n_test=5, min_words=3, test_fraction=0.25,
                                 functions=funcs)
    assert again[0].texts == train.texts and again[1].text_pairs == test.text_pairs
    assert jaccard("Return the key.", "the KEY, returned") == pytest.approx(2 / 4)
    assert word_set("A b-c a") == {"a", "b", "c"} and jaccard("...", "!") == 0.0


@pytest.mark.slow
def test_builtin_regression_task():
    train, test = get_family("regression").builtin(seed=0)
    assert isinstance(train, RegressionData) and len(train) >= 2000 and len(test) >= 300
    assert not set(train.groups) & set(test.groups)
    assert not any(p.startswith("_") for g in train.groups + test.groups for p in g.split("."))
    for d in (train, test):
        np.testing.assert_array_equal(d.labels, [jaccard(a, b) for a, b in zip(d.texts, d.text_pairs)])
        hist = np.histogram(d.labels, bins=5, range=(0, 1))[0]
        assert hist.min() >= 0.04 * len(d), hist                   # spread over [0, 1]
    again = get_family("regression").builtin(seed=0)
    assert again[0].texts == train.texts and again[1].labels.tolist() == test.labels.tolist()
    assert get_family("regression").builtin(seed=1)[0].texts != train.texts


@pytest.mark.slow
def test_builtin_classification_task_holds_out_whole_modules():
    fam = get_family("classification")
    train, test = fam.builtin(seed=0)
    assert len(train) + len(test) == 800 and 0.15 < len(test) / 800 < 0.3
    assert not set(train.groups) & set(test.groups)
    assert not set(train.texts) & set(test.texts)
    for c in range(8):                                   # every package on both sides
        assert np.sum(train.labels == c) > 0 and np.sum(test.labels == c) > 0
    again = fam.builtin(seed=0)
    assert again[1].texts == test.texts and again[0].labels.tolist() == train.labels.tolist()
    assert [g.split(".")[0] for g in test.groups] == [test.label_names[k] for k in test.labels]


def test_group_split_small():
    d = ClassificationData([f"t{i}" for i in range(12)], None,
                           np.array([0] * 6 + [1] * 6), ["a", "b"],
                           ["m1", "m1", "m2", "m2", "m3", "m3", "n1", "n1", "n1", "n2", "n3", "n4"])
    train, test = group_split(d, 0.25, seed=0)
    assert not set(train.groups) & set(test.groups)
    assert sorted(train.texts + test.texts) == sorted(d.texts)
    assert set(test.labels.tolist()) == {0, 1}
    with pytest.raises(ValueError, match="no groups"):
        group_split(ClassificationData(["a"], None, np.array([0]), ["a"]))
