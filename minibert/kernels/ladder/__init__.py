"""The attention ladder: CPU attention kernels for study, each one step from the one before.

Every rung computes the function of the textbook op ``minibert/ops/attention.py``
(``softmax(scale q k^T + mask) v`` with attention dropout) behind the contract of
``minibert.kernels.fused_attention_forward`` / ``fused_attention_backward``::

    out, lse = forward(q, k, v, mask, scale, dropout_p=0.0, seed=0, offset=0)
    dq, dk, dv = backward(dout, q, k, v, out, lse, mask, scale, dropout_p=0.0, seed=0,
                          offset=0)

and saves for the backward only ``lse``, the log-sum-exp of each row of scores, from which
the backward recomputes the probabilities. The rungs, each a module with ``forward`` and
``backward``:

1. ``attn_v1_naive``: the textbook op written as loops, (S, S) buffers and one pass per
   step (its docstring states the contract and the shared conventions);
2. ``attn_v2_fused_softmax``: one query row at a time through every step, no (S, S)
   buffer;
3. ``attn_v3_online_softmax``: keys in blocks with a running max and sum (the online
   softmax), the backward from lse block by block;
4. ``attn_v4_tiled``: FlashAttention-2 on tiles of queries x keys, all in Numba, padded key
   blocks skipped, on all cores; its docstring derives the algorithm and its float32
   numerics.

Rung 5 is the production kernel, ``minibert/kernels/attention_cpu.py``: rung 4's algorithm with the
block products in BLAS. Production code imports no rung: what it shares with rung 4 lives
in ``minibert/kernels/_blocks.py``, which the rungs import too. The rungs exist to be read, tested
(``tests/kernels/test_ladder.py``, against the textbook op) and timed
(``benchmarks/bench_attention.py``; the numbers are in ``minibert/kernels/README.md``).

The GPU ladder sits beside them, forward only, in Numba CUDA: ``attn_cuda_v1_naive`` (a
thread per query row, global memory, three passes), ``attn_cuda_v2_shared_tiles`` (K/V
tiles in shared memory), ``attn_cuda_v3_online_softmax`` (one pass, the accumulator in
registers); rung 4 is the production kernel ``minibert/kernels/attention_cuda.py``. They
import ``numba.cuda`` and are left out of ``__all__``, so that importing this package never
does; ``tests/kernels/test_ladder_cuda.py`` runs them under the CUDA simulator.
"""

__all__ = ["attn_v1_naive", "attn_v2_fused_softmax", "attn_v3_online_softmax", "attn_v4_tiled"]
