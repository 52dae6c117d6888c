"""``python -m concmagic demo``: the terminal tour of threads, processes and the GIL.

For each built-in kernel and each of its three paths (pure Python, compiled
holding the GIL, compiled releasing it), the same work runs serially, in N
threads and in N processes (``concmagic.compare``); one table shows the
speedups and how busy the GIL was, and each row ends in the verdict that
the measurements support. ``--plot DIR`` saves every comparison's timelines.

What it shows, when the machine has at least two free cores:
  python, gil   threads gain nothing (the GIL is busy); processes do
  nogil         threads and processes both run side by side
  io_wait       waiting releases the GIL (python, nogil), unless the
                extension forgets to (gil): then threads wait in line too
"""
import argparse
import functools
import os
import sys
import time

import numpy as np

from . import __version__, kernels
from .comparison import compare, usable_cores
from .report import format_time

# Work per worker, sized so that one worker's share takes ~0.1-0.3 s on this
# project's machines: long enough to measure, short enough for a tour.
_SIZES = {
    "count_primes": {"python": 6_000, "gil": 120_000, "nogil": 120_000},
    "monte_carlo_pi": {"python": 40_000, "gil": 16_000_000, "nogil": 16_000_000},
    "mandelbrot": {"python": 10, "gil": 400, "nogil": 400},       # rows of 600 points
    "io_wait": {"python": 0.2, "gil": 0.2, "nogil": 0.2},         # seconds
}


# Module-level cells, so worker processes import them by name (no pickling of
# code); functools.partial fixes the path and size.
def primes_cell(worker_id, n_workers, path, size):
    # Equal-width ranges high up, where neighbouring ranges cost the same.
    lo = 10**9 + worker_id * size
    return kernels.count_primes(lo, lo + size, path=path)


def pi_cell(worker_id, n_workers, path, size):
    return kernels.monte_carlo_pi(size, seed=worker_id, path=path)


def mandelbrot_cell(worker_id, n_workers, path, size):
    # Each worker fills its own band of one image; in threads it could be one
    # shared array (see notebooks/06), here each keeps its own for simplicity.
    out = np.zeros((size, 600), dtype=np.int32)
    kernels.mandelbrot(out, xmin=-2.0, xmax=1.0, ymin=-0.1, ymax=0.1, max_iter=200, path=path)
    return int(out.sum())


def io_cell(worker_id, n_workers, path, size):
    kernels.io_wait(size, path=path)


_CELLS = {"count_primes": primes_cell, "monte_carlo_pi": pi_cell,
          "mandelbrot": mandelbrot_cell, "io_wait": io_cell}


def demo(args):
    n = args.workers or max(2, usable_cores())
    print(f"concmagic {__version__} demo: Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs ({usable_cores()} usable), {n} workers")
    if usable_cores() < n:
        print(f"note: {usable_cores()} usable cores cap any speedup at {usable_cores()}x.")
    print("Each row: the same work serially, in threads and in processes. Speedup = serial wall "
          "/ model wall;\nGIL = how busy the GIL was during the threads run (probe wait "
          "fraction).\n")
    header = f"{'kernel':<15}{'path':<7}{'serial':>9}{'threads':>9}{'processes':>11}{'GIL':>6}  verdict"
    print(header)
    print("-" * len(header))
    verdicts = []
    t_start = time.perf_counter()
    kernels_wanted = args.kernels.split(",") if args.kernels else list(_CELLS)
    for name in kernels_wanted:
        if name not in _CELLS:
            sys.exit(f"unknown kernel {name!r}; choose from {', '.join(_CELLS)}")
        for path in kernels.PATHS:
            size = _SIZES[name][path]
            size = type(size)(size * args.scale) if name != "mandelbrot" else max(1, int(size * args.scale))
            cell = functools.partial(_CELLS[name], path=path, size=size)
            comparison = compare(cell, n)
            threads = comparison.reports["threads"]
            gil = "-" if threads.gil_wait is None else f"{threads.gil_wait:.0%}"
            print(f"{name:<15}{path:<7}{format_time(comparison.reports['serial'].wall):>9}"
                  f"{comparison.speedup('threads'):>8.2f}x{comparison.speedup('processes'):>10.2f}x"
                  f"{gil:>6}  {comparison.kind}")
            verdicts.append((name, path, comparison.verdict))
            if args.plot:
                os.makedirs(args.plot, exist_ok=True)
                comparison.plot(path=os.path.join(args.plot, f"{name}-{path}.png"))
    print("\nVerdicts:")
    for name, path, verdict in verdicts:
        print(f"  {name} ({path}): {verdict}")
    if args.plot:
        print(f"\nTimelines saved in {args.plot}/ (one PNG per kernel and path).")
    print(f"\nTour done in {format_time(time.perf_counter() - t_start)}.")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m concmagic",
                                     description=__doc__.splitlines()[0].split(": ", 1)[1])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="compare the models on the built-in kernels, in all paths")
    p.add_argument("-n", "--workers", type=int, default=0,
                   help="workers per model (default: the usable cores, at least 2)")
    p.add_argument("--kernels", default="", help="comma-separated subset of: " + ", ".join(_CELLS))
    p.add_argument("--scale", type=float, default=1.0, help="multiply every work size")
    p.add_argument("--plot", metavar="DIR", default=None,
                   help="save each comparison's timelines as DIR/<kernel>-<path>.png")
    args = parser.parse_args(argv)
    if args.workers < 0:
        parser.error(f"--workers must be a positive integer; got {args.workers}")
    if args.command == "demo":
        demo(args)


if __name__ == "__main__":
    main()
