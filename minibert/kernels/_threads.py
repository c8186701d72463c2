"""The one threading policy of the CPU kernels: our threads, BLAS on one thread.

Every kernel of ``minibert.kernels`` that runs on several threads goes through
``run_tasks``: the work is cut into independent tasks (each writes its own part of the
outputs); ``numba.get_num_threads()`` threads, the calling thread one of them, each take the
next task when they are free; the Numba functions (``nogil``) and BLAS release the GIL, so
the tasks run in parallel. Meanwhile BLAS is held to one thread (threadpoolctl), for two
reasons measured on a 2-core machine:

* BLAS's own threads and ours would oversubscribe the cores (attention at
  (2, 12, 512, 64): 1.3x slower with BLAS's threads left on);
* an OpenBLAS worker spins for a while after each multi-threaded call (about 0.1 s by
  default): any other thread that runs then shares its core with a spinning thread.
  A GELU pass right after a two-thread GEMM ran no faster on two threads than on one.

So the matrix products of the model (``linear_cpu.py``) are split between our threads
too, each part a one-thread BLAS call, and BLAS never runs threads of its own during a
step. The cut never depends on the number of threads, and every task computes the same
operations whichever thread runs it: the results are the same bits at any thread count.

``run_rows(kernel, n, *args)`` is the form the row kernels use: ``kernel(*args, r0, r1)``
handles rows ``r0 <= r < r1`` and nothing else; the rows are cut into ``ROW_TASKS``
contiguous ranges (fewer for a small problem).
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numba
import numpy as np

#: Row kernels below this many array elements run on the calling thread: handing work to
#: the pool costs some 40 microseconds, as much as a pass over 64 K floats.
MIN_PARALLEL_ELEMENTS = 1 << 16

#: Row ranges per ``run_rows`` call (a function of nothing but this constant and n, so the
#: bits never depend on the thread count): enough to balance a few threads.
ROW_TASKS = 8

_POOLS = {}                      # worker count -> ThreadPoolExecutor, kept for the process
_BLAS = {"controller": None, "limiter": None, "depth": 0}
_LOCK = threading.Lock()
_LOCAL = threading.local()        # .in_task: this thread is running a task of run_tasks


def _pool(workers):
    with _LOCK:
        if workers not in _POOLS:
            _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="minibert-kernels")
        return _POOLS[workers]


@contextmanager
def _blas_single_threaded():
    """BLAS limited to one thread for the duration (our workers are the threads). Calls
    from several user threads at once share one limit: the first sets it, the last gives
    the user's setting back."""
    with _LOCK:
        if _BLAS["depth"] == 0:
            if _BLAS["controller"] is None:
                from threadpoolctl import ThreadpoolController
                _BLAS["controller"] = ThreadpoolController()
            _BLAS["limiter"] = _BLAS["controller"].limit(limits=1, user_api="blas")
        _BLAS["depth"] += 1
    try:
        yield
    finally:
        with _LOCK:
            _BLAS["depth"] -= 1
            if _BLAS["depth"] == 0:
                _BLAS["limiter"].restore_original_limits()
                _BLAS["limiter"] = None


def run_tasks(task, tasks, parallel=True):
    """Runs ``task(*t)`` for every t: on the calling thread alone when ``parallel`` is False
    (a small problem), there is one thread, or the caller is itself a task; else on
    ``numba.get_num_threads()`` threads, the calling thread one of them, each taking the
    next task when it is free. BLAS is held to one thread meanwhile in
    both cases (a BLAS left with its own threads both oversubscribes the cores and, idle
    between calls, costs milliseconds to wake). The first exception of a task stops the
    hand-out and is raised here."""
    threads = min(numba.get_num_threads(), len(tasks))
    # a task that runs tasks of its own runs them itself: its pool may have no free worker
    if threads <= 1 or not parallel or getattr(_LOCAL, "in_task", False):
        with _blas_single_threaded():       # one thread means one thread, BLAS's included
            for t in tasks:
                task(*t)
        return
    pending = iter(tasks)
    lock = threading.Lock()
    failed = []

    def drain():
        _LOCAL.in_task = True
        try:
            _drain()
        finally:
            _LOCAL.in_task = False

    def _drain():
        while True:
            with lock:
                t = None if failed else next(pending, None)
            if t is None:
                return
            try:
                task(*t)
            except BaseException:
                failed.append(True)
                raise

    with _blas_single_threaded():
        # the caller works too: one thread fewer to wake, and no core left waiting
        helpers = [_pool(threads - 1).submit(drain) for _ in range(threads - 1)]
        try:
            drain()
        finally:
            for h in helpers:
                h.result()


def run_rows(kernel, n, *args):
    """Runs ``kernel(*args, r0, r1)`` over rows ``[0, n)``, cut into at most ``ROW_TASKS``
    contiguous ranges, through ``run_tasks``; on the calling thread when the arrays among
    ``args`` hold fewer than ``MIN_PARALLEL_ELEMENTS`` elements."""
    size = sum(a.size for a in args if isinstance(a, np.ndarray))
    parts = max(1, min(ROW_TASKS, n))
    bounds = [n * i // parts for i in range(parts + 1)]
    tasks = [(bounds[i], bounds[i + 1]) for i in range(parts) if bounds[i] < bounds[i + 1]]
    run_tasks(lambda r0, r1: kernel(*args, r0, r1), tasks,
              parallel=size >= MIN_PARALLEL_ELEMENTS and len(tasks) > 1)
