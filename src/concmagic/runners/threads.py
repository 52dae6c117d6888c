"""Run a cell function in N threads of this process: shared memory, one GIL.

    run_threads(func, n)
        |  registers the n warm worker threads (output capture, CPU clocks),
        |  then posts one job on the seat of each (concmagic._core.Seat)
        v
    [thread 0] [thread 1] ... [thread n-1]    wake and wait at one start gate
        |          |               |          without the GIL, so they start
        v          v               v          together, then each runs
    done queue  <- one WorkerRun each         func(worker_id=i, n_workers=n)
                   (times, thread CPU, result/error, output)

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
from .._core import Gate, Seat
from ._capture import capture_threads
from ._common import STOP_GRACE, Stoppable, attach, measured, collect

__all__ = ["run_threads", "shutdown", "gang_status"]

# How long workers wait at the start barrier before giving up on a laggard
# and starting anyway; a healthy gang meets there in microseconds.
_BARRIER_TIMEOUT = 5.0

# A thread's CPU clock, looked up from another thread (Unix).
_thread_clock = getattr(time, "pthread_getcpuclockid", None)


_worker_numbers = itertools.count()              # names threads uniquely


class _Replies:
    """The workers' WorkerRuns, handed to the runner with one wake-up.

    A worker's ``put`` wakes nobody, except the last one's; the runner's
    ``get`` takes what has come in, and otherwise sleeps until all have come
    (or its ``timeout`` ends). Waking the runner for every reply cost one
    more turn of the GIL per worker, taken while the others wait for it.
    """

    __slots__ = ("_queue", "_left", "_all_in", "_n", "_complete")

    def __init__(self, n):
        self._queue = queue.SimpleQueue()
        self._n = n
        self._left = itertools.count(1)            # next() is atomic: a C call under the GIL
        self._all_in = threading.Lock()
        self._all_in.acquire()
        self._complete = False

    def put(self, run):
        self._queue.put(run)
        if next(self._left) == self._n:
            self._all_in.release()

    def get(self, timeout=None):
        """The next reply; queue.Empty if none came within ``timeout`` seconds."""
        if not self._complete:
            try:
                return self._queue.get_nowait()
            except queue.Empty:
                pass
            if self._all_in.acquire(timeout=-1 if timeout is None else timeout):
                self._complete = True
        return self._queue.get_nowait()


class _Job:
    __slots__ = ("func", "n", "gate", "capture", "done", "t0", "measure", "world")

    def __init__(self, func, n, capture, measure, world=None):
        self.func = func
        self.world = world                        # the run's comm channels, if func takes comm
        self.measure = measure
        self.n = n
        # The start gate, passed by the workers without the GIL (_core.Seat):
        # each waits there until all n have come, then they start together.
        self.gate = Gate(n)
        self.capture = capture
        self.done = _Replies(n)
        self.t0 = time.perf_counter()


class _Worker:
    """One warm thread of the gang, serving the jobs posted on its seat.

    The runner registers the thread with the capture, the sampler and the
    progress display itself (it knows the thread's ident and CPU clock), so
    the worker goes from its seat through the start gate to the cell without
    a stop on the way. What it does per run is kept short: with the GIL, the
    workers' bookkeeping is done one after another.
    """

    def __init__(self):
        index = next(_worker_numbers)
        self.seat = Seat()
        self.job = None                           # (job, worker_id), set before each post
        self.stopper = Stoppable()
        self.retired = False
        self.thread = threading.Thread(target=self._serve, name=f"concmagic-worker-{index}",
                                       daemon=True)
        self.thread.start()
        self.ident = self.thread.ident
        self.native_id = self.thread.native_id
        try:                                      # its CPU clock, for the sampler
            self.clock = _thread_clock(self.ident) if _thread_clock else None
        except OSError:                           # none: that lane stays empty
            self.clock = None

    def post(self, job, worker_id):
        self.stopper.arm()
        self.job = (job, worker_id)
        self.seat.post(job.gate)

    def _serve(self):
        thread_time, perf_counter = time.thread_time, time.perf_counter
        while not self.retired and self.seat.wait(_BARRIER_TIMEOUT):
            job, worker_id = self.job
            # Through the gate: the cell starts now. Bookkeeping waits until after.
            c0 = thread_time()
            start = perf_counter()
            if job.world is None:
                result, error = self.stopper.call(job.func, worker_id=worker_id, n_workers=job.n)
            else:
                result, error = self.stopper.call(job.func, worker_id=worker_id,
                                                  n_workers=job.n, comm=job.world.comm(worker_id))
                job.world.finish(worker_id, error)   # peers waiting on it stop waiting
            end = perf_counter()
            cpu = thread_time() - c0
            stdout, stderr = job.capture.take()
            run = WorkerRun(worker_id=worker_id, pid=os.getpid(), thread_id=self.native_id,
                            start=start - job.t0, end=end - job.t0, cpu=cpu, result=result,
                            stdout=stdout, stderr=stderr)
            if error is not None:
                run.error, run.traceback = self.stopper.resolve(error)
            job.done.put(run)


class _Gang:
    def __init__(self):
        self.workers = []
        self.lock = threading.Lock()              # one run at a time per gang

    def resize(self, n):
        while len(self.workers) < n:
            self.workers.append(_Worker())
        while len(self.workers) > n:
            self.workers.pop().seat.post_exit()

    def retire(self, index):
        """Take a stuck worker out; it ends when its call returns."""
        worker = self.workers.pop(index)
        worker.retired = True
        self.workers.append(_Worker())

    def shutdown(self):
        for worker in self.workers:
            worker.seat.post_exit()
        self.workers = []


_gang = _Gang()


def _forget_gang():
    # In a forked child the gang's threads do not exist (fork copies only
    # the calling thread), and its lock may have been copied while held:
    # a run there would post jobs that no thread takes, and wait forever.
    global _gang
    _gang = _Gang()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_gang)


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
        job = _Job(func, n, capture, measure, world)
        workers = gang.workers
        capture.register_all([worker.ident for worker in workers])
        if measure is not None:
            measure.register_clocks([worker.clock for worker in workers])
        if progress is not None:
            for worker_id, worker in enumerate(workers):
                progress.watch_thread(worker_id, worker.ident)
        for worker_id, worker in enumerate(workers):
            worker.post(job, worker_id)
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
                            thread_id=gang.workers[i].native_id, error=reason)
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
            "thread_ids": [w.native_id for w in _gang.workers]}


def shutdown():
    """Stop the warm threads (they are started again on the next run)."""
    with _gang.lock:
        _gang.shutdown()
