"""conlleval's chunk counts: hand-counted cases, and an independent second implementation of
conlleval.pl's token-by-token counting loop on random IOB1/BIO tag sequences."""
import numpy as np
import pytest

from minibert.tasks import conlleval
from minibert.tasks.conlleval import chunks, evaluate, evaluate_file, read_pairs, split_tag


def counts(gold, guessed):
    r = evaluate(gold, guessed)
    return r.overall.correct, r.overall.guessed, r.overall.gold


def test_split_tag():
    assert split_tag("O") == ("O", "")
    assert split_tag("B-PER") == ("B", "PER")
    assert split_tag("I-per-son") == ("I", "per-son")
    for bad in ("X-PER", "B", "B-", "PER", "o", ""):
        with pytest.raises(ValueError, match="expected 'O' or one of B-, I-, E-, S-"):
            split_tag(bad)


def test_bio_chunks():
    assert chunks("B-PER I-PER O B-LOC B-LOC I-LOC O".split()) == [
        ("PER", 0, 1), ("LOC", 3, 3), ("LOC", 4, 5)]


def test_iob1_chunks_i_after_o_or_another_type_starts_a_chunk():
    # IOB1: I- opens a chunk after O or after another type; B- only splits two chunks of one type
    tags = "I-PER I-PER O I-LOC I-ORG I-ORG B-ORG I-ORG".split()
    assert chunks(tags) == [("PER", 0, 1), ("LOC", 3, 3), ("ORG", 4, 5), ("ORG", 6, 7)]


def test_iob1_and_bio_encodings_of_the_same_entities_agree():
    iob1 = "I-PER I-PER O I-LOC B-LOC O I-MISC".split()
    bio = "B-PER I-PER O B-LOC B-LOC O B-MISC".split()
    assert chunks(iob1) == chunks(bio) == [("PER", 0, 1), ("LOC", 3, 3), ("LOC", 4, 4),
                                           ("MISC", 6, 6)]
    r = evaluate([bio], [iob1])                    # conlleval scores chunks, not tag strings
    assert (r.f1, r.overall.correct) == (1.0, 4)
    assert r.correct_tags == 4 and r.tokens == 7   # ... but token accuracy compares the tags


def test_iobes_chunks():
    tags = "S-PER B-LOC I-LOC E-LOC S-LOC S-LOC O B-ORG E-ORG B-ORG E-ORG".split()
    assert chunks(tags) == [("PER", 0, 0), ("LOC", 1, 3), ("LOC", 4, 4), ("LOC", 5, 5),
                            ("ORG", 7, 8), ("ORG", 9, 10)]
    # an E- or I- right after O opens a chunk; after E- a new I- opens one too
    assert chunks("O E-X O I-X E-X I-X".split()) == [("X", 1, 1), ("X", 3, 4), ("X", 5, 5)]


def test_chunk_at_sentence_end_and_across_sentences():
    assert chunks("O B-PER I-PER".split()) == [("PER", 1, 2)]
    # two sentences: the chunk at the end of the first does not run into the second
    gold = [["O", "B-PER"], ["I-PER", "O"]]
    assert counts(gold, gold) == (2, 2, 2)


def test_hand_counted_mixture():
    gold = [["B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG", "I-ORG", "I-ORG"],
            ["B-MISC", "O", "B-LOC", "I-LOC"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG", "O", "B-ORG", "I-ORG", "O"],       # exact; type
            ["B-MISC", "B-PER", "B-LOC", "I-LOC"]]                             # exact; extra; exact
    # gold chunks: PER, LOC, ORG, MISC, LOC = 5; guessed: PER, ORG, ORG(5-6), MISC, PER, LOC = 6
    # correct: PER(0-1), MISC, LOC(2-3) = 3 (LOC->ORG type mismatch, ORG 5-7 vs 5-6 boundary)
    r = evaluate(gold, pred)
    assert (r.overall.correct, r.overall.guessed, r.overall.gold) == (3, 6, 5)
    assert r.precision == pytest.approx(3 / 6)
    assert r.recall == pytest.approx(3 / 5)
    assert r.f1 == pytest.approx(2 * (1 / 2) * (3 / 5) / (1 / 2 + 3 / 5))
    assert r.accuracy == pytest.approx(9 / 12)
    per = {t: (s.correct, s.guessed, s.gold) for t, s in r.per_type.items()}
    assert per == {"LOC": (1, 1, 2), "MISC": (1, 1, 1), "ORG": (0, 2, 1), "PER": (1, 2, 1)}
    assert list(r.per_type) == ["LOC", "MISC", "ORG", "PER"]
    assert r.per_type["ORG"].f1 == 0.0 and r.per_type["LOC"].recall == 0.5


def test_type_mismatch_and_boundary_mismatch_score_zero():
    assert counts([["B-PER", "I-PER"]], [["B-ORG", "I-ORG"]]) == (0, 1, 1)
    assert counts([["B-PER", "I-PER", "I-PER"]], [["B-PER", "I-PER", "O"]]) == (0, 1, 1)
    assert counts([["O", "B-PER", "I-PER"]], [["B-PER", "I-PER", "I-PER"]]) == (0, 1, 1)
    # a type change inside a guess splits it: neither part matches the gold chunk
    assert counts([["B-PER", "I-PER"]], [["B-PER", "I-ORG"]]) == (0, 2, 1)


def test_empty_predictions_and_no_gold():
    r = evaluate([["B-PER", "O"]], [["O", "O"]])
    assert (r.precision, r.recall, r.f1) == (0.0, 0.0, 0.0)   # nothing guessed: precision 0
    assert r.accuracy == 0.5
    r = evaluate([["O", "O"]], [["B-PER", "O"]])
    assert (r.precision, r.recall, r.f1) == (0.0, 0.0, 0.0)
    r = evaluate([["O"]], [["O"]])
    assert (r.f1, r.accuracy) == (0.0, 1.0)
    assert evaluate([], []).accuracy == 0.0


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="sentence 0 has 1 guessed tags, expected 2"):
        evaluate([["O", "O"]], [["O"]])
    with pytest.raises(ValueError, match="guessed has 0 sentences, expected 1"):
        evaluate([["O"]], [])


def test_read_pairs_and_file(tmp_path):
    text = ("-DOCSTART- -X- O O\n\nEU NNP B-ORG B-ORG\nrejects VBZ O O\n\n"
            "Peter\tB-PER\tB-PER\nBlackburn\tI-PER\tO\n")
    gold, guessed = read_pairs(text.splitlines())
    assert gold == [["B-ORG", "O"], ["B-PER", "I-PER"]]
    assert guessed == [["B-ORG", "O"], ["B-PER", "O"]]
    p = tmp_path / "out.conll"
    p.write_text(text)
    r = evaluate_file(p)
    assert (r.overall.correct, r.overall.guessed, r.overall.gold) == (1, 2, 2)
    assert "FB1:  50.00" in conlleval.report(r)
    with pytest.raises(ValueError, match="line 1: 'EU B-ORG' has 2 column"):
        read_pairs(["EU B-ORG"])
    with pytest.raises(ValueError, match="line 2: tag='X-ORG' is invalid"):
        read_pairs(["EU B-ORG B-ORG", "x O X-ORG"])


# ----------------------------------------------------------------- conlleval.pl's loop, again
def _perl_end(prev, tag, prev_type, type_):
    """conlleval.pl's endOfChunk for B/I/O tags."""
    return ((prev, tag) in {("B", "B"), ("B", "O"), ("I", "B"), ("I", "O")}
            or (prev != "O" and prev_type != type_))


def _perl_start(prev, tag, prev_type, type_):
    """conlleval.pl's startOfChunk for B/I/O tags."""
    return ((prev, tag) in {("B", "B"), ("I", "B"), ("O", "B"), ("O", "I")}
            or (tag != "O" and prev_type != type_))


def _perl_counts(gold, guessed):
    """conlleval.pl's main loop: one stream of tokens, a boundary ("O") between sentences,
    an ``in_correct`` state that follows a chunk that both sides started together."""
    stream = []
    for g, p in zip(gold, guessed):
        stream += list(zip(g, p)) + [("O", "O")]
    correct_chunks = found_correct = found_guessed = 0
    in_correct = False
    last_c, last_ct, last_g, last_gt = "O", "", "O", ""
    for c_tag, g_tag in stream:
        c, ct = split_tag(c_tag)
        g, gt = split_tag(g_tag)
        if in_correct:
            ec, eg = _perl_end(last_c, c, last_ct, ct), _perl_end(last_g, g, last_gt, gt)
            if ec and eg and last_gt == last_ct:
                in_correct = False
                correct_chunks += 1
            elif ec != eg or gt != ct:
                in_correct = False
        sc, sg = _perl_start(last_c, c, last_ct, ct), _perl_start(last_g, g, last_gt, gt)
        if sc and sg and gt == ct:
            in_correct = True
        found_correct += sc
        found_guessed += sg
        last_c, last_ct, last_g, last_gt = c, ct, g, gt
    return correct_chunks + in_correct, found_guessed, found_correct


@pytest.mark.parametrize("seed", range(4))
def test_agrees_with_conlleval_loop_on_random_iob_tags(seed):
    rng = np.random.default_rng(seed)
    tags = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG"]

    def sentences(n):
        return [[tags[i] for i in rng.integers(0, len(tags), rng.integers(1, 12))] for _ in range(n)]

    for _ in range(50):
        gold = sentences(3)
        guessed = [[tags[i] if rng.random() < 0.5 else t for t, i in
                    zip(g, rng.integers(0, len(tags), len(g)))] for g in gold]
        assert counts(gold, guessed) == _perl_counts(gold, guessed), (gold, guessed)
