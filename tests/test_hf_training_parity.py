"""Training parity with Hugging Face: minibert's Trainer and transformers' BertForPreTraining,
started from the same weights, fed the same batches, updated by the same AdamW with the same
schedule and clipping, dropout off, follow the same loss curve.

This rules out a bug anywhere in a training step (forward, the hand-written backward, the
tied decoder's gradient, clipping, the optimizer, the schedule): any wrong term would move
the curves apart from the first steps on.

* float64: the two runs are the same arithmetic up to the order of operations, so they agree
  to ~1e-12 relative after a dozen steps (rounding at 1.1e-16 per operation, amplified a
  little by each Adam step). The test asks 1e-9.
* float32: each run differs from the exact (float64) trajectory by its own rounding, and
  from the other by at most the sum of the two. The test computes both float32 errors
  against the float64 run of transformers and asks that minibert's float32 curve lie within
  ``2 * (its own error + transformers' error) + 4 eps32 |loss|`` of transformers' float32
  curve at every step: "equal to float32 rounding", measured, not assumed.

The Hugging Face side: ``torch.optim.AdamW(foreach=False)`` for the "torch" variant, and for
the "bert" variant (no bias correction, decay added to the update) the same update written
in torch line for line from ``minibert.optim``'s docstring.
"""
import numpy as np
import pytest

from minibert import BertConfig, BertForPreTraining
from minibert.train import TrainConfig, Trainer, batch_indices

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)          # tiny tensors: threads only add overhead on a shared machine

TINY = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0)
NO_DECAY = ("bias", "LayerNorm.weight")
EPS32 = float(np.finfo(np.float32).eps)


def make_data(rng, n=24, S=16, P=3, V=97):
    """Pretraining arrays with padding (the last quarter of every other row) and unique
    masked positions among the real tokens."""
    ids = rng.integers(5, V, size=(n, S))
    mask = np.ones((n, S), dtype=np.int64)
    mask[::2, S - S // 4:] = 0
    tt = (np.arange(S) >= S // 2).astype(np.int64)[None].repeat(n, 0)
    pos = np.sort(np.stack([rng.choice(np.arange(1, S - S // 4), P, replace=False)
                            for _ in range(n)]), axis=1)
    return dict(input_ids=ids, token_type_ids=tt, attention_mask=mask, masked_lm_positions=pos,
                masked_lm_ids=rng.integers(5, V, size=(n, P)),
                masked_lm_weights=np.ones((n, P), dtype=np.float32),
                next_sentence_labels=rng.integers(0, 2, size=n))


def hf_labels(batch):
    """Hugging Face's MLM labels: (B, S), the original token at a masked position, -100 elsewhere."""
    B, S = batch["input_ids"].shape
    labels = np.full((B, S), -100, dtype=np.int64)
    rows = np.arange(B)[:, None].repeat(batch["masked_lm_positions"].shape[1], 1)
    labels[rows, batch["masked_lm_positions"]] = batch["masked_lm_ids"]
    return labels


class BertAdamW:
    """minibert's "bert" variant in torch: m, v without bias correction, wd p added to the
    normalised update, p -= lr u (see minibert/optim.py)."""

    def __init__(self, named, lr, betas=(0.9, 0.999), eps=1e-6, wd=0.01):
        self.named, self.b1, self.b2, self.eps, self.wd = named, *betas, eps, wd
        self.m = {n: torch.zeros_like(p) for n, p in named}
        self.v = {n: torch.zeros_like(p) for n, p in named}

    @torch.no_grad()
    def step(self, lr):
        for n, p in self.named:
            g = p.grad
            self.m[n].mul_(self.b1).add_((1.0 - self.b1) * g)
            self.v[n].mul_(self.b2).add_((1.0 - self.b2) * (g * g))
            u = self.m[n] / (self.v[n].sqrt() + self.eps)
            if not any(s in n for s in NO_DECAY):
                u = u + self.wd * p
            p.sub_(lr * u)


def hf_run(model_dir, data, tc, dtype):
    """transformers' BertForPreTraining trained like minibert's Trainer; the loss per step."""
    hf = transformers.BertForPreTraining.from_pretrained(model_dir, attn_implementation="eager")
    hf = hf.to(dtype).train()
    named = [(n.removeprefix("bert.") if n.startswith("bert.") else n, p)
             for n, p in hf.named_parameters()]          # the tied decoder appears once
    if tc.optimizer == "torch":
        params = [p for _, p in named]
        groups = [dict(params=[p for n, p in named if not any(s in n for s in NO_DECAY)],
                       weight_decay=tc.weight_decay),
                  dict(params=[p for n, p in named if any(s in n for s in NO_DECAY)],
                       weight_decay=0.0)]
        opt = torch.optim.AdamW(groups, lr=tc.lr, eps=tc.adam_eps, foreach=False)
    else:
        params = [p for _, p in named]
        opt = BertAdamW(named, tc.lr, eps=tc.adam_eps, wd=tc.weight_decay)
    warm = tc.warmup
    losses = []
    n = len(data["input_ids"])
    for step in range(tc.steps):
        rows = batch_indices(step, n, tc.batch_size, tc.seed)
        b = {k: v[rows] for k, v in data.items()}
        out = hf(input_ids=torch.tensor(b["input_ids"]),
                 attention_mask=torch.tensor(b["attention_mask"]),
                 token_type_ids=torch.tensor(b["token_type_ids"]),
                 labels=torch.tensor(hf_labels(b)),
                 next_sentence_label=torch.tensor(b["next_sentence_labels"]))
        hf.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, tc.max_grad_norm)
        # Hugging Face's get_linear_schedule_with_warmup, written out (same float operations)
        mult = (float(step) / float(max(1, warm)) if step < warm else
                max(0.0, float(tc.steps - step) / float(max(1, tc.steps - warm))))
        if tc.optimizer == "torch":
            for g in opt.param_groups:
                g["lr"] = tc.lr * mult
            opt.step()
        else:
            opt.step(tc.lr * mult)
        losses.append(float(out.loss.detach()))
    return np.array(losses)


def minibert_run(model_dir, data, tc, dtype, tmp_path):
    model = BertForPreTraining.from_pretrained(model_dir, dtype=dtype)
    trainer = Trainer(model, data, None, str(tmp_path / f"run-{np.dtype(dtype).name}"), tc)
    return np.array([trainer.train_step()["loss"] for _ in range(tc.steps)])


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["bert", "torch"])
def test_loss_curve_matches_transformers(tmp_path, variant):
    torch.manual_seed(0)
    rng = np.random.default_rng(7)
    data = make_data(rng)
    model_dir = tmp_path / "init"
    init = BertForPreTraining(BertConfig(**TINY), dtype=np.float32, seed=3)
    init.save_pretrained(model_dir)
    # lr 1e-2 with a 3-step warmup: large enough steps that a wrong gradient term shows at once
    tc = TrainConfig(steps=12, batch_size=8, lr=1e-2, warmup_steps=3, optimizer=variant,
                     max_grad_norm=1.0, seed=5)

    hf64 = hf_run(model_dir, data, tc, torch.float64)
    mb64 = minibert_run(model_dir, data, tc, np.float64, tmp_path)
    rel64 = np.abs(mb64 - hf64) / np.abs(hf64)
    assert rel64.max() <= 1e-9, (f"float64 loss curves differ: {rel64.max():.2e} at step "
                                 f"{rel64.argmax() + 1}\n{mb64}\n{hf64}")
    assert hf64[-1] < hf64[0] - 0.05, f"the run does not train: {hf64}"

    hf32 = hf_run(model_dir, data, tc, torch.float32)
    mb32 = minibert_run(model_dir, data, tc, np.float32, tmp_path)
    own = np.abs(mb32 - hf64) + np.abs(hf32 - hf64)        # each side's float32 rounding error
    bound = 2.0 * own + 4.0 * EPS32 * np.abs(hf64)
    diff = np.abs(mb32 - hf32)
    worst = int(np.argmax(diff - bound))
    assert np.all(diff <= bound), (f"float32 loss curves differ beyond float32 rounding at step "
                                   f"{worst + 1}: |diff| {diff[worst]:.2e} > bound {bound[worst]:.2e}"
                                   f"\nminibert {mb32}\ntransformers {hf32}")
    assert diff.max() <= 1e-4 * np.abs(hf64).max(), f"float32 curves differ by {diff.max():.2e}"
