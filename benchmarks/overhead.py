"""What does measuring cost? The same cells with the sampler and GIL probe on and off.

    python benchmarks/overhead.py            # ~10 s warm-up, then ~1 min
    python benchmarks/overhead.py --quick    # a few seconds, for smoke tests

Each cell is a fixed amount of work (never "run for 0.3 s"), run by
``concmagic.run`` with ``measure=True`` and ``measure=False`` in alternation,
round after round; the figure is the ratio of the medians (goal: <= 1.02).
Differences under 10% of a single run are within this machine's noise, which
is why many rounds are taken and the median compared.
"""
import argparse
import os
import platform
import statistics
import sys
import time

import concmagic
from concmagic import kernels

WARMUP_SECONDS = 10.0
GOAL = 1.02


def python_cell(iterations):
    def cell(worker_id, n_workers):
        total = 0
        for i in range(iterations):
            total += i * i
        return total
    return cell


def nogil_cell(width):
    def cell(worker_id, n_workers):
        lo = 10**9 + worker_id * width
        return kernels.count_primes(lo, lo + width, path="nogil")
    return cell


def cells(quick):
    scale = 0.1 if quick else 1.0
    return {
        "pure Python, 2 threads": (python_cell(int(2_000_000 * scale)), "threads"),
        "nogil kernel, 2 threads": (nogil_cell(int(150_000 * scale)), "threads"),
        "pure Python, serial x2": (python_cell(int(2_000_000 * scale)), "serial"),
        "nogil kernel, 2 processes": (nogil_cell(int(150_000 * scale)), "processes"),
    }


def time_run(func, model, measure):
    t0 = time.perf_counter()
    concmagic.run(func, 2, model, measure=measure)
    return time.perf_counter() - t0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few rounds, no warm-up")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 25)
    todo = cells(args.quick)
    print("concmagic measurement overhead")
    print(f"Python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}, concmagic {concmagic.__version__}")
    if not args.quick:
        end = time.perf_counter() + WARMUP_SECONDS
        while time.perf_counter() < end:              # warm-up: kept apart, never reported
            for func, model in todo.values():
                time_run(func, model, True)
                time_run(func, model, False)
    print(f"{rounds} rounds, measured and unmeasured alternated; times are wall per run.\n")
    print(f"{'cell':<28}{'off min':>10}{'off med':>10}{'on min':>10}{'on med':>10}{'on/off':>9}")
    worst = 0.0
    for name, (func, model) in todo.items():
        on, off = [], []
        for r in range(rounds):
            # Alternate which goes first, so neither always follows the other.
            for measure in ((True, False) if r % 2 else (False, True)):
                (on if measure else off).append(time_run(func, model, measure))
        ratio = statistics.median(on) / statistics.median(off)
        worst = max(worst, ratio)
        print(f"{name:<28}{min(off)*1e3:>8.1f}ms{statistics.median(off)*1e3:>8.1f}ms"
              f"{min(on)*1e3:>8.1f}ms{statistics.median(on)*1e3:>8.1f}ms{ratio:>8.3f}x")
    verdict = "met" if worst <= GOAL else f"missed by {(worst - GOAL) * 100:.1f} points"
    print(f"\nworst on/off ratio of medians: {worst:.3f}x (goal <= {GOAL}: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
