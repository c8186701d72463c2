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

import common  # noqa: E402

B, S, MASKED, LR = common.B, common.S, common.MASKED, common.LR     # bench_model.py's step

CHECK_RTOL = 2e-4                                  # tighter than common's CPU default


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="base")
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="preset tiny, 3 rounds")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_model_gpu.json"))
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import cupy as cp
    import torch
    import transformers
    from bench_attention_gpu import versions

    from minibert import BertConfig, BertForPreTraining
    from minibert.optim import AdamW
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    preset, repeat = ("tiny", 3) if args.quick else (args.preset, args.repeat)
    config = BertConfig.preset(preset)
    batch = common.make_batch(config)
    errs = common.check_pretraining(config, batch, attn=None, device="gpu", rtol=CHECK_RTOL)
    model = BertForPreTraining(config, device="gpu")
    mine = "minibert (CuPy + Numba CUDA)"
    g = {k: cp.asarray(v) for k, v in batch.items()}
    hf = common.hf_train_fns(common.hf_pretrain(config, device="cuda"), batch, lr=LR)
    fns = {mine: common.minibert_pretrain_step(model, AdamW(model.store, lr=LR), g),
           "hf BertForPreTraining": hf["train"], "hf masked-only": hf["train masked-only"]}
    ms = common.time_interleaved(fns, repeat, cuda=True)     # no CuPy args: say CUDA events
    info = versions()
    info["transformers"] = transformers.__version__
    results = {"command": " ".join([sys.executable] + sys.argv), "versions": info,
               "preset": preset, "batch": {"B": B, "S": S, "masked": MASKED, "dropout": 0.1},
               "dtype": "float32", "tf32": False, "check_rel_err": errs,
               "step_ms": {n: {"ms": v, "minibert_speedup": v / ms[mine]} for n, v in ms.items()}}
    print(f"{info['device']}: BERT-{preset} pretraining step, B={B} S={S}, float32, TF32 off")
    for name, v in ms.items():
        print(f"  {name:<30} {v:9.2f} ms   minibert is {v / ms[mine]:5.2f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
