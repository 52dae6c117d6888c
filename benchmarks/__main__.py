"""python -m benchmarks: every group of issue 6, one RESULTS.md.

    python -m benchmarks                     # the full run (the lead's, on a quiet machine)
    python -m benchmarks --quick             # a short pass: shapes right, numbers rough
    python -m benchmarks --quick --tiny      # the smoke test's pass: well under a minute
    python -m benchmarks --groups dispatch,comm --out /tmp/RESULTS.md
    make bench                               # installs the bench extra, then the full run

Groups, in order: dispatch, kernels, scaling, overhead, data, comm. Each is a
module of this package with ``run(quick=False) -> list[dict]`` (the row
shape is in benchmarks/_results.py) and its own ``main()``.

Each group runs in a fresh interpreter, one after another: a group then
measures on a process that no other group has warmed, loaded or left threads
in, and a group that hangs or crashes costs its own section only. RESULTS.md
is rewritten after every group, so an interrupted run keeps what it measured.

A group whose module is missing or raises ImportError is reported as skipped,
with the reason; one that raises anything else, as failed, with the error
(its traceback goes to stderr). Inside a group, each peer that is not
installed is a row marked "skipped: <reason>", one that fails "failed: <error>".
"""
import argparse
import importlib
import inspect
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from . import _results

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DEFAULT_OUT = BENCH_DIR / "RESULTS.md"
#: Seconds a group may take before it is stopped and reported as failed.
#: The full run's slowest group (kernels, with its 10 s warm-up) takes a few minutes.
GROUP_TIMEOUT = {"full": 1800, "quick": 600, "tiny": 120}
#: Set in every group's interpreter under --tiny, for a group whose run()
#: takes no ``tiny=`` argument and wants to know.
TINY_ENV = "CONCMAGIC_BENCH_TINY"

INTRO_QUICK = ("**--quick: a short pass with few repeats and small inputs, on whatever "
               "machine ran it. The shapes are right, the numbers are rough; the goals "
               "are judged on them only as a preview.**")
HOW_TO_READ = (
    "How to read: each figure is the min and the median over repeats taken after a "
    "warm-up (warm-ups are never reported); variants of one table are timed in "
    "alternation, so slow drifts of the machine hit all of them alike. The ratio is "
    "of medians, to the table's named reference, or else to its best row. Differences "
    "under 10% are noise on this kind of machine. A peer that is not installed is a "
    "row marked skipped, with the reason; one that broke, failed, with the error.")


# ---------------------------------------------------------------------------
# One group, in this interpreter (the child side)
# ---------------------------------------------------------------------------
def _missing_reason(name, exc):
    """Why a group could not be imported, in words."""
    if isinstance(exc, ModuleNotFoundError) and exc.name in (f"benchmarks.{name}", name):
        return f"benchmarks/{name}.py is not there yet"
    return f"{type(exc).__name__}: {exc}"


def run_group_here(name, quick, tiny):
    """The rows of one group, run in this interpreter. Never raises (but for Ctrl-C)."""
    try:
        module = importlib.import_module(f"benchmarks.{name}")
    except ImportError as exc:
        return [_results.skipped("", f"group {name}", _missing_reason(name, exc))]
    if not hasattr(module, "run"):
        return [_results.failed("", f"group {name}", f"benchmarks/{name}.py has no run()")]
    try:
        params = inspect.signature(module.run).parameters
        kwargs = {"quick": quick or tiny}
        note = None
        if tiny:
            if "tiny" in params:
                kwargs["tiny"] = True
            else:
                note = (f"--tiny: benchmarks/{name}.py's run() takes no tiny=, so it ran "
                        f"at its --quick sizes.")
        rows = list(module.run(**kwargs))
    except ImportError as exc:
        traceback.print_exc()
        return [_results.skipped("", f"group {name}", f"{type(exc).__name__}: {exc}")]
    except Exception as exc:                       # reported, not raised: other groups go on
        traceback.print_exc()
        return [_results.failed("", f"group {name}", exc)]
    if note:
        rows.insert(0, _results.text(note))
    return [_results.normalise(row) for row in rows]


def _child(name, quick, tiny, rows_path):
    rows = run_group_here(name, quick, tiny)
    with open(rows_path, "w", encoding="utf-8") as f:
        json.dump(rows, f, default=str)
    return 0


# ---------------------------------------------------------------------------
# Every group, each in a fresh interpreter (the parent side)
# ---------------------------------------------------------------------------
def run_group(name, quick, tiny):
    """Rows of one group, run by a fresh interpreter; a crash or hang becomes a failed row."""
    mode = "tiny" if tiny else "quick" if quick else "full"
    timeout = GROUP_TIMEOUT[mode]
    with tempfile.TemporaryDirectory(prefix="concmagic-bench-") as tmp:
        rows_path = os.path.join(tmp, "rows.json")
        cmd = [sys.executable, "-m", "benchmarks", "--_child", name, "--_rows", rows_path]
        cmd += ["--quick"] * quick + ["--tiny"] * tiny
        env = dict(os.environ)
        if tiny:
            env[TINY_ENV] = "1"
        # Children inherit stdout/stderr: their progress and tracebacks show as they go.
        try:
            proc = subprocess.run(cmd, cwd=str(REPO), env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            return [_results.failed("", f"group {name}",
                                    f"did not finish in {timeout} s (stopped)")]
        if os.path.exists(rows_path):
            with open(rows_path, encoding="utf-8") as f:
                return json.load(f)
        return [_results.failed("", f"group {name}",
                                f"its interpreter exited with code {proc.returncode} "
                                f"before writing its rows (see stderr above)")]


def parse_groups(text):
    names = [g.strip() for g in text.split(",") if g.strip()]
    unknown = [g for g in names if g not in _results.GROUPS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"--groups takes a comma-separated list of {', '.join(_results.GROUPS)}; "
            f"got {text!r}")
    return [g for g in _results.GROUPS if g in names]      # always in the documented order


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a short pass: few repeats, small inputs (not a measurement)")
    parser.add_argument("--tiny", action="store_true",
                        help="with --quick: the smallest sizes, slow peers left out (the "
                             "smoke test's pass; well under a minute)")
    parser.add_argument("--groups", type=parse_groups, default=list(_results.GROUPS),
                        help=f"comma-separated, from {','.join(_results.GROUPS)} (default: all)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="where to write the results (default: benchmarks/RESULTS.md)")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    parser.add_argument("--_rows", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick or args.tiny
    if args._child:
        return _child(args._child, quick, args.tiny, args._rows)

    shown = ["python -m benchmarks", *(["--quick"] if quick else []),
             *(["--tiny"] if args.tiny else [])]
    if args.groups != list(_results.GROUPS):
        shown += ["--groups", ",".join(args.groups)]
    if args.out.resolve() != DEFAULT_OUT:
        shown += ["--out", shlex.quote(str(args.out))]
    command = " ".join(shown)
    header = _results.machine_header(command, REPO)
    intro = [INTRO_QUICK, ""] if quick else []
    intro.append(HOW_TO_READ)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    results = {}
    for name in args.groups:
        print(f"== {name} ==", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        rows = run_group(name, quick, args.tiny)
        results[name] = (rows, time.perf_counter() - t0)
        _results.write_markdown(args.out, results, header, intro)
    took = time.perf_counter() - started
    load = _results._util.load_average()
    header.append(f"- Whole run: {took:.0f} s; load average at the end: "
                  f"{'n/a' if load is None else f'{load:.2f}'}")
    _results.write_markdown(args.out, results, header, intro)
    print(f"Wrote {args.out} ({took:.0f} s).", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
