"""The engine: ``run(func, n, model)`` -> Report, the public entry point.

Validates the request, hands it to the runner for the model, and raises
WorkerError when any worker failed (the error carries the whole report, so
the other workers' results are never lost).
"""
import numbers

from .errors import WorkerError

#: Seconds a comm.recv, barrier or bcast waits before CommTimeout (the
#: value of concmagic.comm.DEFAULT_TIMEOUT, repeated so that importing the
#: engine does not import the comm module).
DEFAULT_COMM_TIMEOUT = 10.0

__all__ = ["MODELS", "run", "shutdown", "status"]

#: Models ``run`` accepts ("dask" needs the optional `distributed` package).
MODELS = ("serial", "threads", "processes", "asyncio", "dask")

# The longest wait the runners can ask of the OS: poll(), under
# multiprocessing.connection.wait, takes an int of milliseconds, and a longer
# timeout (or inf) raised OverflowError there and in threading waits. A limit
# of 24.8 days is as good as none, so anything longer means "no timeout".
_TIMEOUT_MAX = (2**31 - 1) / 1000


_loaded = {}


def _imported(module, name):
    """``from .module import name``, done once: the runners load on first use,
    and an import statement on every run cost more than a worker's hand-off."""
    try:
        return _loaded[module, name]
    except KeyError:
        import importlib
        value = getattr(importlib.import_module(f".{module}", __package__), name)
        _loaded[module, name] = value
        return value


def _check_workers(n):
    if type(n) is int and n >= 1:          # the common case, without the ABC checks below
        return n
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"n must be a positive integer; got {n!r}")
    return int(n)


def _check_timeout(timeout, name="timeout"):
    if timeout is None:
        return None
    if type(timeout) in (int, float) and 0 < timeout <= _TIMEOUT_MAX:   # the common case
        return float(timeout)
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not timeout > 0:
        raise ValueError(f"{name} must be a positive number of seconds or None; got {timeout!r}")
    if timeout > _TIMEOUT_MAX:
        return None
    return float(timeout)


def run(func, n=4, model="threads", *, timeout=None, start_method=None, measure=True,
        progress=None, raise_errors=True, comm_timeout=DEFAULT_COMM_TIMEOUT, share=None,
        scheduler=None):
    """Run ``func(worker_id=i, n_workers=n)`` for i in 0..n-1 under ``model``.

    Returns a Report. If a worker fails, raises WorkerError (with ``.report``)
    unless ``raise_errors`` is false. ``timeout`` (seconds) stops the workers
    still running then. ``start_method`` picks how processes start
    ("forkserver" or "spawn"; processes model only). ``measure`` runs the
    CPU sampler and GIL probe beside the workers (``report.samples``,
    ``report.gil_wait``); switch it off for the last microseconds.
    ``progress`` (a concmagic.progress.Progress) shows live lines on long
    runs in threads, processes and asyncio (serial work runs on the calling
    thread, which then has no time to draw).

    With ``model="asyncio"`` the workers are n tasks on one event loop, in a
    thread of concmagic's own (never the caller's loop, so this works from a
    Jupyter kernel or inside ``asyncio.run``). ``func`` is then normally a
    coroutine function (``async def``), so it may ``await``; a plain function
    is accepted and called as it is inside its task, holding the loop until
    it returns (the other tasks wait: blocking code gains nothing from
    asyncio). An awaitable it returns is awaited.

    Workers can talk: a ``func`` with a ``comm`` parameter (a cell that
    mentions ``comm``) is also given ``comm=``, its end of the run's
    channels (concmagic.comm: ``send``, ``recv``, ``barrier``, ``bcast``;
    in asyncio the waiting ones are awaited). A recv, barrier or bcast waits
    at most ``comm_timeout`` seconds (None: no limit), then raises
    CommTimeout in that worker; ``report.comm`` counts the messages, bytes
    and time.

    ``share`` (processes only) puts NumPy arrays in shared memory instead of
    pickling them: names (``["A", "B"]`` or ``"A,B"``) are looked up in
    ``func``'s globals and rebound there to views of the shared memory,
    which the workers attach under the same names, same shape and dtype,
    without a copy; their writes are in the notebook's arrays after the run
    (real shared memory, races included). A mapping ``{"A": array}`` rebinds
    nothing: the workers see the global ``A``, the views are
    ``report.shared``. An array that already is such a view (the same
    object) is reused with no copy; anything else is copied in. Bad names
    raise ShareError before anything starts. ``report.shipping`` counts what
    was pickled and sent, and what was shared instead.

    With ``model="dask"`` the workers are n tasks on n workers of a Dask
    cluster (concmagic.runners.dask): the one at ``scheduler`` (an address,
    ``tcp://host:port``), or with None a LocalCluster on 127.0.0.1 that
    concmagic starts once and reuses. ``func`` is shipped as for processes;
    ``comm`` is not available there, nor the sampler and GIL probe.
    Without `distributed`, DaskUnavailable (an ImportError) says
    ``pip install 'concmagic[dask]'``.
    """
    if not callable(func):
        raise TypeError(f"func must be callable; got {type(func).__name__}")
    n = _check_workers(n)
    timeout = _check_timeout(timeout)
    comm_timeout = _check_timeout(comm_timeout, "comm_timeout")
    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(map(repr, MODELS))}; got {model!r}")
    if start_method is not None and model != "processes":
        raise ValueError(f"start_method applies to model='processes' only; got model={model!r}")
    if share is not None and model != "processes":
        raise ValueError(f"share applies to model='processes' only (threads, asyncio and serial "
                         f"run in this process and see its arrays already); got model={model!r}")
    if scheduler is not None and model != "dask":
        raise ValueError(f"scheduler applies to model='dask' only; got model={model!r}")
    # A cell that imports an extension not marked free-threading safe turns
    # the GIL back on (free-threaded CPython only); the report says so.
    watch = _imported("freethreading", "GilWatch")()
    instruments = None
    if measure and model != "dask":               # Dask tasks time their own CPU
        Measurement = _imported("measure", "Measurement")
        # Worker processes have GILs of their own: the probe, which watches
        # this process's GIL, would say nothing about them.
        instruments = Measurement(n, gil=model != "processes")
    if model == "serial":
        run_serial = _imported("runners.serial", "run_serial")
        report = run_serial(func, n, timeout=timeout, measure=instruments,
                            comm_timeout=comm_timeout)
    elif model == "threads":
        run_threads = _imported("runners.threads", "run_threads")
        report = run_threads(func, n, timeout=timeout, measure=instruments, progress=progress,
                             comm_timeout=comm_timeout)
    elif model == "asyncio":
        run_asyncio = _imported("runners.aio", "run_asyncio")
        report = run_asyncio(func, n, timeout=timeout, measure=instruments, progress=progress,
                             comm_timeout=comm_timeout)
    elif model == "dask":
        run_dask = _imported("runners.dask", "run_dask")
        report = run_dask(func, n, scheduler=scheduler, timeout=timeout, progress=progress)
    else:
        run_processes = _imported("runners.processes", "run_processes")
        report = run_processes(func, n, timeout=timeout, start_method=start_method,
                               measure=instruments, progress=progress,
                               comm_timeout=comm_timeout, share=share)
    report.gil_enabled = watch.enabled
    note = watch.note()
    if note:
        report.notes.append(note)
    if raise_errors and report.errors:
        raise WorkerError(report)
    return report


def shutdown():
    """Stop the warm threads, event loop, processes and Dask cluster, and the
    measurement's parked threads (all restarted when needed)."""
    from .measure import close_instruments
    from .runners import aio, dask, processes, threads
    threads.shutdown()
    aio.shutdown()
    processes.shutdown()
    dask.shutdown()
    close_instruments()


def status():
    """What is running: warm threads, the event loop, worker processes, cores, the GIL."""
    import os
    import sys

    from .freethreading import free_threaded_build, gil_enabled
    from .runners import aio, dask, processes, threads
    return {
        "models": MODELS,
        "threads": threads.gang_status(),
        "asyncio": aio.loop_status(),
        "processes": processes.pool_status(),
        "start_methods": processes.START_METHODS,
        "dask": dask.cluster_status(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": sys.version.split()[0],
        "implementation": sys.implementation.name,
        "free_threaded_build": free_threaded_build(),
        "gil_enabled": gil_enabled(),
    }
