"""Multiple choice (SWAG): which of C endings continues a context.

A record is a context ``sent1``, the start of the next sentence ``sent2`` and C candidate
endings of it, ``ending0 .. ending{C-1}``; ``label`` is the index of the right ending.
SWAG (Zellers et al., 2018) has C = 4. As in the BERT paper, every choice c becomes one
sequence::

    [CLS] sent1 [SEP] sent2 + " " + ending_c [SEP]        token types 0 ... 0 1 ... 1

(longest-first truncation to ``seq_len``, padding to ``seq_len``), so a record is a
(C, S) block and a data set (N, C, S) arrays. ``BertForMultipleChoice`` scores each
sequence from its pooled [CLS] output, s_c = w . pooled_c + b, and trains on the cross
entropy of softmax(s_0 .. s_{C-1}) against the label; the prediction is argmax_c s_c,
scored by accuracy. A model that guesses scores 1/C (``baseline_acc``).

Files, as published:

* CSV with a header (SWAG's ``train.csv``/``val.csv``): ``,video-id,fold-ind,startphrase,
  sent1,sent2,gold-source,ending0,ending1,ending2,ending3,label``. The first column, without
  a name, is the record's index; a file without it (or without the other metadata columns)
  loads too. Only ``sent1``, ``sent2``, the endings and ``label`` are required.
* JSON lines with the same keys (the Hugging Face ``swag`` layout), one record a line, or
  one JSON document holding a list of such records.

The number of endings C is read from the columns (keys) ``ending0, ending1, ...``, which
must be numbered from 0 without a gap, and it must be the same for every record (JSON
lines: the first record sets it). Every ending must be non-empty and every label an integer
in [0, C). SWAG's test split has no labels (no ``label`` column, or -1 in the Hugging Face
copy): it can be neither trained on nor scored, and reading it is an error.

The built-in task (``stdlib_multiple_choice``) needs no download: which of four function
names of one standard-library module a docstring describes.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ..backend import to_numpy
from ..heads import BertForMultipleChoice
from ..io import json_lines, read_utf8_text
from .base import Encoded, Family, TaskOptions

REQUIRED = ("sent1", "sent2", "label")
_ENDING = re.compile(r"ending(\d+)")
_INT = re.compile(r"[+-]?\d+")


@dataclass
class MultipleChoiceData:
    """N records of C choices each (see the module docstring).

    contexts: sent1 of each record; starts: sent2 (the start the endings continue);
    endings: one tuple of C strings a record; labels: (N,) int64 in [0, C);
    ids: each record's index for the predictions file (the published CSV's unnamed first
    column, else the record's 0-based position in its file); source: where the records
    come from (a path, or a description), for messages.
    """
    contexts: list
    starts: list
    endings: list
    labels: np.ndarray
    ids: list = field(default=None)
    source: str = "data"

    def __post_init__(self):
        n = len(self.contexts)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.ids is None:
            self.ids = list(range(n))
        self.endings = [tuple(e) for e in self.endings]
        sizes = dict(starts=len(self.starts), endings=len(self.endings),
                     labels=len(self.labels), ids=len(self.ids))
        if any(v != n for v in sizes.values()) or self.labels.ndim != 1:
            raise ValueError(f"{self.source}: {n} contexts but {sizes}, expected one of each "
                             "per record")
        if len({len(e) for e in self.endings}) > 1:
            raise ValueError(f"{self.source}: the records have {sorted({len(e) for e in self.endings})} "
                             "endings, expected the same number for every record")
        C = self.num_choices
        if n and (self.labels.min() < 0 or self.labels.max() >= C):
            raise ValueError(f"{self.source}: labels in [{self.labels.min()}, {self.labels.max()}], "
                             f"expected 0 <= label < {C} (the number of endings)")

    def __len__(self) -> int:
        return len(self.contexts)

    @property
    def num_choices(self) -> int:
        return len(self.endings[0]) if self.endings else 0

    def subset(self, indices) -> MultipleChoiceData:
        """The records at ``indices``, in that order (their ids kept)."""
        idx = [int(i) for i in indices]
        return MultipleChoiceData([self.contexts[i] for i in idx], [self.starts[i] for i in idx],
                                  [self.endings[i] for i in idx], self.labels[idx],
                                  [self.ids[i] for i in idx], self.source)


# ------------------------------------------------------------------------------ readers
def _ending_columns(names, where: str) -> list:
    """The ending column names among ``names``, checked to be ending0..ending{C-1}, C >= 2."""
    numbers = sorted(int(m.group(1)) for m in map(_ENDING.fullmatch, names) if m)
    C = len(numbers)
    if numbers != list(range(C)) or C < 2:
        found = [f"ending{i}" for i in numbers]
        raise ValueError(f"{where} has the ending columns {found}, expected ending0, ending1, ... "
                         "numbered from 0 without a gap, at least two")
    return [f"ending{i}" for i in range(C)]


def _label(value, C: int, where: str) -> int:
    """An integer label in [0, C) from a JSON value or a CSV field."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"{where}: label is empty: unlabeled records (such as SWAG's test "
                         f"split) can be neither trained on nor scored, expected 0 <= label < {C}")
    if isinstance(value, bool) or not (isinstance(value, int)
                                       or (isinstance(value, str) and _INT.fullmatch(value.strip()))):
        raise ValueError(f"{where}: label={value!r} is invalid, expected an integer 0 <= label < {C}")
    k = int(value)
    if k == -1:
        raise ValueError(f"{where}: label=-1 marks an unlabeled record (as in SWAG's test split), "
                         f"which can be neither trained on nor scored; expected 0 <= label < {C}")
    if not 0 <= k < C:
        raise ValueError(f"{where}: label={k} is out of range, expected 0 <= label < {C} "
                         f"(the number of endings)")
    return k


def _text(value, name: str, where: str, allow_empty: bool) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise ValueError(f"{where}: {name}={value!r} is invalid, expected a string")
    if not allow_empty and not value.strip():
        raise ValueError(f"{where}: {name} is empty, expected a non-empty ending")
    return value


def _read_text(path: str) -> str:
    if not os.path.isfile(path):
        raise ValueError(f"{path!r} is not a file, expected a SWAG CSV or JSON-lines file")
    return read_utf8_text(path, "multiple-choice file")


def _no_labels(path, found) -> ValueError:
    return ValueError(f"{path} has no label column (found: {', '.join(map(repr, found))}): a file "
                      "without labels (such as SWAG's test.csv) can be neither trained on nor "
                      "scored; expected a label column with the index of the right ending")


def read_swag_csv(path) -> MultipleChoiceData:
    """SWAG's CSV (module docstring): header line, one record a row (fields may be quoted
    and span lines); line numbers in messages are where the record starts."""
    path = os.fspath(path)
    text = _read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    header, line = None, 0
    for row in reader:
        line = reader.line_num
        if any(f.strip() for f in row):
            header = [f.strip() for f in row]
            break
    if header is None:
        raise ValueError(f"{path} is empty, expected a CSV header with sent1, sent2, ending0.. "
                         "and label")
    missing = [c for c in REQUIRED if c not in header]
    if missing == ["label"]:
        raise _no_labels(path, header)
    where = f"{path} line {line} (the header)"
    if missing:
        raise ValueError(f"{where} lacks the columns {missing} (found: "
                         f"{', '.join(map(repr, header))}), expected sent1, sent2, ending0.. and label")
    endings = _ending_columns(header, where)
    C = len(endings)
    col = {name: i for i, name in enumerate(header)}
    index_col = 0 if header[0] == "" else None          # the published files' unnamed index
    contexts, starts, ends, labels, ids = [], [], [], [], []
    for row in reader:
        start, line = line + 1, reader.line_num
        if not any(f.strip() for f in row):
            continue
        where = f"{path} line {start}"
        if len(row) != len(header):
            raise ValueError(f"{where} has {len(row)} fields, expected {len(header)} (the header's "
                             f"columns, {C} endings)")
        for name in endings:
            if not row[col[name]].strip():
                raise ValueError(f"{where}: {name} is empty, expected {C} non-empty endings "
                                 f"({', '.join(endings)})")
        contexts.append(row[col["sent1"]])
        starts.append(row[col["sent2"]])
        ends.append(tuple(row[col[name]] for name in endings))
        labels.append(_label(row[col["label"]], C, where))
        if index_col is None:
            ids.append(len(ids))
        else:
            value = row[index_col].strip()
            ids.append(int(value) if _INT.fullmatch(value) else value)
    if not contexts:
        raise ValueError(f"{path} has a header but no records, expected at least one")
    return MultipleChoiceData(contexts, starts, ends, labels, ids, path)


def _json_records(path: str, text: str):
    """``(where, record)`` pairs: one JSON document holding a list of records (its first
    character ``[``), else JSON lines (blank lines skipped)."""
    if text.lstrip()[:1] == "[":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} line {e.lineno} is not JSON ({e.msg}), expected a JSON list "
                             "of records or one JSON object a line") from None
        for i, rec in enumerate(records):
            yield f"{path} record {i}", rec
        return
    for i, raw in json_lines(text):
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} line {i} is not JSON ({e.msg}), expected one JSON object "
                             "a line") from None
        yield f"{path} line {i}", rec


def read_swag_jsonl(path) -> MultipleChoiceData:
    """JSON lines with SWAG's keys (module docstring), or one JSON list of such records.
    The first record's ``ending*`` keys set C."""
    path = os.fspath(path)
    text = _read_text(path)
    contexts, starts, ends, labels = [], [], [], []
    endings = first = None
    for where, rec in _json_records(path, text):
        if not isinstance(rec, dict):
            raise ValueError(f"{where} is a JSON {type(rec).__name__}, expected an object with "
                             "sent1, sent2, ending0.. and label")
        missing = [k for k in REQUIRED if k not in rec]
        if missing == ["label"]:
            raise _no_labels(where, list(rec))
        if missing:
            raise ValueError(f"{where} lacks the keys {missing} (found: "
                             f"{', '.join(map(repr, rec))}), expected sent1, sent2, ending0.. and label")
        names = [k for k in rec if _ENDING.fullmatch(k)]
        if endings is None:
            endings, first = _ending_columns(names, where), where[len(path) + 1:]
        elif set(names) != set(endings):
            raise ValueError(f"{where} has the endings {sorted(names)}, expected {len(endings)} "
                             f"endings ({', '.join(endings)}) as the first record ({first})")
        C = len(endings)
        for name in endings:
            _text(rec[name], name, where, allow_empty=False)
        contexts.append(_text(rec["sent1"], "sent1", where, allow_empty=True))
        starts.append(_text(rec["sent2"], "sent2", where, allow_empty=True))
        ends.append(tuple(rec[name] for name in endings))
        labels.append(_label(rec["label"], C, where))
    if not contexts:
        raise ValueError(f"{path} has no records, expected one JSON object a line")
    return MultipleChoiceData(contexts, starts, ends, labels, None, path)


def read_multiple_choice_file(path) -> MultipleChoiceData:
    """A SWAG file, CSV or JSON (lines): ``.csv`` and ``.jsonl``/``.json`` by extension,
    any other name by content (a first character ``{`` means JSON lines, ``[`` a JSON
    list of records)."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext == ".csv":
        return read_swag_csv(path)
    if ext in (".jsonl", ".json", ".ndjson"):
        return read_swag_jsonl(path)
    head = _read_text(os.fspath(path)).lstrip()[:1]
    if head in ("{", "["):
        return read_swag_jsonl(path)
    if head == "":
        raise ValueError(f"{os.fspath(path)} is in no known multiple-choice format, expected SWAG's "
                         "CSV (a header with sent1, sent2, ending0.., label) or JSON lines")
    return read_swag_csv(path)


# ------------------------------------------------------------------------------ built-in task
def name_words(name: str) -> str:
    """A function name as words: split at underscores and at lower-to-upper case changes
    (``getOptionalRelease`` -> ``get Optional Release``, ``http2time`` -> ``http2time``)."""
    parts = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", name).replace("_", " ")
    return " ".join(parts.split())


def first_sentence(paragraph: str) -> str:
    """The paragraph up to its first sentence end: ``.``, ``!`` or ``?`` followed by
    whitespace and a capital letter (so ``e.g. the`` does not end it); all of it if none."""
    return re.split(r"(?<=[.!?])\s+(?=[A-Z])", paragraph.strip(), maxsplit=1)[0]


def _public_module(module: str) -> bool:
    """No private part (leading underscore) and no test module."""
    return not any(p.startswith("_") or p.startswith("test") or p.endswith("_test") or
                   p in ("tests", "idle_test") for p in module.split("."))


def stdlib_multiple_choice(seed: int = 0, num_choices: int = 4, lead_in: str = "",
                           packages=None) -> MultipleChoiceData:
    """The built-in task: which of ``num_choices`` function names of one standard-library
    module a docstring describes.

    One record per documented public function or method (``stdlib_functions``) of a public,
    non-test module that has at least ``num_choices`` distinct names:

    * sent1: the first sentence of the docstring's first prose paragraph (its summary:
      the rest of the paragraph adds length more than clues);
    * sent2: ``lead_in``, by default empty, so the second segment is the name alone (a
      fixed lead-in such as ``def`` tells every choice apart no better and learns slower);
    * endings: the function's name and ``num_choices - 1`` other names of the same module,
      each written as words (``name_words``: ``get_all`` -> ``get all``), all distinct; a
      name shared by several functions (methods of several classes) is drawn as a
      distractor with a weight of its number of functions, as often as it is an answer,
      so that no choice can be told right from its name alone;
    * label: the position of the function's own name.

    The distractors and the position are drawn by ``np.random.default_rng([seed,
    crc32(module:qualname)])``: a record depends only on its function, the module's names
    and the seed. ids are ``module:qualname``.
    """
    from .stdlib_functions import stdlib_functions
    by_module: dict = {}
    for f in stdlib_functions(packages):
        if _public_module(f.module) and f.paragraphs and f.paragraphs[0].strip():
            by_module.setdefault(f.module, []).append(f)
    contexts, starts, endings, labels, ids = [], [], [], [], []
    for module in sorted(by_module):
        funcs = by_module[module]
        count = Counter(name_words(f.name) for f in funcs)       # several classes' "close"
        names = sorted(count)
        if len(names) < num_choices:
            continue
        for f in funcs:
            key = f"{module}:{f.qualname}"
            rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
            true = name_words(f.name)
            others = [n for n in names if n != true]
            # a name is drawn as often as it is the answer (its count of functions), so
            # that how common a name is tells nothing about whether it is the right one
            weight = np.array([count[n] for n in others], dtype=np.float64)
            draw = rng.choice(len(others), num_choices - 1, replace=False, p=weight / weight.sum())
            picked = [others[i] for i in draw]
            label = int(rng.integers(num_choices))
            picked.insert(label, true)
            contexts.append(first_sentence(f.paragraphs[0]))
            starts.append(lead_in)
            endings.append(tuple(picked))
            labels.append(label)
            ids.append(key)
    return MultipleChoiceData(contexts, starts, endings, labels, ids,
                              "the built-in task (which function of a module a docstring describes)")


def _module_of(data: MultipleChoiceData, i: int) -> str:
    return data.ids[i].split(":")[0]


# ------------------------------------------------------------------------------ the family
class MultipleChoiceFamily(Family):
    """SWAG-style multiple choice on ``BertForMultipleChoice``, scored by accuracy."""
    name = "multiple-choice"
    model_class = BertForMultipleChoice
    metric = "acc"
    default_seq_len = 128
    lead_in = ""                          # the built-in task's sent2

    # -------------------------------------------------------------- data
    def read(self, path, options: TaskOptions | None = None) -> MultipleChoiceData:
        return read_multiple_choice_file(path)

    def builtin(self, seed: int = 0):
        """``(train, test)``: the built-in task split by module (about 20% held out)."""
        from .stdlib_functions import split_by_group
        data = stdlib_multiple_choice(seed=seed, lead_in=self.lead_in)
        train, test = split_by_group(range(len(data)), lambda i: _module_of(data, i),
                                     test_fraction=0.2, seed=seed)
        return data.subset(train), data.subset(test)

    def split(self, data: MultipleChoiceData, seed: int = 0):
        """``(train, test)``: a random 20% of the records held out (at least one each side),
        by ``np.random.default_rng(seed)``; each side keeps the file's order."""
        n = len(data)
        if n < 2:
            raise ValueError(f"{data.source} has {n} record(s), expected at least 2 to split "
                             "into training and held-out records (or give a held-out file)")
        perm = np.random.default_rng(seed).permutation(n)
        n_test = min(max(1, round(0.2 * n)), n - 1)
        test = np.sort(perm[:n_test])
        train = np.sort(perm[n_test:])
        return data.subset(train), data.subset(test)

    def prepare(self, train: MultipleChoiceData) -> None:
        self.num_choices = train.num_choices

    # -------------------------------------------------------------- encoding
    def encode(self, data: MultipleChoiceData, tokenizer, seq_len: int,
               options: TaskOptions | None = None) -> Encoded:
        """(N, C, S) ``input_ids``, ``token_type_ids``, ``attention_mask`` (int64): choice c
        of record i is ``[CLS] sent1 [SEP] sent2 ending_c [SEP]``, cut longest first to
        ``seq_len`` tokens and padded to it; ``labels`` (N,) int64."""
        if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 3:
            raise ValueError(f"seq_len={seq_len!r} is invalid, expected an integer >= 3 "
                             "([CLS] context [SEP] ending [SEP])")
        N, C = len(data), data.num_choices
        if N == 0:
            raise ValueError(f"{data.source} has no records, expected at least one to encode")
        firsts = [data.contexts[i] for i in range(N) for _ in range(C)]
        seconds = [" ".join(p for p in (data.starts[i].strip(), ending.strip()) if p)
                   for i in range(N) for ending in data.endings[i]]
        enc = tokenizer(firsts, seconds, padding="max_length", truncation=True,
                        max_length=int(seq_len))
        arrays = {k: v.reshape(N, C, int(seq_len)) for k, v in enc.items()}
        arrays["labels"] = np.asarray(data.labels, dtype=np.int64)
        return Encoded(arrays, np.arange(N, dtype=np.int64), dict(num_choices=C))

    # -------------------------------------------------------------- Trainer protocol
    def metrics(self, out, batch) -> dict:
        """Sums over the batch: examples, loss, correct answers, real tokens."""
        pred = to_numpy(out.logits).argmax(axis=-1)                       # (B,)
        labels = to_numpy(batch["labels"])
        B = len(labels)
        return dict(examples=B, loss=float(out.loss) * B, correct=float((pred == labels).sum()),
                    tokens=float(to_numpy(batch["attention_mask"]).sum()))

    def summarize(self, m: dict) -> dict:
        n = max(m["examples"], 1)
        return dict(loss=m["loss"] / n, acc=m["correct"] / n)

    # -------------------------------------------------------------- final evaluation
    def outputs(self, out, batch) -> dict:
        return dict(logits=to_numpy(out.logits))                          # (B, C) scores

    def evaluate(self, data: MultipleChoiceData, encoded: Encoded, outputs: dict,
                 options: TaskOptions | None = None):
        """``(metrics, predictions)``: ``acc`` = mean of [argmax_c s_c == label];
        ``baseline_acc`` = 1/C (a guess); ``majority_acc`` = the accuracy of always
        answering the most frequent right position. predictions: (N,) the chosen endings."""
        logits = np.stack([np.asarray(r, dtype=np.float64) for r in outputs["logits"]]) \
            if len(outputs.get("logits", [])) else np.zeros((0, data.num_choices))
        N, C = len(data), data.num_choices
        if logits.shape != (N, C):
            raise ValueError(f"outputs['logits'] has shape {logits.shape}, expected {(N, C)} "
                             "(one score per record and ending)")
        pred = logits.argmax(axis=-1).astype(np.int64)
        labels = np.asarray(data.labels, dtype=np.int64)
        counts = np.bincount(labels, minlength=C)
        metrics = dict(acc=float((pred == labels).mean()) if N else 0.0,
                       baseline_acc=1.0 / C,
                       majority_acc=float(counts.max() / N) if N else 0.0)
        return metrics, pred

    def write_predictions(self, out_dir: str, data: MultipleChoiceData, encoded: Encoded,
                          predictions, options: TaskOptions | None = None) -> list:
        """``out_dir/predictions.csv``: a header ``index,prediction`` then one line a
        record: its id (see ``MultipleChoiceData``) and the chosen ending's index."""
        pred = np.asarray(predictions)
        if pred.shape != (len(data),):
            raise ValueError(f"predictions has shape {pred.shape}, expected ({len(data)},) "
                             "(one ending index per record)")
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, "predictions.csv")
        with open(path, "w", encoding="utf-8", newline="") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(["index", "prediction"])
            for i, p in zip(data.ids, pred):
                w.writerow([i, int(p)])
        return [path]
