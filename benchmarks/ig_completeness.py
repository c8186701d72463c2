"""How complete integrated gradients are on a checkpoint: for a few texts with one [MASK],
the model's top prediction there is the target, the baseline keeps [CLS] and [SEP] and puts
[PAD] everywhere else, and the script prints F(x) - F(baseline), delta = sum(scores) -
(F(x) - F(baseline)) and |delta| / |F(x) - F(baseline)| at ``--steps`` points for the
Gauss-Legendre and the trapezoid rules (the model in float32, as it is loaded).

    python benchmarks/ig_completeness.py CHECKPOINT [--steps 50]

CHECKPOINT: a minibert run directory or a Hugging Face BERT directory with a masked-LM head.
"""
import argparse

import numpy as np

from minibert import internals

TEXTS = ["return the [MASK] of the list sorted by key .", "the capital of france is [MASK] .",
         "open the file and [MASK] its contents .", "if the value is none , raise a [MASK] ."]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    model, tok, kind = internals.load_for_inspection(args.checkpoint)
    if kind != "mlm":
        raise SystemExit(f"{args.checkpoint} has no masked-LM head")
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        pos = int(np.nonzero(ids[0] == tok.mask_token_id)[0][0])
        out = model(ids, masked_lm_positions=np.array([[pos]]))
        logits = out.logits[0, 0, :len(tok)]                  # BertForMaskedLM
        best = int(np.argmax(logits))
        base = np.where(np.isin(ids, [tok.cls_token_id, tok.sep_token_id]), ids, tok.pad_token_id)
        row = [f"{text!r} -> {tok.convert_ids_to_tokens(best)!r}"]
        for method in ("gauss-legendre", "trapezoid"):
            r = internals.integrated_gradients(model, ids, (pos, best), steps=args.steps,
                                               method=method, baseline=base)
            diff = float(r.f_input[0] - r.f_baseline[0])
            row.append(f"{method}: F(x)-F(b) {diff:.4f}, delta {float(r.delta[0]):.2e}, "
                       f"|delta|/|F(x)-F(b)| {float(r.relative_delta[0]):.2e}")
        print(" | ".join(row))


if __name__ == "__main__":
    main()
