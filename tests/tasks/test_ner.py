"""NerFamily: the CoNLL and JSON-lines readers, the label list, first-piece alignment,
truncation, scoring, predictions.conll, the built-in task, and a tiny end-to-end run."""
import json
import os
import re
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from minibert import BertModel
from minibert.tasks import conlleval, get_family
from minibert.tasks.base import TaskOptions, predict
from minibert.tasks.ner import (
    NOT_ENTITIES,
    NerData,
    NerFamily,
    Sentence,
    detect_format,
    read,
    sort_labels,
)
from minibert.tokenization import BertTokenizer
from tests.helpers import DATA, tiny_config

CONLL = os.path.join(DATA, "conll2003_sample.conll")
IOB1 = os.path.join(DATA, "ner_iob1_tabs.txt")
JSONL = os.path.join(DATA, "ner_int_tags.jsonl")
HF_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


@pytest.fixture(scope="module")
def tokenizer():
    return BertTokenizer(os.path.join(DATA, "bert-base-uncased-vocab.txt"))


def family_for(train):
    fam = get_family("ner")
    fam.prepare(train)
    return fam


def outputs_from(fam, enc, tags_per_sentence):
    """Fake model outputs: each row predicts its sentence's given tags at its words' first
    pieces."""
    rows = []
    for r, first, st in zip(enc.example_index, enc.meta["first_word"], enc.meta["word_starts"]):
        row = np.zeros(enc.arrays["input_ids"].shape[1], dtype=np.int64)
        row[st] = [fam.label2id[t] for t in tags_per_sentence[r][first:first + len(st)]]
        rows.append(row)
    return dict(pred=rows)


# ----------------------------------------------------------------------------- readers
def test_conll2003_file_with_docstart_and_four_columns():
    data = read(CONLL)
    assert isinstance(data, NerData) and len(data) == 8 and data.label_list is None
    first = data[0]
    assert first.tokens == ["Harbor", "Freight", "shares", "rise", "in", "Rotterdam", "."]
    assert first.tags == ["B-ORG", "I-ORG", "O", "O", "O", "B-LOC", "O"]
    assert first.lines == [3, 4, 5, 6, 7, 8, 9]                 # line 1 is -DOCSTART-
    assert all("-DOCSTART-" not in s.tokens for s in data.sentences)
    assert data[4].tokens[:3] == ["CRICKET", "-", "LANCASHIRE"]  # after the second -DOCSTART-


def test_tab_separated_iob1():
    data = read(IOB1)
    assert len(data) == 5
    assert data[2].tokens[3:5] == ["Paris", "London"]
    assert data[2].tags[3:5] == ["I-LOC", "B-LOC"]
    # IOB1 read as conlleval reads it: two adjacent LOC chunks, I- after O opens one
    assert conlleval.chunks(data[2].tags) == [("LOC", 3, 3), ("LOC", 4, 4), ("LOC", 6, 6)]


def test_jsonl_integer_tags_with_label_list():
    data = read(JSONL, TaskOptions(label_list=HF_LABELS))
    assert len(data) == 6 and data.label_list == HF_LABELS
    assert data[1].tokens == ["German", "chancellor", "Helga", "Brandt", "visits", "Warsaw", "."]
    assert data[1].tags == ["B-MISC", "O", "B-PER", "I-PER", "O", "B-LOC", "O"]
    assert data[1].lines == [2] * 7
    fam = family_for(data)
    assert fam.labels == HF_LABELS                   # the given list, in its own order
    with pytest.raises(ValueError, match=r"ner_int_tags.jsonl line 1: tag 3 is an integer, "
                                         r"expected a label list"):
        read(JSONL)
    with pytest.raises(ValueError, match=r"line 1: tag 3 is out of range, expected 0..2"):
        read(JSONL, TaskOptions(label_list=["O", "B-X", "I-X"]))


def test_jsonl_fields_auto_and_options(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"words": ["Oslo", "wins"], "ner": ["S-LOC", "O"]}) + "\n\n"
                 + json.dumps({"words": ["Ann"], "ner": ["S-PER"]}) + "\n")
    data = read(p)
    assert [s.tags for s in data.sentences] == [["S-LOC", "O"], ["S-PER"]]
    assert data[1].lines == [3]
    q = tmp_path / "e.jsonl"
    q.write_text(json.dumps({"toks": ["Oslo"], "labels": ["B-LOC"], "tags": ["O"]}) + "\n")
    data = read(q, TaskOptions(tokens_field="toks", tags_field="labels"))
    assert data[0].tags == ["B-LOC"]
    with pytest.raises(ValueError, match=r"no tokens field, expected one of \['tokens', 'words'\].*"
                                         r"found the fields \['labels', 'tags', 'toks'\]"):
        read(q)
    with pytest.raises(ValueError, match=r"the tags field 'nertags' is missing, found the fields"):
        read(q, TaskOptions(tokens_field="toks", tags_field="nertags"))


def test_format_detected_by_content(tmp_path):
    conll = tmp_path / "train.data"
    shutil.copy(CONLL, conll)
    jsonl = tmp_path / "train.records"
    shutil.copy(JSONL, jsonl)
    assert detect_format(conll) == "conll" and detect_format(jsonl) == "jsonl"
    assert len(read(conll)) == 8
    bad = tmp_path / "words.txt"
    bad.write_text("justoneword\n")
    with pytest.raises(ValueError, match="words.txt is in no known format"):
        read(bad)
    with pytest.raises(ValueError, match="does not exist"):
        read(tmp_path / "missing.conll")


@pytest.mark.parametrize("text, match", [
    ("EU B-ORG\nrejects\n", r"line 2: 'rejects' is not a token and its tag"),
    ("EU B-ORG\nrejects Q-ORG\n", r"line 2: tag 'Q-ORG' is invalid, expected 'O' or one of"),
    ("EU B-ORG\n\n", None),
    ("EU\tNNP\tB-ORG\t\r\n", None),
    ("EU 3\n", r"line 1: tag 3 is an integer, expected a label list"),
    ("-DOCSTART- -X- O\n\n", r"holds no sentence"),
])
def test_conll_errors(tmp_path, text, match):
    p = tmp_path / "x.conll"
    p.write_text(text)
    if match is None:
        assert len(read(p)) == 1
    else:
        with pytest.raises(ValueError, match=match):
            read(p)


@pytest.mark.parametrize("record, match", [
    ({"tokens": ["a", "b"], "tags": ["O"]}, r"line 1: 2 tokens and 1 tags, expected one tag per token"),
    ({"tokens": [], "tags": []}, r"line 1: the sentence is empty"),
    ({"tokens": "a b", "tags": ["O"]}, r"line 1: 'tokens' is 'a b', expected a list of strings"),
    ({"tokens": ["a"], "tags": ["B_PER"]}, r"line 1: tag 'B_PER' is invalid"),
    (["a"], r"line 1: is a JSON list, expected an object"),
])
def test_jsonl_errors(tmp_path, record, match):
    p = tmp_path / "x.jsonl"
    p.write_text(json.dumps(record) + "\n")
    with pytest.raises(ValueError, match=match):
        read(p)


def test_label_order():
    assert sort_labels(["I-PER", "B-LOC", "S-PER", "B-PER", "E-PER", "O", "I-LOC"]) == [
        "O", "B-LOC", "I-LOC", "B-PER", "I-PER", "E-PER", "S-PER"]
    fam = family_for(read(CONLL))
    assert fam.labels == ["O", "B-LOC", "I-LOC", "B-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert fam.model_kwargs() == {"num_labels": 8}
    with pytest.raises(RuntimeError, match="prepare"):
        NerFamily().model_kwargs()


def test_held_out_tag_outside_the_label_list(tokenizer):
    fam = family_for(read(CONLL))
    with pytest.raises(ValueError, match=r"ner_iob1_tabs.txt line 34: tag 'I-MISC' is not in the "
                                         r"label list"):
        fam.encode(read(IOB1), tokenizer, 32, TaskOptions())


def test_split_is_80_20_and_seeded():
    data = read(CONLL)
    train, test = NerFamily().split(data, seed=0)
    assert (len(train), len(test)) == (7, 1)
    assert NerFamily().split(data, seed=0)[1][0].tokens == test[0].tokens
    assert {tuple(s.tokens) for s in train.sentences + test.sentences} == {
        tuple(s.tokens) for s in data.sentences}


# ----------------------------------------------------------------------------- encoding
def test_first_piece_labels_and_unknown_words(tokenizer):
    s = Sentence(["Tokenization", "of", "Helsinki", "\u200b", "ok"],
                 ["O", "O", "B-LOC", "B-MISC", "O"], [1, 2, 3, 4, 5], "mem")
    fam = family_for(NerData([s]))
    enc = fam.encode(NerData([s]), tokenizer, 16, TaskOptions())
    pieces = tokenizer.convert_ids_to_tokens(enc.arrays["input_ids"][0].tolist())
    assert tokenizer.tokenize("Tokenization") == ["token", "##ization"]
    assert tokenizer.tokenize("\u200b") == []                 # a zero-width space: no piece
    assert pieces[:8] == ["[CLS]", "token", "##ization", "of", "helsinki", "[UNK]", "ok", "[SEP]"]
    assert pieces[8:] == ["[PAD]"] * 8
    ids = fam.label2id
    assert enc.arrays["labels"][0].tolist() == [-100, ids["O"], -100, ids["O"], ids["B-LOC"],
                                                ids["B-MISC"], ids["O"]] + [-100] * 9
    assert enc.arrays["attention_mask"][0].tolist() == [1] * 8 + [0] * 8
    assert enc.arrays["token_type_ids"].sum() == 0
    assert enc.meta["word_starts"][0].tolist() == [1, 3, 4, 5, 6]
    # every word is predicted, the unknown one included
    out = outputs_from(fam, enc, [["O", "O", "B-LOC", "B-MISC", "O"]])
    assert fam.predicted_tags(NerData([s]), enc, out) == [s.tags]


def test_long_sentences_continue_in_windows(tokenizer):
    s = Sentence(["Paris", "and", "Rome", "and", "Tokenization", "x"],
                 ["B-LOC", "O", "B-LOC", "O", "B-MISC", "O"], [1, 2, 3, 4, 5, 6], "mem")
    short = Sentence(["Oslo"], ["B-LOC"], [9], "mem")
    data = NerData([s, short])
    fam = family_for(data)
    enc = fam.encode(data, tokenizer, 5, TaskOptions())      # 3 pieces a row
    pieces = [tokenizer.convert_ids_to_tokens(r.tolist()) for r in enc.arrays["input_ids"]]
    assert pieces == [["[CLS]", "paris", "and", "rome", "[SEP]"],
                      ["[CLS]", "and", "token", "##ization", "[SEP]"],   # a window per word break
                      ["[CLS]", "x", "[SEP]", "[PAD]", "[PAD]"],
                      ["[CLS]", "oslo", "[SEP]", "[PAD]", "[PAD]"]]
    assert enc.example_index.tolist() == [0, 0, 0, 1]
    assert enc.meta["first_word"].tolist() == [0, 3, 5, 0]
    assert enc.meta["windows"] == 2 and enc.meta["cut_words"] == 0
    ids = fam.label2id
    assert enc.arrays["labels"][1].tolist() == [-100, ids["O"], ids["B-MISC"], -100, -100]
    guess = [["B-LOC", "O", "O", "O", "B-MISC", "B-LOC"], ["B-LOC"]]
    metrics, pred = fam.evaluate(data, enc, outputs_from(fam, enc, guess), TaskOptions())
    assert pred == guess                                      # every word predicted once
    # gold LOC, LOC, MISC, LOC; guessed LOC, MISC, LOC(x), LOC: 3 correct of 4 and 4
    assert metrics["precision"] == metrics["recall"] == 0.75
    assert metrics["f1_LOC"] == pytest.approx(2 / 3) and metrics["f1_MISC"] == 1.0
    assert metrics["token_acc"] == pytest.approx(5 / 7)
    assert metrics["baseline_f1"] == 0.0 and metrics["baseline_token_acc"] == pytest.approx(3 / 7)
    # a word longer than a whole row keeps its first pieces
    long = NerData([Sentence(["Tokenization", "x"], ["B-LOC", "O"], [1, 2], "mem")])
    enc = fam.encode(long, tokenizer, 3, TaskOptions())
    assert [tokenizer.convert_ids_to_tokens(r.tolist()) for r in enc.arrays["input_ids"]] == [
        ["[CLS]", "token", "[SEP]"], ["[CLS]", "x", "[SEP]"]]
    assert enc.meta["cut_words"] == 1
    assert enc.arrays["labels"][0].tolist() == [-100, ids["B-LOC"], -100]
    assert fam.predicted_tags(long, enc, outputs_from(fam, enc, [["B-LOC", "O"]])) == [["B-LOC", "O"]]
    with pytest.raises(ValueError, match="outputs hold 1 rows, expected 2"):
        fam.predicted_tags(long, enc, dict(pred=[np.zeros(3, dtype=np.int64)]))
    with pytest.raises(ValueError, match="seq_len=2 is invalid"):
        fam.encode(data, tokenizer, 2, TaskOptions())


def test_evaluate_and_predictions_file_agree_with_conlleval(tokenizer, tmp_path):
    data = read(CONLL)
    fam = family_for(data)
    enc = fam.encode(data, tokenizer, 64, TaskOptions())
    assert enc.meta["windows"] == 0 and len(enc) == len(data)
    guess = [["O"] * len(s.tags) if k % 3 == 0 else
             [("B-PER" if t == "B-LOC" else t) for t in s.tags] for k, s in enumerate(data.sentences)]
    metrics, pred = fam.evaluate(data, enc, outputs_from(fam, enc, guess), TaskOptions())
    assert pred == guess
    want = conlleval.evaluate([s.tags for s in data.sentences], guess)
    per_type = {f"f1_{t}": c.f1 for t, c in want.per_type.items()}
    assert sorted(per_type) == ["f1_LOC", "f1_MISC", "f1_ORG", "f1_PER"]
    assert metrics == pytest.approx(dict(want.as_dict(), baseline_f1=0.0, **per_type,
                                         baseline_token_acc=metrics["baseline_token_acc"]))
    assert 0 < metrics["f1"] < 1
    files = fam.write_predictions(str(tmp_path / "out"), data, enc, pred, TaskOptions())
    assert files == [str(tmp_path / "out" / "predictions.conll")]
    lines = open(files[0]).read().split("\n")
    assert lines[:3] == ["Harbor B-ORG O", "Freight I-ORG O", "shares O O"]
    assert lines[7] == "" and lines[8] == "ROTTERDAM B-LOC B-PER"
    assert all(len(line.split()) in (0, 3) for line in lines)
    assert conlleval.evaluate_file(files[0]).as_dict() == pytest.approx(want.as_dict())


def test_predictions_file_keeps_three_columns(tmp_path, tokenizer):
    s = Sentence(["New York", ""], ["B-LOC", "O"], [1, 1], "mem")
    data = NerData([s])
    fam = family_for(data)
    fam.write_predictions(str(tmp_path), data, None, [["B-LOC", "O"]], TaskOptions())
    assert (tmp_path / "predictions.conll").read_text() == "New_York B-LOC B-LOC\n_ O O\n\n"
    with pytest.raises(ValueError, match="1 predicted tags for 2 tokens"):
        fam.write_predictions(str(tmp_path / "x"), data, None, [["O"]], TaskOptions())
    assert not (tmp_path / "x").exists()


def test_trainer_metrics_pool_and_summarize():
    fam = NerFamily()
    fam.labels = ["O", "B-PER", "I-PER"]
    labels = np.array([[-100, 1, 2, 0, -100], [-100, 0, 1, -100, -100]])
    logits = np.zeros((2, 5, 3))
    logits[0, [1, 2, 3], [1, 2, 0]] = 1          # row 0: exact
    logits[1, [1, 2], [0, 0]] = 1                # row 1: misses the PER
    out = SimpleNamespace(logits=logits, loss=0.5)
    batch = dict(labels=labels, attention_mask=np.ones((2, 5)))
    m = fam.metrics(out, batch)
    assert m["gold"] == [[1, 2, 0], [0, 1]] and m["pred"] == [[1, 2, 0], [0, 0]]
    pooled = {k: m[k] + m[k] for k in m}         # the Trainer's pooling: sums, concatenation
    s = fam.summarize(pooled)
    assert s["loss"] == 0.5 and s["precision"] == 1.0 and s["recall"] == 0.5
    assert s["f1"] == pytest.approx(2 / 3) and s["token_acc"] == pytest.approx(8 / 10)
    assert fam.metric in s


# ----------------------------------------------------------------------------- built-in task
@pytest.mark.slow
def test_builtin_task_is_mechanical_and_split_by_module():
    from minibert.tasks.stdlib_functions import stdlib_functions
    fam = NerFamily()
    train, test = fam.builtin(seed=0)
    again = fam.builtin(seed=0)                  # the same sentences and tags for a seed
    assert [(s.tokens, s.tags) for s in again[1].sentences] == [(s.tokens, s.tags) for s in test.sentences]
    assert len(train) > 1000 and len(test) > 200
    assert all("B-REF" in s.tags for s in train.sentences + test.sentences)
    assert {"a", "the", "in"} <= NOT_ENTITIES
    module = lambda s: s.source.split(":")[1].rsplit(".", 1)[0]          # noqa: E731
    assert not {module(s) for s in train.sentences} & {module(s) for s in test.sentences}
    funcs = {f"builtin:{f.module}.{f.qualname}": f for f in stdlib_functions()}
    refs = 0
    for s in train.sentences[:300] + test.sentences[:300]:
        f = funcs[s.source]
        doc = re.findall(r"\w+|[^\w\s]", " ".join(f.paragraphs))[:40]
        close = len(s.tokens) - len(doc) - 1              # the signature's closing parenthesis
        assert s.tokens[close + 1:] == doc
        assert s.tokens[:2] == [f.name, "("] and s.tokens[close] == ")"
        assert [w for w, t in zip(s.tokens[:close], s.tags) if t == "B-PARAM"] == list(f.params)
        for w, t in zip(doc, s.tags[close + 1:]):
            assert (t == "B-REF") == (w in f.params and w not in NOT_ENTITIES), (w, t)
            refs += t == "B-REF"
    assert refs > 50
    fam.prepare(train)
    assert fam.labels == ["O", "B-PARAM", "B-REF"]


# ----------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_fine_tunes_end_to_end_on_the_conll_fixture(tmp_path, tokenizer):
    from minibert.train import TrainConfig, Trainer
    data = read(CONLL)
    fam = family_for(data)
    opts = TaskOptions()
    enc = fam.encode(data, tokenizer, 32, opts)
    # from a checkpoint in the Hugging Face layout, as a run starts: an encoder, a new head
    ckpt = str(tmp_path / "pretrained")
    encoder = BertModel(tiny_config(vocab_size=len(tokenizer), max_position_embeddings=32), seed=0)
    encoder.save_pretrained(ckpt)
    model = fam.model_class.from_pretrained(ckpt, new_head=True, **fam.model_kwargs())
    assert model.config.num_labels == len(fam.labels) == 8
    cfg = TrainConfig(steps=40, batch_size=4, lr=1e-2, eval_every=40, eval_batches=2,
                      save_every=40, optimizer="torch", warmup_steps=0)
    result = Trainer(model, enc.arrays, enc.arrays, str(tmp_path / "run"), cfg, task=fam).train()
    assert result.evals[-1]["f1"] > result.evals[0]["f1"]
    outputs = predict(model, enc, fam, batch_size=3)
    lengths = enc.arrays["attention_mask"].sum(axis=1)
    assert [len(r) for r in outputs["pred"]] == [lengths[i:i + 3].max() for i in range(0, 8, 3)
                                                 for _ in range(min(3, 8 - i))]   # per batch
    metrics, pred = fam.evaluate(data, enc, outputs, opts)
    assert metrics["f1"] > 0.5 and metrics["token_acc"] > metrics["baseline_token_acc"]
    files = fam.write_predictions(str(tmp_path / "run"), data, enc, pred, opts)
    assert conlleval.evaluate_file(files[0]).f1 == pytest.approx(metrics["f1"])
