"""The few errors concmagic raises, each named for what happened.

    ConcmagicError      base class of them all
    ├── ShipError       a notebook variable cannot be sent to worker processes
    │   └── ShareError  an array named in share= / --share cannot be shared
    ├── WorkerError     one or more workers failed (raised by concmagic.run)
    ├── WorkerDied      a worker process died (used as that worker's error)
    ├── RunTimeout      a worker did not finish in time (used as that worker's error)
    └── CommError       a comm call that can never return (the peer it waits for ended)
        └── CommTimeout a comm call that waited longer than the comm timeout
    RemoteTraceback     a worker process's traceback text, chained as `__cause__`

A failed worker never takes the others down: its exception is stored on its
`WorkerRun`, the rest keep their results, and `WorkerError` gathers them all.
Every error here survives pickling, since some are made in worker processes.
"""
from __future__ import annotations

import signal
import traceback as _traceback

from .report import error_line, format_time

__all__ = [
    "ConcmagicError", "ShipError", "ShareError", "WorkerError", "RemoteTraceback",
    "WorkerDied", "RunTimeout", "CommError", "CommTimeout",
]


class ConcmagicError(Exception):
    """Base class of the errors concmagic raises."""


# ---------------------------------------------------------------------------
# ShipError
# ---------------------------------------------------------------------------
def _article(word):
    return "an" if word[:1].lower() in "aeiou" else "a"


class ShipError(ConcmagicError):
    """Raised before any worker starts, when a variable the cell uses cannot
    be pickled for worker processes (a lock, an open file, a socket...).

    `name` is the variable, `obj_type` its type's name, `reason` what the
    pickler said.
    """

    def __init__(self, name: str, obj_type: str, reason: str):
        self.name = name
        self.obj_type = obj_type
        self.reason = reason
        what = f" ({_article(obj_type)} {obj_type})" if obj_type else ""
        reason_text = str(reason).strip().rstrip(".")
        super().__init__(
            f"cannot ship `{name}`{what} to worker processes: {reason_text}. "
            "Create it inside the cell, or use threads."
        )

    def __reduce__(self):
        return (type(self), (self.name, self.obj_type, self.reason))


class ShareError(ShipError):
    """Raised before any worker starts (and before any array is copied), when
    a name given to ``share=`` / ``--share`` cannot be shared with worker
    processes: not defined, not a NumPy array, an array of Python objects.

    `name` is the name, `reason` why, in words that say what to do.
    """

    def __init__(self, name: str, reason: str):
        self.name = name
        self.obj_type = ""
        self.reason = reason
        ConcmagicError.__init__(self, f"cannot share `{name}` with worker processes: {reason}")

    def __reduce__(self):
        return (type(self), (self.name, self.reason))


# ---------------------------------------------------------------------------
# WorkerError
# ---------------------------------------------------------------------------
def _worker_traceback(run):
    """The traceback text to show for a failed `WorkerRun`: the runner's own
    (on the cell's lines) when it has one, else whatever Python can format."""
    if run.traceback:
        return run.traceback.rstrip("\n")
    err = run.error
    if err is None:
        return ""
    if err.__traceback__ is not None or err.__cause__ is not None:
        text = "".join(_traceback.format_exception(type(err), err, err.__traceback__))
    else:
        text = "".join(_traceback.format_exception_only(type(err), err))
    return text.rstrip("\n")


class WorkerError(ConcmagicError):
    """Raised by `concmagic.run` when one or more workers failed.

    Carries the whole `report`; `errors` maps worker_id -> exception for the
    workers that failed, `results` is every worker's result in worker order
    (None for the failed ones), so the work that succeeded is not lost.
    Its message shows the first `tb_limit` tracebacks, then how many more.
    """

    #: How many workers' tracebacks the message draws in full.
    tb_limit = 3

    def __init__(self, report):
        self.report = report
        self.errors = report.errors
        self.results = report.results
        failed = report.failed
        total = max(report.n_workers, len(report.workers))
        self.summary = f"{len(failed)} of {total} worker{'' if total == 1 else 's'} failed ({report.model})"
        super().__init__(self.summary)

    def __reduce__(self):
        return (type(self), (self.report,))

    def _lines(self):
        lines = [self.summary]
        failed = self.report.failed
        for run in failed[: self.tb_limit]:
            lines.append("")
            lines.append(f"[worker {run.worker_id}] {error_line(run.error)}")
            lines.extend(_worker_traceback(run).splitlines())
        more = len(failed) - self.tb_limit
        if more > 0:
            lines.append("")
            lines.append(f"... {more} more failed worker{'' if more == 1 else 's'}")
        return lines

    def __str__(self):
        return "\n".join(self._lines())

    def __repr__(self):
        return f"{type(self).__name__}({self.summary!r})"

    def _render_traceback_(self):
        """What IPython shows instead of a Python traceback: the workers'
        tracebacks on the cell's lines, not concmagic's internals."""
        return [f"{type(self).__name__}: {self._lines()[0]}"] + self._lines()[1:]


# ---------------------------------------------------------------------------
# RemoteTraceback
# ---------------------------------------------------------------------------
class RemoteTraceback(Exception):
    """A worker process's formatted traceback, kept as text.

    An exception rebuilt in the parent from a worker process has lost its
    frames; the runner sets one of these as its `__cause__`, so Python
    prints the worker's stack above the local one.
    """

    def __init__(self, tb: str):
        self.tb = tb
        super().__init__(tb)

    def __str__(self):
        return '\n"""\n' + self.tb.rstrip("\n") + '\n"""'


# ---------------------------------------------------------------------------
# WorkerDied
# ---------------------------------------------------------------------------
# Likely cause, then where to look, for the signals that kill Python workers.
_SIGNAL_CAUSES = {
    "SIGSEGV": ("segmentation fault: a crash in compiled code",
                "`import faulthandler; faulthandler.enable()` at the top of the cell "
                "prints the crashing stack on the worker's stderr."),
    "SIGKILL": ("killed: out of memory (the OOM killer) or killed by hand",
                "`dmesg` or the system log says 'Out of memory' if it was the OOM killer."),
    "SIGABRT": ("aborted: a failed assertion or abort() in compiled code", ""),
    "SIGBUS": ("bus error: a crash in compiled code, or a memory-mapped file that shrank", ""),
    "SIGFPE": ("arithmetic error in compiled code (e.g. an integer division by zero)", ""),
    "SIGILL": ("illegal instruction: compiled code built for another CPU", ""),
    "SIGTERM": ("terminated by another process or by the system", ""),
    "SIGINT": ("interrupted (Ctrl-C)", ""),
}


def _signal_name(number):
    try:
        return signal.Signals(number).name
    except (ValueError, AttributeError):
        return f"signal {number}"


class WorkerDied(ConcmagicError):
    """Stored as a worker's error when its process died before reporting
    back: a crash in compiled code, the OOM killer, `os._exit()`.

    `exitcode` follows multiprocessing: negative -N means killed by signal N,
    a positive code is what the process passed to exit. The message names the
    signal, the likely cause and where to look; the pool that lost the worker
    is restarted for the next run.
    """

    def __init__(self, worker_id: int | None, exitcode: int | None, pid: int | None = None):
        self.worker_id = worker_id
        self.exitcode = exitcode
        self.pid = pid
        self.signal = None
        hint = ""
        if exitcode is None:
            code, cause = "exit code unknown", "it stopped without saying why"
        elif exitcode < 0:
            self.signal = _signal_name(-exitcode)
            code = f"exit code {exitcode}, {self.signal}"
            cause, hint = _SIGNAL_CAUSES.get(self.signal, (f"killed by {self.signal}", ""))
        else:
            code = f"exit code {exitcode}"
            cause = f"the worker called os._exit({exitcode}) or a C library called exit()"
        self.cause = cause
        who = "a worker process" if worker_id is None else f"worker {worker_id}"
        pid_text = "" if pid is None else f" (pid {pid})"
        message = f"{who}{pid_text} died ({code}): {cause}."
        if hint:
            message += " " + hint
        message += " The pool will be restarted for the next run."
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (self.worker_id, self.exitcode, self.pid))


# ---------------------------------------------------------------------------
# RunTimeout
# ---------------------------------------------------------------------------
class RunTimeout(ConcmagicError):
    """Stored as a worker's error when it did not finish within the run's
    timeout (`--timeout`, or `timeout=` of `concmagic.run`).

    Give a message, or `timeout` (seconds) and `worker_id` to have one written.
    """

    def __init__(self, message=None, *, timeout: float | None = None, worker_id: int | None = None):
        if isinstance(message, (int, float)) and not isinstance(message, bool):
            message, timeout = None, message
        self.timeout = timeout
        self.worker_id = worker_id
        if message is None:
            who = "the worker" if worker_id is None else f"worker {worker_id}"
            within = "the timeout" if timeout is None else f"the {format_time(timeout)} timeout"
            message = f"{who} did not finish within {within}"
        super().__init__(message)


# ---------------------------------------------------------------------------
# CommError, CommTimeout
# ---------------------------------------------------------------------------
class CommError(ConcmagicError):
    """Raised inside a worker's cell by a `comm` call that can never return:
    the worker it waits for has finished (or died) without sending, a serial
    run asks for a message from a worker that runs later, a worker waits for
    a message from itself.

    `worker_id` is the worker that called, `call` the call as written
    (``comm.recv(source=0)``). Raised at once, never after a wait: nothing
    can change the outcome.
    """

    def __init__(self, message: str, worker_id: int | None = None, call: str | None = None):
        self.worker_id = worker_id
        self.call = call
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (str(self), self.worker_id, self.call))


class CommTimeout(CommError):
    """Raised inside a worker's cell by a `comm` call (recv, barrier, bcast)
    that waited the whole comm timeout (`comm_timeout=` of `concmagic.run`,
    `--comm-timeout`, or the call's own `timeout=`) for peers that are still
    running: a recv no worker sends to, a barrier some worker never reaches.
    The message names the worker, the call and who was missing.
    """
