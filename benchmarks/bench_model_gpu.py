"""Benchmark of a BERT pretraining step on one GPU: minibert on CuPy (the readable ops,
cuBLAS products, the Numba CUDA attention, dropout and embedding-backward kernels) against Hugging Face's
``BertForPreTraining`` in torch eager on the same GPU, float32, TF32 off, in the same run.

    python benchmarks/bench_model_gpu.py [--preset base] [--repeat R] [--quick] [--out FILE]

Needs a CUDA GPU, CuPy, numba-cuda, torch built for CUDA and transformers. The step is
``bench_model.py``'s: B = 8, S = 128 (two segments, every token real), 20 masked positions
per sequence, dropout 0.1, forward with the masked-LM and next-sentence losses, backward,
AdamW (minibert's over its flat buffer, ``torch.optim.AdamW`` for Hugging Face). Hugging
Face's model predicts all S positions; its "masked-only" variant applies the prediction
head to the 20 masked positions, the work minibert does.

What it does, in order:

1. Pins TF32 off (``CUPY_TF32=0`` before CuPy is imported; torch's matmul and cuDNN flags).
2. Checks that the two compute the same function: Hugging Face's weights loaded into
   minibert, dropout off, the masked-only loss and the word-embedding gradient agree to
   ``CHECK_RTOL`` (float32 through 12 layers). Stops otherwise.
3. Times the steps with CUDA events, a few untimed steps first (Numba compiles the kernel
   on the first), the models interleaved round by round; reports the median.
4. Prints the table and writes ``benchmarks/results/bench_model_gpu.json`` (or ``--out``)
   with the device, driver, CuPy, Numba, numba-cuda, torch and transformers versions.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("CUPY_TF32", "0")           # before CuPy is imported

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

B, S, MASKED, LR = 8, 128, 20, 1e-4
CHECK_RTOL = 2e-4


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="base")
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="preset tiny, 3 rounds")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_model_gpu.json"))
    return p.parse_args(argv)


def make_batch(config, seed=0):
    """Token ids, two segments, every token real, 20 sorted masked positions per row."""
    import numpy as np
    r = np.random.default_rng(seed)
    token_types = np.zeros((B, S), np.int64)
    token_types[:, S // 2:] = 1
    positions = np.sort(np.stack([r.choice(np.arange(1, S), MASKED, replace=False)
                                  for _ in range(B)]), axis=1)                     # (B, 20)
    return dict(ids=r.integers(0, config.vocab_size, (B, S)), token_types=token_types,
                mask=np.ones((B, S), np.int64), positions=positions,
                labels=r.integers(0, config.vocab_size, (B, MASKED)), nsp=r.integers(0, 2, B))


def hf_model(config):
    import torch
    import transformers
    torch.manual_seed(0)
    hf = transformers.BertConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_position_embeddings,
        type_vocab_size=config.type_vocab_size, hidden_act=config.hidden_act,
        hidden_dropout_prob=config.hidden_dropout_prob,
        attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        layer_norm_eps=config.layer_norm_eps)
    return transformers.BertForPreTraining(hf).cuda().train()


def hf_masked_only_loss(model, t):
    import torch
    rows = torch.arange(t["ids"].shape[0], device="cuda")[:, None]
    seq, pooled = model.bert(input_ids=t["ids"], attention_mask=t["mask"],
                             token_type_ids=t["token_types"], return_dict=False)[:2]
    mlm, nsp = model.cls(seq[rows, t["positions"]], pooled)              # (B, 20, V), (B, 2)
    return (torch.nn.functional.cross_entropy(mlm.reshape(-1, mlm.shape[-1]),
                                              t["labels"].reshape(-1))
            + torch.nn.functional.cross_entropy(nsp, t["nsp"]))


def minibert_step(model, opt, g):
    def step():
        out, cache = model.forward(g["ids"], attention_mask=g["mask"],
                                   token_type_ids=g["token_types"],
                                   masked_lm_positions=g["positions"], masked_lm_ids=g["labels"],
                                   next_sentence_labels=g["nsp"], training=True)
        model.backward(cache)
        opt.step()
        return out.loss
    return step


def hf_steps(model, t):
    import torch
    labels = torch.full((B, S), -100, dtype=torch.long, device="cuda")
    labels[torch.arange(B, device="cuda")[:, None], t["positions"]] = t["labels"]
    opt = torch.optim.AdamW(model.parameters(), lr=LR)

    def full():
        opt.zero_grad(set_to_none=True)
        out = model(input_ids=t["ids"], attention_mask=t["mask"], token_type_ids=t["token_types"],
                    labels=labels, next_sentence_label=t["nsp"])
        out.loss.backward()
        opt.step()
        return out.loss

    def masked_only():
        opt.zero_grad(set_to_none=True)
        loss = hf_masked_only_loss(model, t)
        loss.backward()
        opt.step()
        return loss
    return {"hf BertForPreTraining": full, "hf masked-only": masked_only}


def check_same_function(config, batch, g, t):
    """Hugging Face's weights in minibert, dropout off: loss and one gradient agree."""
    import numpy as np

    from minibert import BertForPreTraining
    from minibert.backend import to_numpy
    hf = hf_model(config).eval()
    model = BertForPreTraining(config, device="gpu")
    state = {k: v.detach().cpu().numpy() for k, v in hf.state_dict().items()}
    model.load_state_dict({k: state[k] for k in model.params}, strict=True)
    loss = hf_masked_only_loss(hf, t)
    loss.backward()
    out, cache = model.forward(g["ids"], attention_mask=g["mask"], token_type_ids=g["token_types"],
                               masked_lm_positions=g["positions"], masked_lm_ids=g["labels"],
                               next_sentence_labels=g["nsp"])
    grads = model.backward(cache)
    name = "bert.embeddings.word_embeddings.weight"
    g_hf = hf.bert.embeddings.word_embeddings.weight.grad.cpu().numpy()
    g_mb = to_numpy(grads[name])
    errs = {"loss": abs(float(out.loss) - loss.item()) / abs(loss.item()),
            "grad " + name: float(np.linalg.norm(g_mb - g_hf) / np.linalg.norm(g_hf))}
    bad = {k: v for k, v in errs.items() if not v <= CHECK_RTOL}
    if bad:
        raise SystemExit(f"minibert and Hugging Face disagree beyond {CHECK_RTOL}: {bad}")
    return errs


def main(argv=None):
    args = parse_args(argv)
    import cupy as cp
    import torch
    import transformers
    from bench_attention_gpu import time_interleaved, versions

    from minibert import BertConfig, BertForPreTraining
    from minibert.optim import AdamW
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    preset, repeat = ("tiny", 3) if args.quick else (args.preset, args.repeat)
    config = BertConfig.preset(preset)
    batch = make_batch(config)
    g = {k: cp.asarray(v) for k, v in batch.items()}
    t = {k: torch.as_tensor(v, device="cuda") for k, v in batch.items()}
    errs = check_same_function(config, batch, g, t)
    model = BertForPreTraining(config, device="gpu")
    fns = {"minibert (CuPy + Numba CUDA)": minibert_step(model, AdamW(model.store, lr=LR), g)}
    fns.update(hf_steps(hf_model(config), t))
    ms = time_interleaved(fns, repeat)
    mine = ms["minibert (CuPy + Numba CUDA)"]
    info = versions()
    info["transformers"] = transformers.__version__
    results = {"command": " ".join([sys.executable] + sys.argv), "versions": info,
               "preset": preset, "batch": {"B": B, "S": S, "masked": MASKED, "dropout": 0.1},
               "dtype": "float32", "tf32": False, "check_rel_err": errs,
               "step_ms": {n: {"ms": v, "minibert_speedup": v / mine} for n, v in ms.items()}}
    print(f"{info['device']}: BERT-{preset} pretraining step, B={B} S={S}, float32, TF32 off")
    for name, v in ms.items():
        print(f"  {name:<30} {v:9.2f} ms   minibert is {v / mine:5.2f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
