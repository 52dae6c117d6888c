"""The inside of a worker process: receive a cell function, run it, reply.

Kept light on imports (no IPython, no NumPy) because it is what every new
worker process loads first; the forkserver preloads it so forks start warm.

Protocol, over one duplex pipe per worker (parent -> child, then back):

    (worker_id, n_workers, comm, share)   a header, pickled; comm is None,
                             or {"timeout": seconds} for a function taking
                             comm; share is None, or the layouts and names
                             of the run's shared arrays (runners/shared.py):
    <1 byte + descriptors>   then the worker's sockets to the other workers
                             (SCM_RIGHTS; see concmagic.comm.hand_over)
    <1 byte + descriptors>   then the shared arrays' memfds (shared.send)
    <bytes>                  the function, pickled by cloudpickle (by value;
                             shared arrays in it are references)
                             ...the worker runs it...
    <bytes>                  a reply dict, pickled by cloudpickle, with the
                             seconds spent unpickling the function ("load")
                             and pickling the result ("dump")
    None                     shutdown

A worker that maps shared arrays drops and unmaps them before it replies;
if its cell kept a reference to one, it replies with "retired" and exits,
so that nothing outlives the run.
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

from . import settle

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
            worker_id, n_workers, comm_spec, share_spec = header
            comm = _receive_comm(conn, worker_id, n_workers, comm_spec)
            shared = _receive_shared(conn, share_spec)
            payload = conn.recv_bytes()
        except (EOFError, OSError):               # the parent is gone
            return
        rec = _execute(payload, worker_id, n_workers, comm, shared)
        del payload                               # may be large: not kept until the next job
        # _execute's frame, and with it the cell's objects, are gone: unmap.
        retired = shared is not None and not isinstance(shared, BaseException) \
            and not shared.release()
        rec["retired"] = retired
        del shared
        # The reply holds only bytes, numbers, strings and the comm figures
        # (a dict of numbers): plain pickle, in C.
        conn.send_bytes(pickle.dumps(rec))
        if retired:
            return


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


def _receive_shared(conn, spec):
    """The run's shared arrays, mapped (None without any); an exception if that failed."""
    if spec is None:
        return None
    from . import shared
    try:
        return shared.receive(conn, spec)
    except (EOFError, ConnectionError):           # the parent is gone: serve() ends
        raise
    except (OSError, ValueError) as exc:          # out of descriptors or memory: this worker's error
        return exc


def _execute(payload, worker_id, n_workers, comm=None, shared=None):
    """Run one job; returns the reply dict (serve() pickles it)."""
    global _busy
    rec = {"worker_id": worker_id, "pid": os.getpid(), "start": math.nan, "end": math.nan,
           "cpu": math.nan, "received": time.perf_counter(), "load": math.nan,
           "dump": math.nan}
    result = error = None
    out, err = io.StringIO(), io.StringIO()
    kwargs = {}
    if isinstance(comm, BaseException):
        error, comm = comm, None
    elif comm is not None:
        kwargs["comm"] = comm
    if isinstance(shared, BaseException):
        error, shared = error or shared, None
    func = None
    restore = None
    try:
        try:
            if error is None:
                t = time.perf_counter()
                func = shared.loads(payload) if shared is not None else pickle.loads(payload)
                rec["load"] = time.perf_counter() - t
        except BaseException as exc:              # noqa: B036 - reported, not lost
            error = RuntimeError(f"the cell function could not be loaded in worker "
                                 f"process {os.getpid()}: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
        if func is not None:
            _register_sources(func)
            if shared is not None:
                restore = shared.inject(func)
            with redirect_stdout(out), redirect_stderr(err):
                c0 = time.process_time()
                rec["start"] = time.perf_counter()
                _busy = True
                try:
                    result = settle(func(worker_id=worker_id, n_workers=n_workers, **kwargs))
                except BaseException as exc:      # noqa: B036
                    error = exc
                finally:
                    _busy = False
                    rec["end"] = time.perf_counter()
                    rec["cpu"] = time.process_time() - c0
    except StopRequest:
        _busy = False                             # landed after the cell returned
    finally:
        if restore is not None:
            restore()
        if comm is not None:
            # Peers see this worker's sockets close (and stop waiting on it)
            # once its last messages are written out.
            comm.close()
            rec["comm"] = comm.stats()
    rec["stdout"], rec["stderr"] = out.getvalue(), err.getvalue()
    return _encode(rec, result, error, cloudpickle.dumps if shared is None else shared.dumps)


# Results of these types pickle the same with pickle as with cloudpickle, and
# pickle's C code does it in a microsecond where cloudpickle's Pickler costs
# tens: most cells return None, numbers or strings.
_PLAIN = (type(None), bool, int, float, complex, str, bytes)


def _encode(rec, result, error, dumps=cloudpickle.dumps):
    """Fill the reply dict with the result (pickled by ``dumps``) or the error."""
    if error is None:
        try:
            t = time.perf_counter()
            rec["result"] = pickle.dumps(result) if type(result) in _PLAIN else dumps(result)
            rec["dump"] = time.perf_counter() - t
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
            rec["error"] = dumps(error)
        except Exception:
            rec["error"] = None                   # rebuilt from its text by the parent
    return rec


def _register_sources(func):
    """Put a notebook cell's source in linecache, so tracebacks show its lines."""
    if getattr(func, "__concmagic_sources__", None):
        from ..cell import register_sources
        register_sources(func)


if __name__ == "__main__":                        # pragma: no cover - not a script
    sys.exit("concmagic.runners._worker is started by concmagic, not run directly")
