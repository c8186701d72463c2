"""Entity-level precision, recall and F1 as the CoNLL shared tasks' ``conlleval`` counts them.

A *chunk* (an entity) is a maximal run of tokens that conlleval reads as one: its type and
its first and last token. A tag is ``O`` or ``<prefix>-<type>`` with the prefix one of
``B`` (begin), ``I`` (inside), ``E`` (end), ``S`` (single); everything after the first
``-`` is the type (``B-MISC``, ``I-per-son``).

Chunks are found token by token from the previous tag (``O`` before a sentence's first
token and after its last one) with conlleval's two rules:

* a chunk *ends* before the current token when the previous tag is ``B`` or ``I`` and the
  current one is ``B``, ``S`` or ``O``; when the previous tag is ``E`` or ``S`` (such a
  chunk never continues); or when the previous tag is not ``O`` and the type changes;
* a chunk *starts* at the current token when it is ``B`` or ``S``; when it is ``I`` or
  ``E`` after ``O``, ``E`` or ``S``; or when it is not ``O`` and its type differs from the
  previous token's.

On the schemes made of ``B``, ``I`` and ``O`` only these are exactly conlleval.pl's rules:
an ``I-`` after ``O`` or after another type starts a chunk, so IOB1 (``B-`` only between two
adjacent chunks of one type) and BIO/IOB2 (``B-`` at every chunk's start) are read alike,
and each file is scored in its own scheme. conlleval.pl predates IOBES and knows only its
``E`` after ``E``/``O`` and ``I`` after ``E`` cases; the rules above add the ``S`` cases and
``B``/``S`` after ``E`` so that IOBES chunks are single tags or ``B I* E`` runs.

Counts (over all sentences):

* ``gold``: the chunks of the gold tags; ``guessed``: those of the predicted tags;
* ``correct``: the chunks found in both with the same type, the same first token and the
  same last token (a type mismatch or a boundary mismatch makes a chunk wrong);
* ``precision = correct / guessed`` (0 when nothing is guessed, as conlleval),
  ``recall = correct / gold`` (0 when there is no gold chunk),
  ``f1 = 2 precision recall / (precision + recall)`` (0 when both are 0);
* ``accuracy``: the tokens whose predicted tag equals the gold tag, over all tokens (``O``
  tokens included; conlleval's "accuracy").

The same counts restricted to one type give ``per_type``. Values are fractions in 0..1
(conlleval prints percentages). conlleval's bracket tags (``[``, ``]``) and its ``-r`` raw
mode are not supported: a tag that is neither ``O`` nor ``B|I|E|S-<type>`` is an error.
"""
from __future__ import annotations

from dataclasses import dataclass, field

PREFIXES = ("B", "I", "E", "S")


def split_tag(tag: str) -> tuple:
    """``(prefix, type)`` of a tag: ``"O" -> ("O", "")``, ``"B-PER" -> ("B", "PER")``."""
    if tag == "O":
        return "O", ""
    if not isinstance(tag, str) or len(tag) < 3 or tag[1] != "-" or tag[0] not in PREFIXES:
        raise ValueError(f"tag={tag!r} is invalid, expected 'O' or one of B-, I-, E-, S- "
                         "followed by an entity type")
    return tag[0], tag[2:]


def end_of_chunk(prev_prefix: str, prefix: str, prev_type: str, type_: str) -> bool:
    """Whether the chunk holding the previous token ends before the current token."""
    if prev_prefix in ("E", "S"):
        return True
    if prev_prefix in ("B", "I") and prefix in ("B", "S", "O"):
        return True
    return prev_prefix != "O" and prev_type != type_


def start_of_chunk(prev_prefix: str, prefix: str, prev_type: str, type_: str) -> bool:
    """Whether a chunk starts at the current token."""
    if prefix in ("B", "S"):
        return True
    if prefix in ("I", "E") and prev_prefix in ("O", "E", "S"):
        return True
    return prefix != "O" and prev_type != type_


def chunks(tags) -> list:
    """The chunks of one sentence's tags: ``[(type, first, last), ...]`` (token indices,
    ``last`` inclusive) in order."""
    out = []
    prev_prefix, prev_type, start = "O", "", None
    for i, tag in enumerate(list(tags) + ["O"]):          # "O" after the sentence closes it
        prefix, type_ = split_tag(tag)
        if start is not None and end_of_chunk(prev_prefix, prefix, prev_type, type_):
            out.append((prev_type, start, i - 1))
            start = None
        if i < len(tags) and start_of_chunk(prev_prefix, prefix, prev_type, type_):
            if start is not None:       # a start closes the open chunk (the end rules say so too)
                out.append((prev_type, start, i - 1))
            start = i
        prev_prefix, prev_type = prefix, type_
    return out


@dataclass
class ChunkScore:
    """Chunk counts and the scores made of them (fractions)."""
    correct: int = 0
    guessed: int = 0
    gold: int = 0

    @property
    def precision(self) -> float:
        return self.correct / self.guessed if self.guessed else 0.0

    @property
    def recall(self) -> float:
        return self.correct / self.gold if self.gold else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r > 0 else 0.0


@dataclass
class Result:
    """``evaluate``'s counts: every chunk (``overall``), each type's, and the tokens."""
    overall: ChunkScore = field(default_factory=ChunkScore)
    per_type: dict = field(default_factory=dict)          # type -> ChunkScore, sorted by type
    tokens: int = 0
    correct_tags: int = 0

    precision = property(lambda self: self.overall.precision)
    recall = property(lambda self: self.overall.recall)
    f1 = property(lambda self: self.overall.f1)

    @property
    def accuracy(self) -> float:
        return self.correct_tags / self.tokens if self.tokens else 0.0

    def as_dict(self) -> dict:
        """Flat floats: ``precision``, ``recall``, ``f1``, ``token_acc``."""
        return dict(precision=self.precision, recall=self.recall, f1=self.f1,
                    token_acc=self.accuracy)


def evaluate(gold, guessed) -> Result:
    """Score sentences of predicted tags against sentences of gold tags (two lists of tag
    lists, sentence by sentence of equal lengths). Chunks never cross sentences."""
    gold, guessed = list(gold), list(guessed)
    if len(gold) != len(guessed):
        raise ValueError(f"guessed has {len(guessed)} sentences, expected {len(gold)} (as gold)")
    res = Result()
    per_type = {}
    for k, (g, p) in enumerate(zip(gold, guessed)):
        g, p = list(g), list(p)
        if len(g) != len(p):
            raise ValueError(f"sentence {k} has {len(p)} guessed tags, expected {len(g)} (as gold)")
        gc, pc = chunks(g), chunks(p)
        for c in gc:
            per_type.setdefault(c[0], ChunkScore()).gold += 1
        for c in pc:
            per_type.setdefault(c[0], ChunkScore()).guessed += 1
        for c in set(gc) & set(pc):
            per_type[c[0]].correct += 1
        res.tokens += len(g)
        res.correct_tags += sum(a == b for a, b in zip(g, p))
    res.per_type = {t: per_type[t] for t in sorted(per_type)}
    for s in per_type.values():
        res.overall.correct += s.correct
        res.overall.guessed += s.guessed
        res.overall.gold += s.gold
    return res


def read_pairs(lines, name: str = "lines") -> tuple:
    """``(gold, guessed)`` sentences from conlleval's input: one token a line whose last two
    columns (space- or tab-separated) are the gold and the predicted tag, a blank line or a
    ``-DOCSTART-`` line between sentences."""
    gold, guessed, g, p = [], [], [], []
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if not parts or parts[0] == "-DOCSTART-":
            if g:
                gold.append(g)
                guessed.append(p)
                g, p = [], []
            continue
        if len(parts) < 3:
            raise ValueError(f"{name} line {n}: {line.rstrip()!r} has {len(parts)} column(s), "
                             "expected at least 3 (token, gold tag, predicted tag)")
        for tag in parts[-2:]:
            try:
                split_tag(tag)
            except ValueError as e:
                raise ValueError(f"{name} line {n}: {e}") from None
        g.append(parts[-2])
        p.append(parts[-1])
    if g:
        gold.append(g)
        guessed.append(p)
    return gold, guessed


def evaluate_file(path) -> Result:
    """Score a file in conlleval's input format (``read_pairs``), e.g. ``predictions.conll``."""
    with open(path, encoding="utf-8") as fh:
        return evaluate(*read_pairs(fh, name=str(path)))


def report(res: Result) -> str:
    """conlleval's summary as text (percentages, as conlleval prints them)."""
    o = res.overall
    lines = [f"processed {res.tokens} tokens with {o.gold} phrases; found: {o.guessed} phrases; "
             f"correct: {o.correct}.",
             f"accuracy: {100 * res.accuracy:6.2f}%; precision: {100 * o.precision:6.2f}%; "
             f"recall: {100 * o.recall:6.2f}%; FB1: {100 * o.f1:6.2f}"]
    for t, s in res.per_type.items():
        lines.append(f"{t:>17}: precision: {100 * s.precision:6.2f}%; recall: "
                     f"{100 * s.recall:6.2f}%; FB1: {100 * s.f1:6.2f}  {s.guessed}")
    return "\n".join(lines)
