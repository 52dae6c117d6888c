"""What does it cost to hand an empty cell to N workers, next to the standard pools?

    python benchmarks/dispatch.py            # full run: about 20 s
    python benchmarks/dispatch.py --quick    # few runs, no warm-up: a smoke test, not a measurement
    python benchmarks/dispatch.py --profile  # where concmagic's dispatch time goes

The function run is empty, so all that is measured is the hand-off: waking
the workers, getting the function to them, collecting N replies, building
the Report. Four questions, four tables:

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
3. Cold start: the first ``concmagic.run(empty, 2, "processes")`` in a fresh
   Python process (timed inside it, after ``import concmagic``, which is
   timed apart), beside a fresh multiprocessing.Pool(2) + map of 2 tasks.
   Each repeat is a new process.
4. Cells: an IPython InteractiveShell running ``%%threads -n 8 -q`` / ``pass``
   (and ``%%threads -n 8`` with its report displayed) beside a plain
   ``pass`` cell: what the magic adds to a cell, in ms.

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
seconds gets fewer of them (never under 3). Each goal is printed with the
measured median and "met" or by how much it was missed; where the mins
disagree with the medians about it, the verdict is "inconclusive".
"""
import argparse
import contextlib
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
    from . import _util
except ImportError:                              # python benchmarks/dispatch.py
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

# Goals (lower is better).
GOAL_THREADS = 1.5           # concmagic threads n=8 / warm ThreadPoolExecutor(8)
GOAL_PROCESSES = 1.0         # concmagic processes n=2 / warm multiprocessing.Pool(2)
GOAL_COLD = 0.100            # seconds: first concmagic.run(empty, 2, "processes")
GOAL_CELL = 0.0003           # seconds: %%threads -n 8 -q cell minus a `pass` cell


class Settings:
    """How long and how often: the full run, or --quick."""

    def __init__(self, quick):
        self.quick = quick
        self.rounds = 3 if quick else 20          # rounds per variant, at most
        # ...but a slow variant stops after this many seconds of samples
        # (never fewer than min_rounds): a cell that draws a picture takes 0.4 s.
        self.budget = 0.3 if quick else 1.5
        self.min_rounds = 2 if quick else 3
        self.warmup = 0.0 if quick else 0.15      # seconds per variant, before timing
        # Seconds one sample (a batch of calls) should take.
        self.target_threads = 0.001 if quick else 0.004
        self.target_processes = 0.002 if quick else 0.010
        self.target_cells = 0.002 if quick else 0.010
        self.cold_repeats = 2 if quick else 5


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


def stats_row(name, st, last):
    return [name, fmt_time(st.min), fmt_time(st.median), fmt_time(st.mean),
            fmt_time(st.quantile(0.99)), str(st.runs), last]


STATS_HEADER = ["min", "median", "mean", "p99", "calls"]


def print_stats(stats, ref, ref_label):
    """One table: min, median, mean, p99, calls, median ratio to ``ref``."""
    ref_median = stats[ref].median
    rows = [stats_row(name, st, "1.00x (reference)" if name == ref else
                      fmt_ratio(st.median / ref_median))
            for name, st in stats.items()]
    _util.print_table(["variant", *STATS_HEADER, f"vs {ref_label} (median)"], rows,
                      indent="    ")
    warn_tails(stats)


def warn_tails(stats, limit=1.5):
    """pyperf-style check, with our numbers: calls that stall, and how to read them."""
    heavy = [f"{name} (mean {st.mean / st.median:.1f}x the median, p99 "
             f"{fmt_time(st.quantile(0.99))})"
             for name, st in stats.items() if st.runs > 1 and st.mean > limit * st.median]
    if heavy:
        load = _util.load_average()
        print(f"    ! some calls stall: {'; '.join(heavy)}; load average now "
              f"{'n/a' if load is None else f'{load:.2f}'}.\n"
              f"      The median is the typical call, the mean what many calls cost in all; "
              f"if the load is high, rerun when the machine is idle.")


def ratio_goal(stats, ours, ref, label, limit):
    """Print and return the goal line for median(ours) / median(ref) <= limit."""
    mine, theirs = stats[ours], stats[ref]
    goal = _util.goal_line(label, mine.median / theirs.median, limit, lambda r: f"{r:.2f}x",
                           value_min=mine.min / theirs.min,
                           compare_note=f"({fmt_time(mine.median)} vs {fmt_time(theirs.median)}, "
                                        f"medians; the mins give {mine.min / theirs.min:.2f}x)")
    print()
    print("  " + goal)
    unmeasured = stats.get(f"{ours}, measure=False")
    if unmeasured is not None:
        print(f"  (Not the goal: with measure=False, {unmeasured.median / theirs.median:.2f}x; "
              f"the mins give {unmeasured.min / theirs.min:.2f}x.)")
    return goal


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
    calls[f"{n} x threading.Thread, fresh"] = fresh_threads
    return calls


def bench_threads(settings, cell, with_measure_flag):
    print()
    print("1. Threads: an empty function to N warm threads, then wait for all")
    results = {}
    for n in THREAD_NS:
        executor = ThreadPoolExecutor(n)
        try:
            stats = measure(thread_calls(n, cell, executor, with_measure_flag), settings,
                            settings.target_threads)
        finally:
            executor.shutdown(wait=True)
        print()
        print(f"  N = {n}")
        print_stats(stats, "ThreadPoolExecutor, warm", "ThreadPoolExecutor")
        results[n] = stats
    goal = ratio_goal(results[8], "concmagic threads", "ThreadPoolExecutor, warm",
                      "concmagic threads n=8 / warm ThreadPoolExecutor(8)", GOAL_THREADS)
    return goal


# ---------------------------------------------------------------------------
# 2. Processes, warm
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
        calls["loky reusable executor"] = submit_all(loky_executor)
    return calls


def bench_processes(settings, cell, method, with_measure_flag):
    print()
    print("2. Processes, warm: an empty function to N started worker processes, then "
          "wait for all")
    print(f"   Start method: {method} (concmagic's default here; the standard pools use "
          f"the same, and share its forkserver).")
    print("   concmagic ships its function by value (cloudpickle) on every run and "
          "gives each worker exactly one call;")
    print("   Pool.map may hand several of the N tasks to one worker.")
    get_loky = _loky()
    if get_loky is None:
        print("   loky: skipped (not installed)")
    else:
        import loky
        print(f"   loky {loky.__version__}: its own start method (loky), not {method}")
    ctx = multiprocessing.get_context(method)
    results = {}
    for n in PROCESS_NS:
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
        print()
        print(f"  N = {n}")
        print_stats(stats, "multiprocessing.Pool, warm", "multiprocessing.Pool")
        results[n] = stats
    goal = ratio_goal(results[2], "concmagic processes", "multiprocessing.Pool, warm",
                      "concmagic processes n=2 / warm multiprocessing.Pool(2)", GOAL_PROCESSES)
    return goal


# ---------------------------------------------------------------------------
# 3. Cold start, each in a fresh process
# ---------------------------------------------------------------------------
# Each script prints one JSON line of seconds measured inside the process.
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


def run_cold(script, start_method):
    """Seconds measured inside a fresh interpreter, plus its whole life seen from here."""
    code = (f"START_METHOD = {start_method!r}\nBENCH_DIR = {str(BENCH_DIR)!r}\n"
            f"PAUSE = {NOTEBOOK_PAUSE!r}\n" + script)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=str(REPO))
    life = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"cold-start script failed ({proc.returncode}):\n{proc.stderr}")
    times = json.loads(proc.stdout.strip().splitlines()[-1])
    times["life"] = life
    return times


def bench_cold(settings, method):
    print()
    print("3. Cold start: the first run in a fresh Python process (2 workers, empty function)")
    print("   Timed inside the new process, from just before the call to just after (the "
          "import is timed apart);")
    print("   'process life' is the whole subprocess seen from outside: interpreter start, "
          "imports, the run, exit.")
    variants = {
        f"concmagic.run(processes), default ({method})": (COLD_CONCMAGIC, None),
    }
    if "spawn" != method:
        variants["concmagic.run(processes), spawn"] = (COLD_CONCMAGIC, "spawn")
    variants[f"%%processes -n 2 cell, {NOTEBOOK_PAUSE:g} s after %load_ext"] = \
        (COLD_NOTEBOOK, None)
    for m in ("forkserver", "spawn"):
        if m in multiprocessing.get_all_start_methods():
            variants[f"multiprocessing.Pool(2) + map, {m}"] = (COLD_POOL, m)
    samples = {name: [] for name in variants}
    for _ in range(settings.cold_repeats):        # alternate, one fresh process each
        for name, (script, m) in variants.items():
            samples[name].append(run_cold(script, m))

    def stats(name, key):
        return _util.Stats([s[key] for s in samples[name]])

    ref = f"multiprocessing.Pool(2) + map, {method}"
    ref_median = stats(ref, "first").median if ref in samples else None
    rows = []
    for name in variants:
        first, imp, second, life = (stats(name, k) for k in ("first", "import", "second", "life"))
        ratio = ("1.00x (reference)" if name == ref else
                 fmt_ratio(first.median / ref_median) if ref_median else "n/a")
        rows.append([name, fmt_time(first.min), fmt_time(first.median), ratio,
                     fmt_time(imp.median), fmt_time(second.median), fmt_time(life.median)])
    print()
    _util.print_table(["variant", "first: min", "median", f"vs Pool {method}",
                       "import (med)", "2nd run (med)", "process life (med)"], rows,
                      indent="    ")
    print(f"    {settings.cold_repeats} fresh processes per variant, alternated. 'import' is "
          f"`import concmagic` (lazy: the engine loads at the first run),")
    print("    `import multiprocessing`, or (the cell row) `%load_ext concmagic` in a fresh "
          "IPython shell, which starts the")
    print(f"    forkserver in the background; that row's first cell comes {NOTEBOOK_PAUSE:g} s "
          f"later. '2nd run' is the same call again, now warm.")
    print("    The goal is judged on the first row: concmagic.run right after the import, with "
          "nothing started before.")
    key = f"concmagic.run(processes), default ({method})"
    first = stats(key, "first")
    goal = _util.goal_line("first concmagic.run(empty, 2, 'processes') in a fresh process",
                           first.median, GOAL_COLD, fmt_time, value_min=first.min,
                           compare_note=f"(median of {len(first.samples)}; min "
                                        f"{fmt_time(first.min)}; import concmagic "
                                        f"{fmt_time(stats(key, 'import').median)} more)")
    print()
    print("  " + goal)
    return goal


# ---------------------------------------------------------------------------
# 4. Cells in an IPython shell
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
    print()
    print(f"4. Cells: what %%threads -n {CELL_WORKERS} adds to a cell, through a real "
          f"IPython InteractiveShell")
    shell = make_shell()
    cells = {
        "pass": "pass",
        f"%%threads -n {CELL_WORKERS} -q / pass": f"%%threads -n {CELL_WORKERS} -q\npass",
        f"%%threads -n {CELL_WORKERS} / pass (report shown)": f"%%threads -n {CELL_WORKERS}\npass",
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
            raise SystemExit(f"cell {name!r} failed: {error!r}\n{sink.getvalue()}")
        if "report shown" in name and "threads:" not in sink.getvalue():
            raise SystemExit(f"cell {name!r} showed no report:\n{sink.getvalue()}")

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

    formats = ", ".join(shell.display_formatter.active_types)
    print(f"   store_history=True, history in memory; output sent to a StringIO; "
          f"display formats computed: {formats}")
    stats = measure({name: call(src) for name, src in cells.items()}, settings,
                    settings.target_cells, between=housekeeping)
    base = stats["pass"]
    rows = [stats_row(name, st, "(reference)" if name == "pass" else
                      f"+{(st.median - base.median) * 1e3:.3f} ms")
            for name, st in stats.items()]
    print()
    _util.print_table(["cell", *STATS_HEADER, "vs pass (median)"], rows, indent="    ")
    warn_tails(stats)
    quiet = stats[f"%%threads -n {CELL_WORKERS} -q / pass"]
    goal = _util.goal_line(f"%%threads -n {CELL_WORKERS} -q cell minus a pass cell",
                           quiet.median - base.median, GOAL_CELL,
                           lambda s: f"{s * 1e3:.3f} ms", value_min=quiet.min - base.min,
                           compare_note=f"(medians: {fmt_time(quiet.median)} - "
                                        f"{fmt_time(base.median)})")
    print()
    print("  " + goal)
    return goal


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
# Main
# ---------------------------------------------------------------------------
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="few runs, no warm-up (a smoke test, not a measurement)")
    parser.add_argument("--profile", action="store_true",
                        help="instead of the tables: where concmagic's dispatch time goes")
    args = parser.parse_args(argv)
    settings = Settings(args.quick)
    cell = make_cell_function()
    method = _default_start_method()
    with_flag = _supports_measure_flag()

    started = time.perf_counter()
    print(f"concmagic dispatch benchmark{' (--quick: not a measurement)' if args.quick else ''}")
    package = Path(concmagic.__file__).resolve().parent
    checkout = package.parent.parent              # .../src/concmagic -> the checkout
    machine = _util.machine_lines(checkout)
    print(f"concmagic {concmagic.__version__} from {package}; {machine[0]}")
    for line in machine[1:]:
        print(line)
    load = _util.load_average()
    if load is not None and load > 1.0 and not args.quick:
        print(f"! The load average is {load:.2f} (over 1): other programs compete for the "
              f"CPUs; expect spread-out numbers.")
    if args.profile:
        profile(settings, cell, method)
        return 0
    if args.quick:
        print(f"Runs: {settings.rounds} rounds per variant, no warm-up.")
    else:
        print(f"Runs: up to {settings.rounds} rounds per variant, each a batch of calls timed "
              f"one by one, variants alternating; warm-up of {settings.warmup:g} s per "
              f"variant first, not reported.")
    print(f"Differences under {NOISE:.0%} are noise. Ratios are of medians.")
    if with_flag:
        print("concmagic.run measures by default (CPU sampler, GIL probe); "
              "'measure=False' rows show it without.")

    goals = [bench_threads(settings, cell, with_flag),
             bench_processes(settings, cell, method, with_flag),
             bench_cold(settings, method),
             bench_cells(settings)]
    concmagic.shutdown()

    print()
    print("Goals (medians):")
    for goal in goals:
        print("  " + goal)
    load = _util.load_average()
    print()
    print(f"Took {time.perf_counter() - started:.1f} s; load average at the end: "
          f"{'n/a' if load is None else f'{load:.2f}'}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
