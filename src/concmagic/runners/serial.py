"""Run a cell function N times in turn on the calling thread: the baseline.

Serial is what every speedup is measured against. Each worker id runs to
completion before the next starts, on the thread that called ``run`` (the
notebook's main thread), so it also shows the cost of the work without any
concurrency at all.
"""
import os
import threading
import time

from ..comm import DEFAULT_TIMEOUT, MemoryWorld, wants_comm
from ..comm import attach as attach_comm
from ..errors import RunTimeout
from ..report import Report, WorkerRun
from ._capture import capture_threads
from ._common import Stoppable, attach, measured

__all__ = ["run_serial"]


class _Expired(Exception):
    """The run's time was up before this worker's cell began."""


def run_serial(func, n, *, timeout=None, measure=None, comm_timeout=DEFAULT_TIMEOUT):
    """Run ``func(worker_id=i, n_workers=n)`` for i in 0..n-1, one after another.

    A ``func`` taking ``comm`` gets in-memory channels on which only
    messages to later workers can arrive (see concmagic.comm.SerialComm).
    """
    world = MemoryWorld(n, comm_timeout, model="serial") if wants_comm(func) else None
    with measured(measure) as done:
        if measure is not None:
            # Every worker runs on this thread; the report counts each one's
            # CPU between its own start and end.
            for slot in range(n):
                measure.register_thread(slot)
        report, t0 = _run_serial(func, n, timeout, world)
        samples = done(t0)
    if world is not None:
        attach_comm(report, world.stats())
    return attach(report, samples)


def _run_serial(func, n, timeout, world=None):
    """The run itself; returns (report, its start time)."""
    stopper = Stoppable()
    expired = threading.Event()
    timer = None
    runs = []
    t0 = time.perf_counter()

    def guarded(**kwargs):
        # Checked after the stopper counts the cell as running. The watchdog
        # sets `expired` before it looks for a running cell to stop, so time
        # that runs out between two workers (while one's output or traceback
        # is collected, when there is no cell to stop) still stops the run
        # here; checking only before starting the next worker lost it, and
        # that worker then ran without any timeout.
        if expired.is_set():
            raise _Expired()
        return func(**kwargs)

    if timeout is not None:
        reason = RunTimeout(f"the run did not finish within its timeout of {timeout:g} s; stopped")

        def watchdog():                           # stops the cell running when time is up
            expired.set()
            stopper.stop(reason)

        timer = threading.Timer(timeout, watchdog)
        timer.daemon = True
        timer.start()
    try:
        with capture_threads() as capture:
            for i in range(n):
                run = None if expired.is_set() else _run_one(guarded, i, n, t0, stopper, capture,
                                                              world)
                if run is None:
                    run = WorkerRun(worker_id=i, pid=os.getpid(), error=RunTimeout(
                        f"worker {i} was not started: the run's timeout of {timeout:g} s expired"))
                runs.append(run)
                if isinstance(run.error, KeyboardInterrupt):
                    raise run.error
    finally:
        if timer is not None:
            timer.cancel()
            timer.join()
    report = Report(model="serial", n_workers=n, wall=time.perf_counter() - t0, workers=runs)
    return report, t0


def _run_one(func, worker_id, n, t0, stopper, capture, world=None):
    """One worker's WorkerRun; None if the run expired before its cell began."""
    run = WorkerRun(worker_id=worker_id, pid=os.getpid(), thread_id=threading.get_native_id())
    capture.register()
    c0 = time.thread_time()
    run.start = time.perf_counter() - t0
    if world is None:
        run.result, error = stopper.call(func, worker_id=worker_id, n_workers=n)
    else:
        run.result, error = stopper.call(func, worker_id=worker_id, n_workers=n,
                                         comm=world.comm(worker_id))
        world.finish(worker_id, error)
    run.end = time.perf_counter() - t0
    run.cpu = time.thread_time() - c0
    run.stdout, run.stderr = capture.output()
    capture.unregister()
    if isinstance(error, _Expired):
        return None
    if error is not None:
        # skip=2: neither Stoppable.call's frame nor the guard's
        run.error, run.traceback = stopper.resolve(error, skip=2)
    return run
