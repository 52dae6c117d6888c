"""The inside of a worker process: receive a cell function, run it, reply.

Kept light on imports (no IPython, no NumPy) because it is what every new
worker process loads first; the forkserver preloads it so forks start warm.

Protocol, over one duplex pipe per worker (parent -> child, then back):

    (worker_id, n_workers, comm)   a header, pickled; comm is None, or
                             {"timeout": seconds} for a function taking comm:
    <1 byte + descriptors>   then the worker's sockets to the other workers
                             (SCM_RIGHTS; see concmagic.comm.hand_over)
    <bytes>                  the function, pickled by cloudpickle (by value)
                             ...the worker runs it...
    <bytes>                  a reply dict, pickled by cloudpickle
    None                     shutdown
"""
import io
import math
import os
import pickle
import signal
import sys
import time
import traceback
from contextlib import redirect_stderr, redirect_stdout

import cloudpickle

_busy = False


class StopRequest(BaseException):
    """Raised in the worker by the parent's stop signal (timeout, Ctrl-C)."""


def _on_stop_signal(signum, frame):
    # Only while a cell runs: a late signal must not break the serving loop.
    if _busy:
        raise StopRequest()


def serve(conn):
    """Serve jobs on ``conn`` until the parent says stop or goes away."""
    # Ctrl-C in a terminal reaches the whole process group; the parent
    # decides what to stop and tells us with SIGUSR1.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, _on_stop_signal)
    while True:
        try:
            header = conn.recv()
            if header is None:
                return
            worker_id, n_workers, comm_spec = header
            comm = _receive_comm(conn, worker_id, n_workers, comm_spec)
            payload = conn.recv_bytes()
        except (EOFError, OSError):               # the parent is gone
            return
        conn.send_bytes(_execute(payload, worker_id, n_workers, comm))


def _receive_comm(conn, worker_id, n_workers, spec):
    """The worker's ProcessComm (None without one); an exception if it failed."""
    if spec is None:
        return None
    from ..comm import ProcessComm, receive_channels
    try:
        socks = receive_channels(conn, worker_id, n_workers) if n_workers > 1 else {}
    except (EOFError, ConnectionError):           # the parent is gone: serve() ends
        raise
    except OSError as exc:                        # out of descriptors: this worker's error
        return exc
    return ProcessComm(worker_id, n_workers, socks, spec["timeout"])


def _execute(payload, worker_id, n_workers, comm=None):
    global _busy
    rec = {"worker_id": worker_id, "pid": os.getpid(), "start": math.nan, "end": math.nan,
           "cpu": math.nan, "received": time.perf_counter()}
    result = error = None
    out, err = io.StringIO(), io.StringIO()
    kwargs = {}
    if isinstance(comm, BaseException):
        error, comm = comm, None
    elif comm is not None:
        kwargs["comm"] = comm
    func = None
    try:
        try:
            if error is None:
                func = pickle.loads(payload)
        except BaseException as exc:              # noqa: B036 - reported, not lost
            error = RuntimeError(f"the cell function could not be loaded in worker "
                                 f"process {os.getpid()}: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
        if func is not None:
            _register_sources(func)
            with redirect_stdout(out), redirect_stderr(err):
                c0 = time.process_time()
                rec["start"] = time.perf_counter()
                _busy = True
                try:
                    result = func(worker_id=worker_id, n_workers=n_workers, **kwargs)
                except BaseException as exc:      # noqa: B036
                    error = exc
                finally:
                    _busy = False
                    rec["end"] = time.perf_counter()
                    rec["cpu"] = time.process_time() - c0
    except StopRequest:
        _busy = False                             # landed after the cell returned
    finally:
        if comm is not None:
            # Peers see this worker's sockets close (and stop waiting on it)
            # once its last messages are written out.
            comm.close()
            rec["comm"] = comm.stats()
    rec["stdout"], rec["stderr"] = out.getvalue(), err.getvalue()
    return _encode(rec, result, error)


# Results of these types pickle the same with pickle as with cloudpickle, and
# pickle's C code does it in a microsecond where cloudpickle's Pickler costs
# tens: most cells return None, numbers or strings.
_PLAIN = (type(None), bool, int, float, complex, str, bytes)


def _dumps(result):
    if type(result) in _PLAIN:
        return pickle.dumps(result)
    return cloudpickle.dumps(result)


def _encode(rec, result, error):
    if error is None:
        try:
            rec["result"] = _dumps(result)
        except Exception as exc:
            error = TypeError(f"the result of worker {rec['worker_id']} cannot be sent back "
                              f"to the notebook: {type(exc).__name__}: {exc}")
    if error is not None:
        tb = error.__traceback__.tb_next if error.__traceback__ is not None else None
        if isinstance(error, StopRequest):
            # Where the cell was when stopped, without our signal handler's
            # frame; the parent adds the reason (timeout, interrupt) below it.
            frames = [f for f in traceback.extract_tb(tb) if f.filename != __file__]
            rec["traceback"] = ("Traceback (most recent call last):\n"
                                + "".join(traceback.format_list(frames)))
        else:
            rec["traceback"] = "".join(traceback.format_exception(type(error), error, tb))
        rec["error_type"] = f"{type(error).__module__}.{type(error).__qualname__}"
        rec["error_text"] = str(error)
        rec["stopped"] = isinstance(error, StopRequest)
        try:
            rec["error"] = cloudpickle.dumps(error)
        except Exception:
            rec["error"] = None                   # rebuilt from its text by the parent
    # The reply itself holds only bytes, numbers, strings and the comm
    # figures (a dict of numbers): plain pickle, in C.
    return pickle.dumps(rec)


def _register_sources(func):
    """Put a notebook cell's source in linecache, so tracebacks show its lines."""
    if getattr(func, "__concmagic_sources__", None):
        from ..cell import register_sources
        register_sources(func)


if __name__ == "__main__":                        # pragma: no cover - not a script
    sys.exit("concmagic.runners._worker is started by concmagic, not run directly")
