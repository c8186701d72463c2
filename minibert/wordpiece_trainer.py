"""The WordPiece vocabulary trainer: a vocabulary for ``BertTokenizer`` learnt from text.

``train_wordpiece_vocab`` builds a WordPiece vocabulary bottom up. Every word of the
training text (after the tokenizer's basic tokenization) starts as its characters, the first
as itself and the others as continuations: ``"low" -> l ##o ##w``. The alphabet of those
symbols is the initial vocabulary. Then, repeatedly, the adjacent pair ``(a, b)`` with the
best score is merged into one symbol (``"l" + "##o" -> "lo"``) everywhere. Two scores:

    frequency:   freq(ab)                               (byte-pair encoding's rule)
    likelihood:  freq(ab) / (freq(a) freq(b))

where ``freq`` counts occurrences in the training words weighted by how often each word
occurs. The likelihood score prefers pairs whose parts rarely occur apart (it is the
pointwise mutual information ratio ``P(ab) / (P(a) P(b))`` up to a constant). Ties are
broken by the higher pair frequency, then by the symbols' strings. Merging stops when the
vocabulary reaches ``vocab_size`` or no pair occurs ``min_frequency`` times.

The work is incremental (``_PairMerger``). Unique words are counted once; the pair counts,
the symbol counts and an index ``pair -> words that contain it`` are kept up to date, so a
merge touches only the words that contain the merged pair. The best pair comes from a heap
with lazy deletion: an entry whose pair's score has dropped since it was pushed is pushed
again with its current score when it surfaces; a score can rise only for pairs containing
``a`` or ``b`` (their counts drop) or the new symbol, and those pairs are pushed again at once.
"""
from __future__ import annotations

import heapq
from collections import Counter

from .basic_tokenizer import BasicTokenizer, _check_positive_int, _check_text
from .tokenization import SPECIAL_TOKENS

SCORES = ("frequency", "likelihood")


def train_wordpiece_vocab(texts, vocab_size, do_lower_case=True, min_frequency=2,
                          special_tokens=SPECIAL_TOKENS, limit_alphabet=1000,
                          score="frequency") -> list[str]:
    """Learn a WordPiece vocabulary from ``texts`` (an iterable of str: lines or documents).

    Returns the tokens in id order: ``special_tokens``, then the alphabet (sorted), then the
    merged tokens in the order they were learnt. The length is ``vocab_size`` unless merging
    runs out of pairs that occur ``min_frequency`` times (shorter), or the special tokens and
    the alphabet alone are more (then the result is those, nothing is cut).

    Args:
        texts: the training text; it is basic-tokenized (with ``do_lower_case``) into words.
        vocab_size: the size to reach.
        do_lower_case: lowercase and strip accents before counting, as the tokenizer will.
        min_frequency: a pair must occur at least this often (over all words) to be merged.
        special_tokens: the first tokens of the vocabulary.
        limit_alphabet: keep only the this many most frequent characters; words with any
            other character are left out of training (the tokenizer maps them to [UNK]).
        score: which adjacent pair is merged next.
            ``"frequency"``: the most frequent pair, freq(ab) (byte-pair encoding's rule, which
            Hugging Face's ``tokenizers`` WordPiece trainer also uses). Common words become
            single tokens early: on the standard library's docstrings an 8k vocabulary holds
            "the", "return", "value" whole.
            ``"likelihood"``: freq(ab) / (freq(a) freq(b)), the gain in unigram log-likelihood
            of merging (the score usually quoted for WordPiece). It prefers pairs whose parts
            rarely occur apart, so rare strings (a foreign word, "9999") merge before common
            ones, and an 8k vocabulary still splits "the" into "th ##e".

    The output is deterministic: it depends only on the texts and the arguments.
    """
    vocab_size = _check_positive_int(vocab_size, "vocab_size")
    min_frequency = _check_positive_int(min_frequency, "min_frequency")
    limit_alphabet = _check_positive_int(limit_alphabet, "limit_alphabet")
    special_tokens = _check_special_tokens(special_tokens, vocab_size)
    if isinstance(texts, str):
        raise TypeError("texts is a str, expected an iterable of str (wrap one text in a list)")
    if score not in SCORES:
        raise ValueError(f"score={score!r} is unknown, expected 'frequency' or 'likelihood'")

    # Count the words once; everything after works on unique words with a weight.
    word_counts = _count_words(texts, do_lower_case)
    words = _words_in_alphabet(word_counts, limit_alphabet)
    alphabet = sorted({w[0] for w in words} | {"##" + ch for w in words for ch in w[1:]})

    vocab = list(special_tokens)
    in_vocab = set(vocab)

    def add(token):
        if token not in in_vocab:
            vocab.append(token)
            in_vocab.add(token)

    for token in alphabet:
        add(token)
    merger = _PairMerger(words, [word_counts[w] for w in words], alphabet,
                         likelihood=score == "likelihood", min_frequency=min_frequency)
    while len(vocab) < vocab_size:
        token = merger.merge_best_pair()
        if token is None:                        # no pair is frequent enough any more
            break
        add(token)
    return vocab


def _check_special_tokens(special_tokens, vocab_size: int) -> list[str]:
    if isinstance(special_tokens, str):
        raise TypeError(f"special_tokens={special_tokens!r} is invalid, expected a sequence of str")
    special_tokens = list(special_tokens)
    for i, t in enumerate(special_tokens):
        if not isinstance(t, str) or not t:
            raise TypeError(f"special_tokens[{i}]={t!r} is invalid, expected a non-empty str")
    if len(set(special_tokens)) != len(special_tokens):
        raise ValueError(f"special_tokens={special_tokens!r} has duplicates, expected unique tokens")
    if vocab_size < len(special_tokens):
        raise ValueError(f"vocab_size={vocab_size} is smaller than the {len(special_tokens)} "
                         "special tokens, expected at least as many")
    return special_tokens


def _count_words(texts, do_lower_case: bool) -> Counter:
    """word -> occurrences in ``texts``, after the tokenizer's basic tokenization."""
    basic = BasicTokenizer(do_lower_case=do_lower_case)
    word_counts: Counter = Counter()
    for i, text in enumerate(texts):
        word_counts.update(basic.tokenize(_check_text(text, f"texts[{i}]")))
    return word_counts


def _words_in_alphabet(word_counts: Counter, limit_alphabet: int) -> list[str]:
    """The words (sorted) made only of the ``limit_alphabet`` most frequent characters
    (ties: by code point)."""
    char_counts: Counter = Counter()
    for word, c in word_counts.items():
        for ch in word:
            char_counts[ch] += c
    kept = set(sorted(char_counts, key=lambda ch: (-char_counts[ch], ch))[:limit_alphabet])
    return sorted(w for w in word_counts if all(ch in kept for ch in w))


def _merged(a: str, b: str) -> str:
    """The token of the merged pair: "lo" + "##w" -> "low", "##o" + "##w" -> "##ow"."""
    return a + b[2:]


class _PairMerger:
    """The training words as sequences of symbol ids, and the counts that choose the next
    merge, kept up to date merge after merge (module docstring).

    State: ``symbols`` (symbol id -> token string), ``seqs`` and ``counts`` (each unique
    word's symbols and its number of occurrences), ``unit`` (symbol id -> freq),
    ``pair_freq`` (adjacent pair -> freq), ``pair_words`` (pair -> indices of the words that
    contain it), ``symbol_pairs`` (symbol -> live pairs containing it), and ``heap`` (pairs
    by score, with lazy deletion).
    """

    def __init__(self, words: list[str], counts: list[int], alphabet: list[str],
                 likelihood: bool, min_frequency: int):
        self.likelihood = likelihood
        self.min_frequency = min_frequency
        self.symbols: list[str] = []
        self.symbol_id: dict[str, int] = {}
        for t in alphabet:
            self._intern(t)
        self.seqs = [[self.symbol_id[w[0]]] + [self.symbol_id["##" + ch] for ch in w[1:]]
                     for w in words]
        self.counts = counts
        self._count_pairs()
        self.heap = [self._key(p) for p, f in self.pair_freq.items() if f >= min_frequency]
        heapq.heapify(self.heap)

    def _intern(self, token: str) -> int:
        if token not in self.symbol_id:
            self.symbol_id[token] = len(self.symbols)
            self.symbols.append(token)
        return self.symbol_id[token]

    def _count_pairs(self):
        """freq of each symbol, of each adjacent pair, and pair -> words containing it."""
        self.unit = [0] * len(self.symbols)
        self.pair_freq: dict[tuple[int, int], int] = {}
        self.pair_words: dict[tuple[int, int], set[int]] = {}
        self.symbol_pairs: dict[int, set[tuple[int, int]]] = {}
        for wi, (seq, c) in enumerate(zip(self.seqs, self.counts)):
            for s in seq:
                self.unit[s] += c
            for p in zip(seq, seq[1:]):
                self.pair_freq[p] = self.pair_freq.get(p, 0) + c
                self.pair_words.setdefault(p, set()).add(wi)
        for p in self.pair_freq:
            self.symbol_pairs.setdefault(p[0], set()).add(p)
            self.symbol_pairs.setdefault(p[1], set()).add(p)

    def _key(self, p):
        """Heap order: best score first, then higher frequency, then the strings."""
        f = self.pair_freq[p]
        best = -f / (self.unit[p[0]] * self.unit[p[1]]) if self.likelihood else -f
        return (best, -f, self.symbols[p[0]], self.symbols[p[1]], p)

    def _add_pair(self, p, c: int, wi: int):
        f = self.pair_freq.get(p, 0)
        if f == 0:
            self.symbol_pairs.setdefault(p[0], set()).add(p)
            self.symbol_pairs.setdefault(p[1], set()).add(p)
            self.pair_words[p] = set()
        self.pair_freq[p] = f + c
        self.pair_words[p].add(wi)

    def _remove_pair(self, p, c: int):
        f = self.pair_freq[p] - c
        if f:
            self.pair_freq[p] = f
        else:                                    # the pair is gone from every word
            del self.pair_freq[p], self.pair_words[p]
            self.symbol_pairs[p[0]].discard(p)
            self.symbol_pairs[p[1]].discard(p)

    def _pop_best_pair(self):
        """The pair with the best current score that occurs ``min_frequency`` times, or
        None when there is none."""
        while self.heap:
            entry = heapq.heappop(self.heap)
            p = entry[-1]
            if self.pair_freq.get(p, 0) < self.min_frequency:
                continue                         # merged already, or too rare
            current = self._key(p)
            if current == entry:
                return p
            if current > entry:                  # its score dropped since: queue it anew
                heapq.heappush(self.heap, current)
            # (a rise was pushed when it happened)
        return None

    def merge_best_pair(self) -> str | None:
        """Merge the best pair in every word that holds it; its token, or None when no pair
        occurs ``min_frequency`` times."""
        p = self._pop_best_pair()
        if p is None:
            return None
        a, b = p
        token = _merged(self.symbols[a], self.symbols[b])
        c_id = self._intern(token)
        if c_id == len(self.unit):
            self.unit.append(0)
        risen = set()                            # new pairs: their counts went up
        for wi in list(self.pair_words[p]):      # (order does not matter: sums)
            risen |= self._merge_in_word(wi, a, b, c_id)
        if self.likelihood:
            # freq(a) and freq(b) fell: every score with a or b in it rose
            # (push order does not matter: the keys order the heap totally)
            risen |= self.symbol_pairs.get(a, set()) | self.symbol_pairs.get(b, set())
        for q in risen:
            if self.pair_freq.get(q, 0) >= self.min_frequency:
                heapq.heappush(self.heap, self._key(q))
        return token

    def _merge_in_word(self, wi: int, a: int, b: int, c_id: int) -> set:
        """Replace each ``a b`` of word ``wi`` by ``c_id`` (left to right) and update the
        counts; returns the word's new pairs that contain ``c_id``."""
        old, c = self.seqs[wi], self.counts[wi]
        new = []
        i, n = 0, len(old)
        while i < n:
            if i + 1 < n and old[i] == a and old[i + 1] == b:
                new.append(c_id)                 # a b -> ab, left to right
                i += 2
            else:
                new.append(old[i])
                i += 1
        merges = n - len(new)
        self.unit[a] -= c * merges
        self.unit[b] -= c * merges
        self.unit[c_id] += c * merges
        for q in zip(old, old[1:]):
            self._remove_pair(q, c)
        risen = set()
        for q in zip(new, new[1:]):
            self._add_pair(q, c, wi)
            if c_id in q:
                risen.add(q)
        # pairs that left this word keep it in their index; drop it
        for q in set(zip(old, old[1:])) - set(zip(new, new[1:])):
            if q in self.pair_words:
                self.pair_words[q].discard(wi)
        self.seqs[wi] = new
        return risen
