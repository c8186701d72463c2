"""Pretraining data: from raw text to the arrays BertForPreTraining eats.

BERT is pretrained on two tasks at once (Devlin et al., 2018, section 3.1):

* **Masked LM**: some input tokens are hidden and the model predicts them from both sides.
* **Next sentence prediction (NSP)**: the input is a pair of text spans A and B, and the
  model says whether B really follows A in the corpus (label 0, IsNext) or was taken from
  somewhere else (label 1, NotNext).

This module builds those examples the way the original ``create_pretraining_data.py`` did,
re-derived step by step:

1. **Corpus.** A corpus is a list of *documents*, each a list of *sentences* (strings):
   ``minibert.corpora`` reads one from text files (``read_corpus``) or builds one from the
   docstrings of the Python standard library (``stdlib_documents``).
2. **Tokenize once.** Every sentence becomes a list of WordPiece tokens. Sentences that
   tokenize to nothing are dropped, and so are documents left empty. Text that spells a
   special token (a literal "[SEP]") becomes ``[UNK]``, so it cannot act as one.
3. **Target length.** A sequence holds ``[CLS] A [SEP] B [SEP]``, so A and B together get
   ``max_num_tokens = max_seq_length - 3`` tokens. Most of the time the target is that
   maximum (no compute wasted on padding); with probability ``short_seq_prob`` it is a
   random length in ``[2, max_num_tokens]``, so that the model also sees short inputs, as
   it will when fine-tuned.
4. **Chunks.** Walking through a document, whole sentences are accumulated into a chunk
   until the chunk reaches the target length or the document ends. Cutting at sentence
   boundaries keeps A and B made of real sentences.
5. **A and B.** A is the first ``a_end`` sentences of the chunk, ``a_end`` uniform in
   ``[1, len(chunk) - 1]`` (1 for a one-sentence chunk). Then, with probability 1/2, B is the
   rest of the chunk: the true continuation, IsNext. Otherwise B is a span of sentences
   starting at a random sentence of a random *other* document, long enough to fill the
   target: NotNext. The chunk's unused sentences are then put back, so the next chunk
   starts right after A and no text is wasted. A one-sentence chunk has no continuation,
   so its B is always random.
6. **Truncate.** While ``len(A) + len(B) > max_num_tokens``, one token is removed from the
   longer of the two (B on a tie), from its front or its back with probability 1/2 each:
   removing from both ends keeps the model from learning that sequences are always cut at
   one end.
7. **Assemble.** ``tokens = [CLS] A [SEP] B [SEP]`` with segment ids 0 for ``[CLS] A
   [SEP]`` and 1 for ``B [SEP]``.
8. **Mask.** ``num_to_predict = min(max_predictions_per_seq, max(1, round(len(tokens) *
   masked_lm_prob)))`` positions are chosen uniformly among all but ``[CLS]`` and ``[SEP]``.
   Each chosen token becomes ``[MASK]`` with probability 0.8, stays itself with probability
   0.1, and becomes a random vocabulary token with probability 0.1: the model cannot tell
   which visible tokens are corrupted, so it must keep a good representation of every
   token, while fine-tuning (which never shows ``[MASK]``) is not too far from pretraining.
   The positions are sorted; the labels are the original tokens. With whole-word masking
   a word and its ``##`` continuation pieces are chosen (and replaced) together, so the
   model cannot predict a piece from the rest of its own word.
9. **Repeat.** The whole corpus is passed over ``dupe_factor`` times, each pass with
   fresh random targets, pairs and masks (the original "static" masking, with duplication
   to vary it), and the instances are shuffled.

Where this module differs from the original script (each is a choice, stated here):

* The target length is drawn again for every chunk, not once per document, so
  ``short_seq_prob`` is the fraction of chunks with a short target.
* The random document of a NotNext pair is drawn uniformly among the *other* documents
  (the original retried 10 times and could fall back to the same document). In a corpus
  of exactly one document it is drawn from that document, with a start sentence that is
  not the true continuation of A.
* Random replacement tokens are drawn from the vocabulary without the special tokens and
  without bracketed placeholders such as ``[unused12]`` (the original used the whole
  vocabulary, ``[PAD]`` included).
* With whole-word masking, the 80/10/10 choice is made once per word, so a word's pieces
  are all masked, all kept or all replaced (the original drew it per piece); and when no
  whole word fits the budget ``num_to_predict``, one word of at most
  ``max_predictions_per_seq`` pieces is masked anyway (the original masked nothing).
* A corpus with no document of at least two sentences is an error: every pair would be
  NotNext and the NSP task would be meaningless.

One ``numpy.random.Generator`` (``np.random.default_rng(seed)``) drives every random choice,
so the instances are a deterministic function of the corpus, the tokenizer and the seed.

``instances_to_arrays`` pads the instances into the arrays of ``BertForPreTraining.forward``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .corpora import check_documents

# ----------------------------------------------------------------------------- instances

@dataclass
class TrainingInstance:
    """One pretraining example, in tokens: ``[CLS] A [SEP] B [SEP]`` with its masked LM targets."""
    tokens: list                      # after masking: [MASK], kept or random tokens in place
    segment_ids: list                 # 0 for [CLS] A [SEP], 1 for B [SEP]
    is_random_next: bool              # True: B is a random span (NSP label 1, NotNext)
    masked_lm_positions: list = field(default_factory=list)   # sorted indices into tokens
    masked_lm_labels: list = field(default_factory=list)      # the original tokens there


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name}={value!r} is invalid, expected an integer >= {low}")
    return int(value)


def _check_prob(name, value, low_open=False):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
        0.0 < value <= 1.0 if low_open else 0.0 <= value <= 1.0)
    if not ok:
        expected = "0 < p <= 1" if low_open else "0 <= p <= 1"
        raise ValueError(f"{name}={value!r} is invalid, expected {expected}")
    return float(value)


def _special_tokens(tokenizer):
    ids = [tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id]
    return tokenizer.convert_ids_to_tokens(ids)


def replacement_vocab(tokenizer) -> list[str]:
    """The tokens a masked position may be replaced with at random: the vocabulary in id
    order without the special tokens and bracketed placeholders (``[unused0]``, ...)."""
    special = set(int(i) for i in tokenizer.all_special_ids)
    words = [t for t, i in sorted(tokenizer.vocab.items(), key=lambda kv: kv[1])
             if i not in special and not (t.startswith("[") and t.endswith("]"))]
    if not words:
        raise ValueError("tokenizer has no ordinary token to draw random replacements from, "
                         "expected a vocabulary beyond the special tokens")
    return words


def truncate_seq_pair(tokens_a: list, tokens_b: list, max_num_tokens: int, rng) -> None:
    """Shorten A and B in place until ``len(A) + len(B) <= max_num_tokens``: one token at a
    time from the longer list (B on a tie), from its front or back with probability 1/2."""
    while len(tokens_a) + len(tokens_b) > max_num_tokens:
        longer = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()


def create_masked_lm_predictions(tokens: list, masked_lm_prob: float, max_predictions_per_seq: int,
                                 vocab_words: list, rng, whole_word_mask: bool = False,
                                 special=("[CLS]", "[SEP]"), mask_token: str = "[MASK]"):
    """Choose and corrupt the masked LM positions of one sequence (step 8 of the recipe).

    Returns ``(output_tokens, positions, labels)``: a new token list with the chosen
    positions replaced (80% ``mask_token``, 10% unchanged, 10% a random ``vocab_words``
    token), the sorted positions, and the original tokens at them.

    Words are taken in a random order while they fit the budget ``num_to_predict``. With
    whole-word masking a word longer than the remaining budget is passed over; if no word
    fits at all, the first one that fits ``max_predictions_per_seq`` is taken (so a sequence
    gets at least one prediction unless every word is longer than that).
    """
    # Candidates are words: single positions, or a word's first piece with its "##" pieces.
    candidates = []
    for i, tok in enumerate(tokens):
        if tok in special:
            continue
        if whole_word_mask and candidates and tok.startswith("##") and candidates[-1][-1] == i - 1:
            candidates[-1].append(i)
        else:
            candidates.append([i])
    num_to_predict = min(max_predictions_per_seq, max(1, int(round(len(tokens) * masked_lm_prob))))
    output = list(tokens)
    chosen = []
    words, fallback = [], None
    for c in rng.permutation(len(candidates)):
        if len(chosen) >= num_to_predict:
            break
        if len(chosen) + len(candidates[c]) > num_to_predict:
            # A whole word would overshoot: try a shorter one, but remember the first word
            # that fits max_predictions_per_seq in case no word fits num_to_predict.
            if fallback is None and len(candidates[c]) <= max_predictions_per_seq:
                fallback = candidates[c]
            continue
        words.append(candidates[c])
        chosen += candidates[c]
    if not words and fallback is not None:
        words, chosen = [fallback], list(fallback)
    for word in words:
        u = rng.random()
        for i in word:
            if u < 0.8:
                output[i] = mask_token
            elif u < 0.9:
                pass                            # kept as is, but still predicted
            else:
                output[i] = vocab_words[rng.integers(len(vocab_words))]
    chosen.sort()
    return output, chosen, [tokens[i] for i in chosen]


def _instances_from_document(docs, d, max_num_tokens, short_seq_prob, masked_lm_prob,
                             max_predictions_per_seq, vocab_words, rng, whole_word_mask,
                             cls, sep, mask, nsp=True):
    """Steps 3-8 of the recipe for document ``docs[d]`` (a list of token lists). Without
    ``nsp`` every chunk is one segment ``[CLS] chunk [SEP]`` (one more token of room)."""
    document = docs[d]
    if not nsp:
        max_num_tokens += 1                   # no second [SEP]
    instances = []
    chunk, chunk_len, chunk_start = [], 0, 0
    target = None
    i = 0
    while i < len(document):
        if not chunk:
            chunk_start = i
            target = max_num_tokens
            if rng.random() < short_seq_prob:
                target = int(rng.integers(2, max_num_tokens + 1))
        chunk.append(document[i])
        chunk_len += len(document[i])
        if (i == len(document) - 1 or chunk_len >= target) and not nsp:
            tokens_a = [t for s in chunk for t in s]
            if len(tokens_a) > max_num_tokens:   # cut from the front or the back, as step 6
                start = int(rng.integers(len(tokens_a) - max_num_tokens + 1))
                tokens_a = tokens_a[start:start + max_num_tokens]
            tokens = [cls] + tokens_a + [sep]
            tokens, positions, labels = create_masked_lm_predictions(
                tokens, masked_lm_prob, max_predictions_per_seq, vocab_words, rng,
                whole_word_mask, (cls, sep), mask)
            instances.append(TrainingInstance(tokens, [0] * len(tokens), False, positions, labels))
            chunk, chunk_len = [], 0
        elif i == len(document) - 1 or chunk_len >= target:
            a_end = 1 if len(chunk) < 2 else int(rng.integers(1, len(chunk)))   # in [1, len-1]
            tokens_a = [t for s in chunk[:a_end] for t in s]
            if len(chunk) == 1 or rng.random() < 0.5:
                is_random_next = True
                if len(docs) > 1:
                    r = int(rng.integers(len(docs) - 1))
                    r += r >= d                       # uniform over the other documents
                    other = docs[r]
                    start = int(rng.integers(len(other)))
                else:                                 # one document: any start but the true one
                    other = docs[d]
                    true_next = chunk_start + a_end   # == len(other) after the last sentence
                    has_next = true_next < len(other)
                    start = int(rng.integers(len(other) - has_next))
                    if has_next and start >= true_next:
                        start += 1
                tokens_b = []
                for sentence in other[start:]:
                    tokens_b += sentence
                    if len(tokens_b) >= target - len(tokens_a):
                        break
                i -= len(chunk) - a_end               # put the unused sentences back
            else:
                is_random_next = False
                tokens_b = [t for s in chunk[a_end:] for t in s]
            truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng)
            tokens = [cls] + tokens_a + [sep] + tokens_b + [sep]
            segment_ids = [0] * (len(tokens_a) + 2) + [1] * (len(tokens_b) + 1)
            tokens, positions, labels = create_masked_lm_predictions(
                tokens, masked_lm_prob, max_predictions_per_seq, vocab_words, rng,
                whole_word_mask, (cls, sep), mask)
            instances.append(TrainingInstance(tokens, segment_ids, is_random_next, positions, labels))
            chunk, chunk_len = [], 0
        i += 1
    return instances


def create_pretraining_instances(documents, tokenizer, max_seq_length: int = 128,
                                 short_seq_prob: float = 0.1, masked_lm_prob: float = 0.15,
                                 max_predictions_per_seq: int = 20, dupe_factor: int = 1,
                                 whole_word_mask: bool = False, seed: int = 0,
                                 next_sentence_prediction: bool = True) -> list[TrainingInstance]:
    """Masked-LM + NSP training instances from a corpus, by the recipe of the module docstring.

    Args:
        documents: list of documents, each a list of sentence strings (``read_corpus``).
        tokenizer: a ``BertTokenizer`` (``tokenize``, ``vocab``, the special token ids).
        max_seq_length: S, the length of every instance at most (>= 5: [CLS], two [SEP] and
            at least one token each for A and B).
        short_seq_prob: probability of a random shorter target length for a chunk.
        masked_lm_prob: fraction of the tokens to predict (rounded, at least 1).
        max_predictions_per_seq: P, the cap on predictions per instance.
        dupe_factor: passes over the corpus, each with different pairs and masks.
        whole_word_mask: choose whole words (a piece and its ``##`` continuations) to mask.
        seed: seed of the one ``numpy.random.Generator`` behind every choice.
        next_sentence_prediction: False makes single-segment instances ``[CLS] chunk [SEP]``
            (chunks of whole sentences up to max_seq_length - 2 tokens, all IsNext), for
            masked-LM-only pretraining.

    Returns the instances in shuffled order. Raises ValueError for bad arguments and for a
    corpus with no document of at least two (non-empty) sentences.
    """
    docs = check_documents(documents)
    max_seq_length = _check_int("max_seq_length", max_seq_length, 5)
    max_predictions_per_seq = _check_int("max_predictions_per_seq", max_predictions_per_seq, 1)
    dupe_factor = _check_int("dupe_factor", dupe_factor, 1)
    short_seq_prob = _check_prob("short_seq_prob", short_seq_prob)
    masked_lm_prob = _check_prob("masked_lm_prob", masked_lm_prob, low_open=True)
    rng = np.random.default_rng(seed)
    cls, sep, mask = _special_tokens(tokenizer)
    vocab_words = replacement_vocab(tokenizer)

    # Text that spells a special token ("[SEP]" in a docstring) must not act as one.
    specials = set(tokenizer.all_special_tokens)
    unk = tokenizer.convert_ids_to_tokens([tokenizer.unk_token_id])[0]
    tokenized = []
    for doc in docs:
        sentences = [[unk if t in specials else t for t in toks]
                     for toks in (tokenizer.tokenize(s) for s in doc) if toks]
        if sentences:
            tokenized.append(sentences)
    if not tokenized and not next_sentence_prediction:
        raise ValueError(f"documents (n={len(docs)}) have no document with a non-empty "
                         "sentence, expected some text")
    if next_sentence_prediction and not any(len(doc) >= 2 for doc in tokenized):
        raise ValueError(f"documents (n={len(docs)}) have no document of at least 2 non-empty "
                         "sentences, expected at least one so that next sentence prediction has "
                         "true continuations (IsNext pairs)")
    tokenized = [tokenized[k] for k in rng.permutation(len(tokenized))]

    max_num_tokens = max_seq_length - 3                  # room for [CLS], [SEP], [SEP]
    instances = []
    for _ in range(dupe_factor):
        for d in range(len(tokenized)):
            instances += _instances_from_document(
                tokenized, d, max_num_tokens, short_seq_prob, masked_lm_prob,
                max_predictions_per_seq, vocab_words, rng, whole_word_mask, cls, sep, mask,
                bool(next_sentence_prediction))
    return [instances[k] for k in rng.permutation(len(instances))]


# ----------------------------------------------------------------------------- arrays

def instances_to_arrays(instances, tokenizer, max_seq_length: int,
                        max_predictions_per_seq: int) -> dict:
    """Pad instances into the inputs of ``BertForPreTraining.forward``.

    Returns a dict with exactly these arrays (N instances, S = max_seq_length,
    P = max_predictions_per_seq):

        input_ids             (N, S) int64    token ids, then the pad id
        token_type_ids        (N, S) int64    0 for [CLS] A [SEP], 1 for B [SEP], 0 on padding
        attention_mask        (N, S) int64    1 on real tokens, 0 on padding
        masked_lm_positions   (N, P) int64    sorted positions, padded with 0
        masked_lm_ids         (N, P) int64    the original token ids there, padded with 0
        masked_lm_weights     (N, P) float32  1.0 for a real prediction, 0.0 for a padded slot
        next_sentence_labels  (N,)   int64    0 IsNext, 1 NotNext (random B)
    """
    S = _check_int("max_seq_length", max_seq_length, 1)
    P = _check_int("max_predictions_per_seq", max_predictions_per_seq, 1)
    instances = list(instances)
    N = len(instances)
    out = {"input_ids": np.full((N, S), tokenizer.pad_token_id, dtype=np.int64),
           "token_type_ids": np.zeros((N, S), dtype=np.int64),
           "attention_mask": np.zeros((N, S), dtype=np.int64),
           "masked_lm_positions": np.zeros((N, P), dtype=np.int64),
           "masked_lm_ids": np.zeros((N, P), dtype=np.int64),
           "masked_lm_weights": np.zeros((N, P), dtype=np.float32),
           "next_sentence_labels": np.zeros((N,), dtype=np.int64)}
    for n, inst in enumerate(instances):
        T, K = len(inst.tokens), len(inst.masked_lm_positions)
        if T > S:
            raise ValueError(f"instances[{n}] has {T} tokens, expected at most max_seq_length={S}")
        if len(inst.segment_ids) != T:
            raise ValueError(f"instances[{n}] has {len(inst.segment_ids)} segment ids for {T} tokens, "
                             "expected one per token")
        if K > P:
            raise ValueError(f"instances[{n}] has {K} masked positions, expected at most "
                             f"max_predictions_per_seq={P}")
        if len(inst.masked_lm_labels) != K:
            raise ValueError(f"instances[{n}] has {len(inst.masked_lm_labels)} masked labels for "
                             f"{K} positions, expected one per position")
        out["input_ids"][n, :T] = tokenizer.convert_tokens_to_ids(list(inst.tokens))
        out["token_type_ids"][n, :T] = inst.segment_ids
        out["attention_mask"][n, :T] = 1
        out["masked_lm_positions"][n, :K] = inst.masked_lm_positions
        out["masked_lm_ids"][n, :K] = tokenizer.convert_tokens_to_ids(list(inst.masked_lm_labels))
        out["masked_lm_weights"][n, :K] = 1.0
        out["next_sentence_labels"][n] = int(bool(inst.is_random_next))
    return out


# ----------------------------------------------------------------------------- dynamic masking

def unmask_arrays(arrays: dict) -> dict:
    """A copy of ``instances_to_arrays`` output with the original tokens put back at the
    masked positions: the input of ``mask_batch``, which draws new masks every step."""
    out = {k: v.copy() for k, v in arrays.items()}
    rows, slots = np.nonzero(arrays["masked_lm_weights"] > 0)
    out["input_ids"][rows, arrays["masked_lm_positions"][rows, slots]] = \
        arrays["masked_lm_ids"][rows, slots]
    return out


def mask_batch(batch: dict, rng, masked_lm_prob: float, max_predictions_per_seq: int,
               mask_token_id: int, special_ids, replacement_ids) -> dict:
    """Dynamic masking (RoBERTa's): fresh masked-LM targets for a batch of unmasked rows.

    The rule is step 8 of the module docstring, vectorised over the batch: in each row
    ``n = min(P, max(1, round(T * masked_lm_prob)))`` positions (T = its real tokens, specials
    included, as there) are drawn uniformly among the real tokens that are not special (the
    n smallest of uniform keys), sorted, and corrupted 80/10/10 ([MASK] / kept / a random
    ``replacement_ids`` token). Whole-word masking is not done here.

    Args:
        batch: arrays with ``input_ids`` and ``attention_mask`` (B, S), original tokens.
        rng: a ``numpy.random.Generator``; the trainer seeds it from (seed, step), so the
            masks of step t are the same on a resumed run.
        max_predictions_per_seq: P (<= S).
    Returns:
        a new dict: ``batch`` with ``input_ids`` corrupted and ``masked_lm_positions``,
        ``masked_lm_ids`` (int64, (B, P)) and ``masked_lm_weights`` (float32, (B, P)) replaced.
    """
    masked_lm_prob = _check_prob("masked_lm_prob", masked_lm_prob, low_open=True)
    ids = np.asarray(batch["input_ids"])
    real = np.asarray(batch["attention_mask"]).astype(bool)                       # (B, S)
    B, S = ids.shape
    P = _check_int("max_predictions_per_seq", max_predictions_per_seq, 1)
    if P > S:
        raise ValueError(f"max_predictions_per_seq={P} is invalid, expected at most the "
                         f"sequence length {S}")
    candidate = real & ~np.isin(ids, np.asarray(list(special_ids)))               # (B, S)
    n = np.minimum(P, np.maximum(1, np.rint(real.sum(1) * masked_lm_prob))).astype(np.int64)
    n = np.minimum(n, candidate.sum(1))                                           # (B,)
    keys = np.where(candidate, rng.random((B, S)), 2.0)       # non-candidates sort last
    chosen = np.argsort(keys, axis=1, kind="stable")[:, :P]                       # (B, P)
    take = np.arange(P)[None, :] < n[:, None]                                     # (B, P)
    pos = np.sort(np.where(take, chosen, S), axis=1)           # taken first, in order
    weights = pos < S
    pos = np.where(weights, pos, 0)
    rows = np.broadcast_to(np.arange(B)[:, None], (B, P))
    labels = np.where(weights, ids[rows, pos], 0)
    u = rng.random((B, P))
    random_tok = np.asarray(replacement_ids)[rng.integers(len(replacement_ids), size=(B, P))]
    out = dict(batch)
    new = ids.copy()
    to_mask = weights & (u < 0.8)                               # 80%: [MASK]
    to_random = weights & (u >= 0.9)                            # 10%: a random token; 10% kept
    new[rows[to_mask], pos[to_mask]] = mask_token_id
    new[rows[to_random], pos[to_random]] = random_tok[to_random]
    out.update(input_ids=new, masked_lm_positions=pos.astype(np.int64),
               masked_lm_ids=labels.astype(np.int64), masked_lm_weights=weights.astype(np.float32))
    return out
