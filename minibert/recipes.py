"""End-to-end recipes behind the ``minibert`` command: text in, trained model out.

    pretrain   corpus -> WordPiece vocab -> NSP/MLM instances -> BertForPreTraining -> checkpoints
    finetune   checkpoint + labeled text -> BertForSequenceClassification -> held-out accuracy
    fill_mask  checkpoint with a masked-LM head + "text with [MASK]" -> top-k tokens with
               probabilities (BertForMaskedLM: loads BertForPreTraining checkpoints too)
    encode     checkpoint + text -> tokens, ids, [CLS] and pooled vectors

Each is a plain function with keyword arguments; they validate everything cheap before doing
anything expensive or writing anything, report progress only through callbacks (``on_stage``
for one-line messages, ``on_step`` / ``on_eval`` for the training loop) and never print.
"""
from __future__ import annotations

import math
import os

import numpy as np

from .backend import to_numpy
from .config import PRESETS, BertConfig
from .checkpoint import tensor_names
from .heads import BertForMaskedLM, BertForPreTraining, BertForSequenceClassification
from .internals import InternalsMonitor
from .model import BertModel
from .tokenization import BertTokenizer, write_vocab
from .wordpiece_trainer import train_wordpiece_vocab
from .train import (TrainConfig, Trainer, latest_checkpoint, list_checkpoints,
                    read_trainer_state, resolve_checkpoint)

DEVICES = ("cpu", "gpu")


def _noop(*_):
    pass


def _check_common(preset, seq_len, batch_size, device):
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"preset={preset!r} is unknown, expected one of {sorted(PRESETS)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size={batch_size!r} is invalid, expected a positive integer")
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 8:
        raise ValueError(f"seq_len={seq_len!r} is invalid, expected an integer >= 8")
    if device not in DEVICES:
        raise ValueError(f"device={device!r} is unknown, expected one of {DEVICES}")


def _check_seq_len(seq_len, config, where):
    if seq_len > config.max_position_embeddings:
        raise ValueError(f"seq_len={seq_len} is longer than the model's positions "
                         f"(max_position_embeddings={config.max_position_embeddings} of {where})")


def _split_documents(documents, every=20):
    """Every ``every``-th document is held out: evaluation never sees training text."""
    if len(documents) < 2 * every:
        every = max(len(documents), 2) if len(documents) >= 4 else 0
    if every == 0:
        return documents, []
    train = [d for i, d in enumerate(documents) if i % every != every - 1]
    held = [d for i, d in enumerate(documents) if i % every == every - 1]
    return train, held


# --------------------------------------------------------------------------- pretraining
def pretrain(out_dir="runs/pretrain", preset="mini", corpus=None, vocab=None, vocab_size=8192,
             steps=300, batch_size=16, seq_len=128, lr=1e-3, warmup_steps=None, seed=0,
             device="cpu", resume=False, stop_at=None, max_predictions_per_seq=None,
             dupe_factor=1, save_every=100, eval_every=50, on_stage=_noop, on_step=None,
             on_eval=None, log_internals=None):
    """Pretrain BERT (masked LM + next sentence prediction) from text.

    Args:
        out_dir: checkpoints (``checkpoint-NNNNNNN``, ``latest``), ``vocab.txt`` and
            ``loss_curve.png`` go here.
        preset: model size (``BertConfig.preset``); vocab_size comes from the vocabulary.
        corpus: a text file (one sentence per line, blank lines between documents) or a
            directory of them; None uses the docstrings of Python's standard library.
        vocab: a vocab.txt to use; None trains a WordPiece vocabulary of ``vocab_size`` tokens
            on the corpus (saved as ``out_dir/vocab.txt``). On resume the checkpoint's is used.
        steps, batch_size, seq_len, lr, warmup_steps, seed: the run (see TrainConfig).
        resume: continue the run in ``out_dir`` from its latest checkpoint.
        stop_at: stop after this step (with a checkpoint), to be resumed later.
        log_internals: every this many steps, log gradient norms, update/weight ratios,
            activations and attention entropies to ``out_dir/internals.jsonl`` and plot
            ``internals.png`` (``minibert.internals.InternalsMonitor``); None: off.
    Returns:
        TrainResult (the final step, the last checkpoint, the metric history).
    """
    from . import corpora
    _check_common(preset, seq_len, batch_size, device)
    config = BertConfig.preset(preset)
    _check_seq_len(seq_len, config, f"preset {preset!r}")
    P = max_predictions_per_seq or max(1, round(0.15 * seq_len))
    tc = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
                     seed=seed, save_every=save_every, eval_every=eval_every).validate()
    out_dir = os.fspath(out_dir)
    ckpt = _check_pretrain_out_dir(out_dir, resume, vocab)

    on_stage("reading the corpus " + (repr(corpus) if corpus else
                                      "(docstrings of the Python standard library)"))
    documents = corpora.read_corpus(corpus) if corpus else corpora.stdlib_documents()
    n_sent = sum(len(d) for d in documents)
    on_stage(f"  {len(documents):,} documents, {n_sent:,} sentences")
    tokenizer = _pretraining_tokenizer(documents, out_dir, ckpt, vocab, vocab_size, on_stage)
    train_data, eval_data = _pretraining_arrays(documents, tokenizer, seq_len, P, dupe_factor,
                                                seed, on_stage)

    config.vocab_size = len(tokenizer)
    config.validate()
    model = BertForPreTraining(config, dtype=np.float32, seed=seed, device=device)
    on_stage(f"model: BertForPreTraining, preset {preset!r} (L={config.num_hidden_layers} "
             f"H={config.hidden_size} A={config.num_attention_heads} V={config.vocab_size}), "
             f"{model.num_parameters():,} parameters, device {device}")
    monitor = None if log_internals is None else InternalsMonitor(log_internals, out_dir)
    trainer = Trainer(model, train_data, eval_data, out_dir, tc, "pretraining",
                      save_extra=tokenizer.save_pretrained, monitor=monitor)
    try:
        return trainer.train(resume=resume, stop_at=stop_at, on_step=on_step, on_eval=on_eval)
    finally:
        if monitor is not None:
            monitor.close()


def _check_pretrain_out_dir(out_dir, resume, vocab):
    """The checkpoint to resume from (None for a new run), checked before any data is built:
    a new run refuses a directory that holds one already."""
    ckpt = None
    if resume:
        ckpt = latest_checkpoint(out_dir)
        read_trainer_state(ckpt)                   # fail now, not after building the data
    elif list_checkpoints(out_dir):
        raise ValueError(f"--out {out_dir!r} already holds a training run "
                         f"({os.path.basename(list_checkpoints(out_dir)[-1])}); pass --resume to "
                         "continue it or choose another --out")
    if vocab is not None and not os.path.isfile(vocab):
        raise ValueError(f"vocab file {vocab!r} does not exist")
    return ckpt


def _pretraining_tokenizer(documents, out_dir, ckpt, vocab, vocab_size, on_stage):
    """The resumed checkpoint's tokenizer, the one of ``vocab``, or one whose vocabulary is
    trained on ``documents`` and written to ``out_dir/vocab.txt``."""
    if ckpt is not None:
        tokenizer = BertTokenizer.from_pretrained(ckpt)
        on_stage(f"vocabulary: {len(tokenizer):,} tokens from {ckpt}")
        return tokenizer
    if vocab is not None:
        tokenizer = BertTokenizer(vocab)
        on_stage(f"vocabulary: {len(tokenizer):,} tokens from {vocab}")
        return tokenizer
    on_stage(f"training a WordPiece vocabulary of {vocab_size:,} tokens")
    tokens = train_wordpiece_vocab((s for d in documents for s in d), vocab_size)
    os.makedirs(out_dir, exist_ok=True)
    vocab = os.path.join(out_dir, "vocab.txt")
    write_vocab(tokens, vocab)
    tokenizer = BertTokenizer(vocab)
    on_stage(f"  {len(tokenizer):,} tokens written to {vocab}")
    return tokenizer


def _pretraining_arrays(documents, tokenizer, seq_len, P, dupe_factor, seed, on_stage):
    """Training arrays and held-out arrays (None when the held-out documents give no
    instance) from disjoint documents."""
    from . import pretraining_data as pdata
    train_docs, held_docs = _split_documents(documents)
    on_stage(f"making pretraining instances (max_seq_length {seq_len}, {P} masked positions, "
             f"dupe_factor {dupe_factor})")
    make = dict(max_seq_length=seq_len, max_predictions_per_seq=P)
    inst = pdata.create_pretraining_instances(train_docs, tokenizer, dupe_factor=dupe_factor,
                                              seed=seed, **make)
    train_data = pdata.instances_to_arrays(inst, tokenizer, **make)
    eval_data = None
    if held_docs:
        try:
            held = pdata.create_pretraining_instances(held_docs, tokenizer, seed=seed + 1, **make)
            eval_data = pdata.instances_to_arrays(held, tokenizer, **make)
        except ValueError as e:                  # e.g. every held-out document is one sentence
            on_stage(f"  no held-out evaluation: {e}")
    on_stage(f"  {len(inst):,} training instances, "
             f"{0 if eval_data is None else len(eval_data['input_ids']):,} held-out")
    return train_data, eval_data


# --------------------------------------------------------------------------- fine-tuning
def finetune(checkpoint="runs/pretrain", data=None, out_dir="runs/finetune", steps=300,
             batch_size=16, seq_len=128, lr=2e-4, warmup_steps=None, seed=0, device="cpu",
             resume=False, text_column="text", text_pair_column="text_pair",
             label_column="label", on_stage=_noop, on_step=None, on_eval=None):
    """Fine-tune a pretrained BERT for sequence classification and report held-out accuracy.

    Args:
        checkpoint: a minibert training directory (its latest checkpoint) or any BERT
            directory with config.json, model.safetensors and vocab.txt (Hugging Face's too).
        data: a CSV or JSONL file with text (optional text_pair) and label columns, split
            80/20 into training and held-out examples; None uses the built-in task (which
            standard-library package a docstring comes from).
    Returns:
        (TrainResult, final held-out metrics dict, label names).
    """
    from . import finetune_data as fdata
    _check_common(None, seq_len, batch_size, device)
    out_dir = os.fspath(out_dir)
    if not resume and list_checkpoints(out_dir):
        raise ValueError(f"--out {out_dir!r} already holds a training run; pass --resume to "
                         "continue it or choose another --out")
    model_dir = resolve_checkpoint(checkpoint)
    if not os.path.isfile(os.path.join(model_dir, "vocab.txt")):
        raise ValueError(f"checkpoint {model_dir!r} has no vocab.txt, expected the tokenizer "
                         "next to the model")
    config = BertConfig.from_json_file(os.path.join(model_dir, "config.json"))
    _check_seq_len(seq_len, config, model_dir)

    on_stage("reading " + (repr(data) if data else "the built-in task: which standard-library "
                           "package does a docstring belong to"))
    ds = fdata.read_classification_file(data, text_column, text_pair_column, label_column) \
        if data else fdata.stdlib_classification(seed=seed)
    train_ds, test_ds = fdata.train_test_split(ds, test_fraction=0.2, seed=seed)
    K = len(ds.label_names)
    on_stage(f"  {len(train_ds.labels):,} training and {len(test_ds.labels):,} held-out "
             f"examples, {K} labels: {', '.join(map(str, ds.label_names))}")

    tokenizer = BertTokenizer.from_pretrained(model_dir)

    def arrays(d):
        enc = tokenizer(list(d.texts), None if d.text_pairs is None else list(d.text_pairs),
                        padding="max_length", truncation=True, max_length=seq_len)
        return dict(input_ids=enc["input_ids"], token_type_ids=enc["token_type_ids"],
                    attention_mask=enc["attention_mask"], labels=np.asarray(d.labels, np.int64))

    train_data, eval_data = arrays(train_ds), arrays(test_ds)
    model, info = BertForSequenceClassification.from_pretrained(
        model_dir, dtype=np.float32, device=device, new_head=True, num_labels=K,
        output_loading_info=True)
    model.set_rng_state({"seed": seed, "dropout_calls": 0})
    on_stage(f"model: BertForSequenceClassification from {model_dir} "
             f"({model.num_parameters():,} parameters), device {device}")
    for line in _loading_report(info):
        on_stage("  " + line)
    n_eval_batches = math.ceil(len(test_ds.labels) / batch_size)
    tc = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
                     seed=seed, eval_every=max(steps // 4, 1), eval_batches=n_eval_batches,
                     save_every=steps, optimizer="torch").validate()
    trainer = Trainer(model, train_data, eval_data, out_dir, tc, "classification",
                      save_extra=tokenizer.save_pretrained)
    result = trainer.train(resume=resume, on_step=on_step, on_eval=on_eval)
    final = result.evals[-1] if result.evals and result.evals[-1]["step"] == result.step \
        else trainer.evaluate()
    return result, final, list(ds.label_names)


def _loading_report(info):
    """One line per group of tensors that loading initialized or left unused (by module,
    ``bert.pooler.dense.*``), for the messages of a fine-tuning start."""
    def modules(names):
        return ", ".join(sorted({n.rsplit(".", 1)[0] + ".*" for n in names}))
    lines = []
    pooler = [n for n in info["missing_keys"] if ".pooler." in n or n.startswith("pooler.")]
    if pooler:
        lines.append(f"the checkpoint has no pooler: a new one ({modules(pooler)}) is "
                     "initialized and trained with the classifier")
    head = [n for n in info["missing_keys"] if n not in pooler]
    if head:
        lines.append(f"newly initialized: {modules(head)}")
    if info["unexpected_keys"]:
        lines.append(f"not used from the checkpoint: {modules(info['unexpected_keys'])}")
    return lines


# --------------------------------------------------------------------------- inference
def _model_dir(checkpoint):
    """The model directory of ``checkpoint``, checked to hold the tokenizer's vocab.txt."""
    model_dir = resolve_checkpoint(checkpoint)
    if not os.path.isfile(os.path.join(model_dir, "vocab.txt")):
        raise ValueError(f"checkpoint {model_dir!r} has no vocab.txt, expected the tokenizer's "
                         "vocabulary next to config.json")
    return model_dir


def _load(checkpoint, model_class, masked_lm=False):
    """Tokenizer and model of a BERT directory (a minibert run: its latest checkpoint).
    With ``masked_lm`` the checkpoint must hold a masked-LM head (``cls.predictions.*``:
    a BertForMaskedLM or BertForPreTraining checkpoint); this is checked from the tensor
    names before any tensor is read."""
    model_dir = _model_dir(checkpoint)
    if masked_lm and not any(n.startswith("cls.predictions.") for n in tensor_names(model_dir)):
        raise ValueError(f"checkpoint {model_dir!r} has no masked-LM head (no cls.predictions.* "
                         "tensors), expected a BertForMaskedLM or BertForPreTraining checkpoint")
    tokenizer = BertTokenizer.from_pretrained(model_dir)
    model = model_class.from_pretrained(model_dir)
    if len(tokenizer) > model.config.vocab_size:
        raise ValueError(f"checkpoint {model_dir!r}: vocab.txt has {len(tokenizer)} tokens but "
                         f"the model only {model.config.vocab_size}")
    return tokenizer, model


def _encode_one(tokenizer, model, text):
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text={text!r} is empty, expected some text")
    enc = tokenizer(text, truncation=True, max_length=model.config.max_position_embeddings)
    return enc


def fill_mask(checkpoint, text, top_k=5):
    """Top-k predictions for every [MASK] in ``text``.

    Returns a list, one entry per [MASK] in order, of ``[(token, probability), ...]``.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0:
        raise ValueError(f"top_k={top_k!r} is invalid, expected a positive integer")
    if not isinstance(text, str) or "[MASK]" not in text:
        raise ValueError(f"text={text!r} has no [MASK], expected a text with at least one [MASK]")
    tokenizer, model = _load(checkpoint, BertForMaskedLM, masked_lm=True)
    enc = _encode_one(tokenizer, model, text)
    ids = enc["input_ids"]                                                   # (1, S)
    positions = np.nonzero(ids[0] == tokenizer.mask_token_id)[0]
    if positions.size == 0:
        raise ValueError(f"text={text!r}: its [MASK] was truncated away "
                         f"(max {model.config.max_position_embeddings} tokens)")
    out = model(ids, attention_mask=enc["attention_mask"], token_type_ids=enc["token_type_ids"],
                masked_lm_positions=positions[None])
    logits = to_numpy(out.logits[0]).astype(np.float64)                     # (P, V)
    logits = logits[:, :len(tokenizer)]
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    results = []
    for row in probs:
        best = np.argsort(-row, kind="stable")[:top_k]
        results.append([(tokenizer.convert_ids_to_tokens(int(i)), float(row[i])) for i in best])
    return results


def encode(checkpoint, text):
    """Tokens, ids, and the [CLS] hidden state and pooled vector of ``text`` (pooled None
    when the checkpoint has no pooler: BertModel keeps the checkpoint's)."""
    tokenizer, model = _load(checkpoint, BertModel)
    enc = _encode_one(tokenizer, model, text)
    out = model(enc["input_ids"], attention_mask=enc["attention_mask"],
                token_type_ids=enc["token_type_ids"])
    ids = [int(i) for i in enc["input_ids"][0]]
    return dict(tokens=tokenizer.convert_ids_to_tokens(ids), ids=ids,
                cls=to_numpy(out.last_hidden_state[0, 0]),
                pooled=None if out.pooler_output is None else to_numpy(out.pooler_output[0]))
