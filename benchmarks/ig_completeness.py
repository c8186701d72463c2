"""|delta| / |f_input - f_baseline| of integrated gradients at 50 steps on a checkpoint."""
import sys, numpy as np
sys.path.insert(0, "/work/wt/i14")
from minibert import internals as I
model, tok, kind = I.load_for_inspection(sys.argv[1])
texts = ["return the [MASK] of the list sorted by key .", "the capital of france is [MASK] .",
         "open the file and [MASK] its contents .", "if the value is none , raise a [MASK] ."]
for text in texts:
    enc = tok(text)
    ids = enc["input_ids"]
    pos = int(np.nonzero(ids[0] == tok.mask_token_id)[0][0])
    logits = I._mlm_logits(model(ids, masked_lm_positions=np.array([[pos]])))[0, 0, :len(tok)]
    best = int(np.argmax(logits))
    base = np.where(np.isin(ids, [tok.cls_token_id, tok.sep_token_id]), ids, tok.pad_token_id)
    row = [text, tok.convert_ids_to_tokens(best)]
    for method in ("gauss-legendre", "trapezoid"):
        r = I.integrated_gradients(model, ids, (pos, best), steps=50, method=method, baseline=base)
        row.append(f"{method}: F(x)-F(b)={float(r.f_input[0] - r.f_baseline[0]):.4f} delta={float(r.delta[0]):.2e} rel={float(r.relative_delta[0]):.2e}")
    print(" | ".join(row))
