"""Data parallelism over MPI on one machine: 1 rank x 2 threads against 2 ranks x 1 thread,
and the cost of the one allreduce a step makes.

    python benchmarks/bench_distributed.py [--rounds R] [--steps K] [--quick] [--out FILE]

Three measurements, float32, each in fresh processes started with ``mpiexec``:

* **mini step** (L=4 H=256 A=4, the vocabulary size of the "bert" pretraining recipe,
  ``minibert.recipes.PRETRAIN_RECIPES["bert"]``, the recipe whose model is ``mini``):
  the pretraining step the Trainer runs, on a global batch of 16 sequences of 128 tokens
  with 20 masked positions each, dropout 0.1: each rank's forward and backward on its
  slice (loss weighted by its share), ``Allreduce`` of the flat gradient buffer in place,
  global-norm clipping, AdamW. 1 rank x 2 kernel threads against 2 ranks x 1 thread
  (``minibert.distributed.configure_threads``: cores / ranks), alternated round by round
  (a noisy neighbour hurts both alike); tokens/s = 16 x 128 / median step time.
  Reported: the allreduce inside the step (it includes waiting for the slower rank) and
  the allreduce alone (after a barrier), each with its share of the step.
* **base step**, 2 ranks x 1 thread, global batch 8 x 128 (4 per rank): the same step
  at BERT-Base size, and its allreduce of the whole flat gradient buffer.
* **allreduce bandwidth** of the ``base`` gradient buffer (float32) on 2 ranks, after a
  barrier, median of the repeats: algorithm bandwidth = bytes / time; bus bandwidth =
  2 (N - 1) / N x bytes / time (what each rank's link carries in a ring allreduce).

Correctness first: every step worker checks, after its steps, that all ranks hold the same
parameter bits; the bandwidth worker checks the reduced values. JSON:
``results/bench_distributed_cpu.json`` with the load average before and after (the machine
is shared: the ratios of one run are the result, absolute times move with the load).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

import common
from machine import ROOT, cpu_model

SEQ, PREDS = 128, 20


# ----------------------------------------------------------------------------- workers
def _batch(np, B, V, seed=0):
    r = np.random.default_rng(seed)
    ids = r.integers(5, V, (B, SEQ))
    tt = (np.arange(SEQ)[None, :] >= SEQ // 2).astype(np.int64).repeat(B, 0)
    pos = np.sort(np.stack([r.choice(np.arange(1, SEQ), PREDS, replace=False) for _ in range(B)]), 1)
    return dict(input_ids=ids, attention_mask=np.ones((B, SEQ), np.int64), token_type_ids=tt,
                masked_lm_positions=pos, masked_lm_ids=r.integers(5, V, (B, PREDS)),
                masked_lm_weights=np.ones((B, PREDS), np.float32),
                next_sentence_labels=r.integers(0, 2, B))


def worker_step(preset, batch_size, steps):
    import numpy as np

    from minibert import AdamW, BertConfig, BertForPreTraining, clip_grad_norm
    from minibert import distributed as dist
    from minibert.recipes import PRETRAIN_RECIPES
    comm = dist.world()
    threads = dist.configure_threads(comm)
    # the mini model with the vocabulary of the recipe that trains it ("bert")
    overrides = {"vocab_size": PRETRAIN_RECIPES["bert"]["vocab_size"]} if preset != "base" else {}
    model = BertForPreTraining(BertConfig.preset(preset, **overrides), seed=0)
    dist.broadcast_parameters(comm, model.store.data)
    opt = AdamW(model.store, lr=1e-4)
    batch = _batch(np, batch_size, model.config.vocab_size)
    part = dist.rank_rows(batch_size, comm)
    model.batch_start = part.start
    local = {k: v[part] for k, v in batch.items()}
    w = batch["masked_lm_weights"]
    shares = dict(d_mlm_loss=dist.share(w[part].sum(), w.sum()),
                  d_nsp_loss=dist.share(part.stop - part.start, batch_size))
    step_s, ar_s = [], []
    for i in range(steps + 1):                      # step 0 warms up (Numba's compilation)
        comm.barrier()
        t0 = time.perf_counter()
        out, cache = model.forward(**local, training=True)
        model.backward(cache, **shares)
        t1 = time.perf_counter()
        dist.allreduce_gradients(comm, model.store.grad)
        t2 = time.perf_counter()
        clip_grad_norm(model.store.grad, 1.0)
        opt.step()
        t3 = time.perf_counter()
        if i:
            step_s.append(t3 - t0)
            ar_s.append(t2 - t1)
    pure = []
    for _ in range(max(3, steps)):
        comm.barrier()
        t0 = time.perf_counter()
        comm.allreduce_(model.store.grad)
        pure.append(time.perf_counter() - t0)
    model.store.grad[...] = 0
    dist.check_same_bits(comm, model.store.data, "parameters after the timed steps")
    # rank 0's numbers; the step time is the slowest rank's (the next step waits for it)
    step_max = [max(t) for t in zip(*comm.allgather(step_s))]
    if comm.is_root:
        print(json.dumps(dict(preset=preset, ranks=comm.size, threads_per_rank=threads,
                              batch_size=batch_size, params=int(model.store.data.size),
                              grad_bytes=int(model.store.grad.nbytes), step_s=step_max,
                              allreduce_in_step_s=ar_s, allreduce_alone_s=pure,
                              library=comm.library)))


def worker_allreduce(preset, repeat):
    import numpy as np

    from minibert import BertConfig, count_parameters
    from minibert import distributed as dist
    comm = dist.world()
    n = count_parameters(BertConfig.preset(preset), head="pretraining")
    buf = np.full(n, comm.rank + 1, dtype=np.float32)
    times = []
    for i in range(repeat + 1):
        buf[...] = comm.rank + 1
        comm.barrier()
        t0 = time.perf_counter()
        comm.allreduce_(buf)
        if i:
            times.append(time.perf_counter() - t0)
    expect = comm.size * (comm.size + 1) / 2
    if not (buf[:: 4096] == expect).all():
        raise SystemExit(f"allreduce gave {buf[:4]}, expected {expect}")
    if comm.is_root:
        print(json.dumps(dict(preset=preset, ranks=comm.size, elements=n, bytes=int(buf.nbytes),
                              times_s=times, library=comm.library)))


# ----------------------------------------------------------------------------- driver
def launch(ranks, args, threads=None, timeout=900):
    """``mpiexec -n ranks python this --worker ...``; rank 0's JSON line."""
    env = dict(os.environ)
    env.pop("NUMBA_NUM_THREADS", None)
    # the minibert of this checkout, whatever is installed
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    if threads is not None:
        env["NUMBA_NUM_THREADS"] = str(threads)
    cmd = [shutil.which("mpiexec"), "-n", str(ranks), sys.executable, __file__, "--worker", *args]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def med(xs):
    return statistics.median(xs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=3, help="alternations of the mini runs")
    ap.add_argument("--steps", type=int, default=5, help="timed mini steps per run")
    ap.add_argument("--quick", action="store_true", help="1 round, 2 steps, no base step")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_distributed_cpu.json"))
    a = ap.parse_args()
    if a.worker:
        kind, *rest = a.worker
        if kind == "step":
            worker_step(rest[0], int(rest[1]), int(rest[2]))
        else:
            worker_allreduce(rest[0], int(rest[1]))
        return
    if shutil.which("mpiexec") is None:
        raise SystemExit("mpiexec not found: pip install 'minibert[dist]'")
    rounds, steps = (1, 2) if a.quick else (a.rounds, a.steps)
    load0 = os.getloadavg()
    runs = {"1x2": [], "2x1": []}
    for _ in range(rounds):
        runs["1x2"].append(launch(1, ["step", "mini", "16", str(steps)], threads=2))
        runs["2x1"].append(launch(2, ["step", "mini", "16", str(steps)]))
    mini = {}
    for key, rs in runs.items():
        step = med([t for r in rs for t in r["step_s"]])
        ar = med([t for r in rs for t in r["allreduce_in_step_s"]])
        alone = med([t for r in rs for t in r["allreduce_alone_s"]])
        mini[key] = dict(ranks=rs[0]["ranks"], threads_per_rank=rs[0]["threads_per_rank"],
                         step_ms=1e3 * step, tokens_per_s=16 * SEQ / step,
                         allreduce_in_step_ms=1e3 * ar, allreduce_in_step_share=ar / step,
                         allreduce_alone_ms=1e3 * alone, allreduce_alone_share=alone / step,
                         grad_bytes=rs[0]["grad_bytes"], rounds=len(rs),
                         step_ms_per_round=[1e3 * med(r["step_s"]) for r in rs])
    ratio = mini["2x1"]["tokens_per_s"] / mini["1x2"]["tokens_per_s"]
    bw = launch(2, ["allreduce", "base", "5" if not a.quick else "2"])
    t = med(bw["times_s"])
    bandwidth = dict(bytes=bw["bytes"], elements=bw["elements"], ranks=2, allreduce_ms=1e3 * t,
                     algorithm_GB_s=bw["bytes"] / t / 1e9,
                     bus_GB_s=2 * (2 - 1) / 2 * bw["bytes"] / t / 1e9,
                     times_ms=[1e3 * x for x in bw["times_s"]])
    base = None
    if not a.quick:
        b = launch(2, ["step", "base", "8", "2"])
        step = med(b["step_s"])
        base = dict(ranks=2, threads_per_rank=b["threads_per_rank"], batch=[8, SEQ],
                    step_ms=1e3 * step, allreduce_in_step_ms=1e3 * med(b["allreduce_in_step_s"]),
                    allreduce_alone_ms=1e3 * med(b["allreduce_alone_s"]),
                    allreduce_alone_share=med(b["allreduce_alone_s"]) / step,
                    allreduce_in_step_share=med(b["allreduce_in_step_s"]) / step,
                    grad_bytes=b["grad_bytes"])
    load1 = os.getloadavg()
    import mpi4py
    import numba
    import numpy
    result = dict(
        benchmark="data parallelism over MPI on one machine: mini pretraining step 1 rank x 2 "
                  "threads vs 2 ranks x 1 thread; allreduce of the flat gradient buffer",
        command=common.command_line(),
        device=dict(cpu=cpu_model(), cores=os.cpu_count(), load_average_start=list(load0),
                    load_average_end=list(load1)),
        versions=dict(python=platform.python_version(), numpy=numpy.__version__,
                      numba=numba.__version__, mpi4py=mpi4py.__version__, mpi=bw["library"]),
        statistic="median over all timed steps of all rounds (mini); the step time is the "
                  "slowest rank's",
        mini_step=mini, ratio_2x1_over_1x2_tokens_per_s=ratio,
        base_step_2_ranks=base, allreduce_base_buffer=bandwidth)
    print(f"load average {load0[0]:.2f} -> {load1[0]:.2f} on {os.cpu_count()} cores")
    print(f"{'mini step, global 16 x 128':32s} {'ms':>8s} {'tokens/s':>9s} {'allreduce in step':>18s} "
          f"{'allreduce alone':>16s}")
    for key, m in mini.items():
        print(f"{key[0]} rank(s) x {m['threads_per_rank']} thread(s){'':12s} {m['step_ms']:8.1f} "
              f"{m['tokens_per_s']:9.0f} {m['allreduce_in_step_ms']:8.2f} ms "
              f"{100 * m['allreduce_in_step_share']:5.1f}% "
              f"{m['allreduce_alone_ms']:7.2f} ms {100 * m['allreduce_alone_share']:5.1f}%")
    print(f"2 ranks x 1 thread / 1 rank x 2 threads, tokens/s: {ratio:.3f}")
    print(f"allreduce of the base buffer ({bandwidth['bytes'] / 1e6:.1f} MB) on 2 ranks: "
          f"{bandwidth['allreduce_ms']:.1f} ms, algorithm {bandwidth['algorithm_GB_s']:.2f} GB/s, "
          f"bus {bandwidth['bus_GB_s']:.2f} GB/s")
    if base:
        print(f"base step 2 ranks x 1 thread, global 8 x 128: {base['step_ms']:.0f} ms, allreduce "
              f"in step {base['allreduce_in_step_ms']:.0f} ms "
              f"({100 * base['allreduce_in_step_share']:.1f}%), "
              f"alone {base['allreduce_alone_ms']:.0f} ms ({100 * base['allreduce_alone_share']:.1f}%)")
    common.write_json(a.out, result)


if __name__ == "__main__":
    main()
