"""SQuAD v1.1 and v2.0: the data files as people have them, and the official metrics.

**Files.** ``read_squad(path)`` reads any of these (chosen by content, not extension):

* nested, as published::

    {"version": "v2.0",
     "data": [{"title": "...",
               "paragraphs": [{"context": "...",
                               "qas": [{"id": "...", "question": "...",
                                        "answers": [{"text": "...", "answer_start": 17}],
                                        "is_impossible": false,           (v2.0 only)
                                        "plausible_answers": [...]}]}]}]}  (ignored)

* flat, one record per question (the layout of Hugging Face's ``squad`` data sets)::

    {"id": "...", "title": "...", "question": "...", "context": "...",
     "answers": {"text": ["..."], "answer_start": [17]}}

  as one JSON document (a list of records, or ``{"data": [records]}``) or as JSON lines
  (one record a line). ``title`` is optional; ``answers`` may also be a list of
  ``{"text", "answer_start"}`` objects. Empty answer lists mean an unanswerable question.

Each question becomes a ``SquadQuestion``; ``answer_start`` must point at its answer text
(``context[start:start + len(text)] == text``), ids must be unique and question and context
non-empty, or ``ValueError`` names the file, the place in it and the value. A question is
unanswerable when ``is_impossible`` says so or, without that field, when it has no answer.
The set (``SquadDataset``) is v2.0 when the file says ``"version": "v2.0"`` or any question
is unanswerable.

**Metrics** (the rules of the official evaluation scripts, ``evaluate-v1.1.py`` and
``evaluate-v2.0.py``; own code). ``normalize_answer``: lowercase (``str.lower``); delete
every ASCII punctuation character (``string.punctuation``; other punctuation stays); replace
the words "a", "an" and "the" by a space, a word being a maximal run of word characters
(``\\b(a|an|the)\\b``); collapse whitespace. Then, for one gold answer ``g`` and the
prediction ``p``, with ``T(s)`` the whitespace tokens of ``normalize_answer(s)``:

* exact match: 1 if ``normalize_answer(p) == normalize_answer(g)``, else 0;
* F1: with ``c`` = the size of the multiset intersection of ``T(p)`` and ``T(g)``,
  ``P = c / |T(p)|``, ``R = c / |T(g)|``, ``F1 = 2 P R / (P + R)`` (0 when ``c = 0``); when
  either token list is empty, F1 is 1 if both are, else 0.

A question's score is the maximum over its gold answers, those that normalize to something
non-empty; a question with none (unanswerable) has the single gold answer "", so it scores
1 (exact and F1) exactly when the prediction normalizes to "". These are evaluate-v2.0.py's
rules; evaluate-v1.1.py differs only for a gold answer that normalizes to "" (an article or
punctuation alone), which v1.1 data sets do not have.

``squad_evaluate(dataset, predictions)`` gives, as percentages (0-100) like the official
scripts: ``exact``, ``f1``, ``total`` and, for a v2.0 set, ``HasAns_exact``, ``HasAns_f1``,
``HasAns_total`` (the answerable questions) and ``NoAns_exact``, ``NoAns_f1``,
``NoAns_total`` (the unanswerable ones); like evaluate-v2.0.py, a group with no question has
no keys. A question without a prediction scores 0 and still counts in ``total`` (v1.1's
script does the same; v2.0's fails on it); predictions for unknown ids are ignored.

Nothing here needs a tokenizer.
"""
from __future__ import annotations

import json
import os
import re
import string
from collections import Counter
from dataclasses import dataclass, field

from ..io import json_lines

# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class SquadQuestion:
    """One question: its answers are ``(text, start)`` pairs, ``context[start:start +
    len(text)] == text``; empty (and ``is_impossible``) for an unanswerable one."""
    id: str
    title: str
    question: str
    context: str
    answers: tuple = ()
    is_impossible: bool = False


@dataclass
class SquadDataset:
    """The questions of a file, in file order; ``version_2`` when the file says v2.0 or any
    question is unanswerable."""
    questions: list = field(default_factory=list)
    version_2: bool = False
    source: str = ""

    def __len__(self) -> int:
        return len(self.questions)

    def __iter__(self):
        return iter(self.questions)

    def __getitem__(self, i):
        return self.questions[i]

    def by_id(self) -> dict:
        return {q.id: q for q in self.questions}


def _fields(obj) -> str:
    return ", ".join(map(repr, obj)) if obj else "none"


def _require(obj, keys, where: str) -> None:
    """``obj`` is a JSON object holding every key of ``keys``."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where} is a {type(obj).__name__}, expected a JSON object")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise ValueError(f"{where} lacks the field{'s' if len(missing) > 1 else ''} "
                         f"{_fields(missing)}; found {_fields(list(obj))}")


def _text(value, where: str, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where}={value!r:.80} is a {type(value).__name__}, expected a string")
    if not allow_empty and not value.strip():
        raise ValueError(f"{where}={value!r} is empty, expected text")
    return value


def _check_answer(qid: str, context: str, text, start, where: str) -> tuple:
    text = _text(text, f"{where} text")
    if isinstance(start, bool) or not isinstance(start, int):
        raise ValueError(f"{where} answer_start={start!r} of question {qid!r} is a "
                         f"{type(start).__name__}, expected an integer character offset")
    if not 0 <= start <= len(context) - len(text):
        raise ValueError(f"{where}: question {qid!r}: answer_start={start} is outside its "
                         f"context of {len(context)} characters for the answer text {text!r} "
                         f"({len(text)} characters)")
    found = context[start:start + len(text)]
    if found != text:
        raise ValueError(f"{where}: question {qid!r}: answer_start={start} points at {found!r}, "
                         f"expected the answer text {text!r}")
    return (text, start)


def _question(rec: dict, context: str, title: str, where: str, flat: bool) -> SquadQuestion:
    """A ``SquadQuestion`` from a nested ``qas`` entry or a flat record (already known to
    hold id, question and answers)."""
    qid = rec["id"]
    if isinstance(qid, int) and not isinstance(qid, bool):
        qid = str(qid)
    qid = _text(qid, f"{where} id")
    question = _text(rec["question"], f"{where} question (id {qid!r})")
    answers = rec["answers"]
    if flat and isinstance(answers, dict):
        _require(answers, ("text", "answer_start"), f"{where} answers (id {qid!r})")
        texts, starts = answers["text"], answers["answer_start"]
        if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
            raise ValueError(f"{where} answers (id {qid!r}) has text={texts!r:.80} and "
                             f"answer_start={starts!r:.80}, expected two lists of one length")
        pairs = list(zip(texts, starts))
    elif isinstance(answers, list):
        pairs = []
        for k, a in enumerate(answers):
            _require(a, ("text", "answer_start"), f"{where} answers[{k}] (id {qid!r})")
            pairs.append((a["text"], a["answer_start"]))
    else:
        expected = ("a list of {text, answer_start} objects or {text: [...], answer_start: [...]}"
                    if flat else "a list of {text, answer_start} objects")
        raise ValueError(f"{where} answers (id {qid!r}) is a {type(answers).__name__}, "
                         f"expected {expected}")
    checked = tuple(_check_answer(qid, context, t, s, f"{where} answers[{k}]")
                    for k, (t, s) in enumerate(pairs))
    impossible = rec.get("is_impossible", not checked)
    if not isinstance(impossible, bool):
        raise ValueError(f"{where} is_impossible={impossible!r} (id {qid!r}) is invalid, "
                         "expected true or false")
    if impossible and checked:
        raise ValueError(f"{where}: question {qid!r} has is_impossible=true and "
                         f"{len(checked)} answers, expected no answers for an unanswerable "
                         "question (v2.0 keeps those under plausible_answers)")
    if not impossible and not checked:
        raise ValueError(f"{where}: question {qid!r} has is_impossible=false and no answers, "
                         "expected at least one answer")
    return SquadQuestion(qid, title, question, context, checked, impossible)


def _nested(articles: list, src: str) -> list:
    questions = []
    for i, art in enumerate(articles):
        where = f"{src}: data[{i}]"
        _require(art, ("paragraphs",), where)
        title = art.get("title", "")
        title = "" if title is None else _text(title, f"{where} title", allow_empty=True)
        if not isinstance(art["paragraphs"], list):
            raise ValueError(f"{where} paragraphs is a {type(art['paragraphs']).__name__}, "
                             "expected a list")
        for j, par in enumerate(art["paragraphs"]):
            pwhere = f"{where}.paragraphs[{j}]"
            _require(par, ("context", "qas"), pwhere)
            context = _text(par["context"], f"{pwhere} context")
            if not isinstance(par["qas"], list):
                raise ValueError(f"{pwhere} qas is a {type(par['qas']).__name__}, expected a list")
            for k, qa in enumerate(par["qas"]):
                qwhere = f"{pwhere}.qas[{k}]"
                _require(qa, ("id", "question", "answers"), qwhere)
                questions.append(_question(qa, context, title, qwhere, flat=False))
    return questions


def _flat(records: list, where_of) -> list:
    questions = []
    for i, rec in enumerate(records):
        where = where_of(i)
        _require(rec, ("id", "question", "context", "answers"), where)
        context = _text(rec["context"], f"{where} context")
        title = rec.get("title", "")
        title = "" if title is None else _text(title, f"{where} title", allow_empty=True)
        questions.append(_question(rec, context, title, where, flat=True))
    return questions


def _is_nested(items: list) -> bool:
    return bool(items) and isinstance(items[0], dict) and "paragraphs" in items[0]


def parse_squad(document, source: str = "<data>") -> SquadDataset:
    """A ``SquadDataset`` from a parsed JSON document: a nested SQuAD file, or flat
    records as a list or under ``"data"``. ``source`` names it in errors."""
    version = ""
    if isinstance(document, dict):
        if "data" not in document:
            raise ValueError(f"{source} is a JSON object with the fields {_fields(list(document))}, "
                             "expected SQuAD's {\"version\", \"data\": [...]} or flat question "
                             "records (id, question, context, answers)")
        version = str(document.get("version", ""))
        items = document["data"]
        if not isinstance(items, list):
            raise ValueError(f"{source}: data is a {type(items).__name__}, expected a list")
        prefix = f"{source}: data"
    elif isinstance(document, list):
        items, prefix = document, f"{source}: record"
    else:
        raise ValueError(f"{source} holds a JSON {type(document).__name__}, expected a SQuAD "
                         "object or a list of question records")
    if _is_nested(items):
        questions = _nested(items, source)
    else:
        questions = _flat(items, lambda i: f"{prefix}[{i}]")
    return _dataset(questions, version, source)


def _dataset(questions: list, version: str, source: str) -> SquadDataset:
    if not questions:
        raise ValueError(f"{source} holds no question, expected at least one")
    seen = {}
    for i, q in enumerate(questions):
        if q.id in seen:
            raise ValueError(f"{source}: question id {q.id!r} appears twice (questions "
                             f"{seen[q.id]} and {i}), expected unique ids")
        seen[q.id] = i
    v2 = version.lstrip("v").startswith("2") or any(q.is_impossible for q in questions)
    return SquadDataset(questions, v2, source)


def read_squad(path) -> SquadDataset:
    """Read a SQuAD file: nested v1.1/v2.0 as published, or flat records as one JSON
    document or JSON lines (the module docstring has the layouts)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"path={path!r} does not exist, expected a SQuAD JSON or JSON-lines file")
    try:
        with open(path, encoding="utf-8-sig") as fh:
            content = fh.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path!r} is not UTF-8 text: {e}") from None
    if not content.strip():
        raise ValueError(f"{path!r} is empty, expected SQuAD JSON or JSON lines")
    try:
        document = json.loads(content)
    except json.JSONDecodeError as whole_error:
        return _read_json_lines(content, path, whole_error)
    if isinstance(document, dict) and "data" not in document and (
            "question" in document or "paragraphs" in document):
        return _read_json_lines(content, path, None)     # JSON lines of a single record
    return parse_squad(document, path)


def _read_json_lines(content: str, path: str, whole_error) -> SquadDataset:
    records, lines = [], []
    for n, line in json_lines(content):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if not records:        # not even the first line: no known format
                raise ValueError(f"{path!r} is neither JSON ({whole_error}) nor JSON lines "
                                 f"(line {n}: {e}), expected SQuAD JSON or JSON lines") from None
            raise ValueError(f"{path!r} line {n} is not JSON ({e}), expected one question "
                             "record a line") from None
        records.append(rec)
        lines.append(n)
    if _is_nested(records):       # nested articles, one a line
        return _dataset(_nested(records, path), "", path)
    return _dataset(_flat(records, lambda i: f"{path} line {lines[i]}"), "", path)


# ----------------------------------------------------------------------------- metrics
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")


def normalize_answer(text: str) -> str:
    """The official normalization: lowercase, ASCII punctuation deleted, the words a, an
    and the replaced by a space, whitespace collapsed to single spaces (module docstring)."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _gold_tokens(question: SquadQuestion) -> list:
    """The token lists of the gold answers that normalize to something; ``[[]]`` (the
    empty answer) for an unanswerable question or one whose answers all normalize to ""."""
    golds = [normalize_answer(t).split() for t, _ in question.answers]
    golds = [g for g in golds if g]
    return golds or [[]]


def _f1(pred: list, gold: list) -> float:
    if not pred or not gold:
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def exact_match_score(prediction: str, gold: str) -> int:
    """1 when the two normalize to the same string, else 0."""
    return int(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Token F1 of the two normalized strings (1 when both are empty)."""
    return _f1(normalize_answer(prediction).split(), normalize_answer(gold).split())


def question_scores(question: SquadQuestion, prediction: str) -> tuple:
    """``(exact, f1)`` of one prediction, each the maximum over the gold answers (0 or 1 and
    a fraction, not percentages)."""
    pred = normalize_answer(prediction).split()
    golds = _gold_tokens(question)
    return max(int(pred == g) for g in golds), max(_f1(pred, g) for g in golds)


def squad_scores(dataset, predictions: dict) -> dict:
    """``{id: (exact, f1)}`` for every question of ``dataset``; a missing prediction
    scores ``(0, 0.0)``."""
    out = {}
    for q in dataset:
        if q.id not in predictions:
            out[q.id] = (0, 0.0)
            continue
        pred = predictions[q.id]
        if not isinstance(pred, str):
            raise ValueError(f"predictions[{q.id!r}]={pred!r:.80} is a {type(pred).__name__}, "
                             "expected the answer text (a string)")
        out[q.id] = question_scores(q, pred)
    return out


def squad_evaluate(dataset, predictions: dict) -> dict:
    """The official totals of ``predictions`` (``{id: answer text}``, "" for "no answer")
    on ``dataset`` (a ``SquadDataset`` or a list of ``SquadQuestion``), as percentages:
    ``exact``, ``f1``, ``total``; v2.0 also ``HasAns_*`` and ``NoAns_*`` (module docstring).
    """
    if not isinstance(predictions, dict):
        raise ValueError(f"predictions is a {type(predictions).__name__}, expected a dict "
                         "{question id: answer text}")
    questions = list(dataset)
    if not questions:
        raise ValueError("dataset holds no question, expected at least one")
    scores = squad_scores(questions, predictions)

    def totals(group, prefix=""):
        n = len(group)
        return {f"{prefix}exact": 100.0 * sum(scores[q.id][0] for q in group) / n,
                f"{prefix}f1": 100.0 * sum(scores[q.id][1] for q in group) / n,
                f"{prefix}total": n}

    result = totals(questions)
    v2 = getattr(dataset, "version_2", False) or any(q.is_impossible for q in questions)
    if v2:
        has = [q for q in questions if not q.is_impossible]
        no = [q for q in questions if q.is_impossible]
        if has:
            result.update(totals(has, "HasAns_"))
        if no:
            result.update(totals(no, "NoAns_"))
    return result
