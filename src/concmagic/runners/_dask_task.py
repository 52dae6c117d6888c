"""The inside of a Dask task: run one worker's cell, capture its output, reply.

This module travels to the Dask workers *by value*, pickled by cloudpickle
with the cell function (concmagic.runners.dask registers it so): the task
that runs is always the notebook's own version of it, whatever is installed
on the cluster, and a function that needs nothing of concmagic runs where
concmagic is not installed. (A notebook cell does: its function calls
helpers of concmagic.cell; without concmagic there, loading it fails with
an error that says so.) Hence this module's one rule: the standard library
and cloudpickle only, nothing from concmagic.

    run_cell(payload, worker_id, n_workers, key) -> bytes
        in a task thread of a Dask worker: loads the cell function, runs it
        with stdout and stderr captured, and replies with one record pickled
        by cloudpickle: times, CPU, host, pid, output, and the result or the
        error with its traceback on the cell's lines (the record a worker
        process sends, concmagic.runners._worker, plus where and when)
    stop(keys, dask_worker) -> the keys whose cells were running
        on the worker's event loop (by Client.run): raises StopRequest in
        the thread running each of those cells (a timeout, Ctrl-C), as
        SIGUSR1 does in a worker process; a task not yet begun never begins
    identity(log_level) -> (pid, host name) of the worker process (by Client.run)

A task and a stop meet in a registry of the worker process. It cannot be a
global of this module (every load of a by-value module makes fresh
globals), so it is a small module object of its own in ``sys.modules``.
"""
import contextlib
import ctypes
import io
import linecache
import logging
import math
import os
import pickle
import socket
import sys
import threading
import time
import traceback
import types

import cloudpickle

# The registry's name in sys.modules of a Dask worker process.
_REGISTRY = "_concmagic_dask_tasks"
# Seconds a stop for a task that never began is remembered (the client
# cancels such a task; this only bounds what a lost cancel would leave).
_FORGET_AFTER = 3600.0


class StopRequest(BaseException):
    """Raised in a cell's thread by ``stop`` (timeout, Ctrl-C).

    A BaseException, so that a cell's ``except Exception`` cannot swallow it.
    """


def _registry():
    """The worker process's ``{task key: entry}`` and its lock (made once)."""
    registry = sys.modules.get(_REGISTRY)
    if registry is None:
        fresh = types.ModuleType(_REGISTRY, "concmagic's cells running in this Dask worker")
        fresh.lock = threading.Lock()
        fresh.tasks = {}
        registry = sys.modules.setdefault(_REGISTRY, fresh)   # atomic: one wins
    return registry


def _async_raise(ident, exc_type):
    # CPython's documented (if low-level) way to raise in another thread:
    # the exception lands when that thread next runs bytecode; NULL clears it.
    return ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), ctypes.py_object(exc_type) if exc_type else None)


def _boot_id():
    """This machine's boot id: equal boot ids share one monotonic clock."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


def identity(log_level=None):
    """``(pid, host name)`` of this worker process (by Client.run); with
    ``log_level``, Dask's own logging here is set to it first."""
    if log_level is not None:
        logging.getLogger("distributed").setLevel(log_level)
    return os.getpid(), socket.gethostname()


def run_cell(payload, worker_id, n_workers, key):
    """Run the pickled cell function as worker ``worker_id``; the reply, pickled."""
    rec = {"worker_id": worker_id, "pid": os.getpid(), "host": socket.gethostname(),
           "boot_id": _boot_id(), "start": math.nan, "end": math.nan,
           "wall_start": math.nan, "wall_end": math.nan,
           "cpu": math.nan, "thread_cpu": math.nan}
    result = error = None
    out, err = io.StringIO(), io.StringIO()
    func = None
    try:
        func = pickle.loads(payload)
    except BaseException as exc:                  # noqa: B036 - reported, not lost
        hint = ""
        if isinstance(exc, ImportError) and (exc.name or "").split(".")[0] == "concmagic":
            # A notebook cell's function calls helpers of concmagic.cell.
            hint = ("; notebook cells need concmagic installed on the Dask workers too "
                    "(the same version as in the notebook)")
        error = RuntimeError(f"the cell function could not be loaded on the Dask worker "
                             f"(pid {os.getpid()}): {type(exc).__name__}: {exc}{hint}")
        error.__cause__ = exc
    entry = {"ident": threading.get_ident(), "running": False, "stop": False,
             "exc": StopRequest, "since": time.monotonic()}
    registry = _registry()
    if func is not None:
        _register_sources(func)
        # Everything the cell prints goes to its own buffers. A worker of one
        # thread (a LocalCluster's, or `dask worker --nthreads 1`) runs no
        # other task meanwhile; see concmagic.runners.dask on more threads.
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            c0, tc0 = time.process_time(), time.thread_time()
            rec["start"], rec["wall_start"] = time.perf_counter(), time.time()
            result, error = _call(func, entry, registry, key,
                                  worker_id=worker_id, n_workers=n_workers)
            rec["end"], rec["wall_end"] = time.perf_counter(), time.time()
            rec["cpu"] = time.process_time() - c0
            rec["thread_cpu"] = time.thread_time() - tc0
    with registry.lock:
        if registry.tasks.get(key) is entry:
            del registry.tasks[key]
    rec["stdout"], rec["stderr"] = out.getvalue(), err.getvalue()
    stopped = isinstance(error, StopRequest) or (
        entry["stop"] and type(error).__name__ == "KernelCancelled")
    return _encode(rec, result, error, stopped)


def _call(func, entry, registry, key, **kwargs):
    """``func(**kwargs)``, stoppable by ``stop``; ``(result, error)``.

    Stop requests are raised only while ``entry["running"]``, under the
    registry's lock, so one never lands in this bookkeeping after the cell
    returned (one still pending then is cleared); a stop that came before
    the cell began is found here, and the cell never starts.
    """
    result = error = None
    returned = False
    try:
        try:
            with registry.lock:
                first = registry.tasks.setdefault(key, entry)
                begin = first is entry
                if begin:
                    entry["running"] = True
                else:                             # stopped before it began
                    registry.tasks[key] = entry
            if begin:
                try:
                    result = func(**kwargs)
                    if isinstance(result, types.CoroutineType):
                        # An async cell (%%compare with asyncio among its
                        # models): run it in a loop of its own, as
                        # concmagic.runners.settle does (this module travels
                        # by value, so it does not import that).
                        import asyncio
                        result = asyncio.run(result)
                except BaseException as exc:      # noqa: B036 - the report keeps it
                    error = exc
            else:
                error = StopRequest()
            returned = True
        finally:
            _end(entry, registry)
    except StopRequest as exc:
        # Landed outside the cell: before it ran, it was stopped; after it
        # returned, before _end(), it finished, and its outcome stands.
        if not returned:
            error = exc
        _end(entry, registry)
    return result, error


def _end(entry, registry):
    with registry.lock:
        entry["running"] = False
        if entry["stop"]:                         # a stop was sent: clear it if still pending
            _async_raise(entry["ident"], None)


def stop(keys, dask_worker=None):
    """Stop the cells of these task keys running in this worker process.

    ``keys``: a list, or ``{worker address: list}`` of which this worker
    takes its own (Client.run passes ``dask_worker``). Returns the keys whose
    cells were running (and got StopRequest). A key not begun here is
    marked, so that its task, if it still starts, does not run the cell.
    """
    if isinstance(keys, dict):
        keys = keys.get(getattr(dask_worker, "address", None), ())
    registry = _registry()
    stopped = []
    now = time.monotonic()
    with registry.lock:
        for key in keys:
            entry = registry.tasks.get(key)
            if entry is None:
                registry.tasks[key] = {"ident": None, "running": False, "stop": True,
                                       "exc": None, "since": now}
                continue
            if entry["stop"]:
                continue
            entry["stop"] = True
            if entry["running"]:
                _async_raise(entry["ident"], entry["exc"])
                stopped.append(key)
        for key, entry in list(registry.tasks.items()):
            if entry["ident"] is None and now - entry["since"] > _FORGET_AFTER:
                del registry.tasks[key]
    if stopped:
        # Compiled kernels run no bytecode, so they would not see the
        # exception until they return; their cancel flag stops them within
        # ~1 ms (only if the cell has loaded them: never imported here).
        core = sys.modules.get("concmagic._core")
        if core is not None:
            core.cancel()
    return stopped


def _encode(rec, result, error, stopped):
    if error is None:
        try:
            rec["result"] = cloudpickle.dumps(result)
        except Exception as exc:
            error = TypeError(f"the result of worker {rec['worker_id']} cannot be sent back "
                              f"to the notebook: {type(exc).__name__}: {exc}")
    if error is not None:
        # The cell's frames only: none of this module's (found by their
        # globals, which a by-value load shares among this module's
        # functions; cloudpickle renames their files to "<dynamic-code>").
        tb = error.__traceback__
        while tb is not None and tb.tb_frame.f_globals is globals():
            tb = tb.tb_next
        if stopped:
            # Where the cell was when stopped; the client adds the reason.
            rec["traceback"] = ("Traceback (most recent call last):\n"
                                + "".join(traceback.format_tb(tb)))
        else:
            rec["traceback"] = "".join(traceback.format_exception(type(error), error, tb))
        rec["error_type"] = f"{type(error).__module__}.{type(error).__qualname__}"
        rec["error_text"] = str(error)
        rec["stopped"] = stopped
        try:
            rec["error"] = None if stopped else cloudpickle.dumps(error)
        except Exception:
            rec["error"] = None                   # rebuilt from its text by the client
    return cloudpickle.dumps(rec)


# A copy of concmagic.cell.register_sources (this module may not import
# concmagic): the cell's lines in linecache, and its code's filename back.
def _register_sources(func):
    sources = getattr(func, "__concmagic_sources__", None) or {}
    for filename, source in sources.items():
        lines = [line + "\n" for line in source.splitlines()]
        linecache.cache[filename] = (len(source), None, lines, filename)
    if len(sources) == 1:
        (filename,) = sources
        code = getattr(func, "__code__", None)
        if code is not None and code.co_filename != filename:
            func.__code__ = _renamed(code, filename)


def _renamed(code, filename):
    consts = tuple(_renamed(c, filename) if isinstance(c, types.CodeType) else c
                   for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)
