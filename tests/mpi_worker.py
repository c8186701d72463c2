"""What ``tests/test_distributed.py`` runs under ``mpiexec -n N python -m tests.mpi_worker``
(and in its own process for one rank): small scenarios of data-parallel training.

    python -m tests.mpi_worker collectives
    python -m tests.mpi_worker steps DTYPE STEPS OUT.npy      the step by hand
    python -m tests.mpi_worker train DTYPE OUT_DIR STOP_AT [resume]   the Trainer
    python -m tests.mpi_worker fail OUT_DIR                   rank 1 raises at step 4
"""
from __future__ import annotations

import sys

import numpy as np

from minibert import AdamW, BertConfig, BertForPreTraining, clip_grad_norm
from minibert import distributed as dist

# A model of a few thousand parameters and sequences of 12 tokens: each step takes
# milliseconds, so the process start (MPI, Numba) dominates the tests' time.
CONFIG = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
              intermediate_size=24, max_position_embeddings=16, type_vocab_size=2,
              hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
N_EXAMPLES, SEQ, PREDS, BATCH = 24, 12, 3, 8


def pretraining_arrays(seed=0):
    """A tiny pretraining set: ids, padding, segments, 1..3 masked positions per sequence
    (weights 0 for the rest), NSP labels. Different masked counts per sequence make the
    ranks' shares of the masked-LM loss unequal, which the weighting must get right."""
    rng = np.random.default_rng(seed)
    n, S, P = N_EXAMPLES, SEQ, PREDS
    lengths = rng.integers(5, S + 1, n)
    mask = (np.arange(S)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(5, CONFIG["vocab_size"], (n, S)) * mask
    tt = ((np.arange(S)[None, :] >= lengths[:, None] // 2) * mask).astype(np.int64)
    pos = np.stack([rng.choice(np.arange(1, int(L)), P, replace=False) for L in lengths])
    weights = (np.arange(P)[None, :] < rng.integers(1, P + 1, n)[:, None]).astype(np.float32)
    labels = rng.integers(5, CONFIG["vocab_size"], (n, P))
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=tt, masked_lm_positions=pos,
                masked_lm_ids=labels, masked_lm_weights=weights,
                next_sentence_labels=rng.integers(0, 2, n))


def hand_steps(comm, dtype, steps):
    """``steps`` AdamW steps of BertForPreTraining written out with the primitives of
    ``minibert.distributed``; returns the flat parameters."""
    from minibert.train import batch_indices
    data = pretraining_arrays()
    model = BertForPreTraining(BertConfig(**CONFIG), dtype=dtype, seed=3)
    dist.broadcast_parameters(comm, model.store.data)
    opt = AdamW(model.store, lr=1e-2, weight_decay=0.01)
    part = dist.rank_rows(BATCH, comm)
    model.batch_start = part.start
    for t in range(steps):
        rows = batch_indices(t, N_EXAMPLES, BATCH, 0)
        batch = {k: v[rows] for k, v in data.items()}                 # the global batch
        local = {k: v[part] for k, v in batch.items()}                 # this rank's slice
        out, cache = model.forward(**local, training=True)
        w = batch["masked_lm_weights"]
        model.backward(cache, d_mlm_loss=dist.share(w[part].sum(), w.sum()),
                       d_nsp_loss=dist.share(part.stop - part.start, BATCH))
        dist.allreduce_gradients(comm, model.store.grad)
        clip_grad_norm(model.store.grad, 0.5)                          # clipping is active
        opt.step()
    dist.check_same_bits(comm, model.store.data)
    return model.store.data.copy()


TRAIN_STEPS = 5


def trainer(comm, dtype, out_dir, model_class=BertForPreTraining):
    """A Trainer of 5 steps on the tiny set, dropout on, clipping active, a checkpoint every
    2 steps, a held-out set split over the ranks."""
    from minibert import TrainConfig, Trainer
    data = pretraining_arrays()
    held = {k: v[:10] for k, v in pretraining_arrays(seed=1).items()}
    model = model_class(BertConfig(**CONFIG), dtype=dtype, seed=3)
    tc = TrainConfig(steps=TRAIN_STEPS, batch_size=BATCH, lr=1e-2, warmup_steps=1,
                     max_grad_norm=0.5, save_every=2, eval_every=2, eval_batches=2, seed=7)
    return Trainer(model, data, held, out_dir, tc, "pretraining", comm=comm)


class FailingModel(BertForPreTraining):
    """Raises on the last rank in the forward of step 4. (Rank 0 wrote the checkpoint of
    step 2 before it joined step 3's allreduce, which the last rank waited for.)"""
    def forward(self, *args, **kwargs):
        from minibert import distributed
        comm = distributed.world()
        if kwargs.get("training") and self.bert.dropout_calls == 3 and comm.rank == comm.size - 1:
            raise RuntimeError("injected failure at step 4")
        return super().forward(*args, **kwargs)


def collectives(comm):
    """Broadcast, the same-bits check (and that it catches a difference), the in-place
    allreduce, small sums, allgather and the rank rows."""
    r, n = comm.rank, comm.size
    buf = np.arange(10, dtype=np.float64) * (r + 1)
    dist.broadcast_parameters(comm, buf)
    assert (buf == np.arange(10)).all(), buf
    g = np.full(7, r + 1.0, dtype=np.float32)
    dist.allreduce_gradients(comm, g)
    assert (g == n * (n + 1) / 2).all(), g
    g = np.full(7, r + 1.0, dtype=np.float32)
    dist.allreduce_gradients(comm, g, scale=1.0 / n)
    assert np.allclose(g, (n + 1) / 2), g
    s = comm.allreduce_sum([1.0, r])
    assert s[0] == n and s[1] == n * (n - 1) / 2, s
    assert comm.allgather(r) == list(range(n))
    other = np.zeros(3) + (r == n - 1)
    try:
        dist.check_same_bits(comm, other, "probe")
    except RuntimeError as e:
        assert f"ranks [{n - 1}]" in str(e), e
    else:
        assert n == 1, "check_same_bits missed a difference"
    part = dist.rank_rows(4 * n, comm)
    assert (part.start, part.stop) == (4 * r, 4 * r + 4)
    if n > 1:
        try:
            dist.rank_rows(4 * n + 1, comm)
        except ValueError as e:
            assert "does not divide" in str(e)
        else:
            raise AssertionError("rank_rows accepted an indivisible batch")
    assert dist.threads_per_rank(comm, cores=2) == max(1, 2 // comm.local_size)


def main(argv):
    comm = dist.world()
    what = argv[0]
    if what == "collectives":
        collectives(comm)
    elif what == "train":
        dtype, out_dir, stop_at = np.dtype(argv[1]), argv[2], int(argv[3])
        result = trainer(comm, dtype, out_dir).train(resume="resume" in argv[4:], stop_at=stop_at)
        if comm.is_root:
            print("losses", [round(h["loss"], 12) for h in result.history])
    elif what == "fail":
        t = trainer(comm, np.dtype("float32"), argv[1], FailingModel)
        dist.run_or_abort(comm, t.train, lambda msg, e: print(msg, file=sys.stderr, flush=True))
    elif what == "steps":
        dtype, steps, out = np.dtype(argv[1]), int(argv[2]), argv[3]
        params = hand_steps(comm, dtype, steps)
        if comm.is_root:
            np.save(out, params)
    else:
        raise SystemExit(f"unknown scenario {what!r}")
    if comm.is_root:
        print(f"ok {what} on {comm.size} ranks")


if __name__ == "__main__":
    main(sys.argv[1:])
