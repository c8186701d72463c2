"""Named-entity recognition (CoNLL-2003) as token tagging: ``BertForTokenClassification``.

Files
-----
* CoNLL text (``.conll``, ``.txt``, ``.bio``, ``.iob``, ... or any file whose first line is
  not a JSON object): one token a line, its tag in the *last* column, the columns separated
  by spaces or by tabs (a line holding a tab is split at tabs only, so a token may hold a
  space there); a blank line between sentences; ``-DOCSTART-`` lines (document breaks) are
  skipped. CoNLL-2003's four columns (``token POS chunk NER``) load as they are.
* JSON lines (``.jsonl``, ``.json``, ``.ndjson`` or a first line starting with ``{``): one
  sentence a line, a list of tokens and a list of tags. The fields are
  ``TaskOptions.tokens_field``/``tags_field``, or by default the first present of
  ``tokens``, ``words`` and of ``ner_tags``, ``ner``, ``tags``. Tags are strings, or integers
  indexing ``TaskOptions.label_list`` (as the Hugging Face datasets export CoNLL-2003).

Tags are ``O`` or ``B-``/``I-``/``E-``/``S-`` + a type: IOB1, BIO/IOB2 and IOBES files are
read, learnt and scored in their own scheme (``conlleval`` reads all three).

Labels
------
The label list comes from the training data (``prepare``): ``TaskOptions.label_list`` in its
own order when the training file had one, else ``O`` first, then the other tags sorted by
type and, within a type, in the order ``B``, ``I``, ``E``, ``S``. A held-out tag outside it
is an error naming the tag, its file and line.

Encoding
--------
Every word becomes its WordPiece tokens; the row is ``[CLS] pieces... [SEP]``. The first
piece of a word carries the word's tag id; the other pieces, ``[CLS]``, ``[SEP]`` and the
padding carry -100 (no loss, no score). A word that tokenizes to nothing (control or
zero-width characters only) stands as one ``[UNK]`` piece, so that every word gets a
prediction. A word's prediction is the arg max of the logits at its first piece.

A sentence longer than ``seq_len`` is not truncated: it continues in further rows
(windows), each ``[CLS] pieces [SEP]`` starting at a word boundary, so every word is seen
and predicted once, in the row that holds it (with the context of that row only). A single
word longer than a whole row keeps its first ``seq_len - 2`` pieces. Training uses every
row.

Metrics (fractions 0..1, as every family reports them): entity-level ``precision``,
``recall``, ``f1`` and ``token_acc`` (``conlleval``: every word counts, ``O`` ones included),
each entity type's ``f1_<type>`` (gold or guessed types), and the all-``O`` tagging's
``baseline_f1`` (always 0) and ``baseline_token_acc``. During training the progress bar
shows the entity F1 of the evaluation batches (their rows' words).

Built-in task (no download): see ``builtin_sentences``.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

import numpy as np

from ..backend import to_numpy
from ..heads.tasks import BertForTokenClassification
from . import conlleval
from .base import TOKEN_KEYS, Encoded, Family, TaskOptions

JSON_EXTENSIONS = (".jsonl", ".json", ".ndjson")
TOKENS_FIELDS = ("tokens", "words")
TAGS_FIELDS = ("ner_tags", "ner", "tags")
IGNORE = -100
_PREFIX_ORDER = {"B": 0, "I": 1, "E": 2, "S": 3}


@dataclass
class Sentence:
    """One sentence: its tokens, their tags and, for messages, the 1-based line of each
    token in ``source`` (JSON lines: the line of the sentence's record)."""
    tokens: list
    tags: list
    lines: list
    source: str = ""


@dataclass
class NerData:
    """A data set: its sentences, where they come from, and the file's label list (the
    tags by id, from ``TaskOptions.label_list``; None when the file's tags were strings
    and no list was given)."""
    sentences: list
    source: str = ""
    label_list: list | None = None

    def __len__(self) -> int:
        return len(self.sentences)

    def __getitem__(self, i):
        return self.sentences[i]


# ------------------------------------------------------------------------------ readers
def _check_tag(tag, where: str) -> str:
    try:
        conlleval.split_tag(tag)
    except ValueError:
        raise ValueError(f"{where}: tag {tag!r} is invalid, expected 'O' or one of B-, I-, E-, S- "
                         "followed by an entity type (IOB1, BIO/IOB2 or IOBES)") from None
    return tag


def _tag_from(value, label_list, where: str) -> str:
    """A tag string from a file's value: a string tag, or an integer index (or a string of
    digits, in a CoNLL file) into ``label_list``."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value) \
            and (label_list is None or value not in label_list):
        value, is_int = int(value), True
    if is_int:
        if label_list is None:
            raise ValueError(f"{where}: tag {value!r} is an integer, expected a label list to map "
                             "it to a tag (the label_list option)")
        if not 0 <= value < len(label_list):
            raise ValueError(f"{where}: tag {value} is out of range, expected 0..{len(label_list) - 1} "
                             f"(an index into the label list {list(label_list)})")
        return label_list[value]
    if not isinstance(value, str):
        raise ValueError(f"{where}: tag {value!r} is invalid, expected a string or an integer")
    if label_list is not None and value not in label_list:
        raise ValueError(f"{where}: tag {value!r} is not in the label list {list(label_list)}")
    return _check_tag(value, where)


def _label_list(options: TaskOptions):
    if options.label_list is None:
        return None
    labels = [str(x) for x in options.label_list]
    if not labels or len(set(labels)) != len(labels):
        raise ValueError(f"label_list={options.label_list!r} is invalid, expected distinct tags")
    for t in labels:
        _check_tag(t, "label_list")
    return labels


def read_conll(path, options: TaskOptions | None = None) -> NerData:
    """Sentences of a CoNLL text file (module docstring)."""
    options = options or TaskOptions()
    labels = _label_list(options)
    path = os.fspath(path)
    sentences, cur = [], Sentence([], [], [], path)

    def flush():
        nonlocal cur
        if cur.tokens:
            sentences.append(cur)
        cur = Sentence([], [], [], path)

    with open(path, encoding="utf-8-sig") as fh:
        for n, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                flush()
                continue
            parts = [p.strip() for p in line.split("\t")] if "\t" in line else line.split()
            while len(parts) > 1 and not parts[-1]:       # a trailing tab: no empty last column
                parts.pop()
            if parts[0] == "-DOCSTART-":
                flush()
                continue
            if len(parts) < 2 or not parts[0] or not parts[-1]:
                raise ValueError(f"{path} line {n}: {line!r} is not a token and its tag, expected "
                                 "a token and at least one more column (the tag last) separated by "
                                 "spaces or tabs")
            cur.tokens.append(parts[0])
            cur.tags.append(_tag_from(parts[-1], labels, f"{path} line {n}"))
            cur.lines.append(n)
    flush()
    if not sentences:
        raise ValueError(f"{path} holds no sentence, expected CoNLL lines 'token ... tag'")
    return NerData(sentences, path, labels)


def _pick_field(record: dict, given, defaults, what: str, where: str) -> str:
    if given is not None:
        if given not in record:
            raise ValueError(f"{where}: the {what} field {given!r} is missing, found the fields "
                             f"{sorted(record)}")
        return given
    for name in defaults:
        if name in record:
            return name
    raise ValueError(f"{where}: no {what} field, expected one of {list(defaults)} (or the option "
                     f"{what}_field), found the fields {sorted(record)}")


def read_jsonl(path, options: TaskOptions | None = None) -> NerData:
    """Sentences of a JSON-lines file (module docstring)."""
    options = options or TaskOptions()
    labels = _label_list(options)
    path = os.fspath(path)
    sentences, fields = [], None
    with open(path, encoding="utf-8-sig") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path} line {n}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: is not JSON ({e.msg}), expected one JSON object a line") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{where}: is a JSON {type(rec).__name__}, expected an object "
                                 "with a token list and a tag list")
            if fields is None:                      # chosen on the first record, kept after
                fields = (_pick_field(rec, options.tokens_field, TOKENS_FIELDS, "tokens", where),
                          _pick_field(rec, options.tags_field, TAGS_FIELDS, "tags", where))
            tf, gf = fields
            for f in fields:
                if f not in rec:
                    raise ValueError(f"{where}: the field {f!r} is missing, found the fields {sorted(rec)}")
            tokens, tags = rec[tf], rec[gf]
            if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
                raise ValueError(f"{where}: {tf!r} is {tokens!r:.80}, expected a list of strings")
            if not isinstance(tags, list):
                raise ValueError(f"{where}: {gf!r} is {tags!r:.80}, expected a list of tags")
            if len(tokens) != len(tags):
                raise ValueError(f"{where}: {len(tokens)} tokens and {len(tags)} tags, expected one "
                                 "tag per token")
            if not tokens:
                raise ValueError(f"{where}: the sentence is empty, expected at least one token")
            sentences.append(Sentence(list(tokens), [_tag_from(t, labels, where) for t in tags],
                                      [n] * len(tokens), path))
    if not sentences:
        raise ValueError(f"{path} holds no sentence, expected JSON lines with tokens and tags")
    return NerData(sentences, path, labels)


def detect_format(path) -> str:
    """``"jsonl"`` or ``"conll"``: by extension for JSON, else by the first non-blank line
    (a JSON object -> JSON lines; whitespace-separated columns -> CoNLL)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"file {path!r} does not exist or is not a file, expected a CoNLL or "
                         "JSON-lines file")
    if path.lower().endswith(JSON_EXTENSIONS):
        return "jsonl"
    try:
        with open(path, encoding="utf-8-sig") as fh:
            first = next((line for line in fh if line.strip()), "")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text, expected a CoNLL or JSON-lines file") from None
    if first.lstrip().startswith("{"):
        return "jsonl"
    parts = first.split("\t") if "\t" in first else first.split()
    if len(parts) >= 2 or first.startswith("-DOCSTART-"):
        return "conll"
    raise ValueError(f"{path} is in no known format (first line {first.strip()!r:.60}), expected "
                     "CoNLL lines 'token ... tag' or JSON lines with tokens and tags")


def read(path, options: TaskOptions | None = None) -> NerData:
    """The sentences of a CoNLL or JSON-lines file (``detect_format``)."""
    return (read_jsonl if detect_format(path) == "jsonl" else read_conll)(path, options)


# ------------------------------------------------------------------------------ built-in task
_WORD = re.compile(r"\w+|[^\w\s]")
_SPACE = re.compile(r"\s")
# parameter names that, as docstring words, are almost always plain English
NOT_ENTITIES = frozenset("a an the and or not in on of to for by with as at is it be if from".split())


def builtin_sentences(functions, max_doc_words: int = 40) -> list:
    """The built-in task's sentences, one per function whose docstring names at least one
    of its parameters (a ``REF`` below).

    A sentence is the function's name and parameter list (each parameter with its default
    value's source text), then its docstring's words::

        read ( size = - 1 ) Read up to size bytes ...
        O    O B-PARAM O O O O  O  O  O  B-REF O

    Words are runs of letters, digits and ``_``, or single punctuation marks; the docstring
    contributes its prose paragraphs in order, cut after ``max_doc_words`` words. Two entity
    types, both single words (``B-`` tags only):

    * ``PARAM``: a parameter's name where the signature declares it (``self``/``cls`` of
      methods are left out of the signature);
    * ``REF``: a docstring word that equals (case included) one of the function's parameter
      names, unless that name is one of the English function words ``NOT_ENTITIES``
      (``decimal``'s parameter ``a`` would make every article an entity).

    ``PARAM`` is structure (the word after ``(`` or ``,``); ``REF`` asks the model to find,
    in the text, the words that the parameter list names. Each label can be checked against
    the source: the word and the ``def`` line. Functions whose docstring names no parameter
    are left out: with them ``REF`` is rarer and a default fine-tuning run learns it far
    less.
    """
    out = []
    for f in functions:
        if not f.params:
            continue
        default = f.default_of
        words, tags = [f.name, "("], ["O", "O"]
        for k, p in enumerate(f.params):
            if k:
                words.append(",")
                tags.append("O")
            words.append(p)
            tags.append("B-PARAM")
            if p in default:
                rest = ["="] + _WORD.findall(default[p])
                words += rest
                tags += ["O"] * len(rest)
        words.append(")")
        tags.append("O")
        doc = _WORD.findall(" ".join(f.paragraphs))[:max_doc_words]
        refs = set(f.params) - NOT_ENTITIES
        words += doc
        tags += ["B-REF" if w in refs else "O" for w in doc]
        if "B-REF" not in tags:
            continue
        out.append(Sentence(words, tags, [0] * len(words), f"builtin:{f.module}.{f.qualname}"))
    return out


# ------------------------------------------------------------------------------ the family
def sort_labels(tags) -> list:
    """``O`` first, then by type, then ``B``, ``I``, ``E``, ``S`` within a type."""
    def key(t):
        prefix, type_ = conlleval.split_tag(t)
        return (prefix != "O", type_, _PREFIX_ORDER.get(prefix, -1))
    return sorted(set(tags) | {"O"}, key=key)


class NerFamily(Family):
    """Token tagging (CoNLL-2003 NER): see the module docstring. ``labels``: the tags by
    id, set by ``prepare``."""
    name = "ner"
    model_class = BertForTokenClassification
    metric = "f1"
    default_seq_len = 128
    token_keys = TOKEN_KEYS + ("labels",)         # labels are per token: trimmed with the batch

    def __init__(self):
        self.labels = []

    @property
    def label2id(self) -> dict:
        return {t: i for i, t in enumerate(self.labels)}

    # -------------------------------------------------------------- data
    def read(self, path, options: TaskOptions) -> NerData:
        return read(path, options)

    def builtin(self, seed: int = 0, test_fraction: float = 0.2):
        """``(train, test)`` of ``builtin_sentences`` over the standard library's documented
        functions, split by module (``split_by_group``: no module on both sides); held-out
        sentences whose words equal a training sentence's are dropped."""
        from .stdlib_functions import split_by_group, stdlib_functions
        train_f, test_f = split_by_group([f for f in stdlib_functions() if f.params],
                                         lambda f: f.module, test_fraction, seed)
        train = builtin_sentences(train_f)
        seen = {tuple(s.tokens) for s in train}
        test = [s for s in builtin_sentences(test_f) if tuple(s.tokens) not in seen]
        return NerData(train, "builtin:train"), NerData(test, "builtin:test")

    def split(self, data: NerData, seed: int = 0):
        """80/20 by sentence, in a random order of ``seed`` (each side keeps file order)."""
        n = len(data)
        if n < 2:
            raise ValueError(f"{data.source} holds {n} sentence(s), expected at least 2 to split "
                             "into training and held-out data (or give a held-out file)")
        test = set(np.random.default_rng(seed).permutation(n)[:max(1, n // 5)].tolist())
        pick = lambda keep: [s for i, s in enumerate(data.sentences) if (i in test) == keep]  # noqa: E731
        return (NerData(pick(False), data.source, data.label_list),
                NerData(pick(True), data.source, data.label_list))

    def prepare(self, train: NerData) -> None:
        self.labels = (list(train.label_list) if train.label_list is not None
                       else sort_labels(t for s in train.sentences for t in s.tags))

    def model_kwargs(self) -> dict:
        self._need_labels()
        return dict(num_labels=len(self.labels))

    def _need_labels(self):
        if not self.labels:
            raise RuntimeError("NerFamily.prepare(train) must come first: it sets the label list")

    def encode(self, data: NerData, tokenizer, seq_len: int, options: TaskOptions) -> Encoded:
        """Rows ``[CLS] word pieces [SEP]`` with the first piece of each word labelled; a
        sentence too long for one row continues in the next ones (module docstring).

        ``example_index``: each row's sentence. meta: ``word_starts`` (each row's
        first-piece positions), ``first_word`` (the sentence's index of each row's first
        word), ``windows`` (rows beyond one per sentence) and ``cut_words`` (words that lost
        later pieces)."""
        self._need_labels()
        if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 3:
            raise ValueError(f"seq_len={seq_len!r} is invalid, expected an integer >= 3")
        l2i = self.label2id
        for s in data.sentences:                    # every tag checked before any work
            for tag, line in zip(s.tags, s.lines):
                if tag not in l2i:
                    where = f"{s.source} line {line}" if line else s.source
                    raise ValueError(f"{where}: tag {tag!r} is not in the label list {self.labels} "
                                     "(the training data's tags)")
        room = seq_len - 2                          # pieces a row holds between [CLS] and [SEP]
        cache, rows, cut = {}, [], 0                # rows: (sentence, first word, pieces, labels)
        for r, s in enumerate(data.sentences):
            first, pieces, labs = 0, [], []
            for k, (word, tag) in enumerate(zip(s.tokens, s.tags)):
                if word not in cache:
                    cache[word] = (tokenizer.convert_tokens_to_ids(tokenizer.tokenize(word))
                                   or [tokenizer.unk_token_id])       # never zero pieces
                wp = cache[word]
                if pieces and len(pieces) + len(wp) > room:           # the next window
                    rows.append((r, first, pieces, labs))
                    first, pieces, labs = k, [], []
                if len(wp) > room:                  # longer than a whole row: its first pieces
                    wp, cut = wp[:room], cut + 1
                labs += [l2i[tag]] + [IGNORE] * (len(wp) - 1)
                pieces += wp
            rows.append((r, first, pieces, labs))
        n = len(rows)
        ids = np.full((n, seq_len), tokenizer.pad_token_id, dtype=np.int64)
        mask = np.zeros((n, seq_len), dtype=np.int64)
        labels = np.full((n, seq_len), IGNORE, dtype=np.int64)
        for i, (_, _, pieces, labs) in enumerate(rows):
            ids[i, :len(pieces) + 2] = [tokenizer.cls_token_id] + pieces + [tokenizer.sep_token_id]
            mask[i, :len(pieces) + 2] = 1
            labels[i, 1:len(labs) + 1] = labs
        arrays = dict(input_ids=ids, token_type_ids=np.zeros_like(ids), attention_mask=mask,
                      labels=labels)
        return Encoded(arrays, np.array([r for r, *_ in rows], dtype=np.int64),
                       dict(word_starts=[np.flatnonzero(row != IGNORE) for row in labels],
                            first_word=np.array([f for _, f, *_ in rows], dtype=np.int64),
                            windows=n - len(data), cut_words=cut))

    # -------------------------------------------------------------- Trainer protocol
    def metrics(self, out, batch) -> dict:
        """Sums and, per row, the gold and predicted tag ids of its labelled tokens (lists
        that pool by concatenation)."""
        labels = to_numpy(batch["labels"])
        pred = to_numpy(out.logits.argmax(axis=-1))
        B = labels.shape[0]
        keep = labels != IGNORE
        return dict(examples=B, loss=float(out.loss) * B,
                    tokens=float(to_numpy(batch["attention_mask"]).sum()),
                    gold=[labels[b][keep[b]].tolist() for b in range(B)],
                    pred=[pred[b][keep[b]].tolist() for b in range(B)])

    def _names(self, rows):
        return [[self.labels[i] for i in row] for row in rows]

    def summarize(self, m: dict) -> dict:
        """Mean loss and conlleval's scores of the pooled rows (the words the model saw)."""
        res = conlleval.evaluate(self._names(m["gold"]), self._names(m["pred"]))
        return dict(loss=m["loss"] / max(m["examples"], 1), **res.as_dict())

    # -------------------------------------------------------------- final evaluation
    def outputs(self, out, batch) -> dict:
        return dict(pred=to_numpy(out.logits.argmax(axis=-1)))

    def predicted_tags(self, data: NerData, encoded: Encoded, outputs: dict) -> list:
        """Each sentence's predicted tags: the arg max at each word's first piece, in the row
        (window) that holds the word."""
        self._need_labels()
        rows = outputs["pred"]
        if len(rows) != len(encoded):
            raise ValueError(f"outputs hold {len(rows)} rows, expected {len(encoded)} (the encoded rows)")
        out = [[None] * len(s.tokens) for s in data.sentences]
        for r, first, row, st in zip(encoded.example_index, encoded.meta["first_word"], rows,
                                     encoded.meta["word_starts"]):
            out[r][first:first + len(st)] = [self.labels[int(i)] for i in np.asarray(row)[st]]
        missing = [r for r, tags in enumerate(out) if None in tags]
        if missing:
            raise ValueError(f"sentence {missing[0]} has words in no encoded row: the encoding "
                             "is not this data set's")
        return out

    def evaluate(self, data: NerData, encoded: Encoded, outputs: dict, options: TaskOptions):
        """``(metrics, predictions)``: conlleval's scores over every word of every sentence,
        per type, and the all-``O`` baseline; predictions are the tag lists."""
        pred = self.predicted_tags(data, encoded, outputs)
        gold = [s.tags for s in data.sentences]
        res = conlleval.evaluate(gold, pred)
        m = res.as_dict()
        m.update({f"f1_{t}": c.f1 for t, c in res.per_type.items()})
        base = conlleval.evaluate(gold, [["O"] * len(g) for g in gold])
        m.update(baseline_f1=base.f1, baseline_token_acc=base.accuracy)
        return m, pred

    def write_predictions(self, out_dir: str, data: NerData, encoded: Encoded, predictions,
                          options: TaskOptions) -> list:
        """``out_dir/predictions.conll``: ``token gold predicted`` a line, a blank line after
        each sentence (conlleval's input). Whitespace inside a token becomes ``_`` and an
        empty token is written ``_``, so that every line has exactly three columns."""
        from ..io import atomic_write_text
        if len(predictions) != len(data):
            raise ValueError(f"predictions hold {len(predictions)} sentences, expected {len(data)}")
        lines = []
        for s, p in zip(data.sentences, predictions):
            if len(p) != len(s.tokens):
                raise ValueError(f"{s.source}: {len(p)} predicted tags for {len(s.tokens)} tokens")
            for tok, g, t in zip(s.tokens, s.tags, p):
                lines.append(f"{_SPACE.sub('_', tok) or '_'} {g} {t}")
            lines.append("")
        path = os.path.join(out_dir, "predictions.conll")
        os.makedirs(out_dir, exist_ok=True)
        atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))
        return [path]
