"""Fine-tuning data: labeled text (pairs) for sequence classification.

A classification data set is N examples, each a text (or a text pair, for tasks such as
entailment or paraphrase) and one class label:

    texts        list of N strings
    text_pairs   list of N strings, or None for single-text tasks
    labels       (N,) int64 class ids in [0, C)
    label_names  C strings: label_names[k] is the name of class k

``read_classification_file`` reads such a set from CSV/TSV (with a header) or JSON lines.
``stdlib_classification`` builds a real one with no download: "which standard-library
package does this docstring belong to?", from the first paragraphs of the docstrings of
a fixed list of packages. ``train_test_split`` splits a set deterministically, class by
class (stratified), so both parts keep the class proportions.

Labels in a file are mapped to ids by one rule:

* If every label is an integer (a JSON integer, or a CSV field such as ``"2"``), the
  integers *are* the class ids, so a file labeled 0/1 keeps its meaning (0 stays
  negative, say). They must be >= 0; the classes are ``0 .. max``, named ``"0"``, ``"1"``,
  ..., and a class id no example uses is allowed (it simply has no examples).
* Otherwise every label is read as a name (integers too, as their decimal text), and the
  ids follow the sorted order of the names: ``["neg", "pos"]`` -> 0, 1.

Either way at least two distinct labels must occur: a one-class set cannot be learnt.
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
from .io import read_utf8_text

_INT = re.compile(r"[+-]?\d+")


@dataclass
class ClassificationData:
    """Texts (and optional second texts) with int64 class ids; see the module docstring."""
    texts: list
    text_pairs: list | None
    labels: np.ndarray                      # (N,) int64
    label_names: list

    def __post_init__(self):
        self.labels = np.asarray(self.labels)
        if self.labels.dtype != np.int64 or self.labels.ndim != 1:
            raise ValueError(f"labels has dtype {self.labels.dtype} and shape {self.labels.shape}, "
                             "expected a 1-D int64 array")
        n = len(self.texts)
        if self.labels.shape[0] != n:
            raise ValueError(f"labels has {self.labels.shape[0]} entries for {n} texts, "
                             "expected one per text")
        if self.text_pairs is not None and len(self.text_pairs) != n:
            raise ValueError(f"text_pairs has {len(self.text_pairs)} entries for {n} texts, "
                             "expected one per text or None")
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
        return ClassificationData([self.texts[i] for i in idx],
                                  None if self.text_pairs is None else [self.text_pairs[i] for i in idx],
                                  self.labels[idx], list(self.label_names))


# ----------------------------------------------------------------------------- files

def _labels_to_ids(raw: list, where: str):
    """Map raw labels (str or int) to (ids int64, label_names) by the module's rule."""
    as_ints = [int(v) if isinstance(v, int) else int(v.strip()) if _INT.fullmatch(v.strip()) else None
               for v in raw]
    if all(v is not None for v in as_ints):
        if min(as_ints) < 0:
            raise ValueError(f"{where} has the integer label {min(as_ints)}, expected integer "
                             "labels >= 0 (they are used as class ids)")
        ids = np.asarray(as_ints, dtype=np.int64)
        names = [str(k) for k in range(int(ids.max()) + 1)]
        distinct = len(set(as_ints))
    else:
        text = [str(v).strip() if isinstance(v, str) else str(v) for v in raw]
        names = sorted(set(text))
        index = {name: k for k, name in enumerate(names)}
        ids = np.asarray([index[t] for t in text], dtype=np.int64)
        distinct = len(names)
    if distinct < 2:
        raise ValueError(f"{where} has {distinct} distinct label(s) {sorted(set(map(str, raw)))}, "
                         "expected at least 2 classes")
    return ids, names


def _check_text_value(value, file, line, column):
    if not isinstance(value, str):
        raise ValueError(f"{file!r} line {line}: {column!r} is {type(value).__name__} {value!r}, "
                         "expected a string")
    if not value.strip():
        raise ValueError(f"{file!r} line {line}: {column!r} is empty, expected a non-empty text")
    return value


def _read_delimited(file, text, delimiter, text_column, text_pair_column, label_column):
    # newline="": only \n, \r\n and \r end a row (str.splitlines would also cut at \x85, \u2028, ...)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = next(reader, None)
    while header is not None and not any(h.strip() for h in header):
        header = next(reader, None)                 # blank lines before the header
    if header is None:
        raise ValueError(f"classification file {file!r} is empty, expected a header line "
                         f"with the columns {text_column!r} and {label_column!r}")
    header = [h.strip() for h in header]
    header_line = reader.line_num
    if len(set(header)) != len(header):
        raise ValueError(f"{file!r} line {header_line}: the header {header} repeats a column name, "
                         "expected unique names")
    for col in (text_column, label_column):
        if col not in header:
            raise ValueError(f"{file!r} line {header_line}: no column {col!r} in the header {header}, "
                             f"expected columns {text_column!r} and {label_column!r}")
    has_pair = text_pair_column is not None and text_pair_column in header
    it, il = header.index(text_column), header.index(label_column)
    ip = header.index(text_pair_column) if has_pair else None
    texts, pairs, raw = [], [], []
    for row in reader:
        if not any(f.strip() for f in row):
            continue                                # blank line
        line = reader.line_num
        if len(row) != len(header):
            raise ValueError(f"{file!r} line {line}: {len(row)} fields, expected {len(header)} "
                             f"as in the header {header}")
        texts.append(_check_text_value(row[it], file, line, text_column))
        if has_pair:
            pairs.append(_check_text_value(row[ip], file, line, text_pair_column))
        if not row[il].strip():
            raise ValueError(f"{file!r} line {line}: {label_column!r} is empty, expected a label")
        raw.append(row[il])
    return texts, (pairs if has_pair else None), raw


def _read_jsonl(file, text, text_column, text_pair_column, label_column):
    texts, pairs, raw = [], [], []
    pair_lines, no_pair_line = [], None
    for line, content in enumerate(text.split("\n"), start=1):   # JSON strings may hold \u2028
        if not content.strip():
            continue
        try:
            obj = json.loads(content)
        except json.JSONDecodeError as e:
            raise ValueError(f"{file!r} line {line} is not valid JSON ({e.msg} at column {e.colno}), "
                             "expected one JSON object per line") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{file!r} line {line} is a JSON {type(obj).__name__}, expected an object "
                             f"with the keys {text_column!r} and {label_column!r}")
        for key in (text_column, label_column):
            if key not in obj:
                raise ValueError(f"{file!r} line {line}: no key {key!r} in the object (keys "
                                 f"{sorted(obj)}), expected {text_column!r} and {label_column!r}")
        texts.append(_check_text_value(obj[text_column], file, line, text_column))
        if text_pair_column is not None and text_pair_column in obj:
            pairs.append(_check_text_value(obj[text_pair_column], file, line, text_pair_column))
            pair_lines.append(line)
        elif no_pair_line is None:
            no_pair_line = line
        label = obj[label_column]
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise ValueError(f"{file!r} line {line}: {label_column!r} is {type(label).__name__} "
                             f"{label!r}, expected a string or an integer label")
        if isinstance(label, str) and not label.strip():
            raise ValueError(f"{file!r} line {line}: {label_column!r} is empty, expected a label")
        raw.append(label)
    if pair_lines and no_pair_line is not None:
        raise ValueError(f"{file!r} line {no_pair_line}: no key {text_pair_column!r}, but line "
                         f"{pair_lines[0]} has one, expected it on every line or on none")
    return texts, (pairs if pair_lines else None), raw


def read_classification_file(path, text_column: str = "text", text_pair_column: str | None = "text_pair",
                             label_column: str = "label") -> ClassificationData:
    """Read labeled texts from a UTF-8 file, chosen by extension:

    * ``.csv`` (comma) or ``.tsv`` (tab): a header line naming the columns, then one example
      per row (quoted fields may hold delimiters and line breaks, as the ``csv`` module reads
      them); blank lines are skipped.
    * ``.jsonl``, ``.ndjson`` or ``.json``: JSON lines, one object per line; blank lines are
      skipped.

    ``text_column`` and ``label_column`` must be present. ``text_pair_column`` is optional:
    when the file has it, every example must have a non-empty second text, and
    ``text_pairs`` is filled; otherwise ``text_pairs`` is None (pass None to ignore such a
    column). Labels become ids as described in the module docstring.

    Raises ValueError naming the file (and the line, for a bad line): missing file, unknown
    extension, undecodable bytes, empty file, missing column or key, wrong field count, empty
    text or label, invalid JSON, a line that is not an object, fewer than 2 classes.
    """
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
        texts, pairs, raw = _read_delimited(file, text, "," if ext == ".csv" else "\t",
                                            text_column, text_pair_column, label_column)
    else:
        texts, pairs, raw = _read_jsonl(file, text, text_column, text_pair_column, label_column)
    if not texts:
        raise ValueError(f"classification file {file!r} has no examples, expected at least one "
                         "per class after the header" if ext in (".csv", ".tsv") else
                         f"classification file {file!r} has no examples")
    labels, names = _labels_to_ids(raw, f"classification file {file!r}")
    return ClassificationData(texts, pairs, labels, names)


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
    kept package names in sorted order.

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
    for package in sorted(set(packages)):
        if not os.path.isdir(os.path.join(root, package)):
            continue
        texts = set()
        for f in stdlib_source_files(root, packages=[package]):
            for kind, _, doc in file_docstrings(f):
                if kind == "module":
                    continue
                text = first_paragraph(doc)
                if len(text.split()) >= min_words:
                    texts.add(text)
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
                              np.asarray(labels, dtype=np.int64)[order], kept)


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
