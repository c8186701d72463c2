"""Long training parity with Hugging Face: the original default pretraining run (recipe
"bert": preset mini, vocabulary 8192 trained on the built-in corpus, 16 x 128 tokens, NSP,
lr 1e-3 with 10% warmup then linear decay, BERT's AdamW without bias correction, clipping
at 1.0), dropout off, run by minibert's Trainer and by transformers' BertForPreTraining from
the same initial weights on the same batches, in float32.

It answers one question: is the plateau of that run (held-out MLM accuracy stuck at the
most-frequent-token level) a bug in minibert's training step? If it were, the two loss
curves would part. tests/test_hf_training_parity.py proves the same on a short run to
float32 rounding; here the curves are printed every 25 steps with their relative
difference, and the MLM accuracy on the training batch of both runs (the plateau shows in
both or in neither).

Usage: python benchmarks/hf_training_parity.py [--steps 300]
(run it with the repository on PYTHONPATH to test a checkout other than the installed one)
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch
import transformers

from minibert import BertConfig, BertForPreTraining, corpora
from minibert import pretraining_data as pdata
from minibert.tokenization import BertTokenizer, write_vocab
from minibert.train import TrainConfig, Trainer, batch_indices
from minibert.wordpiece_trainer import train_wordpiece_vocab

NO_DECAY = ("bias", "LayerNorm.weight")


def build_data(cache, seq_len=128, vocab_size=8192, seed=0):
    path = os.path.join(cache, f"vocab-{vocab_size}.txt")
    docs = corpora.stdlib_documents()
    if not os.path.exists(path):
        write_vocab(train_wordpiece_vocab((s for d in docs for s in d), vocab_size), path)
    tok = BertTokenizer(path)
    P = max(1, round(0.15 * seq_len))
    train_docs = [d for i, d in enumerate(docs) if i % 20 != 19]      # as the recipe splits
    inst = pdata.create_pretraining_instances(train_docs, tok, max_seq_length=seq_len,
                                              max_predictions_per_seq=P, seed=seed)
    return tok, pdata.instances_to_arrays(inst, tok, max_seq_length=seq_len,
                                          max_predictions_per_seq=P)


def hf_labels(b):
    B, S = b["input_ids"].shape
    labels = np.full((B, S), -100, dtype=np.int64)
    rows, slots = np.nonzero(b["masked_lm_weights"] > 0)
    labels[rows, b["masked_lm_positions"][rows, slots]] = b["masked_lm_ids"][rows, slots]
    return labels


def main():
    ap = argparse.ArgumentParser(description="minibert vs transformers, the old default run")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "minibert-ablation"))
    a = ap.parse_args()
    os.makedirs(a.cache, exist_ok=True)
    torch.set_num_threads(max(1, (os.cpu_count() or 2)))
    tok, data = build_data(a.cache)
    config = BertConfig.preset("mini", vocab_size=len(tok), hidden_dropout_prob=0.0,
                               attention_probs_dropout_prob=0.0)
    tc = TrainConfig(steps=300, batch_size=16, lr=1e-3, warmup_steps=30, optimizer="bert", seed=0)
    n = len(data["input_ids"])
    print(f"{n} training instances of 128 tokens, {a.steps} of {tc.steps} steps, float32")

    with tempfile.TemporaryDirectory() as tmp:
        init = BertForPreTraining(config, dtype=np.float32, seed=0)
        init.save_pretrained(tmp)
        mb = BertForPreTraining.from_pretrained(tmp, dtype=np.float32)
        hf = transformers.BertForPreTraining.from_pretrained(tmp, attn_implementation="eager").train()
    trainer = Trainer(mb, data, None, os.path.join(a.cache, "unused"), tc)

    named = [(k, p) for k, p in hf.named_parameters()]
    m = {k: torch.zeros_like(p) for k, p in named}
    v = {k: torch.zeros_like(p) for k, p in named}
    params = [p for _, p in named]
    worst, t_mb, t_hf = 0.0, 0.0, 0.0
    print(f"{'step':>5} {'minibert loss':>14} {'transformers':>13} {'rel diff':>9} "
          f"{'mlm acc mb':>10} {'mlm acc hf':>10}")
    for step in range(a.steps):
        t0 = time.perf_counter()
        rec = trainer.train_step()
        t_mb += time.perf_counter() - t0

        t0 = time.perf_counter()
        rows = batch_indices(step, n, tc.batch_size, tc.seed)
        b = {k: x[rows] for k, x in data.items()}
        out = hf(input_ids=torch.tensor(b["input_ids"]), attention_mask=torch.tensor(b["attention_mask"]),
                 token_type_ids=torch.tensor(b["token_type_ids"]), labels=torch.tensor(hf_labels(b)),
                 next_sentence_label=torch.tensor(b["next_sentence_labels"]))
        hf.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, tc.max_grad_norm)
        lr = trainer.schedule.lr(step)
        with torch.no_grad():                       # BERT's AdamW, as minibert.optim "bert"
            for k, p in named:
                g = p.grad
                m[k].mul_(0.9).add_(0.1 * g)
                v[k].mul_(0.999).add_(0.001 * (g * g))
                u = m[k] / (v[k].sqrt() + tc.adam_eps)
                if not any(s in k for s in NO_DECAY):
                    u = u + tc.weight_decay * p
                p.sub_(lr * u)
        t_hf += time.perf_counter() - t0
        w = b["masked_lm_weights"] > 0
        pred = out.prediction_logits.detach().numpy().argmax(-1)
        rows_, slots = np.nonzero(w)
        hf_acc = float(np.mean(pred[rows_, b["masked_lm_positions"][rows_, slots]]
                               == b["masked_lm_ids"][rows_, slots]))
        hl = float(out.loss.detach())
        rel = abs(rec["loss"] - hl) / abs(hl)
        worst = max(worst, rel)
        if (step + 1) % 25 == 0 or step == 0:
            print(f"{step + 1:5d} {rec['loss']:14.6f} {hl:13.6f} {rel:9.1e} "
                  f"{rec['mlm_acc']:10.4f} {hf_acc:10.4f}", flush=True)
    print(f"largest relative loss difference over {a.steps} steps: {worst:.2e}")
    print(f"time: minibert {t_mb:.0f} s, transformers {t_hf:.0f} s")


if __name__ == "__main__":
    main()
