"""SQuAD files and the official SQuAD metrics (minibert/tasks/squad.py).

Readers: the fixtures tests/data/squad_reader_* (hand-written, in the published layouts:
nested v1.1, nested v2.0 with unanswerable questions, flat JSON and JSON lines) and every
kind of bad input. Metrics: a second implementation of the official rules, written here
differently (character loops for the normalization instead of a regular expression and a
translation table, sorted-list merging instead of Counter for the token overlap), compared
with minibert's on hand-made and randomized predictions; and hand-computed values.
"""
import json
import os

import pytest

from minibert.tasks.squad import SquadDataset, parse_squad, read_squad

DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data")
V1 = os.path.join(DATA, "squad_reader_v1.1.json")
V2 = os.path.join(DATA, "squad_reader_v2.0.json")
FLAT = os.path.join(DATA, "squad_reader_flat.json")
FLAT_LINES = os.path.join(DATA, "squad_reader_flat.jsonl")


# ============================================================================ readers
def test_nested_v1():
    d = read_squad(V1)
    assert isinstance(d, SquadDataset) and len(d) == 9 and not d.version_2
    q = d[0]
    assert q.id == "a3f09c1e5b7d24680e1f0101" and q.title == "Danube"
    assert q.question == "Which river is longer than the Danube in Europe?"
    assert q.answers == (("the Volga", 51), ("Volga", 55), ("the Volga", 51))
    assert not q.is_impossible
    assert [q.title for q in d].count("Marie_Curie") == 3
    # every answer is where it says it is, accents and curly quotes included
    for q in d:
        for text, start in q.answers:
            assert q.context[start:start + len(text)] == text
    assert d.by_id()["a3f09c1e5b7d24680e1f0202"].answers[1][0] == "\u201cKaffeeh\u00e4user\u201d"


def test_nested_v2():
    d = read_squad(V2)
    assert len(d) == 7 and d.version_2
    impossible = [q.id for q in d if q.is_impossible]
    assert impossible == ["d1e0f7a2c4b3906518e2a003", "d1e0f7a2c4b3906518e2a004", "py-json-0002"]
    assert all(q.answers == () for q in d if q.is_impossible)        # plausible_answers ignored
    assert d.by_id()["d1e0f7a2c4b3906518e2a001"].answers[0] == ("L\u00fcbeck", 255)


def test_version_from_the_file_alone(tmp_path):
    doc = json.load(open(V1, encoding="utf-8"))
    doc["version"] = "v2.0"
    p = tmp_path / "v2_all_answerable.json"
    p.write_text(json.dumps(doc), encoding="utf-8")
    d = read_squad(p)
    assert d.version_2 and not any(q.is_impossible for q in d)


def test_flat_json_and_json_lines_agree():
    a, b = read_squad(FLAT), read_squad(FLAT_LINES)
    assert len(a) == len(b) == 6 and a.version_2 and b.version_2
    for x, y in zip(a, b):
        assert (x.id, x.question, x.context, x.answers, x.is_impossible) == \
            (y.id, y.question, y.context, y.answers, y.is_impossible)
    # title is optional (one JSON-lines record has none)
    assert [q.title for q in b].count("") == 2 and a[1].title == "Rh\u00f4ne"
    assert a[2].answers == () and a[2].is_impossible


def test_flat_layouts(tmp_path):
    recs = json.load(open(FLAT, encoding="utf-8"))
    ref = read_squad(FLAT)
    # under "data"; answers as a list of objects; a single record in a JSON-lines file
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": recs}), encoding="utf-8")
    assert [q.answers for q in read_squad(wrapped)] == [q.answers for q in ref]
    listed = [dict(r, answers=[{"text": t, "answer_start": s} for t, s in
                               zip(r["answers"]["text"], r["answers"]["answer_start"])]) for r in recs]
    p = tmp_path / "listed.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in listed) + "\n\n", encoding="utf-8")
    assert [q.answers for q in read_squad(p)] == [q.answers for q in ref]
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps(recs[0]) + "\n", encoding="utf-8")
    assert read_squad(one)[0].answers == ref[0].answers
    # a byte-order mark is skipped
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(recs).encode())
    assert len(read_squad(bom)) == 6
    # parse_squad takes a parsed document
    assert len(parse_squad(json.load(open(V2, encoding="utf-8")), "v2")) == 7


def _write(tmp_path, obj, name="bad.json"):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return p


def _flat_record(**changes):
    rec = {"id": "q1", "question": "Who?", "context": "Ada Lovelace wrote it.",
           "answers": {"text": ["Ada Lovelace"], "answer_start": [0]}}
    rec.update(changes)
    return {k: v for k, v in rec.items() if v is not None}


@pytest.mark.parametrize("content, message", [
    # answer_start not at its text: the id, the start, what is there, the answer
    ([_flat_record(answers={"text": ["Lovelace"], "answer_start": [0]})],
     r"question 'q1': answer_start=0 points at 'Ada Love', expected the answer text 'Lovelace'"),
    ([_flat_record(answers={"text": ["Ada"], "answer_start": [40]})],
     r"question 'q1': answer_start=40 is outside its context of 22 characters"),
    ([_flat_record(answers={"text": ["Ada"], "answer_start": ["0"]})],
     r"answer_start='0' of question 'q1' is a str, expected an integer"),
    ([_flat_record(answers={"text": ["Ada"], "answer_start": [0, 4]})],
     r"expected two lists of one length"),
    # missing fields, listing the ones found
    ([_flat_record(question=None)],
     r"record\[0\] lacks the field 'question'; found 'id', 'context', 'answers'"),
    ({"data": [{"title": "T", "paragraphs": [{"context": "x y", "qas": [{"question": "q?"}]}]}]},
     r"data\[0\]\.paragraphs\[0\]\.qas\[0\] lacks the fields 'id', 'answers'; found 'question'"),
    ({"data": [{"title": "T", "paragraphs": [{"qas": []}]}]},
     r"paragraphs\[0\] lacks the field 'context'; found 'qas'"),
    ([_flat_record(answers={"text": ["Ada"]})],
     r"answers \(id 'q1'\) lacks the field 'answer_start'; found 'text'"),
    # duplicate ids, empty texts
    ([_flat_record(), _flat_record()], r"question id 'q1' appears twice \(questions 0 and 1\)"),
    ([_flat_record(question="  ")], r"question \(id 'q1'\)='  ' is empty"),
    ([_flat_record(context="")], r"context='' is empty"),
    ([_flat_record(id=None)], r"lacks the field 'id'"),
    # inconsistent v2.0 flags
    ([_flat_record(is_impossible=True)], r"question 'q1' has is_impossible=true and 1 answers"),
    ([_flat_record(answers={"text": [], "answer_start": []}, is_impossible=False)],
     r"question 'q1' has is_impossible=false and no answers"),
    # no known format
    ("id,question,context\nq1,Who?,Ada\n", r"is neither JSON .* nor JSON lines"),
    ({"version": "1.1", "articles": []}, r"is a JSON object with the fields 'version', 'articles'"),
    ("42", r"holds a JSON int, expected a SQuAD object"),
    ("[]", r"holds no question"),
    ("", r"is empty, expected SQuAD JSON or JSON lines"),
    ('{"id": "q1", "question": "Who?", "context": "Ada", "answers": []}\n{oops\n',
     r"line 2 is not JSON"),
])
def test_bad_input(tmp_path, content, message):
    p = _write(tmp_path, content)
    with pytest.raises(ValueError, match=message) as info:
        read_squad(p)
    assert str(p) in str(info.value)


def test_bad_paths(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_squad(tmp_path / "missing.json")
    p = tmp_path / "latin1.json"
    p.write_bytes('[{"id": "caf\xe9"}]'.encode("latin-1"))
    with pytest.raises(ValueError, match="is not UTF-8"):
        read_squad(p)
    # a JSON-lines error names the file's line
    p = _write(tmp_path, json.dumps(_flat_record()) + "\n\n" + json.dumps(_flat_record(
        id="q2", answers={"text": ["wrote"], "answer_start": [1]})) + "\n", "l.jsonl")
    with pytest.raises(ValueError, match=r"l.jsonl line 3 answers\[0\]: question 'q2': "
                                         r"answer_start=1 points at 'da Lo'"):
        read_squad(p)
