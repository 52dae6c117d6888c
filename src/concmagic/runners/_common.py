"""Pieces the in-process runners share: stopping a thread, formatting errors."""
import ctypes
import threading
import traceback

from .. import kernels

__all__ = ["StopRequest", "Stoppable", "format_error", "STOP_GRACE"]

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

    Stop requests are only sent while ``running`` is true, under ``lock``, so
    a request can never land in the runner's own bookkeeping after the cell
    has returned (and any that is still pending then is cleared).
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.ident = None
        self.running = False
        self.reason = None

    def begin(self):
        with self.lock:
            self.ident = threading.get_ident()
            self.reason = None
            self.running = True

    def end(self):
        with self.lock:
            self.running = False
            _async_raise(self.ident, None)

    def call(self, func, **kwargs):
        """Run ``func(**kwargs)`` stoppably; returns ``(result, error)``."""
        result = error = None
        self.begin()
        try:
            try:
                result = func(**kwargs)
            except BaseException as exc:         # noqa: B036 - the report keeps it
                error = exc
            finally:
                self.end()
        except StopRequest:
            # Landed after the cell had returned, before `end()`: the cell
            # finished, so its result stands.
            self.end()
        return result, error

    def stop(self, reason):
        """Ask the thread to stop, recording why; True if it was running."""
        with self.lock:
            if not self.running:
                return False
            self.reason = reason
            _async_raise(self.ident, StopRequest)
        # Compiled kernels do not run bytecode, so they would not see the
        # exception until they return; the cancel flag stops them within ~1 ms.
        kernels.cancel()
        return True

    def resolve(self, error):
        """The error to report: the stop reason replaces our own stop signals."""
        if self.reason is not None and isinstance(error, (StopRequest, kernels.KernelCancelled)):
            return self.reason
        return error


def format_error(error, skip=1):
    """The traceback text of ``error``, without the runner's own ``skip`` frames."""
    tb = error.__traceback__
    for _ in range(skip):
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    return "".join(traceback.format_exception(type(error), error, tb))
