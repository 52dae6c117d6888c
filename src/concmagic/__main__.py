"""``python -m concmagic demo``: a terminal tour of the kernels' three paths.

For each built-in CPU kernel: the single-thread time of each path, then the
speedup of N threads (N = the cores present) doing N times the work, over one
thread doing one share. Pure Python and the gil path stay near 1x: the GIL
lets one thread run at a time. The nogil path approaches N x.
"""
import argparse
import os
import statistics
import sys
import threading
import time

import numpy as np

from . import __version__, kernels

_PATHS = kernels.PATHS


def _workloads(scale):
    """name -> (make_call(worker_id) -> zero-arg callable), sized by path."""
    def primes(path):
        width = int((20_000 if path == "python" else 400_000) * scale)
        base = 10_000_000
        return lambda i: (lambda: kernels.count_primes(base + i * width, base + (i + 1) * width, path=path))

    def pi(path):
        n = int((100_000 if path == "python" else 5_000_000) * scale)
        return lambda i: (lambda: kernels.monte_carlo_pi(n, seed=i, path=path))

    def mandel(path):
        rows = max(1, int((24 if path == "python" else 400) * scale))
        def make(i):
            out = np.zeros((rows, 400), dtype=np.int32)
            return lambda: kernels.mandelbrot(out, max_iter=200, path=path)
        return make

    return {"count_primes": primes, "monte_carlo_pi": pi, "mandelbrot": mandel}


def _time_threads(make, n, repeat):
    """Wall times of n threads, each running its own share, started together."""
    times = []
    for _ in range(repeat):
        calls = [make(i) for i in range(n)]
        barrier = threading.Barrier(n + 1)
        def work(call):
            barrier.wait()
            call()
        threads = [threading.Thread(target=work, args=(c,)) for c in calls]
        for t in threads:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        times.append(time.perf_counter() - t0)
    return times


def _fmt(seconds):
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns"


def demo(args):
    n = args.threads or os.cpu_count() or 1
    print(f"concmagic {__version__} demo - Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} cores, {n} threads")
    print("Each figure: min (median) of repeats. Speedup = N x one share's work "
          f"in {n} threads vs one share in one thread (ideal: {n}.00x).\n")
    print(f"{'kernel':<16}{'path':<8}{'1 thread':>20}{f'{n} threads':>20}{'speedup':>10}")
    for name, workload in _workloads(args.scale).items():
        for path in _PATHS:
            make = workload(path)
            make(0)()                               # warm-up, kept apart
            one = _time_threads(make, 1, args.repeat)
            many = _time_threads(make, n, args.repeat)
            speedup = n * min(one) / min(many)
            print(f"{name:<16}{path:<8}"
                  f"{_fmt(min(one)) + ' (' + _fmt(statistics.median(one)) + ')':>20}"
                  f"{_fmt(min(many)) + ' (' + _fmt(statistics.median(many)) + ')':>20}"
                  f"{speedup:>9.2f}x")
    if n <= 1:
        print("\nOnly one core: no thread can run beside another, so no speedup is possible here.")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m concmagic", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="time the built-in kernels in their three paths")
    p.add_argument("--threads", type=int, default=0, help="threads to compare against one (default: cores)")
    p.add_argument("--repeat", type=int, default=5, help="repeats per figure (default: 5)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every work size")
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo(args)


if __name__ == "__main__":
    main()
