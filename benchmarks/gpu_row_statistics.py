"""Why the GPU backward recomputes its row statistics: float32 accuracy of the two ways.

    python benchmarks/gpu_row_statistics.py [--problems 20]

The attention backward needs, per query row, D_i = rowsum(dP * P). FlashAttention-2 takes
D_i = dO_i . O_i and P = exp(s - lse) from the forward's stored O and lse; minibert's
kernels (CPU and GPU) recompute sigma_i = sum_j exp(s_ij - lse_i) and
pi_i = sum_j exp(s_ij - lse_i) dP_ij and use P = exp(s - lse) / sigma, D_i = pi_i / sigma_i.
This script computes dQ and dK both ways in float32 NumPy from a float32 forward's O and lse
(the fused CPU kernel's, stored in float32 as the GPU kernel stores them), on random
problems (B, A, S, D) = (2, 4, 128, 64), and prints each way's RMS error against the
float64 textbook result divided by the float32 textbook op's own RMS error (the ratio the
kernel tests hold to 1.25). It runs on the CPU: the arithmetic, not the device, is the
question.
"""
import argparse

import numpy as np

from minibert.kernels import fused_attention_forward
from minibert.ops import attention, readable_ops


def rms(a, e):
    return float(np.sqrt(np.mean((a.astype(np.float64) - e) ** 2)))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--problems", type=int, default=20)
    args = p.parse_args()
    B, A, S, D = 2, 4, 128, 64
    ratios = {f"{way} {g}": [] for way in ("D from O", "recomputed") for g in ("dq", "dk")}
    for seed in range(args.problems):
        r = np.random.default_rng(seed)
        q, k, v, do = (r.standard_normal((B, A, S, D)) * (2 if i < 2 else 1) for i in range(4))
        q32, k32, v32, do32 = (x.astype(np.float32) for x in (q, k, v, do))
        with readable_ops():
            _, c64 = attention.forward(*(x.astype(np.float64) for x in (q32, k32, v32)))
            dq64, dk64, _ = attention.backward(do32.astype(np.float64), c64)
            _, c32 = attention.forward(q32, k32, v32)
            dq_book, dk_book, _ = attention.backward(do32, c32)
        o32, lse32 = fused_attention_forward(q32, k32, v32, None, None)      # float32 O, lse
        c = np.float32(D ** -0.5)
        P = np.exp((q32 @ k32.swapaxes(-1, -2)) * c - lse32[..., None])      # (B, A, S, S)
        dP = do32 @ v32.swapaxes(-1, -2)
        sigma = P.sum(-1, keepdims=True)
        ways = {"D from O": (P, (do32 * o32).sum(-1, keepdims=True)),
                "recomputed": (P / sigma, (P * dP).sum(-1, keepdims=True) / sigma)}
        for way, (Pn, Di) in ways.items():
            dS = Pn * (dP - Di)
            ratios[f"{way} dq"].append(rms((dS @ k32) * c, dq64) / rms(dq_book, dq64))
            ratios[f"{way} dk"].append(rms((dS.swapaxes(-1, -2) @ q32) * c, dk64)
                                       / rms(dk_book, dk64))
    print(f"RMS error / the float32 textbook's, {args.problems} problems {(B, A, S, D)}:")
    for name, v in ratios.items():
        print(f"  {name:<14} median {np.median(v):.2f}  max {np.max(v):.2f}")


if __name__ == "__main__":
    main()
