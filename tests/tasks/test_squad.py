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
import random

import pytest

from minibert.tasks.squad import (
    SquadDataset,
    SquadQuestion,
    exact_match_score,
    f1_score,
    normalize_answer,
    parse_squad,
    question_scores,
    read_squad,
    squad_evaluate,
    squad_scores,
)

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


# ============================================================================ metrics
# ---------------------------------------------------------------- the second implementation
# The official rules, written out by hand: ASCII punctuation listed character by character;
# articles found by scanning maximal runs of word characters (what \b(a|an|the)\b matches:
# Python's \w is str.isalnum() or "_"); whitespace collapsed by a character loop; the token
# overlap by merging two sorted lists.
_ASCII_PUNCTUATION = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_ARTICLE_WORDS = ("a", "an", "the")


def _word_char(c):
    return c.isalnum() or c == "_"


def ref_normalize(s):
    s = "".join(c for c in s.lower() if c not in _ASCII_PUNCTUATION)
    pieces, i = [], 0
    while i < len(s):
        if not _word_char(s[i]):
            pieces.append(s[i])
            i += 1
            continue
        j = i
        while j < len(s) and _word_char(s[j]):
            j += 1
        pieces.append(" " if s[i:j] in _ARTICLE_WORDS else s[i:j])
        i = j
    words, current = [], ""
    for c in "".join(pieces) + " ":
        if c.isspace():
            if current:
                words.append(current)
            current = ""
        else:
            current += c
    return " ".join(words)


def ref_tokens(s):
    return [w for w in ref_normalize(s).split(" ") if w]


def ref_overlap(a, b):
    a, b = sorted(a), sorted(b)
    i = j = n = 0
    while i < len(a) and j < len(b):
        if a[i] == b[j]:
            n, i, j = n + 1, i + 1, j + 1
        elif a[i] < b[j]:
            i += 1
        else:
            j += 1
    return n


def ref_f1(pred, gold):
    p, g = ref_tokens(pred), ref_tokens(gold)
    if not p or not g:
        return 1.0 if len(p) == len(g) else 0.0
    n = ref_overlap(p, g)
    if n == 0:
        return 0.0
    precision, recall = n / len(p), n / len(g)
    return 2 * precision * recall / (precision + recall)


def ref_question(answers, pred):
    golds = [t for t in answers if ref_normalize(t) != ""] or [""]
    exact = max(1 if ref_normalize(pred) == ref_normalize(g) else 0 for g in golds)
    return exact, max(ref_f1(pred, g) for g in golds)


def ref_evaluate(questions, preds, v2):
    rows = []
    for q in questions:
        if q.id in preds:
            e, f = ref_question([t for t, _ in q.answers], preds[q.id])
        else:
            e, f = 0, 0.0
        rows.append((bool(q.answers), e, f))
    out = {}
    groups = [("", rows)]
    if v2:
        groups += [("HasAns_", [r for r in rows if r[0]]), ("NoAns_", [r for r in rows if not r[0]])]
    for prefix, group in groups:
        if group:
            out[prefix + "exact"] = 100.0 * sum(r[1] for r in group) / len(group)
            out[prefix + "f1"] = 100.0 * sum(r[2] for r in group) / len(group)
            out[prefix + "total"] = len(group)
    return out


# ---------------------------------------------------------------- hand-computed values
@pytest.mark.parametrize("text, expected", [
    ("The  Quick, brown-fox!", "quick brownfox"),
    ("An apple a day", "apple day"),
    ("theatre anthem atheist", "theatre anthem atheist"),      # articles only as whole words
    ("a-the an", "athe"),                       # punctuation goes first: "athe an" -> "athe"
    ("\u201cthe\u201d  end", "\u201c \u201d end"),              # curly quotes are not ASCII
    ("\u00dcnder THE Br\u00fccke", "\u00fcnder br\u00fccke"),
    ("snake_case the_end", "snakecase theend"),
    ("\t\n  ", ""),
    ("A", ""),
    ("Caf\u00e9 \u00e0 la carte", "caf\u00e9 \u00e0 la carte"),
    ("the\u00a0cat", "cat"),                                     # no-break space is whitespace
    ("\u00bfQu\u00e9?", "\u00bfqu\u00e9"),
])
def test_normalization_by_hand(text, expected):
    assert normalize_answer(text) == expected
    assert ref_normalize(text) == expected


def test_scores_by_hand():
    # pred tokens [cat, sat, on, mat], gold [cat, on, mat]: P = 3/4, R = 1, F1 = 6/7
    assert f1_score("the cat sat on the mat", "a cat on a mat") == pytest.approx(6 / 7, abs=1e-15)
    assert exact_match_score("the cat sat on the mat", "a cat on a mat") == 0
    # multiset overlap: [x, x, y] vs [x, y, y] share 2 tokens: P = R = 2/3
    assert f1_score("x x y", "x y y") == pytest.approx(2 / 3, abs=1e-15)
    assert exact_match_score("The Cat!", "cat") == 1
    assert f1_score("", "") == 1.0 and f1_score("the", "") == 1.0 and f1_score("", "cat") == 0.0
    assert f1_score("dog", "cat") == 0.0
    q = SquadQuestion("q", "", "?", "The Volga is long.", (("The Volga", 0), ("Volga", 4)))
    assert question_scores(q, "volga river") == (0, pytest.approx(2 / 3, abs=1e-15))
    assert question_scores(q, "the Volga.") == (1, 1.0)


def _hand_v2():
    ctx = "The cat sat on the mat while the dog slept."
    qs = [SquadQuestion("q1", "t", "Who sat?", ctx, (("The cat", 0),)),
          SquadQuestion("q2", "t", "Where?", ctx, (("cat sat on the mat", 4),)),
          SquadQuestion("q3", "t", "Who flew?", ctx, (), True),
          SquadQuestion("q4", "t", "Who swam?", ctx, (), True),
          SquadQuestion("q5", "t", "Who sang?", ctx, (), True)]
    return SquadDataset(qs, True, "hand")


def test_evaluate_by_hand():
    d = _hand_v2()
    # q1 exact; q2 [cat, sat, on, mat] vs pred [cat, sat, mat]: P = 1, R = 3/4, F1 = 6/7;
    # q3 "" and q4 "The." (normalizes to "") are right; q5 answers where there is none
    preds = {"q1": "the CAT", "q2": "cat sat mat", "q3": "", "q4": "The.", "q5": "the dog",
             "unknown": "ignored"}
    m = squad_evaluate(d, preds)
    assert m == pytest.approx({
        "exact": 60.0, "f1": 100 * (3 + 6 / 7) / 5, "total": 5,
        "HasAns_exact": 50.0, "HasAns_f1": 100 * (1 + 6 / 7) / 2, "HasAns_total": 2,
        "NoAns_exact": 200 / 3, "NoAns_f1": 200 / 3, "NoAns_total": 3}, abs=1e-12)
    assert isinstance(m["total"], int)
    # a missing prediction scores 0 and still counts
    del preds["q1"]
    m = squad_evaluate(d, preds)
    assert m["exact"] == pytest.approx(40.0) and m["total"] == 5 and m["HasAns_total"] == 2
    assert squad_scores(d, preds)["q1"] == (0, 0.0)
    # v1.1: no breakdown
    m = squad_evaluate(d[:2], {"q1": "cat", "q2": "mat"})
    assert set(m) == {"exact", "f1", "total"} and m["exact"] == 50.0
    assert m["f1"] == pytest.approx(100 * (1 + 2 * (1 * 0.25) / 1.25) / 2)
    with pytest.raises(ValueError, match=r"predictions\['q1'\]=3 is a int"):
        squad_evaluate(d, {"q1": 3})
    with pytest.raises(ValueError, match="expected a dict"):
        squad_evaluate(d, [("q1", "cat")])


def test_evaluate_fixtures():
    for path in (V1, V2, FLAT, FLAT_LINES):
        d = read_squad(path)
        gold = {q.id: (q.answers[-1][0] if q.answers else "") for q in d}
        m = squad_evaluate(d, gold)
        assert m["exact"] == m["f1"] == 100.0 and m["total"] == len(d)
        empty = squad_evaluate(d, {q.id: "" for q in d})
        n_no = sum(q.is_impossible for q in d)
        assert empty["exact"] == empty["f1"] == pytest.approx(100 * n_no / len(d))
        assert ("NoAns_total" in m) == d.version_2


# ---------------------------------------------------------------- randomized comparison
_NOISE = ["the", "The", "a", "an", "An", "THE", ",", ".", "!", "'s", "-", "_", "\u201c",
          "\u201d", "\u2014", "\u00bf", "  ", "\t", "\u00a0", "\u00e9", "\u0130", "\u00df",
          "(", ")", "[the]", "a.", "the-", "_a_", "anthe", "\u0391\u03a3", "\u4e2d\u6587", "\u2162", "\u00b2"]


def _mutate(text, rng):
    """A prediction near ``text``: words dropped, doubled, recased, noise inserted."""
    words = text.split()
    out = []
    for w in words:
        r = rng.random()
        if r < 0.15:
            continue
        if r < 0.25:
            w = w.upper()
        elif r < 0.3:
            w = w + w
        out.append(w)
        if rng.random() < 0.3:
            out.append(rng.choice(_NOISE))
    sep = rng.choice([" ", "  ", "", "\n"])
    return sep.join(out)


def _random_predictions(d, rng):
    preds = {}
    for q in d:
        words = q.context.split()
        r = rng.random()
        if r < 0.08:
            continue                                                # missing
        if r < 0.2:
            preds[q.id] = rng.choice(["", " ", "the", "A.", "\u201c\u201d", "an!"])
        elif r < 0.5 and q.answers:
            preds[q.id] = _mutate(rng.choice(q.answers)[0], rng)
        else:
            i = rng.randrange(len(words))
            preds[q.id] = _mutate(" ".join(words[i:i + rng.randint(1, 8)]), rng)
    return preds


def test_against_the_second_implementation():
    rng = random.Random(21)
    datasets = [read_squad(p) for p in (V1, V2, FLAT, FLAT_LINES)] + [_hand_v2()]
    compared = 0
    for _ in range(150):
        for d in datasets:
            preds = _random_predictions(d, rng)
            ours = squad_scores(d, preds)
            for q in d:
                if q.id in preds:
                    assert ours[q.id] == ref_question([t for t, _ in q.answers], preds[q.id]), \
                        (q.id, q.answers, preds[q.id])
                    compared += 1
            assert squad_evaluate(d, preds) == ref_evaluate(list(d), preds, d.version_2)
    assert compared > 3000


_ALPHABET = "aAnNtTeEhH _-.,'!\u201c\u00e9\u0301\u00df\u0130\u03a3\u00a0\t\u4e2d\u2162\u00b2x"


def test_random_strings_against_the_second_implementation():
    rng = random.Random(5)
    for _ in range(3000):
        a = "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 14)))
        b = "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 14)))
        assert normalize_answer(a) == ref_normalize(a), repr(a)
        assert f1_score(a, b) == ref_f1(a, b), (a, b)
        assert exact_match_score(a, b) == int(ref_normalize(a) == ref_normalize(b))


def test_unicode_word_characters():
    # every character Python calls alphanumeric sticks to an article as \\b sees it, and
    # the two implementations agree on all of the Basic Multilingual Plane's characters
    chars = [chr(c) for c in range(0x20, 0x10000) if not 0xD800 <= c < 0xE000]
    for c in chars[::7]:
        for text in (f"the{c}", f"{c}the a", f"an {c} the"):
            assert normalize_answer(text) == ref_normalize(text), repr(text)


def test_needs_no_tokenizer():
    # the readers and metrics are plain Python: the module imports the standard library and,
    # of minibert, only minibert.io (its JSON-lines splitting), itself standard library only
    import ast
    import sys

    import minibert.io
    import minibert.tasks.squad as squad
    for module, allowed in ((squad, {(2, "io")}), (minibert.io, set())):
        tree = ast.parse(open(module.__file__, encoding="utf-8").read())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.level == 0}
        relative = {(node.level, node.module) for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.level > 0}
        assert relative <= allowed, (module.__name__, relative)
        assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


def test_flat_json_lines_with_a_raw_line_separator_in_a_context(tmp_path):
    """A context holding U+2028 raw (JSON allows it) stays one record of JSON lines."""
    import json
    rec = {"id": "q1", "question": "Who walks?", "context": "A man\u2028walks.",
           "answers": {"text": ["A man"], "answer_start": [0]}}
    path = tmp_path / "u2028.jsonl"
    path.write_text(json.dumps(rec, ensure_ascii=False) + "\n"
                    + json.dumps(dict(rec, id="q2"), ensure_ascii=False) + "\n", encoding="utf-8")
    data = read_squad(str(path))
    assert len(data) == 2 and data.questions[0].context == "A man\u2028walks."
