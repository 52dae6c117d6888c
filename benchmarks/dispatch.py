"""What does it cost to hand an empty cell to N workers, next to the tools users would use instead?

    python benchmarks/dispatch.py            # full run: about a minute
    python benchmarks/dispatch.py --quick    # few runs, no warm-up: a smoke test, not a measurement
    python benchmarks/dispatch.py --profile  # where concmagic's dispatch time goes
    python -m benchmarks --groups dispatch   # the same tables, into benchmarks/RESULTS.md

The function run is empty, so all that is measured is the hand-off: waking
the workers, getting the function to them, collecting N replies, building
the Report. Five questions, five kinds of table:

1. Threads, N = 1, 2, 8: ``concmagic.run(empty, n=N, model="threads")`` beside
   a warm ThreadPoolExecutor(N) given N tasks (waited for, results taken),
   the same executor given N tasks that meet at a threading.Barrier(N), and
   N fresh threading.Thread started and joined. (Empty tasks given to a warm
   executor all run on one of its threads, each taking the next as soon as
   it is done; the Barrier makes it use N threads started together, which is
   what concmagic does, so that row is the like-for-like one. The goal is
   judged against the plain executor.)
2. Processes, warm, N = 1, 2, 8: ``concmagic.run(empty, n=N, model="processes")``
   with its workers already started, beside a warm multiprocessing.Pool(N)
   (``pool.map(noop, range(N), chunksize=1)``), a warm ProcessPoolExecutor(N)
   and loky's reusable executor (when loky is installed). The standard pools
   use concmagic's default start method. concmagic's function is made the
   way a notebook cell makes it (defined in ``__main__``), so cloudpickle
   ships it by value on every run, as it does in real use; the pools get a
   module-level function, pickled by reference.
3. Processes, warm, against the cluster tools, N = 1, 2, 8, in a second pass
   (their schedulers and heartbeats would otherwise run beside the first):
   ipyparallel on N engines of a local cluster (127.0.0.1) doing what
   ``%%px`` does with a cell (``view.execute(cell, silent=False)``, then wait
   for the result and the output), and a Dask LocalCluster (127.0.0.1, N
   worker processes of one thread): ``client.run(empty)`` on every worker,
   and N ``client.submit`` + ``gather``. concmagic is timed again beside them.
4. Cold start: the first ``concmagic.run(empty, 2, "processes")`` in a fresh
   Python process (timed inside it, after ``import concmagic``, which is
   timed apart), beside each peer's first 2 tasks in a fresh process: a new
   multiprocessing.Pool(2), ProcessPoolExecutor(2), loky executor, ipyparallel
   cluster of 2 engines, Dask LocalCluster of 2 workers. Each repeat is a new
   process.
5. Cells: an IPython InteractiveShell running ``%%threads -n 8 -q`` / ``pass``
   (and ``%%threads -n 8`` with its report displayed) beside a plain
   ``pass`` cell, and a warm ThreadPoolExecutor(8) given 8 empty tasks: what
   the magic adds to a cell, and how that compares with the pool.

Where ``concmagic.run`` takes ``measure=`` (the CPU sampler and GIL probe
that run beside every run by default), rows with ``measure=False`` show what
the measurement costs; the goals are judged on the default.

Method (see STYLE.md section 7): every call is timed alone; variants are
timed in alternation, a batch of calls each per round, so that slow drifts
of the machine hit all of them alike; a warm-up of each variant runs first
and is never reported; min, median, mean and p99 of the calls are reported
(the mean and p99 show calls that stall: multiprocessing.Pool's do, for
milliseconds); ratios are of medians; differences under 10% are called
noise. A variant whose rounds would take more than ``Settings.budget``
seconds gets fewer of them (never under 3). Each goal is judged on the
medians; where the mins disagree with the medians about it, the verdict is
"inconclusive".
"""
import argparse
import contextlib
import importlib.util
import io
import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

try:                                             # python -m benchmarks.dispatch
    from . import _results, _util
except ImportError:                              # python benchmarks/dispatch.py
    import _results
    import _util

import concmagic

NOISE = _util.NOISE
fmt_time, fmt_ratio = _util.fmt_time, _util.fmt_ratio
noop = _util.noop

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent

THREAD_NS = (1, 2, 8)
PROCESS_NS = (1, 2, 8)
CELL_WORKERS = 8

# Goals (issue 6; lower is better unless said).
GOAL_THREADS = 1.5           # concmagic threads n=8 / warm ThreadPoolExecutor(8)
GOAL_PROCESSES = 1.0         # concmagic processes n=2 / warm multiprocessing.Pool(2)
GOAL_PX = 10.0               # ipyparallel %%px n=2 / concmagic processes n=2: at least this
GOAL_COLD = 0.100            # seconds: first concmagic.run(empty, 2, "processes")
GOAL_CELL = 0.0003           # seconds: %%threads -n 8 -q cell minus a `pass` cell (issue 5)

#: Why the slow-to-start peers are left out of a --tiny pass.
TINY_REASON = "--tiny leaves out peers that take seconds to start"


class Settings:
    """How long and how often: the full run, --quick, or --tiny (the smoke test's)."""

    def __init__(self, quick, tiny=False):
        self.quick = quick or tiny
        self.tiny = tiny
        self.rounds = 2 if tiny else 3 if quick else 20   # rounds per variant, at most
        # ...but a slow variant stops after this many seconds of samples
        # (never fewer than min_rounds): a cell that draws a picture takes 0.4 s.
        self.budget = 0.1 if tiny else 0.3 if quick else 1.5
        self.min_rounds = 2 if self.quick else 3
        self.warmup = 0.0 if self.quick else 0.15  # seconds per variant, before timing
        # Seconds one sample (a batch of calls) should take.
        self.target_threads = 0.0005 if tiny else 0.001 if quick else 0.004
        self.target_processes = 0.001 if tiny else 0.002 if quick else 0.010
        self.target_cells = 0.001 if tiny else 0.002 if quick else 0.010
        self.cold_repeats = 1 if tiny else 2 if quick else 5
        # Cluster peers: seconds to start; their cold start has its own, smaller count.
        self.cluster_peers = not tiny
        self.cold_cluster_repeats = 1 if quick else 3


# ---------------------------------------------------------------------------
# The empty work
# ---------------------------------------------------------------------------
def make_cell_function():
    """An empty function of (worker_id, n_workers), made as a notebook cell makes it.

    Defined in a namespace whose ``__name__`` is "__main__", as a notebook's
    is: cloudpickle ships such a function by value (its code travels with
    every run), which is what concmagic pays for in real use. The same
    whether this file runs as a script or is imported.
    """
    namespace = {"__name__": "__main__"}
    exec("def empty(worker_id, n_workers):\n    pass\n", namespace)
    return namespace["empty"]


def _supports_measure_flag():
    """True when concmagic.run takes measure= (so its cost can be shown apart)."""
    import inspect
    try:
        return "measure" in inspect.signature(concmagic.run).parameters
    except (TypeError, ValueError):
        return False


def _default_start_method():
    try:
        from concmagic.runners.processes import DEFAULT_START_METHOD
        return DEFAULT_START_METHOD
    except ImportError:
        return "forkserver" if os.name == "posix" else "spawn"


def _installed(module):
    """None when ``module`` can be imported, else the reason it cannot."""
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        return f"{module} cannot be imported ({exc})"
    return None if found else f"{module} not installed (pip install .[bench])"


# ---------------------------------------------------------------------------
# Timing helpers
# ---------------------------------------------------------------------------
def warm_up(calls, seconds, between=None):
    """Call every call in turn until ``seconds`` per call have passed; discard all."""
    if seconds <= 0:
        return
    deadline = time.perf_counter() + seconds * len(calls)
    while time.perf_counter() < deadline:
        for call in calls.values():
            call()
            if between is not None:
                between()


def measure(calls, settings, target, between=None):
    """name -> Stats: each call warmed up, calibrated, then timed in alternation."""
    for call in calls.values():                   # prime: threads/pools exist, caches filled
        call()
    warm_up(calls, settings.warmup, between)
    loops, rounds = {}, {}
    for name, call in calls.items():
        loops[name], each = _util.calibrate(call, target)
        per_sample = loops[name] * each
        rounds[name] = max(settings.min_rounds,
                           min(settings.rounds, int(settings.budget / max(per_sample, 1e-9))))
        if between is not None:
            between()
    timers = {name: _util.batch_timer(call, loops[name]) for name, call in calls.items()}
    samples = _util.alternate(timers, rounds, between)
    return {name: _util.Stats(s, loops[name]) for name, s in samples.items()}


def tail_note(stats, limit=1.5):
    """pyperf-style check, with our numbers: calls that stall, and how to read them."""
    heavy = [f"{name} (mean {st.mean / st.median:.1f}x the median, p99 "
             f"{fmt_time(st.quantile(0.99))})"
             for name, st in stats.items() if st.runs > 1 and st.mean > limit * st.median]
    if not heavy:
        return None
    load = _util.load_average()
    return (f"Some calls stall: {'; '.join(heavy)}; load average then "
            f"{'n/a' if load is None else f'{load:.2f}'}. The median is the typical call, "
            f"the mean what many calls cost in all; if the load is high, rerun when the "
            f"machine is idle.")


def ratio_goal_row(row, mine, theirs, limit, goal):
    """Judge ``row`` on median(mine) / median(theirs) <= limit (mins as second opinion)."""
    value, value_min = mine.median / theirs.median, mine.min / theirs.min
    met, verdict = _results.judge(value, limit, lambda r: f"{r:.2f}x", value_min=value_min)
    row.update(goal=goal, met=met, verdict=f"{verdict} ({value:.2f}x; mins {value_min:.2f}x)")
    return row


def table_rows(table, stats, ref=None, goals=None, notes=None):
    """Rows of one table from name -> Stats; ``goals``: name -> (theirs, limit, words)."""
    rows = []
    for name, st in stats.items():
        row = _results.stats_row(table, name, st)
        if name == ref:
            row["reference"] = True
        if notes and name in notes:
            row["note"] = notes[name]
        if goals and name in goals:
            theirs, limit, words = goals[name]
            ratio_goal_row(row, st, stats[theirs], limit, words)
        rows.append(row)
    tails = tail_note(stats)
    if tails:
        rows.append(_results.text(tails, table))
    return rows


# ---------------------------------------------------------------------------
# 1. Threads
# ---------------------------------------------------------------------------
def thread_calls(n, cell, executor, with_measure_flag):
    def concmagic_threads():
        concmagic.run(cell, n, "threads")

    def concmagic_unmeasured():
        concmagic.run(cell, n, "threads", measure=False)

    def pool():
        futures = [executor.submit(noop, worker_id=i, n_workers=n) for i in range(n)]
        for f in futures:
            f.result()

    barrier = threading.Barrier(n)

    def pool_one_per_thread():
        # A warm executor runs n empty tasks on one or two of its threads (a
        # thread that finishes takes the next task at once). Meeting at a
        # Barrier forces one task per thread, started together: what
        # concmagic's threads do, with the standard library's tools.
        futures = [executor.submit(barrier.wait) for _ in range(n)]
        for f in futures:
            f.result()

    def fresh_threads():
        threads = [threading.Thread(target=noop, kwargs={"worker_id": i, "n_workers": n})
                   for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    calls = {"concmagic threads": concmagic_threads}
    if with_measure_flag:
        calls["concmagic threads, measure=False"] = concmagic_unmeasured
    calls["ThreadPoolExecutor, warm"] = pool
    calls["ThreadPoolExecutor, warm, at a Barrier"] = pool_one_per_thread
    calls[f"{n} x threading.Thread, fresh (start + join)"] = fresh_threads
    return calls


def bench_threads(settings, cell, with_measure_flag):
    rows = [_results.text(
        "An empty function to N warm threads, then wait for all. concmagic.run is what "
        "%%threads calls (the magic's own cost over a plain cell is in the Cells table).",
        f"Threads, N = {THREAD_NS[0]}", before=True)]
    for n in THREAD_NS:
        executor = ThreadPoolExecutor(n)
        try:
            stats = measure(thread_calls(n, cell, executor, with_measure_flag), settings,
                            settings.target_threads)
        finally:
            executor.shutdown(wait=True)
        goals = None
        if n == 8:
            goals = {"concmagic threads": ("ThreadPoolExecutor, warm", GOAL_THREADS,
                                           f"<= {GOAL_THREADS}x warm ThreadPoolExecutor(8)")}
        rows += table_rows(f"Threads, N = {n}", stats, ref="ThreadPoolExecutor, warm",
                           goals=goals)
    return rows


# ---------------------------------------------------------------------------
# 2. Processes, warm: the standard library and loky
# ---------------------------------------------------------------------------
def _loky():
    try:
        from loky import get_reusable_executor
    except ImportError:
        return None
    return get_reusable_executor


def process_calls(n, cell, pool, executor, loky_executor, with_measure_flag):
    def concmagic_processes():
        concmagic.run(cell, n, "processes")

    def concmagic_unmeasured():
        concmagic.run(cell, n, "processes", measure=False)

    def mp_pool():
        pool.map(noop, range(n), chunksize=1)

    def submit_all(ex):
        def call():
            futures = [ex.submit(noop, worker_id=i, n_workers=n) for i in range(n)]
            for f in futures:
                f.result()
        return call

    calls = {"concmagic processes": concmagic_processes}
    if with_measure_flag:
        calls["concmagic processes, measure=False"] = concmagic_unmeasured
    calls["multiprocessing.Pool, warm"] = mp_pool
    calls["ProcessPoolExecutor, warm"] = submit_all(executor)
    if loky_executor is not None:
        calls["loky reusable executor, warm"] = submit_all(loky_executor)
    return calls


def bench_processes(settings, cell, method, with_measure_flag):
    get_loky = _loky()
    loky_words = "loky: not installed"
    if get_loky is not None:
        import loky
        loky_words = f"loky {loky.__version__} uses its own start method (loky), not {method}"
    rows = [_results.text(
        f"Processes, warm: an empty function to N started worker processes, then wait "
        f"for all. Start method: {method} (concmagic's default here; the standard pools "
        f"use the same). {loky_words}. concmagic ships its function by value "
        f"(cloudpickle) on every run and gives each worker exactly one call; Pool.map may "
        f"hand several of the N tasks to one worker.", f"Processes, warm, N = {PROCESS_NS[0]}",
        before=True)]
    ctx = multiprocessing.get_context(method)
    for n in PROCESS_NS:
        table = f"Processes, warm, N = {n}"
        # concmagic first: its run resizes its gang to N (started, so warm).
        concmagic.run(cell, n, "processes")
        pool = ctx.Pool(n)
        executor = ProcessPoolExecutor(n, mp_context=ctx)
        loky_executor = get_loky(max_workers=n, timeout=600) if get_loky else None
        try:
            stats = measure(process_calls(n, cell, pool, executor, loky_executor,
                                          with_measure_flag),
                            settings, settings.target_processes)
        finally:
            pool.terminate()
            pool.join()
            executor.shutdown(wait=True)
            if loky_executor is not None:
                loky_executor.shutdown(wait=True)
        goals = None
        if n == 2:
            goals = {"concmagic processes": ("multiprocessing.Pool, warm", GOAL_PROCESSES,
                                             f"<= {GOAL_PROCESSES}x warm multiprocessing.Pool(2)")}
        rows += table_rows(table, stats, ref="multiprocessing.Pool, warm", goals=goals)
        if get_loky is None:
            rows.append(_results.skipped(table, "loky reusable executor, warm",
                                         _installed("loky") or "loky not importable"))
    return rows


# ---------------------------------------------------------------------------
# 3. Processes, warm: the cluster tools (ipyparallel, Dask)
# ---------------------------------------------------------------------------
PX_TOOL = "ipyparallel, as %%px: view.execute(cell) + result + output"
DASK_RUN = "Dask LocalCluster: client.run(empty) on every worker"
DASK_SUBMIT = "Dask LocalCluster: N x client.submit + gather"


class IpyparallelPeer:
    """A local ipyparallel cluster (controller + engines on 127.0.0.1), started once."""

    def __init__(self, n_engines):
        import ipyparallel as ipp
        self.version = ipp.__version__
        self.cluster = ipp.Cluster(n=n_engines, controller_ip="127.0.0.1", log_level=40)
        self.client = self.cluster.start_and_connect_sync()
        self.client.wait_for_engines(n_engines, timeout=120)

    def call(self, n):
        view = self.client[:n]

        def px():
            # What %%px does with a cell (ipyparallel/client/magics.py, parallel_execute):
            # execute it with silent=False, wait for the result and the engines' output.
            result = view.execute("pass", silent=False, block=False)
            result.get()
            result.wait_for_output(timeout=10)
        return px

    def close(self):
        try:
            self.client.close()
        finally:
            self.cluster.stop_cluster_sync()


class DaskPeer:
    """A Dask LocalCluster of N single-threaded worker processes on 127.0.0.1."""

    def __init__(self, n_workers):
        import distributed
        self.version = distributed.__version__
        self.cluster = distributed.LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=None, silence_logs=50)
        self.client = distributed.Client(self.cluster)
        self.client.wait_for_workers(n_workers, timeout=120)

    def calls(self, cell, n):
        client = self.client

        def run_all():
            client.run(cell, worker_id=0, n_workers=n)

        def submit_gather():
            client.gather([client.submit(cell, worker_id=i, n_workers=n, pure=False)
                           for i in range(n)])
        return {DASK_RUN: run_all, DASK_SUBMIT: submit_gather}

    def close(self):
        try:
            self.client.close()
        finally:
            self.cluster.close()


def bench_cluster_peers(settings, cell):
    rows = [_results.text(
        "Processes, warm, against the cluster tools: the same empty cell to N engines or "
        "workers, all on this machine (127.0.0.1). Measured in a pass of their own, "
        "concmagic again beside them (their schedulers, heartbeats and event loops would "
        "otherwise run beside the standard pools). ipyparallel is timed doing what %%px "
        "does with a cell: view.execute(cell, silent=False), then the result and the "
        "engines' output; Dask gets the same cell function, shipped by value by "
        "cloudpickle, like concmagic's.", f"Processes, warm, N = {PROCESS_NS[0]}: cluster tools",
        before=True)]
    tables = [f"Processes, warm, N = {n}: cluster tools" for n in PROCESS_NS]
    if not settings.cluster_peers:
        for table in tables:
            rows += [_results.skipped(table, tool, TINY_REASON)
                     for tool in ("concmagic processes", PX_TOOL, DASK_RUN, DASK_SUBMIT)]
        return rows
    peers, missing, versions = {}, {}, []
    for key, module in (("ipyparallel", "ipyparallel"), ("dask", "distributed")):
        reason = _installed(module)
        if reason:
            missing[key] = f"skipped: {reason}"
    # ipyparallel: one cluster with the most engines; N engines of it per table.
    if "ipyparallel" not in missing:
        try:
            peers["ipyparallel"] = IpyparallelPeer(max(PROCESS_NS))
        except Exception as exc:
            missing["ipyparallel"] = _results.failed("", "", exc)["status"]
    try:
        for n, table in zip(PROCESS_NS, tables):
            concmagic.run(cell, n, "processes")
            calls = {"concmagic processes": lambda n=n: concmagic.run(cell, n, "processes")}
            if "ipyparallel" in peers:
                calls[PX_TOOL] = peers["ipyparallel"].call(n)
            dask = None
            if "dask" not in missing:
                try:
                    dask = DaskPeer(n)
                    calls.update(dask.calls(cell, n))
                    if n == PROCESS_NS[0]:
                        versions.append(f"distributed {dask.version}")
                except Exception as exc:
                    missing["dask"] = _results.failed("", "", exc)["status"]
            try:
                stats = measure(calls, settings, settings.target_processes)
            finally:
                if dask is not None:
                    dask.close()
            table_part = table_rows(table, stats, ref="concmagic processes")
            for row in table_part:
                if row.get("tool") == PX_TOOL:
                    mine, theirs = stats["concmagic processes"], stats[PX_TOOL]
                    row["extra"]["times slower than concmagic"] = (
                        f"{theirs.median / mine.median:.1f}x")
                    if n == 2:
                        value, value_min = theirs.median / mine.median, theirs.min / mine.min
                        met, verdict = _results.judge(value, GOAL_PX, lambda r: f"{r:.1f}x",
                                                      value_min=value_min, higher=True)
                        row.update(goal=f"concmagic processes -n 2 >= {GOAL_PX:g}x faster "
                                        f"than %%px", met=met,
                                   verdict=f"{verdict} (concmagic {value:.1f}x faster; "
                                           f"mins {value_min:.1f}x)")
            rows += table_part
            for key, tools in (("ipyparallel", (PX_TOOL,)), ("dask", (DASK_RUN, DASK_SUBMIT))):
                if key in missing:
                    rows += [{"table": table, "tool": t, "status": missing[key]} for t in tools]
    finally:
        if "ipyparallel" in peers:
            peers["ipyparallel"].close()
    if "ipyparallel" in peers:
        versions.insert(0, f"ipyparallel {peers['ipyparallel'].version}")
    if versions:
        rows.append(_results.text(f"Versions: {', '.join(versions)}; ipyparallel's "
                                  f"cluster has {max(PROCESS_NS)} engines, N of them per "
                                  f"table; Dask gets a fresh LocalCluster of N workers "
                                  f"per table.", tables[0], before=True))
    return rows


# ---------------------------------------------------------------------------
# 4. Cold start, each in a fresh process
# ---------------------------------------------------------------------------
# Each script prints one JSON line of seconds measured inside the process:
# "import" (the tool's import), "first" (from just before the pool or cluster
# is made to the first 2 results in hand), "second" (the same 2 tasks again).
COLD_CONCMAGIC = r"""
import json, time
t0 = time.perf_counter()
import concmagic
t1 = time.perf_counter()
namespace = {"__name__": "__main__"}
exec("def empty(worker_id, n_workers):\n    pass\n", namespace)
empty = namespace["empty"]
options = {} if START_METHOD is None else {"start_method": START_METHOD}
t2 = time.perf_counter()
concmagic.run(empty, 2, "processes", **options)
t3 = time.perf_counter()
concmagic.run(empty, 2, "processes", **options)
t4 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "first": t3 - t2, "second": t4 - t3}))
"""

# The notebook's way in: %load_ext concmagic (which starts the forkserver in
# the background), a pause such as a person takes before the next cell, then
# the first %%processes cell. 'import' is the %load_ext here.
COLD_NOTEBOOK = r"""
import contextlib, io, json, time
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config
config = Config()
config.HistoryManager.hist_file = ":memory:"
shell = InteractiveShell.instance(config=config)
t0 = time.perf_counter()
shell.run_line_magic("load_ext", "concmagic")
t1 = time.perf_counter()
time.sleep(PAUSE)
sink = io.StringIO()
t2 = time.perf_counter()
with contextlib.redirect_stdout(sink):
    result = shell.run_cell("%%processes -n 2 -q\npass")
t3 = time.perf_counter()
with contextlib.redirect_stdout(sink):
    shell.run_cell("%%processes -n 2 -q\npass")
t4 = time.perf_counter()
assert result.success, result
print(json.dumps({"import": t1 - t0, "first": t3 - t2, "second": t4 - t3}))
"""

#: Seconds between %load_ext and the first %%processes cell in the notebook row.
NOTEBOOK_PAUSE = 0.5

COLD_POOL = r"""
import json, sys, time
sys.path.insert(0, BENCH_DIR)
from _util import noop
t0 = time.perf_counter()
import multiprocessing
t1 = time.perf_counter()
ctx = multiprocessing.get_context(START_METHOD)
t2 = time.perf_counter()
pool = ctx.Pool(2)
pool.map(noop, range(2), chunksize=1)
t3 = time.perf_counter()
pool.map(noop, range(2), chunksize=1)
t4 = time.perf_counter()
pool.terminate()
print(json.dumps({"import": t1 - t0, "first": t3 - t2, "second": t4 - t3}))
"""

COLD_PPE = r"""
import json, sys, time
sys.path.insert(0, BENCH_DIR)
from _util import noop
t0 = time.perf_counter()
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
t1 = time.perf_counter()
t2 = time.perf_counter()
ex = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context(START_METHOD))
[f.result() for f in [ex.submit(noop) for _ in range(2)]]
t3 = time.perf_counter()
[f.result() for f in [ex.submit(noop) for _ in range(2)]]
t4 = time.perf_counter()
ex.shutdown()
print(json.dumps({"import": t1 - t0, "first": t3 - t2, "second": t4 - t3}))
"""

COLD_LOKY = r"""
import json, sys, time
sys.path.insert(0, BENCH_DIR)
from _util import noop
t0 = time.perf_counter()
from loky import get_reusable_executor
t1 = time.perf_counter()
t2 = time.perf_counter()
ex = get_reusable_executor(max_workers=2)
[f.result() for f in [ex.submit(noop) for _ in range(2)]]
t3 = time.perf_counter()
[f.result() for f in [ex.submit(noop) for _ in range(2)]]
t4 = time.perf_counter()
ex.shutdown()
print(json.dumps({"import": t1 - t0, "first": t3 - t2, "second": t4 - t3}))
"""

COLD_IPYPARALLEL = r"""
import json, time
t0 = time.perf_counter()
import ipyparallel as ipp
t1 = time.perf_counter()

def px(view):
    result = view.execute("pass", silent=False, block=False)
    result.get()
    result.wait_for_output(timeout=10)

t2 = time.perf_counter()
cluster = ipp.Cluster(n=2, controller_ip="127.0.0.1", log_level=40)
client = cluster.start_and_connect_sync()
client.wait_for_engines(2, timeout=120)
px(client[:])
t3 = time.perf_counter()
px(client[:])
t4 = time.perf_counter()
client.close()
cluster.stop_cluster_sync()
print(json.dumps({"import": t1 - t0, "first": t3 - t2, "second": t4 - t3}))
"""

COLD_DASK = r"""
import json, time
t0 = time.perf_counter()
import distributed
t1 = time.perf_counter()
namespace = {"__name__": "__main__"}
exec("def empty(worker_id, n_workers):\n    pass\n", namespace)
empty = namespace["empty"]
t2 = time.perf_counter()
cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                   host="127.0.0.1", dashboard_address=None, silence_logs=50)
client = distributed.Client(cluster)
client.wait_for_workers(2, timeout=120)
client.run(empty, worker_id=0, n_workers=2)
t3 = time.perf_counter()
client.run(empty, worker_id=0, n_workers=2)
t4 = time.perf_counter()
client.close()
cluster.close()
print(json.dumps({"import": t1 - t0, "first": t3 - t2, "second": t4 - t3}))
"""


def run_cold(script, start_method, timeout=120):
    """Seconds measured inside a fresh interpreter, plus its whole life seen from here."""
    code = (f"START_METHOD = {start_method!r}\nBENCH_DIR = {str(BENCH_DIR)!r}\n"
            f"PAUSE = {NOTEBOOK_PAUSE!r}\n" + script)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, cwd=str(REPO))
    life = time.perf_counter() - t0
    last = (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1]
    try:
        times = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise RuntimeError(f"exit code {proc.returncode}: {last}") from None
    times["life"] = life
    if proc.returncode:
        # Measured, then broke on the way out (seen: Dask, "FATAL: exception not
        # rethrown", SIGABRT at interpreter exit): the figures stand, the row says so.
        times["exit"] = f"exit code {proc.returncode} after measuring: {last}"
    return times


def cold_variants(settings, method):
    """name -> (script, start method, repeats, None or why it is skipped)."""
    cold, slow = settings.cold_repeats, settings.cold_cluster_repeats
    variants = {f"concmagic.run(processes), default ({method})": (COLD_CONCMAGIC, None, cold,
                                                                 None)}
    if method != "spawn":
        variants["concmagic.run(processes), spawn"] = (COLD_CONCMAGIC, "spawn", cold, None)
    variants[f"%%processes -n 2 cell, {NOTEBOOK_PAUSE:g} s after %load_ext"] = (
        COLD_NOTEBOOK, None, cold, None)
    for m in ("forkserver", "spawn"):
        if m in multiprocessing.get_all_start_methods():
            quick_only = settings.tiny and m != method
            variants[f"multiprocessing.Pool(2) + map, {m}"] = (
                COLD_POOL, m, cold, TINY_REASON if quick_only else None)
    variants[f"ProcessPoolExecutor(2), {method}"] = (
        COLD_PPE, method, cold, TINY_REASON if settings.tiny else None)
    variants["loky reusable executor (2 workers)"] = (
        COLD_LOKY, None, cold, _installed("loky") or (TINY_REASON if settings.tiny else None))
    variants["ipyparallel cluster of 2 engines + %%px"] = (
        COLD_IPYPARALLEL, None, slow,
        _installed("ipyparallel") or (None if settings.cluster_peers else TINY_REASON))
    variants["Dask LocalCluster(2) + client.run"] = (
        COLD_DASK, None, slow,
        _installed("distributed") or (None if settings.cluster_peers else TINY_REASON))
    return variants


def bench_cold(settings, method):
    table = "Cold start: first run of 2 workers in a fresh process"
    rows = [_results.text(
        "Cold start: the first run of an empty function on 2 workers in a fresh Python "
        "process, timed inside it from just before the pool (or cluster) is made to the "
        "2 results in hand; the import is timed apart. 'process life' is the whole "
        "subprocess seen from outside: interpreter start, imports, the run, exit. "
        "Variants alternate, one fresh process per repeat.", table, before=True)]
    variants = cold_variants(settings, method)
    samples = {name: [] for name in variants}
    errors = {}
    for rnd in range(max(v[2] for v in variants.values())):
        for name, (script, m, repeats, skip) in variants.items():
            if skip or rnd >= repeats or name in errors:
                continue
            try:
                samples[name].append(run_cold(script, m, timeout=300 if script in (
                    COLD_IPYPARALLEL, COLD_DASK) else 120))
            except Exception as exc:                 # one peer broke: its row says how
                errors[name] = exc

    ours = f"concmagic.run(processes), default ({method})"
    ref = f"multiprocessing.Pool(2) + map, {method}"
    for name, (_, _, _, skip) in variants.items():
        if skip:
            rows.append(_results.skipped(table, name, skip))
            continue
        if name in errors:
            rows.append(_results.failed(table, name, errors[name]))
            continue

        def stats(key):
            return _util.Stats([s[key] for s in samples[name]])
        first = stats("first")
        exits = sorted({s["exit"] for s in samples[name] if "exit" in s})
        row = {"table": table, "tool": name, "min": first.min, "median": first.median,
               "extra": {"import (median)": stats("import").median,
                         "2nd run (median)": stats("second").median,
                         "process life (median)": stats("life").median,
                         "samples": str(first.runs)}}
        if exits:
            row["note"] = "; ".join(exits)
        if name == ref:
            row["reference"] = True
        if name == ours:
            met, verdict = _results.judge(first.median, GOAL_COLD, fmt_time,
                                          value_min=first.min)
            row.update(goal=f"<= {fmt_time(GOAL_COLD)}", met=met, verdict=verdict)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------
# 5. Cells in an IPython shell
# ---------------------------------------------------------------------------
def make_shell():
    """A real InteractiveShell with concmagic loaded; history kept in memory."""
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config
    config = Config()
    config.HistoryManager.hist_file = ":memory:"   # no disk writes while timing
    shell = InteractiveShell.instance(config=config)
    shell.run_line_magic("load_ext", "concmagic")
    return shell


def bench_cells(settings):
    table = f"Cells: %%threads -n {CELL_WORKERS} through a real IPython shell"
    shell = make_shell()
    quiet_name = f"%%threads -n {CELL_WORKERS} -q / pass"
    shown_name = f"%%threads -n {CELL_WORKERS} / pass (report shown)"
    pool_name = f"ThreadPoolExecutor({CELL_WORKERS}), warm: {CELL_WORKERS} empty tasks"
    cells = {
        "pass": "pass",
        quiet_name: f"%%threads -n {CELL_WORKERS} -q\npass",
        shown_name: f"%%threads -n {CELL_WORKERS}\npass",
    }
    sink = io.StringIO()

    # Each cell must really run (and the report really be shown), or we time an error.
    for name, source in cells.items():
        sink.seek(0)
        sink.truncate()
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            result = shell.run_cell(source, store_history=True)
        if not result.success:
            error = result.error_in_exec or result.error_before_exec
            raise RuntimeError(f"cell {name!r} failed: {error!r}\n{sink.getvalue()}")
        if "report shown" in name and "threads:" not in sink.getvalue():
            raise RuntimeError(f"cell {name!r} showed no report:\n{sink.getvalue()}")

    def call(source):
        def run_cell():
            with contextlib.redirect_stdout(sink):
                shell.run_cell(source, store_history=True)
        return run_cell

    def housekeeping():
        # Outside the timing: empty the output sink and the Out cache (each
        # %%threads -q cell leaves a list there; at 1000 entries IPython culls).
        sink.seek(0)
        sink.truncate()
        shell.user_ns["_oh"].clear()

    executor = ThreadPoolExecutor(CELL_WORKERS)

    def pool():
        for f in [executor.submit(noop) for _ in range(CELL_WORKERS)]:
            f.result()

    formats = ", ".join(shell.display_formatter.active_types)
    calls = {name: call(src) for name, src in cells.items()}
    calls[pool_name] = pool
    try:
        stats = measure(calls, settings, settings.target_cells, between=housekeeping)
    finally:
        executor.shutdown(wait=True)
    base, quiet, tpe = stats["pass"], stats[quiet_name], stats[pool_name]
    rows = [_results.text(
        f"What the magic adds to a cell: IPython's run_cell with store_history=True, "
        f"history in memory, output sent to a StringIO, display formats computed: "
        f"{formats}. 'added' is the median minus the pass cell's. The last row is the "
        f"warm pool of the threads goal, timed in the same alternation: the magic's "
        f"addition over a pass cell, against it, is the magic-level reading of "
        f"'%%threads -n 8 <= 1.5x a warm ThreadPoolExecutor'.", table, before=True)]
    for name, st in stats.items():
        row = _results.stats_row(table, name, st)
        row["ratio"] = None
        if name == "pass":
            row["extra"]["added to pass"] = "(reference)"
        elif name != pool_name:
            row["extra"]["added to pass"] = f"+{(st.median - base.median) * 1e3:.3f} ms"
        if name == quiet_name:
            added, added_min = quiet.median - base.median, quiet.min - base.min
            met, verdict = _results.judge(added, GOAL_CELL, lambda s: f"{s * 1e3:.3f} ms",
                                          value_min=added_min)
            row.update(goal=f"added <= {GOAL_CELL * 1e3:.1f} ms (issue 5)", met=met,
                       verdict=verdict)
            ratio = added / tpe.median
            row["extra"]["added / TPE(8)"] = f"{ratio:.2f}x"
        rows.append(row)
    # The magic-level threads goal, judged on what the magic adds to a cell.
    added, added_min = quiet.median - base.median, quiet.min - base.min
    met, verdict = _results.judge(added / tpe.median, GOAL_THREADS, lambda r: f"{r:.2f}x",
                                  value_min=added_min / tpe.min)
    rows.append({"table": table, "tool": f"%%threads -n {CELL_WORKERS} -q, added to a "
                 f"pass cell", "min": added_min, "median": added, "ratio": added / tpe.median,
                 "goal": f"<= {GOAL_THREADS}x warm ThreadPoolExecutor(8) (the magic)",
                 "met": met, "verdict": f"{verdict} ({added / tpe.median:.2f}x)"})
    tails = tail_note(stats)
    if tails:
        rows.append(_results.text(tails, table))
    return rows


# ---------------------------------------------------------------------------
# --profile: where concmagic's dispatch time goes
# ---------------------------------------------------------------------------
def phases(cell, n, model, runs, **options):
    """Medians of the phases of ``runs`` calls, read from the Reports' own clocks.

    The runner's clock t0 starts inside the runner; worker start/end are
    seconds since t0 (worker processes use the same CLOCK_MONOTONIC).
    """
    import statistics
    rows = {"total (call to return)": [], "before t0 + after wall (engine, setup, Report)": [],
            "t0 -> first worker starts": [], "t0 -> last worker starts": [],
            "last worker ends -> wall (collect replies)": []}
    for _ in range(runs):
        t0 = time.perf_counter()
        report = concmagic.run(cell, n, model, **options)
        total = time.perf_counter() - t0
        starts = [w.start for w in report.workers]
        ends = [w.end for w in report.workers]
        rows["total (call to return)"].append(total)
        rows["before t0 + after wall (engine, setup, Report)"].append(total - report.wall)
        rows["t0 -> first worker starts"].append(min(starts))
        rows["t0 -> last worker starts"].append(max(starts))
        rows["last worker ends -> wall (collect replies)"].append(report.wall - max(ends))
    return {k: statistics.median(v) for k, v in rows.items()}


def profile_top(call, runs, limit=14):
    import cProfile
    import pstats
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(runs):
        call()
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(limit)
    text = out.getvalue()
    # Keep the table, without pstats' preamble; shorten file paths.
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip().startswith("ncalls")), 0)
    return "\n".join("    " + line.replace(str(REPO / "src") + "/", "")
                     .replace(os.path.dirname(os.__file__) + "/", "")
                     for line in lines[start:] if line.strip())


def cold_breakdown(method):
    """The first processes run in a fresh process, split into steps (one sample).

    Starting the worker gang is timed apart through concmagic's internals
    (``runners.processes._gang_for``); where those changed, that step is
    left out and the run includes it.
    """
    script = r"""
import json, time
steps = []
t = time.perf_counter()
def step(name):
    global t
    now = time.perf_counter()
    steps.append((name, now - t))
    t = now
import concmagic
step("import concmagic")
import concmagic.engine, concmagic.runners.processes
step("import concmagic.engine + runners.processes")
try:
    import concmagic.measure
except ImportError:
    pass
step("import concmagic.measure (if present)")
import sys
step("(numpy imported by now: %s)" % ("numpy" in sys.modules))
namespace = {"__name__": "__main__"}
exec("def empty(worker_id, n_workers):\n    pass\n", namespace)
try:
    gang = concmagic.runners.processes._gang_for(METHOD)
    with gang.lock:
        gang.resize(2)
    step("start the gang: forkserver + 2 workers (internals)")
except AttributeError:
    pass
concmagic.run(namespace["empty"], 2, "processes")
step("first concmagic.run(empty, 2, 'processes') after that")
concmagic.run(namespace["empty"], 2, "processes")
step("second run")
print(json.dumps(steps))
"""
    proc = subprocess.run([sys.executable, "-c", f"METHOD = {method!r}\n" + script],
                          capture_output=True, text=True, timeout=120, cwd=str(REPO))
    if proc.returncode:
        raise RuntimeError(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def profile_cells(settings, cell):
    """What showing a run costs: the Out display of its results list, its report reprs."""
    shell = make_shell()
    sink = io.StringIO()

    def run_cell(source):
        def call():
            with contextlib.redirect_stdout(sink):
                shell.run_cell(source, store_history=True)
        return call

    def housekeeping():
        sink.seek(0)
        sink.truncate()
        shell.user_ns["_oh"].clear()

    report = concmagic.run(cell, CELL_WORKERS, "threads")
    pieces = {
        "cell `pass`": run_cell("pass"),
        f"cell `x = [None] * {CELL_WORKERS}` (nothing shown)":
            run_cell(f"x = [None] * {CELL_WORKERS}"),
        f"cell `[None] * {CELL_WORKERS}` (Out shown, as %%threads -q)":
            run_cell(f"[None] * {CELL_WORKERS}"),
        "str(report)  (text report)": lambda: str(report),
        "report._repr_html_()  (Jupyter report)": report._repr_html_,
    }
    stats = measure(pieces, settings, settings.target_cells, between=housekeeping)
    _util.print_table(["piece", "min", "median", "mean", "calls"],
                      [[k, fmt_time(v.min), fmt_time(v.median), fmt_time(v.mean), str(v.runs)]
                       for k, v in stats.items()], indent="    ")


def profile(settings, cell, method):
    import statistics
    runs_threads, runs_processes = (200, 50) if settings.quick else (3000, 600)
    with_flag = _supports_measure_flag()
    print()
    print("Profile: where concmagic's dispatch time goes")
    for n, model, runs in ((8, "threads", runs_threads), (2, "processes", runs_processes)):
        concmagic.run(cell, n, model)
        for _ in range(runs // 10):              # warm
            concmagic.run(cell, n, model)
        print()
        print(f"  {model}, n={n}: phases, median of {runs} runs (the Reports' own clocks)")
        variants = {"default": {}}
        if with_flag:
            variants["measure=False"] = {"measure": False}
        results = {name: phases(cell, n, model, runs, **opts) for name, opts in variants.items()}
        header = ["phase", *variants]
        rows = [[k, *(fmt_time(results[v][k]) for v in variants)]
                for k in next(iter(results.values()))]
        _util.print_table(header, rows, indent="    ")
        if model == "processes":
            from concmagic.runners.processes import ship
            import cloudpickle
            import pickle
            payload = ship(cell)
            t = []
            for _ in range(2000):
                t0 = time.perf_counter()
                ship(cell)
                t.append(time.perf_counter() - t0)
            u = []
            for _ in range(2000):
                t0 = time.perf_counter()
                pickle.loads(payload)
                u.append(time.perf_counter() - t0)
            print(f"    ship(func) = cloudpickle.dumps by value: {fmt_time(statistics.median(t))} "
                  f"({len(payload)} bytes); pickle.loads of it: {fmt_time(statistics.median(u))} "
                  f"(cloudpickle {cloudpickle.__version__})")
        print()
        print(f"  {model}, n={n}: cProfile of {runs} runs (default options), top by own time "
              f"(cProfile inflates Python-level costs)")
        print(profile_top(lambda: concmagic.run(cell, n, model), runs))
    print()
    print("  Cells: pieces of a %%threads cell's cost, timed alone (medians)")
    profile_cells(settings, cell)
    print()
    print(f"  Cold: first processes run in a fresh process, split (one sample, {method})")
    parts = cold_breakdown(method)
    _util.print_table(["step", "time"],
                      [[name, "" if name.startswith("(") else fmt_time(took)]
                       for name, took in parts], indent="    ")


# ---------------------------------------------------------------------------
# The group: rows for python -m benchmarks; main() prints them
# ---------------------------------------------------------------------------
def run(quick=False, tiny=False):
    """Every dispatch table as rows (see benchmarks/_results.py)."""
    settings = Settings(quick, tiny)
    cell = make_cell_function()
    method = _default_start_method()
    with_flag = _supports_measure_flag()
    load = _util.load_average()
    rows = [_results.text(
        f"An empty cell to N workers: the hand-off alone. concmagic {concmagic.__version__}; "
        f"{'up to ' if not settings.quick else ''}{settings.rounds} rounds per variant, each "
        f"a batch of calls timed one by one, variants alternating"
        + (f", after a warm-up of {settings.warmup:g} s per variant" if settings.warmup
           else ", no warm-up") + ". concmagic.run measures by default (CPU sampler, GIL "
        "probe); the 'measure=False' rows show it without. The extra columns are over "
        "the calls: mean, p99, and how many calls were timed."
        + (f" Load average at start: {load:.2f}." if load is not None else ""))]
    sections = (("threads", lambda: bench_threads(settings, cell, with_flag)),
                ("processes", lambda: bench_processes(settings, cell, method, with_flag)),
                ("cluster tools", lambda: bench_cluster_peers(settings, cell)),
                ("cold start", lambda: bench_cold(settings, method)),
                ("cells", lambda: bench_cells(settings)))
    try:
        for name, section in sections:
            try:
                rows += section()
            except Exception as exc:       # one broken section must not lose the others
                import traceback
                traceback.print_exc()
                rows.append(_results.failed(f"Dispatch: {name}", name, exc))
    finally:
        concmagic.shutdown()
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="few runs, no warm-up (a smoke test, not a measurement)")
    parser.add_argument("--tiny", action="store_true",
                        help="fewer still, and no peers that take seconds to start")
    parser.add_argument("--profile", action="store_true",
                        help="instead of the tables: where concmagic's dispatch time goes")
    args = parser.parse_args(argv)
    settings = Settings(args.quick, args.tiny)
    started = time.perf_counter()
    print(f"concmagic dispatch benchmark"
          f"{' (--quick: not a measurement)' if settings.quick else ''}")
    package = Path(concmagic.__file__).resolve().parent
    print(f"concmagic {concmagic.__version__} from {package}")
    for line in _util.machine_lines(package.parent.parent):
        print(line)
    if args.profile:
        profile(settings, make_cell_function(), _default_start_method())
        return 0
    print()
    _results.print_rows(run(args.quick, args.tiny))
    load = _util.load_average()
    print(f"Took {time.perf_counter() - started:.1f} s; load average at the end: "
          f"{'n/a' if load is None else f'{load:.2f}'}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
