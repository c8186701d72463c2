"""BERT's WordPiece tokenizer: text -> tokens -> ids, and the vocab.txt files it reads.

Text becomes ids in two stages, exactly as in the original BERT.

**1. Basic tokenization** (``BasicTokenizer``, in ``minibert/basic_tokenizer.py``) cuts raw
text into words and punctuation: it drops control characters, turns every whitespace into a
space, puts spaces around CJK ideographs, lowercases and strips accents (per the flags) and
splits on whitespace and around punctuation, so ``"don't!"`` -> ``don ' t !``. That module's
docstring gives each rule exactly (which characters, which Unicode categories).

**2. WordPiece** (``WordpieceTokenizer``) cuts each word into vocabulary pieces, greedily
and longest match first: take the longest prefix of the word that is in the vocabulary,
then the longest continuation ``"##" + next part`` that is, and so on::

    "unaffable" -> un  ##aff  ##able

A word that cannot be cut all the way, or that is longer than
``max_input_chars_per_word`` characters, becomes the single token ``[UNK]``.

**Model inputs** (``BertTokenizer``). The special tokens ``[PAD] [UNK] [CLS] [SEP] [MASK]``
are found in the raw text first (exact, case-sensitive matches: ``"[MASK]"`` is the mask
token even in an uncased tokenizer, ``"[mask]"`` is the three tokens ``[ mask ]``) and are
never split or lowercased. A sequence, or a pair of them, is laid out as::

    input_ids       [CLS] a1 a2 ... [SEP] b1 b2 ... [SEP]  [PAD] ...
    token_type_ids    0   0  0  ...   0   1  1  ...   1      0
    attention_mask    1   1  1  ...   1   1  1  ...   1      0

Truncation ("longest first") removes tokens from the end of the longer sequence of a pair,
one at a time; when the two are equally long it removes from the one that was the shorter
at the start (the first, if they started equal), so the odd token of an odd budget stays
with the originally longer one. In closed form, with a budget of ``n`` tokens: the shorter
sequence keeps all its ``s`` tokens if ``2 s <= n`` (the longer gets ``n - s``), otherwise
they get ``n // 2`` and ``n - n // 2``. This is what ``transformers.BertTokenizer`` does.

**Character offsets** (``BertTokenizer.tokenize_with_offsets``): the same tokens, each with
the ``[start, end)`` span of the original text it came from, as extractive question
answering needs to map predicted tokens back to characters. A separate path that follows
each character through the two stages (``BasicTokenizer._word_char_origins``), so that
``tokenize`` keeps its speed; its spans equal Hugging Face's ``offset_mapping``.

**Relation to Hugging Face.** The algorithm above is the one of BERT's original
``tokenization.py``. ``transformers.BertTokenizer`` (5.x: the Rust ``tokenizers`` library)
gives the same ids on ordinary text but differs on four kinds of character, where minibert
follows the original algorithm (as does ``transformers.BertTokenizerLegacy``):

* unassigned code points (category ``Cn``) are dropped here, kept by the Rust code;
* the Rust code's Unicode tables are older than Python's (for example U+1E027, a Glagolitic
  combining mark since Unicode 9, is not stripped as an accent there);
* the Rust code starts the CJK Extension E range at U+2B920, not U+2B820;
* the Rust code lowercases character by character, so a word-final capital sigma becomes
  "σ"; ``str.lower`` gives the final form "ς", as the original BERT did when it was trained.

``BertTokenizerLegacy`` in turn applies NFC before everything, which the original does not
(it matters only without accent stripping: the cased tokenizer).

The vocabulary trainer, ``train_wordpiece_vocab``, is in ``minibert/wordpiece_trainer.py``.
"""
from __future__ import annotations

import json
import os
import re

import numpy as np

# BasicTokenizer is public here too: every tokenizer class can be imported from this module.
from .basic_tokenizer import BasicTokenizer, _check_bool, _check_positive_int, _check_text
from .io import atomic_write_text

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CONFIG_FILE = "tokenizer_config.json"
VOCAB_FILE = "vocab.txt"


# ----------------------------------------------------------------------------- vocab files
def _read_vocab_lines(path, name: str) -> list[str]:
    """The lines of a vocab file, without their line ends; line i is token id i. ``name`` is
    the argument that errors name."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{name}={path!r} does not exist, expected a vocab.txt file "
                         "(one token per line)")
    # Text mode, as Hugging Face reads it: "\n", "\r\n" and "\r" all end a line.
    try:
        with open(path, encoding="utf-8") as fh:
            tokens = [line.rstrip("\n") for line in fh]
    except UnicodeDecodeError as e:
        raise ValueError(f"{name}={path!r} is not UTF-8 text: {e}") from None
    if not tokens:
        raise ValueError(f"{name}={path!r} is empty, expected one token per line")
    return tokens


def write_vocab(tokens, path):
    """Write ``tokens`` to ``path``, one per line (line i = id i), atomically.

    Raises TypeError for a token that is not a str and ValueError for duplicates or for a
    token that contains a line break (it could not be read back as one line).
    """
    tokens = list(tokens)
    seen = set()
    for i, t in enumerate(tokens):
        if not isinstance(t, str):
            raise TypeError(f"tokens[{i}]={t!r} is invalid, expected a str")
        if "\n" in t or "\r" in t or t == "":
            raise ValueError(f"tokens[{i}]={t!r} is invalid, expected a non-empty token "
                             "without line breaks")
        if t in seen:
            raise ValueError(f"tokens[{i}]={t!r} is a duplicate, expected unique tokens")
        seen.add(t)
    atomic_write_text(os.fspath(path), "".join(t + "\n" for t in tokens))




# ----------------------------------------------------------------------------- wordpiece
class WordpieceTokenizer:
    """Greedy longest-match-first WordPiece over a vocabulary (token -> id, or any
    container of tokens). ``tokenize(text)`` splits ``text`` on whitespace and each word into
    pieces; a word that cannot be covered, or longer than ``max_input_chars_per_word``
    characters, becomes ``unk_token``. Words seen before are answered from a cache, so the
    vocabulary must not change after construction."""

    _CACHE_SIZE = 100_000

    def __init__(self, vocab, unk_token="[UNK]", max_input_chars_per_word=100):
        self.vocab = vocab
        self.unk_token = _check_text(unk_token, "unk_token")
        self.max_input_chars_per_word = _check_positive_int(max_input_chars_per_word,
                                                            "max_input_chars_per_word")
        # No piece is longer than the longest vocabulary entry: no need to try longer ones.
        self._longest = max((len(t) for t in vocab), default=0)
        self._cache: dict[str, list[str]] = {}

    def _split_word(self, word: str) -> list[str]:
        n = len(word)
        if n > self.max_input_chars_per_word:
            return [self.unk_token]
        pieces = []
        start = 0
        while start < n:
            end = min(n, start + self._longest)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    break
                end -= 1
            else:                                 # not even one character matched
                return [self.unk_token]
            pieces.append(piece)
            start = end
        return pieces

    def tokenize(self, text: str) -> list[str]:
        _check_text(text, "text")
        out = []
        for word in text.split():
            pieces = self._cache.get(word)
            if pieces is None:
                if len(self._cache) >= self._CACHE_SIZE:
                    self._cache.clear()
                pieces = self._cache[word] = self._split_word(word)
            out.extend(pieces)
        return out


# ----------------------------------------------------------------------------- BERT
def _truncate_pair(a: list, b: list, budget: int):
    """Longest-first truncation of a pair to ``budget`` tokens in all (module docstring)."""
    n1, n2 = len(a), len(b)
    if n1 + n2 <= budget:
        return a, b
    first_is_short = n1 <= n2
    short = n1 if first_is_short else n2
    if 2 * short <= budget:                      # only the longer one is cut
        keep_short, keep_long = short, budget - short
    else:                                        # both cut to half; the odd token to the longer
        keep_short, keep_long = budget // 2, budget - budget // 2
    if first_is_short:
        return a[:keep_short], b[:keep_long]
    return a[:keep_long], b[:keep_short]


def _batch_texts(text, text_pair):
    """``(texts, pairs)``: the batch's first sequences as a list, and the second ones as a
    list of the same length or None; checks the types and lengths."""
    if isinstance(text, str):
        texts = [text]
        pairs = None if text_pair is None else [_check_text(text_pair, "text_pair")]
    elif isinstance(text, (list, tuple)):
        texts = list(text)
        for i, t in enumerate(texts):
            _check_text(t, f"text[{i}]")
        if text_pair is None:
            pairs = None
        elif isinstance(text_pair, (list, tuple)):
            pairs = list(text_pair)
            if len(pairs) != len(texts):
                raise ValueError(f"text_pair has {len(pairs)} entries, expected "
                                 f"{len(texts)} (one per text)")
        else:
            raise TypeError(f"text_pair must be a list of str for a list text, got "
                            f"{type(text_pair).__name__}")
    else:
        raise TypeError(f"text must be a str or a list of str, got {type(text).__name__}")
    if not texts:
        raise ValueError("text=[] is empty, expected at least one text")
    return texts, pairs


def _padded_length(lengths: list[int], padding: str, max_length) -> int:
    """S, the length of a batch of sequences of ``lengths`` under ``padding``."""
    if padding == "longest":
        return max(lengths)
    if padding == "max_length":
        if max(lengths) > max_length:
            raise ValueError(f"a sequence has {max(lengths)} tokens, more than "
                             f"max_length={max_length}; expected truncation=True to pad to "
                             "max_length")
        return max_length
    if any(n != lengths[0] for n in lengths):
        raise ValueError(f"padding=False but the sequences have lengths {lengths}; expected "
                         "equal lengths (or padding='longest')")
    return lengths[0]


class BertTokenizer:
    """BERT's tokenizer: special tokens, basic tokenization, WordPiece, and model inputs.

    Args:
        vocab_file: a vocab.txt (one token per line, id = line number) that contains
            [PAD], [UNK], [CLS], [SEP] and [MASK].
        do_lower_case, never_split, tokenize_chinese_chars, strip_accents: as BasicTokenizer.
        model_max_length: the default ``max_length`` of ``__call__`` (BERT's 512 positions).

    ``ids_to_tokens`` is the list of the file's lines: ``ids_to_tokens[i]`` is the token on
    line ``i``, and every id in ``range(len(tokenizer))`` is valid.
    """

    special_tokens = SPECIAL_TOKENS

    def __init__(self, vocab_file, do_lower_case=True, never_split=None,
                 tokenize_chinese_chars=True, strip_accents=None, model_max_length=512):
        self.vocab_file = os.fspath(vocab_file)
        self.ids_to_tokens = _read_vocab_lines(self.vocab_file, "vocab_file")
        # token -> id; a token on several lines maps to its last line, as Hugging Face's load_vocab
        self.vocab = {t: i for i, t in enumerate(self.ids_to_tokens)}
        missing = [t for t in SPECIAL_TOKENS if t not in self.vocab]
        if missing:
            raise ValueError(f"vocab_file={self.vocab_file!r} lacks the special tokens {missing}, "
                             f"expected all of {list(SPECIAL_TOKENS)}")
        self.model_max_length = _check_positive_int(model_max_length, "model_max_length")
        self.basic_tokenizer = BasicTokenizer(do_lower_case, never_split, tokenize_chinese_chars,
                                              strip_accents)
        self.wordpiece_tokenizer = WordpieceTokenizer(self.vocab, unk_token="[UNK]")
        self.pad_token_id = self.vocab["[PAD]"]
        self.unk_token_id = self.vocab["[UNK]"]
        self.cls_token_id = self.vocab["[CLS]"]
        self.sep_token_id = self.vocab["[SEP]"]
        self.mask_token_id = self.vocab["[MASK]"]
        # Longest first, so that a special token that is a prefix of another cannot win.
        alternatives = sorted(SPECIAL_TOKENS, key=len, reverse=True)
        self._special_re = re.compile("(" + "|".join(map(re.escape, alternatives)) + ")")

    # ------------------------------------------------------------------ attributes
    do_lower_case = property(lambda self: self.basic_tokenizer.do_lower_case)
    tokenize_chinese_chars = property(lambda self: self.basic_tokenizer.tokenize_chinese_chars)
    strip_accents = property(lambda self: self.basic_tokenizer.strip_accents)
    never_split = property(lambda self: self.basic_tokenizer.never_split)

    @property
    def vocab_size(self) -> int:
        return len(self.ids_to_tokens)

    def __len__(self) -> int:
        return len(self.ids_to_tokens)

    @property
    def all_special_tokens(self) -> list[str]:
        """[PAD], [UNK], [CLS], [SEP], [MASK], as Hugging Face's attribute."""
        return list(SPECIAL_TOKENS)

    @property
    def all_special_ids(self) -> list[int]:
        return [self.vocab[t] for t in SPECIAL_TOKENS]

    def __repr__(self):
        return (f"BertTokenizer(vocab_file={self.vocab_file!r}, vocab_size={len(self)}, "
                f"do_lower_case={self.do_lower_case}, tokenize_chinese_chars="
                f"{self.tokenize_chinese_chars}, strip_accents={self.strip_accents}, "
                f"model_max_length={self.model_max_length})")

    # ------------------------------------------------------------------ text -> tokens -> ids
    def tokenize(self, text: str, _name: str = "text") -> list[str]:
        """Tokens of ``text``: special tokens as they are, everything else through basic
        tokenization and WordPiece (``never_split`` words skip WordPiece)."""
        _check_text(text, _name)
        tokens = []
        # re.split with a group alternates: text, special, text, special, ..., text
        for i, part in enumerate(self._special_re.split(text)):
            if i % 2:
                tokens.append(part)
                continue
            for word in self.basic_tokenizer.tokenize(part):
                if word in self.never_split:
                    tokens.append(word)
                else:
                    tokens.extend(self.wordpiece_tokenizer.tokenize(word))
        return tokens

    def tokenize_with_offsets(self, text: str, _name: str = "text") -> list[tuple[str, int, int]]:
        """``tokenize(text)``'s tokens, each as ``(token, start, end)``: the token came from
        the characters ``text[start:end]`` of the original text.

        * a special token: its match in the text;
        * a word piece: its own part of its word, "##" pieces too: ``"Unaffable"`` ->
          ``("un", 0, 2), ("##aff", 2, 5), ("##able", 5, 9)``. Lowercasing, accent stripping
          and cleanup are undone: ``"Café"`` -> ``("cafe", 0, 4)`` and
          ``"cafe\u0301"`` (a combining accent) -> ``("cafe", 0, 5)``;
        * [UNK] (a word too long or not coverable by the vocabulary): the whole word;
        * a ``never_split`` word: the whole word.

        Spans are in bounds and never decrease; two tokens overlap only when one original
        character became several normalized ones that WordPiece cut apart (a Hangul syllable
        decomposed into jamo, "İ" lowercased to "i" + U+0307 without accent stripping): both
        get that character, as Hugging Face's fast tokenizer gives them. Dropped characters
        (controls, combining marks, spaces) belong to no token; a combining mark after a
        token's last character is not in its span (Hugging Face does the same).

        A separate path from ``tokenize``, which stays as fast as it was; they agree token
        for token (tests/test_tokenizer_offsets.py checks it on real and edge-case text).
        """
        _check_text(text, _name)
        out = []
        pos = 0
        for m in self._special_re.finditer(text):
            self._offsets_of_part(text, pos, m.start(), out)
            out.append((m.group(), m.start(), m.end()))
            pos = m.end()
        self._offsets_of_part(text, pos, len(text), out)
        return out

    def _offsets_of_part(self, text: str, start: int, stop: int, out: list) -> None:
        """Append the tokens of ``text[start:stop]`` (no special tokens in it) with their
        offsets in ``text`` to ``out``."""
        wordpiece = self.wordpiece_tokenizer
        for word, origins in self.basic_tokenizer._word_char_origins(text, start, stop):
            if word in self.never_split:
                out.append((word, origins[0], origins[-1] + 1))
                continue
            pieces = wordpiece.tokenize(word)
            if pieces == [wordpiece.unk_token]:
                out.append((pieces[0], origins[0], origins[-1] + 1))
                continue
            k = 0                                  # the piece's first character in the word
            for j, piece in enumerate(pieces):
                n = len(piece) - (2 if j else 0)   # "##" continuations
                out.append((piece, origins[k], origins[k + n - 1] + 1))
                k += n

    def convert_tokens_to_ids(self, tokens):
        """A token's id (unknown tokens: the [UNK] id); a list of tokens gives a list."""
        if isinstance(tokens, str):
            return self.vocab.get(tokens, self.unk_token_id)
        if not isinstance(tokens, (list, tuple)):
            raise TypeError(f"tokens must be a str or a list of str, got {type(tokens).__name__}")
        out = []
        for i, t in enumerate(tokens):
            if not isinstance(t, str):
                raise TypeError(f"tokens[{i}]={t!r} is invalid, expected a str")
            out.append(self.vocab.get(t, self.unk_token_id))
        return out

    def _check_id(self, i, name: str) -> int:
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"{name}={i!r} is invalid, expected an integer token id")
        if not 0 <= i < len(self.ids_to_tokens):
            raise ValueError(f"{name}={int(i)} is out of range, expected 0 <= id < "
                             f"{len(self.ids_to_tokens)} (the vocabulary size)")
        return int(i)

    def convert_ids_to_tokens(self, ids):
        """The token of an id; a list (or 1-D array) of ids gives a list. An id outside
        ``[0, len(self))`` raises ValueError."""
        if isinstance(ids, (bool, np.bool_)):
            raise TypeError(f"ids={ids!r} is invalid, expected an integer token id or a list of them")
        if isinstance(ids, (int, np.integer)):
            return self.ids_to_tokens[self._check_id(ids, "ids")]
        if isinstance(ids, np.ndarray):
            if ids.ndim != 1:
                raise ValueError(f"ids has shape {ids.shape}, expected a 1-D array of token ids")
            ids = ids.tolist()
        if not isinstance(ids, (list, tuple)):
            raise TypeError(f"ids must be an int or a list of int, got {type(ids).__name__}")
        return [self.ids_to_tokens[self._check_id(i, f"ids[{k}]")] for k, i in enumerate(ids)]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Tokens joined by spaces, each "##" piece glued to the token before it.

        That is all: no other spacing rules, so ``"hello, world"`` decodes as
        ``"hello , world"``, and lowercasing, stripped accents and [UNK] are not undone.
        ``skip_special_tokens`` drops all five special tokens ([UNK] included, as Hugging
        Face does).
        """
        tokens = self.convert_ids_to_tokens(list(ids) if isinstance(ids, np.ndarray) else ids)
        if isinstance(tokens, str):
            tokens = [tokens]
        if skip_special_tokens:
            tokens = [t for t in tokens if t not in SPECIAL_TOKENS]
        return " ".join(tokens).replace(" ##", "")

    # ------------------------------------------------------------------ model inputs
    def _min_length(self, pair: bool) -> int:
        return 3 if pair else 2                  # [CLS] A [SEP] (B [SEP])

    def _check_max_length(self, max_length, pair: bool) -> int:
        if max_length is None:
            max_length = self.model_max_length
        max_length = _check_positive_int(max_length, "max_length")
        need = self._min_length(pair)
        if max_length < need:
            what = "a pair" if pair else "one sequence"
            raise ValueError(f"max_length={max_length} is too small, expected at least {need} "
                             f"(the special tokens of {what})")
        return max_length

    def _build(self, a: list[int], b: list[int] | None, truncation: bool, max_length: int):
        """input_ids and token_type_ids of one example."""
        if truncation:
            budget = max_length - self._min_length(b is not None)
            if b is None:
                a = a[:budget]
            else:
                a, b = _truncate_pair(a, b, budget)
        ids = [self.cls_token_id] + a + [self.sep_token_id]
        types = [0] * len(ids)
        if b is not None:
            ids += b + [self.sep_token_id]
            types += [1] * (len(b) + 1)
        return ids, types

    def encode(self, text, text_pair=None, max_length=None, truncation=False) -> dict:
        """``{"input_ids", "token_type_ids", "attention_mask"}`` of one text (or pair), as
        Python lists: ``[CLS] A [SEP]`` or ``[CLS] A [SEP] B [SEP]``, no padding.

        With ``truncation`` the result is at most ``max_length`` tokens (default
        ``model_max_length``), longest first for pairs.
        """
        truncation = _check_bool(truncation, "truncation")
        pair = text_pair is not None
        if max_length is not None or truncation:
            max_length = self._check_max_length(max_length, pair)
        a = self.convert_tokens_to_ids(self.tokenize(text, "text"))
        b = self.convert_tokens_to_ids(self.tokenize(text_pair, "text_pair")) if pair else None
        ids, types = self._build(a, b, truncation, max_length)
        return {"input_ids": ids, "token_type_ids": types, "attention_mask": [1] * len(ids)}

    def __call__(self, text, text_pair=None, padding="longest", truncation=True,
                 max_length=None, return_tensors="np") -> dict:
        """A batch of model inputs as NumPy int64 arrays of shape (B, S).

        Args:
            text: a str or a list of str (B = 1 for a str).
            text_pair: None, or the second sequences: a str for a str ``text``, a list of
                the same length for a list.
            padding: "longest" (or True): pad to the longest sequence of the batch;
                "max_length": pad to ``max_length``; False (or "do_not_pad"): no padding,
                allowed only when all sequences come out equally long.
            truncation: cut each example to ``max_length`` (longest first for pairs).
            max_length: defaults to ``model_max_length``.
            return_tensors: "np" (the only kind).
        Returns:
            {"input_ids", "token_type_ids", "attention_mask"}, each (B, S) int64; padding is
            [PAD] with token type 0 and attention 0, on the right.
        """
        if return_tensors != "np":
            raise ValueError(f"return_tensors={return_tensors!r} is not supported, expected 'np'")
        if padding is True:
            padding = "longest"
        elif padding is False:
            padding = "do_not_pad"
        if padding not in ("longest", "max_length", "do_not_pad"):
            raise ValueError(f"padding={padding!r} is invalid, expected 'longest', "
                             "'max_length' or False")
        truncation = _check_bool(truncation, "truncation")

        texts, pairs = _batch_texts(text, text_pair)
        pair = pairs is not None
        needs_length = truncation or padding == "max_length" or max_length is not None
        max_length = self._check_max_length(max_length, pair) if needs_length else None

        rows = []
        for i, t in enumerate(texts):
            a = self.convert_tokens_to_ids(self.tokenize(t, f"text[{i}]"))
            b = None
            if pair:
                b = self.convert_tokens_to_ids(self.tokenize(pairs[i], f"text_pair[{i}]"))
            rows.append(self._build(a, b, truncation, max_length))
        S = _padded_length([len(ids) for ids, _ in rows], padding, max_length)
        return self._pad(rows, S)

    def _pad(self, rows, S: int) -> dict:
        """The (input_ids, token_type_ids) rows padded on the right to S, as (B, S) arrays."""
        B = len(rows)
        input_ids = np.full((B, S), self.pad_token_id, dtype=np.int64)   # (B, S)
        token_type_ids = np.zeros((B, S), dtype=np.int64)                # (B, S)
        attention_mask = np.zeros((B, S), dtype=np.int64)                # (B, S)
        for r, (ids, types) in enumerate(rows):
            n = len(ids)
            input_ids[r, :n] = ids
            token_type_ids[r, :n] = types
            attention_mask[r, :n] = 1
        return {"input_ids": input_ids, "token_type_ids": token_type_ids,
                "attention_mask": attention_mask}

    # ------------------------------------------------------------------ files
    _CONFIG_KEYS = ("do_lower_case", "never_split", "tokenize_chinese_chars", "strip_accents",
                    "model_max_length")

    @classmethod
    def from_pretrained(cls, directory, **overrides) -> BertTokenizer:
        """Load ``directory/vocab.txt`` and, if present, ``directory/tokenizer_config.json``
        (its do_lower_case, never_split, tokenize_chinese_chars, strip_accents and
        model_max_length; other keys are ignored). ``overrides`` replace those settings."""
        directory = os.fspath(directory)
        if not os.path.isdir(directory):
            raise ValueError(f"directory={directory!r} does not exist, expected a tokenizer "
                             "directory with vocab.txt")
        vocab_file = os.path.join(directory, VOCAB_FILE)
        if not os.path.isfile(vocab_file):
            raise ValueError(f"directory={directory!r} has no {VOCAB_FILE}")
        unknown = sorted(set(overrides) - set(cls._CONFIG_KEYS))
        if unknown:
            raise TypeError(f"from_pretrained got unknown settings {unknown}, expected some of "
                            f"{list(cls._CONFIG_KEYS)}")
        settings = {}
        config_file = os.path.join(directory, CONFIG_FILE)
        if os.path.isfile(config_file):
            try:
                with open(config_file, encoding="utf-8") as fh:
                    config = json.load(fh)
            except (OSError, ValueError) as e:
                raise ValueError(f"{config_file!r} is not valid JSON: {e}") from None
            if not isinstance(config, dict):
                raise ValueError(f"{config_file!r} holds a {type(config).__name__}, expected "
                                 "a JSON object")
            settings = {k: config[k] for k in cls._CONFIG_KEYS if k in config}
        settings.update(overrides)
        return cls(vocab_file, **settings)

    def save_pretrained(self, directory) -> tuple[str, str]:
        """Write ``vocab.txt`` and ``tokenizer_config.json`` into ``directory`` (created if
        needed), each atomically. ``transformers.BertTokenizer.from_pretrained`` reads them.
        Returns the two paths."""
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        vocab_path = os.path.join(directory, VOCAB_FILE)
        config_path = os.path.join(directory, CONFIG_FILE)
        atomic_write_text(vocab_path, "".join(t + "\n" for t in self.ids_to_tokens))
        config = {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": self.do_lower_case,
            "tokenize_chinese_chars": self.tokenize_chinese_chars,
            "strip_accents": self.strip_accents,
            "never_split": sorted(self.never_split),
            "model_max_length": self.model_max_length,
            "pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
            "sep_token": "[SEP]", "mask_token": "[MASK]",
        }
        atomic_write_text(config_path, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        return vocab_path, config_path
