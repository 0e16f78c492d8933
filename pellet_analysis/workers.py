"""The pool of worker processes of the ``processes`` scheduler, started before the pipeline is imported.

Kept free of the pipeline's heavy imports, so the command line can start the
workers first: they then import the pipeline while the main process does the
same, instead of after it.
"""

from __future__ import annotations

import importlib
import os
import threading
from contextlib import contextmanager

__all__ = ["process_pool", "start_server", "opencv_threads", "one_opencv_thread"]

#: One BLAS / OpenMP thread per worker process, as dask.distributed's nanny sets for its workers:
#: the pool already runs one process per core, and OpenBLAS's extra threads (the background
#: field's matrix products) spin on the core the other worker needs.
_ONE_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

#: What a worker's first tasks import: the tasks' own module, and what a slide's
#: plan imports on first use (Dask's array; the zarr store of tifffile and its codecs). Imported
#: once in the fork server, not in every worker's first task, which on the 40k benchmark slide
#: made the plan take 0.6 s instead of 0.3 s. (Tasks pass Dask a scheduler function, so that
#: Dask's scheduler lookup does not import distributed in the workers.)
_WORKER_MODULES = (f"{__package__}.tasks", "dask.array", "tifffile", "zarr", "imagecodecs")

#: What the fork server imports: the workers' modules, and the exit handler that spares the server
#: the interpreter's teardown (:mod:`pellet_analysis._server_exit`; never imported by workers
#: started without a fork server, which must exit normally).
_SERVER_MODULES = (*_WORKER_MODULES, f"{__package__}._server_exit")


def process_pool(n_workers: int | None = None):
    """One pool of ``n_workers`` (default: the CPU count) worker processes, each already importing the pipeline.

    Workers are forked from a server that has imported the pipeline
    (:func:`_context`; Dask's spawn context where there is no forkserver),
    with Dask's worker initialiser; a pool starts a worker only when a task
    finds none idle, so one warm-up task per worker starts them all at once.
    """
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    from dask.multiprocessing import get_context, initialize_worker_process

    n_workers = n_workers or os.cpu_count()
    context = _context(get_context)
    pool = ProcessPoolExecutor(n_workers, mp_context=context, initializer=partial(initialize_worker_process, user_initializer=one_opencv_thread))
    if context.get_start_method() == "forkserver":
        start_server()  # returns at once (or at once again); the server imports the pipeline meanwhile
        # each submit waits for the server to fork (after its imports): not in this thread, which
        # goes on importing the pipeline itself
        threading.Thread(target=_warm, args=(pool, n_workers), name="warm-workers", daemon=True).start()
    else:
        with _seeded_env():
            _warm(pool, n_workers)
    return pool


def start_server() -> None:
    """Start the fork server of :func:`process_pool` now, where the platform has one; a no-op once it runs.

    It returns at once: the server imports :data:`_WORKER_MODULES` in its own
    process, so a caller that starts it first (the command line, before it
    reads its config) overlaps those imports with its own work.
    """
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return
    from multiprocessing import forkserver

    multiprocessing.get_context("forkserver").set_forkserver_preload(list(_SERVER_MODULES))
    with _seeded_env():  # a new process keeps the environment it started with
        forkserver.ensure_running()


@contextmanager
def _seeded_env():
    """Dask's hash seed and :func:`_one_thread_env` while worker processes start; the caller's environment restored after."""
    seeded = os.environ.get("PYTHONHASHSEED") in (None, "0")
    before = os.environ.get("PYTHONHASHSEED")
    if seeded:
        os.environ["PYTHONHASHSEED"] = "6640"  # Dask's choice: the same hashing in every worker
    try:
        with _one_thread_env():
            yield
    finally:
        if seeded:
            if before is None:
                os.environ.pop("PYTHONHASHSEED", None)
            else:
                os.environ["PYTHONHASHSEED"] = before


def one_opencv_thread() -> None:
    """Keep OpenCV to one thread in a worker process of the pool (its initialiser): the pool runs a process per core."""
    import cv2

    cv2.setNumThreads(1)


_opencv_lock = threading.Lock()
_opencv_users = 0
_opencv_before = None


@contextmanager
def opencv_threads(n: int):
    """OpenCV's thread count set to ``n`` while any caller is inside, and put back as it was when the last leaves.

    Counted, so that nested or concurrent computations (two batches run from
    two threads of one napari session) neither restore it while another still
    runs nor leave it changed after both.
    """
    global _opencv_users, _opencv_before
    import cv2

    with _opencv_lock:
        if _opencv_users == 0:
            _opencv_before = cv2.getNumThreads()
            cv2.setNumThreads(int(n))
        _opencv_users += 1
    try:
        yield
    finally:
        with _opencv_lock:
            _opencv_users -= 1
            if _opencv_users == 0:
                cv2.setNumThreads(_opencv_before)


def _warm(pool, n_workers: int) -> None:
    """One warm-up task per worker: the pool starts a worker for each task that finds none idle."""
    try:
        for _ in range(n_workers):
            pool.submit(_warm_worker)
    except RuntimeError:  # the pool was shut down first (a run with nothing to do)
        pass


def _context(dask_context):
    """The forkserver context, where the platform has one (:func:`start_server` starts it with the pipeline imported); else Dask's (spawn).

    Workers forked from the server start with the pipeline imported, instead of
    each importing it (0.9 s of CPU each) while the main process imports
    it too. Like spawn, and unlike fork, no worker inherits the main
    process's threads. The server keeps the environment it started with
    (see :func:`_one_thread_env`), and so do the workers it forks.
    """
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return dask_context()
    return multiprocessing.get_context("forkserver")


@contextmanager
def _one_thread_env():
    """:data:`_ONE_THREAD_ENV` set to 1 (unless the user set them) while worker processes are spawned; restored after."""
    added = [name for name in _ONE_THREAD_ENV if name not in os.environ]
    os.environ.update(dict.fromkeys(added, "1"))
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def _warm_worker() -> int:
    """Import what a pellet task needs (a worker's first task)."""
    for module in _WORKER_MODULES:
        importlib.import_module(module)
    return os.getpid()
