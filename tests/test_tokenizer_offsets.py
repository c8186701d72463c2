"""Character offsets of the WordPiece tokenizer: ``BertTokenizer.tokenize_with_offsets``.

Each test checks the same contract: the tokens equal ``tokenize(text)`` exactly, and each
span is the stretch of the original text its token came from (in bounds, non-decreasing,
non-overlapping except where one character expanded into several that WordPiece cut apart;
the span's text, normalized, is the token). Texts: the standard library's docstrings as they
are in the source (newlines, indentation, markup), the hard-case corpus of the tokenizer
tests, hand-picked Unicode edge cases and hypothesis-drawn text. Hugging Face's Rust
tokenizer (``offset_mapping``) on the same vocab.txt must give the same spans.
"""
import os
import shutil
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minibert.corpora import file_docstrings, stdlib_source_files
from minibert.tokenization import SPECIAL_TOKENS, BasicTokenizer, BertTokenizer
from tests.helpers import corpus_lines

DATA = os.path.join(os.path.dirname(__file__), "data")
VOCAB = os.path.join(DATA, "bert-base-uncased-vocab.txt")

EDGE_CASES = [
    "",
    "   \t\n ",
    "Unaffable",
    "Café au lait, naïve façade; Ångström.",
    "cafe\u0301 and e\u0301\u0300\u0302 and \u0301leading mark",      # combining marks
    "İstanbul İİ aİb İ",                                              # "İ".lower() is 2 chars
    "ǅemal ﬁne ½ Ⅷ ㎏ Kelvin: \u212a",                                # compatibility characters
    "中文字符测试 and 日本語のテキスト, 한국어 텍스트",                      # CJK, kana, hangul
    "mixed中english文text",
    "a\x00b\x01c\ufffdd e\u200bf g\u200dh \x7f",                       # controls, format chars
    "tab\tnew\nline\r\ncr\u00a0nbsp\u2003em\u2028ls\u2029ps\x85nel",   # whitespace of all kinds
    "emoji 😀 👍🏽 👨\u200d👩\u200d👧 ❤\ufe0f flags 🇫🇷",
    "don't! (really?) [yes] {no} <a href=\"x\">#tag @user $5 100% a+b=c ^_^ `code` |pipe| ~",
    "«quotes» „low“ ‘single’ — dash – en … ellipsis ¿qué? ¡sí!",
    "[CLS] text [SEP] more [MASK]! [mask] [UNK][PAD]x[SEP]",
    "x" * 99 + " " + "y" * 100 + " " + "z" * 101 + " " + "é" * 101,   # max_input_chars_per_word
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "qwxzv bnmkj zzzzq ⅞⅞",                                            # unknown pieces
    "Straße STRASSE ß ẞ ΣΊΣΥΦΟΣ δοσ",
    "x\u0301\u0301y  a\u0327\u0301b",
    "Ελληνικά Русский текст עברית العربية हिन्दी ไทย",
    "a.b.c...d--e__f",
]


# ----------------------------------------------------------------------------- helpers
def _normalize(s: str, lower: bool = True, strip: bool = True) -> str:
    """An independent normalization of a stretch of original text: controls and format
    characters dropped, lowercase, NFD and combining marks dropped (per the flags), spaces
    removed; final and medial sigma made one (``str.lower`` on a stretch cut out of its
    word may pick the other form)."""
    s = "".join(c for c in s if unicodedata.category(c)[0] != "C" and c != "\ufffd")
    if lower:
        s = s.lower()
    if strip:
        s = "".join(c for c in unicodedata.normalize("NFD", s) if unicodedata.category(c) != "Mn")
    return "".join(c for c in s if not c.isspace()).replace("ς", "σ")


def _expands(ch: str, tok: BertTokenizer) -> bool:
    """Whether one original character becomes several normalized ones."""
    return len(tok.basic_tokenizer._normalize(ch)) > 1


def check_offsets(tok: BertTokenizer, text: str) -> list:
    """Assert the offsets contract on ``text``; return the offsets."""
    got = tok.tokenize_with_offsets(text)
    assert [t for t, _, _ in got] == tok.tokenize(text), repr(text)
    prev_end = 0
    prev_start = 0
    for i, (token, start, end) in enumerate(got):
        assert 0 <= start < end <= len(text), (text, got[i])
        assert start >= prev_start
        if start < prev_end:
            # only a character that expanded, shared by two neighbouring tokens
            assert start == prev_end - 1 and _expands(text[start], tok), (text, got[i - 1:i + 1])
        span = text[start:end]
        if token in SPECIAL_TOKENS and token != "[UNK]":
            assert span == token
        elif token in tok.never_split:            # as written, or lowercased into the set
            assert span == token or _normalize(span) == token, (text, got[i])
        elif token == "[UNK]":
            # the whole word: not followed or preceded by more of the same word
            words = tok.basic_tokenizer.tokenize_with_offsets(text)
            assert any(s == start and e == end for _, s, e in words) or span == "[UNK]", \
                (text, got[i])
        else:
            piece = token[2:] if token.startswith("##") else token
            expected = _normalize(span, tok.do_lower_case, tok.basic_tokenizer._strip)
            if start >= prev_end and (i + 1 == len(got) or got[i + 1][1] >= end):
                assert expected.replace("ς", "σ") == piece.replace("ς", "σ"), (text, got[i], span)
            else:                      # a shared, expanded character: the piece is part of it
                assert piece in expected, (text, got[i], span)
        prev_start, prev_end = start, max(prev_end, end)
    return got


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tok():
    return BertTokenizer(VOCAB)


@pytest.fixture(scope="module")
def docstrings():
    """The raw docstrings (as in the source: newlines, indentation, markup) of 60 stdlib
    modules spread over the sorted file list."""
    files = stdlib_source_files()
    files = files[::max(1, len(files) // 60)]
    return [d for f in files for _, _, d in file_docstrings(f) if d.strip()]


# ----------------------------------------------------------------------------- examples
def test_hand_worked_examples(tok):
    assert tok.tokenize_with_offsets("Unaffable Café") == [
        ("una", 0, 3), ("##ffa", 3, 6), ("##ble", 6, 9), ("cafe", 10, 14)]
    # a combining accent after a word's last letter: dropped, in no token's span
    assert tok.tokenize_with_offsets("cafe\u0301 x") == [("cafe", 0, 4), ("x", 6, 7)]
    assert tok.tokenize_with_offsets("a\u0301b") == [("ab", 0, 3)]
    assert tok.tokenize_with_offsets("don't!") == [("don", 0, 3), ("'", 3, 4), ("t", 4, 5),
                                                   ("!", 5, 6)]
    # "İ" lowercases to "i" + U+0307, whose mark goes with accent stripping
    assert tok.tokenize_with_offsets("İstanbul") == [("istanbul", 0, 8)]
    # CJK ideographs are words of their own, even inside latin text
    assert tok.tokenize_with_offsets("ab中c") == [("ab", 0, 2), ("中", 2, 3), ("c", 3, 4)]
    # control characters vanish inside a word, which keeps them in its span
    assert tok.tokenize_with_offsets("a\x00b") == [("ab", 0, 3)]
    # special tokens: their match in the raw text, even glued to other text
    assert tok.tokenize_with_offsets("x[MASK]y") == [("x", 0, 1), ("[MASK]", 1, 7), ("y", 7, 8)]
    # [UNK]: the whole word
    assert tok.tokenize_with_offsets("  " + "a" * 101 + "!") == [("[UNK]", 2, 103), ("!", 103, 104)]
    # a Hangul syllable decomposes (NFD) into jamo, which WordPiece cuts apart: each piece
    # gets the whole syllable, as Hugging Face's tokenizer gives it
    assert tok.tokenize_with_offsets("한국") == [
        ("ᄒ", 0, 1), ("##ᅡ", 0, 1), ("##ᆫ", 0, 1), ("##ᄀ", 1, 2), ("##ᅮ", 1, 2), ("##ᆨ", 1, 2)]


def test_basic_tokenizer_offsets():
    basic = BasicTokenizer()
    assert basic.tokenize_with_offsets("Hello, Wörld!\n中x") == [
        ("hello", 0, 5), (",", 5, 6), ("world", 7, 12), ("!", 12, 13), ("中", 14, 15), ("x", 15, 16)]
    for text in EDGE_CASES + corpus_lines():
        got = basic.tokenize_with_offsets(text)
        assert [w for w, _, _ in got] == basic.tokenize(text)
    with pytest.raises(TypeError, match="text must be a str"):
        basic.tokenize_with_offsets(b"x")


# ----------------------------------------------------------------------------- the contract
def test_real_text(tok, docstrings):
    assert len(docstrings) > 300
    n = 0
    for d in docstrings:
        n += len(check_offsets(tok, d))
    assert n > 20_000


def test_edge_cases_and_hard_corpus(tok):
    for text in EDGE_CASES + corpus_lines():
        check_offsets(tok, text)


@pytest.mark.parametrize("settings_", [
    dict(do_lower_case=False),
    dict(strip_accents=False),
    dict(strip_accents=True, do_lower_case=False),
    dict(tokenize_chinese_chars=False),
    dict(never_split=["İstanbul", "c++", "don't", "!"]),
])
def test_other_settings(settings_):
    tok = BertTokenizer(VOCAB, **settings_)
    for text in EDGE_CASES + corpus_lines() + ["I like c++ and don't! İstanbul C++"]:
        check_offsets(tok, text)


def test_never_split_words(tok):
    t = BertTokenizer(VOCAB, never_split=["c++", "istanbul"])
    # matched per whitespace word: "c++," is not in the set and is split; "C++" and
    # "İstanbul" lowercase into it and are kept whole
    text = "use c++, C++ or İstanbul"
    assert t.tokenize_with_offsets(text) == [
        ("use", 0, 3), ("c", 4, 5), ("+", 5, 6), ("+", 6, 7), (",", 7, 8), ("c++", 9, 12),
        ("or", 13, 15), ("istanbul", 16, 24)]
    check_offsets(t, text)
    assert t.tokenize_with_offsets("c++ x") == [("c++", 0, 3), ("x", 4, 5)]


def test_canonical_reordering_fallback(tok):
    # Two spacing combining marks (Mc) with combining classes 226 then 216: NFD of the word
    # reorders them, per-character NFD does not; the tokens must still agree.
    for text in ["xa\U0001D16D\U0001D165b q", "é\U0001D16D\U0001D165 ok",
                 "Hello\U0001D16D\U0001D165, world", "ab\U0001D16D\U0001D165\u0301,cd ef"]:
        check_offsets(tok, text)
    # the word's other characters keep their own origins
    assert tok.tokenize_with_offsets("Hello\U0001D16D\U0001D165, world") == [
        ("[UNK]", 0, 7), (",", 7, 8), ("world", 9, 14)]


def test_unchanged_tokenize_path(tok):
    # tokenize_with_offsets is a separate path; tokenize itself takes no offsets work
    import inspect
    assert "origins" not in inspect.getsource(BertTokenizer.tokenize)
    assert "origins" not in inspect.getsource(BasicTokenizer.tokenize)


# Characters drawn from all of Unicode minus surrogates; text built from words and
# separators so that words, punctuation, marks and spaces mix.
_chars = st.characters(exclude_categories=("Cs",))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(_chars, max_size=8), st.sampled_from(
    [" ", "\n", "[MASK]", "[SEP]", "İ", "\u0301", "中", "ß", "Σ", "한", "!", "'", "é"])),
    max_size=12))
def test_random_text(parts):
    check_offsets(_module_tok(), "".join(parts))


_TOK = {}


def _module_tok():
    if not _TOK:
        _TOK["tok"] = BertTokenizer(VOCAB)
    return _TOK["tok"]


# ----------------------------------------------------------------------------- Hugging Face
def _hf_fast(tmp_path_factory, do_lower_case=True):
    transformers = pytest.importorskip("transformers")
    cls = transformers.BertTokenizer if hasattr(transformers, "BertTokenizerLegacy") \
        else transformers.BertTokenizerFast
    d = tmp_path_factory.mktemp("hf-offsets")
    shutil.copyfile(VOCAB, d / "vocab.txt")
    # from_pretrained: transformers 5's constructor ignores vocab_file= (the size check)
    hf = cls.from_pretrained(str(d), do_lower_case=do_lower_case)
    assert len(hf) == 30522 and hf.is_fast
    return hf


def _hf_offsets(hf, text):
    enc = hf(text, add_special_tokens=False, return_offsets_mapping=True)
    return [(t, s, e) for t, (s, e) in zip(hf.convert_ids_to_tokens(enc["input_ids"]),
                                           enc["offset_mapping"])]


# Where minibert's tokens themselves differ from the Rust tokenizer's (tokenization.py's
# docstring lists them): unassigned code points, newer Unicode, CJK Extension E's start and
# the final sigma. Texts holding those are left out of the span comparison.
def _tokens_known_to_differ(text: str) -> bool:
    return any(unicodedata.ucd_3_2_0.category(c) == "Cn" or c == "\u03a3" for c in text)


@pytest.mark.parametrize("do_lower_case", [True, False])
def test_spans_equal_hugging_face(do_lower_case, docstrings, tmp_path_factory):
    tok = BertTokenizer(VOCAB, do_lower_case=do_lower_case)
    hf = _hf_fast(tmp_path_factory, do_lower_case)
    texts = EDGE_CASES + corpus_lines() + docstrings[:400]
    compared = 0
    for text in texts:
        if _tokens_known_to_differ(text):
            continue
        ours = tok.tokenize_with_offsets(text)
        assert ours == _hf_offsets(hf, text), repr(text)
        compared += 1
    assert compared > 350


def test_final_sigma_is_a_token_difference_only(tok, tmp_path_factory):
    # The Rust tokenizer lowercases a word-final "Σ" to "σ", str.lower to "ς": the tokens
    # differ, their spans do not.
    hf = _hf_fast(tmp_path_factory)
    text = "ΟΔΟΣ ΣΟΦΙΑ"
    ours, theirs = tok.tokenize_with_offsets(text), _hf_offsets(hf, text)
    assert [t for t, _, _ in ours] != [t for t, _, _ in theirs]
    spans = [(s, e) for _, s, e in ours]
    # the pieces cut differently ("##ος" vs "##ο" "##σ"): compare the words' outer spans
    assert (spans[0][0], spans[-1][1]) == (theirs[0][1], theirs[-1][2])
    assert {s for s, _ in spans} <= {s for _, s, _ in theirs}
