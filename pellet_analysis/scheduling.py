"""Running a run's Dask graphs on the configured scheduler: local threads or processes, or a dask.distributed cluster."""

from __future__ import annotations

from .config import RunConfig
from .records import ImageFailure, ImageSummary
from .workers import one_opencv_thread, opencv_threads

__all__ = ["compute"]


def compute(tasks, config: RunConfig, progress=None, pool=None, costs=None) -> list:
    """Run delayed tasks on the configured scheduler, reporting each finished image; their results in the order given.

    ``progress`` is called with every image record (:class:`~pellet_analysis.records.ImageSummary`
    or :class:`~pellet_analysis.records.ImageFailure`) a task returns, as it
    finishes. ``costs`` maps task keys to their expected work (any unit): on
    the local schedulers the tasks ready at the start run costliest first
    (longest processing time first), so that no worker is left with a large
    pellet while the others idle; tasks without a cost keep Dask's order
    after them. ``pool``: worker processes for the ``processes`` scheduler
    (:func:`~pellet_analysis.workers.process_pool`).
    """
    import dask

    progress = progress or (lambda record: None)
    if not tasks:
        return []
    if config.scheduler.startswith("tcp://"):
        from distributed import Client, as_completed

        with Client(config.scheduler) as client:
            client.run(one_opencv_thread)  # the cluster's workers run one task per thread already
            futures = client.compute(tasks)
            index = {f.key: i for i, f in enumerate(futures)}
            results = [None] * len(futures)
            for future in as_completed(futures):
                results[index[future.key]] = future.result()
                if isinstance(results[index[future.key]], (ImageSummary, ImageFailure)):
                    progress(results[index[future.key]])
            return results
    from dask.callbacks import Callback

    class _Progress(Callback):
        @staticmethod
        def _costliest_last(state):
            if costs:  # the scheduler takes ready tasks from the end of the list
                state["ready"].sort(key=lambda key: costs.get(key, 0))

        def _start_state(self, dsk, state):
            self._costliest_last(state)

        def _posttask(self, key, result, dsk, state, worker_id):
            # called after the tasks this one made ready were added, before the next are sent: those
            # too wait behind costlier ones (Dask's own order would run them first, one by one)
            self._costliest_last(state)
            if isinstance(result, (ImageSummary, ImageFailure)):
                progress(result)

    kwargs = {"scheduler": _local_scheduler(config.scheduler)}
    if config.n_workers and config.scheduler != "synchronous":
        kwargs["num_workers"] = config.n_workers
    if config.scheduler == "processes":
        # one task per dispatch: Dask's default batches of 6 would run a slide's pellets one after another
        kwargs["chunksize"] = 1
        if pool is not None:
            kwargs["pool"] = pool  # its workers were started with one OpenCV thread each
        else:
            kwargs["initializer"] = one_opencv_thread
    # Dask runs one task per worker: more OpenCV threads per task would only oversubscribe the
    # cores. Set for this computation's threads and restored after it, not for the caller's process.
    with opencv_threads(1), _Progress():
        return list(dask.compute(*tasks, **kwargs))


def _local_scheduler(name: str):
    """Dask's scheduler function for a local scheduler's name.

    Dask resolves a name by first looking for a dask.distributed client,
    which imports distributed (0.16 s, before the first task is sent); a
    function is used as it is.
    """
    if name == "processes":
        from dask.multiprocessing import get
    elif name == "threads":
        from dask.threaded import get
    else:
        from dask.local import get_sync as get
    return get
