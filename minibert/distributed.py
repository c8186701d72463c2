"""Data parallelism over MPI: one broadcast at the start, one allreduce per step.

Every rank holds the whole model and takes its slice of each batch. Because all parameters
live in one flat buffer and all gradients in its twin (``params.py``), a step needs exactly
one collective call over the gradients, whatever the model:

    start:      Bcast(store.data, root=0)                 every rank starts from rank 0's bits
                check_same_bits(store.data)               ... and a hash proves it
    each step:  rows b0 .. b1 of the global batch         rank r's slice, b1 - b0 = B / N
                backward, the loss weighted by the slice's share of the global batch
                Allreduce(IN_PLACE, store.grad, SUM)      the global batch's gradient, on every rank
                clip_grad_norm(store.grad)                the global norm: same bits on every rank
                AdamW step                                the same update on every rank

Scaling. The loss of the global batch of B sequences is a weighted mean, e.g. for
pretraining ``sum_n w_n l_n / W + mean_b l_nsp_b`` with W = sum of the masked-LM weights.
Rank r's slice has its own W_r and B_r = B / N, and its forward computes its own means.
So rank r back-propagates ``(W_r / W) mlm_loss_r + (B_r / B) nsp_loss_r``: the ranks'
gradients then add up to the gradient of the global loss, and the allreduce is a plain sum
(no pass over BERT-Base's 440 MB buffer to divide it afterwards). ``share`` gives these weights.

Dropout. Each rank's forward draws its rows of the global batch's dropout masks
(``model.batch_start``: the element index of a mask starts at the slice's first row), so N
ranks apply exactly the masks of one process running the whole batch.

N ranks versus one. With the same masks, the same batch and the same weights, the only
difference is the order of the additions in the gradient: one process sums the B rows
inside each matrix product, N ranks sum B / N rows each and the allreduce adds the N
partial sums. Floating-point addition is not associative, so the gradients agree to the
rounding of those sums (a few ulps of the largest term), and the parameters after 5 AdamW
steps differed by 5e-16 (float64) and 3e-7 (float32) of their largest value in
``tests/test_distributed.py``: bit equality cannot be asked for, and no bound much tighter
than the rounding of a sum of B terms is possible.

Same bits on every rank. The MPI standard advises that an allreduce give every rank the
same result (MPICH and Open MPI do for a built-in sum), and everything after it (clipping,
AdamW, at any thread count) is deterministic, so the ranks' parameters stay identical;
``check_same_bits`` verifies it where it is cheap (at the start, on resume and at every
checkpoint), rather than trusting it.

Without MPI. ``world()`` returns a one-rank stand-in with the same methods when the process
was not started by an MPI launcher (or mpi4py is not installed): the training loop runs the
same code path, the collectives being copies or nothing.

On the GPU. Each rank works on device ``local_rank % device_count`` of its machine
(``local_rank``: its rank among the ranks of that machine, from MPI's shared-memory split
or the launcher's environment), chosen before CuPy or Numba allocate anything
(``backend.select_gpu``): without it every rank would share GPU 0. For CuPy buffers
``allreduce_`` uses NCCL (``cupy.cuda.nccl``) when every rank can, after synchronizing the
current stream; else mpi4py on the device buffer when the MPI library is CUDA-aware
(``MINIBERT_CUDA_AWARE_MPI=1``), else a copy through host memory. Whether NCCL is usable is
decided together (``make_nccl``): each rank's verdict is gathered before anyone enters a
collective call that needs NCCL, so either all ranks use it or all fall back, and rank 0
says so once; never one rank waiting in a broadcast for a rank that gave up.

Threads. N ranks on one machine share its cores: ``configure_threads`` gives each rank's
kernels ``cores / ranks on this node`` threads (the policy of ``kernels/_threads.py``: our
threads, BLAS on one thread inside a task), unless ``NUMBA_NUM_THREADS`` says otherwise.
"""
from __future__ import annotations

import hashlib
import os
import sys
import warnings

import numpy as np

from .backend import LOCAL_RANK_VARS, is_gpu_array, launcher_local_rank  # noqa: F401 (LOCAL_RANK_VARS: re-exported)

#: Environment variables that MPI launchers set in every process they start: MPICH's Hydra
#: and Intel MPI (PMI_*), Open MPI (OMPI_*), PMIx launchers such as Slurm's srun (PMIX_*).
LAUNCHER_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")



def launched_size() -> int:
    """The number of processes an MPI launcher says it started (1 without a launcher)."""
    for var in LAUNCHER_SIZE_VARS:
        v = os.environ.get(var)
        if v and v.isdigit():
            return int(v)
    return 1


def local_rank() -> int:
    """This process's rank among the ranks on its machine: the communicator's (MPI's
    shared-memory split) once ``world()`` has made it, else the launcher's environment
    (``LOCAL_RANK_VARS``), else 0. Used to pick the GPU (``backend.select_gpu``) without
    starting MPI."""
    if _WORLD is not None:
        return _WORLD.local_rank
    return launcher_local_rank()


def launched_under_mpi() -> bool:
    """Whether an MPI launcher started this process (``mpiexec``, ``mpirun``, ``srun``)."""
    return any(var in os.environ for var in LAUNCHER_SIZE_VARS + ("PMI_RANK", "PMIX_RANK"))


class OneRank:
    """The communicator of a single process: rank 0 of 1. Every collective is the identity
    (a reduction over one rank is its own value), so code written for N ranks runs
    unchanged. The same methods as ``MPIComm``."""
    rank = 0
    size = 1
    local_size = 1            # ranks on this machine
    local_rank = 0            # this rank among them
    library = "none (one process)"

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def broadcast_(self, buf, root: int = 0):
        """Overwrite ``buf`` (an array) with root's, in place."""
        return buf

    def allreduce_(self, buf):
        """Replace ``buf`` (an array) by the elementwise sum over ranks, in place."""
        return buf

    def allreduce_sum(self, values):
        """The sum over ranks of a small float64 vector (host array or list), a new array."""
        return np.array(values, dtype=np.float64)

    def allgather(self, obj) -> list:
        """Every rank's ``obj`` (any picklable object), in rank order."""
        return [obj]

    def barrier(self):
        pass

    def abort(self, code: int = 1):
        """End every rank of the job now, with exit status ``code``."""
        raise SystemExit(code)

    def __repr__(self):
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"


class MPIComm(OneRank):
    """mpi4py's ``COMM_WORLD``: the ranks an MPI launcher started."""

    def __init__(self, comm=None):
        from mpi4py import MPI  # lazy: minibert imports and runs without mpi4py
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_size = node.Get_size()
        self.local_rank = node.Get_rank()
        node.Free()
        self.library = " ".join(MPI.Get_library_version().split("\n")[0].split())
        self._nccl = None

    def broadcast_(self, buf, root: int = 0):
        if is_gpu_array(buf):
            host = _to_host(buf)
            self.comm.Bcast(host, root=root)
            buf.set(host)
            return buf
        self.comm.Bcast(_contiguous("buf", buf), root=root)
        return buf

    def allreduce_(self, buf):
        if is_gpu_array(buf):
            return self._allreduce_gpu(buf)
        self.comm.Allreduce(self.MPI.IN_PLACE, _contiguous("buf", buf), op=self.MPI.SUM)
        return buf

    def _allreduce_gpu(self, buf):
        """NCCL if CuPy has it; mpi4py on the device buffer if the MPI library is CUDA-aware
        (``MINIBERT_CUDA_AWARE_MPI=1``, it cannot be detected portably); else through host
        memory. The kernels that wrote ``buf`` run on CuPy's current stream: it is
        synchronized first, as MPI reads the memory outside that stream."""
        import cupy
        cupy.cuda.get_current_stream().synchronize()
        nccl = self._nccl_comm()
        if nccl is not None:
            from cupy.cuda import nccl as _n
            types = {np.dtype(np.float32): _n.NCCL_FLOAT32, np.dtype(np.float64): _n.NCCL_FLOAT64}
            stream = cupy.cuda.get_current_stream()
            nccl.allReduce(buf.data.ptr, buf.data.ptr, buf.size, types[np.dtype(buf.dtype)],
                           _n.NCCL_SUM, stream.ptr)
            stream.synchronize()
        elif os.environ.get("MINIBERT_CUDA_AWARE_MPI") == "1":
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        else:
            host = _to_host(buf)
            self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
            buf.set(host)
        return buf

    def _nccl_comm(self):
        """One NCCL communicator over the ranks, made on first use by all ranks together
        (``make_nccl``); None where any rank cannot use NCCL."""
        if self._nccl is None:
            self._nccl = make_nccl(self.comm, self.rank, self.size) or False
        return self._nccl or None

    def allreduce_sum(self, values):
        v = np.array(values, dtype=np.float64)
        self.comm.Allreduce(self.MPI.IN_PLACE, v, op=self.MPI.SUM)
        return v

    def allgather(self, obj) -> list:
        return self.comm.allgather(obj)

    def barrier(self):
        self.comm.Barrier()

    def abort(self, code: int = 1):
        self.comm.Abort(int(code))


_WORLD = None


def world():
    """This process's communicator: ``MPIComm`` when an MPI launcher started it, else
    ``OneRank``. A launch of several processes without mpi4py installed is an error (they
    would each train alone and write over each other's checkpoints)."""
    global _WORLD
    if _WORLD is None:
        if not launched_under_mpi():
            _WORLD = OneRank()
        else:
            try:
                import mpi4py  # noqa: F401
            except ImportError:
                if launched_size() > 1:
                    raise RuntimeError(
                        f"started as one of {launched_size()} MPI processes, but mpi4py is not "
                        "installed: install it (pip install 'minibert[dist]') or run one "
                        "process") from None
                _WORLD = OneRank()
            else:
                _WORLD = MPIComm()
                if "cupy" in sys.modules:     # CuPy in use: its device, before it allocates
                    from .backend import select_gpu
                    select_gpu(_WORLD.local_rank)
    return _WORLD


def _load_nccl():
    from cupy.cuda import nccl
    return nccl


def make_nccl(comm, rank: int, size: int, load=_load_nccl):
    """An NCCL communicator over the ``size`` ranks of the mpi4py communicator ``comm``
    (this process being ``rank``), or None on every rank where any rank cannot have one.

    NCCL's setup is collective: rank 0 makes a unique id, broadcasts it, and every rank
    joins with it. A rank that cannot take part (CuPy without NCCL, no id, no device) must
    not leave the others waiting in the broadcast or the join, so each step that can fail
    on one rank alone is followed by an ``allgather`` of every rank's verdict, and the next
    step starts only if all succeeded:

        1. load the NCCL module (rank 0 also makes the id)     -> allgather: all ok?
        2. broadcast the id, create the communicator           -> allgather: all ok?

    If any rank failed, all return None (those that made a communicator destroy it) and
    rank 0 warns once, naming the ranks and the first reason. (What this cannot catch: a
    rank that dies inside NCCL's own join, which NCCL itself waits for.) ``load`` returns
    the ``cupy.cuda.nccl`` module (a parameter for the tests)."""
    def agreed(ok, reason):
        verdicts = comm.allgather((bool(ok), reason))
        bad = [(r, why) for r, (good, why) in enumerate(verdicts) if not good]
        if bad and rank == 0:
            warnings.warn(f"NCCL is not usable on rank(s) {[r for r, _ in bad]} of {size} "
                          f"({bad[0][1]}): every rank sums the gradients through MPI instead",
                          RuntimeWarning, stacklevel=3)
        return not bad

    nccl = uid = reason = None
    try:
        nccl = load()
        if rank == 0:
            uid = nccl.get_unique_id()
    except Exception as exc:                  # no NCCL in this CuPy, no GPU, ...
        reason = f"{type(exc).__name__}: {exc}"
    if not agreed(reason is None, reason):
        return None
    uid = comm.bcast(uid, root=0)
    communicator = None
    try:
        communicator = nccl.NcclCommunicator(size, uid, rank)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
    if not agreed(reason is None, reason):
        if communicator is not None:
            communicator.destroy()
        return None
    return communicator


def mpi_info() -> dict:
    """What ``minibert info`` shows: mpi4py's version and the MPI library (without starting
    MPI when no launcher started this process), and this job's rank count."""
    try:
        import mpi4py
    except ImportError:
        return {"mpi4py": None, "library": None, "ranks": launched_size()}
    info = {"mpi4py": mpi4py.__version__, "ranks": launched_size()}
    if launched_under_mpi():
        comm = world()
        info.update(library=comm.library, ranks=comm.size)
    else:
        from mpi4py import MPI  # starts MPI as a singleton: cheap, and tells the library
        info["library"] = " ".join(MPI.Get_library_version().split("\n")[0].split())
    return info


# ----------------------------------------------------------------------------- parameters
def broadcast_parameters(comm, data):
    """Overwrite every rank's flat parameter buffer ``data`` with rank 0's, then check that
    all ranks hold the same bits. Returns ``data``."""
    comm.broadcast_(data, root=0)
    check_same_bits(comm, data, "parameters after the broadcast from rank 0")
    return data


def digest(buf) -> str:
    """SHA-256 of an array's bytes (host or device)."""
    return hashlib.sha256(np.ascontiguousarray(_to_host(buf)).tobytes()).hexdigest()


def check_same_bits(comm, buf, what: str = "parameters"):
    """Raises RuntimeError naming the ranks whose ``buf`` differs from rank 0's."""
    if comm.size == 1:
        return
    hashes = comm.allgather(digest(buf))
    bad = [r for r, h in enumerate(hashes) if h != hashes[0]]
    if bad:
        raise RuntimeError(f"{what}: ranks {bad} hold other bits than rank 0 "
                           f"(SHA-256 {hashes[bad[0]][:12]} vs {hashes[0][:12]})")


# ----------------------------------------------------------------------------- gradients
def allreduce_gradients(comm, grad, scale=None):
    """The one collective of a step: ``grad`` (the flat gradient buffer) becomes the sum
    over ranks, in place, then is multiplied by ``scale`` if given (1 / N when every rank
    back-propagated the plain mean of its slice's loss and the slices are equal: the mean
    over the global batch). Returns ``grad``. Where the ranks already weighted their losses
    by ``share`` (the training loop does), no scale is needed: the sum is the global
    gradient. The global norm for clipping is then ``clip_grad_norm(grad, ...)`` on the
    reduced buffer, the same number on every rank with no further communication."""
    comm.allreduce_(grad)
    if scale is not None and scale != 1:
        grad *= grad.dtype.type(scale)
    return grad


def share(part: float, total: float) -> float:
    """The weight of a rank's mean loss: ``part / total`` (its share of the masked
    positions, or of the sequences, of the global batch); 0 when the total is 0 (a batch
    with nothing to predict has loss 0 and gradient 0 on every rank)."""
    return float(part) / float(total) if total > 0 else 0.0


# ----------------------------------------------------------------------------- data
def rank_rows(batch_size: int, comm) -> slice:
    """Rank ``comm.rank``'s rows of a global batch of ``batch_size`` sequences: rows
    ``r B/N .. (r+1) B/N - 1``. Raises ValueError unless N divides ``batch_size`` (equal
    slices keep N ranks on the trajectory of one)."""
    n = comm.size
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size <= 0:
        raise ValueError(f"batch_size={batch_size!r} is invalid, expected a positive integer")
    if batch_size % n:
        lo, hi = batch_size // n * n, -(-batch_size // n) * n
        raise ValueError(f"batch_size={batch_size} does not divide by the number of MPI ranks "
                         f"({n}): expected a multiple of {n} (such as {lo or hi} or {hi}); the "
                         "global batch stays what you ask for, each rank takes an equal slice")
    per = batch_size // n
    return slice(comm.rank * per, (comm.rank + 1) * per)


# ----------------------------------------------------------------------------- failures
def exit_code(exc: BaseException) -> int:
    """The exit status of a job that ``exc`` ends: SystemExit's own, 2 for bad input
    (ValueError, TypeError, OSError, as the command line), 130 for an interrupt, else 1."""
    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else 1
    if isinstance(exc, KeyboardInterrupt):
        return 130
    return 2 if isinstance(exc, (ValueError, TypeError, OSError)) else 1


def run_or_abort(comm, fn, report):
    """``fn()``'s return value; with several ranks, an exception on this rank ends the whole
    job: ``report(message, exc)`` (the message names the rank and the reason), then
    ``MPI_Abort`` with ``exit_code(exc)``. Without it the other ranks would wait forever in
    the next collective call. Rank 0 writes every checkpoint atomically, so the abort
    leaves the last complete one as it was. With one rank the exception propagates."""
    try:
        return fn()
    except BaseException as e:
        code = exit_code(e)
        if comm.size == 1 or code == 0:
            raise
        reason = str(e) if isinstance(e, (ValueError, TypeError, OSError, SystemExit)) \
            else f"{type(e).__name__}: {e}"
        report(f"rank {comm.rank} of {comm.size}: {reason}", e)
        comm.abort(code)
        raise                                   # abort returned (a stand-in): propagate


# ----------------------------------------------------------------------------- threads
def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                      # not Linux
        return os.cpu_count() or 1


def threads_per_rank(comm, cores: int | None = None) -> int:
    """``cores / ranks on this machine``, at least 1."""
    cores = available_cores() if cores is None else int(cores)
    return max(1, cores // max(1, comm.local_size))


def configure_threads(comm) -> int:
    """Gives this rank's kernels ``threads_per_rank`` threads (numba.set_num_threads), and
    BLAS as many for the calls it makes outside the kernels' tasks, unless
    ``NUMBA_NUM_THREADS`` is set (the user's choice wins) or this is the only rank on its
    machine. Returns the number of threads the kernels now use."""
    import numba
    if comm.local_size > 1 and "NUMBA_NUM_THREADS" not in os.environ:
        n = min(threads_per_rank(comm), numba.config.NUMBA_NUM_THREADS)
        numba.set_num_threads(n)
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=n, user_api="blas")
    return numba.get_num_threads()


# ----------------------------------------------------------------------------- helpers
def _contiguous(name, buf):
    if not (isinstance(buf, np.ndarray) and buf.flags.c_contiguous):
        raise TypeError(f"{name} must be a C-contiguous NumPy or CuPy array, got "
                        f"{type(buf).__name__}")
    return buf


def _to_host(buf):
    return buf.get() if is_gpu_array(buf) else buf
