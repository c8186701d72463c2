"""Write tests/reference/bert_debug_state.npz: one forward and backward of Hugging Face's
BertForPreTraining in float64, the "debug state" that tests/test_reference.py compares
minibert against, tensor by tensor.

Regenerate with (needs torch and transformers, which minibert itself never imports)::

    python tests/reference/generate.py

The run is deterministic: a fixed torch seed draws the weights and the inputs, the model is
in float64 and in eval mode (no dropout). It prints one summary line.

The model
---------
A tiny BERT (vocab 99, H=32, L=2, A=4, I=37, 64 positions, 2 segment types, exact-erf
"gelu", LayerNorm eps 1e-12, "eager" attention). Hugging Face initializes with a normal of
std 0.02; every parameter is then redrawn so that nothing is trivially zero or one:
LayerNorm weights 1 + 0.1 N(0,1), biases 0.1 N(0,1), every other tensor 0.2 N(0,1). With
std-0.02 weights, zero biases and unit LayerNorm gains a wrong bias gradient, a swapped
LayerNorm gain/bias or a transposed weight could hide behind near-zero numbers.

The batch
---------
B=3 sequences of S=11 positions with real lengths 11, 7, 4 (padding id 0 after them),
P=3 masked-LM prediction slots per sequence; the shortest sequence has only 2 real slots and
one padded slot (position 0, id 0, weight 0), as original BERT pads its prediction lists.

The loss is Hugging Face's: MLM cross-entropy averaged over the labelled tokens + NSP
cross-entropy averaged over the batch. Hugging Face takes MLM labels as a (B, S) tensor of
-100 (ignored) with labels[b, pos] = id for each real slot; with 0/1 weights its mean equals
minibert's weighted mean sum(w * loss) / sum(w) over the (B, P) slots.

Keys of the .npz (B=3, S=11, H=32, A=4, V=99, L=2, P=3)
-------------------------------------------------------
config_json             str: the config as JSON in Hugging Face field names
input_ids               (B, S) int64, real ids in [1, 99), 0 on padding
token_type_ids          (B, S) int64, 0 for segment A, 1 for segment B, 0 on padding
attention_mask          (B, S) int64, 1 = real token, 0 = padding
masked_lm_positions     (B, P) int64, positions of the predicted tokens
masked_lm_ids           (B, P) int64, their labels
masked_lm_weights       (B, P) float64, 1.0 real slot, 0.0 padded slot
next_sentence_labels    (B,)   int64, 0 = IsNext, 1 = NotNext
embedding_output        (B, S, H) output of the embeddings (LayerNorm applied) = hidden_states.0
hidden_states.{i}       (B, S, H) for i = 0..L: [0] embeddings, [i] output of layer i-1
attentions.{i}          (B, A, S, S) softmax probabilities of layer i, i = 0..L-1
last_hidden_state       (B, S, H) = hidden_states.L
pooler_output           (B, H) tanh(dense(last_hidden_state[:, 0]))
mlm_logits              (B, P, V) decoder scores GATHERED at masked_lm_positions (minibert,
                        like original BERT, evaluates the decoder only there)
nsp_logits              (B, 2)
loss                    () total loss = mlm_loss + nsp_loss (Hugging Face's own loss)
mlm_loss, nsp_loss      () recomputed here from the logits with torch cross_entropy
param.<name>            every tensor of model.state_dict() in Hugging Face names, except the
                        tied duplicates cls.predictions.decoder.weight (= the word embeddings)
                        and cls.predictions.decoder.bias (= cls.predictions.bias) and the
                        position_ids / token_type_ids buffers
grad.<name>             d loss / d param for the same names (from named_parameters(); the
                        word-embedding gradient includes the tied decoder's contribution).
                        The key biases' gradients are zero in exact arithmetic (softmax is
                        shift-invariant along each query row, and q . b_k shifts the whole row),
                        so they hold only rounding noise of ~1e-17.

The training trajectory (keys "train.*", T=10 steps)
----------------------------------------------------
After the debug state above, the same model (the perturbed weights param.<name>, float64,
eval mode: no dropout) is trained for T steps with torch.optim.AdamW (foreach=False, the
single-tensor implementation) and transformers.get_linear_schedule_with_warmup: warmup 3
steps, linear decay to 0 at step T, peak lr 1e-3, betas (0.9, 0.999), eps 1e-6, weight decay
0.01 in one parameter group and 0 in a second one holding the biases and LayerNorm gains
(names containing "bias" or "LayerNorm.weight", as BERT). Step k (0-based) evaluates the
loss on batch k, back-propagates it and updates the parameters with rate lr[k]; note that
lr[0] = 0 (the schedule starts at 0), so the first step only fills the moments. Each step
has its own batch, drawn as the one above (same lengths and layout) from a second
torch.Generator seeded with TRAIN_SEED, so the draws above are unchanged.

train.hparams_json      str: the optimizer and schedule settings above as JSON
train.lr                (T,) float64, the rate of each step: peak lr * schedule multiplier
train.<input key>       (T, ...) the batch of each step, for every key of the batch above
                        (input_ids, token_type_ids, attention_mask, masked_lm_positions,
                        masked_lm_ids, masked_lm_weights, next_sentence_labels)
train.loss, train.mlm_loss, train.nsp_loss
                        (T,) float64, the loss of step k on batch k before its update
train.param.<name>      the parameters after the T updates, same names as param.<name>
"""
import json
import os

import numpy as np
import torch
import transformers

SEED = 0
B, S, P = 3, 11, 3
LENGTHS = (11, 7, 4)
CONFIG = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=37, max_position_embeddings=64, type_vocab_size=2,
              hidden_act="gelu", layer_norm_eps=1e-12)
TIED = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bert_debug_state.npz")
INPUT_KEYS = ("input_ids", "token_type_ids", "attention_mask", "masked_lm_positions",
              "masked_lm_ids", "masked_lm_weights", "next_sentence_labels")

# the training trajectory: its own generator, so that the draws above never change
TRAIN_SEED = 1
TRAIN = dict(steps=10, warmup_steps=3, peak_lr=1e-3, betas=[0.9, 0.999], eps=1e-6,
             weight_decay=0.01, no_decay=["bias", "LayerNorm.weight"],
             schedule="transformers.get_linear_schedule_with_warmup",
             optimizer="torch.optim.AdamW(foreach=False)")


def perturb_(model, gen):
    """Redraw every parameter: LayerNorm gains 1 + 0.1 N, biases 0.1 N, the rest 0.2 N."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            z = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            if "LayerNorm" in name and name.endswith(".weight"):
                p.copy_(1.0 + 0.1 * z)
            elif name.endswith("bias"):
                p.copy_(0.1 * z)
            else:
                p.copy_(0.2 * z)


def make_batch(gen, vocab_size):
    """Inputs as numpy arrays (int64 / float64); see the module docstring."""
    input_ids = np.zeros((B, S), np.int64)
    token_type_ids = np.zeros((B, S), np.int64)
    attention_mask = np.zeros((B, S), np.int64)
    positions = np.zeros((B, P), np.int64)
    ids = np.zeros((B, P), np.int64)
    weights = np.zeros((B, P), np.float64)
    for b, n in enumerate(LENGTHS):
        input_ids[b, :n] = torch.randint(1, vocab_size, (n,), generator=gen).numpy()
        attention_mask[b, :n] = 1
        token_type_ids[b, n // 2:n] = 1                    # segment A = [0, n//2), B = [n//2, n)
        n_real = min(P, n - 2)                             # 4 tokens -> 2 real slots + 1 padded
        # distinct positions among 1..n-1 (never [CLS] at 0), sorted as original BERT writes them
        pos = 1 + torch.randperm(n - 1, generator=gen)[:n_real].sort().values.numpy()
        positions[b, :n_real] = pos
        ids[b, :n_real] = torch.randint(1, vocab_size, (n_real,), generator=gen).numpy()
        weights[b, :n_real] = 1.0
    nsp = torch.randint(0, 2, (B,), generator=gen).numpy().astype(np.int64)
    return input_ids, token_type_ids, attention_mask, positions, ids, weights, nsp


def pretraining_loss(model, batch, **kwargs):
    """Hugging Face's forward on a batch (a dict of INPUT_KEYS), and the MLM and NSP losses
    recomputed from its logits: (out, mlm_logits gathered at the slots, mlm_loss, nsp_loss)."""
    positions, ids, weights = (batch[k] for k in ("masked_lm_positions", "masked_lm_ids",
                                                  "masked_lm_weights"))
    labels = np.full((B, S), -100, np.int64)
    for b in range(B):
        for k in range(P):
            if weights[b, k] == 1.0:
                labels[b, positions[b, k]] = ids[b, k]

    t = torch.from_numpy
    out = model(input_ids=t(batch["input_ids"]), token_type_ids=t(batch["token_type_ids"]),
                attention_mask=t(batch["attention_mask"]), labels=t(labels),
                next_sentence_label=t(batch["next_sentence_labels"]), **kwargs)
    # the decoder's scores at the prediction slots only, as minibert computes them
    gather = t(positions)[:, :, None].expand(B, P, CONFIG["vocab_size"])
    mlm_logits = torch.gather(out.prediction_logits, 1, gather)              # (B, P, V)
    per_slot = torch.nn.functional.cross_entropy(mlm_logits.reshape(B * P, -1), t(ids).reshape(-1),
                                                 reduction="none").reshape(B, P)
    w = t(weights)
    mlm_loss = (w * per_slot).sum() / w.sum()
    nsp_loss = torch.nn.functional.cross_entropy(out.seq_relationship_logits,
                                                 t(batch["next_sentence_labels"]))
    assert torch.allclose(mlm_loss + nsp_loss, out.loss, rtol=1e-13, atol=0), (mlm_loss + nsp_loss, out.loss)
    return out, mlm_logits, mlm_loss, nsp_loss


def train_trajectory(model):
    """TRAIN["steps"] AdamW steps of ``model`` (see the module docstring) -> the "train.*"
    arrays. Trains ``model`` in place."""
    gen = torch.Generator().manual_seed(TRAIN_SEED)
    no_decay = tuple(TRAIN["no_decay"])
    named = list(model.named_parameters())       # tied tensors appear once, under one name
    groups = [dict(params=[p for n, p in named if not any(s in n for s in no_decay)],
                   weight_decay=TRAIN["weight_decay"]),
              dict(params=[p for n, p in named if any(s in n for s in no_decay)],
                   weight_decay=0.0)]
    opt = torch.optim.AdamW(groups, lr=TRAIN["peak_lr"], betas=tuple(TRAIN["betas"]),
                            eps=TRAIN["eps"], foreach=False)
    schedule = transformers.get_linear_schedule_with_warmup(
        opt, num_warmup_steps=TRAIN["warmup_steps"], num_training_steps=TRAIN["steps"])
    batches = {k: [] for k in INPUT_KEYS}
    lrs, losses = [], {"loss": [], "mlm_loss": [], "nsp_loss": []}
    for _ in range(TRAIN["steps"]):
        batch = dict(zip(INPUT_KEYS, make_batch(gen, CONFIG["vocab_size"])))
        opt.zero_grad(set_to_none=True)
        out, _, mlm_loss, nsp_loss = pretraining_loss(model, batch)
        out.loss.backward()
        assert len({g["lr"] for g in opt.param_groups}) == 1
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
        for k in INPUT_KEYS:
            batches[k].append(batch[k])
        for k, v in (("loss", out.loss), ("mlm_loss", mlm_loss), ("nsp_loss", nsp_loss)):
            losses[k].append(v.item())

    arrays = {"train.hparams_json": np.array(json.dumps(TRAIN, sort_keys=True)),
              "train.lr": np.array(lrs, np.float64)}
    arrays.update({f"train.{k}": np.stack(v) for k, v in batches.items()})
    arrays.update({f"train.{k}": np.array(v, np.float64) for k, v in losses.items()})
    for n, p in named:
        arrays[f"train.param.{n}"] = p.detach().numpy().astype(np.float64)
    return arrays


def main():
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    hf_config = transformers.BertConfig(**CONFIG, attn_implementation="eager")
    model = transformers.BertForPreTraining(hf_config).double().eval()
    # the decoder must be the word embedding itself (tied), and its bias the head's bias
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert model.cls.predictions.decoder.bias is model.cls.predictions.bias
    perturb_(model, gen)

    batch = dict(zip(INPUT_KEYS, make_batch(gen, CONFIG["vocab_size"])))
    out, mlm_logits, mlm_loss, nsp_loss = pretraining_loss(
        model, batch, output_hidden_states=True, output_attentions=True)
    model.zero_grad()
    out.loss.backward()

    config = json.loads(hf_config.to_json_string())
    config["attn_implementation"] = "eager"        # HF keeps it out of its JSON; minibert reads it
    L = CONFIG["num_hidden_layers"]
    d = lambda x: x.detach().numpy().astype(np.float64)  # noqa: E731  (a copy)
    arrays = dict(
        config_json=np.array(json.dumps(config, sort_keys=True)),
        **batch,
        embedding_output=d(out.hidden_states[0]),
        last_hidden_state=d(out.hidden_states[L]),
        pooler_output=d(model.bert.pooler(out.hidden_states[L])),
        mlm_logits=d(mlm_logits), nsp_logits=d(out.seq_relationship_logits),
        loss=d(out.loss), mlm_loss=d(mlm_loss), nsp_loss=d(nsp_loss),
    )
    assert len(out.hidden_states) == L + 1 and len(out.attentions) == L
    for i, h in enumerate(out.hidden_states):
        arrays[f"hidden_states.{i}"] = d(h)
    for i, a in enumerate(out.attentions):
        arrays[f"attentions.{i}"] = d(a)

    params = dict(model.named_parameters())
    buffers = {n for n, _ in model.named_buffers()}
    names = [n for n in model.state_dict() if n not in TIED and n not in buffers]
    assert set(names) == set(params), set(names) ^ set(params)
    for n in names:
        arrays[f"param.{n}"] = d(params[n])
        arrays[f"grad.{n}"] = d(params[n].grad)

    train = train_trajectory(model)
    assert {k[len("train.param."):] for k in train if k.startswith("train.param.")} == set(names)
    arrays.update(train)

    np.savez(OUT, **arrays)
    print(f"wrote {os.path.relpath(OUT)}: {len(arrays)} arrays, {len(names)} parameters, "
          f"{os.path.getsize(OUT) / 1024:.0f} KiB, loss {out.loss.item():.6f} "
          f"(mlm {mlm_loss.item():.6f}, nsp {nsp_loss.item():.6f}), training loss "
          f"{train['train.loss'][0]:.6f} -> {train['train.loss'][-1]:.6f} in "
          f"{TRAIN['steps']} steps, torch {torch.__version__}, transformers {transformers.__version__}")


if __name__ == "__main__":
    main()
