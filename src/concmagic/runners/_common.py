"""Pieces the in-process runners share: stopping a thread, formatting errors."""
import ctypes
import queue
import threading
import time
import traceback

# The cancel flag lives in the compiled core; going through concmagic.kernels
# would import NumPy into every run's critical path for nothing.
from .. import _core as kernels
from ..errors import RunTimeout
from . import settle

__all__ = ["StopRequest", "Stoppable", "format_error", "measured", "attach", "wait_slice",
           "collect", "STOP_GRACE"]

#: Seconds a stopped worker gets to unwind before it is reported as stuck.
#: Pure-Python code stops at its next bytecode; compiled kernels within a
#: chunk (~1 ms); only a call blocked in C (a long sleep, a lock) can take longer.
STOP_GRACE = 2.0


class StopRequest(BaseException):
    """Raised asynchronously inside a worker thread to stop its cell.

    A BaseException, so that a cell's ``except Exception`` cannot swallow it.
    The runner replaces it in the report by the reason (timeout, interrupt).
    """


def _async_raise(ident, exc_type):
    # CPython's documented (if low-level) way to raise in another thread: the
    # exception is raised when that thread next runs bytecode. Passing NULL
    # clears a pending one.
    return ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), ctypes.py_object(exc_type) if exc_type else None)


class Stoppable:
    """The stop switch of one thread while it runs a cell.

    Asynchronous stop requests are only sent while ``running`` is true, under
    ``lock``, so one can never land in the runner's own bookkeeping after the
    cell has returned (and one still pending then is cleared). A stop that
    comes before the cell has begun is remembered, and the cell never starts.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.ident = None
        self.running = False
        self.reason = None

    def arm(self):
        """Forget the last run's stop; called before handing out a new cell."""
        with self.lock:
            self.reason = None
            self.running = False

    def begin(self):
        """True if the cell may start, False if a stop came first."""
        with self.lock:
            self.ident = threading.get_ident()
            if self.reason is not None:
                return False
            self.running = True
            return True

    def end(self):
        with self.lock:
            self.running = False
            if self.reason is not None:           # a stop was sent: clear it if still pending
                _async_raise(self.ident, None)

    def call(self, func, **kwargs):
        """Run ``func(**kwargs)`` stoppably; returns ``(result, error)``."""
        result = error = None
        returned = False
        lock = self.lock
        try:
            try:
                with lock:                        # begin(), inline: this runs per worker per run
                    self.ident = threading.get_ident()
                    go = self.running = self.reason is None
                if go:
                    try:
                        result = settle(func(**kwargs))
                    except BaseException as exc:  # noqa: B036 - the report keeps it
                        error = exc
                else:
                    error = StopRequest()
                returned = True
            finally:
                with lock:                        # end(), inline
                    self.running = False
                    if self.reason is not None:   # a stop was sent: clear it if still pending
                        _async_raise(self.ident, None)
        except StopRequest as exc:
            # Landed outside the cell. Before it ran: it was stopped. After it
            # returned, before `end()`: it finished, so its outcome stands.
            if not returned:
                error = exc
            self.end()
        return result, error

    def stop(self, reason):
        """Ask the thread to stop, recording why; True if its cell was running."""
        with self.lock:
            if self.reason is not None:
                return False
            self.reason = reason
            if not self.running:                  # not begun: begin() will refuse
                return False
            _async_raise(self.ident, StopRequest)
        # Compiled kernels do not run bytecode, so they would not see the
        # exception until they return; the cancel flag stops them within ~1 ms.
        kernels.cancel()
        return True

    def resolve(self, error, skip=1):
        """``(error, traceback text)`` to report; a stop shows as its reason."""
        if self.reason is not None and isinstance(error, (StopRequest, kernels.KernelCancelled)):
            # Where the worker was when stopped is worth showing; our own
            # StopRequest is not: the reason takes its place.
            return self.reason, format_error(error, skip, as_error=self.reason)
        return error, format_error(error, skip)


def format_error(error, skip=1, as_error=None):
    """The traceback text of ``error``, without the runner's own ``skip`` frames.

    With ``as_error``, the frames are ``error``'s but the closing line names
    ``as_error`` instead (a stop reported as its reason).
    """
    tb = error.__traceback__
    for _ in range(skip):
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    if as_error is None:
        return "".join(traceback.format_exception(type(error), error, tb))
    frames = "".join(traceback.format_tb(tb))
    closing = "".join(traceback.format_exception_only(type(as_error), as_error))
    return f"Traceback (most recent call last):\n{frames}{closing}"


class measured:
    """Run a block with ``measure`` started; ``as`` gives ``done(t0) -> Samples``.

    The instruments are stopped however the block ends (Ctrl-C included),
    and a second stop by ``done`` is harmless. (A class, not a generator
    context manager: this is on every run's path, and costs a third.)
    """

    __slots__ = ("_measure", "_stopped")

    def __init__(self, measure):
        self._measure = measure
        self._stopped = False

    def __enter__(self):
        if self._measure is None:
            return _no_samples
        self._measure.start()
        return self._done

    def _done(self, t0):
        self._stopped = True
        return self._measure.stop(t0)

    def __exit__(self, *exc):
        if self._measure is not None and not self._stopped:
            self._measure.stop(0.0)
        return False


def _no_samples(t0):
    return None


def attach(report, samples):
    """Put the measured series and GIL figure on the report."""
    if samples is not None:
        report.samples = samples
        report.gil_wait = samples.gil_wait_fraction
    return report


def wait_slice(left, progress):
    """How long a runner's wait loop may block: until the deadline (``left``
    seconds, None for none), but no longer than the next progress update."""
    if progress is None:
        return left
    return progress.every if left is None else min(left, progress.every)


def collect(done, n, t0, timeout, progress, stop):
    """Gather n WorkerRuns from queue ``done``: the in-process runners' wait loop.

    Waits until the deadline (``timeout`` seconds after ``t0``), in slices
    that let ``progress`` redraw; at the deadline, or on Ctrl-C, calls
    ``stop(runs, reason)``, which stops the rest and returns notes for the
    report. Returns ``(runs by worker id, notes)``; re-raises Ctrl-C.
    """
    runs, notes = {}, []
    deadline = None if timeout is None else t0 + timeout
    try:
        while len(runs) < n:
            left = None if deadline is None else max(0.0, deadline - time.perf_counter())
            try:
                run = done.get(timeout=wait_slice(left, progress))
            except queue.Empty:
                if deadline is not None and time.perf_counter() >= deadline:
                    notes = stop(runs, RunTimeout(
                        f"did not finish within the timeout of {timeout:g} s; stopped"))
                    break
                progress.tick(t0, runs)           # only a progress slice ran out
                continue
            runs[run.worker_id] = run
    except KeyboardInterrupt:
        stop(runs, KeyboardInterrupt())
        raise
    finally:
        if progress is not None:
            progress.close()
    return runs, notes
