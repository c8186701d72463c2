"""The ``minibert inspect`` pipeline: one text through a checkpoint, everything the analyses
show about it computed and written to a directory.

    load_for_inspection  (model, tokenizer, kind) of a minibert run or a Hugging Face BERT
                         directory, the head chosen from the tensor names
    inspect_checkpoint   attention maps and head statistics, head importance, integrated
                         gradients and gradient x input per [MASK] (or the predicted class),
                         the logit lens per [MASK]; PNG and JSON files plus the report

Each step of ``inspect_checkpoint`` is a function here, in the order it runs.
"""
from __future__ import annotations

import json
import os

import numpy as np

from ..backend import to_numpy
from ..checkpoint import has_pooler, resolve_checkpoint, tensor_names
from ..config import BertConfig
from ..heads import BertForMaskedLM, BertForSequenceClassification
from ..io import atomic_directory, atomic_write_text
from ..model import BertModel
from ..tokenization import BertTokenizer
from ._common import _mlm_logits
from .attention import attention_maps, attention_rollout, head_stats
from .attribution import gradient_x_input, integrated_gradients
from .importance import head_importance
from .lens import logit_lens
from .plots import plot_attention_grid, plot_attention_layer, plot_attributions, plot_head_heatmap


def load_for_inspection(path, dtype=np.float32):
    """``(model, tokenizer, kind)`` for a minibert run directory (its latest checkpoint) or
    any Hugging Face BERT directory (config.json, vocab.txt, model.safetensors or
    pytorch_model.bin). ``kind`` is "mlm" when the checkpoint has a masked-LM head (loaded as
    BertForMaskedLM, from a BertForPreTraining checkpoint too), "classification" with a
    sequence classifier, else "encoder" (BertModel: attention only). The tensor names decide,
    read before any tensor."""
    model_dir = resolve_checkpoint(path)
    if not os.path.isfile(os.path.join(model_dir, "vocab.txt")):
        raise ValueError(f"checkpoint {model_dir!r} has no vocab.txt, expected the tokenizer "
                         "next to the model")
    tokenizer = BertTokenizer.from_pretrained(model_dir)
    names = tensor_names(model_dir)
    short = {n[len("bert."):] if n.startswith("bert.") else n for n in names}
    if any(n.startswith("cls.predictions.") for n in short):
        kind, model = "mlm", BertForMaskedLM.from_pretrained(model_dir, dtype=dtype)
    elif "classifier.weight" in short:
        config = BertConfig.from_json_file(os.path.join(model_dir, "config.json"))
        kind = "classification"
        model = BertForSequenceClassification.from_pretrained(
            model_dir, dtype=dtype, num_labels=config.num_labels, new_head=not has_pooler(names))
    else:
        kind, model = "encoder", BertModel.from_pretrained(
            model_dir, dtype=dtype, add_pooling_layer=has_pooler(names))
    if len(tokenizer) > model.config.vocab_size:
        raise ValueError(f"checkpoint {model_dir!r}: vocab.txt has {len(tokenizer)} tokens but "
                         f"the model only {model.config.vocab_size}")
    return model, tokenizer, kind


def _mlm_rows(tokenizer, ids, tt, max_rows=64):
    """The text as a masked-LM batch: one row per ordinary token, that token masked and its
    id the label (at most ``max_rows`` rows, evenly spread)."""
    special = {tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id,
               tokenizer.mask_token_id}
    cand = [i for i, t in enumerate(ids) if int(t) not in special]
    if len(cand) > max_rows:
        cand = [cand[int(k)] for k in np.linspace(0, len(cand) - 1, max_rows).round()]
    if not cand:
        return None
    rows = np.repeat(ids[None], len(cand), 0)
    rows[np.arange(len(cand)), cand] = tokenizer.mask_token_id
    return dict(input_ids=rows, token_type_ids=np.repeat(tt[None], len(cand), 0),
                masked_lm_positions=np.array(cand)[:, None],
                masked_lm_ids=ids[np.array(cand)][:, None])


def _chunks(batch, size=8):
    n = len(batch["input_ids"])
    return [{k: v[i:i + size] for k, v in batch.items()} for i in range(0, n, size)]


def _data_batch(path, tokenizer, model, kind, max_lines=32, seq_len=128, seed=0):
    """A held-out batch from a text file (one text per line): 15% of the ordinary tokens
    masked (masked-LM), or the predicted classes as labels (classification)."""
    if not os.path.isfile(path):
        raise ValueError(f"--data {path!r} does not exist, expected a text file, one text a line")
    with open(path, encoding="utf-8") as fh:
        lines = [l.strip() for l in fh if l.strip()][:max_lines]
    if not lines:
        raise ValueError(f"--data {path!r} has no text")
    enc = tokenizer(lines, truncation=True, max_length=min(seq_len, model.config.max_position_embeddings))
    ids, tt, mask = enc["input_ids"], enc["token_type_ids"], enc["attention_mask"]
    if kind == "classification":
        pred = np.argmax(to_numpy(model(ids, attention_mask=mask, token_type_ids=tt).logits), -1)
        return _chunks(dict(input_ids=ids, token_type_ids=tt, attention_mask=mask, labels=pred))
    rng = np.random.default_rng(seed)
    special = np.isin(ids, [tokenizer.cls_token_id, tokenizer.sep_token_id,
                            tokenizer.pad_token_id, tokenizer.mask_token_id])
    P = max(1, int(round(0.15 * ids.shape[1])))
    pos = np.zeros((len(ids), P), dtype=np.int64)
    w = np.zeros((len(ids), P))
    labels = np.zeros((len(ids), P), dtype=np.int64)
    masked = ids.copy()
    for b in range(len(ids)):
        cand = np.nonzero(~special[b])[0]
        k = min(P, max(1, int(round(0.15 * len(cand))))) if len(cand) else 0
        chosen = np.sort(rng.choice(cand, size=k, replace=False)) if k else []
        pos[b, :k], w[b, :k], labels[b, :k] = chosen, 1.0, ids[b, chosen]
        masked[b, chosen] = tokenizer.mask_token_id
    return _chunks(dict(input_ids=masked, token_type_ids=tt, attention_mask=mask,
                        masked_lm_positions=pos, masked_lm_ids=labels, masked_lm_weights=w))


def _bertviz(tokens, maps):
    """bertviz's input: the tokens and, per layer, (batch=1, heads, S, S) as nested lists (what
    ``bertviz.head_view(attention, tokens)`` takes, after ``torch.tensor``)."""
    return {"tokens": tokens,
            "attention": [np.round(to_numpy(m).astype(np.float64), 4).tolist() for m in maps],
            "format": "bertviz: attention[layer][batch][head][query][key]"}


# ------------------------------------------------------------------ the steps of inspect
def _check_request(text, pair, out_dir):
    """Refuse an empty text or pair, and an output directory that holds files an earlier
    inspect did not write; before anything is loaded."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text={text!r} is empty, expected some text")
    if pair is not None and (not isinstance(pair, str) or not pair.strip()):
        raise ValueError(f"--pair {pair!r} is empty, expected some text")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and \
            not os.path.isfile(os.path.join(out_dir, "report.json")):
        raise ValueError(f"--out {out_dir!r} holds other files, expected a new directory (or one "
                         "an earlier inspect wrote)")


def _encode(tok, cfg, text, pair):
    """``(ids, token_type_ids, attention_mask)`` (1, S) of the text, and its tokens."""
    enc = tok(text, pair, truncation=False)
    ids, tt, mask = enc["input_ids"], enc["token_type_ids"], enc["attention_mask"]
    S = ids.shape[1]
    if S > cfg.max_position_embeddings:
        raise ValueError(f"text has {S} tokens, longer than the model's "
                         f"max_position_embeddings={cfg.max_position_embeddings}")
    return (ids, tt, mask), tok.convert_ids_to_tokens([int(i) for i in ids[0]])


def _importance_batches(model, tok, kind, inputs, data, seed, checkpoint):
    """The batches head importance is measured on: ``data`` when given, else the text as a
    masked-LM batch (each ordinary token masked in turn), or with the classifier's own
    prediction as label; None when there is no loss to take (an encoder alone)."""
    ids, tt, mask = inputs
    if data is not None:
        if kind == "encoder":
            raise ValueError("--data needs a model with a masked-LM or classification head, "
                             f"and {os.fspath(checkpoint)!r} has none")
        return _data_batch(data, tok, model, kind, seed=seed)
    if kind == "mlm":
        b = _mlm_rows(tok, ids[0], tt[0])
        return None if b is None else _chunks(b)
    if kind == "classification":
        pred = np.argmax(to_numpy(model(ids, attention_mask=mask, token_type_ids=tt).logits), -1)
        return [dict(input_ids=ids, token_type_ids=tt, attention_mask=mask, labels=pred)]
    return None


def _lens_table(tok, lens_j, best, L):
    """The logit lens at one [MASK]: per layer (embeddings first) the three most probable
    tokens and the probability of the model's final prediction ``best``."""
    table = []
    for l in range(L + 1):
        z = lens_j[l, :len(tok)].astype(np.float64)
        pr = np.exp(z - z.max())
        pr /= pr.sum()
        top = np.argsort(-pr, kind="stable")[:3]
        table.append(dict(layer=("embeddings" if l == 0 else f"layer {l - 1}"),
                          top=[(tok.convert_ids_to_tokens(int(t)), float(pr[t])) for t in top],
                          p_final=float(pr[best])))
    return table


def _mlm_targets(model, tok, inputs):
    """One target per [MASK]: (position, the model's top token), with its logit lens."""
    ids, tt, mask = inputs
    mpos = [int(p) for p in np.nonzero(ids[0] == tok.mask_token_id)[0]]
    if not mpos:
        return []
    out = model(ids, attention_mask=mask, token_type_ids=tt, masked_lm_positions=np.array([mpos]))
    logits = to_numpy(_mlm_logits(out)[0]).astype(np.float64)[:, :len(tok)]        # (P, V)
    lens = to_numpy(logit_lens(model, ids, np.array([mpos]), mask, tt))[:, 0]      # (L+1, P, V)
    targets = []
    for j, p in enumerate(mpos):
        best = int(np.argmax(logits[j]))
        targets.append(dict(position=p, target=(p, best),
                            label=f"[MASK] at {p} -> {tok.convert_ids_to_tokens(best)}",
                            logit_lens=_lens_table(tok, lens[:, j], best,
                                                   model.config.num_hidden_layers)))
    return targets


def _class_target(model, inputs):
    """The one target of a classifier: the class it predicts."""
    ids, tt, mask = inputs
    best = int(np.argmax(to_numpy(model(ids, attention_mask=mask, token_type_ids=tt).logits[0])))
    return [dict(position=None, target=best, label=f"class {best}")]


def _attribute(model, tok, inputs, targets, steps, on_stage):
    """Integrated gradients (baseline [CLS] [PAD] ... [PAD] [SEP]) and gradient x input for
    each target, as the report's entries."""
    ids, tt, mask = inputs
    baseline = np.where(np.isin(ids, [tok.cls_token_id, tok.sep_token_id]), ids, tok.pad_token_id)
    rows = []
    for t in targets:
        on_stage(f"integrated gradients for {t['label']} ({steps} steps)")
        ig = integrated_gradients(model, ids, t["target"], steps=steps, baseline=baseline,
                                  attention_mask=mask, token_type_ids=tt)
        gx = gradient_x_input(model, ids, t["target"], attention_mask=mask, token_type_ids=tt)
        moved = ig.f_input[0] != ig.f_baseline[0]
        rows.append(dict(
            label=t["label"], position=t["position"],
            integrated_gradients=np.round(ig.scores[0], 6).tolist(),
            gradient_x_input=np.round(gx.scores[0], 6).tolist(),
            f_input=float(ig.f_input[0]), f_baseline=float(ig.f_baseline[0]),
            delta=float(ig.delta[0]),
            relative_delta=float(ig.relative_delta[0]) if moved else None,
            logit_lens=t.get("logit_lens")))
    return rows


def _write_json(path, value, indent=None):
    atomic_write_text(path, json.dumps(value, indent=indent) + "\n")


def _write_files(tmp, report, maps, importance):
    """Every picture and JSON file of the report into the directory ``tmp``."""
    tokens, kind = report["tokens"], report["kind"]
    m = to_numpy(maps)[:, 0]                                                      # (L, A, S, S)
    plot_attention_grid(m, os.path.join(tmp, "attention_grid.png"), tokens)
    for l in range(len(m)):
        plot_attention_layer(m[l], os.path.join(tmp, f"attention_layer_{l}.png"), tokens, l)
    _write_json(os.path.join(tmp, "head_stats.json"), report["head_stats"], indent=1)
    if importance is not None:
        plot_head_heatmap(np.abs(importance), os.path.join(tmp, "head_importance.png"),
                          "head importance |dLoss/d head_mask| (Michel et al. 2019)")
        _write_json(os.path.join(tmp, "head_importance.json"), report["head_importance"])
    if report["targets"]:
        plot_attributions(tokens, [(f"integrated gradients: {t['label']} "
                                    f"(sum - difference: {t['delta']:.1e})",
                                    t["integrated_gradients"]) for t in report["targets"]],
                          os.path.join(tmp, "attributions.png"))
        _write_json(os.path.join(tmp, "attributions.json"), report["targets"], indent=1)
        if kind == "mlm":
            _write_json(os.path.join(tmp, "logit_lens.json"),
                        [dict(label=t["label"], table=t["logit_lens"]) for t in report["targets"]],
                        indent=1)
    _write_json(os.path.join(tmp, "attention.json"), _bertviz(tokens, [to_numpy(x) for x in maps]))
    _write_json(os.path.join(tmp, "report.json"), report, indent=1)


def inspect_checkpoint(checkpoint, text, pair=None, out_dir="runs/inspect", data=None,
                       steps=50, seed=0, on_stage=lambda msg: None) -> dict:
    """Everything ``minibert inspect`` shows about one text, computed and written to
    ``out_dir`` (built in a temporary directory and moved into place: bad input writes
    nothing). Returns the report the command prints (JSON-ready).

    Files: attention_grid.png (every layer and head), attention_layer_<l>.png,
    head_stats.json, head_importance.png/.json, attributions.png/.json, logit_lens.json,
    attention.json (bertviz), report.json.
    """
    out_dir = os.fspath(out_dir)
    _check_request(text, pair, out_dir)
    model, tok, kind = load_for_inspection(checkpoint)
    inputs, tokens = _encode(tok, model.config, text, pair)
    ids, tt, mask = inputs
    L, A = model.config.num_hidden_layers, model.config.num_attention_heads
    report = dict(checkpoint=os.fspath(checkpoint), kind=kind, model=type(model).__name__,
                  tokens=tokens, layers=L, heads=A)
    on_stage(f"{type(model).__name__} ({kind}), L={L} A={A}, {len(tokens)} tokens")

    maps = attention_maps(model, ids, mask, tt)                                   # (L, 1, A, S, S)
    report["head_stats"] = {k: np.round(v, 5).tolist()
                            for k, v in head_stats(maps, ids, mask, tok).items()}
    report["rollout_from_cls"] = np.round(attention_rollout(maps, mask)[0, 0], 5).tolist()

    batches = _importance_batches(model, tok, kind, inputs, data, seed, checkpoint)
    importance = None
    if batches:
        on_stage(f"head importance on {sum(len(b['input_ids']) for b in batches)} sequences")
        importance = head_importance(model, batches)
        report["head_importance"] = np.round(importance, 6).tolist()

    targets = _mlm_targets(model, tok, inputs) if kind == "mlm" else \
        _class_target(model, inputs) if kind == "classification" else []
    report["targets"] = _attribute(model, tok, inputs, targets, steps, on_stage)

    on_stage(f"writing {out_dir}")
    os.makedirs(os.path.dirname(os.path.abspath(out_dir)), exist_ok=True)
    with atomic_directory(out_dir) as tmp:
        _write_files(tmp, report, maps, importance)
        report["files"] = sorted(os.listdir(tmp))
    report["out_dir"] = out_dir
    return report
