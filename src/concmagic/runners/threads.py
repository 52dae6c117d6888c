"""Run a cell function in N threads of this process: shared memory, one GIL.

    run_threads(func, n)
        |  one job, put in the inbox of each of n warm worker threads
        v
    [thread 0] [thread 1] ... [thread n-1]    wait at one Barrier, so they
        |          |               |          start together, then each runs
        v          v               v          func(worker_id=i, n_workers=n)
    done queue  <- one WorkerRun each (times, thread CPU, result/error, output)

The threads are kept between runs (a "gang"), because creating and joining
n threads costs far more than handing n waiting threads a job. The gang is
resized to exactly n threads for each run.

Stopping (timeout, Ctrl-C): each running worker gets an asynchronous
StopRequest (pure Python stops at its next bytecode) and compiled kernels get
the cancel flag. A thread blocked in C cannot be stopped by anyone; it is then
reported as stuck, taken out of the gang and left to end on its own.
"""
import itertools
import os
import queue
import threading
import time

from ..comm import DEFAULT_TIMEOUT, MemoryWorld, blame_the_stop, wants_comm
from ..comm import attach as attach_comm
from ..report import Report, WorkerRun
from ._capture import capture_threads
from ._common import STOP_GRACE, Stoppable, attach, measured, collect

__all__ = ["run_threads", "shutdown", "gang_status"]

# How long workers wait at the start barrier before giving up on a laggard
# and starting anyway; a healthy gang meets there in microseconds.
_BARRIER_TIMEOUT = 5.0


_worker_numbers = itertools.count()              # names threads uniquely


class _StartGate:
    """A one-shot barrier: each of n workers waits until the last one arrives.

    Lighter than threading.Barrier (one lock handed along instead of a
    Condition with a lock per waiter), which matters when the cell is empty
    and the hand-off is all there is to measure.
    """

    __slots__ = ("_left", "_count_lock", "_open")

    def __init__(self, n):
        self._left = n
        self._count_lock = threading.Lock()
        self._open = threading.Lock()
        self._open.acquire()

    def wait(self, timeout):
        with self._count_lock:
            self._left -= 1
            last = self._left == 0
        if last or self._open.acquire(timeout=timeout):
            self._open.release()                  # pass it on to the next waiter


class _Job:
    __slots__ = ("func", "n", "barrier", "capture", "done", "t0", "measure", "progress", "world")

    def __init__(self, func, n, capture, measure, progress, world=None):
        self.func = func
        self.world = world                        # the run's comm channels, if func takes comm
        self.measure = measure
        self.progress = progress
        self.n = n
        self.barrier = _StartGate(n)
        self.capture = capture
        self.done = queue.SimpleQueue()
        self.t0 = time.perf_counter()


class _Worker:
    """One warm thread of the gang, serving jobs from its inbox."""

    def __init__(self):
        index = next(_worker_numbers)
        self.inbox = queue.SimpleQueue()
        self.stopper = Stoppable()
        self.retired = False
        self.thread = threading.Thread(target=self._serve, name=f"concmagic-worker-{index}",
                                       daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.retired:
            item = self.inbox.get()
            if item is None:
                return
            job, worker_id = item
            job.done.put(self._execute(job, worker_id))

    def _execute(self, job, worker_id):
        run = WorkerRun(worker_id=worker_id, pid=os.getpid(), thread_id=threading.get_native_id())
        job.capture.register()
        if job.measure is not None:
            job.measure.register_thread(worker_id)
        if job.progress is not None:
            job.progress.watch_thread(worker_id, threading.get_ident())
        job.barrier.wait(_BARRIER_TIMEOUT)        # on timeout: a laggard; start anyway
        c0 = time.thread_time()
        run.start = time.perf_counter() - job.t0
        if job.world is None:
            run.result, error = self.stopper.call(job.func, worker_id=worker_id, n_workers=job.n)
        else:
            run.result, error = self.stopper.call(job.func, worker_id=worker_id, n_workers=job.n,
                                                  comm=job.world.comm(worker_id))
            job.world.finish(worker_id, error)   # peers waiting on it stop waiting
        run.end = time.perf_counter() - job.t0
        run.cpu = time.thread_time() - c0
        run.stdout, run.stderr = job.capture.output()
        job.capture.unregister()
        if error is not None:
            run.error, run.traceback = self.stopper.resolve(error)
        return run


class _Gang:
    def __init__(self):
        self.workers = []
        self.lock = threading.Lock()              # one run at a time per gang

    def resize(self, n):
        while len(self.workers) < n:
            self.workers.append(_Worker())
        while len(self.workers) > n:
            self.workers.pop().inbox.put(None)

    def retire(self, index):
        """Take a stuck worker out; it ends when its call returns."""
        worker = self.workers.pop(index)
        worker.retired = True
        self.workers.append(_Worker())

    def shutdown(self):
        for worker in self.workers:
            worker.inbox.put(None)
        self.workers = []


_gang = _Gang()


def run_threads(func, n, *, timeout=None, measure=None, progress=None,
                comm_timeout=DEFAULT_TIMEOUT):
    """Run ``func(worker_id=i, n_workers=n)`` in n threads at once; a Report.

    A ``func`` taking ``comm`` also gets its end of in-memory channels
    (concmagic.comm): objects are handed over, never copied.
    """
    # A run started from inside a worker (a cell calling concmagic.run) must
    # not wait for the gang it is running on: it gets a gang of its own.
    gang = _gang if _gang.lock.acquire(blocking=False) else None
    own = gang is None
    if own:
        gang = _Gang()
    try:
        gang.resize(n)
        world = MemoryWorld(n, comm_timeout) if wants_comm(func) else None
        return _run(gang, func, n, timeout, measure, progress, world)
    finally:
        if own:
            gang.shutdown()
        else:
            gang.lock.release()


def _run(gang, func, n, timeout, measure, progress, world=None):
    with capture_threads() as capture, measured(measure) as done:
        job = _Job(func, n, capture, measure, progress, world)
        for worker_id, worker in enumerate(gang.workers):
            worker.stopper.arm()
            worker.inbox.put((job, worker_id))
        runs, notes = collect(job.done, n, job.t0, timeout, progress,
                              lambda runs, reason: _stop(gang, job, runs, reason))
        wall = time.perf_counter() - job.t0
        samples = done(job.t0)
    report = Report(model="threads", n_workers=n, wall=wall,
                    workers=[runs[i] for i in range(n)])
    report.notes.extend(notes)
    if world is not None:
        attach_comm(report, world.stats())
    return attach(report, samples)


def _stop(gang, job, runs, reason):
    """Stop the unfinished workers, wait for them briefly, record the stuck."""
    pending = [i for i in range(len(gang.workers)) if i not in runs]
    for i in pending:
        gang.workers[i].stopper.stop(reason)
    end = time.perf_counter() + STOP_GRACE
    while len(runs) < job.n and (left := end - time.perf_counter()) > 0:
        try:
            run = job.done.get(timeout=left)
        except queue.Empty:
            break
        runs[run.worker_id] = run
    if job.world is not None:
        blame_the_stop(runs, pending, reason)
    stuck = [i for i in pending if i not in runs]
    for i in sorted(stuck, reverse=True):
        runs[i] = WorkerRun(worker_id=i, pid=os.getpid(),
                            thread_id=gang.workers[i].thread.native_id, error=reason)
        gang.retire(i)
    if not stuck:
        return []
    names = ", ".join(map(str, sorted(stuck)))
    return [f"worker {names} did not stop within {STOP_GRACE:g} s of being asked "
            "(blocked in a call that cannot be interrupted, such as a long sleep "
            "or a C function holding on); its thread ends when that call returns."]


def gang_status():
    """Threads currently in the warm gang."""
    return {"threads": len(_gang.workers),
            "thread_ids": [w.thread.native_id for w in _gang.workers]}


def shutdown():
    """Stop the warm threads (they are started again on the next run)."""
    with _gang.lock:
        _gang.shutdown()
