"""Pretraining data: NSP pairs, 80/10/10 masking, the arrays (the corpora they are made
from: tests/test_corpora.py).

Several tests use an "identity" corpus whose every word names its place: ``d3s7w2`` is word
2 of sentence 7 of document 3, and the vocabulary holds each such word whole. From an
instance's tokens (with the masked labels put back) the test can then tell exactly where A
and B came from, and check the NSP label against the truth.
"""
import math
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minibert import BertConfig, BertForPreTraining
from minibert.corpora import stdlib_documents
from minibert.pretraining_data import (
    TrainingInstance,
    create_pretraining_instances,
    instances_to_arrays,
    replacement_vocab,
)
from minibert.tokenization import BertTokenizer, write_vocab

DATA = os.path.join(os.path.dirname(__file__), "data")
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


# The arrays of instances_to_arrays: name -> (dtype, shape in the letters N instances,
# S sequence length, P predictions).
ARRAY_SPECS = {
    "input_ids": (np.int64, "NS"),
    "token_type_ids": (np.int64, "NS"),
    "attention_mask": (np.int64, "NS"),
    "masked_lm_positions": (np.int64, "NP"),
    "masked_lm_ids": (np.int64, "NP"),
    "masked_lm_weights": (np.float32, "NP"),
    "next_sentence_labels": (np.int64, "N"),
}


def _assert_valid_arrays(arrays):
    """Exactly the keys of ARRAY_SPECS, their dtypes, consistent shapes, 0/1 masks, weights
    and labels, ids >= 0, and positions inside the real tokens."""
    assert list(arrays) == list(ARRAY_SPECS)
    sizes = {}
    for k, (dtype, dims) in ARRAY_SPECS.items():
        a = arrays[k]
        assert a.dtype == dtype and a.ndim == len(dims), (k, a.dtype, a.shape)
        for letter, n in zip(dims, a.shape):
            assert sizes.setdefault(letter, n) == n, (k, letter, a.shape)
    for k in ("token_type_ids", "attention_mask", "next_sentence_labels", "masked_lm_weights"):
        assert np.isin(arrays[k], (0, 1)).all(), k
    for k in ("input_ids", "masked_lm_ids"):
        assert (arrays[k] >= 0).all(), k
    pos, w = arrays["masked_lm_positions"], arrays["masked_lm_weights"]
    assert ((pos >= 0) & (pos < sizes["S"])).all()
    real = np.take_along_axis(arrays["attention_mask"], pos, axis=1)
    assert not np.any((w == 1) & (real == 0)), "a real prediction points at padding"


# ----------------------------------------------------------------------------- fixtures

def _id_corpus(n_docs=20, n_sents=60, seed=0):
    """Documents of sentences of 3..8 words, each word naming (document, sentence, word)."""
    rng = np.random.default_rng(seed)
    return [[" ".join(f"d{d}s{s}w{k}" for k in range(rng.integers(3, 9))) for s in range(n_sents)]
            for d in range(n_docs)]


@pytest.fixture(scope="module")
def id_corpus():
    return _id_corpus()


@pytest.fixture(scope="module")
def id_tokenizer(tmp_path_factory, id_corpus):
    words = sorted({w for doc in id_corpus for s in doc for w in s.split()})
    path = tmp_path_factory.mktemp("idvocab") / "vocab.txt"
    write_vocab(SPECIALS + words, path)
    return BertTokenizer(path)


@pytest.fixture(scope="module")
def bert_tokenizer():
    return BertTokenizer(os.path.join(DATA, "bert-base-uncased-vocab.txt"))


@pytest.fixture(scope="module")
def letters_tokenizer(tmp_path_factory):
    """Any lowercase word over a-e tokenizes, most of them into several ## pieces."""
    vocab = SPECIALS + list("abcde") + [f"##{c}" for c in "abcde"] + ["ab", "abc", "##bc", "cd"]
    path = tmp_path_factory.mktemp("lettervocab") / "vocab.txt"
    write_vocab(vocab, path)
    return BertTokenizer(path)


@pytest.fixture(scope="module")
def small_stdlib():
    return stdlib_documents(max_files=40)


def _restore(inst):
    """The tokens before masking: the labels put back at the masked positions."""
    tokens = list(inst.tokens)
    for p, label in zip(inst.masked_lm_positions, inst.masked_lm_labels):
        tokens[p] = label
    return tokens


def _split_ab(tokens):
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    first = tokens.index("[SEP]")
    return tokens[1:first], tokens[first + 1:-1]


def _words(tokens):
    """Whole words as lists of positions: a piece and the ## pieces right after it."""
    words = []
    for i, t in enumerate(tokens):
        if t in ("[CLS]", "[SEP]"):
            words.append(None)
        elif t.startswith("##") and words and words[-1] is not None:
            words[-1].append(i)
        else:
            words.append([i])
    return [w for w in words if w is not None]


def _check_instance(inst, max_seq_length, max_predictions_per_seq, masked_lm_prob=None,
                    whole_word=False):
    """Every structural promise of one instance (the module docstring's steps 7 and 8)."""
    tokens, seg = inst.tokens, inst.segment_ids
    original = _restore(inst)
    assert len(tokens) <= max_seq_length
    assert len(seg) == len(tokens)
    sep = [i for i, t in enumerate(original) if t == "[SEP]"]
    assert original[0] == "[CLS]" and len(sep) == 2 and sep[1] == len(tokens) - 1
    assert original.count("[CLS]") == 1
    a, b = _split_ab(original)
    assert len(a) >= 1 and len(b) >= 1
    assert seg == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    pos = inst.masked_lm_positions
    assert pos == sorted(set(pos)), "positions must be sorted and unique"
    assert len(pos) <= max_predictions_per_seq
    if not pos:   # only when whole-word masking finds no word short enough
        assert whole_word and min(map(len, _words(original))) > max_predictions_per_seq
    if whole_word:
        masked = set(pos)
        assert all(masked.isdisjoint(w) or masked.issuperset(w) for w in _words(original))
    assert len(inst.masked_lm_labels) == len(pos)
    for p in pos:
        assert 0 < p < len(tokens) and original[p] not in ("[CLS]", "[SEP]")
    # every corrupted position is a masked one: the rest of the sequence is untouched
    assert all(tokens[i] == original[i] for i in range(len(tokens)) if i not in set(pos))
    if masked_lm_prob is not None:
        want = min(max_predictions_per_seq, max(1, int(round(len(tokens) * masked_lm_prob))))
        assert len(pos) == min(want, len(tokens) - 3)


# ----------------------------------------------------------------------------- instances

def test_instances_deterministic_and_valid(id_corpus, id_tokenizer):
    kw = dict(max_seq_length=48, max_predictions_per_seq=8, dupe_factor=2)
    a = create_pretraining_instances(id_corpus, id_tokenizer, seed=7, **kw)
    b = create_pretraining_instances(id_corpus, id_tokenizer, seed=7, **kw)
    c = create_pretraining_instances(id_corpus, id_tokenizer, seed=8, **kw)
    assert a == b
    assert a != c
    assert all(isinstance(x, TrainingInstance) for x in a)
    for inst in a:
        _check_instance(inst, 48, 8, masked_lm_prob=0.15)


def _locate(tokens, where):
    """(document, [stream indices]) of a run of identity tokens; asserts one document."""
    places = [where[t] for t in tokens]
    docs = {d for d, _ in places}
    assert len(docs) == 1, f"tokens {tokens} come from documents {docs}"
    return docs.pop(), [i for _, i in places]


@pytest.mark.parametrize("n_docs", [20, 1])
def test_nsp_labels_are_true(id_corpus, id_tokenizer, n_docs):
    """A and B are each a contiguous run of one document's token stream; IsNext B lies after
    A in A's document; NotNext B comes from another document (the same one in a
    one-document corpus); and a pass over the corpus uses (nearly) every sentence."""
    corpus = id_corpus[:n_docs]
    where = {}
    for d, doc in enumerate(corpus):
        for i, w in enumerate(w for s in doc for w in s.split()):
            where[w] = (d, i)
    instances = create_pretraining_instances(corpus, id_tokenizer, max_seq_length=40,
                                             max_predictions_per_seq=6, seed=3)
    labels, seen = [], set()
    for inst in instances:
        a, b = _split_ab(_restore(inst))
        da, ia = _locate(a, where)
        db, ib = _locate(b, where)
        # the sentences this instance takes from the document it was built from
        seen.update(w[:w.index("w")] for w in (a if inst.is_random_next else a + b))
        assert ia == list(range(ia[0], ia[0] + len(ia))), "A must be contiguous"
        assert ib == list(range(ib[0], ib[0] + len(ib))), "B must be contiguous"
        if inst.is_random_next:
            if n_docs > 1:
                assert db != da
        else:
            assert db == da and ib[0] > ia[-1]
        labels.append(inst.is_random_next)
    assert 0 < sum(labels) < len(labels)
    # The unused sentences of a NotNext chunk are put back, so one pass over the corpus uses
    # every sentence; only truncation can drop a whole (short) sentence, now and then.
    n_sentences = sum(len(doc) for doc in corpus)
    assert len(seen) >= 0.95 * n_sentences, (len(seen), n_sentences)


def test_is_next_fraction(id_corpus, id_tokenizer):
    """Every chunk of two or more sentences flips a fair coin for IsNext; a one-sentence chunk
    is NotNext for sure. Sentences have 3..8 tokens and the target is 29 with
    short_seq_prob=0, so a one-sentence chunk happens only at a document's end: at most
    D * dupe_factor of the N instances. With M >= N - D * dupe coin flips, the IsNext count
    has mean M/2 and standard deviation sqrt(M)/2; the test allows 4 standard deviations."""
    dupe = 8
    instances = create_pretraining_instances(id_corpus, id_tokenizer, max_seq_length=32,
                                             short_seq_prob=0.0, dupe_factor=dupe, seed=11)
    n = len(instances)
    is_next = sum(not x.is_random_next for x in instances)
    forced = len(id_corpus) * dupe
    assert n > 10 * forced
    assert 0.5 * (n - forced) - 2 * math.sqrt(n) <= is_next <= 0.5 * n + 2 * math.sqrt(n)


def test_masking_proportions(id_corpus, id_tokenizer):
    """Each masked token is [MASK] with p = 0.8, itself with p = 0.1 (+ 0.1/V' when the random
    draw hits the original, V' ~ 9600 ordinary tokens here) and another token with p ~ 0.1.
    The choices are independent, so each count is binomial; 5 standard deviations."""
    instances = create_pretraining_instances(id_corpus, id_tokenizer, max_seq_length=64,
                                             max_predictions_per_seq=10, dupe_factor=4, seed=5)
    n = masks = kept = 0
    replaced = set()
    ordinary = set(replacement_vocab(id_tokenizer))
    for inst in instances:
        for p, label in zip(inst.masked_lm_positions, inst.masked_lm_labels):
            n += 1
            masks += inst.tokens[p] == "[MASK]"
            kept += inst.tokens[p] == label
            if inst.tokens[p] not in ("[MASK]", label):
                replaced.add(inst.tokens[p])
    assert n > 4000
    for count, p in ((masks, 0.8), (kept, 0.1), (n - masks - kept, 0.1)):
        assert abs(count / n - p) <= 5 * math.sqrt(p * (1 - p) / n), (count, n, p)
    assert replaced <= ordinary                    # random tokens are never special
    assert len(replaced) > 100                     # and are spread over the vocabulary


def test_whole_word_masking(small_stdlib, bert_tokenizer):
    """With whole_word_mask a word (a piece and its ## continuations) is masked entirely or
    not at all; without it, some words are split (so the test can fail)."""
    def split_words(instances):
        count = 0
        for inst in instances:
            masked = set(inst.masked_lm_positions)
            count += sum(0 < len(masked.intersection(w)) < len(w) for w in _words(_restore(inst)))
        return count

    kw = dict(max_seq_length=64, max_predictions_per_seq=12, seed=2)
    wwm = create_pretraining_instances(small_stdlib, bert_tokenizer, whole_word_mask=True, **kw)
    for inst in wwm:
        _check_instance(inst, 64, 12, whole_word=True)
    assert split_words(wwm) == 0
    assert split_words(create_pretraining_instances(small_stdlib, bert_tokenizer, **kw)) > 0
    # a whole word's pieces share one 80/10/10 decision: all [MASK] or none of them
    for inst in wwm:
        original = _restore(inst)
        for p in inst.masked_lm_positions:
            if original[p].startswith("##") and p - 1 in inst.masked_lm_positions:
                assert (inst.tokens[p] == "[MASK]") == (inst.tokens[p - 1] == "[MASK]")


def test_short_seq_prob(id_corpus, id_tokenizer):
    """short_seq_prob = 0 fills sequences (short ones only at document ends or when a random
    B runs out of text); = 1 draws every target uniformly in [2, 61]."""
    def short_fraction(p):
        inst = create_pretraining_instances(id_corpus, id_tokenizer, max_seq_length=64,
                                            short_seq_prob=p, seed=4)
        return np.mean([len(x.tokens) < 64 for x in inst]), np.mean([len(x.tokens) for x in inst])

    f0, mean0 = short_fraction(0.0)
    f_half, _ = short_fraction(0.5)
    f1, mean1 = short_fraction(1.0)
    assert f0 < 0.3 < 0.7 < f1
    assert f0 < f_half < f1
    assert mean0 > 60 and mean1 < 48


def test_one_document_and_too_short_corpus(letters_tokenizer):
    one = [["a b c.", "d e.", "ab cd.", "bc de."]]
    instances = create_pretraining_instances(one, letters_tokenizer, max_seq_length=12, seed=0,
                                             dupe_factor=5)
    assert instances and {x.is_random_next for x in instances} == {False, True}
    with pytest.raises(ValueError, match="no document of at least 2 non-empty sentences"):
        create_pretraining_instances([["a b."], ["c d."]], letters_tokenizer, seed=0)
    with pytest.raises(ValueError, match="no document of at least 2"):
        create_pretraining_instances([["a b.", "  "], []], letters_tokenizer, seed=0)
    with pytest.raises(ValueError, match="no document"):
        create_pretraining_instances([], letters_tokenizer)


def test_special_token_text_is_not_special(letters_tokenizer):
    docs = [["a [SEP] b [CLS] c", "d [MASK] e"], ["ab ab", "cd cd"]]
    for inst in create_pretraining_instances(docs, letters_tokenizer, max_seq_length=16,
                                             dupe_factor=3, seed=1):
        _check_instance(inst, 16, 20)


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_seq_length=4), "max_seq_length=4"),
    (dict(max_predictions_per_seq=0), "max_predictions_per_seq=0"),
    (dict(dupe_factor=0), "dupe_factor=0"),
    (dict(short_seq_prob=1.5), "short_seq_prob=1.5"),
    (dict(masked_lm_prob=0.0), "masked_lm_prob=0.0"),
])
def test_instance_argument_errors(letters_tokenizer, kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_pretraining_instances([["a b.", "c d."]], letters_tokenizer, **kwargs)


words = st.text(alphabet="abcde", min_size=1, max_size=6)
sentences = st.lists(words, min_size=1, max_size=6).map(" ".join)
corpora = st.lists(st.lists(sentences, min_size=1, max_size=6), min_size=1, max_size=4)


@given(corpora, st.integers(5, 40), st.integers(1, 10), st.sampled_from([0.0, 0.3, 1.0]),
       st.sampled_from([0.05, 0.15, 0.5]), st.booleans(), st.integers(0, 2**32 - 1))
def test_random_corpora_give_valid_instances(letters_tokenizer, docs, max_seq_length, max_pred,
                                             short_seq_prob, masked_lm_prob, wwm, seed):
    kw = dict(max_seq_length=max_seq_length, max_predictions_per_seq=max_pred,
              short_seq_prob=short_seq_prob, masked_lm_prob=masked_lm_prob,
              whole_word_mask=wwm, seed=seed)
    if not any(len(d) >= 2 for d in docs):
        with pytest.raises(ValueError, match="no document of at least 2"):
            create_pretraining_instances(docs, letters_tokenizer, **kw)
        return
    instances = create_pretraining_instances(docs, letters_tokenizer, **kw)
    assert instances
    for inst in instances:
        _check_instance(inst, max_seq_length, max_pred, None if wwm else masked_lm_prob, wwm)
    arrays = instances_to_arrays(instances, letters_tokenizer, max_seq_length, max_pred)
    _assert_valid_arrays(arrays)


# ----------------------------------------------------------------------------- arrays

def test_arrays_layout(id_corpus, id_tokenizer):
    S, P = 40, 6
    instances = create_pretraining_instances(id_corpus[:4], id_tokenizer, max_seq_length=S,
                                             max_predictions_per_seq=P, short_seq_prob=0.5, seed=9)
    arrays = instances_to_arrays(instances, id_tokenizer, S, P)
    N = len(instances)
    assert list(arrays) == list(ARRAY_SPECS)
    for k, (dtype, dims) in ARRAY_SPECS.items():
        assert arrays[k].dtype == dtype, k
        assert arrays[k].shape == tuple({"N": N, "S": S, "P": P}[c] for c in dims), k
    pad = id_tokenizer.pad_token_id
    for n, inst in enumerate(instances):
        T, K = len(inst.tokens), len(inst.masked_lm_positions)
        assert arrays["input_ids"][n, :T].tolist() == id_tokenizer.convert_tokens_to_ids(inst.tokens)
        assert (arrays["input_ids"][n, T:] == pad).all()
        assert arrays["attention_mask"][n].tolist() == [1] * T + [0] * (S - T)
        assert arrays["token_type_ids"][n].tolist() == inst.segment_ids + [0] * (S - T)
        assert arrays["masked_lm_positions"][n].tolist() == inst.masked_lm_positions + [0] * (P - K)
        assert arrays["masked_lm_ids"][n, :K].tolist() == \
            id_tokenizer.convert_tokens_to_ids(inst.masked_lm_labels)
        assert (arrays["masked_lm_ids"][n, K:] == 0).all()
        assert arrays["masked_lm_weights"][n].tolist() == [1.0] * K + [0.0] * (P - K)
        assert arrays["next_sentence_labels"][n] == int(inst.is_random_next)
    assert (arrays["attention_mask"] == 0).any(), "short_seq_prob=0.5 leaves some padding"
    with pytest.raises(ValueError, match="max_seq_length=10"):
        instances_to_arrays(instances, id_tokenizer, 10, P)
    with pytest.raises(ValueError, match="max_predictions_per_seq=2"):
        instances_to_arrays(instances, id_tokenizer, S, 2)


def test_arrays_feed_bert_for_pretraining(id_corpus, id_tokenizer):
    """The arrays are what BertForPreTraining.forward takes: a loss near the uniform-guess
    value ln(V) + ln(2) for a freshly initialized model."""
    arrays = instances_to_arrays(
        create_pretraining_instances(id_corpus[:3], id_tokenizer, max_seq_length=32,
                                     max_predictions_per_seq=5, seed=0), id_tokenizer, 32, 5)
    config = BertConfig(vocab_size=len(id_tokenizer), hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)
    model = BertForPreTraining(config, dtype=np.float64, seed=0)
    batch = {k: v[:8] for k, v in arrays.items()}
    out, _ = model.forward(**batch, training=False)
    expected = math.log(len(id_tokenizer)) + math.log(2)
    assert abs(float(out.loss) - expected) < 0.5


# ----------------------------------------------------------------------------- no NSP, dynamic masks
def test_single_segment_instances(id_corpus, id_tokenizer):
    """next_sentence_prediction=False: [CLS] chunk [SEP], one segment, consecutive words of
    one document, up to max_seq_length - 2 tokens."""
    instances = create_pretraining_instances(id_corpus, id_tokenizer, max_seq_length=24,
                                             max_predictions_per_seq=4, seed=2,
                                             next_sentence_prediction=False)
    assert instances
    for inst in instances:
        toks = list(inst.tokens)
        for p, label in zip(inst.masked_lm_positions, inst.masked_lm_labels):
            toks[p] = label
        assert toks[0] == "[CLS]" and toks[-1] == "[SEP]" and "[SEP]" not in toks[1:-1]
        assert len(toks) <= 24 and set(inst.segment_ids) == {0} and not inst.is_random_next
        docs = {w.split("s")[0] for w in toks[1:-1]}
        assert len(docs) == 1                     # one document, never a random span
    assert max(len(i.tokens) for i in instances) == 24     # chunks fill the length
    arrays = instances_to_arrays(instances, id_tokenizer, 24, 4)
    assert not arrays["next_sentence_labels"].any()


def _dynamic(id_tokenizer, seed, prob=0.15, P=6, S=32):
    from minibert.pretraining_data import mask_batch, unmask_arrays
    docs = [[" ".join(f"d{d}s{s}w{w}" for w in range(5)) for s in range(12)] for d in range(4)]
    inst = create_pretraining_instances(docs, id_tokenizer, max_seq_length=S,
                                        max_predictions_per_seq=P, seed=1)
    arrays = unmask_arrays(instances_to_arrays(inst, id_tokenizer, S, P))
    words = replacement_vocab(id_tokenizer)
    kw = dict(masked_lm_prob=prob, max_predictions_per_seq=P,
              mask_token_id=id_tokenizer.mask_token_id,
              special_ids=tuple(id_tokenizer.all_special_ids),
              replacement_ids=np.asarray(id_tokenizer.convert_tokens_to_ids(words)))
    return arrays, mask_batch(arrays, np.random.default_rng(seed), **kw), kw


def test_unmask_restores_the_text(id_corpus, id_tokenizer):
    from minibert.pretraining_data import unmask_arrays
    inst = create_pretraining_instances(id_corpus, id_tokenizer, max_seq_length=32,
                                        max_predictions_per_seq=5, seed=4)
    arrays = unmask_arrays(instances_to_arrays(inst, id_tokenizer, 32, 5))
    mask_id = id_tokenizer.mask_token_id
    assert not (arrays["input_ids"] == mask_id).any()
    for n, i in enumerate(inst[:50]):
        toks = list(i.tokens)
        for p, label in zip(i.masked_lm_positions, i.masked_lm_labels):
            toks[p] = label
        assert list(arrays["input_ids"][n, :len(toks)]) == id_tokenizer.convert_tokens_to_ids(toks)


def test_mask_batch_rule(id_tokenizer):
    """Counts per row as the static rule, never a special or padded position, labels the
    original tokens, unmasked positions untouched, and the same draw for the same seed."""
    arrays, out, kw = _dynamic(id_tokenizer, seed=3)
    again = _dynamic(id_tokenizer, seed=3)[1]
    for k in out:
        assert np.array_equal(out[k], again[k]), k
    ids, real = arrays["input_ids"], arrays["attention_mask"].astype(bool)
    w = out["masked_lm_weights"] > 0
    n = np.minimum(6, np.maximum(1, np.rint(real.sum(1) * 0.15))).astype(int)
    assert np.array_equal(w.sum(1), n)
    special = np.isin(ids, list(id_tokenizer.all_special_ids))
    for r in range(len(ids)):
        pos = out["masked_lm_positions"][r][w[r]]
        assert np.all(np.diff(pos) > 0) and real[r, pos].all() and not special[r, pos].any()
        assert np.array_equal(out["masked_lm_ids"][r][w[r]], ids[r, pos])
        others = np.setdiff1d(np.arange(ids.shape[1]), pos)
        assert np.array_equal(out["input_ids"][r, others], ids[r, others])
    assert not np.array_equal(out["masked_lm_positions"], _dynamic(id_tokenizer, 4)[1]["masked_lm_positions"])


def test_mask_batch_proportions(id_tokenizer):
    """80/10/10 as the static rule (binomial counts, 5 standard deviations)."""
    from minibert.pretraining_data import mask_batch
    arrays, _, kw = _dynamic(id_tokenizer, seed=0, prob=0.2, P=8)
    n = masks = kept = 0
    for seed in range(80):
        out = mask_batch(arrays, np.random.default_rng(seed), **{**kw, "masked_lm_prob": 0.2,
                                                               "max_predictions_per_seq": 8})
        w = out["masked_lm_weights"] > 0
        rows = np.nonzero(w)[0]
        got = out["input_ids"][rows, out["masked_lm_positions"][w]]
        n += w.sum()
        masks += (got == id_tokenizer.mask_token_id).sum()
        kept += (got == out["masked_lm_ids"][w]).sum()
    assert n > 4000
    for count, p in ((masks, 0.8), (kept, 0.1), (n - masks - kept, 0.1)):
        assert abs(count / n - p) <= 5 * math.sqrt(p * (1 - p) / n), (count, n, p)


def test_mask_batch_bad_arguments(id_tokenizer):
    from minibert.pretraining_data import mask_batch
    arrays, _, kw = _dynamic(id_tokenizer, seed=0)
    with pytest.raises(ValueError, match="masked_lm_prob=0"):
        mask_batch(arrays, np.random.default_rng(0), **{**kw, "masked_lm_prob": 0})
    with pytest.raises(ValueError, match="max_predictions_per_seq=99"):
        mask_batch(arrays, np.random.default_rng(0), **{**kw, "max_predictions_per_seq": 99})
