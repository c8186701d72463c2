"""The WordPiece vocabulary trainer against a slow reference that recounts every pair and
symbol at every merge; its properties, min_frequency, the two scores and bad arguments."""
from collections import Counter

import pytest

from minibert.tokenization import SPECIAL_TOKENS, BasicTokenizer, BertTokenizer, write_vocab
from minibert.wordpiece_trainer import train_wordpiece_vocab
from tests.helpers import corpus_lines

LINES = corpus_lines()


def _reference_trainer(texts, vocab_size, do_lower_case=True, min_frequency=2,
                       special_tokens=SPECIAL_TOKENS, limit_alphabet=1000, score="frequency"):
    """The trainer's specification, recounting every pair and symbol at every merge."""
    basic = BasicTokenizer(do_lower_case=do_lower_case)
    counts = Counter(w for t in texts for w in basic.tokenize(t))
    chars = Counter()
    for w, c in counts.items():
        for ch in w:
            chars[ch] += c
    kept = set(sorted(chars, key=lambda ch: (-chars[ch], ch))[:limit_alphabet])
    words = {w: c for w, c in counts.items() if set(w) <= kept}
    segs = {w: [w[0]] + ["##" + ch for ch in w[1:]] for w in words}
    vocab = list(special_tokens)
    for t in sorted({s for seg in segs.values() for s in seg}):
        if t not in vocab:
            vocab.append(t)
    while len(vocab) < vocab_size:
        unit, pair = Counter(), Counter()
        for w, seg in segs.items():
            for s in seg:
                unit[s] += words[w]
            for p in zip(seg, seg[1:]):
                pair[p] += words[w]
        candidates = [(-f / (unit[a] * unit[b]) if score == "likelihood" else -f, -f, a, b)
                      for (a, b), f in pair.items() if f >= min_frequency]
        if not candidates:
            break
        _, _, a, b = min(candidates)
        merged = a + b[2:]
        for w, seg in segs.items():
            out, i = [], 0
            while i < len(seg):
                if i + 1 < len(seg) and seg[i] == a and seg[i + 1] == b:
                    out.append(merged)
                    i += 2
                else:
                    out.append(seg[i])
                    i += 1
            segs[w] = out
        if merged not in vocab:
            vocab.append(merged)
    return vocab


TRAIN_TEXT = [line for line in LINES if line.isascii()] * 2 + LINES[10:20]


@pytest.mark.parametrize("kwargs", [
    dict(vocab_size=400),
    dict(vocab_size=300, do_lower_case=False, min_frequency=3),
    dict(vocab_size=250, limit_alphabet=40),
    # runs out of pairs first: the longest case, the short one below in the quick loop
    pytest.param(dict(vocab_size=10_000), marks=pytest.mark.slow),
])
@pytest.mark.parametrize("score", ["frequency", "likelihood"])
def test_trainer_matches_reference(kwargs, score):
    fast = train_wordpiece_vocab(TRAIN_TEXT, score=score, **kwargs)
    assert fast == _reference_trainer(TRAIN_TEXT, score=score, **kwargs)


@pytest.mark.parametrize("score", ["frequency", "likelihood"])
def test_trainer_that_runs_out_of_pairs_matches_reference(score):
    """A vocabulary size no merge sequence reaches on a short text: both stop when no pair
    is left, with the same vocabulary."""
    text = TRAIN_TEXT[:20]
    fast = train_wordpiece_vocab(text, score=score, vocab_size=10_000)
    assert len(fast) < 10_000
    assert fast == _reference_trainer(text, score=score, vocab_size=10_000)


def test_trainer_properties(tmp_path):
    vocab = train_wordpiece_vocab(LINES, 600)
    assert vocab == train_wordpiece_vocab(list(LINES), 600)              # deterministic
    assert vocab[:5] == list(SPECIAL_TOKENS)
    assert len(vocab) == 600 and len(set(vocab)) == 600
    # every word of the training text is covered: the alphabet has each character in the
    # position (initial or ##) it occurs in, so greedy WordPiece never gets stuck
    write_vocab(vocab, tmp_path / "vocab.txt")
    tok = BertTokenizer(tmp_path / "vocab.txt")
    for line in LINES:
        for word in tok.basic_tokenizer.tokenize(line):
            if len(word) <= 100:
                assert "[UNK]" not in tok.tokenize(word), word
    # merged tokens come after the alphabet, and are longer than one character
    n_alphabet = sum(1 for t in vocab[5:] if len(t.replace("##", "", 1)) == 1)
    assert all(len(t.replace("##", "", 1)) > 1 for t in vocab[5 + n_alphabet:])
    # limit_alphabet: the rarest characters are left out, and their words with them
    small = train_wordpiece_vocab(LINES, 5, limit_alphabet=30)
    assert len({t.replace("##", "", 1) for t in small[5:]}) == 30


def test_trainer_min_frequency():
    texts = ["ab ab cd"]
    assert train_wordpiece_vocab(texts, 100, special_tokens=()) == ["##b", "##d", "a", "c", "ab"]
    assert train_wordpiece_vocab(texts, 100, special_tokens=(), min_frequency=1,
                                 score="likelihood") == [
        "##b", "##d", "a", "c", "cd", "ab"]   # cd: score 1/(1*1) beats ab: 2/(2*2)
    assert train_wordpiece_vocab(texts, 100, special_tokens=(), min_frequency=1) == [
        "##b", "##d", "a", "c", "ab", "cd"]   # by frequency: ab (2) before cd (1)
    assert train_wordpiece_vocab(texts, 100, special_tokens=(), min_frequency=3) == [
        "##b", "##d", "a", "c"]


def test_trainer_frequency_keeps_common_words_whole():
    text = ["the cat and the hat and the bat"] * 3 + ["zyx zyx"]
    vocab = train_wordpiece_vocab(text, 30, special_tokens=())
    assert "the" in vocab and "and" in vocab


def test_trainer_bad_arguments():
    with pytest.raises(ValueError, match="score='bpe'"):
        train_wordpiece_vocab(["a"], 10, score="bpe")
    with pytest.raises(ValueError, match="vocab_size=0"):
        train_wordpiece_vocab(["a"], 0)
    with pytest.raises(ValueError, match="vocab_size=3 is smaller than the 5 special tokens"):
        train_wordpiece_vocab(["a"], 3)
    with pytest.raises(TypeError, match="texts is a str"):
        train_wordpiece_vocab("some text", 10)
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str, got int"):
        train_wordpiece_vocab(["a", 1], 10)
    with pytest.raises(ValueError, match="special_tokens=.*has duplicates"):
        train_wordpiece_vocab(["a"], 10, special_tokens=("[PAD]", "[PAD]"))
    with pytest.raises(ValueError, match="min_frequency=-1"):
        train_wordpiece_vocab(["a"], 10, min_frequency=-1)
