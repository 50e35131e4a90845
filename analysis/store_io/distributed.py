"""Run the analysis on a dask distributed cluster.

``analyze`` does all its heavy work through ``dask.compute`` / ``.values`` on dask-backed xarray
objects, so it runs on a cluster unchanged once a :class:`dask.distributed.Client` is the default
scheduler: the logits chunks are read by the workers (which must see the store at the same path: a
shared filesystem on a cluster), the per-chunk partial sums travel back, and the small per-sample
reductions finish in this process. Example::

    from analysis.store_io.distributed import client_for
    from analysis import analyze

    with client_for("tcp://scheduler:8786"):        # or client_for(None): a local cluster
        analyze("runs/demo/store.zarr", "runs/demo/analysis")

Requires ``distributed`` (pinned to the same version as ``dask``, e.g. ``distributed==2026.8.0``
with ``dask==2026.8.0``); it is imported only when :func:`client_for` is called.
"""

from __future__ import annotations

from typing import Any

__all__ = ["client_for"]


def client_for(address: str | None, *, n_workers: int = 2, threads_per_worker: int = 1,
               memory_limit: str | int = "auto", **cluster_kwargs: Any):
    """A :class:`dask.distributed.Client`, installed as the default scheduler; use it as a context manager.

    Parameters
    ----------
    address : str or None
        A running scheduler's address (``"tcp://host:8786"``, or a scheduler file path ending in
        ``.json``); ``None`` (or ``""``/``"local"``) starts a :class:`~dask.distributed.LocalCluster`
        of ``n_workers`` worker *processes*, owned by the client and closed with it.
    n_workers, threads_per_worker, memory_limit : int, int, str or int
        Local cluster size (ignored with an address).
    **cluster_kwargs
        More :class:`~dask.distributed.LocalCluster` arguments.

    Returns
    -------
    dask.distributed.Client
        Closing it (``with`` block exit or ``.close()``) closes a local cluster too.
    """
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("distributed analysis needs the 'distributed' package, pinned to dask's version "
                          "(pip install 'distributed==<dask version>')") from err

    if address and address != "local":
        if address.endswith(".json"):
            return Client(scheduler_file=address)
        return Client(address)
    cluster_kwargs.setdefault("dashboard_address", None)  # no web server, no port clash in tests/CI
    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True,
                           memory_limit=memory_limit, **cluster_kwargs)
    client = Client(cluster)
    # Client(cluster) does not own a cluster it was given; close the cluster when the client closes.
    _close = client.close

    def close(*args: Any, **kwargs: Any) -> Any:
        try:
            return _close(*args, **kwargs)
        finally:
            cluster.close()

    client.close = close  # type: ignore[method-assign]
    return client

