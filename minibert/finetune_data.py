"""Fine-tuning data: labeled text (pairs) for sequence classification and regression.

A classification data set is N examples, each a text (or a text pair, for tasks such as
entailment or paraphrase) and one class label:

    texts        list of N strings
    text_pairs   list of N strings, or None for single-text tasks
    labels       (N,) int64 class ids in [0, C)
    label_names  C strings: label_names[k] is the name of class k

``read_classification_file`` reads such a set from CSV, TSV (as GLUE publishes its tasks:
no quote processing; a header line, or column indexes for a file without one) or JSON
lines; ``read_regression_file`` reads float scores instead (``RegressionData``, STS-B).
``stdlib_classification`` builds a real one with no download: "which standard-library
package does this docstring belong to?", from the first paragraphs of the docstrings of
a fixed list of packages, each example's module in ``groups``. ``train_test_split`` splits
a set deterministically, class by class (stratified), so both parts keep the class
proportions; ``group_split`` also keeps every module on one side.

Labels in a file are mapped to ids by one rule:

* If every label is an integer (a JSON integer, or a CSV field such as ``"2"``), the
  integers *are* the class ids, so a file labeled 0/1 keeps its meaning (0 stays
  negative, say). They must be >= 0; the classes are ``0 .. max``, named ``"0"``, ``"1"``,
  ..., and a class id no example uses is allowed (it simply has no examples).
* Otherwise every label is read as a name (integers too, as their decimal text), and the
  ids follow the sorted order of the names: ``["neg", "pos"]`` -> 0, 1.

Either way at least two distinct labels must occur: a one-class set cannot be learnt.
A ``label_list`` (``read_classification_file``) replaces this rule with names in a fixed
order (MNLI's three labels, say).
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass

import numpy as np

from .corpora import docstring_paragraphs, file_docstrings, stdlib_root, stdlib_source_files
from .io import json_lines, read_utf8_text

_INT = re.compile(r"[+-]?\d+")


def _check_optional_columns(data, n: int) -> None:
    """``text_pairs`` and ``groups``: None, or one entry per text."""
    for name in ("text_pairs", "groups"):
        column = getattr(data, name)
        if column is not None and len(column) != n:
            raise ValueError(f"{name} has {len(column)} entries for {n} texts, "
                             "expected one per text or None")


def _take(column, idx):
    """The entries of an optional column (a list or None) at ``idx``."""
    return None if column is None else [column[i] for i in idx]


@dataclass
class ClassificationData:
    """Texts (and optional second texts) with int64 class ids; see the module docstring.
    ``groups``: optional, one name per example of where it comes from (the built-in task:
    its module), for splits that keep each group on one side (``group_split``)."""
    texts: list
    text_pairs: list | None
    labels: np.ndarray                      # (N,) int64
    label_names: list
    groups: list | None = None

    def __post_init__(self):
        self.labels = np.asarray(self.labels)
        if self.labels.dtype != np.int64 or self.labels.ndim != 1:
            raise ValueError(f"labels has dtype {self.labels.dtype} and shape {self.labels.shape}, "
                             "expected a 1-D int64 array")
        n = len(self.texts)
        if self.labels.shape[0] != n:
            raise ValueError(f"labels has {self.labels.shape[0]} entries for {n} texts, "
                             "expected one per text")
        _check_optional_columns(self, n)
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.label_names)):
            raise ValueError(f"labels has values in [{self.labels.min()}, {self.labels.max()}], "
                             f"expected 0 <= label < {len(self.label_names)} (len(label_names))")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def subset(self, indices) -> ClassificationData:
        """The examples at ``indices`` (in that order), with the same label names."""
        idx = np.asarray(indices, dtype=np.int64)
        return ClassificationData(_take(self.texts, idx), _take(self.text_pairs, idx),
                                  self.labels[idx], list(self.label_names), _take(self.groups, idx))


# ----------------------------------------------------------------------------- files

def _label_list_names(label_list):
    names = [str(v).strip() for v in label_list]
    if len(names) < 1 or len(set(names)) != len(names) or not all(names):
        raise ValueError(f"label_list={list(label_list)!r} is invalid, expected distinct non-empty "
                         "label names")
    return names


def _labels_to_ids(raw: list, where: str, label_list=None, lines=None, min_labels: int = 2):
    """Map raw labels (str or int) to (ids int64, label_names) by the module's rule, or by
    ``label_list`` when given (see ``read_classification_file``). ``lines``: each label's
    line, for the messages."""
    lines = lines if lines is not None else [None] * len(raw)
    text = [str(v).strip() if isinstance(v, str) else str(v) for v in raw]
    as_ints = [int(v) if isinstance(v, int) else int(t) if _INT.fullmatch(t) else None
               for v, t in zip(raw, text)]
    if label_list is not None:
        names = _label_list_names(label_list)
        index = {name: k for k, name in enumerate(names)}
        if all(t in index for t in text):
            ids = [index[t] for t in text]
        elif all(v is not None and 0 <= v < len(names) for v in as_ints):
            ids = as_ints                                   # integer ids into label_list
        else:
            i = next(i for i, t in enumerate(text) if t not in index)
            at = f" {_at(lines[i])}" if lines[i] is not None else ""
            raise ValueError(f"{where}{at}: the label {text[i]!r} is not in label_list {names}, "
                             f"expected one of them (or every label an integer id 0..{len(names) - 1})")
        return np.asarray(ids, dtype=np.int64), names
    if all(v is not None for v in as_ints):
        if min(as_ints) < 0:
            raise ValueError(f"{where} has the integer label {min(as_ints)}, expected integer "
                             "labels >= 0 (they are used as class ids)")
        ids = np.asarray(as_ints, dtype=np.int64)
        names = [str(k) for k in range(int(ids.max()) + 1)]
        distinct = len(set(as_ints))
    else:
        names = sorted(set(text))
        index = {name: k for k, name in enumerate(names)}
        ids = np.asarray([index[t] for t in text], dtype=np.int64)
        distinct = len(names)
    if distinct < min_labels:
        raise ValueError(f"{where} has {distinct} distinct label(s) {sorted(set(map(str, raw)))}, "
                         f"expected at least {min_labels} classes")
    return ids, names


def _labels_to_floats(raw: list, where: str, lines: list) -> np.ndarray:
    """Regression targets: every label a finite number (a JSON number or a decimal text)."""
    out = np.empty(len(raw), dtype=np.float64)
    for i, (v, line) in enumerate(zip(raw, lines)):
        try:
            x = float(v.strip()) if isinstance(v, str) else float(v)
        except (TypeError, ValueError):
            x = None
        if isinstance(v, bool) or x is None or not np.isfinite(x):
            raise ValueError(f"{where} {_at(line)}: the label {v!r} is not a finite number, "
                             "expected a float score (regression)")
        out[i] = x
    return out


def _at(line) -> str:
    """"line 7" for a line number; a JSON array's "record 7" as it is."""
    return line if isinstance(line, str) else f"line {line}"


def _check_text_value(value, file, line, column):
    if not isinstance(value, str):
        raise ValueError(f"{file!r} {_at(line)}: {column!r} is {type(value).__name__} {value!r}, "
                         "expected a string")
    if not value.strip():
        raise ValueError(f"{file!r} {_at(line)}: {column!r} is empty, expected a non-empty text")
    return value


def _column_index(column):
    """A column option as a 0-based index (an int, or a text of digits such as ``"3"``), or
    None when it is a name."""
    if isinstance(column, (int, np.integer)) and not isinstance(column, bool):
        return int(column)
    if isinstance(column, str) and column.strip().isdigit():
        return int(column.strip())
    return None


def _headerless_columns(file, text_column, text_pair_column, label_column):
    """The column indexes of a file without a header, or None when the options are names."""
    it, il = _column_index(text_column), _column_index(label_column)
    if it is None and il is None:
        return None
    if it is None or il is None:
        raise ValueError(f"{file!r}: text_column={text_column!r} and label_column={label_column!r} "
                         "mix a column index and a name, expected both indexes (a file without a "
                         "header line) or both names")
    ip = None if text_pair_column is None else _column_index(text_pair_column)
    if text_pair_column is not None and ip is None and text_pair_column != "text_pair":
        raise ValueError(f"{file!r}: text_pair_column={text_pair_column!r} is a name but the other "
                         "columns are indexes (a file without a header line), expected an index")
    return it, ip, il


def _read_delimited(file, text, delimiter, text_column, text_pair_column, label_column,
                    quoting=True):
    # newline="": only \n, \r\n and \r end a row (str.splitlines would also cut at \x85, \u2028, ...)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter,
                        quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE)
    indexes = _headerless_columns(file, text_column, text_pair_column, label_column)
    if indexes is not None:
        it, ip, il = indexes
        header, width = None, max(i for i in indexes if i is not None) + 1
        has_pair = ip is not None
        names = (f"column {it}", None if ip is None else f"column {ip}", f"column {il}")
    else:
        header = next(reader, None)
        while header is not None and not any(h.strip() for h in header):
            header = next(reader, None)                 # blank lines before the header
        if header is None:
            raise ValueError(f"classification file {file!r} is empty, expected a header line "
                             f"with the columns {text_column!r} and {label_column!r}")
        header = [h.strip() for h in header]
        header_line = reader.line_num
        if len(set(header)) != len(header):
            raise ValueError(f"{file!r} line {header_line}: the header {header} repeats a column "
                             "name, expected unique names")
        for col in (text_column, label_column):
            if col not in header:
                raise ValueError(f"{file!r} line {header_line}: no column {col!r} in the header "
                                 f"{header}, expected columns {text_column!r} and {label_column!r}")
        has_pair = text_pair_column is not None and text_pair_column in header
        it, il = header.index(text_column), header.index(label_column)
        ip = header.index(text_pair_column) if has_pair else None
        names = (text_column, text_pair_column, label_column)
    texts, pairs, raw, lines = [], [], [], []
    for row in reader:
        if not any(f.strip() for f in row):
            continue                                # blank line
        line = reader.line_num
        if header is not None and len(row) != len(header):
            raise ValueError(f"{file!r} line {line}: {len(row)} fields, expected {len(header)} "
                             f"as in the header {header}")
        if header is None and len(row) < width:
            raise ValueError(f"{file!r} line {line}: {len(row)} fields, expected at least {width} "
                             f"(the largest column index is {width - 1})")
        texts.append(_check_text_value(row[it], file, line, names[0]))
        if has_pair:
            pairs.append(_check_text_value(row[ip], file, line, names[1]))
        if not row[il].strip():
            raise ValueError(f"{file!r} line {line}: {names[2]!r} is empty, expected a label")
        raw.append(row[il])
        lines.append(line)
    return texts, (pairs if has_pair else None), raw, lines


def _json_records(file, text, ext):
    """``(line, object)`` for each record: JSON lines, or (a ``.json`` file whose content
    starts with ``[``) one JSON array of objects, numbered from 1 as its records."""
    if ext == ".json" and text.lstrip().startswith("["):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{file!r} is not valid JSON ({e.msg} at line {e.lineno}), expected "
                             "a JSON array of objects or one JSON object per line") from None
        if not isinstance(doc, list):
            raise ValueError(f"{file!r} is a JSON {type(doc).__name__}, expected an array of objects")
        return [(f"record {i}", obj) for i, obj in enumerate(doc, start=1)]
    records = []
    for line, content in json_lines(text):
        try:
            records.append((line, json.loads(content)))
        except json.JSONDecodeError as e:
            raise ValueError(f"{file!r} line {line} is not valid JSON ({e.msg} at column {e.colno}), "
                             "expected one JSON object per line") from None
    return records


def _read_jsonl(file, text, text_column, text_pair_column, label_column, float_labels=False):
    texts, pairs, raw, lines = [], [], [], []
    pair_lines, no_pair_line = [], None
    for line, obj in _json_records(file, text, os.path.splitext(file)[1].lower()):
        at = _at(line)
        if not isinstance(obj, dict):
            raise ValueError(f"{file!r} {at} is a JSON {type(obj).__name__}, expected an object "
                             f"with the keys {text_column!r} and {label_column!r}")
        for key in (text_column, label_column):
            if key not in obj:
                raise ValueError(f"{file!r} {at}: no key {key!r} in the object (keys "
                                 f"{sorted(obj)}), expected {text_column!r} and {label_column!r}")
        texts.append(_check_text_value(obj[text_column], file, line, text_column))
        if text_pair_column is not None and text_pair_column in obj:
            pairs.append(_check_text_value(obj[text_pair_column], file, line, text_pair_column))
            pair_lines.append(line)
        elif no_pair_line is None:
            no_pair_line = line
        label = obj[label_column]
        kinds = (str, int, float) if float_labels else (str, int)
        if isinstance(label, bool) or not isinstance(label, kinds):
            raise ValueError(f"{file!r} {at}: {label_column!r} is {type(label).__name__} "
                             f"{label!r}, expected " + ("a number (regression)" if float_labels
                                                        else "a string or an integer label"))
        if isinstance(label, str) and not label.strip():
            raise ValueError(f"{file!r} {at}: {label_column!r} is empty, expected a label")
        raw.append(label)
        lines.append(line)
    if pair_lines and no_pair_line is not None:
        raise ValueError(f"{file!r} {_at(no_pair_line)}: no key {text_pair_column!r}, but "
                         f"{_at(pair_lines[0])} has one, expected it on every line or on none")
    return texts, (pairs if pair_lines else None), raw, lines


def _read_table(path, text_column, text_pair_column, label_column, float_labels=False):
    """``(file, texts, pairs or None, raw labels, their lines)`` of a labeled-text file."""
    file = os.fspath(path)
    ext = os.path.splitext(file)[1].lower()
    if ext not in (".csv", ".tsv", ".jsonl", ".ndjson", ".json"):
        raise ValueError(f"classification file {file!r} has the extension {ext!r}, expected .csv, "
                         ".tsv, .jsonl, .ndjson or .json (JSON lines)")
    if not os.path.isfile(file):
        raise ValueError(f"classification file {file!r} does not exist")
    text = read_utf8_text(file, "classification file")
    if not text.strip():
        raise ValueError(f"classification file {file!r} is empty, expected a header and examples"
                         if ext in (".csv", ".tsv") else
                         f"classification file {file!r} is empty, expected one JSON object per line")
    if ext in (".csv", ".tsv"):
        # GLUE's TSVs hold bare '"' inside sentences and at the start of fields: a tab file
        # is read as GLUE's own scripts read it, tabs and line ends only, no quoting
        texts, pairs, raw, lines = _read_delimited(file, text, "," if ext == ".csv" else "\t",
                                                   text_column, text_pair_column, label_column,
                                                   quoting=ext == ".csv")
    else:
        texts, pairs, raw, lines = _read_jsonl(file, text, text_column, text_pair_column,
                                               label_column, float_labels)
    if not texts:
        raise ValueError(f"classification file {file!r} has no examples, expected at least one "
                         "per class after the header" if ext in (".csv", ".tsv") else
                         f"classification file {file!r} has no examples")
    return file, texts, pairs, raw, lines


def read_classification_file(path, text_column: str = "text", text_pair_column: str | None = "text_pair",
                             label_column: str = "label", label_list=None,
                             min_labels: int = 2) -> ClassificationData:
    """Read labeled texts from a UTF-8 file, chosen by extension (and content):

    * ``.csv`` (comma): a header line naming the columns, then one example per row (quoted
      fields may hold delimiters and line breaks, as the ``csv`` module reads them).
    * ``.tsv`` (tab): as GLUE publishes its tasks: one example per line, fields split at
      tabs, **no quote processing** (a ``"`` anywhere in a field, its start included, is
      text, as GLUE's own scripts read these files; a field cannot hold a tab or a line end).
    * ``.jsonl``, ``.ndjson`` or ``.json``: JSON lines, one object per line; a ``.json``
      file whose content starts with ``[`` is one JSON array of objects instead.

    Blank lines are skipped. ``text_column`` and ``label_column`` must be present.
    ``text_pair_column`` is optional: when the file has it, every example must have a
    non-empty second text, and ``text_pairs`` is filled; otherwise ``text_pairs`` is None
    (pass None to ignore such a column).

    **Files without a header line** (CoLA's TSVs: source, label, original label,
    sentence): give the columns as 0-based indexes, ints or texts of digits
    (``text_column=3, label_column=1``, on the command line ``--text-column 3``); then no
    line is read as a header. ``text_pair_column`` is an index too, or None (its default
    name ``"text_pair"`` then means no second text).

    Labels become ids as described in the module docstring, or, with ``label_list`` (the
    class names in id order, e.g. ``["contradiction", "entailment", "neutral"]`` to fix
    MNLI's order): each label is looked up by name in it, or, when every label is an
    integer in ``0 .. len(label_list) - 1``, used as the id; ``label_names`` is
    ``label_list``. A label outside ``label_list`` is an error naming it and its line.
    At least ``min_labels`` distinct labels must occur (without ``label_list``).

    Raises ValueError naming the file (and the line, for a bad line): missing file, unknown
    extension, undecodable bytes, empty file, missing column or key (listing those found),
    wrong field count, empty text or label, invalid JSON, a line that is not an object,
    too few classes, a label outside ``label_list``.
    """
    if label_list is not None:
        _label_list_names(label_list)                   # a bad option fails before reading
    file, texts, pairs, raw, lines = _read_table(path, text_column, text_pair_column, label_column)
    labels, names = _labels_to_ids(raw, f"classification file {file!r}", label_list, lines,
                                   min_labels)
    return ClassificationData(texts, pairs, labels, names)


@dataclass
class RegressionData:
    """Texts (and optional second texts) with one float score each (STS-B: 0 to 5);
    ``groups`` as ``ClassificationData``'s."""
    texts: list
    text_pairs: list | None
    labels: np.ndarray                      # (N,) float64
    groups: list | None = None

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=np.float64)
        n = len(self.texts)
        if self.labels.shape != (n,):
            raise ValueError(f"labels has shape {self.labels.shape} for {n} texts, expected ({n},)")
        _check_optional_columns(self, n)
        if not np.all(np.isfinite(self.labels)):
            raise ValueError("labels has a value that is not finite, expected finite scores")

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices) -> RegressionData:
        """The examples at ``indices`` (in that order)."""
        idx = np.asarray(indices, dtype=np.int64)
        return RegressionData(_take(self.texts, idx), _take(self.text_pairs, idx),
                              self.labels[idx], _take(self.groups, idx))


def read_regression_file(path, text_column: str = "text", text_pair_column: str | None = "text_pair",
                         label_column: str = "label") -> RegressionData:
    """Read texts (pairs) with float scores (STS-B: ``--text-column sentence1
    --text-pair-column sentence2 --label-column score``): the formats, columns and errors
    of ``read_classification_file``, but every label must be a finite number (an error
    names the line and the value)."""
    file, texts, pairs, raw, lines = _read_table(path, text_column, text_pair_column, label_column,
                                                 float_labels=True)
    return RegressionData(texts, pairs, _labels_to_floats(raw, f"regression file {file!r}", lines))


# ----------------------------------------------------------------------------- stdlib task

# Packages present in every CPython source tree from 3.10 on, each with 100+ distinct
# function/class docstrings on CPython 3.11 (http, the smallest, about 120).
STDLIB_CLASSIFICATION_PACKAGES = ("asyncio", "email", "http", "importlib", "logging",
                                  "multiprocessing", "unittest", "xml")


def first_paragraph(doc: str) -> str:
    """The first prose paragraph of a cleaned docstring (``docstring_paragraphs``), or ""."""
    paragraphs = docstring_paragraphs(doc)
    return paragraphs[0] if paragraphs else ""


def stdlib_classification(seed: int = 0, packages=STDLIB_CLASSIFICATION_PACKAGES,
                          max_per_class: int = 100, min_per_class: int = 50, min_words: int = 5,
                          root: str | None = None) -> ClassificationData:
    """The built-in fine-tuning task: which standard-library package a docstring comes from.

    For each package of ``packages`` (its ``*.py`` files, tests skipped, read with ``ast``
    by ``file_docstrings``), the candidates are the first paragraphs of its class, function
    and method docstrings (module docstrings left out: they often name their package) with
    at least ``min_words`` words. A text found in two packages is dropped (its label would be
    ambiguous); repeats within a package count once. A package with fewer than
    ``min_per_class`` candidates (or absent from this installation) is left out. Every kept
    class gets the same number of examples, ``min(max_per_class, smallest candidate count)``,
    drawn without replacement with ``np.random.default_rng(seed)`` from its candidates sorted
    by text, and the examples are returned shuffled with the same generator. Labels: the
    kept package names in sorted order. ``groups``: each example's module (``email.utils``;
    a text found in several modules of its package: the first in source order), so that
    ``group_split`` can hold out whole modules.

    Raises ValueError when fewer than two packages are left.
    """
    if isinstance(packages, str):
        raise TypeError(f"packages={packages!r} is a str, expected a list of package names")
    for name, v, low in (("max_per_class", max_per_class, 1), ("min_per_class", min_per_class, 1),
                         ("min_words", min_words, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{name}={v!r} is invalid, expected an integer >= {low}")
    root = root or stdlib_root()
    found: dict[str, set] = {}
    owner: dict[str, set] = {}
    module_of: dict[str, str] = {}          # text -> the first module (source order) holding it
    for package in sorted(set(packages)):
        if not os.path.isdir(os.path.join(root, package)):
            continue
        texts = set()
        for f in stdlib_source_files(root, packages=[package]):
            rel = os.path.relpath(f, root)[:-3].replace(os.sep, ".")
            module = rel[:-len(".__init__")] if rel.endswith(".__init__") else rel
            for kind, _, doc in file_docstrings(f):
                if kind == "module":
                    continue
                text = first_paragraph(doc)
                if len(text.split()) >= min_words:
                    texts.add(text)
                    module_of.setdefault(text, module)
        found[package] = texts
        for t in texts:
            owner.setdefault(t, set()).add(package)
    candidates = {p: sorted(t for t in texts if len(owner[t]) == 1) for p, texts in found.items()}
    kept = sorted(p for p, c in candidates.items() if len(c) >= min_per_class)
    if len(kept) < 2:
        counts = {p: len(c) for p, c in candidates.items()}
        raise ValueError(f"packages={list(packages)!r} give {counts} candidate docstrings under "
                         f"{root!r}, expected at least 2 packages with min_per_class={min_per_class}")
    per_class = min(max_per_class, min(len(candidates[p]) for p in kept))
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for k, p in enumerate(kept):
        pick = np.sort(rng.choice(len(candidates[p]), size=per_class, replace=False))
        texts += [candidates[p][i] for i in pick]
        labels += [k] * per_class
    order = rng.permutation(len(texts))
    return ClassificationData([texts[i] for i in order], None,
                              np.asarray(labels, dtype=np.int64)[order], kept,
                              [module_of[texts[i]] for i in order])


def train_test_split(data: ClassificationData, test_fraction: float = 0.2, seed: int = 0):
    """Split ``data`` into ``(train, test)``, stratified: within each class, a
    ``np.random.default_rng(seed)`` permutation puts ``round(n_c * test_fraction)`` examples
    in the test part, at least one and at most ``n_c - 1`` when the class has two or more
    (a class of one example goes to train). Both parts keep the original order of the
    examples and all the label names.
    """
    if not isinstance(data, ClassificationData):
        raise TypeError(f"data has type {type(data).__name__}, expected ClassificationData")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) \
            or not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction!r} is invalid, expected 0 < test_fraction < 1")
    rng = np.random.default_rng(seed)
    test = []
    for c in range(data.num_labels):
        idx = np.flatnonzero(data.labels == c)
        n = len(idx)
        if n < 2:
            continue
        n_test = min(max(int(round(n * test_fraction)), 1), n - 1)
        test += rng.permutation(idx)[:n_test].tolist()
    is_test = np.zeros(len(data), dtype=bool)
    is_test[test] = True
    return data.subset(np.flatnonzero(~is_test)), data.subset(np.flatnonzero(is_test))


def group_split(data, test_fraction: float = 0.2, seed: int = 0):
    """Split ``data`` (with ``groups``) into ``(train, test)`` so that no group (module) has
    examples on both sides, stratified by class as far as whole groups allow.

    Within each class, its groups are shuffled with ``np.random.default_rng(seed)`` and
    taken for test in that order, a group being skipped when it would bring the class's
    test count above ``1.5 x round(n_c x test_fraction)``, until the count reaches the
    target; a class whose groups are all too large gives its smallest one. A group whose
    examples span several classes goes to test only if all of them fit (so it is never on
    both sides). Both parts keep the original order of the examples.
    """
    if getattr(data, "groups", None) is None:
        raise ValueError("data has no groups, expected one group name per example")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) \
            or not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction!r} is invalid, expected 0 < test_fraction < 1")
    rng = np.random.default_rng(seed)
    groups = np.asarray(data.groups, dtype=object)
    labels = np.asarray(data.labels)
    test_groups: set = set()
    for c in np.unique(labels):
        in_c = labels == c
        names = sorted(set(groups[in_c]))
        if len(names) < 2:
            continue                                    # one module: the class stays in train
        size = {g: int(np.sum(in_c & (groups == g))) for g in names}
        target = max(int(round(in_c.sum() * test_fraction)), 1)
        n_test = sum(size[g] for g in names if g in test_groups)
        chosen = []
        for i in rng.permutation(len(names)):
            g = names[i]
            if n_test >= target:
                break
            if g in test_groups or n_test + size[g] > 1.5 * target:
                continue
            chosen.append(g)
            n_test += size[g]
        if not chosen and n_test == 0:
            chosen = [min(names, key=lambda g: (size[g], g))]
        if len(chosen) == len(names):
            chosen = chosen[:-1]                        # keep one module for training
        test_groups.update(chosen)
    is_test = np.array([g in test_groups for g in groups], dtype=bool)
    return data.subset(np.flatnonzero(~is_test)), data.subset(np.flatnonzero(is_test))
