"""minibert.ops.trace: the ops a model runs, in order, and its backward as the forward
reversed; every parameter named where it is read and where its gradient is produced."""
import numpy as np
import pytest

import minibert.ops
from minibert import BertConfig, BertForPreTraining, BertForSequenceClassification, BertModel
from minibert.cli import main
from minibert.ops import linear, trace
from minibert.packing import padded

CFG = dict(vocab_size=20, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
           intermediate_size=16, max_position_embeddings=8, num_labels=2)
IDS = np.array([[2, 5, 6, 7, 3], [2, 8, 9, 3, 0]])
MASK = (IDS > 0).astype(np.int64)

LAYER_OPS = ["linear", "attention", "linear", "dropout", "layernorm",
             "linear", "gelu.bias", "linear", "dropout", "layernorm"]
EMBEDDING_OPS = ["embedding", "embedding", "embedding", "layernorm", "dropout"]


def _undone_in_reverse(t):
    return [e.undoes for e in t.backward] == [e.index for e in t.forward][::-1]


def test_bert_model_trace_is_the_op_list_and_its_reverse(ops_mode):
    model = BertModel(BertConfig(**CFG), dtype=np.float64, seed=0)
    rng = np.random.default_rng(0)
    with trace(params=model.params) as t:
        out, cache = model.forward(IDS, attention_mask=MASK, training=True)
        model.backward(cache, rng.standard_normal((2, 5, 8)), rng.standard_normal((2, 8)))
    assert [e.op for e in t.forward] == EMBEDDING_OPS + LAYER_OPS * 2 + ["linear", "tanh"]
    assert _undone_in_reverse(t)
    assert [e.op for e in t.backward] == [e.op for e in t.forward][::-1]
    # every parameter is read by some forward call and gets its gradient from its backward
    def names(events):
        out = set()
        for e in events:
            for p in e.params:
                if p and "{" in p:                       # the one [Wq; Wk; Wv] product
                    head, rest = p.split("{")
                    inner, tail = rest.split("}")
                    out |= {head + n + tail for n in inner.split(",")}
                elif p:
                    out.add(p)
        return out
    assert names(t.forward) == set(model.params)
    assert names(t.backward) == set(model.params)
    # shapes and norms: the batch has padding, so on the kernels the ops run on its T real
    # tokens alone (minibert/packing.py); the padded model shows the textbook (B, S) shapes
    first, real = t.forward[0], np.asarray(MASK).astype(bool)
    packed = cache["packing"] is not None
    ids = IDS[real] if packed else IDS                                  # (T,) or (B, S)
    assert packed == (ops_mode == "kernels")
    assert first.inputs[0] == (ids.shape, None) and first.outputs[0][0] == (*ids.shape, 8)
    assert first.outputs[0][1] == pytest.approx(
        float(np.linalg.norm(model.params["embeddings.word_embeddings.weight"][ids])))
    with padded(model), trace(params=model.params) as t:
        model.forward(IDS, attention_mask=MASK, training=True)
    assert t.forward[0].inputs[0] == ((2, 5), None) and t.forward[0].outputs[0][0] == (2, 5, 8)


def test_classifier_trace_is_reversed_and_pretraining_undoes_each_forward_once():
    clf = BertForSequenceClassification(BertConfig(**CFG), seed=1)
    with trace() as t:
        out, cache = clf.forward(IDS, attention_mask=MASK, labels=np.array([0, 1]), training=True)
        clf.backward(cache)
    assert [e.op for e in t.forward][-4:] == ["tanh", "dropout", "linear", "cross_entropy"]
    assert _undone_in_reverse(t)
    # the pretraining heads are two branches (masked LM, next sentence): each forward call is
    # undone once, and the encoder's part is exactly reversed
    pre = BertForPreTraining(BertConfig(**CFG), seed=1)
    with trace() as t:
        out, cache = pre.forward(IDS, attention_mask=MASK, masked_lm_positions=np.array([[1], [2]]),
                                 masked_lm_ids=np.array([[4], [5]]),
                                 next_sentence_labels=np.array([0, 1]), training=True)
        pre.backward(cache)
    assert sorted(e.undoes for e in t.backward) == [e.index for e in t.forward]
    n_enc = len(EMBEDDING_OPS) + 2 * len(LAYER_OPS) + 2
    assert [e.undoes for e in t.backward][-n_enc:] == list(range(n_enc))[::-1]


def test_trace_replaces_nothing_cleans_up_after_an_error_and_nests():
    original = linear.forward
    with pytest.raises(ZeroDivisionError):
        with trace():
            assert linear.forward is original            # a hook, not a replaced attribute
            raise ZeroDivisionError("an error in the block")
    assert linear.forward is original and minibert.ops.linear.forward is original
    assert minibert.ops.hooks.registered() == ()
    # nested blocks: each trace records the calls made inside its own block
    x, w = np.ones((2, 3)), np.ones((4, 3))
    with trace() as outer:
        linear.forward(x, w)
        with trace() as inner:
            y, cache = linear.forward(x, w)
            linear.backward(np.ones_like(y), cache)
    assert [(e.phase, e.op) for e in outer.events] == [("forward", "linear")] * 2 + [("backward", "linear")]
    assert [(e.phase, e.op) for e in inner.events] == [("forward", "linear"), ("backward", "linear")]
    assert inner.events[1].undoes == 0 and outer.events[2].undoes == 1
    # outside a block nothing is recorded and no hook is left
    linear.forward(x, w)
    assert len(outer.events) == 3 and minibert.ops.hooks.registered() == ()


def test_cli_trace(capsys):
    assert main(["trace", "--layers", "1"]) == 0
    out = capsys.readouterr().out
    assert "20 forward op calls, then 20 backward calls" in out
    lines = [l for l in out.splitlines() if l[:4].strip().isdigit()]
    assert len(lines) == 40
    assert "backward embedding" in lines[-1] and "undoes #0" in lines[-1]
    assert "gradient of bert.embeddings.word_embeddings.weight" in lines[-1]
