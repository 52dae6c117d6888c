"""Run a cell function as N tasks on one asyncio event loop: one thread, many waits.

    run_asyncio(func, n)                       on the calling thread (the notebook's)
        |  one callback, handed to the loop with call_soon_threadsafe
        v
    [thread "concmagic-asyncio": event loop]   creates n tasks in one go, so
        task 0   task 1  ...  task n-1         their first steps run back to back;
          |        |             |             each awaits func(worker_id=i,
          v        v             v             n_workers=n), step by step
    done queue  <- one WorkerRun each (times, task CPU, result/error, output)
        |
        v
    the calling thread waits on the queue, in slices (deadline, progress, Ctrl-C)

The loop runs in a thread of its own, started on first use and kept between
runs, and never on the caller's thread: a Jupyter kernel already runs an event
loop there, which cannot be nested (``asyncio.run`` refuses to start inside a
running loop) and must not be blocked for longer than the run itself. So
``run`` works the same from a plain script, from a kernel, and from inside
``asyncio.run(...)``. A run started from inside one of the tasks (a cell that
calls ``concmagic.run``), or while another thread's run holds the shared loop,
gets a loop thread of its own for that run.

What a task is: ``func`` is usually a coroutine function (an ``%%asyncio``
cell is ``async def __cell__``), so the cell may ``await``. A plain function
is accepted too and is called as it is inside the task: it holds the loop
until it returns, so the other tasks wait (the honest lesson: blocking code
gains nothing from asyncio). Whatever awaitable the function returns is
awaited.

Per-task CPU: every task shares the loop's thread, so the thread's CPU clock
says nothing about one task. Each cell is driven through a small trampoline
(`_Stepper`) that reads ``time.thread_time()`` around each step of the cell's
coroutine (every ``send``/``throw`` the loop makes); the sum is the CPU that
task's own code used. Tasks the cell starts itself are not counted in it,
and any it leaves running are cancelled when the run ends (as ``asyncio.run``
does), with a note in the report: they would otherwise run on during later
runs. Live progress shows each task running or done, but no CPU share: the
tasks share one thread's clock.

Output: each task's prints are kept apart through a context variable (see
`_capture`): a task runs in its own copy of the context, so the variable names
that task's buffer, and tasks or ``asyncio.to_thread`` calls the cell starts
inherit it.

Stopping (timeout, Ctrl-C): the unfinished tasks are cancelled, which stops
each at its current ``await`` (its traceback shows that line). A task that is
running when the stop comes (a computation without ``await``) gets the
asynchronous StopRequest the thread runner uses, sent only while one of this
run's steps is executing. A step blocked in C (``time.sleep``, a compiled call
holding on) cannot be stopped by anyone: it blocks the whole loop, so every
task still unfinished after the grace is reported as stuck, that loop's thread
is set aside to end when the call returns, and the next run gets a fresh loop.
"""
import asyncio
import functools
import inspect
import os
import queue
import threading
import time

# The cancel flag lives in the compiled core; going through concmagic.kernels
# would import NumPy into every run's critical path for nothing.
from .. import _core as kernels
from ..comm import DEFAULT_TIMEOUT, AsyncWorld, blame_the_stop, wants_comm
from ..comm import attach as attach_comm
from ..report import Report, WorkerRun
from ._capture import capture_threads
from ._common import (STOP_GRACE, StopRequest, Stoppable, attach, format_error, measured,
                      collect)

__all__ = ["run_asyncio", "shutdown", "loop_status", "LOOP_THREAD_NAME"]

#: The name of the event loop's thread (what tools listing threads show).
LOOP_THREAD_NAME = "concmagic-asyncio"

_thread_time = time.thread_time


class _Stepper:
    """Drives one cell through the event loop, timing each step.

    An awaitable and its own iterator: ``await _Stepper(...)`` hands every
    ``send``/``throw`` of the task on to the cell's coroutine, adding the
    thread CPU time of that step to ``cpu``. The first step calls ``start()``
    (the cell function); if it returns an awaitable, the steps go on into it,
    otherwise its value is the result at once.

    Each step runs under the run's Stoppable, so an asynchronous stop can only
    land while the cell's code runs, never in the loop's own machinery. After
    a stop, the cancellation is thrown in as it came, and any other step is
    turned into a StopRequest thrown in at the cell's ``await``: the cell ends
    there instead of going on.
    """

    __slots__ = ("_start", "_inner", "_job", "_guard", "_worker_id", "started", "cpu")

    def __init__(self, start, job, worker_id):
        self._start = start
        self._inner = None            # the iterator of the awaitable the function returned
        self._job = job
        self._guard = job.guard
        self._worker_id = worker_id
        self.started = False          # the cell function has been called
        self.cpu = 0.0

    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        return self._step(None, False)

    def send(self, value):
        return self._step(value, False)

    def throw(self, typ, value=None, tb=None):
        return self._step(typ if value is None else value, True)

    def close(self):
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()

    def _step(self, arg, throwing):
        # Runs once per step of every task: kept to one Python frame on the
        # way to the cell's coroutine.
        guard = self._guard
        c0 = _thread_time()
        try:
            if not guard.begin():
                # Stopped. A cancellation the loop throws in goes through, so
                # the cell's `except CancelledError` clean-up runs; any other
                # step ends the cell at its await (one that caught the
                # cancellation and went on awaiting, say).
                return self._advance(arg if throwing else StopRequest(), True)
            self._job.stepping = self._worker_id
            try:
                inner = self._inner
                if inner is not None and not throwing:
                    return inner.send(arg)
                return self._advance(arg, throwing)
            finally:
                self._job.stepping = None
                guard.end()
        except StopRequest:
            guard.end()                            # it may have landed before end() ran
            raise
        finally:
            self.cpu += _thread_time() - c0

    def _advance(self, arg, throwing):
        """The first step (which calls the function), and every throw."""
        if throwing:
            throw = getattr(self._inner, "throw", None)
            if throw is None:                      # nothing started to throw it into
                raise arg
            return throw(arg)
        self.started = True
        outcome = self._start()
        if not inspect.isawaitable(outcome):
            raise StopIteration(outcome)          # a plain function: done in one step
        self._inner = outcome.__await__()
        return self._inner.send(None)


class _Job:
    """One run: what the tasks need, and what they leave for the caller."""

    def __init__(self, func, n, capture, measure, loop_thread, world=None):
        self.func = func
        self.world = world            # the run's comm channels, if func takes comm
        self.n = n
        self.capture = capture
        self.measure = measure
        self.pid = os.getpid()
        self.thread_id = loop_thread.thread.native_id
        self.guard = Stoppable()      # its reason is the run's stop reason
        self.done = queue.SimpleQueue()
        self.tasks = []
        self.keys = [None] * n        # each task's output key
        self.reported = [False] * n   # each task's WorkerRun is on `done`
        self.leftovers = 0            # tasks the cells left running, cancelled at the end
        self.stepping = None          # worker whose step the loop is executing
        self.t0 = time.perf_counter()


# Frames of this module sit above the cell's in every traceback; they are cut.
_OWN_FILE = _Stepper._step.__code__.co_filename


def _own_frames(tb):
    skip = 0
    while tb is not None and tb.tb_frame.f_code.co_filename == _OWN_FILE:
        skip += 1
        tb = tb.tb_next
    return skip


def _resolve(job, error):
    """``(error, traceback text)`` to report; a stop shows as its reason."""
    skip = _own_frames(error.__traceback__)
    reason = job.guard.reason
    if reason is not None and isinstance(
            error, (asyncio.CancelledError, StopRequest, kernels.KernelCancelled)):
        # Where the cell was when stopped is worth showing; how it was
        # stopped (a cancel, our StopRequest) is not: the reason replaces it.
        return reason, format_error(error, skip, as_error=reason)
    return error, format_error(error, skip)


async def _task(job, worker_id):
    """One worker: run the cell, and put its WorkerRun on ``job.done``."""
    run = WorkerRun(worker_id=worker_id, pid=job.pid, thread_id=job.thread_id)
    key = job.keys[worker_id] = job.capture.register_task()
    if job.world is None:
        start = functools.partial(job.func, worker_id=worker_id, n_workers=job.n)
    else:
        start = functools.partial(job.func, worker_id=worker_id, n_workers=job.n,
                                  comm=job.world.comm(worker_id))
    stepper = _Stepper(start, job, worker_id)
    error = None
    try:
        run.start = time.perf_counter() - job.t0
        try:
            run.result = await stepper
        except BaseException as exc:  # noqa: B036 - the report keeps it; the loop lives on
            error = exc
        run.end = time.perf_counter() - job.t0
        run.cpu = stepper.cpu
        if job.world is not None:
            job.world.finish(worker_id, error)     # peers waiting on it stop waiting
        try:
            stepper.close()                        # stopped between steps: run its finally
        except BaseException:  # noqa: B036, S110 - its error, if any, is already reported
            pass
        run.stdout, run.stderr = job.capture.output(key)
    finally:
        job.capture.unregister(key)
    if error is not None:
        if not stepper.started and isinstance(error, StopRequest):
            run.error = job.guard.reason           # stopped before its cell began
        else:
            run.error, run.traceback = _resolve(job, error)
    _report(job, run)


def _report(job, run):
    """On the loop: hand ``run`` to the caller; after the last one, sweep up."""
    job.reported[run.worker_id] = True
    if all(job.reported):
        # Tasks a cell started and did not await would go on running on this
        # loop during later runs, printing into whatever comes next: they are
        # cancelled now, as asyncio.run does at its end, and the report says so.
        own = set(job.tasks)
        left = [t for t in asyncio.all_tasks() if t not in own and not t.done()]
        for task in left:
            task.cancel()
        job.leftovers = len(left)
    job.done.put(run)


def _launch(job, loop):
    """On the loop: create every task at once, so their first steps run together."""
    try:
        if job.measure is not None:
            # One thread runs every task; the report counts each slot's CPU
            # between that task's own start and end.
            for slot in range(job.n):
                job.measure.register_thread(slot)
        for worker_id in range(job.n):
            task = loop.create_task(_task(job, worker_id))
            task.add_done_callback(functools.partial(_task_done, job, worker_id))
            job.tasks.append(task)
    except BaseException as exc:  # noqa: B036 - reported as those workers' error
        for worker_id in range(len(job.tasks), job.n):
            job.done.put(WorkerRun(worker_id=worker_id, pid=job.pid, thread_id=job.thread_id,
                                   error=exc))


def _task_done(job, worker_id, task):
    # `_task` reports its own outcome. Only a task cancelled before its first
    # step (so `_task` never ran), or a failure of `_task` itself, lands here.
    # (A cell may also cancel its own task and return at once: that task ends
    # cancelled after `_task` has reported, and must not report twice.)
    if job.reported[worker_id]:
        return
    if task.cancelled():
        error = job.guard.reason or asyncio.CancelledError("cancelled before it began")
    else:
        error = task.exception()
    if job.world is not None:
        job.world.finish(worker_id, error)
    _report(job, WorkerRun(worker_id=worker_id, pid=job.pid, thread_id=job.thread_id,
                           error=error))


def _cancel(job):
    """On the loop: cancel the tasks still running (each stops at its await)."""
    for task in job.tasks:
        if not task.done():
            task.cancel()


class _LoopThread:
    """An event loop running forever in a daemon thread of its own."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.stuck = False            # a run could not stop its tasks: set aside
        self.thread = threading.Thread(target=self._serve, name=LOOP_THREAD_NAME, daemon=True)
        try:
            self.thread.start()
        except BaseException:
            self.loop.close()
            raise

    def _serve(self):
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        except BaseException:  # noqa: B036 - a late stop of an abandoned loop; clean up below
            pass
        finally:
            _close_loop(loop)

    def call(self, callback, *args):
        """Run ``callback(*args)`` on the loop, soon (from any thread)."""
        self.loop.call_soon_threadsafe(callback, *args)

    def alive(self):
        return self.thread.is_alive() and not self.loop.is_closed()

    def stop(self, timeout=None):
        """Let the loop finish (its leftover tasks are cancelled) and end the thread."""
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:                       # already closed
            pass
        if timeout is not None:
            self.thread.join(timeout)


def _close_loop(loop):
    """As asyncio.run does at its end: cancel what is left, end async
    generators and the default executor, close. Bounded, so a task that
    ignores cancellation cannot keep the thread forever."""
    try:
        tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            loop.run_until_complete(asyncio.wait(tasks, timeout=STOP_GRACE))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    except BaseException:  # noqa: B036 - closing anyway
        pass
    finally:
        asyncio.set_event_loop(None)
        loop.close()


class _Shared:
    """The warm loop thread every run uses, and those set aside as stuck."""

    def __init__(self):
        self.lock = threading.Lock()               # one run at a time on the shared loop
        self.current = None
        self.abandoned = []

    def get(self):
        if self.current is None or not self.current.alive():
            self.current = _LoopThread()
        return self.current

    def retire(self, loop_thread):
        loop_thread.stop()
        if loop_thread is self.current:
            self.current = None
        self.abandoned = [t for t in self.abandoned if t.thread.is_alive()] + [loop_thread]


_shared = _Shared()


def run_asyncio(func, n, *, timeout=None, measure=None, progress=None,
                comm_timeout=DEFAULT_TIMEOUT):
    """Run ``func(worker_id=i, n_workers=n)`` as n tasks on one event loop; a Report.

    A ``func`` taking ``comm`` also gets its end of in-memory channels on
    the loop (concmagic.comm.AsyncComm: ``await comm.recv()``).
    """
    # A run from inside a task (a cell calling concmagic.run) must not wait
    # for the loop it is itself holding up, and a run from another thread
    # must not wait for a loop that is busy: both get a loop of their own.
    shared = _shared.current
    inside = shared is not None and threading.current_thread() is shared.thread
    own = inside or not _shared.lock.acquire(blocking=False)
    try:
        loop_thread = _LoopThread() if own else _shared.get()
        try:
            world = AsyncWorld(n, comm_timeout) if wants_comm(func) else None
            return _run(loop_thread, func, n, timeout, measure, progress, world)
        finally:
            if own:
                # A stuck loop's thread ends when the blocking call returns.
                loop_thread.stop(timeout=None if loop_thread.stuck else STOP_GRACE)
            elif loop_thread.stuck:
                _shared.retire(loop_thread)
    finally:
        if not own:
            _shared.lock.release()


def _run(loop_thread, func, n, timeout, measure, progress, world=None):
    with capture_threads() as capture, measured(measure) as done:
        job = _Job(func, n, capture, measure, loop_thread, world)
        loop_thread.call(_launch, job, loop_thread.loop)
        runs, notes = collect(job.done, n, job.t0, timeout, progress,
                              lambda runs, reason: _stop(loop_thread, job, runs, reason))
        wall = time.perf_counter() - job.t0
        samples = done(job.t0)
    report = Report(model="asyncio", n_workers=n, wall=wall,
                    workers=[runs[i] for i in range(n)])
    report.notes.extend(notes)
    if job.leftovers:
        report.notes.append(
            f"the cell left {job.leftovers} task{'s' if job.leftovers > 1 else ''} running "
            "(started with asyncio.create_task or ensure_future and not awaited); "
            f"{'they were' if job.leftovers > 1 else 'it was'} cancelled when the run ended")
    if world is not None:
        attach_comm(report, world.stats())
    return attach(report, samples)


def _stop(loop_thread, job, runs, reason):
    """Cancel the unfinished tasks, wait for them briefly, record the stuck."""
    pending = [i for i in range(job.n) if i not in runs]
    # The reason first: the tasks read it when the cancellation reaches them.
    # A step running now (code that does not await) gets a StopRequest.
    job.guard.stop(reason)
    try:
        loop_thread.call(_cancel, job)
    except RuntimeError:                           # the loop is closed: nothing to cancel
        pass
    end = time.perf_counter() + STOP_GRACE
    try:
        while len(runs) < job.n and (left := end - time.perf_counter()) > 0:
            try:
                run = job.done.get(timeout=left)
            except queue.Empty:
                break
            runs[run.worker_id] = run
    finally:
        # Also when a second Ctrl-C cuts the grace short: a loop that may
        # still be held up is not used again.
        if job.world is not None:
            blame_the_stop(runs, pending, reason)
        stuck = [i for i in range(job.n) if i not in runs]
        if stuck:
            loop_thread.stuck = True
    if not stuck:
        return []
    blocker = job.stepping
    for i in stuck:
        run = runs[i] = WorkerRun(worker_id=i, pid=job.pid, thread_id=job.thread_id,
                                  error=reason)
        if job.keys[i] is not None:                # what it printed before it stuck
            run.stdout, run.stderr = job.capture.output(job.keys[i])
    names = ", ".join(map(str, stuck))
    workers = f"worker{'s' if len(stuck) > 1 else ''} {names}"
    if blocker is not None:
        why = (f"worker {blocker} held the event loop in a call that does not await (such "
               f"as time.sleep or a compiled call), so {workers} could not be stopped")
    else:
        why = (f"{workers} did not end when cancelled (a cell that catches "
               "CancelledError and goes on)")
    return [f"{why} within {STOP_GRACE:g} s of being asked; that event loop's thread was "
            "set aside to end on its own, and the next run gets a fresh loop."]


def loop_status():
    """The warm event loop's thread, and stuck ones set aside."""
    current = _shared.current
    running = current is not None and current.alive()
    return {"running": running,
            "thread_id": current.thread.native_id if running else None,
            "abandoned": sum(t.thread.is_alive() for t in _shared.abandoned)}


def shutdown():
    """Stop the warm event loop and its thread (started again on the next run)."""
    current = _shared.current
    if current is not None and threading.current_thread() is current.thread:
        return                                     # from one of its tasks: it cannot stop itself
    with _shared.lock:
        current, _shared.current = _shared.current, None
        if current is not None:
            current.stop(timeout=STOP_GRACE)
