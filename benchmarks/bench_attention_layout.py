"""The padded fused attention in the model's layout, forward + backward, against torch's SDPA:
what the layouts of the kernel's inputs and outputs cost, with every key real.

    python benchmarks/bench_attention_layout.py [--shape B,A,S,D] [--threads N] [--repeat R]

The model splits its (B, S, 3H) product into q, k, v (``minibert.model.split_heads``:
strided views) and merges the context (B, A, S, D) back into (B, S, H), and the gradients
dq, dk, dv into (B, S, 3H) (``merge_heads``). Three implementations of that step, float32,
no mask, no dropout, interleaved round by round (``common.time_rounds``, a pause and
untimed calls before each turn), on N threads:

* ``copies``: the heads copied to C-contiguous arrays, then ``fused_attention_forward`` /
  ``backward``, then the merges (the op before it took the views as they are);
* ``op``: ``minibert.ops.attention`` with ``implementation="fused"`` as the model calls it,
  then the merges;
* ``op, merge copies``: the same, with the merges copying the outputs into a new
  (B, S, n H) array (as ``merge_heads`` did before the kernel's outputs were token-major,
  which makes them views): what one copy per merge costs;
* ``torch sdpa``: ``scaled_dot_product_attention`` on the same views of a (B, S, 3H)
  tensor, the context merged by a reshape, the gradient of the (B, S, 3H) tensor.

Prints the median milliseconds and, per round, the ratios (the median of the per-round
ratios: a neighbour that slows one round slows all three). Nothing is written.
"""
from __future__ import annotations

import argparse
import statistics

import common
from machine import configure_environment


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="32,12,128,32", help="B,A,S,D (default 32,12,128,32)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=11, help="rounds (default 11)")
    return p.parse_args(argv)


def implementations(shape):
    import numpy as np
    import torch
    import torch.nn.functional as F

    from minibert.kernels import fused_attention_backward, fused_attention_forward
    from minibert.model import merge_heads, split_heads
    from minibert.ops import attention

    B, A, S, D = shape
    H = A * D
    r = np.random.default_rng(0)
    qkv = r.standard_normal((B, S, 3 * H)).astype(np.float32)
    dctx = r.standard_normal((B, S, H)).astype(np.float32)

    def copies():
        q, k, v = (np.ascontiguousarray(t) for t in split_heads(qkv, A, 3))
        out, lse = fused_attention_forward(q, k, v, None, None)
        ctx = merge_heads(out)
        (dout,) = split_heads(dctx, A)
        grads = fused_attention_backward(np.ascontiguousarray(dout), q, k, v, out, lse, None,
                                         None)
        return ctx, merge_heads(*grads)

    def op():
        out, cache = attention.forward(*split_heads(qkv, A, 3), None, implementation="fused")
        ctx = merge_heads(out)
        (dout,) = split_heads(dctx, A)
        return ctx, merge_heads(*attention.backward(dout, cache))

    def merge_copy(*parts):                         # (B, A, S, D) each -> (B, S, n H), a copy
        merged = np.empty((B, S, len(parts), A, D), dtype=parts[0].dtype)
        for j, t in enumerate(parts):
            merged[:, :, j] = t.transpose(0, 2, 1, 3)
        return merged.reshape(B, S, len(parts) * H)

    def op_merge_copies():
        out, cache = attention.forward(*split_heads(qkv, A, 3), None, implementation="fused")
        ctx = merge_copy(out)
        (dout,) = split_heads(dctx, A)
        return ctx, merge_copy(*attention.backward(dout, cache))

    leaf, dctx_t = torch.from_numpy(qkv.copy()).requires_grad_(True), torch.from_numpy(dctx)

    def sdpa():
        leaf.grad = None
        q, k, v = leaf.view(B, S, 3, A, D).permute(2, 0, 3, 1, 4).unbind(0)
        ctx = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, S, H)
        ctx.backward(dctx_t)
        return ctx.detach().numpy(), leaf.grad.numpy()

    fns = {"torch sdpa": sdpa, "copies": copies, "op": op, "op, merge copies": op_merge_copies}
    ref = copies()
    for name, fn in fns.items():          # the same function (float32 rounding apart)
        for a, b in zip(fn(), ref):
            err = float(np.abs(a - b).max() / np.abs(b).max())
            assert err < 1e-4, f"{name} differs from copies: {err:.1e}"
    return fns


def main(argv=None):
    args = parse_args(argv)
    configure_environment(args.threads)
    import numba
    import torch
    numba.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    shape = tuple(int(x) for x in args.shape.split(","))
    rounds = common.time_rounds(implementations(shape), args.repeat, settle_s=common.SETTLE_S,
                                warm_s=common.WARM_S, collect=True)
    print(f"(B, A, S, D) = {shape}, float32, no mask, {args.threads} threads, "
          f"{args.repeat} rounds; forward + backward with the splits and merges")
    base = rounds["torch sdpa"]
    for name, t in rounds.items():
        ratio = statistics.median(b / x for b, x in zip(base, t))
        print(f"  {name:16s} {statistics.median(t):8.2f} ms   torch sdpa / it {ratio:5.2f}")
    for name in ("copies", "op, merge copies"):
        gain = statistics.median(c / o for c, o in zip(rounds[name], rounds["op"]))
        print(f"  {name} / op {gain:.3f}")


if __name__ == "__main__":
    main()
