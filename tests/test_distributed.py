"""minibert.distributed: the one-rank stand-in and the dropout/weighting that make N ranks
equal one (in this process), then the same under ``mpiexec -n 2`` (skipped where mpi4py or
mpiexec is missing), each launch bounded by ``timeout`` so that a hang fails the test.

Tolerances. N ranks and one rank see the same batch, the same dropout masks and the same
loss weights; only the order of the additions in the gradient differs (one process sums
the B rows inside each matrix product, two ranks B/2 rows each and the allreduce adds the
two partial sums). So the gradients differ by the rounding of those sums, and the
parameters after 5 AdamW steps by about 5e-16 (float64) and 3e-7 (float32) of their
largest magnitude (measured). The bounds, 1e-12 and 1e-6, leave room for other shapes and
BLAS blockings; bit equality is not possible because floating-point addition is not
associative, and a bound near one rounding is as tight as the math allows.
"""
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

from minibert import BertConfig, BertForPreTraining, BertForSequenceClassification
from minibert import distributed as dist
from minibert.ops import readable_ops
from tests import mpi_worker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOUND = {"float64": 1e-12, "float32": 1e-6}


def rel_diff(a, b):
    """max |a - b| / max |a|: the parameters' difference relative to their scale."""
    return float(np.abs(a - b).max() / np.abs(a).max())


# ----------------------------------------------------------------------------- one process
def test_one_rank_stand_in(monkeypatch):
    for var in dist.LAUNCHER_SIZE_VARS + ("PMI_RANK", "PMIX_RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(dist, "_WORLD", None)
    comm = dist.world()
    assert isinstance(comm, dist.OneRank) and (comm.rank, comm.size, comm.is_root) == (0, 1, True)
    g = np.arange(5, dtype=np.float32)
    assert dist.allreduce_gradients(comm, g) is g and (g == np.arange(5)).all()
    dist.allreduce_gradients(comm, g, scale=0.5)
    assert (g == np.arange(5) / 2).all()
    assert dist.broadcast_parameters(comm, g) is g
    assert comm.allgather({"a": 1}) == [{"a": 1}]
    assert list(comm.allreduce_sum([1.5, 2])) == [1.5, 2.0]
    assert dist.rank_rows(6, comm) == slice(0, 6)
    with pytest.raises(SystemExit):
        comm.abort(3)
    mpi_worker.collectives(comm)


def test_run_or_abort():
    """One rank: the exception propagates; several: report (rank and reason), then abort
    with the exit status of the exception (2 for bad input, as the command line)."""
    with pytest.raises(KeyError):
        dist.run_or_abort(dist.OneRank(), lambda: {}["x"], None)
    assert dist.run_or_abort(dist.OneRank(), lambda: 7, None) == 7

    class Two(dist.OneRank):
        rank, size, aborted = 1, 2, []

        def abort(self, code=1):
            self.aborted.append(code)
    said = []
    for exc, code in ((ValueError("bad --steps"), 2), (RuntimeError("boom"), 1),
                      (SystemExit(3), 3), (KeyboardInterrupt(), 130)):
        def fail(exc=exc):
            raise exc
        with pytest.raises(type(exc)):
            dist.run_or_abort(Two(), fail, lambda msg, e: said.append(msg))
        assert Two.aborted[-1] == code
    assert said[:2] == ["rank 1 of 2: bad --steps", "rank 1 of 2: RuntimeError: boom"]


def test_launch_without_mpi4py_is_refused(monkeypatch):
    """Two processes started by a launcher without mpi4py would each train alone and write
    over each other's checkpoints: an error instead."""
    monkeypatch.setattr(dist, "_WORLD", None)
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)          # import mpi4py -> ImportError
    with pytest.raises(RuntimeError, match=r"2 MPI processes.*mpi4py is not installed"):
        dist.world()
    monkeypatch.setattr(dist, "_WORLD", None)


@pytest.mark.slow
def test_minibert_runs_without_mpi4py():
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "import numpy as np, minibert, minibert.distributed as d\n"
            "assert d.world().size == 1 and d.mpi_info()['mpi4py'] is None\n"
            "m = minibert.BertModel(minibert.BertConfig.preset('tiny'))\n"
            "m.forward(np.array([[1, 2, 3]]), training=True)\n")
    env = {k: v for k, v in os.environ.items() if k not in dist.LAUNCHER_SIZE_VARS}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=120)


class _Ranks:
    def __init__(self, size, rank=0, local_size=None):
        self.size, self.rank = size, rank
        self.local_size = size if local_size is None else local_size


@pytest.mark.parametrize("bad", [10, 3, 0, -4, 2.0, True])
def test_rank_rows_needs_a_divisible_batch(bad):
    with pytest.raises(ValueError, match="batch_size"):
        dist.rank_rows(bad, _Ranks(4))


def test_rank_rows_message_names_the_fix():
    with pytest.raises(ValueError, match=r"batch_size=10 does not divide by the number of MPI "
                                         r"ranks \(4\): expected a multiple of 4 \(such as 8 or 12\)"):
        dist.rank_rows(10, _Ranks(4))
    assert [dist.rank_rows(12, _Ranks(3, r)) for r in range(3)] == [slice(0, 4), slice(4, 8),
                                                                     slice(8, 12)]


def test_threads_per_rank():
    assert dist.threads_per_rank(_Ranks(2), cores=2) == 1
    assert dist.threads_per_rank(_Ranks(4, local_size=2), cores=16) == 8
    assert dist.threads_per_rank(_Ranks(4), cores=2) == 1                # never 0
    assert dist.threads_per_rank(_Ranks(1), cores=2) == 2


def test_share():
    assert dist.share(3, 12) == 0.25 and dist.share(0, 0) == 0.0


@pytest.mark.parametrize("path", ["kernels", "readable"])
def test_start_draws_the_rows_of_a_larger_mask(path):
    """``start`` = the element index of a slice's first element: the rows of the whole
    tensor's mask, also where a row's length (21, 65) is no multiple of Philox's 4 words."""
    from minibert.ops import dropout
    from minibert.rng import keep_mask
    full = keep_mask((5, 7, 3), 0.3, 9, 4)
    for b0 in range(5):
        assert (keep_mask((5 - b0, 7, 3), 0.3, 9, 4, start=b0 * 21) == full[b0:]).all()
    x = np.random.default_rng(0).standard_normal((6, 13, 5)).astype(np.float32)
    with readable_ops(path == "readable"):
        y = dropout.forward(x, 0.4, 3, 2)[0]
        for b0 in range(6):
            assert (dropout.forward(x[b0:], 0.4, 3, 2, start=b0 * 65)[0] == y[b0:]).all(), b0


@pytest.mark.parametrize("path", ["kernels", "readable"])
@pytest.mark.parametrize("head", ["pretraining", "classification"])
def test_slices_draw_the_whole_batch_dropout_masks(path, head):
    """Rows b0.. of a batch run with ``batch_start = b0`` get exactly the outputs the same
    rows get in the whole batch, dropout (hidden, attention, classifier) on."""
    cfg = BertConfig(**{**mpi_worker.CONFIG, "hidden_dropout_prob": 0.3,
                        "attention_probs_dropout_prob": 0.3, "num_labels": 3})
    data = mpi_worker.pretraining_arrays()
    keys = ("input_ids", "attention_mask", "token_type_ids")
    if head == "pretraining":
        keys += ("masked_lm_positions",)
    model = (BertForPreTraining if head == "pretraining" else BertForSequenceClassification)(
        cfg, dtype=np.float64, seed=5)
    field = "mlm_logits" if head == "pretraining" else "logits"
    batch = {k: data[k][:6] for k in keys}
    with readable_ops(path == "readable"):
        whole = getattr(model.forward(**batch, training=True)[0], field)
        for b0, b1 in ((0, 2), (2, 5), (5, 6)):
            model.set_rng_state({"seed": 5, "dropout_calls": 0})
            model.batch_start = b0
            part = model.forward(**{k: v[b0:b1] for k, v in batch.items()}, training=True)[0]
            np.testing.assert_allclose(getattr(part, field), whole[b0:b1], rtol=0, atol=1e-13)
        model.batch_start = 0
        model.set_rng_state({"seed": 5, "dropout_calls": 0})
        shifted = getattr(model.forward(**{k: v[2:5] for k, v in batch.items()},
                                        training=True)[0], field)
    assert np.abs(shifted - whole[2:5]).max() > 1e-3      # without batch_start: other masks


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_weighted_slices_sum_to_the_batch_gradient(dtype):
    """The gradient of the whole batch equals the sum of the slices' gradients, each slice's
    masked-LM loss weighted by its share of the masked positions and its NSP loss by its
    share of the sequences (what the allreduce adds up); plain 1/2 weights would not do."""
    cfg = BertConfig(**mpi_worker.CONFIG)
    data = {k: v[:8] for k, v in mpi_worker.pretraining_arrays().items()}
    model = BertForPreTraining(cfg, dtype=dtype, seed=1)
    model.forward(**data, training=True)                       # call 0, for the state below
    model.set_rng_state({"seed": 1, "dropout_calls": 0})
    model.backward(model.forward(**data, training=True)[1])
    whole = model.store.grad.copy()
    total, plain = np.zeros_like(whole), np.zeros_like(whole)
    w = data["masked_lm_weights"]
    for part in (slice(0, 3), slice(3, 8)):                    # unequal slices on purpose
        model.set_rng_state({"seed": 1, "dropout_calls": 0})
        model.batch_start = part.start
        cache = model.forward(**{k: v[part] for k, v in data.items()}, training=True)[1]
        model.backward(cache, d_mlm_loss=dist.share(w[part].sum(), w.sum()),
                       d_nsp_loss=dist.share(part.stop - part.start, 8))
        total += model.store.grad
        model.backward(cache, d_loss=0.5)
        plain += model.store.grad
    bound = {"float64": 1e-13, "float32": 1e-5}[dtype]
    assert rel_diff(whole, total) < bound, rel_diff(whole, total)
    assert rel_diff(whole, plain) > 1e-3


# ----------------------------------------------------------------------------- GPU per rank
class _FakeCuPy:
    """What ``backend.select_gpu`` asks of CuPy: the device count, and ``Device(i).use()``."""

    def __init__(self, count):
        self.used = []
        fake = self

        class Device:
            def __init__(self, i):
                self.i = i

            def use(self):
                fake.used.append(self.i)

        runtime = type("runtime", (), {"getDeviceCount": staticmethod(lambda: count)})
        self.cuda = type("cuda", (), {"runtime": runtime, "Device": Device})


@pytest.mark.parametrize("count", [1, 2, 4])
def test_ranks_pick_different_devices(monkeypatch, count):
    """Ranks 0..5 of a machine (local rank from the launcher's environment, no MPI started)
    take device local_rank % count; device 0 needs no call; the choice holds afterwards."""
    from minibert import backend
    for var in dist.LOCAL_RANK_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(dist, "_WORLD", None)
    monkeypatch.setattr(backend, "numba_cuda_installed", lambda: False)
    picked = []
    for rank in range(6):
        cp = _FakeCuPy(count)
        monkeypatch.setattr(backend, "_import_cupy", lambda cp=cp: cp)
        monkeypatch.setattr(backend, "_selected_device", None)
        monkeypatch.setattr(backend, "_gpu_ok", True)
        monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", str(rank))
        assert dist.local_rank() == rank
        assert backend.get_xp("gpu") is cp                    # selects before handing CuPy out
        picked.append(backend._selected_device)
        assert cp.used == ([] if rank % count == 0 else [rank % count])
        assert backend.select_gpu(0) == rank % count           # the first choice holds
    assert picked == [r % count for r in range(6)]


def test_local_rank_sources(monkeypatch):
    """The communicator's own (MPI's shared-memory split) wins over the environment; each
    launcher's variable is read; 0 without any."""
    monkeypatch.setattr(dist, "_WORLD", None)
    for var in dist.LOCAL_RANK_VARS:
        monkeypatch.delenv(var, raising=False)
    assert dist.local_rank() == 0
    for var in dist.LOCAL_RANK_VARS:
        monkeypatch.setenv(var, "3")
        assert dist.local_rank() == 3
        monkeypatch.delenv(var)
    comm = dist.OneRank()
    comm.local_rank = 5
    monkeypatch.setattr(dist, "_WORLD", comm)
    monkeypatch.setenv("MPI_LOCALRANKID", "1")
    assert dist.local_rank() == 5


def test_no_gpu_selects_nothing(monkeypatch):
    from minibert import backend
    monkeypatch.setattr(backend, "_selected_device", None)
    monkeypatch.setattr(backend, "_import_cupy", lambda: None)
    assert backend.select_gpu(3) is None
    with pytest.raises(ValueError, match=r"local_rank=-1 is invalid"):
        backend.select_gpu(-1)


class _ThreadComm:
    """N ranks as N threads of this process: mpi4py's lowercase ``allgather`` and ``bcast``
    over a barrier, enough for ``make_nccl``."""

    def __init__(self, size):
        import threading
        self.size, self.slots = size, [None] * size
        self.barrier = threading.Barrier(size, timeout=20)   # a rank left waiting: fails

    def rank(self, r):
        comm = self

        class Rank:
            def allgather(self, obj):
                comm.barrier.wait()
                comm.slots[r] = obj
                comm.barrier.wait()
                got = list(comm.slots)
                comm.barrier.wait()
                return got

            def bcast(self, obj, root=0):
                return self.allgather(obj)[root]
        return Rank()


class _FakeNccl:
    """``cupy.cuda.nccl`` with failures planted: ``load`` fails on ``no_module`` ranks,
    ``get_unique_id`` on rank 0 if ``no_id``, the communicator on ``no_init`` ranks."""

    def __init__(self, no_module=(), no_id=False, no_init=()):
        self.no_module, self.no_id, self.no_init = set(no_module), no_id, set(no_init)
        self.made, self.destroyed = [], []

    def loader(self, rank):
        fake = self

        class Communicator:
            def __init__(self, size, uid, r):
                if r in fake.no_init:
                    raise RuntimeError(f"planted: rank {r} cannot join")
                assert uid == "uid-from-rank-0"
                self.rank = r
                fake.made.append(r)

            def destroy(self):
                fake.destroyed.append(self.rank)

        def load():
            if rank in fake.no_module:
                raise ImportError("planted: CuPy without NCCL")
            return type("nccl", (), {"get_unique_id": staticmethod(fake.get_unique_id),
                                     "NcclCommunicator": Communicator})
        return load

    def get_unique_id(self):
        if self.no_id:
            raise RuntimeError("planted: no unique id")
        return "uid-from-rank-0"


@pytest.mark.parametrize("plant,usable", [
    ({}, True),
    ({"no_module": [1]}, False),          # rank 1 gives up before the broadcast
    ({"no_module": [0]}, False),          # rank 0 too: nobody waits for its id
    ({"no_id": True}, False),
    ({"no_init": [2]}, False),            # one rank's join fails: the others destroy theirs
], ids=["all-ok", "rank1-no-nccl", "rank0-no-nccl", "no-id", "rank2-join-fails"])
def test_ranks_agree_on_nccl(plant, usable):
    """Every rank returns a communicator or every rank returns None; no rank is left waiting
    (the barrier's timeout would fail the test); rank 0 alone warns, once."""
    import threading
    size = 3
    comm, nccl = _ThreadComm(size), _FakeNccl(**plant)
    results, warned, errors = [None] * size, [], []

    def rank(r):
        try:
            results[r] = dist.make_nccl(comm.rank(r), r, size, load=nccl.loader(r))
        except Exception as exc:          # noqa: BLE001  (reported below)
            errors.append((r, exc))

    def show(message, *args, **kwargs):   # which rank's thread warned
        warned.append((threading.current_thread().name, str(message)))
    threads = [threading.Thread(target=rank, args=(r,), name=str(r)) for r in range(size)]
    with warnings.catch_warnings():       # one catcher for all threads (it is process-wide)
        warnings.simplefilter("always")
        warnings.showwarning = show
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not any(t.is_alive() for t in threads), "a rank is still waiting"
    assert errors == []
    if usable:
        assert all(c is not None for c in results) and warned == []
    else:
        assert results == [None] * size
        assert len(warned) == 1 and warned[0][0] == "0" and "planted" in warned[0][1]
        assert sorted(nccl.destroyed) == sorted(nccl.made)    # no communicator left behind


# ----------------------------------------------------------------------------- 2 ranks
def _mpiexec():
    if shutil.which("mpiexec") is None:
        pytest.skip("no mpiexec on PATH (pip install 'minibert[dist]')")
    pytest.importorskip("mpi4py")
    return shutil.which("mpiexec")


def run_ranks(n, *args, timeout=120, check=True):
    """``mpiexec -n n python -m tests.mpi_worker args`` under ``timeout``; a hang is a
    failure, not a stalled CI."""
    cmd = ["timeout", "-k", "5", str(timeout), _mpiexec(), "-n", str(n), sys.executable, "-m",
           "tests.mpi_worker", *map(str, args)]
    env = {**os.environ, "NUMBA_NUM_THREADS": "1"}
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout + 30)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


@pytest.mark.slow
def test_two_ranks_collectives():
    assert "ok collectives on 2 ranks" in run_ranks(2, "collectives").stdout


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_two_ranks_equal_one_rank_by_hand(dtype, tmp_path):
    """5 steps written out with the primitives (broadcast, slice, weighted backward,
    allreduce, clipping, AdamW), dropout on: 2 ranks against 1 rank in this process."""
    run_ranks(2, "steps", dtype, 5, tmp_path / "two.npy")
    two = np.load(tmp_path / "two.npy")
    one = mpi_worker.hand_steps(dist.OneRank(), np.dtype(dtype), 5)
    assert rel_diff(one, two) < BOUND[dtype], rel_diff(one, two)
    assert rel_diff(one, mpi_worker.hand_steps(dist.OneRank(), np.dtype(dtype), 0)) > 1e-3


# ----------------------------------------------------------------------------- the Trainer
def _params(run_dir):
    """The flat parameters of a run's latest checkpoint, and its metric history."""
    from minibert.checkpoint import read_state_dict
    from minibert.train import latest_checkpoint, read_trainer_state
    ckpt = latest_checkpoint(run_dir)
    state = read_state_dict(ckpt)
    return (np.concatenate([np.asarray(state[k], np.float64).ravel() for k in sorted(state)]),
            read_trainer_state(ckpt))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_two_ranks_train_as_one(dtype, tmp_path):
    """The Trainer, 5 steps, dropout and clipping on, held-out evaluations split over the
    ranks: 2 ranks against 1 rank (parameters, losses, held-out metrics), and a run of 3
    steps on 2 ranks resumed for 2 more on 1 rank against both."""
    run_ranks(2, "train", dtype, tmp_path / "two", 5)
    run_ranks(1, "train", dtype, tmp_path / "one", 5)
    run_ranks(2, "train", dtype, tmp_path / "resumed", 3)
    run_ranks(1, "train", dtype, tmp_path / "resumed", 5, "resume")
    one, s1 = _params(tmp_path / "one")
    for name in ("two", "resumed"):
        p, s = _params(tmp_path / name)
        assert s["step"] == 5
        assert rel_diff(one, p) < BOUND[dtype], (name, rel_diff(one, p))
        for h1, h in zip(s1["history"] + s1["evals"], s["history"] + s["evals"]):
            for k in ("loss", "mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc"):
                assert abs(h1[k] - h[k]) <= 10 * BOUND[dtype] * max(1, abs(h1[k])), (name, k, h1, h)
    assert len(s1["evals"]) == 4                       # steps 0, 2, 4 and 5


@pytest.mark.slow
def test_a_failing_rank_ends_the_job(tmp_path):
    """Rank 1 raises at step 4: the job exits non-zero within seconds (MPI_Abort), the
    message names the rank and the reason, and the checkpoint of step 2 is complete and
    ``latest``; nothing of step 4 was written."""
    import time

    from minibert.train import latest_checkpoint, list_checkpoints, read_trainer_state
    t0 = time.perf_counter()
    p = run_ranks(2, "fail", tmp_path / "run", timeout=60, check=False)
    elapsed = time.perf_counter() - t0
    assert p.returncode != 0, p.stdout + p.stderr
    assert "rank 1 of 2: RuntimeError: injected failure at step 4" in p.stderr, p.stderr
    assert elapsed < 45, elapsed
    ckpts = list_checkpoints(tmp_path / "run")
    assert [os.path.basename(c) for c in ckpts] == ["checkpoint-0000002"]
    assert latest_checkpoint(tmp_path / "run") == ckpts[0]
    assert read_trainer_state(ckpts[0])["step"] == 2
    assert sorted(os.listdir(ckpts[0])) == ["config.json", "model.safetensors", "optimizer.npz",
                                            "trainer_state.json"]
    assert sorted(n for n in os.listdir(tmp_path / "run") if not n.startswith(".")) == [
        "checkpoint-0000002", "latest", "loss_curve.png"]


# ----------------------------------------------------------------------------- the command
def run_command(n, *args, timeout=180):
    cmd = ["timeout", "-k", "5", str(timeout), _mpiexec(), "-n", str(n), sys.executable, "-m",
           "minibert", *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout + 30)


@pytest.mark.slow
def test_pretrain_command_on_two_ranks(tmp_path):
    """``mpiexec -n 2 minibert pretrain``: rank 0 alone prints and writes; a batch size that
    does not divide by the ranks is one line and exit status 2, before anything is written."""
    flags = ["--preset", "tiny", "--corpus", os.path.join(ROOT, "tests", "data", "tiny_corpus.txt"),
             "--vocab-size", 200, "--steps", 2, "--seq-len", 32]
    p = run_command(2, "pretrain", *flags, "--batch-size", 4, "--out", tmp_path / "run")
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("reading the corpus") == 1 and "checkpoint:" in p.stdout
    assert sorted(os.listdir(tmp_path / "run")) == ["checkpoint-0000001", "checkpoint-0000002",
                                                    "latest", "loss_curve.png", "vocab.txt"]
    p = run_command(2, "pretrain", *flags, "--batch-size", 3, "--out", tmp_path / "bad")
    assert p.returncode == 2, p.stdout + p.stderr
    assert "batch_size=3 does not divide by the number of MPI ranks (2)" in p.stderr
    assert not os.path.exists(tmp_path / "bad")


@pytest.mark.slow
def test_info_shows_mpi():
    p = run_command(2, "info")
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("MPI: mpi4py") == 1 and "2 rank(s)" in p.stdout, p.stdout
