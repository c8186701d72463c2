"""Sentence and sentence-pair classification and regression (GLUE), the first task family of
the BERT paper: [CLS] text [SEP] (text_pair [SEP]) -> the pooled [CLS] output -> a linear
layer (``BertForSequenceClassification``).

``ClassificationFamily`` (``--task classification``): K classes, cross-entropy. Metrics:
accuracy, the F1 of class id 1 for two classes (MRPC, QQP), Matthews correlation (CoLA),
and the accuracy of always predicting the training data's majority class.

``RegressionFamily`` (``--task regression``): one output (``num_labels=1``), float targets,
mean squared error (STS-B). Metrics: Pearson and Spearman correlation, MSE, and the
baselines of always predicting the training data's mean score (Pearson 0).

Files are read by ``minibert.finetune_data`` (CSV, GLUE's TSVs as published, JSON lines;
column options; see ``read_classification_file``). GLUE, e.g.::

    MRPC   --text-column "#1 String" --text-pair-column "#2 String" --label-column Quality
    STS-B  --task regression --text-column sentence1 --text-pair-column sentence2 --label-column score
    SST-2  --text-column sentence --label-column label
    QQP    --text-column question1 --text-pair-column question2 --label-column is_duplicate
    MNLI   --text-column sentence1 --text-pair-column sentence2 --label-column gold_label
           --label-list contradiction,entailment,neutral
    CoLA   --text-column 3 --label-column 1        (no header line: 0-based column indexes)

Predictions go to ``predictions.tsv`` in GLUE's submission form: a header line
``index<TAB>prediction``, then one line per held-out example in order (index 0, 1, ...),
the predicted label's name (classification) or score (regression).

Built-in tasks (no download, the standard library's own text, held-out modules never seen
in training):

* classification: which standard-library package a docstring's first paragraph comes from
  (``finetune_data.stdlib_classification``), split by module (``group_split``).
* regression: how many words two docstrings share (``stdlib_overlap_pairs``): pairs of
  first paragraphs of two functions of one module, scored by the Jaccard overlap of their
  word sets, the pairs drawn so the scores spread evenly over [0, 1].
"""
from __future__ import annotations

import itertools
import os
import re

import numpy as np

from .. import finetune_data as fdata
from ..backend import to_numpy
from ..heads import BertForSequenceClassification
from . import metrics as M
from .base import Encoded, Family, TaskOptions


def _encode_texts(data, tokenizer, seq_len, labels):
    """[CLS] text [SEP] (pair [SEP]) padded to ``seq_len`` (longest-first truncation)."""
    enc = tokenizer(list(data.texts), None if data.text_pairs is None else list(data.text_pairs),
                    padding="max_length", truncation=True, max_length=seq_len)
    arrays = dict(input_ids=enc["input_ids"], token_type_ids=enc["token_type_ids"],
                  attention_mask=enc["attention_mask"], labels=labels)
    return Encoded(arrays, np.arange(len(data), dtype=np.int64))


def _write_tsv(out_dir, values) -> list:
    """``predictions.tsv``: ``index<TAB>prediction`` then one line per example."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "predictions.tsv")
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write("index\tprediction\n")
        fh.writelines(f"{i}\t{v}\n" for i, v in enumerate(values))
    return [path]


def _batch_numbers(out, batch):
    labels = to_numpy(batch["labels"])
    B = labels.shape[0]
    return B, labels, dict(examples=B, loss=float(out.loss) * B,
                           tokens=float(to_numpy(batch["attention_mask"]).sum()))


# ============================================================================ classification
class ClassificationFamily(Family):
    """K-class sequence (pair) classification; see the module docstring.

    ``evaluate``'s predictions: ``dict(pred=(N,) int64 predicted class ids, gold=(N,) int64
    gold class ids, names=[K label names, id order], logits=(N, K) float)``, rows in the
    held-out data's order; ``names[pred[i]]`` is example i's predicted label (the confusion
    matrix is ``metrics.confusion_matrix(gold, pred, len(names))``).
    """
    name = "classification"
    model_class = BertForSequenceClassification
    metric = "acc"

    def __init__(self):
        self.label_names: list | None = None
        self.majority: int | None = None

    # -------------------------------------------------------------- data
    def read(self, path, options: TaskOptions):
        """A ``ClassificationData`` of a file; one class is allowed (a held-out file),
        ``prepare`` asks the training data for two."""
        return fdata.read_classification_file(path, options.text_column, options.text_pair_column,
                                              options.label_column, label_list=options.label_list,
                                              min_labels=1)

    def builtin(self, seed: int = 0):
        """Which of 8 standard-library packages a docstring comes from (100 each), 80/20
        by module: no module has examples on both sides."""
        return fdata.group_split(fdata.stdlib_classification(seed=seed), 0.2, seed)

    def split(self, data, seed: int = 0):
        """Stratified 80/20 (``train_test_split``); by module when ``data`` has groups."""
        if getattr(data, "groups", None) is not None:
            return fdata.group_split(data, 0.2, seed)
        return fdata.train_test_split(data, test_fraction=0.2, seed=seed)

    def prepare(self, train) -> None:
        """The label names (id order) and the majority class of the training data."""
        counts = np.bincount(train.labels, minlength=train.num_labels)
        if np.count_nonzero(counts) < 2:
            raise ValueError(f"the training data has {np.count_nonzero(counts)} class(es) "
                             f"{[train.label_names[k] for k in np.flatnonzero(counts)]}, "
                             "expected at least 2")
        self.label_names = list(train.label_names)
        self.majority = int(np.argmax(counts))

    def model_kwargs(self) -> dict:
        return dict(num_labels=len(self._names()))

    def _names(self):
        if self.label_names is None:
            raise ValueError("the family has no label names yet: call prepare(train) first")
        return self.label_names

    def _ids(self, data) -> np.ndarray:
        """``data``'s labels as ids of the training data's label names (by name: a held-out
        file may have fewer classes, or integer labels with a smaller maximum)."""
        names = self._names()
        if list(data.label_names) == names:
            return np.asarray(data.labels, dtype=np.int64)
        index = {n: k for k, n in enumerate(names)}
        used = [data.label_names[k] for k in np.unique(data.labels)]
        unknown = [n for n in used if n not in index]
        if unknown:
            raise ValueError(f"the held-out data has the label(s) {unknown}, which the training "
                             f"data lacks, expected labels among {names} (or pass label_list)")
        return np.asarray([index[data.label_names[k]] for k in data.labels], dtype=np.int64)

    def encode(self, data, tokenizer, seq_len: int, options: TaskOptions) -> Encoded:
        if self.label_names is None:
            self.prepare(data)
        return _encode_texts(data, tokenizer, seq_len, self._ids(data))

    # -------------------------------------------------------------- Trainer protocol
    def metrics(self, out, batch) -> dict:
        B, labels, m = _batch_numbers(out, batch)
        pred = to_numpy(out.logits).argmax(axis=-1)
        m.update(correct=float((pred == labels).sum()), pred=pred.tolist(), gold=labels.tolist())
        return m

    def summarize(self, m: dict) -> dict:
        n = max(m["examples"], 1)
        out = dict(loss=m["loss"] / n, acc=m["correct"] / n)
        if m["gold"]:
            K = len(self.label_names) if self.label_names else None
            if K == 2:
                out["f1"] = M.f1_binary(m["gold"], m["pred"])
            out["matthews"] = M.matthews_corrcoef(m["gold"], m["pred"], K)
        return out

    # -------------------------------------------------------------- final evaluation
    def outputs(self, out, batch) -> dict:
        return dict(logits=to_numpy(out.logits))

    def evaluate(self, data, encoded: Encoded, outputs: dict, options: TaskOptions):
        """``(metrics, predictions)``: ``acc``, ``f1`` (2 classes: F1 of class id 1),
        ``matthews``, and ``baseline_acc`` (``baseline_f1``, ``baseline_matthews`` = 0):
        the training data's majority class predicted for every held-out example."""
        names = self._names()
        logits = np.stack(outputs["logits"]).astype(np.float64)
        if logits.shape != (len(encoded), len(names)):
            raise ValueError(f"outputs['logits'] has shape {logits.shape}, expected "
                             f"{(len(encoded), len(names))} (one row per example, one column per label)")
        pred = logits.argmax(axis=-1).astype(np.int64)
        gold = np.asarray(encoded.arrays["labels"], dtype=np.int64)
        base = np.full_like(gold, self.majority)
        out = dict(acc=M.accuracy(gold, pred))
        if len(names) == 2:
            out["f1"] = M.f1_binary(gold, pred)
        out["matthews"] = M.matthews_corrcoef(gold, pred, len(names))
        out["baseline_acc"] = M.accuracy(gold, base)
        if len(names) == 2:
            out["baseline_f1"] = M.f1_binary(gold, base)
        out["baseline_matthews"] = M.matthews_corrcoef(gold, base, len(names))
        return out, dict(pred=pred, gold=gold, names=list(names), logits=logits)

    def write_predictions(self, out_dir: str, data, encoded: Encoded, predictions,
                          options: TaskOptions) -> list:
        """``predictions.tsv``: each held-out example's predicted label name."""
        names = predictions["names"]
        bad = [n for n in names if any(c in str(n) for c in "\t\r\n")]
        if bad:
            raise ValueError(f"the label name {bad[0]!r} holds a tab or a line break, expected "
                             "names that fit one TSV field")
        return _write_tsv(out_dir, (names[k] for k in predictions["pred"]))


# ============================================================================ regression
_WORD = re.compile(r"[a-z0-9]+")


def word_set(text: str) -> frozenset:
    """The distinct words of ``text``: maximal runs of ``[a-z0-9]`` after lowercasing."""
    return frozenset(_WORD.findall(text.lower()))


def jaccard(a: str, b: str) -> float:
    """Word-set overlap: ``|A & B| / |A | B|`` of ``word_set(a)`` and ``word_set(b)``, in
    [0, 1] (1: the same words; 0 when both have no word)."""
    A, B = word_set(a), word_set(b)
    return len(A & B) / len(A | B) if A | B else 0.0


def _public(module: str) -> bool:
    return not any(part.startswith("_") for part in module.split("."))


def stdlib_overlap_pairs(seed: int = 0, n_train: int = 2400, n_test: int = 600,
                         min_words: int = 4, max_words: int = 30, bins: int = 5,
                         test_fraction: float = 0.2, functions=None):
    """The built-in regression task: how many words two docstrings share.

    Items: the first paragraph of each public function's docstring (``stdlib_functions``;
    modules with a leading underscore in any part left out) with ``min_words`` to
    ``max_words`` words (so a pair fits 128 tokens), a paragraph repeated within a module
    kept once. Modules are split first (``split_by_group``, ``test_fraction``, ``seed``):
    training and held-out pairs never share a module. On each side, every two items of one
    module form a candidate pair, scored by ``jaccard`` (a float in [0, 1] that anyone can
    recompute from the two texts). To spread the scores over [0, 1], the candidates fall
    into ``bins`` equal-width score bins (the last one closed at 1) and each bin gives
    ``n / bins`` pairs (all of a smaller bin's), drawn without replacement by
    ``np.random.default_rng(seed)`` round robin over the modules, so that no large module
    (tkinter's hundreds of methods) fills a bin alone; each pair's order is drawn too, and
    the pairs are shuffled.

    Returns ``(train, test)`` ``RegressionData`` whose ``groups`` are the pairs' modules.
    """
    from .stdlib_functions import split_by_group, stdlib_functions
    funcs = stdlib_functions() if functions is None else functions
    items, seen = [], set()
    for f in funcs:
        if not f.paragraphs or not _public(f.module):
            continue
        text = f.paragraphs[0]
        if min_words <= len(text.split()) <= max_words and (f.module, text) not in seen:
            seen.add((f.module, text))
            items.append((f.module, text))
    train_items, test_items = split_by_group(items, lambda x: x[0], test_fraction, seed)
    rng = np.random.default_rng(seed)

    def side(side_items, n):
        by_module: dict = {}
        for module, text in side_items:
            by_module.setdefault(module, []).append((text, word_set(text)))
        cand, score = [], []
        for m in sorted(by_module):
            for (a, A), (b, B) in itertools.combinations(by_module[m], 2):
                cand.append((m, a, b))
                score.append(len(A & B) / len(A | B) if A | B else 0.0)    # jaccard(a, b)
        if not cand:
            raise ValueError("no module has two documented functions, expected pairs to draw")
        score = np.asarray(score)
        which = np.minimum((score * bins).astype(np.int64), bins - 1)
        pools_of: dict = {}                 # (bin, module) -> candidate indexes, in order
        for i, (m, _, _) in enumerate(cand):
            pools_of.setdefault((int(which[i]), m), []).append(i)
        picked = []
        for k in range(bins):
            # round robin over the modules (in a random order each round), each giving a
            # random candidate of this bin, so that no large module fills the bin alone
            pools = {m: list(rng.permutation(v)) for (kk, m), v in sorted(pools_of.items()) if kk == k}
            taken = 0
            while taken < n // bins and pools:
                for m in [sorted(pools)[i] for i in rng.permutation(len(pools))]:
                    if taken == n // bins:
                        break
                    picked.append(int(pools[m].pop()))
                    taken += 1
                    if not pools[m]:
                        del pools[m]
        picked = rng.permutation(np.asarray(picked, dtype=np.int64))
        swap = rng.random(len(picked)) < 0.5
        texts, pairs = [], []
        for i, s in zip(picked, swap):
            _, a, b = cand[i]
            texts.append(b if s else a)
            pairs.append(a if s else b)
        return fdata.RegressionData(texts, pairs, score[picked], [cand[i][0] for i in picked])

    return side(train_items, n_train), side(test_items, n_test)


class RegressionFamily(Family):
    """Sequence (pair) regression: one output, MSE; see the module docstring.

    ``evaluate``'s predictions: ``dict(pred=(N,) float64 predicted scores, gold=(N,) float64
    gold scores)``, rows in the held-out data's order.
    """
    name = "regression"
    model_class = BertForSequenceClassification
    metric = "pearson"

    def __init__(self):
        self.train_mean: float | None = None

    def read(self, path, options: TaskOptions):
        return fdata.read_regression_file(path, options.text_column, options.text_pair_column,
                                          options.label_column)

    def builtin(self, seed: int = 0):
        """Word overlap of two docstrings of one module (``stdlib_overlap_pairs``)."""
        return stdlib_overlap_pairs(seed=seed)

    def split(self, data, seed: int = 0):
        """80/20: a ``np.random.default_rng(seed)`` permutation's first 20% held out
        (at least one example); both parts keep the original order."""
        n = len(data)
        if n < 2:
            raise ValueError(f"the data has {n} example(s), expected at least 2 to split")
        n_test = min(max(int(round(0.2 * n)), 1), n - 1)
        test = np.sort(np.random.default_rng(seed).permutation(n)[:n_test])
        is_test = np.zeros(n, dtype=bool)
        is_test[test] = True
        return data.subset(np.flatnonzero(~is_test)), data.subset(test)

    def prepare(self, train) -> None:
        """The training data's mean score (the baseline's constant prediction)."""
        if len(train) < 1:
            raise ValueError("the training data is empty, expected examples")
        self.train_mean = float(np.mean(train.labels))

    def model_kwargs(self) -> dict:
        return dict(num_labels=1)

    def encode(self, data, tokenizer, seq_len: int, options: TaskOptions) -> Encoded:
        return _encode_texts(data, tokenizer, seq_len, np.asarray(data.labels, dtype=np.float32))

    def metrics(self, out, batch) -> dict:
        B, labels, m = _batch_numbers(out, batch)
        pred = to_numpy(out.logits).reshape(B)
        m.update(pred=pred.astype(np.float64).tolist(), gold=labels.astype(np.float64).tolist())
        return m

    def summarize(self, m: dict) -> dict:
        n = max(m["examples"], 1)
        out = dict(loss=m["loss"] / n)
        if m["gold"]:
            out.update(pearson=M.pearson(m["gold"], m["pred"]), mse=M.mse(m["gold"], m["pred"]))
        return out

    def outputs(self, out, batch) -> dict:
        logits = to_numpy(out.logits)
        return dict(score=logits.reshape(logits.shape[0]))

    def evaluate(self, data, encoded: Encoded, outputs: dict, options: TaskOptions):
        """``(metrics, predictions)``: ``pearson``, ``spearman``, ``mse``; the baseline
        predicts the training mean for every example: ``baseline_pearson`` = 0 (a constant
        has no correlation, ``metrics.pearson``) and its ``baseline_mse``."""
        pred = np.asarray(outputs["score"], dtype=np.float64).reshape(-1)
        gold = np.asarray(encoded.arrays["labels"], dtype=np.float64)
        if pred.shape != gold.shape:
            raise ValueError(f"outputs['score'] has {pred.size} values, expected {gold.size} "
                             "(one per example)")
        mean = self.train_mean if self.train_mean is not None else float(gold.mean())
        out = dict(pearson=M.pearson(gold, pred), spearman=M.spearman(gold, pred),
                   mse=M.mse(gold, pred), baseline_pearson=0.0,
                   baseline_mse=M.mse(gold, np.full_like(gold, mean)))
        return out, dict(pred=pred, gold=gold)

    def write_predictions(self, out_dir: str, data, encoded: Encoded, predictions,
                          options: TaskOptions) -> list:
        """``predictions.tsv``: each held-out example's predicted score (6 decimals)."""
        return _write_tsv(out_dir, (f"{v:.6f}" for v in predictions["pred"]))
