"""Fine-tuning data: CSV/TSV/JSON-lines readers, the label rule, the stdlib classification
task and the stratified split."""
import json
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minibert.finetune_data import (
    STDLIB_CLASSIFICATION_PACKAGES,
    ClassificationData,
    read_classification_file,
    stdlib_classification,
    train_test_split,
)

DATA = os.path.join(os.path.dirname(__file__), "data")


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def _jsonl(path, rows):
    return _write(path, "".join(json.dumps(r) + "\n" for r in rows))


# ----------------------------------------------------------------------------- readers

def test_csv_with_text_pair():
    data = read_classification_file(os.path.join(DATA, "clf.csv"))
    assert len(data) == 6 and data.num_labels == 2
    assert data.label_names == ["contradiction", "entailment"]          # sorted names
    assert data.labels.dtype == np.int64
    assert data.labels.tolist() == [1, 0, 1, 0, 1, 0]
    assert data.texts[2] == "Kids play in the park, laughing."        # quoted comma kept
    assert data.text_pairs[1] == "Nobody is reading."


def test_jsonl_integer_labels_without_pair():
    data = read_classification_file(os.path.join(DATA, "clf.jsonl"))
    assert data.text_pairs is None
    assert data.labels.tolist() == [1, 0, 1, 0, 1]                    # the blank line skipped
    assert data.label_names == ["0", "1"]
    assert data.texts[1] == "Terrible plot and worse acting."


def test_csv_without_pair_and_tsv(tmp_path):
    csv_file = _write(tmp_path / "a.csv", 'label,text\npos,"good, really"\n\nneg,bad\nneutral,meh\n')
    data = read_classification_file(csv_file)
    assert data.text_pairs is None
    assert data.label_names == ["neg", "neutral", "pos"]
    assert data.labels.tolist() == [2, 0, 1]
    assert data.texts == ["good, really", "bad", "meh"]
    tsv_file = _write(tmp_path / "b.tsv", "sentence\tother\ty\nA b, c.\tD e.\t1\nF g.\tH i.\t3\n")
    data = read_classification_file(tsv_file, text_column="sentence", text_pair_column="other",
                                    label_column="y")
    assert data.texts == ["A b, c.", "F g."] and data.text_pairs == ["D e.", "H i."]
    # integer labels are class ids as given: classes 0..3, two of them unused
    assert data.labels.tolist() == [1, 3] and data.label_names == ["0", "1", "2", "3"]
    ignored = read_classification_file(tsv_file, text_column="sentence", text_pair_column=None,
                                       label_column="y")
    assert ignored.text_pairs is None


def test_jsonl_with_pair_and_mixed_labels(tmp_path):
    f = _jsonl(tmp_path / "p.jsonl", [{"text": "a", "text_pair": "b", "label": "yes"},
                                      {"text": "c", "text_pair": "d", "label": 2},
                                      {"text": "e", "text_pair": "f", "label": "yes"}])
    data = read_classification_file(f)
    assert data.text_pairs == ["b", "d", "f"]
    # not all integers: every label is a name, sorted as text ("2" < "yes")
    assert data.label_names == ["2", "yes"] and data.labels.tolist() == [1, 0, 1]
    # CRLF line ends, and a raw U+2028 inside a JSON string is not a line end
    raw = '{"text": "one\u2028two", "label": "x"}\r\n{"text": "three\x85", "label": "y"}\r\n'
    data = read_classification_file(_write(tmp_path / "u.jsonl", raw))
    assert data.texts == ["one\u2028two", "three\x85"]


@pytest.mark.parametrize("name, content, match", [
    ("empty.csv", "", "is empty"),
    ("blank.jsonl", "\n \n", "is empty"),
    ("header.csv", "text,label\n", "has no examples"),
    ("nocol.csv", "sentence,label\na,0\nb,1\n", r"line 1: no column 'text'"),
    ("nolabel.jsonl", '{"text": "a", "label": 0}\n{"text": "b"}\n', r"line 2: no key 'label'"),
    ("emptytext.csv", "text,label\nfine,0\n  ,1\n", r"line 3: 'text' is empty"),
    ("emptypair.csv", "text,text_pair,label\na,b,0\nc,,1\n", r"line 3: 'text_pair' is empty"),
    ("emptylabel.csv", "text,label\na,0\nb, \n", r"line 3: 'label' is empty"),
    ("fields.csv", "text,label\na,0\nb,1,extra\n", r"line 3: 3 fields, expected 2"),
    ("dup.csv", "text,label,text\na,0,b\n", "repeats a column"),
    ("badjson.jsonl", '{"text": "a", "label": 0}\n{"text": "b", label: 1}\n', r"line 2 is not valid JSON"),
    ("list.jsonl", '["a", 0]\n', r"line 1 is a JSON list, expected an object"),
    ("numtext.jsonl", '{"text": 5, "label": 0}\n', r"line 1: 'text' is int 5, expected a string"),
    ("floatlabel.jsonl", '{"text": "a", "label": 0.5}\n', "expected a string or an integer label"),
    ("pairs.jsonl", '{"text": "a", "text_pair": "b", "label": 0}\n{"text": "c", "label": 1}\n',
     r"line 2: no key 'text_pair', but line 1 has one"),
    ("oneclass.csv", "text,label\na,x\nb,x\n", r"1 distinct label\(s\) \['x'\], expected at least 2"),
    ("negative.jsonl", '{"text": "a", "label": -1}\n{"text": "b", "label": 1}\n', "labels >= 0"),
    ("notes.txt", "text,label\n", "extension '.txt'"),
])
def test_reader_errors(tmp_path, name, content, match):
    f = _write(tmp_path / name, content)
    with pytest.raises(ValueError, match=match) as err:
        read_classification_file(f)
    assert name in str(err.value)


def test_reader_missing_and_undecodable(tmp_path):
    with pytest.raises(ValueError, match="missing.csv.*does not exist"):
        read_classification_file(tmp_path / "missing.csv")
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("text,label\nok,0\ncaf\u00e9,1\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.csv.*line 3.*expected UTF-8"):
        read_classification_file(bad)


@given(st.lists(st.tuples(st.text(min_size=1).filter(str.strip), st.sampled_from(["b", "a", "c"])),
                min_size=1, max_size=8))
def test_csv_round_trip(tmp_path_factory, rows):
    """Whatever the text (commas, quotes, line breaks), the csv module's quoting brings it back;
    names map to ids by sorted order."""
    import csv
    path = tmp_path_factory.mktemp("rt") / "x.csv"
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows(rows)
    if len({label for _, label in rows}) < 2:
        with pytest.raises(ValueError, match="expected at least 2 classes"):
            read_classification_file(path)
        return
    data = read_classification_file(path)
    assert data.texts == [t for t, _ in rows]
    assert [data.label_names[k] for k in data.labels] == [label for _, label in rows]
    assert data.label_names == sorted({label for _, label in rows})


def test_classification_data_checks():
    with pytest.raises(ValueError, match="labels has 1 entries for 2 texts"):
        ClassificationData(["a", "b"], None, np.array([0], dtype=np.int64), ["x", "y"])
    with pytest.raises(ValueError, match="expected 0 <= label < 2"):
        ClassificationData(["a"], None, np.array([2], dtype=np.int64), ["x", "y"])
    with pytest.raises(ValueError, match="int64"):
        ClassificationData(["a"], None, np.array([0.0]), ["x", "y"])


# ----------------------------------------------------------------------------- stdlib task

@pytest.fixture(scope="module")
def stdlib_task():
    return stdlib_classification(seed=0)


def test_stdlib_classification(stdlib_task):
    data = stdlib_task
    assert data.num_labels >= 6
    assert set(data.label_names) <= set(STDLIB_CLASSIFICATION_PACKAGES)
    assert data.label_names == sorted(data.label_names)
    counts = np.bincount(data.labels, minlength=data.num_labels)
    assert (counts == counts[0]).all() and 50 <= counts[0] <= 100        # balanced, capped
    assert len(set(data.texts)) == len(data.texts)                       # deduplicated
    assert all(len(t.split()) >= 5 and "\n" not in t for t in data.texts)
    assert data.text_pairs is None
    # shuffled: the first 20 examples are not all one class
    assert len(set(data.labels[:20].tolist())) > 1


def test_stdlib_classification_deterministic(stdlib_task):
    again = stdlib_classification(seed=0)
    assert again.texts == stdlib_task.texts and np.array_equal(again.labels, stdlib_task.labels)
    other = stdlib_classification(seed=1)
    assert other.label_names == stdlib_task.label_names
    assert set(other.texts) != set(stdlib_task.texts)
    # with a higher floor the smaller packages are left out by the stated rule
    fewer = stdlib_classification(seed=0, min_per_class=150, max_per_class=150)
    assert 2 <= fewer.num_labels < stdlib_task.num_labels
    assert (np.bincount(fewer.labels) == 150).all()
    with pytest.raises(ValueError, match="expected at least 2 packages"):
        stdlib_classification(packages=["asyncio", "no_such_package"])
    with pytest.raises(ValueError, match="max_per_class=0"):
        stdlib_classification(max_per_class=0)


def test_train_test_split(stdlib_task):
    train, test = train_test_split(stdlib_task, test_fraction=0.25, seed=3)
    assert len(train) + len(test) == len(stdlib_task)
    assert not set(train.texts) & set(test.texts)
    assert train.label_names == test.label_names == stdlib_task.label_names
    per_class = np.bincount(stdlib_task.labels)
    assert np.array_equal(np.bincount(test.labels), np.round(per_class * 0.25).astype(int))
    again = train_test_split(stdlib_task, test_fraction=0.25, seed=3)[1]
    assert again.texts == test.texts
    assert train_test_split(stdlib_task, test_fraction=0.25, seed=4)[1].texts != test.texts
    # the original order is kept within each part
    index = {t: i for i, t in enumerate(stdlib_task.texts)}
    assert [index[t] for t in test.texts] == sorted(index[t] for t in test.texts)


def test_train_test_split_small_classes():
    data = ClassificationData(list("abcdefg"), None, np.array([0, 0, 1, 1, 1, 2, 0], dtype=np.int64),
                              ["x", "y", "z"])
    train, test = train_test_split(data, test_fraction=0.1, seed=0)
    # classes of 3 examples: round(0.3) = 0, raised to 1; the one-example class stays in train
    assert sorted(test.labels.tolist()) == [0, 1]
    assert 2 in train.labels.tolist()
    for bad in (0.0, 1.0, -0.5, True):
        with pytest.raises(ValueError, match="test_fraction"):
            train_test_split(data, test_fraction=bad)
