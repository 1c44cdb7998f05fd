"""The dask side of a distributed run: which cluster, and tasks submitted a bounded number at a time."""

from __future__ import annotations

import contextlib
import itertools
import os

__all__ = ["open_client", "completed"]


@contextlib.contextmanager
def open_client(client, scheduler, workers, processes):
    """The dask client to use: ``client``, one connected to ``scheduler``, or a new LocalCluster (closed afterwards)."""
    if client is not None:
        yield client
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError as error:  # pragma: no cover - distributed is a dependency
        raise ImportError("distributed segmentation needs dask.distributed and zarr: pip install 'napari-cellrefine[distributed]'") from error
    if scheduler is not None:
        with Client(scheduler) as connected:
            yield connected
        return
    n_workers = int(workers or 1)
    threads = max(1, (os.cpu_count() or 1) // n_workers)
    kwargs = {"env": {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}} if processes else {}
    with (
        LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=processes, dashboard_address=":0", **kwargs) as cluster,
        Client(cluster) as local,
    ):
        yield local


def completed(dask_client, function, calls, live: set):
    """Run ``function(*args)`` for each ``args`` in ``calls`` on the cluster, a bounded number at a time
    (4 per worker thread, at least 64: the scheduler never holds a million tasks); yields each result as it finishes.
    ``live`` holds the futures in flight (the caller cancels them when the run is closed)."""
    from distributed import as_completed

    calls = iter(calls)
    in_flight = max(64, 4 * sum(dask_client.nthreads().values()))
    queue = as_completed()
    for args in itertools.islice(calls, in_flight):
        future = dask_client.submit(function, *args, pure=False)
        live.add(future)
        queue.add(future)
    for future in queue:
        live.discard(future)
        result = future.result()
        for args in itertools.islice(calls, 1):
            following = dask_client.submit(function, *args, pure=False)
            live.add(following)
            queue.add(following)
        yield result
