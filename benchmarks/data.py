"""What does it cost to give a big NumPy array to 2 worker processes?

    python benchmarks/data.py            # 200 MiB: about 40 s
    python benchmarks/data.py --big      # and 1 GiB: a few minutes more, ~6 GiB of memory
    python benchmarks/data.py --quick    # few repeats: a smoke test, not a measurement
    python -m benchmarks --groups data   # the same table, into benchmarks/RESULTS.md

A float64 array of 200 MiB (with --big, also 1 GiB) goes to 2 workers, each
of which reads one element of it, four ways:

1. pickled: ``concmagic.run`` of a cell that uses the array, as a plain
   ``%%processes`` cell does: the function is pickled with the array in it
   and sent to each worker, which unpickles its own copy.
2. joblib: ``joblib.Parallel(n_jobs=2)`` on its (reused) loky pool, with its
   automatic memory-mapping (default ``max_nbytes``): the array is dumped to
   a file once per call and each worker maps it. Skipped if joblib is missing.
3. share, first run: ``concmagic.run(..., share=["A"])`` with a private
   array: one copy into shared memory (a memfd), which the workers map.
4. share, reuse: the same run again, the variable now being the shared
   view: nothing is copied (see concmagic.runners.shared for the rule).

Each figure is the wall time of one whole call, as the notebook waits for
it, with a warm pool (pools are warmed first, not reported). concmagic rows
also say what their report counted: bytes shipped, and the share of the run
spent shipping. Goals at 200 MiB (issue 7): share's first run <= 0.25 s,
reuse <= 0.05 s (pickling takes ~2.5 s here, joblib ~0.19 s).

Method (STYLE.md section 7): a warm-up call of each variant is never
reported; the variants are timed in alternation, round after round, so slow
drifts of a shared machine hit them alike (pickling, much slower, takes part
in fewer rounds); min and median are reported, ratios are of medians.
"""
import argparse
import gc
import time
from pathlib import Path

try:                                             # python -m benchmarks.data
    from . import _results, _util
except ImportError:                              # python benchmarks/data.py
    import _results
    import _util

import numpy as np

import concmagic
from concmagic.cell import make_cell_function
from concmagic.comm import format_bytes

REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20

#: Goals of issue 7, at 200 MiB: seconds, lower is better.
GOAL_FIRST = 0.25
GOAL_REUSE = 0.05
GOAL_SIZE = 200 * MiB
#: What each worker does with the array: read one element (the transport is
#: what is measured, not the work).
CELL = "float(A[worker_id])"


def first_element(array, worker_id):
    """joblib's task: the same work as CELL (pickled by reference, as joblib users do)."""
    return float(array[worker_id])


class Settings:
    def __init__(self, quick=False, tiny=False, big=False):
        quick = quick or tiny
        self.sizes = [16 * MiB] if tiny else [200 * MiB] + ([1024 * MiB] if big else [])
        self.rounds = 1 if tiny else 3 if quick else 9
        self.pickled_rounds = 1 if tiny else 2 if quick else 4


def variants(size):
    """name -> zero-argument timer (seconds of one call), for an array of ``size`` bytes."""
    source = np.random.default_rng(0).random(size // 8)          # the notebook's private array
    ns = {"__name__": "__main__", "A": source}
    func = make_cell_function(CELL, ns).func
    last = {}                                     # name -> the last concmagic report

    def timed(name, call, setup=None):
        def timer():
            if setup is not None:
                setup()                           # untimed
            t0 = time.perf_counter()
            result = call()
            took = time.perf_counter() - t0
            if isinstance(result, concmagic.Report):
                assert result.results == [float(source[0]), float(source[1])]
                last[name] = result
            return took
        return timer

    def private():
        # The notebook's variable back to the private array: the next share=
        # run copies it in; the last run's shared view (and its memory) goes.
        last.pop("first", None)
        last.pop("reuse", None)
        ns["A"] = source
        gc.collect()

    def shared_view():
        if ns["A"] is source:                     # not shared yet: share it first
            concmagic.run(func, 2, "processes", share=["A"])

    def pickled():
        return concmagic.run(func, 2, "processes")

    def share():
        return concmagic.run(func, 2, "processes", share=["A"])

    jobs = {"pickled (plain %%processes)": timed("pickled", pickled, private)}
    try:
        import joblib

        def with_joblib():
            out = joblib.Parallel(n_jobs=2)(joblib.delayed(first_element)(source, i)
                                            for i in range(2))
            assert out == [float(source[0]), float(source[1])]
        jobs["joblib, automatic memmapping"] = timed("joblib", with_joblib)
    except ImportError:
        jobs["joblib, automatic memmapping"] = None
    jobs["share=, first run"] = timed("first", share, private)
    jobs["share=, reuse"] = timed("reuse", share, shared_view)
    return jobs, last


def measure(settings, size):
    """Samples (name -> seconds) and the last concmagic report of each variant."""
    jobs, last = variants(size)
    live = {name: timer for name, timer in jobs.items() if timer is not None}
    for timer in live.values():                   # warm-up: pools started, never reported
        timer()
    rounds = {name: settings.pickled_rounds if name.startswith("pickled") else settings.rounds
              for name in live}
    samples = _util.alternate(live, rounds)
    return {name: samples.get(name) for name in jobs}, last


def rows_of(size, samples, last):
    table = f"{format_bytes(size)} ({size // MiB} MiB) float64 array to 2 workers"
    keys = {"pickled (plain %%processes)": "pickled", "share=, first run": "first",
            "share=, reuse": "reuse"}
    goals = {"share=, first run": GOAL_FIRST, "share=, reuse": GOAL_REUSE}
    rows = []
    for name, values in samples.items():
        if values is None:
            rows.append(_results.skipped(table, name, "joblib is not installed "
                                                      "(pip install 'concmagic[bench]')"))
            continue
        stats = _util.Stats(values)
        extra = {"samples": str(stats.runs)}
        report = last.get(keys.get(name))
        if report is not None:
            s = report.shipping
            extra["shipped"] = format_bytes(s.sent + s.received)
            extra["shipping share"] = f"{s.fraction:.0%}"
            extra["shared"] = format_bytes(sum(s.shared.values())) if s.shared else "-"
        row = {"table": table, "tool": name, "min": stats.min, "median": stats.median,
               "extra": extra}
        if name.startswith("pickled"):
            row["reference"] = True
        if name in goals and size == GOAL_SIZE:
            limit = goals[name]
            row["goal"] = f"<= {_util.fmt_time(limit)}"
            row["met"], row["verdict"] = _results.judge(stats.median, limit, _util.fmt_time,
                                                        value_min=stats.min)
        rows.append(row)
    return rows


def run(quick=False, tiny=False, big=False):
    """The table(s) as rows (see benchmarks/_results.py); ``big`` adds 1 GiB."""
    settings = Settings(quick, tiny, big)
    rows = [_results.text(
        "A float64 array to 2 worker processes, each of which reads one element: the wall "
        "time of one whole call with a warm pool. pickled: a plain %%processes cell (the "
        "array pickled into the function, once per worker); joblib: Parallel(n_jobs=2) with "
        "its automatic memory-mapping; share=: the array in shared memory, copied in on "
        "the first run, reused as it is after. The extra columns are from concmagic's own "
        "report: bytes shipped, the share of the run spent shipping, bytes shared. Ratios "
        "are to pickling.")]
    try:
        for size in settings.sizes:
            samples, last = measure(settings, size)
            rows += rows_of(size, samples, last)
            del samples, last
            gc.collect()
    finally:
        concmagic.shutdown()
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", action="store_true", help="also 1 GiB (needs ~6 GiB of memory)")
    parser.add_argument("--quick", action="store_true",
                        help="few repeats (a smoke test, not a measurement)")
    parser.add_argument("--tiny", action="store_true", help="16 MiB, one repeat (smoke test)")
    args = parser.parse_args(argv)
    print("concmagic: a big array to 2 worker processes"
          + (" (--quick: not a measurement)" if args.quick or args.tiny else ""))
    print(f"concmagic {concmagic.__version__}")
    for line in _util.machine_lines(REPO):
        print(line)
    print()
    started = time.perf_counter()
    _results.print_rows(run(args.quick, args.tiny, args.big))
    print(f"\n(took {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
