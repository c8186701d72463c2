"""The multiple-choice family (SWAG): readers of the published layouts and their errors, the
[CLS] sent1 [SEP] sent2 ending [SEP] encoding, accuracy and predictions, the built-in task,
and a short training run end to end."""
import csv
import json
import os
import shutil

import numpy as np
import pytest

from minibert import BertForMultipleChoice
from minibert.basic_tokenizer import BasicTokenizer
from minibert.tasks import get_family
from minibert.tasks.base import Encoded, TaskOptions, predict, trim_batch
from minibert.tasks.multiple_choice import (
    MultipleChoiceData,
    MultipleChoiceFamily,
    first_sentence,
    name_words,
    read_multiple_choice_file,
    stdlib_multiple_choice,
)
from minibert.tokenization import BertTokenizer, write_vocab
from minibert.train import TrainConfig, Trainer
from tests.helpers import DATA, tiny_config

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CSV = os.path.join(DATA, "swag.csv")
JSONL = os.path.join(DATA, "swag.jsonl")
OPTS = TaskOptions()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A word-level vocabulary of the fixtures: every word is one token, so a row decodes
    back to its text exactly (lowercased, punctuation spaced)."""
    basic = BasicTokenizer(do_lower_case=True)
    words = set("yes no cat dog".split())
    for path in (CSV, JSONL):
        with open(path, encoding="utf-8") as fh:
            words |= set(basic.tokenize(fh.read()))
    path = tmp_path_factory.mktemp("mcvocab") / "vocab.txt"
    write_vocab(SPECIALS + sorted(words), path)
    return BertTokenizer(path)


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return str(p)


# ----------------------------------------------------------------------------- readers
def test_reads_swag_csv_as_published():
    d = read_multiple_choice_file(CSV)
    assert len(d) == 11 and d.num_choices == 4
    assert d.ids == list(range(11))                     # the unnamed index column
    assert d.contexts[0] == "A woman ties a red apron around her waist."
    assert d.starts[0] == "She"
    assert d.endings[3][1] == "steps off, clutching a worn leather bag."      # a quoted comma
    assert d.endings[8][3] == 'jumps off and walks on the water, "dry" as a bone.'  # "" quoting
    assert d.labels.tolist() == [0, 1, 2, 1, 3, 0, 1, 2, 0, 2, 1]
    assert d.labels.dtype == np.int64


def test_csv_without_index_column_and_other_extension(tmp_path):
    with open(CSV, encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    body = [[r[i] for i in (4, 5, 7, 8, 9, 10, 11)] for r in rows]   # sent1 sent2 ending0-3 label
    p = tmp_path / "swag.txt"                                       # chosen by content
    with open(p, "w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows(body)
    d, ref = read_multiple_choice_file(str(p)), read_multiple_choice_file(CSV)
    assert d.ids == list(range(11))                     # positions, as no index column
    assert (d.contexts, d.starts, d.endings) == (ref.contexts, ref.starts, ref.endings)
    assert d.labels.tolist() == ref.labels.tolist()


def test_reads_hugging_face_jsonl():
    d = read_multiple_choice_file(JSONL)
    assert len(d) == 10 and d.num_choices == 4
    assert d.starts[9] == ""                             # an empty sent2 is allowed
    assert d.endings[2][2] == "grips the seat as the bus lurches around a corner."
    assert d.labels.tolist() == [0, 1, 2, 0, 1, 2, 3, 1, 0, 3]
    assert d.ids == list(range(10))


def test_number_of_endings_comes_from_the_columns(tmp_path):
    p = write(tmp_path, "five.jsonl", "".join(
        json.dumps(dict(sent1=f"s{i}", sent2="He", label=4, **{f"ending{k}": f"e{k}" for k in range(5)}))
        + "\n" for i in range(3)))
    d = read_multiple_choice_file(p)
    assert d.num_choices == 5 and d.labels.tolist() == [4, 4, 4]
    two = write(tmp_path, "two.csv", "sent1,sent2,ending0,ending1,label\na,b,c,d,1\n")
    assert read_multiple_choice_file(two).num_choices == 2


@pytest.mark.parametrize("text, words", [
    # JSON lines: the first record sets C = 4; a fifth ending, a missing or an empty one is named
    ('{"sent1":"a","sent2":"b","ending0":"c","ending1":"d","ending2":"e","ending3":"f","label":0}\n'
     '\n{"sent1":"a","sent2":"b","ending0":"c","ending1":"d","ending2":"e","label":0}\n',
     ["line 3", "ending0', 'ending1', 'ending2']", "expected 4 endings", "(line 1)"]),
    ('{"sent1":"a","sent2":"b","ending0":"c","ending1":"d","ending2":"","label":0}\n',
     ["line 1", "ending2 is empty"]),
    ('{"sent1":"a","sent2":"b","ending0":"c","ending2":"d","label":0}\n',
     ["line 1", "['ending0', 'ending2']", "without a gap"]),
    ('{"sent1":"a","sent2":"b","ending0":"c","ending1":"d","label":2}\n', ["line 1", "label=2", "< 2"]),
    ('{"sent1":"a","sent2":"b","ending0":"c","ending1":"d","label":"x"}\n', ["label='x'", "integer"]),
    ('{"sent1":"a","sent2":"b","ending0":"c","ending1":"d","label":-1}\n', ["label=-1", "unlabeled"]),
    ('{"sent1":"a","ending0":"c","ending1":"d","label":1}\n', ["lacks the keys ['sent2']", "'sent1'"]),
    ('{"sent1":"a","sent2":"b","ending0":"c","ending1":"d"}\n', ["no label column", "test"]),
    ('{"sent1":"a","sent2":"b","ending0":"c","ending1":"d","label":1}\n[1]\n', ["line 2", "JSON list"]),
    ('{"sent1":"a",\n', ["line 1", "not JSON"]),
])
def test_jsonl_errors_name_the_line_and_the_expectation(tmp_path, text, words):
    with pytest.raises(ValueError) as e:
        read_multiple_choice_file(write(tmp_path, "bad.jsonl", text))
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_fixture_with_a_fifth_ending_is_an_error():
    with pytest.raises(ValueError, match=r"swag_bad_endings.jsonl line 3 has the endings .*'ending4'.*"
                                         r"expected 4 endings"):
        read_multiple_choice_file(os.path.join(DATA, "swag_bad_endings.jsonl"))


def test_unlabeled_test_file_is_an_error():
    with pytest.raises(ValueError, match=r"swag_test_unlabeled.csv has no label column \(found: '', "
                                         r"'video-id'.*SWAG's test.csv"):
        read_multiple_choice_file(os.path.join(DATA, "swag_test_unlabeled.csv"))


@pytest.mark.parametrize("text, words", [
    ("sent1,sent2,ending0,ending1,label\na,b,c,d,1\ne,f,g,,0\n", ["line 3", "ending1 is empty"]),
    ("sent1,sent2,ending0,ending1,label\na,b,c,d,1\n\"e\nmore\",f,g,h,i,0\n",
     ["line 3 has 6 fields", "expected 5"]),
    ("sent1,sent2,ending0,ending1,label\na,b,c,d,1\n\"e\nmore\",f,g,h,7\n", ["line 3", "label=7", "< 2"]),
    ("sent1,sent2,ending0,ending1,label\na,b,c,d,\n", ["line 2", "label is empty", "unlabeled"]),
    ("sent1,ending0,ending1,label\na,c,d,1\n", ["lacks the columns ['sent2']", "'sent1', 'ending0'"]),
    ("sent1,sent2,ending1,ending2,label\na,b,c,d,1\n", ["['ending1', 'ending2']", "from 0"]),
    ("sent1,sent2,ending0,label\na,b,c,0\n", ["at least two"]),
    ("sent1,sent2,ending0,ending1,label\n", ["no records"]),
    ("", ["is empty"]),
])
def test_csv_errors_name_the_line_and_the_expectation(tmp_path, text, words):
    with pytest.raises(ValueError) as e:
        read_multiple_choice_file(write(tmp_path, "bad.csv", text))
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_one_json_list_of_records(tmp_path):
    with open(JSONL, encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh]
    ref = read_multiple_choice_file(JSONL)
    for name in ("swag.json", "swag.data"):                 # by extension, by content
        d = read_multiple_choice_file(write(tmp_path, name, json.dumps(records, indent=1)))
        assert (d.contexts, d.starts, d.endings) == (ref.contexts, ref.starts, ref.endings)
        assert d.labels.tolist() == ref.labels.tolist()
    del records[3]["ending3"]
    with pytest.raises(ValueError, match=r"swag.json record 3 has the endings .*expected 4 endings "
                                         r"\(ending0, ending1, ending2, ending3\) as the first record "
                                         r"\(record 0\)"):
        read_multiple_choice_file(write(tmp_path, "swag.json", json.dumps(records)))


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="no known multiple-choice format"):
        read_multiple_choice_file(write(tmp_path, "x.dat", "   \n"))
    with pytest.raises(ValueError, match="is not a file"):
        read_multiple_choice_file(str(tmp_path / "absent.csv"))


# ----------------------------------------------------------------------------- encoding
def test_encoding_layout_decodes_back(tokenizer):
    fam = get_family("multiple-choice")
    d = read_multiple_choice_file(CSV)
    enc = fam.encode(d, tokenizer, 40, OPTS)
    ids, tt, mask = (enc.arrays[k] for k in ("input_ids", "token_type_ids", "attention_mask"))
    assert ids.shape == tt.shape == mask.shape == (11, 4, 40)
    assert enc.arrays["labels"].tolist() == d.labels.tolist()
    assert enc.example_index.tolist() == list(range(11))
    basic = BasicTokenizer(do_lower_case=True)
    for i in (0, 3, 8):
        for c in range(4):
            n = int(mask[i, c].sum())
            assert mask[i, c, :n].all() and not mask[i, c, n:].any()
            toks = tokenizer.convert_ids_to_tokens(ids[i, c, :n])
            first = basic.tokenize(d.contexts[i])
            second = basic.tokenize(d.starts[i] + " " + d.endings[i][c])
            assert toks == ["[CLS]"] + first + ["[SEP]"] + second + ["[SEP]"]
            k = len(first) + 2
            assert tt[i, c, :k].tolist() == [0] * k and tt[i, c, k:n].tolist() == [1] * (n - k)
            assert (ids[i, c, n:] == tokenizer.pad_token_id).all() and not tt[i, c, n:].any()


def test_encoding_truncates_longest_first(tokenizer):
    fam = MultipleChoiceFamily()
    d = MultipleChoiceData(["the cat " * 20], ["He"], [("yes no", "no")], [0])
    enc = fam.encode(d, tokenizer, 12, OPTS)
    toks = tokenizer.convert_ids_to_tokens(enc.arrays["input_ids"][0, 0])
    # 9 tokens of room: the long context keeps what the short second segment leaves
    assert toks == ["[CLS]", "the", "cat", "the", "cat", "the", "cat", "[SEP]", "he", "yes", "no", "[SEP]"]
    toks = tokenizer.convert_ids_to_tokens(enc.arrays["input_ids"][0, 1])
    assert toks == ["[CLS]", "the", "cat", "the", "cat", "the", "cat", "the", "[SEP]", "he", "no", "[SEP]"]
    assert enc.arrays["attention_mask"][0].sum(axis=-1).tolist() == [12, 12]
    with pytest.raises(ValueError, match="seq_len=2 is invalid"):
        fam.encode(d, tokenizer, 2, OPTS)


def test_trim_batch_keeps_the_choices_axis(tokenizer):
    fam = MultipleChoiceFamily()
    enc = fam.encode(read_multiple_choice_file(JSONL), tokenizer, 64, OPTS)
    b = trim_batch({k: v[:3] for k, v in enc.arrays.items()}, fam.token_keys)
    longest = int(enc.arrays["attention_mask"][:3].sum(axis=-1).max())
    assert b["input_ids"].shape == (3, 4, longest) and b["labels"].shape == (3,)


# ----------------------------------------------------------------------------- scoring
def test_evaluate_and_predictions_on_hand_made_logits(tmp_path):
    fam = MultipleChoiceFamily()
    d = MultipleChoiceData(["a"] * 5, ["b"] * 5, [("w", "x", "y", "z")] * 5, [0, 1, 1, 3, 1],
                           ids=[10, 11, 12, 13, 14])
    logits = [np.array(r, np.float32) for r in
              ([2, 1, 0, 0], [0, 1, 5, 0], [0, 3, 1, 0], [0, 0, 0, 0.5], [1, 1, 0, 0])]
    enc = Encoded({}, np.arange(5))
    metrics, pred = fam.evaluate(d, enc, dict(logits=logits), OPTS)
    assert pred.tolist() == [0, 2, 1, 3, 0]              # a tie goes to the first ending
    assert metrics["acc"] == pytest.approx(3 / 5)
    assert metrics["baseline_acc"] == 0.25
    assert metrics["majority_acc"] == pytest.approx(3 / 5)    # always ending 1
    assert all(isinstance(v, float) for v in metrics.values())
    [path] = fam.write_predictions(str(tmp_path), d, enc, pred, OPTS)
    assert path == str(tmp_path / "predictions.csv")
    assert open(path).read() == "index,prediction\n10,0\n11,2\n12,1\n13,3\n14,0\n"
    with pytest.raises(ValueError, match=r"expected \(5, 4\)"):
        fam.evaluate(d, enc, dict(logits=logits[:4]), OPTS)
    with pytest.raises(ValueError, match=r"expected \(5,\)"):
        fam.write_predictions(str(tmp_path / "not"), d, enc, pred[:4], OPTS)
    assert not (tmp_path / "not").exists()


def test_split_is_deterministic_and_keeps_ids():
    fam = MultipleChoiceFamily()
    d = read_multiple_choice_file(CSV)
    tr, te = fam.split(d, seed=3)
    assert len(te) == 2 and len(tr) == 9
    assert sorted(tr.ids + te.ids) == list(range(11))
    again = fam.split(d, seed=3)[1]
    assert te.ids == again.ids and te.endings == again.endings
    for x in te.ids:
        assert te.endings[te.ids.index(x)] == d.endings[x]


# ----------------------------------------------------------------------------- built-in task
def test_first_sentence():
    assert first_sentence("Return the sum. Raise ValueError if empty.") == "Return the sum."
    assert first_sentence("Split it, e.g. at spaces. Then join.") == "Split it, e.g. at spaces."
    assert first_sentence("Is it ready? Maybe!") == "Is it ready?"
    assert first_sentence("  No end here ") == "No end here"


def test_name_words():
    assert name_words("get_all") == "get all"
    assert name_words("getOptionalRelease") == "get Optional Release"
    assert name_words("parseHTTPDate") == "parse HTTP Date"
    assert name_words("http2time") == "http2time"


@pytest.mark.slow
def test_builtin_task_is_deterministic_checkable_and_module_disjoint():
    from minibert.tasks.stdlib_functions import stdlib_functions
    fam = get_family("multiple-choice")
    train, test = fam.builtin(seed=0)
    train2, test2 = get_family("multiple-choice").builtin(seed=0)
    assert (train.ids, train.endings, train.labels.tolist()) == \
           (train2.ids, train2.endings, train2.labels.tolist())
    assert test.ids == test2.ids
    assert len(test) >= 0.15 * (len(train) + len(test)) and len(train) > 1000
    modules = lambda d: {i.split(":")[0] for i in d.ids}          # noqa: E731
    assert not modules(train) & modules(test)
    assert not any(m.startswith("_") or ".test" in m or m.startswith("test") for m in modules(train))
    assert train.num_choices == test.num_choices == 4
    counts = np.bincount(np.concatenate([train.labels, test.labels]), minlength=4)
    assert counts.min() > 0.2 * counts.sum()                         # positions shuffled
    # every label checkable from the source: the labelled ending is the function's own name,
    # every ending a distinct name of a function of the same module
    by_key = {f"{f.module}:{f.qualname}": f for f in stdlib_functions()}
    names_of = {}
    for f in by_key.values():
        names_of.setdefault(f.module, set()).add(name_words(f.name))
    for d in (train, test):
        for i in range(0, len(d), 7):
            f = by_key[d.ids[i]]
            assert d.endings[i][d.labels[i]] == name_words(f.name)
            assert d.contexts[i] == first_sentence(f.paragraphs[0]) and d.starts[i] == ""
            assert len(set(d.endings[i])) == 4 and set(d.endings[i]) <= names_of[f.module]
    # no answer from the names alone: a name shared by several functions (several classes'
    # "close") is the answer more often, and is drawn as a distractor as often
    hits = []
    for d in (train, test):
        shared = {}
        for i in range(len(d)):
            k = (d.ids[i].split(":")[0], d.endings[i][d.labels[i]])
            shared[k] = shared.get(k, 0) + 1
        for i in range(len(d)):
            score = [shared.get((d.ids[i].split(":")[0], e), 0) for e in d.endings[i]]
            best = np.flatnonzero(np.array(score) == max(score))
            hits.append((d.labels[i] in best) / len(best))
    assert np.mean(hits) < 0.28, np.mean(hits)          # 0.30 with uniformly drawn distractors
    other = fam.builtin(seed=1)[0]
    assert other.ids != train.ids or other.labels.tolist() != train.labels.tolist()


def test_builtin_on_one_package():
    a = stdlib_multiple_choice(seed=0, packages=["email"])
    b = stdlib_multiple_choice(seed=0, packages=["email", "json"])
    assert len(a) > 20 and all(i.startswith("email") for i in a.ids)
    # a record depends only on its function, its module's names and the seed
    pos = {k: j for j, k in enumerate(b.ids)}
    for i, k in enumerate(a.ids):
        assert b.endings[pos[k]] == a.endings[i] and b.labels[pos[k]] == a.labels[i]


# ----------------------------------------------------------------------------- end to end
def _marked_task(n, seed):
    """A task the encoder must read to solve: the right ending says "yes", the others "no"
    (each choice scored alone, so the head must tell the two words apart)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    ends = [tuple("cat yes" if c == k else "cat no" for c in range(4)) for k in labels]
    return MultipleChoiceData(["the dog"] * n, ["He"] * n, ends, labels)


@pytest.mark.slow
def test_training_end_to_end(tokenizer, tmp_path):
    fam = get_family("multiple-choice")
    train, test = _marked_task(64, 0), _marked_task(24, 1)
    fam.prepare(train)
    enc_tr, enc_te = fam.encode(train, tokenizer, 16, OPTS), fam.encode(test, tokenizer, 16, OPTS)
    cfg = tiny_config(vocab_size=len(tokenizer), max_position_embeddings=16, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0)
    model = BertForMultipleChoice(cfg, seed=0)
    tc = TrainConfig(steps=40, batch_size=8, lr=3e-3, eval_every=20, eval_batches=3, save_every=40,
                     optimizer="torch")
    result = Trainer(model, enc_tr.arrays, enc_te.arrays, str(tmp_path / "run"), tc, task=fam).train()
    losses = [h["loss"] for h in result.history]
    assert np.isfinite(losses).all() and np.mean(losses[-5:]) < np.mean(losses[:5])
    outputs = predict(model, enc_te, fam, batch_size=5)
    assert len(outputs["logits"]) == 24 and outputs["logits"][0].shape == (4,)
    metrics, pred = fam.evaluate(test, enc_te, outputs, OPTS)
    by_hand = np.mean([np.argmax(r) == k for r, k in zip(outputs["logits"], test.labels)])
    assert metrics["acc"] == by_hand
    assert metrics["acc"] == 1.0, metrics               # learnt, not guessed (0.25)
    assert result.evals[-1]["acc"] == 1.0
    files = fam.write_predictions(str(tmp_path / "out"), test, enc_te, pred, OPTS)
    with open(files[0]) as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["index", "prediction"] and [int(r[1]) for r in rows[1:]] == test.labels.tolist()


@pytest.mark.slow
def test_fixture_files_run_end_to_end(tokenizer, tmp_path):
    fam = get_family("multiple-choice")
    train, test = read_multiple_choice_file(CSV), read_multiple_choice_file(JSONL)
    fam.prepare(train)
    enc_tr, enc_te = fam.encode(train, tokenizer, 32, OPTS), fam.encode(test, tokenizer, 32, OPTS)
    cfg = tiny_config(vocab_size=len(tokenizer), max_position_embeddings=32)
    model = BertForMultipleChoice(cfg, seed=0)
    tc = TrainConfig(steps=4, batch_size=4, lr=1e-3, eval_every=4, eval_batches=3, save_every=4)
    result = Trainer(model, enc_tr.arrays, enc_te.arrays, str(tmp_path / "run"), tc, task=fam).train()
    assert np.isfinite([h["loss"] for h in result.history]).all()
    metrics, pred = fam.evaluate(test, enc_te, predict(model, enc_te, fam), OPTS)
    assert pred.shape == (10,) and set(metrics) == {"acc", "baseline_acc", "majority_acc"}
    shutil.rmtree(tmp_path / "run")


def test_json_lines_with_a_raw_line_separator_in_a_text(tmp_path):
    """A record whose text holds U+2028 raw (JSON allows it) is one record, not two lines."""
    import json
    rec = {"sent1": "A man\u2028walks.", "sent2": "He", "ending0": "a", "ending1": "b",
           "ending2": "c", "ending3": "d", "label": 2}
    path = tmp_path / "u2028.jsonl"
    path.write_text("\n".join(json.dumps(rec, ensure_ascii=False) for _ in range(2)) + "\n",
                    encoding="utf-8")
    data = read_multiple_choice_file(str(path))
    assert len(data) == 2 and data.contexts[0] == "A man\u2028walks."
