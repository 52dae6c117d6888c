"""Run a cell function on a Dask distributed cluster: one task per worker.

    run_dask(func, n, scheduler=None)
        |  ship(func): cloudpickle by value, as for processes (a variable
        |  that cannot be pickled -> ShipError, before anything starts)
        v
    Client --task i, pinned to Dask worker i--> [worker 0] ... [worker n-1]
        ^    (workers=[address], allow_other_workers=False)      |
        |                                                        v
        +---- one reply each, by a done-callback onto a queue: times, CPU,
              host, pid, output, result or error (traceback on the cell's lines)

Where it runs. With no address: a LocalCluster on 127.0.0.1 (n worker
processes of one thread each, no dashboard), started on first use, reused
while n stays the same, started afresh when n changes or it died, closed by
shutdown() and at exit (its workers retired first, so that none is caught
mid-heartbeat by the scheduler's close). Its start-up is part of the first
run's wall time, as a cold start of the process pool is. With an address: a Client to that
scheduler (cached per address), whose workers are used as they are: worker
i of the cell runs on the i-th worker by address. A cluster with fewer
workers than n is an error (ClusterError), never a queue: queued workers
would not run at once, and the report would time something else than the
cell run n ways.

What travels. The task's own code (concmagic.runners._dask_task) goes by
value with the cell, and the callable Dask is given is the standard
library's ``pickle.loads``: loading the task's pickle runs it (``_Call``).
So the task is always this version's, whatever the cluster has installed,
and a plain function runs on workers that have distributed and cloudpickle
only. A notebook cell's function calls helpers of concmagic.cell (and
``!cmd`` lines its shell stand-in), so for cells the workers need
concmagic too; without it, each worker's error says so.

Stopping (timeout, Ctrl-C). Dask cannot stop a running task, so the task
can stop itself: a Client.run on its worker raises StopRequest in the
thread running the cell (and cancels compiled kernels), as SIGUSR1 does for
worker processes. A cell that has not stopped within STOP_GRACE (blocked in
C) has its task cancelled and, on concmagic's LocalCluster, its worker
process killed (its nanny starts a fresh one); on a cluster at an address
it is left alone, and the report says so. A worker that leaves the cluster
while its cell runs (a crash, the OOM killer) is that worker's WorkerDied.

Not here: ``comm`` (Dask workers have no channels to each other, so a cell
that uses comm is refused), the CPU sampler and the GIL probe. Each task
measures its CPU around the cell: the process's CPU clock on a worker of
one thread (so threads the cell starts count, as in processes), the task
thread's own where the worker runs more threads (other tasks may run
there; their output may then mix into the cell's, which is captured per
process).
"""
import atexit
import logging
import os
import pickle
import queue
import signal
import threading
import time
import traceback
import uuid

import cloudpickle

from ..errors import ConcmagicError, RunTimeout, WorkerDied
from ..report import Report, WorkerRun, format_time
from . import _dask_task
from ._common import wait_slice
from .processes import _without_main_module, fill_outcome, ship

__all__ = ["run_dask", "shutdown", "cluster_status", "require", "DaskUnavailable",
           "ClusterError", "INSTALL_HINT"]

#: How to get the optional dependency.
INSTALL_HINT = "pip install 'concmagic[dask]'"
#: Seconds a stopped cell gets to unwind before its task is given up on.
STOP_GRACE = 1.0
#: Seconds to reach a scheduler given by address before saying it cannot be.
CONNECT_TIMEOUT = 10.0
#: Seconds a LocalCluster worker that a nanny restarts (after a crash, or a
#: cell that would not stop) gets to come back before the cluster is
#: started afresh.
RESTART_TIMEOUT = 20.0
#: How often the wait loop checks that the workers it waits for are still
#: in the cluster (one request to the scheduler each time).
HEALTH_EVERY = 0.5

# The task module goes by value (see the module docstring).
cloudpickle.register_pickle_by_value(_dask_task)


class DaskUnavailable(ImportError):
    """Raised when the dask backend is asked for and ``distributed`` is not
    installed; the message says how to install it."""


class ClusterError(ConcmagicError):
    """Raised before any task is submitted when the Dask cluster cannot run
    the cell n ways: its scheduler cannot be reached, or it has fewer
    workers than the run needs."""


def require():
    """The ``distributed`` module, or DaskUnavailable saying how to get it."""
    try:
        import distributed
    except ImportError as exc:
        raise DaskUnavailable(
            f"the dask backend needs the `distributed` package, which is not installed "
            f"here ({exc}); install it with: {INSTALL_HINT}") from None
    return distributed


class _Call:
    """Pickles as a call: loading the pickle runs ``func(*args)``.

    Dask is handed ``pickle.loads`` and these bytes, so what a worker must
    import to run a task is the standard library and cloudpickle only.
    """

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


# ---------------------------------------------------------------------------
# Clusters: concmagic's own LocalCluster, and clients to clusters by address
# ---------------------------------------------------------------------------
class _Cluster:
    """A Client, and the LocalCluster behind it when concmagic started one."""

    def __init__(self, client, local=None, n=None):
        self.client = client
        self.local = local                        # the LocalCluster, or None
        self.n = n
        self.address = client.scheduler.address
        self._known = {}                          # worker address -> (pid, host name)

    def identities(self, addresses):
        """``(pid, host name)`` of each worker, asked once per worker (a
        restarted worker has a new address)."""
        missing = [a for a in addresses if a not in self._known]
        if missing:
            # Our own workers log only errors (as the LocalCluster's nannies
            # do, silence_logs): their INFO lines would land on the terminal.
            level = logging.ERROR if self.local is not None else None
            self._known.update(self.client.run(_dask_task.identity, level, workers=missing,
                                               on_error="ignore"))
        return [self._known.get(a, (None, None)) for a in addresses]

    def healthy(self, n):
        """For the LocalCluster: n workers up (waiting for any its nannies
        are restarting), every nanny running. A nanny that could not restart
        its worker has closed: then the cluster is started afresh."""
        if self.n != n or not self.alive():
            return False
        nannies = list(self.local.workers.values())
        if len(nannies) != n or any(nanny.status.name != "running" for nanny in nannies):
            return False
        if len(self.workers()) < n:
            self.client.wait_for_workers(n, timeout=RESTART_TIMEOUT)
        return len(self.workers()) == n

    def alive(self):
        if self.client.status != "running":
            return False
        return self.local is None or self.local.status.name == "running"

    def workers(self):
        """``{address: info}`` of the scheduler's workers now (a round trip)."""
        return dict(self.client.scheduler_info()["workers"])

    def close(self):
        # Tearing down, Dask may log errors of its own making (a nanny whose
        # close is cancelled by the cluster's); none is the user's to act on.
        # (Closing a client to someone else's cluster logs nothing.)
        logger = logging.getLogger("distributed")
        level = logger.level
        if self.local is not None:
            logger.setLevel(logging.CRITICAL)
        try:
            self._close()
        finally:
            logger.setLevel(level)

    def _close(self):
        if self.local is not None and self.alive():
            # Our workers go first: closed with the scheduler, they could be
            # caught mid-heartbeat and print its failure on the terminal.
            # Retiring moves the data they hold to the others, so first let
            # the last results go (released by the client, asynchronously).
            try:
                end = time.monotonic() + 2.0
                while any(self.client.has_what().values()) and time.monotonic() < end:
                    time.sleep(0.02)
                self.client.retire_workers(close_workers=True, callback_timeout=10)
            except Exception:                     # noqa: S110 - closed below anyway
                pass
        for thing in (self.client, self.local):
            if thing is not None:
                try:
                    thing.close()
                except Exception:                 # noqa: S110 - closing what may be gone
                    pass


_local = None                                     # concmagic's LocalCluster
_remote = {}                                      # address -> _Cluster
_clusters_lock = threading.Lock()                 # guards the two above
_run_lock = threading.Lock()                      # one dask run at a time


def _local_cluster(n):
    """``(cluster, started_now)``: the LocalCluster of n workers, up and healthy."""
    global _local
    with _clusters_lock:
        if _local is not None:
            try:
                if _local.healthy(n):
                    return _local, False
            except Exception:                     # noqa: S110 - unreachable: start afresh
                pass
            _local.close()
            _local = None
        distributed = require()
        # The workers are spawned processes; without this they would re-run
        # the notebook's (or a script's) main module first (see processes).
        with _without_main_module():
            cluster = distributed.LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address=None, silence_logs=logging.ERROR)
        try:
            client = distributed.Client(cluster, set_as_default=False)
        except BaseException:
            cluster.close()
            raise
        _local = _Cluster(client, cluster, n)
        return _local, True


def _remote_cluster(address):
    """The cached client to the scheduler at ``address`` (connected now if need be)."""
    with _clusters_lock:
        cached = _remote.get(address)
        if cached is not None and cached.alive():
            return cached
        if cached is not None:
            cached.close()
            del _remote[address]
        distributed = require()
        try:
            client = distributed.Client(address, set_as_default=False, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ClusterError(
                f"cannot reach the Dask scheduler at {address!r} within "
                f"{CONNECT_TIMEOUT:g} s ({type(exc).__name__}: {exc}); is it running, "
                f"and is the address right (e.g. tcp://127.0.0.1:8786)?") from exc
        _remote[address] = cached = _Cluster(client)
        return cached


def _pick_workers(cluster, n, scheduler):
    """The n workers to run on, in worker-id order: ``[(address, info)]``."""
    workers = cluster.workers()
    if len(workers) < n:
        have = f"{len(workers)} worker{'' if len(workers) == 1 else 's'}"
        raise ClusterError(
            f"the Dask cluster at {scheduler} has {have}; {n} are needed: each worker of "
            f"the cell runs on a Dask worker of its own, so that all {n} run at once. "
            f"Run with -n {len(workers)} (n={len(workers)}), or add workers to the cluster.")
    def by_name(address):                         # a LocalCluster names them 0..n-1
        name = workers[address].get("name")
        return (0, name, address) if isinstance(name, int) else (1, 0, address)

    order = sorted(workers, key=by_name)
    chosen = order[:n]
    return [(address, {**workers[address], "pid": pid, "hostname": host})
            for address, (pid, host) in zip(chosen, cluster.identities(chosen))]


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------
def _takes_comm(func):
    code = getattr(func, "__code__", None)
    if code is None:
        return False
    return "comm" in code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]


def run_dask(func, n, *, scheduler=None, timeout=None, progress=None):
    """Run ``func(worker_id=i, n_workers=n)`` as n tasks on Dask workers; a Report.

    ``scheduler``: a scheduler's address (``tcp://host:port``), or None for
    concmagic's own LocalCluster on 127.0.0.1.
    """
    require()                                     # fails first, before anything else
    if _takes_comm(func):
        raise ValueError(
            "comm between workers is not available on Dask: its workers have no channels "
            "to each other; run the cell in processes (the local backend), threads or asyncio")
    payload = ship(func)                          # fails before any worker starts
    if not _run_lock.acquire(blocking=False):
        raise RuntimeError("a Dask run is already in progress in this process; "
                           "runs on Dask cannot be nested or run at once")
    try:
        t0, e0 = time.perf_counter(), time.time()
        if scheduler is None:
            cluster, started = _local_cluster(n)
        else:
            cluster, started = _remote_cluster(scheduler), False
        ready = time.perf_counter()
        workers = _pick_workers(cluster, n, scheduler or cluster.address)
        report = _Run(cluster, workers, payload, n, t0, e0, progress).wait(timeout)
    finally:
        _run_lock.release()
    report.notes.insert(0, _where_note(cluster, workers, started and ready - t0))
    many = [i for i, (_, info) in enumerate(workers) if info.get("nthreads", 1) > 1]
    if many:
        report.notes.append(
            f"worker{'s' if len(many) > 1 else ''} {', '.join(map(str, many))} ran on Dask "
            "workers of several threads: other tasks there may share their CPU and output; "
            "their CPU is the cell thread's own")
    return report


def _where_note(cluster, workers, startup):
    if cluster.local is None:
        return f"ran on the Dask cluster at {cluster.address}"
    where = f"ran on a Dask LocalCluster at {cluster.address} ({len(workers)} workers)"
    if startup:
        where += (f", started for this run in {format_time(startup)} (counted in the wall "
                  "time); later runs reuse it")
    return where


class _Run:
    """One run's futures and the replies gathered so far."""

    def __init__(self, cluster, workers, payload, n, t0, e0, progress):
        self.cluster, self.client = cluster, cluster.client
        self.addresses = [address for address, _ in workers]
        self.infos = [info for _, info in workers]
        self.payload, self.n, self.t0, self.e0 = payload, n, t0, e0
        self.progress = progress
        self.keys = [f"concmagic-{uuid.uuid4().hex[:12]}-{i}" for i in range(n)]
        self.futures = {}
        self.done = queue.Queue()                 # worker ids whose futures finished
        self.runs = {}
        self.notes = []
        self.boot_id = _dask_task._boot_id()
        if progress is not None:
            for i, info in enumerate(self.infos):
                if cluster.local is not None and info.get("pid"):
                    progress.watch_pid(i, info["pid"])

    def wait(self, timeout):
        deadline = None if timeout is None else self.t0 + timeout
        try:
            self._submit()
            while len(self.runs) < self.n:
                left = None if deadline is None else max(0.0, deadline - time.perf_counter())
                slice_ = HEALTH_EVERY if left is None else min(left, HEALTH_EVERY)
                try:
                    i = self.done.get(timeout=wait_slice(slice_, self.progress))
                except queue.Empty:
                    if deadline is not None and time.perf_counter() >= deadline:
                        self._stop(RunTimeout(
                            f"did not finish within the timeout of {timeout:g} s; stopped"))
                        break
                    self._check_workers()
                    if self.progress is not None:
                        self.progress.tick(self.t0, self.runs)
                    continue
                if i not in self.runs:
                    self.runs[i] = self._collect(i)
        except KeyboardInterrupt:
            self._stop(KeyboardInterrupt())
            raise
        finally:
            if self.progress is not None:
                self.progress.close()
            self._release()
        wall = time.perf_counter() - self.t0
        report = Report(model="dask", n_workers=self.n, wall=wall,
                        workers=[self.runs[i] for i in range(self.n)])
        report.notes.extend(self.notes)
        return report

    def _submit(self):
        for i, address in enumerate(self.addresses):
            blob = cloudpickle.dumps(
                _Call(_dask_task.run_cell, self.payload, i, self.n, self.keys[i]))
            # What Dask calls is the standard library's pickle.loads (see _Call).
            future = self.client.submit(pickle.loads, blob, key=self.keys[i],
                                        workers=[address], allow_other_workers=False,
                                        pure=False)
            self.futures[i] = future
            future.add_done_callback(lambda _, i=i: self.done.put(i))

    def _release(self):
        for future in self.futures.values():
            try:
                future.release()
            except Exception:                     # noqa: S110 - the client may be gone
                pass

    # -- replies ---------------------------------------------------------------
    def _blank(self, i, error):
        info = self.infos[i]
        return WorkerRun(worker_id=i, pid=info.get("pid"),
                         host=info.get("hostname") or info.get("host") or "", error=error)

    def _collect(self, i, reason=None):
        """The WorkerRun of worker i, whose future is done."""
        future = self.futures[i]
        try:
            data = future.result()
        except BaseException as exc:              # noqa: B036 - Dask's own failure of the task
            if reason is not None and future.cancelled():
                return self._blank(i, reason)
            run = self._blank(i, exc)
            run.traceback = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            return run
        return self._decode(data, reason)

    def _time(self, rec, which):
        """Seconds since the run's start: by the monotonic clock where the
        worker shares this machine's (same boot id), else by the wall clock."""
        if self.boot_id is not None and rec.get("boot_id") == self.boot_id:
            return rec[which] - self.t0
        return rec[f"wall_{which}"] - self.e0

    def _decode(self, data, reason=None):
        rec = pickle.loads(data)
        i = rec["worker_id"]
        one_thread = self.infos[i].get("nthreads", 1) <= 1
        run = WorkerRun(worker_id=i, pid=rec["pid"], host=rec["host"],
                        start=self._time(rec, "start"), end=self._time(rec, "end"),
                        cpu=rec["cpu"] if one_thread else rec["thread_cpu"],
                        stdout=rec["stdout"], stderr=rec["stderr"])
        stopped = None
        if rec.get("stopped"):
            stopped = reason if reason is not None else RunTimeout(
                f"worker {i} was stopped")        # a stop left over from elsewhere
        return fill_outcome(run, rec, stopped=stopped)

    # -- workers gone, workers stopped -----------------------------------------
    def _check_workers(self):
        """A worker that left the cluster with its cell unfinished died."""
        pending = [i for i in range(self.n) if i not in self.runs and i in self.futures]
        if not pending:
            return
        try:
            present = set(self.cluster.workers())
        except Exception:                         # noqa: S110 - asked again next slice
            return
        gone = [i for i in pending if self.addresses[i] not in present
                and not self.futures[i].done()]
        for i in gone:
            pid = self.infos[i].get("pid")
            self.runs[i] = self._blank(i, WorkerDied(i, None, pid))
        if gone:
            # Pinned to a worker that is no more, the tasks would wait forever.
            self.client.cancel([self.futures[i] for i in gone], force=True)

    def _stop(self, reason):
        """Stop the unfinished cells; what does not stop in time is given up on."""
        pending = [i for i in range(self.n) if i not in self.runs]
        if not pending:
            return
        by_worker = {}
        for i in pending:
            by_worker.setdefault(self.addresses[i], []).append(self.keys[i])
        try:
            present = set(self.cluster.workers())
            targets = [a for a in by_worker if a in present]
            if targets:
                self.client.run(_dask_task.stop, by_worker, workers=targets,
                                on_error="ignore", callback_timeout=STOP_GRACE)
        except Exception:                         # noqa: S110 - the cancel below still applies
            pass
        end = time.perf_counter() + STOP_GRACE
        while any(i not in self.runs for i in pending):
            left = end - time.perf_counter()
            if left <= 0:
                break
            try:
                i = self.done.get(timeout=left)
            except queue.Empty:
                break
            if i not in self.runs:
                self.runs[i] = self._collect(i, reason)
        stuck = [i for i in pending if i not in self.runs]
        for i in pending:                         # a death we caused is the reason, not news
            if i in self.runs and isinstance(self.runs[i].error, WorkerDied):
                self.runs[i].error = reason
        if not stuck:
            return
        try:
            self.client.cancel([self.futures[i] for i in stuck if i in self.futures],
                               force=True)
        except Exception:                         # noqa: S110 - the client may be gone
            pass
        for i in stuck:
            self.runs[i] = self._blank(i, reason)
        who = f"worker{'s' if len(stuck) > 1 else ''} {', '.join(map(str, stuck))}"
        if self.cluster.local is not None:
            # Our own worker processes, on this machine: killed, as a stuck
            # worker process is; their nannies start fresh ones.
            for i in stuck:
                try:
                    os.kill(self.infos[i]["pid"], signal.SIGKILL)
                except (ProcessLookupError, TypeError):
                    pass
            self._wait_gone([self.addresses[i] for i in stuck])
            self.notes.append(f"{who} did not stop within {STOP_GRACE:g} s and "
                              "was killed; the LocalCluster starts a fresh Dask worker.")
        else:
            where = ", ".join(self.addresses[i] for i in stuck)
            self.notes.append(
                f"{who} did not stop within {STOP_GRACE:g} s; its task was cancelled, but "
                f"Dask cannot stop a task that runs: it goes on at {where}, which stays busy "
                f"until it returns (Client.restart_workers([...]) would stop it).")

    def _wait_gone(self, addresses, timeout=5.0):
        """Until the scheduler has let these (killed) workers go, so that the
        next run does not pick them; their replacements are waited for then."""
        end = time.perf_counter() + timeout
        while time.perf_counter() < end:
            try:
                if not set(addresses) & set(self.cluster.workers()):
                    return
            except Exception:                     # noqa: S110 - the next run checks again
                return
            time.sleep(0.05)


# ---------------------------------------------------------------------------
# Status and shutdown
# ---------------------------------------------------------------------------
def cluster_status():
    """The Dask clusters this process uses: ``[{address, local, workers}]``
    (``workers``: ``[{address, host, pid, nthreads}]``, None if unreachable;
    a pid is known once a run has used that worker)."""
    with _clusters_lock:
        clusters = ([_local] if _local is not None else []) + list(_remote.values())
    status = []
    for cluster in clusters:
        workers = None
        if cluster.alive():
            try:
                workers = [{"address": address, "host": info.get("host"),
                            "pid": cluster._known.get(address, (None,))[0],
                            "nthreads": info.get("nthreads")}
                           for address, info in sorted(cluster.workers().items())]
            except Exception:                     # noqa: S110 - shown as unreachable
                workers = None
        status.append({"address": cluster.address, "local": cluster.local is not None,
                       "workers": workers})
    return status


def shutdown():
    """Close concmagic's LocalCluster and every client to a cluster by address.

    Clusters by address are someone else's: only the connection is closed.
    """
    global _local
    with _clusters_lock:
        clusters = ([_local] if _local is not None else []) + list(_remote.values())
        _local = None
        _remote.clear()
    for cluster in clusters:
        cluster.close()


atexit.register(shutdown)
