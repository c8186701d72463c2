"""Basic tokenization, BERT's first stage: raw text -> words and punctuation.

``BasicTokenizer.tokenize`` applies, in this order:

* cleanup: NUL, U+FFFD and every character of a Unicode category ``C*`` (control, format,
  private use, unassigned) are dropped, except tab, newline and carriage return, which are
  whitespace; every whitespace character (those three and the category ``Zs``) becomes a space;
* CJK ideographs get a space on each side, so each is a word of its own (Chinese is written
  without spaces). "CJK" means the ideograph blocks BERT lists: U+4E00-9FFF, U+3400-4DBF,
  U+20000-2A6DF, U+2A700-2B73F, U+2B740-2B81F, U+2B820-2CEAF, U+F900-FAFF, U+2F800-2FA1F.
  Hiragana, katakana and hangul are not in them: they are handled like any other script;
* with ``do_lower_case``: Python's ``str.lower`` and, unless ``strip_accents=False``,
  accent stripping: the canonical decomposition (NFD) splits "é" into "e" + U+0301, and the
  combining marks (category ``Mn``) are dropped. ``strip_accents=True`` strips without
  lowercasing;
* split on whitespace, then around every punctuation character: ASCII 33-47, 58-64, 91-96
  and 123-126 (which includes symbols such as ``$ + < = > ^ ` | ~`` that Unicode does not call
  punctuation) and every character of a category ``P*``. ``"don't!"`` -> ``don ' t !``.

Each character is classified once, into ``str.translate`` tables shared by every tokenizer,
so that megabytes of text cost a few C-speed passes. The second stage, WordPiece, and the
model inputs are in ``minibert/tokenization.py``, which also lists where Hugging Face's
tokenizer treats some of these characters differently.

The argument checks (``_check_text``, ``_check_bool``, ``_check_positive_int``) live here,
at the bottom of the import chain, and ``tokenization.py`` and ``wordpiece_trainer.py`` use
them too.
"""
from __future__ import annotations

import unicodedata

import numpy as np

# The CJK ideograph blocks of the original BERT (closed ranges of code points).
_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
               (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


# ----------------------------------------------------------------------------- characters
def _is_whitespace(ch: str) -> bool:
    """Space, tab, newline, carriage return, or a space separator (category Zs)."""
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    """Any category C* (Cc, Cf, Cn, Co, Cs), except tab, newline and carriage return."""
    return ch not in "\t\n\r" and unicodedata.category(ch)[0] == "C"


def _is_punctuation(ch: str) -> bool:
    """ASCII non-alphanumeric printable characters, and Unicode categories P*."""
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch)[0] == "P"


def _is_cjk(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


class _CharMap(dict):
    """A ``str.translate`` table filled on demand: ``rule(ch)`` gives the replacement of a
    character (a string, or None to delete it). Each character is classified once, and then
    ``translate`` runs at C speed, which is what makes megabytes of text cheap."""

    def __init__(self, rule):
        super().__init__()
        self.rule = rule

    def __missing__(self, cp):
        out = self[cp] = self.rule(chr(cp))
        return out


def _cleanup_rule(cjk: bool):
    def rule(ch):
        if ch == "\x00" or ch == "\ufffd" or _is_control(ch):
            return None
        if _is_whitespace(ch):
            return " "
        if cjk and _is_cjk(ord(ch)):
            return f" {ch} "
        return ch
    return rule


# Module-wide caches, shared by every tokenizer (the rules never change).
_CLEAN_CJK = _CharMap(_cleanup_rule(cjk=True))
_CLEAN = _CharMap(_cleanup_rule(cjk=False))
_DROP_MARKS = _CharMap(lambda ch: None if unicodedata.category(ch) == "Mn" else ch)
_SPACE_PUNCT = _CharMap(lambda ch: f" {ch} " if _is_punctuation(ch) else ch)


# ----------------------------------------------------------------------------- argument checks
def _check_text(value, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__} ({value!r:.60})")
    return value


def _check_bool(value, name: str, allow_none: bool = False):
    if allow_none and value is None:
        return value
    if not isinstance(value, (bool, np.bool_)):
        expected = "a bool or None" if allow_none else "a bool"
        raise TypeError(f"{name}={value!r} is invalid, expected {expected}")
    return bool(value)


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name}={value!r} is invalid, expected a positive integer")
    return int(value)


# ----------------------------------------------------------------------------- basic
class BasicTokenizer:
    """Cleanup, CJK spacing, lowercasing and accent stripping, whitespace and punctuation
    splitting (see the module docstring). ``tokenize(text)`` returns the words.

    Args:
        do_lower_case: lowercase (and, by default, strip accents).
        never_split: words kept whole: not lowercased, not split on punctuation. A word is
            matched after cleanup and whitespace splitting, so it must be space-separated.
        tokenize_chinese_chars: put spaces around CJK ideographs.
        strip_accents: None follows ``do_lower_case``; True or False overrides it.
    """

    def __init__(self, do_lower_case=True, never_split=None, tokenize_chinese_chars=True,
                 strip_accents=None):
        self.do_lower_case = _check_bool(do_lower_case, "do_lower_case")
        self.tokenize_chinese_chars = _check_bool(tokenize_chinese_chars, "tokenize_chinese_chars")
        self.strip_accents = _check_bool(strip_accents, "strip_accents", allow_none=True)
        if never_split is None:
            never_split = ()
        if isinstance(never_split, str) or not all(isinstance(t, str) for t in never_split):
            raise TypeError(f"never_split={never_split!r} is invalid, expected an iterable of str")
        self.never_split = frozenset(never_split)
        self._strip = self.do_lower_case if self.strip_accents is None else self.strip_accents

    def _normalize(self, text: str) -> str:
        """Lowercase and strip accents (per the flags) of cleaned text."""
        if self.do_lower_case:
            text = text.lower()
        if self._strip and not text.isascii():
            # NFD: "é" -> "e" + U+0301 (category Mn), then the marks go
            text = unicodedata.normalize("NFD", text).translate(_DROP_MARKS)
        return text

    def tokenize(self, text: str) -> list[str]:
        _check_text(text, "text")
        text = text.translate(_CLEAN_CJK if self.tokenize_chinese_chars else _CLEAN)
        if not self.never_split:
            # Whole-text normalization equals word-by-word: lowercasing (final sigma included)
            # and NFD never look across whitespace, and punctuation is per character.
            return self._normalize(text).translate(_SPACE_PUNCT).split()
        words = []
        for word in text.split():
            if word not in self.never_split:
                word = self._normalize(word)
                if word not in self.never_split:   # a word may lowercase into never_split
                    words.extend(word.translate(_SPACE_PUNCT).split())
                    continue
            words.append(word)
        return words

    # ------------------------------------------------------------------ character offsets
    def _word_char_origins(self, text: str, start: int = 0, stop: int | None = None):
        """The words of ``text[start:stop]`` as ``tokenize`` makes them, each with where its
        characters came from: ``(word, origins)``, ``origins[k]`` the index in ``text`` of
        the character that ``word[k]`` came from.

        This is ``tokenize``'s pipeline one original character at a time:

        * cleanup and CJK spacing are per character (a character is dropped, becomes a
          space, or stays, with spaces around it for a CJK ideograph); words are then the
          runs of non-whitespace (``str.isspace``, as ``str.split``);
        * lowercasing is per word: ``word.lower()`` cut into each character's share,
          ``len(ch.lower())`` characters ("İ" -> "i" + U+0307: two characters from one).
          Cutting the word's own lowercase rather than joining per-character ones keeps
          the final sigma ("ς") that ``str.lower`` gives from context;
        * accent stripping: each character's share goes through NFD and loses its
          combining marks (Mn) on its own ("é" -> "e", "한" -> three jamo). NFD of a whole
          word also reorders runs of combining characters into canonical order; when that
          changes the result (marks of other categories than Mn, out of order: not seen in
          real text), the word is normalized by clusters of a base character and its marks
          instead (``_cluster_origins``), so the tokens still equal ``tokenize``'s;
        * punctuation splitting is per normalized character.

        So every output character has one origin, origins never decrease, and several
        output characters share an origin exactly when one character expanded into several.
        """
        table = _CLEAN_CJK if self.tokenize_chinese_chars else _CLEAN
        stop = len(text) if stop is None else stop
        words = []
        chars: list[str] = []
        origins: list[int] = []
        for i in range(start, stop):
            rep = table[ord(text[i])]
            if rep is None:
                continue
            for c in rep:
                if c.isspace():
                    if chars:
                        words.append(("".join(chars), origins))
                        chars, origins = [], []
                else:
                    chars.append(c)
                    origins.append(i)
        if chars:
            words.append(("".join(chars), origins))

        out = []
        for word, origins in words:
            if word in self.never_split:
                out.append((word, origins))
                continue
            norm, origins = self._normalize_with_origins(word, origins)
            if norm in self.never_split:
                out.append((norm, origins))
                continue
            # punctuation split: each punctuation character is a word of its own
            piece_start = None
            for k, c in enumerate(norm):
                if c.isspace() or _SPACE_PUNCT[ord(c)] != c:
                    if piece_start is not None:
                        out.append((norm[piece_start:k], origins[piece_start:k]))
                        piece_start = None
                    if not c.isspace():
                        out.append((c, origins[k:k + 1]))
                elif piece_start is None:
                    piece_start = k
            if piece_start is not None:
                out.append((norm[piece_start:], origins[piece_start:]))
        return out

    def _normalize_with_origins(self, word: str, origins: list[int]):
        """``self._normalize(word)`` and the origin of each of its characters (see
        ``_word_char_origins``)."""
        if word.isascii():
            return (word.lower() if self.do_lower_case else word), origins
        shares = list(word)
        if self.do_lower_case:
            lowered = word.lower()
            cut, pos = [], 0
            for ch in word:
                n = len(ch.lower())
                cut.append(lowered[pos:pos + n])
                pos += n
            shares = cut
        if self._strip:
            shares = [unicodedata.normalize("NFD", s).translate(_DROP_MARKS) for s in shares]
        norm = "".join(shares)
        expected = self._normalize(word)
        if norm != expected:          # canonical reordering across characters (docstring)
            return self._cluster_origins(shares, origins, expected)
        new_origins = []
        for s, o in zip(shares, origins):
            new_origins.extend([o] * len(s))
        return norm, new_origins

    @staticmethod
    def _cluster_origins(lowered: list[str], origins: list[int], expected: str):
        """Accent stripping by clusters: a character whose decomposition starts with a
        starter (combining class 0) opens a cluster, the others join the one before. NFD
        reorders only inside a cluster (a starter blocks it), so the clusters' normalized
        texts join into ``expected``; the k-th character of a cluster's text gets the
        cluster's k-th origin (its last when the text is longer)."""
        clusters: list[tuple[list[str], list[int]]] = []
        for s, o in zip(lowered, origins):
            d = unicodedata.normalize("NFD", s)
            if clusters and d and unicodedata.combining(d[0]):
                clusters[-1][0].append(s)
                clusters[-1][1].append(o)
            else:
                clusters.append(([s], [o]))
        parts, new_origins = [], []
        for texts, cluster_origins in clusters:
            out = unicodedata.normalize("NFD", "".join(texts)).translate(_DROP_MARKS)
            parts.append(out)
            last = len(cluster_origins) - 1
            new_origins.extend(cluster_origins[min(k, last)] for k in range(len(out)))
        if "".join(parts) != expected:    # cannot happen by the argument above; be safe
            return expected, [origins[0]] * len(expected)
        return expected, new_origins

    def tokenize_with_offsets(self, text: str) -> list[tuple[str, int, int]]:
        """``tokenize(text)``'s words, each as ``(word, start, end)``: ``text[start:end]``
        is the stretch of the original text the word came from (lowercasing, accent
        stripping and cleanup undone; a CJK ideograph is its own character)."""
        _check_text(text, "text")
        return [(w, o[0], o[-1] + 1) for w, o in self._word_char_origins(text)]

    def __repr__(self):
        return (f"BasicTokenizer(do_lower_case={self.do_lower_case}, never_split="
                f"{sorted(self.never_split)}, tokenize_chinese_chars={self.tokenize_chinese_chars}, "
                f"strip_accents={self.strip_accents})")
