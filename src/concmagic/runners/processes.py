"""Run a cell function in N worker processes: isolated memory, every core.

    run_processes(func, n)
        |  cloudpickle.dumps(func) once: the function by value, with exactly
        |  the globals it uses (a name that cannot be pickled -> ShipError,
        |  before any worker starts)
        v
    parent --pipe--> [process 0]  [process 1] ... [process n-1]   a warm gang,
        ^                |            |                |          reused and
        |                v            v                v          resized
        +------ one reply each: times, process CPU, result or error, output
                (a dead worker is seen on its process sentinel -> WorkerDied)

    A function taking ``comm`` also gets, before it runs, its ends of a
    socket pair to every other worker, made for this run (concmagic.comm):
    messages go straight from worker to worker, never through the parent.

        [process 0] <====> [process 1] <====> [process 2]
             ^                                     ^
             +=====================================+

Shared arrays (``share=``, runners/shared.py): the arrays named go into
shared memory once and travel as references inside the pickled function;
their memfds follow the header over each control pipe, and each worker maps
them for the run, without a copy.

What travels is counted in ``report.shipping`` (concmagic.shipping): bytes
each way, and the seconds spent pickling, sending and unpickling, here and
(reported back) in the workers. Pickling happens inside the run's wall time.

Start methods: "forkserver" (the default on Linux) and "spawn". Plain "fork"
is refused: a notebook kernel runs threads, and forking a threaded process
can copy a lock that some other thread holds, deadlocking the child.

Stopping (timeout, Ctrl-C): busy workers get SIGUSR1, which raises inside
their cell; one that has not answered within a second is killed, and
replaced on the next run.
"""
import atexit
import contextlib
import math
import multiprocessing
import os
import pickle
import select
import signal
import socket
import sys
import threading
import time
import traceback
import types
from multiprocessing import spawn as mp_spawn
from multiprocessing.connection import wait

import cloudpickle

from ..comm import DEFAULT_TIMEOUT as DEFAULT_COMM_TIMEOUT
from ..comm import CommStats, blame_the_stop, close_mesh, hand_over, socket_mesh, wants_comm
from ..comm import attach as attach_comm
from ..errors import RemoteTraceback, RunTimeout, ShipError, WorkerDied
from ..report import Report, WorkerRun
from ..shipping import Shipping
from . import _worker
from . import shared as _shared
from ._common import attach, measured, wait_slice

__all__ = ["run_processes", "shutdown", "pool_status", "START_METHODS", "ship"]

#: Start methods we support and test; "fork" is deliberately absent (see above).
START_METHODS = ("forkserver", "spawn") if os.name == "posix" else ("spawn",)
DEFAULT_START_METHOD = START_METHODS[0]

#: Seconds a worker gets to stop after SIGUSR1 before it is killed.
STOP_GRACE = 1.0


class RemoteError(Exception):
    """A worker's exception that could not be sent back as itself."""


# ---------------------------------------------------------------------------
# Shipping: the function, by value
# ---------------------------------------------------------------------------
def ship(func, shared=None):
    """The pickled function, or ShipError naming the variable that cannot go.

    ``shared`` maps id(array) -> key for arrays in shared memory: those
    travel as references to the key, not as data (runners/shared.py).
    """
    try:
        if shared:
            return _shared.dumps(func, shared)
        return cloudpickle.dumps(func)
    except Exception as exc:
        culprit = _find_unshippable(func)
        if culprit is None:
            raise ShipError(getattr(func, "__name__", "<function>"), type(func).__name__,
                            f"{type(exc).__name__}: {exc}") from exc
        name, obj, reason = culprit
        raise ShipError(name, f"{type(obj).__module__}.{type(obj).__qualname__}",
                        reason) from None


def _captured_arrays(func, skip=(), seen=None):
    """name -> bytes of the NumPy arrays ``func`` pickles by value: its
    globals and closure, and those of the notebook functions it uses.
    Ids in ``skip`` (shared arrays) are left out. Cheap: nothing is pickled."""
    np = sys.modules.get("numpy")                 # no NumPy imported: no arrays
    seen = set() if seen is None else seen
    code = getattr(func, "__code__", None)
    if np is None or code is None or id(func) in seen:
        return {}
    seen.add(id(func))
    g = getattr(func, "__globals__", {})
    values = [(n, g[n]) for n in sorted(_global_names(code)) if n in g]
    for name, cell in zip(code.co_freevars, func.__closure__ or ()):
        try:
            values.append((name, cell.cell_contents))
        except ValueError:                        # an empty cell
            pass
    found = {}
    for name, obj in values:
        if isinstance(obj, np.ndarray) and id(obj) not in skip:
            found[name] = obj.nbytes
        elif isinstance(obj, types.FunctionType) and obj.__module__ == func.__module__:
            found.update(_captured_arrays(obj, skip, seen))
    return found


def _global_names(code):
    """Names a code object (and the code nested in it) may read as globals."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _find_unshippable(func, seen=None):
    seen = set() if seen is None else seen
    if id(func) in seen:
        return None
    seen.add(id(func))
    candidates = []
    code = getattr(func, "__code__", None)
    if code is not None:
        g = getattr(func, "__globals__", {})
        candidates += [(n, g[n]) for n in sorted(_global_names(code)) if n in g]
        for name, cell in zip(code.co_freevars, func.__closure__ or ()):
            try:
                candidates.append((name, cell.cell_contents))
            except ValueError:                    # an empty cell
                pass
    for name, obj in candidates:
        try:
            cloudpickle.dumps(obj)
        except Exception as exc:
            # A notebook function that fails because of *its* globals: blame
            # the variable it uses, which is what the user must change.
            if isinstance(obj, types.FunctionType):
                inner = _find_unshippable(obj, seen)
                if inner is not None:
                    return inner
            return name, obj, f"{type(exc).__name__}: {exc}"
    return None


# ---------------------------------------------------------------------------
# The gang of worker processes
# ---------------------------------------------------------------------------
@contextlib.contextmanager
def _without_main_module():
    """Start processes that do not re-import the parent's ``__main__``.

    spawn and forkserver children normally re-run the parent's main script
    so that functions defined there can be found by name. Ours never need
    it (cloudpickle ships functions by value), and re-running a script with
    no ``if __name__ == "__main__"`` guard would start processes from the
    child, which multiprocessing then refuses. So for our workers only, the
    preparation data leaves the main module out.
    """
    original = mp_spawn.get_preparation_data

    def preparation_data(name):
        data = original(name)
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
        return data

    with _start_lock:
        mp_spawn.get_preparation_data = preparation_data
        try:
            yield
        finally:
            mp_spawn.get_preparation_data = original


_start_lock = threading.Lock()


class _Proc:
    def __init__(self, ctx, index):
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_worker.serve, args=(child,),
                                   name=f"concmagic-process-{index}", daemon=True)
        with _without_main_module():
            self.process.start()
        child.close()                             # the child holds its own copy

    @property
    def pid(self):
        return self.process.pid

    def alive(self):
        return self.process.is_alive()

    def stop(self, timeout=1.0):
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout)
        self.conn.close()

    def kill(self):
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()


class _Gang:
    def __init__(self, method):
        self.method = method
        self.ctx = multiprocessing.get_context(method)
        if method == "forkserver":
            # Forks of a server that already imported the worker start warm.
            self.ctx.set_forkserver_preload(["concmagic.runners._worker"])
        self.procs = []
        self.lock = threading.Lock()

    def resize(self, n):
        """Exactly n live workers: drop the dead, start the missing, stop extras."""
        # is_alive() per worker, not one poll over the sentinels: once a
        # killed worker's exit code has been read (kill() joins it), its
        # sentinel reads as ended only after the forkserver closes its end.
        for proc in [p for p in self.procs if not p.alive()]:
            proc.kill()
            self.procs.remove(proc)
        while len(self.procs) > n:
            self.procs.pop().stop()
        while len(self.procs) < n:
            self.procs.append(_Proc(self.ctx, len(self.procs)))

    def kill(self):
        procs, self.procs = self.procs, []
        for proc in procs:
            proc.kill()

    def shutdown(self):
        procs, self.procs = self.procs, []
        for proc in procs:                        # ask all first, then wait
            try:
                proc.conn.send(None)
            except (OSError, ValueError):
                pass
        for proc in procs:
            proc.stop()


_gangs = {}
_gangs_lock = threading.Lock()


def _gang_for(method):
    with _gangs_lock:
        if method not in _gangs:
            _gangs[method] = _Gang(method)
        return _gangs[method]


def run_processes(func, n, *, timeout=None, start_method=None, measure=None, progress=None,
                  comm_timeout=DEFAULT_COMM_TIMEOUT, share=None):
    """Run ``func(worker_id=i, n_workers=n)`` in n worker processes; a Report.

    A ``func`` taking ``comm`` also gets its end of a socket pair to each
    other worker, made for this run (concmagic.comm.ProcessComm).
    ``share`` (names or name -> array) puts NumPy arrays in shared memory
    (see concmagic.runners.shared); their views are ``report.shared``.
    """
    method = DEFAULT_START_METHOD if start_method is None else start_method
    if method not in START_METHODS:
        raise ValueError(f"start_method must be one of {', '.join(START_METHODS)}; got {method!r}")
    if _worker._busy:
        # Inside a cell that already runs in a worker process (a daemon, which
        # multiprocessing refuses to let start children with a bare assertion).
        raise RuntimeError("runs in processes cannot be nested: this cell already runs in a "
                           "worker process; use model='threads' or 'serial' inside it")
    request = _shared.resolve(share, func) if share else None   # ShareError: nothing done yet
    gang = _gang_for(method)
    if not gang.lock.acquire(blocking=False):
        raise RuntimeError("the process pool is busy with another run; "
                           "runs in processes cannot be nested or run at once")
    started = False
    try:
        with measured(measure) as done:
            t0 = time.perf_counter()
            books = _Books(n, request)
            payload = books.ship(func)            # ShipError: before any worker starts
            books.place()
            started = True
            gang.resize(n)
            for worker_id, proc in enumerate(gang.procs):
                if measure is not None:
                    measure.register_pid(worker_id, proc.pid)
                if progress is not None:
                    progress.watch_pid(worker_id, proc.pid)
            spec = {"timeout": comm_timeout} if wants_comm(func) else None
            report = _run(gang, payload, n, timeout, t0, progress, spec, books)
            return attach(report, done(t0))
    except Exception:
        # A run that failed part-way may have left workers busy and replies
        # unread in the pipes, which the next run would take for its own
        # results; fresh workers are slower but never wrong. (One that could
        # not be shipped never reached them: the warm pool stays.)
        if started:
            gang.kill()
        raise
    finally:
        gang.lock.release()


class _Books:
    """One run's shipping: the Shipping being counted, and its shared arrays."""

    def __init__(self, n, request=None):
        self.shipping = Shipping(n)
        self.request = request
        self.placed = None
        self.retired = []                         # workers that kept a shared array

    def ship(self, func):
        """The pickled function, timed; arrays it captures by value are noted."""
        keys = self.request.ids if self.request is not None else None
        t = time.perf_counter()
        payload = ship(func, keys)
        self.shipping.pickle = time.perf_counter() - t
        self.shipping.captured = _captured_arrays(func, keys or ())
        return payload

    def place(self):
        if self.request is None:
            return
        self.placed = placed = _shared.place(self.request)
        self.shipping.shared = placed.nbytes()
        self.shipping.reused = placed.reused
        self.shipping.copied, self.shipping.place = placed.copied, placed.seconds

    @property
    def share_spec(self):
        return None if self.placed is None else self.placed.spec

    def loads(self, data):
        """A worker's pickled result or error; shared arrays come back as our views."""
        t = time.perf_counter()
        try:
            if self.placed is None:
                return pickle.loads(data)
            return _shared.loads(data, self.placed.views)
        finally:
            self.shipping.unpickle += time.perf_counter() - t

    def reply(self, rec, nbytes, seconds):
        """Count a worker's reply: its size, and the times it reported."""
        i = rec["worker_id"]
        self.shipping.received += nbytes
        self.shipping.unpickle += seconds
        self.shipping.worker_load[i] = _nan_to_none(rec.get("load"))
        self.shipping.worker_dump[i] = _nan_to_none(rec.get("dump"))
        if rec.get("retired"):
            self.retired.append(i)


def _nan_to_none(x):
    return None if x is None or x != x else x


def _run(gang, payload, n, timeout, t0, progress=None, comm_spec=None, books=None):
    books = _Books(n) if books is None else books
    procs = list(gang.procs)
    _send_jobs(procs, payload, n, comm_spec, books)
    runs, notes = {}, []
    stats = None if comm_spec is None else {}   # worker_id -> its comm numbers
    deadline = None if timeout is None else t0 + timeout
    try:
        while len(runs) < n:
            left = None if deadline is None else max(0.0, deadline - time.perf_counter())
            if not _collect(procs, runs, t0, wait_slice(left, progress), stats=stats,
                            books=books):
                if deadline is not None and time.perf_counter() >= deadline:
                    notes = _stop(gang, procs, runs, t0, RunTimeout(
                        f"did not finish within the timeout of {timeout:g} s; stopped"), stats,
                        books)
                    break
                progress.tick(t0, runs)           # only a progress slice ran out
    except KeyboardInterrupt:
        _stop(gang, procs, runs, t0, KeyboardInterrupt(), stats, books)
        raise
    finally:
        if progress is not None:
            progress.close()
    wall = time.perf_counter() - t0
    report = Report(model="processes", n_workers=n, wall=wall, workers=[runs[i] for i in range(n)])
    report.notes.extend(notes)
    books.shipping.wall = wall
    report.shipping = books.shipping
    if books.placed is not None:
        report.shared = books.placed.by_name()
    if books.retired:
        for i in books.retired:                   # it exits after replying: reap it
            procs[i].process.join(STOP_GRACE)
        report.notes.append(
            f"worker {', '.join(map(str, books.retired))} kept a reference to a shared array "
            "after its cell ended (stored in a module?), so it was retired: its mapping went "
            "with it, and a fresh process replaces it on the next run")
    if stats is not None:
        attach_comm(report, CommStats("processes", [stats.get(i) for i in range(n)]))
    return report


def _send_jobs(procs, payload, n, comm_spec, books):
    """Each worker's header, its comm sockets and shared arrays (if any), then the function.

    The sockets are made here for this run only, a pair between each two
    workers; each worker gets its ends over its control pipe, and the parent
    closes all of its copies, so that a worker's ends close when it does and
    its peers see it go (no leaked descriptors, no recv waiting on the dead).
    """
    mesh = None
    if comm_spec is not None and n > 1:
        if not hasattr(socket, "send_fds") or os.name != "posix":
            raise RuntimeError("comm between worker processes hands each worker its sockets "
                               "over a Unix socket, which this system lacks; run the cell "
                               "in threads or asyncio")
        mesh = socket_mesh(n)
    try:
        shipping, share_spec = books.shipping, books.share_spec
        for worker_id, proc in enumerate(procs):
            # conn.send would pickle through ForkingPickler (Python code);
            # the bytes are the same, and the worker's conn.recv() reads them.
            proc.conn.send_bytes(pickle.dumps((worker_id, n, comm_spec, share_spec)))
            if mesh is not None:
                hand_over(proc.conn, [s for s in mesh[worker_id] if s is not None])
            if share_spec is not None:
                _shared.send(proc.conn, books.placed)
            t = time.perf_counter()
            proc.conn.send_bytes(payload)
            shipping.send += time.perf_counter() - t
            shipping.sent += len(payload)
    finally:
        if mesh is not None:
            close_mesh(mesh)


def _ready(objects, timeout):
    """Which of ``objects`` (Connections, or sentinel fds) can be read now or
    within ``timeout`` seconds (None: no limit), a closed one included.

    multiprocessing.connection.wait, without the selector it builds and
    fills on every call (a fifth of a warm run's Python, three calls a run).
    """
    if not hasattr(select, "poll"):               # Windows
        return wait(objects, timeout)
    poller = select.poll()
    by_fd = {}
    for obj in objects:
        fd = obj if type(obj) is int else obj.fileno()
        by_fd[fd] = obj
        poller.register(fd, select.POLLIN)
    ms = None if timeout is None else math.ceil(timeout * 1000)
    return [by_fd[fd] for fd, _ in poller.poll(ms)]


def _collect(procs, runs, t0, timeout, reason=None, stats=None, books=None):
    """Wait for replies or deaths; record them. False if nothing came in time."""
    pending = {i: p for i, p in enumerate(procs) if i not in runs}
    by_conn = {p.conn: i for i, p in pending.items()}
    by_sentinel = {p.process.sentinel: i for i, p in pending.items()}
    ready = _ready(list(by_conn) + list(by_sentinel), timeout)
    if not ready:
        return False
    for obj in ready:
        i = by_conn.get(obj, by_sentinel.get(obj))
        if i in runs:
            continue
        proc = pending[i]
        try:
            if obj is proc.conn or proc.conn.poll():     # ready conn: a reply, or EOF
                runs[i] = _decode(proc.conn.recv_bytes(), t0, reason, stats, books)
                continue
        except (EOFError, OSError):
            pass
        if obj in by_sentinel or not proc.alive():
            proc.process.join(1)
            runs[i] = WorkerRun(worker_id=i, pid=proc.pid,
                                error=WorkerDied(i, proc.process.exitcode, proc.pid))
    return True


def _decode(data, t0, reason=None, stats=None, books=None):
    t = time.perf_counter()
    rec = pickle.loads(data)
    if books is not None:
        books.reply(rec, len(data), time.perf_counter() - t)
    loads = pickle.loads if books is None else books.loads
    if stats is not None and rec.get("comm") is not None:
        stats[rec["worker_id"]] = rec["comm"]
    run = WorkerRun(worker_id=rec["worker_id"], pid=rec["pid"],
                    start=rec["start"] - t0, end=rec["end"] - t0, cpu=rec["cpu"],
                    stdout=rec["stdout"], stderr=rec["stderr"])
    return fill_outcome(run, rec, loads, stopped=reason if rec.get("stopped") else None)


def fill_outcome(run, rec, loads=pickle.loads, stopped=None):
    """Set ``run``'s result, or its error and traceback, from a worker's reply.

    ``rec`` is the record a worker process (or Dask task) sends back;
    ``stopped``, the error to report for a cell the runner stopped (timeout,
    interrupt), else None. Shared by the processes and Dask runners.
    """
    if "traceback" not in rec:
        try:
            run.result = loads(rec["result"])
        except Exception as exc:
            # Pickled fine in the worker, yet will not load here (a class only
            # the worker can import, a __reduce__ that fails). Raising would
            # lose the other workers' results and leave their replies unread
            # in the pipes, to be taken for the next run's results.
            run.error = RuntimeError(
                f"the result of worker {rec['worker_id']} was sent back but cannot be "
                f"loaded in the notebook: {type(exc).__name__}: {exc}")
            run.error.__cause__ = exc
            run.traceback = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return run
    run.traceback = rec["traceback"]
    if stopped is not None:
        run.error = stopped
        run.traceback += "".join(traceback.format_exception_only(type(stopped), stopped))
        return run
    error = None
    if rec.get("error") is not None:
        try:
            error = loads(rec["error"])
        except Exception:
            error = None
    if error is None:
        error = RemoteError(f"{rec['error_type']}: {rec['error_text']}")
    error.__cause__ = RemoteTraceback(rec["traceback"])
    run.error = error
    return run


def _stop(gang, procs, runs, t0, reason, stats=None, books=None):
    """SIGUSR1 to busy workers; kill those that do not answer in time."""
    pending = [i for i in range(len(procs)) if i not in runs]
    for i in pending:
        try:
            os.kill(procs[i].pid, signal.SIGUSR1)
        except ProcessLookupError:
            pass
    end = time.perf_counter() + STOP_GRACE
    while len(runs) < len(procs) and (left := end - time.perf_counter()) > 0:
        if not _collect(procs, runs, t0, left, reason, stats, books):
            break
    killed = [i for i in pending if i not in runs]
    for i in killed:
        procs[i].kill()
        runs[i] = WorkerRun(worker_id=i, pid=procs[i].pid, error=reason)
    for i in pending:                             # a death we caused is the reason, not news
        if isinstance(runs[i].error, WorkerDied) and i not in killed:
            runs[i].error = reason
    if stats is not None:
        blame_the_stop(runs, pending, reason)
    if not killed:
        return []
    return [f"worker {', '.join(map(str, killed))} did not stop within {STOP_GRACE:g} s "
            "and was killed; a fresh process replaces it on the next run."]


def pool_status():
    """Per start method: the live worker pids."""
    with _gangs_lock:
        return {m: [p.pid for p in g.procs if p.alive()] for m, g in _gangs.items()}


def shutdown():
    """Stop every worker process (started again on the next run)."""
    with _gangs_lock:
        gangs = list(_gangs.values())
    for gang in gangs:
        with gang.lock:
            gang.shutdown()


atexit.register(shutdown)
