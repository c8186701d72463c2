"""SQuAD-style question answering (``minibert.tasks.qa``): context windows and labels,
decoding on hand-made logits, the errors, the fixture files end to end, the built-in task,
and a live comparison with Hugging Face's question-answering pipeline."""
import json
import os
import shutil

import numpy as np
import pytest

from minibert.tasks import get_family
from minibert.tasks.base import TaskOptions, predict
from minibert.tasks.qa import (
    QuestionAnsweringFamily,
    answer_token_span,
    context_windows,
    decode_question,
    max_context_flags,
)
from minibert.tasks.squad import SquadDataset, SquadQuestion
from minibert.tokenization import BertTokenizer

DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data")
VOCAB = os.path.join(DATA, "bert-base-uncased-vocab.txt")
FIXTURES = {name: os.path.join(DATA, name) for name in
            ("squad_v1.1.json", "squad_v2.0.json", "squad_flat.json", "squad_flat.jsonl")}


@pytest.fixture(scope="module")
def tok():
    return BertTokenizer(VOCAB)


def _q(qid, question, context, answer=None, impossible=False):
    answers = () if answer is None else ((answer, context.index(answer)),)
    return SquadQuestion(qid, "", question, context, answers, impossible)


def QSet(questions, version_2=False):
    return SquadDataset(list(questions), version_2)


LONG = ("The harbour of Corrow was dredged for the first time in 1788 by order of the county "
        "council, which had borrowed four hundred pounds from a Bristol merchant for the work. "
        "A stone breakwater followed in 1823; it was designed by the engineer Agnes Pellow. "
        "Storms broke the outer arm in 1857 and again in 1881, and the fish market opened "
        "beside the inner basin in 1896, under an iron roof painted green.")


def _long_set():
    return QSet([_q("a", "Who designed the breakwater?", LONG, "Agnes Pellow"),
                 _q("b", "When was the harbour first dredged?", LONG, "1788"),
                 _q("c", "What colour is the roof?", LONG, "green"),
                 _q("d", "Who repaired the arm in 1857?", LONG, impossible=True)], version_2=True)


# ----------------------------------------------------------------------------- windows, labels
def test_windows_and_max_context_by_hand():
    assert context_windows(10, 4, 3) == [(0, 4), (3, 4), (6, 4)]
    assert context_windows(10, 4, 2) == [(0, 4), (2, 4), (4, 4), (6, 4)]
    assert context_windows(4, 4, 2) == [(0, 4)]
    assert context_windows(0, 4, 2) == [(0, 0)]
    # token 3 of windows (0,4),(2,4): window 0 has it last (min(3, 0)), window 1 at index 1
    # (min(1, 2) = 1): window 1 wins; token 2: window 0 min(2,1)=1, window 1 min(0,3)=0
    f = max_context_flags([(0, 4), (2, 4)], 6)
    assert f[0].tolist() == [True, True, True, False]
    assert f[1].tolist() == [False, True, True, True]
    # a tie goes to the first window; the longer window wins by 0.01 * length
    f = max_context_flags([(0, 3), (1, 3)], 4)
    assert f[0].tolist() == [True, True, False] and f[1].tolist() == [False, True, True]
    f = max_context_flags([(0, 4), (2, 3)], 5)         # token 2: 1 + 0.04 vs 0 + 0.03 ...
    assert f[0][2] and not f[1][0]
    spans = np.array([[0, 3], [4, 7], [7, 9], [10, 12]])
    assert answer_token_span(spans, 4, 9) == (1, 2)
    assert answer_token_span(spans, 5, 8) == (1, 2)     # partial tokens count
    assert answer_token_span(spans, 3, 4) is None       # only the space


@pytest.mark.parametrize("seq_len,stride", [(32, 8), (40, 16), (384, 128)])
def test_windows_cover_the_context_and_labels_point_at_the_answer(tok, seq_len, stride):
    fam = QuestionAnsweringFamily()
    data = _long_set()
    opts = TaskOptions(doc_stride=stride)
    enc = fam.encode(data, tok, seq_len, opts)
    a = enc.arrays
    assert a["input_ids"].shape[1] == seq_len
    for k, ex in enumerate(data.questions):
        rows = np.nonzero(enc.example_index == k)[0]
        q = tok.tokenize(ex.question)
        ctx = [t for t, _, _ in tok.tokenize_with_offsets(ex.context)]
        room = seq_len - len(q) - 3
        starts = enc.meta["window_start"][rows].tolist()
        assert starts == list(range(0, stride * len(rows), stride))
        covered = set()
        for r in rows:
            n = int(a["attention_mask"][r].sum())
            ids = a["input_ids"][r, :n].tolist()
            off, w0 = enc.meta["context_offset"][r], enc.meta["window_start"][r]
            L = n - off - 1
            assert off == len(q) + 2 and L <= room
            assert tok.convert_ids_to_tokens(ids) == ["[CLS]"] + q + ["[SEP]"] + ctx[w0:w0 + L] + ["[SEP]"]
            assert a["token_type_ids"][r, :n].tolist() == [0] * off + [1] * (L + 1)
            assert not a["attention_mask"][r, n:].any() and not a["token_type_ids"][r, n:].any()
            assert len(enc.meta["token_spans"][r]) == L == len(enc.meta["max_context"][r])
            covered.update(range(w0, w0 + L))
            s, e = a["start_positions"][r], a["end_positions"][r]
            if ex.is_impossible:
                assert s == e == 0
                continue
            text, char0 = ex.answers[0]
            first, last = answer_token_span(np.array([(x, y) for _, x, y in tok.tokenize_with_offsets(
                ex.context)]), char0, char0 + len(text))
            if w0 <= first and last < w0 + L:
                spans = enc.meta["token_spans"][r]
                assert ex.context[spans[s - off][0]:spans[e - off][1]] == text
                assert tok.convert_ids_to_tokens(ids[s:e + 1]) == tok.tokenize(text)
            else:
                assert s == e == 0
        assert covered == set(range(len(ctx)))
        # every context token is max-context in exactly one window
        count = np.zeros(len(ctx), dtype=int)
        for r in rows:
            w0 = enc.meta["window_start"][r]
            count[w0:w0 + len(enc.meta["max_context"][r])] += enc.meta["max_context"][r]
        assert (count == 1).all()
    if seq_len == 32:           # the long context needs several windows, some without the answer
        assert len(enc) > 3 * len(data.questions)
        answerable = [r for r in range(len(enc)) if not data.questions[enc.example_index[r]].is_impossible]
        assert any(a["start_positions"][r] == 0 for r in answerable)


def test_question_truncated_to_max_query_length(tok):
    fam = QuestionAnsweringFamily()
    long_q = "which of the many stone structures " * 6 + "?"
    enc = fam.encode(QSet([_q("q", long_q, LONG, "1823")]), tok, 64,
                     TaskOptions(max_query_length=10, doc_stride=8))
    assert (enc.meta["context_offset"] == 12).all()
    assert enc.arrays["input_ids"][0, 11] == tok.sep_token_id


def test_errors_name_the_question_and_the_numbers(tok):
    fam = QuestionAnsweringFamily()
    data = QSet([_q("short-q", "Who?", LONG, "Agnes Pellow"),
                 _q("long-q", "Who designed the stone breakwater of the harbour?", LONG, "Agnes Pellow")])
    n = len(tok.tokenize(data.questions[1].question))
    with pytest.raises(ValueError, match=rf"question 'long-q' has {n} tokens.*no room for context at "
                                         rf"seq_len={n + 3}"):
        fam.encode(data, tok, n + 3, TaskOptions(doc_stride=1))
    with pytest.raises(ValueError, match=r"doc_stride=10 is too large: question 'long-q' leaves room for "
                                         rf"{20 - n - 3} context tokens at seq_len=20"):
        fam.encode(data, tok, 20, TaskOptions(doc_stride=10))
    with pytest.raises(ValueError, match=r"doc_stride=0 is invalid"):
        fam.encode(data, tok, 64, TaskOptions(doc_stride=0))


# ----------------------------------------------------------------------------- decoding
CTX = "alpha beta gamma delta epsilon"
SPANS = np.array([[0, 5], [6, 10], [11, 16], [17, 22], [23, 30]])


def _row(start, end, spans=SPANS, flags=None, cls=(0.0, 0.0)):
    """A row [CLS] q [SEP] <context> [SEP]: logits of the context tokens given, others -50."""
    off = 3
    L = len(spans)
    s = np.full(off + L + 1, -50.0)
    e = np.full(off + L + 1, -50.0)
    s[0], e[0] = cls
    s[off:off + L], e[off:off + L] = start, end
    return dict(start_logits=s, end_logits=e, context_offset=off, token_spans=spans,
                max_context=np.ones(L, bool) if flags is None else np.asarray(flags))


def test_decode_nbest_order_and_probabilities():
    opts = TaskOptions(n_best=20, max_answer_length=30)
    row = _row([1.0, 3.0, 0.0, -1.0, 0.5], [0.0, 2.0, 2.5, -3.0, 1.0])
    answer, nbest, odds = decode_question(CTX, [row], opts, version_2=False)
    # every pair i <= j by score s_i + e_j, computed here by brute force
    s, e = row["start_logits"][3:8], row["end_logits"][3:8]
    pairs = sorted(((s[i] + e[j], i, j) for i in range(5) for j in range(i, 5)), key=lambda p: -p[0])
    assert [x["text"] for x in nbest] == [CTX[SPANS[i, 0]:SPANS[j, 1]] for _, i, j in pairs]
    assert answer == "beta gamma" == nbest[0]["text"] and odds is None
    scores = np.array([p[0] for p in pairs])
    probs = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
    np.testing.assert_allclose([x["probability"] for x in nbest], probs, rtol=1e-12)
    assert nbest[0]["start_logit"] == 3.0 and nbest[0]["end_logit"] == 2.5
    # n_best = 2: only the two best starts (beta, alpha) and ends (gamma, beta) are paired
    _, nbest2, _ = decode_question(CTX, [row], TaskOptions(n_best=2), version_2=False)
    assert [x["text"] for x in nbest2] == ["beta gamma", "beta"]
    _, nbest3, _ = decode_question(CTX, [row], TaskOptions(n_best=3), version_2=False)
    # starts beta, alpha, epsilon; ends gamma, beta, epsilon: 3 best valid pairs of those
    assert [x["text"] for x in nbest3] == ["beta gamma", "beta", "beta gamma delta epsilon"]


def test_decode_max_length_and_start_before_end():
    # the best start comes after the best end: that pair is never taken
    row = _row([0.0, 0.0, 0.0, 5.0, 0.0], [0.0, 4.0, 0.0, 0.0, 0.0])
    answer, nbest, _ = decode_question(CTX, [row], TaskOptions(), version_2=False)
    assert answer == "delta"                            # 5 + 0 beats beta: 0 + 4
    assert "beta gamma delta" not in [x["text"] for x in nbest[:1]]
    row = _row([6.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 6.0])
    assert decode_question(CTX, [row], TaskOptions(max_answer_length=5), False)[0] == CTX
    got = decode_question(CTX, [row], TaskOptions(max_answer_length=4), False)[1]
    assert all(len(x["text"].split()) <= 4 for x in got) and got[0]["text"] == "alpha"
    assert got[0]["start_logit"] == 6.0 and got[0]["end_logit"] == 0.0


def test_decode_keeps_the_original_characters():
    context = "Café  AU-lait\ttoday"
    spans = np.array([[0, 4], [6, 8], [8, 9], [9, 13], [14, 19]])   # cafe au - lait today
    row = _row([0.0, 5.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 5.0, 0.0], spans=spans)
    assert decode_question(context, [row], TaskOptions(), False)[0] == "AU-lait"
    row = _row([5.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 5.0, 0.0], spans=spans)
    assert decode_question(context, [row], TaskOptions(), False)[0] == "Café  AU-lait"


def test_decode_max_context_rule_over_windows():
    # two windows over "alpha beta gamma delta epsilon": tokens 0-3 and 1-4.
    w1 = _row([-9.0, -9.0, 9.0, 0], [-9.0, -9.0, 9.0, -9.0], spans=SPANS[0:4], flags=[1, 1, 0, 0])
    w2 = _row([0, 1.0, 0, 0], [0, 1.0, 0, 0], spans=SPANS[1:5], flags=[0, 1, 1, 1])
    # gamma scores 18 in window 1, but window 1 is not its max-context window: not taken there
    answer, nbest, _ = decode_question(CTX, [w1, w2], TaskOptions(), False)
    assert answer == "gamma" and nbest[0]["start_logit"] == 1.0
    # a start with max context may end on a token without it (the reference does the same)
    w1 = _row([0, 7.0, 0, 0], [0, 0, 0, 6.0], spans=SPANS[0:4], flags=[1, 1, 0, 0])
    assert decode_question(CTX, [w1, w2], TaskOptions(), False)[0] == "beta gamma delta"
    # the same text from two windows appears once in the n-best list
    texts = [x["text"] for x in decode_question(CTX, [w1, w2], TaskOptions(), False)[1]]
    assert len(texts) == len(set(texts))


def test_decode_null_score_and_threshold():
    row = _row([0.0, 2.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0, 0.0], cls=(1.0, 2.5))
    answer, nbest, odds = decode_question(CTX, [row], TaskOptions(), version_2=True)
    assert answer == "beta" and odds == pytest.approx(3.5 - 4.0)
    assert [x["text"] for x in nbest[:3]] == ["beta", "", "beta gamma"]
    assert sum(x["probability"] for x in nbest) == pytest.approx(1.0)
    answer, _, _ = decode_question(CTX, [row], TaskOptions(null_score_threshold=-0.6), version_2=True)
    assert answer == ""                                   # -0.5 > -0.6
    answer, _, _ = decode_question(CTX, [row], TaskOptions(null_score_threshold=-0.5), version_2=True)
    assert answer == "beta"                               # not strictly greater
    # the null score is the smallest over the windows
    other = _row([0.0] * 4, [0.0] * 4, spans=SPANS[1:5], cls=(-3.0, 0.0))
    answer, nbest, odds = decode_question(CTX, [row, other], TaskOptions(), version_2=True)
    assert odds == pytest.approx(-3.0 - 4.0) and nbest[-1]["text"] == ""
    # v1.1: no null answer at all
    assert all(x["text"] for x in decode_question(CTX, [row], TaskOptions(), False)[1])


# ----------------------------------------------------------------------------- files end to end
def _oracle_outputs(enc, miss=()):
    """Logits that point at each row's labels (10 on the label, 0 elsewhere); rows of
    questions in ``miss`` point at the row's last context token instead."""
    out = dict(start_logits=[], end_logits=[])
    for r in range(len(enc)):
        n = int(enc.arrays["attention_mask"][r].sum())
        s, e = np.zeros(n), np.zeros(n)
        i, j = enc.arrays["start_positions"][r], enc.arrays["end_positions"][r]
        if enc.example_index[r] in miss:
            i = j = n - 2
        s[i] += 10
        e[j] += 10
        out["start_logits"].append(s)
        out["end_logits"].append(e)
    return out


@pytest.mark.parametrize("name,n,v2", [("squad_v1.1.json", 10, False), ("squad_v2.0.json", 11, True),
                                       ("squad_flat.json", 7, True), ("squad_flat.jsonl", 7, True)])
def test_fixture_files_end_to_end(tok, tmp_path, name, n, v2):
    fam = get_family("qa")
    opts = TaskOptions(doc_stride=16)
    data = fam.read(FIXTURES[name], opts)
    examples = list(data)
    assert len(examples) == n
    enc = fam.encode(data, tok, 48, opts)
    if name == "squad_v2.0.json":
        assert len(enc) > len(examples) + 5                # the harbour needs several windows
    metrics, preds = fam.evaluate(data, enc, _oracle_outputs(enc), opts)
    assert metrics["exact"] == metrics["f1"] == 100.0
    for ex in examples:
        golds = [text for text, _ in ex.answers]
        assert preds.answers[ex.id] in (golds if golds else [""])
    assert bool(data.version_2) == v2 and ("HasAns_exact" in metrics) == v2
    n_empty = sum(ex.is_impossible for ex in examples)
    assert metrics["baseline_empty_exact"] == pytest.approx(100.0 * n_empty / n)
    better = max(("empty", "first_token"), key=lambda b: metrics[f"baseline_{b}_f1"])
    assert metrics["baseline_f1"] == metrics[f"baseline_{better}_f1"]
    assert metrics["baseline_exact"] == metrics[f"baseline_{better}_exact"]
    # a wrong answer everywhere: the first question's rows point at another token
    wrong, _ = fam.evaluate(data, enc, _oracle_outputs(enc, miss={0}), opts)
    assert wrong["exact"] < 100.0
    paths = fam.write_predictions(str(tmp_path), data, enc, preds, opts)
    names = sorted(os.path.basename(p) for p in paths)
    expected = ["predictions.json", "nbest_predictions.json"] + (["null_odds.json"] if v2 else [])
    assert names == sorted(expected)
    with open(tmp_path / "predictions.json") as fh:
        assert json.load(fh) == preds.answers
    with open(tmp_path / "nbest_predictions.json") as fh:
        nbest = json.load(fh)
    assert set(nbest) == {ex.id for ex in examples}
    for entries in nbest.values():
        assert set(entries[0]) == {"text", "probability", "start_logit", "end_logit"}
        assert sum(x["probability"] for x in entries) == pytest.approx(1.0)
    if v2:
        with open(tmp_path / "null_odds.json") as fh:
            odds = json.load(fh)
        for ex in examples:
            assert (odds[ex.id] > 0) == ex.is_impossible


# ----------------------------------------------------------------------------- built-in task
@pytest.mark.slow
def test_builtin_task_is_checkable_deterministic_and_split_by_module():
    fam = get_family("qa")
    train, test = fam.builtin(seed=0)
    train_ex, test_ex = list(train.questions), list(test.questions)
    assert train.version_2 and test.version_2
    assert len(train_ex) > 1000 and len(test_ex) > 200
    for ex in train_ex + test_ex:
        param = ex.question[len("What is the default value of "):-1]
        sig = ex.context.split("\n")[0]
        assert ex.question == f"What is the default value of {param}?"
        assert sig.startswith(ex.title.split(".")[-1] + "(")
        if ex.is_impossible:
            assert not ex.answers
            continue
        (text, start), = ex.answers
        assert ex.context[start:start + len(text)] == text
        assert sig[:start].endswith("=") and param in sig[:start]
    impossible = sum(ex.is_impossible for ex in train_ex) / len(train_ex)
    assert 0.2 < impossible < 0.5
    train_modules = {ex.id.split(":")[0] for ex in train_ex}          # id: module:qualname:param
    test_modules = {ex.id.split(":")[0] for ex in test_ex}
    assert all(ex.title == ex.id.split(":")[0] + "." + ex.id.split(":")[1] for ex in train_ex)
    assert not train_modules & test_modules
    again, _ = fam.builtin(seed=0)
    assert [(e.id, e.answers) for e in again.questions] == [(e.id, e.answers) for e in train_ex]
    other, _ = fam.builtin(seed=1)
    assert [e.id for e in other.questions] != [e.id for e in train_ex]


# ----------------------------------------------------------------------------- Hugging Face
HF_QUESTIONS = [
    # short contexts of common single-token words, no word twice: every span has its own text
    ("When did the ship leave the port?", "The ship left the port on a cold morning in spring."),
    ("Who wrote the letter?", "My brother wrote that letter after dinner."),
    ("Where is the house?", "Our house is near the river."),
    ("What colour is the door?", "Red door."),
    ("Why did they stop?", "They stopped because rain began."),
    ("How many people came?", "About forty people came to see her play music."),
    # one- and two-token contexts: [CLS]'s null score often beats every span
    ("Is it raining?", "Yes"),
    ("Where did she go?", "Paris"),
    ("When will he return?", "Tomorrow"),
    ("Who knows?", "Nobody"),
    ("What did you drink?", "Green tea"),
    ("How many?", "Seven"),
    ("Which one?", "The first"),
    ("Why?", "No reason"),
]


@pytest.mark.slow
def test_answers_equal_hugging_face_question_answering_pipeline(tmp_path):
    """minibert's n-best texts and answers (v1.1 and v2.0) equal the question-answering
    pipeline's (transformers 4.x; version 5 removed it) on one checkpoint and one window per
    question, with the same top_k / n-best, max_answer_len, max_seq_len and question length.

    Where the two rules meet: the pipeline ranks a window's spans by ``p_start * p_end``, each a
    softmax over the window's context tokens and [CLS]; within one window that is the order of
    ``start_logit + end_logit`` (the reference implementation's score), and its null answer
    (``p_start[CLS] * p_end[CLS]`` against the best span) is the null score rule at threshold 0.
    Where they part, so that several windows are not compared: each window is normalized on
    its own (scores of different windows are not comparable to logit sums), no max-context
    rule (a span in two windows counts twice, and equal texts have their scores added), its
    ``doc_stride`` is the overlap of windows, not the step between their starts, and it pairs
    all starts and ends, not the n_best best of each (the same here: contexts shorter than
    n_best). ``align_to_words=False`` keeps its answers to the tokens' own characters.
    """
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    try:
        transformers.pipelines.check_task("question-answering")
    except Exception as e:                                 # removed in transformers 5
        pytest.skip(f"transformers {transformers.__version__} has no question-answering pipeline ({e})")
    from minibert import BertForQuestionAnswering
    # the checkpoint as transformers writes it, random but non-trivial: every weight moved off
    # its initial value so that the span logits differ clearly from token to token
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=37,
                                  max_position_embeddings=128)
    hf_model = transformers.BertForQuestionAnswering(cfg).eval()
    with torch.no_grad():
        for p in hf_model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        # segment A ([CLS] and the question) moved: [CLS]'s null score now beats the best
        # span on some of the short contexts below, so that both kinds of answer are compared
        g = torch.Generator().manual_seed(1)
        hf_model.bert.embeddings.token_type_embeddings.weight[0] += 0.3 * torch.randn(32, generator=g)
    ckpt = tmp_path / "ckpt"
    hf_model.save_pretrained(str(ckpt))
    shutil.copy(VOCAB, ckpt / "vocab.txt")
    with open(ckpt / "tokenizer_config.json", "w") as fh:
        json.dump({"do_lower_case": True, "model_max_length": 128, "tokenizer_class": "BertTokenizer"}, fh)
    model = BertForQuestionAnswering.from_pretrained(str(ckpt))
    tok = BertTokenizer.from_pretrained(str(ckpt))
    hf = transformers.pipeline("question-answering", model=hf_model, tokenizer=str(ckpt), device="cpu")

    fam = get_family("qa")
    seq_len, n_best, max_len = 64, 20, 30
    opts = TaskOptions(n_best=n_best, max_answer_length=max_len, doc_stride=16, max_query_length=64)
    data = QSet([_q(f"q{i}", q, c) for i, (q, c) in enumerate(HF_QUESTIONS)], version_2=True)
    enc = fam.encode(data, tok, seq_len, opts)
    assert len(enc) == len(data.questions)                 # one window each: see the report
    outputs = predict(model, enc, fam)
    v1 = fam.decode(QSet(data, version_2=False), enc, outputs, opts)
    v2 = fam.decode(data, enc, outputs, opts)
    empty = 0
    for ex in data.questions:
        common = dict(question=ex.question, context=ex.context, top_k=n_best, max_answer_len=max_len,
                      max_seq_len=seq_len, max_question_len=64, align_to_words=False)
        got = hf(doc_stride=16, **common)
        got = got if isinstance(got, list) else [got]
        # when top_k exceeds the spans of positive probability the pipeline fills its list
        # with spans of probability 0 starting on [CLS] (offsets (0, 0)): not answers
        got = [g for g in got if g["score"] > 0]
        mine = [x["text"] for x in v1.nbest[ex.id]]
        assert [g["answer"] for g in got] == mine[:len(got)], ex.id
        assert v1.answers[ex.id] == got[0]["answer"]
        # v2.0: the pipeline's null answer against the best span (its threshold is 0)
        best = hf(doc_stride=16, handle_impossible_answer=True, **{**common, "top_k": 1})
        assert v2.answers[ex.id] == best["answer"], ex.id
        empty += best["answer"] == ""
    assert 0 < empty < len(data.questions), "the comparison should see null and span answers"


# ----------------------------------------------------------------------------- a real model
@pytest.mark.slow
def test_trainer_predict_evaluate_on_the_v2_fixture(tok, tmp_path):
    """A tiny model through the whole run: Trainer (span_acc), predict, evaluate, write."""
    from minibert import BertConfig, BertForQuestionAnswering
    from minibert.train import TrainConfig, Trainer
    fam = get_family("qa")
    opts = TaskOptions(doc_stride=16)
    data = fam.read(FIXTURES["squad_v2.0.json"], opts)
    enc = fam.encode(data, tok, 48, opts)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=24, max_position_embeddings=64)
    BertForQuestionAnswering(cfg, seed=1).save_pretrained(str(tmp_path / "ckpt"))
    model = BertForQuestionAnswering.from_pretrained(str(tmp_path / "ckpt"), new_head=True)
    trainer = Trainer(model, enc.arrays, enc.arrays, str(tmp_path / "run"),
                      TrainConfig(steps=4, batch_size=8, lr=1e-3, eval_every=2, eval_batches=8,
                                  save_every=4), task=fam)
    trainer.train()
    assert trainer.history[-1]["loss"] > 0 and 0 <= trainer.evals[-1]["span_acc"] <= 1
    outputs = predict(model, enc, fam, batch_size=5)
    assert len(outputs["start_logits"]) == len(enc)
    metrics, preds = fam.evaluate(data, enc, outputs, opts)
    assert {"exact", "f1", "HasAns_exact", "NoAns_exact", "baseline_exact", "baseline_f1"} <= set(metrics)
    assert set(preds.answers) == {q.id for q in data}
    for q in data:                                        # answers are pieces of the context
        assert preds.answers[q.id] in q.context
    fam.write_predictions(str(tmp_path / "out"), data, enc, preds, opts)
    assert sorted(os.listdir(tmp_path / "out")) == ["nbest_predictions.json", "null_odds.json",
                                                    "predictions.json"]


def test_split_keeps_each_context_on_one_side():
    fam = get_family("qa")
    data = fam.read(FIXTURES["squad_v2.0.json"], TaskOptions())
    more = fam.read(FIXTURES["squad_v1.1.json"], TaskOptions())
    both = SquadDataset(list(data) + list(more), version_2=True)
    train, test = fam.split(both, seed=0)
    assert train.version_2 and test.version_2
    assert len(train) + len(test) == len(both) and len(test) > 0
    assert not {q.context for q in train} & {q.context for q in test}
    assert [q.id for q in fam.split(both, seed=0)[1]] == [q.id for q in test]
