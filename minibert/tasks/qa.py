"""Answer-span extraction (SQuAD v1.1 and v2.0) with ``BertForQuestionAnswering``.

**Encoding.** A question's tokens are cut to ``max_query_length`` (64). The context gets the
rest of the row: ``room = seq_len - len(question) - 3`` tokens ([CLS], two [SEP]). A context
longer than that is cut into windows of ``room`` tokens starting every ``doc_stride`` tokens
(0, stride, 2 stride, ...) until a window reaches the context's end; each window is one row::

    input_ids       [CLS] q1 .. qm [SEP] c_s .. c_(s+L-1) [SEP] [PAD] ...
    token_type_ids    0   0  ..  0   0    1   ..     1      1    0

A row's labels are the row positions of the answer's first and last token when the whole
answer lies in the window, otherwise 0 ([CLS]); an unanswerable question (v2.0) is labelled
0 in every window. The answer's characters ``[answer_start, answer_start + len(text))`` become
the tokens whose character spans (``BertTokenizer.tokenize_with_offsets``) overlap them.

A token near a window's edge sees little context on one side. As BERT's reference
implementation does, a token is scored only in its *max-context* window: the window where
``min(tokens left of it, tokens right of it) + 0.01 * window length`` is largest (the first
such window on a tie).

**Decoding.** For each question, over all its windows: the ``n_best`` (20) highest start
logits and the ``n_best`` highest end logits among the window's context tokens give the
candidate pairs ``(i, j)`` with ``i <= j``, ``j - i + 1 <= max_answer_length`` (30) and token
``i`` in its max-context window. A pair's score is ``start_logit[i] + end_logit[j]``; its text is
the ORIGINAL context from token ``i``'s first character to token ``j``'s last (case, accents
and spacing as written). Candidates are ranked by score; the first ``n_best`` distinct texts
form the n-best list, each with ``probability = softmax(scores)`` over the list. A question
with no candidate at all (no context token) is answered ``""``.

v2.0: the null score of a question is ``start_logit[CLS] + end_logit[CLS]``, the smallest over
its windows (as the reference implementation); the null answer ``""`` joins the n-best list
with that score, and the prediction is ``""`` when ``null score - best span score >
null_score_threshold`` (0), else the best span's text. ``null_odds`` holds that difference
per question (the official evaluation script's ``na_prob`` file).

**Metrics.** ``squad_evaluate`` (official normalization, exact match and F1 in percent,
HasAns/NoAns for v2.0), plus the trivial baselines: always ``""`` (``baseline_empty_*``: the
share of unanswerable questions) and always the context's first token
(``baseline_first_token_*``); ``baseline_exact``/``baseline_f1`` are those of the better one
(by F1). During training the progress bar shows ``span_acc``: the share of rows whose start
and end argmax (over the row's real tokens) both equal the labels.

**Built-in task** (``builtin``): questions about real standard-library functions. The context
is a function's signature as written followed by its docstring's first paragraph; the
question ``"What is the default value of <param>?"`` is answered by the default's source text
in the signature (its position found and checked there) or, for a parameter without a
default, is unanswerable (v2.0). Held-out functions never share a module with training ones.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

import numpy as np

from ..backend import to_numpy
from ..heads import BertForQuestionAnswering
from ..io import atomic_write_text
from .base import TOKEN_KEYS, Encoded, Family, TaskOptions

QUESTION_TEMPLATE = "What is the default value of {param}?"
# The built-in task's caps: contexts longer than this (characters) are left out, so every
# question fits one window at the default --seq-len; at most this many questions each side.
BUILTIN_MAX_CONTEXT_CHARS = 600
BUILTIN_MAX_TRAIN = 4000
BUILTIN_MAX_TEST = 800
# Only functions with at least this many defaults (of letters or digits) are asked about.
BUILTIN_MIN_DEFAULTS = 1


# ----------------------------------------------------------------------------- windows
def context_windows(n_tokens: int, room: int, doc_stride: int) -> list:
    """``[(start, length), ...]``: windows of at most ``room`` context tokens, starting
    every ``doc_stride`` tokens, until one reaches the end (one empty window for an empty
    context). Consecutive windows overlap by ``room - doc_stride`` tokens."""
    out = []
    start = 0
    while True:
        length = min(room, n_tokens - start)
        out.append((start, length))
        if start + length >= n_tokens:
            return out
        start += doc_stride


def max_context_flags(windows: list, n_tokens: int) -> list:
    """For each window, a bool array over its tokens: True where that window is the token's
    max-context window (score ``min(left, right) + 0.01 * length``, first window on a tie)."""
    best_score = np.full(n_tokens, -np.inf)
    best_window = np.zeros(n_tokens, dtype=np.int64)
    for w, (start, length) in enumerate(windows):
        pos = np.arange(start, start + length)
        score = np.minimum(pos - start, start + length - 1 - pos) + 0.01 * length
        better = score > best_score[pos]
        best_score[pos[better]] = score[better]
        best_window[pos[better]] = w
    return [best_window[start:start + length] == w for w, (start, length) in enumerate(windows)]


def answer_token_span(spans: np.ndarray, char_start: int, char_end: int):
    """``(first, last)`` token indices of the tokens whose character spans (``spans``, (n, 2),
    end exclusive) overlap ``[char_start, char_end)``; None when no token does (an answer
    made only of characters the tokenizer drops)."""
    if len(spans) == 0:
        return None
    hit = np.nonzero((spans[:, 1] > char_start) & (spans[:, 0] < char_end))[0]
    if len(hit) == 0:
        return None
    return int(hit[0]), int(hit[-1])


def _top(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest ``values``, largest first (the lower index first on ties)."""
    order = np.argsort(-values, kind="stable")
    return order[:k]


def _softmax(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if len(x) == 0:
        return x
    e = np.exp(x - x.max())
    return e / e.sum()


def _examples(data) -> list:
    """The questions of a data set (``squad.SquadDataset`` or any iterable of questions)."""
    return list(data)


def _version_2(data) -> bool:
    v = getattr(data, "version_2", None)
    if v is None:
        return any(ex.is_impossible for ex in _examples(data))
    return bool(v)


def _answer_start_text(answer):
    """``(text, start)`` of an answer: a ``(text, start)`` pair or an object with
    ``text``/``answer_start`` (or ``start``)."""
    if isinstance(answer, (tuple, list)):
        return answer[0], int(answer[1])
    start = getattr(answer, "answer_start", None)
    if start is None:
        start = answer.start
    return answer.text, int(start)


@dataclass
class QAPredictions:
    """The decoded answers of a data set.

    answers: ``{question id: answer text}`` (``""``: no answer), the official format.
    nbest: ``{question id: [{"text", "probability", "start_logit", "end_logit"}, ...]}``,
        best first.
    null_odds: v2.0 ``{question id: null score - best span score}`` (None for v1.1).
    """
    answers: dict
    nbest: dict
    null_odds: dict | None = None


# ----------------------------------------------------------------------------- decoding
def decode_question(context: str, rows: list, options: TaskOptions, version_2: bool) -> tuple:
    """``(answer, nbest, null_odds)`` of one question from its windows.

    ``rows``: one dict per window with ``start_logits``/``end_logits`` (the row's logits, at
    least as long as its real tokens), ``context_offset`` (the row position of the window's
    first context token), ``token_spans`` ((L, 2) character spans of the window's context
    tokens) and ``max_context`` ((L,) bool). The rules are the module docstring's.
    """
    n_best, max_len = options.n_best, options.max_answer_length
    candidates = []                                   # (score, start logit, end logit, char span)
    null = None
    for row in rows:
        s_all = np.asarray(row["start_logits"], dtype=np.float64)
        e_all = np.asarray(row["end_logits"], dtype=np.float64)
        off = int(row["context_offset"])
        spans = np.asarray(row["token_spans"])
        L = len(spans)
        s, e = s_all[off:off + L], e_all[off:off + L]
        cls_score = s_all[0] + e_all[0]
        if null is None or cls_score < null[0]:
            null = (cls_score, s_all[0], e_all[0])
        ends = _top(e, n_best)
        for i in _top(s, n_best):
            if not row["max_context"][i]:
                continue
            for j in ends:
                if j < i or j - i + 1 > max_len:
                    continue
                candidates.append((s[i] + e[j], s[i], e[j], (int(spans[i, 0]), int(spans[j, 1]))))
    # sorted() is stable: equal scores keep window, start-rank, end-rank order
    candidates = sorted(candidates, key=lambda c: -c[0])
    entries, seen = [], set()
    for score, sl, el, (a, b) in candidates:
        if len(entries) == n_best:
            break
        text = context[a:b]
        if text in seen:
            continue
        seen.add(text)
        entries.append(dict(text=text, score=score, start_logit=sl, end_logit=el))
    best = entries[0] if entries else None
    null_odds = None
    answer = best["text"] if best else ""
    if version_2 and null is not None:
        null_entry = dict(text="", score=null[0], start_logit=null[1], end_logit=null[2])
        k = next((n for n, x in enumerate(entries) if x["score"] < null[0]), len(entries))
        entries.insert(k, null_entry)
        null_odds = float(null[0] - best["score"]) if best else float("inf")
        if best is None or null_odds > options.null_score_threshold:
            answer = ""
    probs = _softmax([x["score"] for x in entries])
    nbest = [dict(text=x["text"], probability=float(p), start_logit=float(x["start_logit"]),
                  end_logit=float(x["end_logit"])) for x, p in zip(entries, probs)]
    return answer, nbest, null_odds


# ----------------------------------------------------------------------------- the family
class QuestionAnsweringFamily(Family):
    """SQuAD v1.1 / v2.0 answer spans (module docstring: encoding, decoding, metrics)."""
    name = "qa"
    model_class = BertForQuestionAnswering
    metric = "span_acc"
    default_seq_len = 384
    keys = TOKEN_KEYS + ("start_positions", "end_positions")
    token_keys = TOKEN_KEYS
    input_keys = TOKEN_KEYS

    # -------------------------------------------------------------- data
    def read(self, path, options: TaskOptions):
        from .squad import read_squad
        return read_squad(path)

    def builtin(self, seed: int = 0):
        return builtin_qa(seed)

    def split(self, data, seed: int = 0):
        """80/20 with every context (paragraph) wholly on one side, so that no held-out
        question reads a context seen in training."""
        from .squad import SquadDataset
        from .stdlib_functions import split_by_group
        examples = _examples(data)
        train, test = split_by_group(examples, lambda ex: ex.context, 0.2, seed)
        v2 = _version_2(data)
        source = getattr(data, "source", "")
        return (SquadDataset(train, version_2=v2, source=source),
                SquadDataset(test, version_2=v2, source=source))

    # -------------------------------------------------------------- encoding
    def encode(self, data, tokenizer, seq_len: int, options: TaskOptions) -> Encoded:
        """Rows and labels as the module docstring says; ``meta`` per row:
        ``context_offset`` (row position of the first context token), ``window_start``
        (its index among the context's tokens), ``token_spans`` ((L, 2) character spans of
        the window's context tokens) and ``max_context`` ((L,) bool)."""
        for name in ("doc_stride", "max_query_length"):
            v = getattr(options, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name}={v!r} is invalid, expected a positive integer")
        examples = _examples(data)
        pad, cls, sep = tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id
        ids_rows, types_rows, lengths, starts, ends, example_index = [], [], [], [], [], []
        meta = dict(context_offset=[], window_start=[], token_spans=[], max_context=[])
        for k, ex in enumerate(examples):
            q = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(ex.question)[:options.max_query_length])
            room = seq_len - len(q) - 3
            if room <= 0:
                raise ValueError(f"question {ex.id!r} has {len(q)} tokens (at most "
                                 f"max_query_length={options.max_query_length}), which leaves no room "
                                 f"for context at seq_len={seq_len}: expected seq_len >= {len(q) + 4}")
            if options.doc_stride >= room:
                raise ValueError(f"doc_stride={options.doc_stride} is too large: question {ex.id!r} "
                                 f"leaves room for {room} context tokens at seq_len={seq_len}, "
                                 f"expected doc_stride < {room}")
            toks = tokenizer.tokenize_with_offsets(ex.context)
            ctx = tokenizer.convert_tokens_to_ids([t for t, _, _ in toks])
            spans = np.array([(a, b) for _, a, b in toks], dtype=np.int64).reshape(-1, 2)
            span = None
            if not ex.is_impossible and ex.answers:
                text, a = _answer_start_text(ex.answers[0])
                span = answer_token_span(spans, a, a + len(text))
            windows = context_windows(len(ctx), room, options.doc_stride)
            flags = max_context_flags(windows, len(ctx))
            off = len(q) + 2
            for (w0, wl), flag in zip(windows, flags):
                row = [cls] + q + [sep] + ctx[w0:w0 + wl] + [sep]
                lengths.append(len(row))
                ids_rows.append(row + [pad] * (seq_len - len(row)))
                types_rows.append([0] * off + [1] * (wl + 1) + [0] * (seq_len - len(row)))
                if span is not None and span[0] >= w0 and span[1] < w0 + wl:
                    starts.append(span[0] - w0 + off)
                    ends.append(span[1] - w0 + off)
                else:
                    starts.append(0)
                    ends.append(0)
                example_index.append(k)
                meta["context_offset"].append(off)
                meta["window_start"].append(w0)
                meta["token_spans"].append(spans[w0:w0 + wl])
                meta["max_context"].append(flag)
        ids = np.array(ids_rows, dtype=np.int64).reshape(-1, seq_len)
        arrays = dict(input_ids=ids,
                      token_type_ids=np.array(types_rows, dtype=np.int64).reshape(-1, seq_len),
                      attention_mask=(np.arange(seq_len)[None, :]
                                      < np.array(lengths, dtype=np.int64)[:, None]).astype(np.int64),
                      start_positions=np.array(starts, dtype=np.int64),
                      end_positions=np.array(ends, dtype=np.int64))
        meta["context_offset"] = np.array(meta["context_offset"], dtype=np.int64)
        meta["window_start"] = np.array(meta["window_start"], dtype=np.int64)
        return Encoded(arrays, np.array(example_index, dtype=np.int64), meta)

    # -------------------------------------------------------------- Trainer protocol
    def metrics(self, out, batch) -> dict:
        logits = to_numpy(out.logits).astype(np.float64)                     # (B, S, 2)
        mask = to_numpy(batch["attention_mask"]).astype(bool)
        masked = np.where(mask[..., None], logits, -np.inf)
        s_hat, e_hat = masked[..., 0].argmax(-1), masked[..., 1].argmax(-1)
        hit = (s_hat == to_numpy(batch["start_positions"])) & (e_hat == to_numpy(batch["end_positions"]))
        B = len(mask)
        loss = float(to_numpy(out.loss)) if out.loss is not None else 0.0
        return dict(examples=B, loss=loss * B, span_correct=float(hit.sum()), tokens=float(mask.sum()))

    def summarize(self, m: dict) -> dict:
        n = max(m["examples"], 1)
        return dict(loss=m["loss"] / n, span_acc=m["span_correct"] / n)

    # -------------------------------------------------------------- final evaluation
    def outputs(self, out, batch) -> dict:
        logits = to_numpy(out.logits)
        return dict(start_logits=logits[..., 0], end_logits=logits[..., 1])

    def decode(self, data, encoded: Encoded, outputs: dict, options: TaskOptions) -> QAPredictions:
        """Every question's answer, n-best list and (v2.0) null odds."""
        examples = _examples(data)
        v2 = _version_2(data)
        rows_of = [[] for _ in examples]
        for r, k in enumerate(encoded.example_index):
            rows_of[int(k)].append(r)
        m = encoded.meta
        answers, nbest, null_odds = {}, {}, ({} if v2 else None)
        for k, ex in enumerate(examples):
            rows = [dict(start_logits=outputs["start_logits"][r], end_logits=outputs["end_logits"][r],
                         context_offset=m["context_offset"][r], token_spans=m["token_spans"][r],
                         max_context=m["max_context"][r]) for r in rows_of[k]]
            answers[ex.id], nbest[ex.id], odds = decode_question(ex.context, rows, options, v2)
            if v2:
                null_odds[ex.id] = odds
        return QAPredictions(answers, nbest, null_odds)

    def evaluate(self, data, encoded: Encoded, outputs: dict, options: TaskOptions):
        """``(metrics, QAPredictions)``: squad_evaluate's keys and the trivial baselines."""
        from .squad import squad_evaluate
        preds = self.decode(data, encoded, outputs, options)
        metrics = {k: float(v) for k, v in squad_evaluate(data, preds.answers).items()}
        metrics.update(trivial_baselines(data, encoded))
        return metrics, preds

    def write_predictions(self, out_dir: str, data, encoded: Encoded, predictions: QAPredictions,
                          options: TaskOptions) -> list:
        """``predictions.json`` ({id: answer}), ``nbest_predictions.json`` and, for v2.0,
        ``null_odds.json``; returns the paths."""
        os.makedirs(out_dir, exist_ok=True)
        files = [("predictions.json", predictions.answers),
                 ("nbest_predictions.json", predictions.nbest)]
        if predictions.null_odds is not None:
            files.append(("null_odds.json", predictions.null_odds))
        paths = []
        for name, obj in files:
            path = os.path.join(out_dir, name)
            atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
            paths.append(path)
        return paths


def trivial_baselines(data, encoded: Encoded) -> dict:
    """Exact/F1 of always answering ``""`` and of always answering the context's first token
    (its original characters); ``baseline_exact``/``baseline_f1``: the better by F1."""
    from .squad import squad_evaluate
    examples = _examples(data)
    first_row = {}
    for r, k in enumerate(encoded.example_index):
        first_row.setdefault(int(k), r)
    first = {}
    for k, ex in enumerate(examples):
        spans = encoded.meta["token_spans"][first_row[k]] if k in first_row else ()
        first[ex.id] = ex.context[spans[0][0]:spans[0][1]] if len(spans) else ""
    out = {}
    for name, answers in (("empty", {ex.id: "" for ex in examples}), ("first_token", first)):
        r = squad_evaluate(data, answers)
        out[f"baseline_{name}_exact"] = float(r["exact"])
        out[f"baseline_{name}_f1"] = float(r["f1"])
    best = max(("empty", "first_token"), key=lambda n: out[f"baseline_{n}_f1"])
    out["baseline_exact"] = out[f"baseline_{best}_exact"]
    out["baseline_f1"] = out[f"baseline_{best}_f1"]
    return out


# ----------------------------------------------------------------------------- built-in task
def _default_position(signature: str, param: str, default: str):
    """Where ``param``'s default text starts in ``signature`` (``ast.unparse`` writes
    ``param=default`` or ``param: annotation=default``), None when it is not found there
    exactly."""
    open_paren = signature.find("(")
    pat = re.compile(r"(?:\(|, )" + re.escape(param) + r"(?::[^=]*)?=")
    m = pat.search(signature, max(open_paren, 0))
    if m is None or signature[m.end():m.end() + len(default)] != default:
        return None
    return m.end()


def _public_module(module: str) -> bool:
    """No private part (leading underscore) and no test package."""
    parts = module.split(".")
    return not any(p.startswith("_") or p in ("test", "tests") or p.startswith("test_") for p in parts)


def builtin_questions(functions, rng, version_2: bool = True,
                      min_defaults: int = BUILTIN_MIN_DEFAULTS) -> list:
    """The built-in questions about ``functions`` (``FunctionDoc``).

    A function is asked about when its module is public (no part with a leading underscore,
    no test package), its context (signature, newline, first docstring paragraph) has at
    most ``BUILTIN_MAX_CONTEXT_CHARS`` characters and at least ``min_defaults`` of its
    defaults have a letter or digit (an answer of punctuation alone, ``''`` or ``()``, is
    empty after the official normalization) and are found in the signature. Questions: every
    such parameter (answer: the default's text at its place in the signature, checked), but
    of those whose default is ``None`` one (drawn with ``rng``) at most, since ``None`` is
    half of all defaults; with ``version_2``, every parameter without a default
    (unanswerable). Returns ``squad.SquadQuestion`` objects with ids
    ``module:qualname:parameter``."""
    from .squad import SquadQuestion
    out = []
    for f in functions:
        if not f.defaults or not _public_module(f.module):
            continue
        para = f.paragraphs[0] if f.paragraphs else ""
        context = f"{f.signature}\n{para}".strip()
        if len(context) > BUILTIN_MAX_CONTEXT_CHARS:
            continue
        defaults = {p: d for p, d in f.defaults if any(ch.isalnum() for ch in d)
                    and _default_position(f.signature, p, d) is not None}
        if len(defaults) < min_defaults:
            continue
        # "None" is half of all defaults: one None question per function at most, so that
        # answering "None" everywhere is no way around reading the question
        nones = [p for p in f.params if defaults.get(p) == "None"]
        skip = set(nones) - ({nones[int(rng.integers(len(nones)))]} if nones else set())
        for p in f.params:
            if p in skip:
                continue
            qid = f"{f.module}:{f.qualname}:{p}"
            question = QUESTION_TEMPLATE.format(param=p)
            if p in defaults:
                pos = _default_position(f.signature, p, defaults[p])
                assert context[pos:pos + len(defaults[p])] == defaults[p]
                out.append(SquadQuestion(id=qid, title=f"{f.module}.{f.qualname}", question=question,
                                         context=context, answers=((defaults[p], pos),),
                                         is_impossible=False))
            elif version_2 and p not in f.default_of:
                out.append(SquadQuestion(id=qid, title=f"{f.module}.{f.qualname}", question=question,
                                         context=context, answers=(), is_impossible=True))
    return out


def builtin_qa(seed: int = 0, version_2: bool = True):
    """``(train, test)`` SquadDatasets (v2.0) of the built-in task: functions split by module
    (``split_by_group``), questions made by ``builtin_questions``; each side capped
    (``BUILTIN_MAX_TRAIN``/``BUILTIN_MAX_TEST``) by a seeded sample that keeps source order."""
    from .squad import SquadDataset
    from .stdlib_functions import split_by_group, stdlib_functions
    functions = [f for f in stdlib_functions() if f.defaults]
    train_f, test_f = split_by_group(functions, lambda f: f.module, 0.2, seed)
    rng = np.random.default_rng(seed)
    sides = []
    for fs, cap in ((train_f, BUILTIN_MAX_TRAIN), (test_f, BUILTIN_MAX_TEST)):
        qs = builtin_questions(fs, rng, version_2)
        if len(qs) > cap:
            keep = np.sort(rng.choice(len(qs), size=cap, replace=False))
            qs = [qs[i] for i in keep]
        sides.append(SquadDataset(qs, version_2=version_2, source="built-in qa task"))
    return sides[0], sides[1]
