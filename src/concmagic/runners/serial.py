"""Run a cell function N times in turn on the calling thread: the baseline.

Serial is what every speedup is measured against. Each worker id runs to
completion before the next starts, on the thread that called ``run`` (the
notebook's main thread), so it also shows the cost of the work without any
concurrency at all.
"""
import os
import threading
import time

from ..errors import RunTimeout
from ..report import Report, WorkerRun
from ._capture import capture_threads
from ._common import Stoppable, format_error

__all__ = ["run_serial"]


def run_serial(func, n, *, timeout=None):
    """Run ``func(worker_id=i, n_workers=n)`` for i in 0..n-1, one after another."""
    stopper = Stoppable()
    timer = None
    runs = []
    t0 = time.perf_counter()
    if timeout is not None:
        # The watchdog stops the cell that is running when time is up.
        reason = RunTimeout(f"the run did not finish within its timeout of {timeout:g} s; stopped")
        timer = threading.Timer(timeout, stopper.stop, args=(reason,))
        timer.daemon = True
        timer.start()
    try:
        with capture_threads() as capture:
            for i in range(n):
                if stopper.reason is not None:
                    runs.append(WorkerRun(worker_id=i, pid=os.getpid(), error=RunTimeout(
                        f"worker {i} was not started: the run's timeout of {timeout:g} s expired")))
                    continue
                runs.append(_run_one(func, i, n, t0, stopper, capture))
                if isinstance(runs[-1].error, KeyboardInterrupt):
                    raise runs[-1].error
    finally:
        if timer is not None:
            timer.cancel()
    return Report(model="serial", n_workers=n, wall=time.perf_counter() - t0, workers=runs)


def _run_one(func, worker_id, n, t0, stopper, capture):
    run = WorkerRun(worker_id=worker_id, pid=os.getpid(), thread_id=threading.get_native_id())
    capture.register()
    c0 = time.thread_time()
    run.start = time.perf_counter() - t0
    run.result, error = stopper.call(func, worker_id=worker_id, n_workers=n)
    run.end = time.perf_counter() - t0
    run.cpu = time.thread_time() - c0
    run.stdout, run.stderr = capture.output()
    capture.unregister()
    if error is not None:
        run.traceback = format_error(error)
        run.error = stopper.resolve(error)
    return run
