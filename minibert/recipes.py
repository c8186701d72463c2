"""End-to-end recipes behind the ``minibert`` command: text in, trained model out.

    pretrain   corpus -> WordPiece vocab -> NSP/MLM instances -> BertForPreTraining -> checkpoints
    (fine-tuning on every task family is ``minibert.finetuning.finetune``)
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
from .checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    read_trainer_state,
    resolve_checkpoint,
    tensor_names,
)
from .config import PRESETS, BertConfig
from .heads import BertForMaskedLM, BertForPreTraining
from .internals.monitor import InternalsMonitor
from .model import BertModel
from .tokenization import BertTokenizer, write_vocab
from .train import TrainConfig, Trainer
from .wordpiece_trainer import train_wordpiece_vocab

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
    from .distributed import rank_rows, world
    rank_rows(batch_size, world())        # under MPI: the ranks' equal slices, before any write


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
# Each recipe is the set of defaults the pretrain command starts from; any argument given
# explicitly overrides its recipe's value. "bert" is Devlin et al.'s recipe at a small scale;
# "fast", the default, is the one the ablation in docs/recipe.md chose for a few minutes on
# two CPU cores (the "bert" recipe learns little in that budget).
PRETRAIN_RECIPES = {
    "bert": dict(preset="mini", vocab_size=8192, steps=300, batch_size=16, seq_len=128,
                 lr=1e-3, warmup=0.1, masked_lm_prob=0.15, dropout=0.1, nsp=True,
                 masking="static", dupe_factor=1, optimizer="bert"),
    "fast": dict(preset="tiny", vocab_size=1024, steps=2500, batch_size=32, seq_len=64,
                 lr=2e-3, warmup=0.06, masked_lm_prob=0.25, dropout=0.0, nsp=False,
                 masking="dynamic", dupe_factor=1, optimizer="torch"),
}
DEFAULT_RECIPE = "fast"
EVAL_MASKED_LM_PROB = 0.15        # held-out masking, the same for every recipe
MASKING = ("static", "dynamic")


def resolve_pretrain_recipe(recipe=DEFAULT_RECIPE, **given):
    """The recipe's settings with every argument that is not None put over them, checked.

    Returns a dict with the keys of ``PRETRAIN_RECIPES[recipe]`` plus ``warmup_steps`` and
    ``max_predictions_per_seq``. Raises ValueError for an unknown recipe, a bad value, or
    two settings that contradict each other (naming both).
    """
    if recipe not in PRETRAIN_RECIPES:
        raise ValueError(f"recipe={recipe!r} is unknown, expected one of {sorted(PRETRAIN_RECIPES)}")
    r = dict(PRETRAIN_RECIPES[recipe], warmup_steps=None, max_predictions_per_seq=None)
    unknown = sorted(set(given) - set(r))
    if unknown:
        raise TypeError(f"pretrain recipe settings {unknown} are unknown, expected some of {sorted(r)}")
    r.update({k: v for k, v in given.items() if v is not None})
    if r["masking"] not in MASKING:
        raise ValueError(f"masking={r['masking']!r} is unknown, expected one of {MASKING}")
    if r["optimizer"] not in ("bert", "torch"):
        raise ValueError(f"optimizer={r['optimizer']!r} is unknown, expected 'bert' or 'torch'")
    mp = r["masked_lm_prob"]
    if isinstance(mp, bool) or not isinstance(mp, (int, float)) or not 0 < mp < 1:
        raise ValueError(f"masked_lm_prob={mp!r} is invalid, expected a number in (0, 1)")
    d = r["dropout"]
    if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d < 1:
        raise ValueError(f"dropout={d!r} is invalid, expected a number in [0, 1)")
    for name in ("vocab_size", "steps", "dupe_factor"):
        v = r[name]
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name}={v!r} is invalid, expected a positive integer")
    # contradictions: both settings were asked for, and they cannot both hold
    if r["masking"] == "dynamic" and r["dupe_factor"] > 1:
        raise ValueError(f"dupe_factor={r['dupe_factor']} contradicts masking='dynamic': dynamic "
                         "masking draws new masks every step, duplicates would only repeat "
                         "the text; use masking='static' with dupe_factor, or dupe_factor=1")
    if given.get("warmup_steps") is not None and r["warmup_steps"] > r["steps"]:
        raise ValueError(f"warmup_steps={r['warmup_steps']} contradicts steps={r['steps']}: the "
                         "warmup cannot be longer than the run")
    if r["warmup_steps"] is None:
        r["warmup_steps"] = int(round(r["warmup"] * r["steps"]))
    if r["max_predictions_per_seq"] is None:
        r["max_predictions_per_seq"] = max(1, round(r["masked_lm_prob"] * r["seq_len"]))
    elif not 1 <= r["max_predictions_per_seq"] <= r["seq_len"] - 2:
        raise ValueError(f"max_predictions_per_seq={r['max_predictions_per_seq']} contradicts "
                         f"seq_len={r['seq_len']}: expected 1..{r['seq_len'] - 2} (the tokens "
                         "besides [CLS] and [SEP])")
    return r


def pretrain(out_dir="runs/pretrain", recipe=DEFAULT_RECIPE, preset=None, corpus=None,
             vocab=None, vocab_size=None, steps=None, batch_size=None, seq_len=None, lr=None,
             warmup_steps=None, masked_lm_prob=None, max_predictions_per_seq=None,
             dropout=None, nsp=None, masking=None, dupe_factor=None, optimizer=None, seed=0,
             device="cpu", resume=False, stop_at=None, save_every=None, eval_every=None,
             on_stage=_noop, on_step=None, on_eval=None, log_internals=None):
    """Pretrain BERT (masked LM, and next sentence prediction if ``nsp``) from text.

    Args:
        out_dir: checkpoints (``checkpoint-NNNNNNN``, ``latest``), ``vocab.txt`` and
            ``loss_curve.png`` go here.
        recipe: the defaults (``PRETRAIN_RECIPES``): "fast" (learns in minutes on a CPU) or
            "bert" (the original recipe at a small scale). Every other argument left None
            takes the recipe's value.
        preset: model size (``BertConfig.preset``); vocab_size comes from the vocabulary.
        corpus: a text file (one sentence per line, blank lines between documents) or a
            directory of them; None uses the docstrings of Python's standard library.
        vocab: a vocab.txt to use; None trains a WordPiece vocabulary of ``vocab_size`` tokens
            on the corpus (saved as ``out_dir/vocab.txt``). On resume the checkpoint's is used.
        steps, batch_size, seq_len, lr, warmup_steps, seed: the run (see TrainConfig);
            warmup_steps defaults to the recipe's fraction of steps.
        masked_lm_prob, max_predictions_per_seq: the fraction of tokens to predict, and its
            cap per sequence (default: round(masked_lm_prob * seq_len)).
        dropout: hidden and attention dropout during pretraining (saved in config.json).
        nsp: True pairs two segments and trains next sentence prediction; False trains the
            masked LM alone on single segments.
        masking: "static" (masks drawn once, when the instances are made, ``dupe_factor``
            copies) or "dynamic" (new masks for every batch, drawn from (seed, step)).
        optimizer: AdamW variant, "bert" or "torch" (see minibert.optim).
        resume: continue the run in ``out_dir`` from its latest checkpoint.
        stop_at: stop after this step (with a checkpoint), to be resumed later.
        save_every, eval_every: default steps // 4 and steps // 10.
        log_internals: every this many steps, log gradient norms, update/weight ratios,
            activations and attention entropies to ``out_dir/internals.jsonl`` and plot
            ``internals.png`` (``minibert.internals.InternalsMonitor``); None: off.
    Returns:
        (TrainResult, settings): the final step, the last checkpoint, the metric history,
        and the resolved recipe settings.
    """
    if vocab is not None and vocab_size is not None:
        raise ValueError(f"vocab_size={vocab_size} contradicts vocab={vocab!r}: the size of a "
                         "given vocabulary is that of its file; pass one of them")
    r = resolve_pretrain_recipe(recipe, preset=preset, vocab_size=vocab_size, steps=steps,
                                batch_size=batch_size, seq_len=seq_len, lr=lr,
                                warmup_steps=warmup_steps, masked_lm_prob=masked_lm_prob,
                                max_predictions_per_seq=max_predictions_per_seq,
                                dropout=dropout, nsp=nsp, masking=masking,
                                dupe_factor=dupe_factor, optimizer=optimizer)
    config, tc = _pretrain_configs(r, seed, device, save_every, eval_every)
    out_dir = os.fspath(out_dir)
    ckpt = _check_pretrain_out_dir(out_dir, resume, vocab)
    monitor = _internals_monitor(log_internals, out_dir)

    on_stage(f"recipe {recipe!r}: " + ", ".join(f"{k} {r[k]}" for k in (
        "preset", "seq_len", "batch_size", "steps", "lr", "warmup_steps", "masked_lm_prob",
        "dropout", "nsp", "masking", "optimizer")))
    documents = _read_documents(corpus, on_stage)
    tokenizer = _pretraining_tokenizer(documents, out_dir, ckpt, vocab, r["vocab_size"], on_stage)
    train_data, eval_data, transform = _pretraining_arrays(documents, tokenizer, r, seed, on_stage)
    if eval_data is not None:                     # evaluate on every held-out instance
        tc.eval_batches = math.ceil(len(eval_data["input_ids"]) / tc.batch_size)

    config.vocab_size = len(tokenizer)
    config.validate()
    model = BertForPreTraining(config, dtype=np.float32, seed=seed, device=device)
    on_stage(f"model: BertForPreTraining, preset {r['preset']!r} (L={config.num_hidden_layers} "
             f"H={config.hidden_size} A={config.num_attention_heads} V={config.vocab_size}), "
             f"{model.num_parameters():,} parameters, device {device}")
    trainer = Trainer(model, train_data, eval_data, out_dir, tc, "pretraining",
                      save_extra=tokenizer.save_pretrained, batch_transform=transform,
                      monitor=monitor)
    try:
        return trainer.train(resume=resume, stop_at=stop_at, on_step=on_step,
                             on_eval=on_eval), r
    finally:
        if monitor is not None:                   # its picture, even when the run stops early
            monitor.close()


def _pretrain_configs(r, seed, device, save_every, eval_every):
    """The model's configuration (vocabulary size still to come) and the run's, from the
    resolved recipe ``r``; checked before any data is read."""
    _check_common(r["preset"], r["seq_len"], r["batch_size"], device)
    config = BertConfig.preset(r["preset"], hidden_dropout_prob=float(r["dropout"]),
                               attention_probs_dropout_prob=float(r["dropout"]))
    _check_seq_len(r["seq_len"], config, f"preset {r['preset']!r}")
    steps = r["steps"]
    tc = TrainConfig(steps=steps, batch_size=r["batch_size"], lr=r["lr"],
                     warmup_steps=r["warmup_steps"], seed=seed, optimizer=r["optimizer"],
                     save_every=save_every or max(1, steps // 4),
                     eval_every=eval_every or max(1, steps // 10)).validate()
    return config, tc


def _read_documents(corpus, on_stage):
    """The corpus's documents (lists of sentences): a file or directory, or the docstrings
    of the standard library."""
    from . import corpora
    on_stage("reading the corpus " + (repr(corpus) if corpus else
                                      "(docstrings of the Python standard library)"))
    documents = corpora.read_corpus(corpus) if corpus else corpora.stdlib_documents()
    n_sent = sum(len(d) for d in documents)
    on_stage(f"  {len(documents):,} documents, {n_sent:,} sentences")
    return documents


def _internals_monitor(log_internals, out_dir):
    """The ``--log-internals`` monitor (checked now, before any data is built), on rank 0
    only, which writes; None when not asked for."""
    from .distributed import world
    if log_internals is None:
        return None
    monitor = InternalsMonitor(log_internals, out_dir)
    return monitor if world().is_root else None


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
    from .distributed import world
    comm = world()
    vocab = os.path.join(out_dir, "vocab.txt")
    if comm.is_root:                             # with several MPI ranks, rank 0 writes it
        on_stage(f"training a WordPiece vocabulary of {vocab_size:,} tokens")
        tokens = train_wordpiece_vocab((s for d in documents for s in d), vocab_size)
        os.makedirs(out_dir, exist_ok=True)
        write_vocab(tokens, vocab)
    comm.barrier()                               # ... and the others read it
    tokenizer = BertTokenizer(vocab)
    on_stage(f"  {len(tokenizer):,} tokens written to {vocab}")
    return tokenizer


def _pretraining_arrays(documents, tokenizer, r, seed, on_stage):
    """Training arrays, held-out arrays (None when the held-out documents give no instance)
    from disjoint documents, and the batch transform (dynamic masking) or None.

    Held-out masks are drawn once, so every evaluation scores the same positions, and always
    with BERT's 15% (``EVAL_MASKED_LM_PROB``) whatever the training rate: a run trained with
    more masking is not scored on a harder task, so accuracies compare across recipes."""
    from functools import partial

    from . import pretraining_data as pdata
    train_docs, held_docs = _split_documents(documents)
    S, P, nsp = r["seq_len"], r["max_predictions_per_seq"], r["nsp"]
    on_stage(f"making pretraining instances (max_seq_length {S}, masked_lm_prob "
             f"{r['masked_lm_prob']}, at most {P} predictions, "
             + ("NSP pairs" if nsp else "single segments, no NSP")
             + (", masks drawn every step" if r["masking"] == "dynamic"
                else f", static masks, dupe_factor {r['dupe_factor']}") + ")")
    make = dict(max_seq_length=S, max_predictions_per_seq=P,
                masked_lm_prob=r["masked_lm_prob"], next_sentence_prediction=nsp)
    arr = dict(max_seq_length=S, max_predictions_per_seq=P)
    inst = pdata.create_pretraining_instances(train_docs, tokenizer, dupe_factor=r["dupe_factor"],
                                              seed=seed, **make)
    train_data = pdata.instances_to_arrays(inst, tokenizer, **arr)
    eval_data = None
    if held_docs:
        P_eval = max(1, round(EVAL_MASKED_LM_PROB * S))
        try:
            held = pdata.create_pretraining_instances(
                held_docs, tokenizer, seed=seed + 1, max_seq_length=S, max_predictions_per_seq=P_eval,
                masked_lm_prob=EVAL_MASKED_LM_PROB, next_sentence_prediction=nsp)
            eval_data = pdata.instances_to_arrays(held, tokenizer, max_seq_length=S,
                                                  max_predictions_per_seq=P_eval)
        except ValueError as e:                  # e.g. every held-out document is one sentence
            on_stage(f"  no held-out evaluation: {e}")
    if not nsp:
        del train_data["next_sentence_labels"]
        if eval_data is not None:
            del eval_data["next_sentence_labels"]
    transform = None
    if r["masking"] == "dynamic":
        train_data = pdata.unmask_arrays(train_data)
        words = pdata.replacement_vocab(tokenizer)
        transform = partial(_dynamic_masks, seed=seed, masked_lm_prob=r["masked_lm_prob"],
                            max_predictions_per_seq=P, mask_token_id=tokenizer.mask_token_id,
                            special_ids=tuple(int(i) for i in tokenizer.all_special_ids),
                            replacement_ids=np.asarray(tokenizer.convert_tokens_to_ids(words)))
    on_stage(f"  {len(inst):,} training instances, "
             f"{0 if eval_data is None else len(eval_data['input_ids']):,} held-out")
    return train_data, eval_data, transform


def _dynamic_masks(batch, step, *, seed, **kw):
    """The masks of training step ``step``: a pure function of (seed, step) and the rows."""
    from .pretraining_data import mask_batch
    return mask_batch(batch, np.random.default_rng([seed, step, 0x6D61736B]), **kw)


# --------------------------------------------------------------------------- fine-tuning
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
