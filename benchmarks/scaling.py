"""How do threads and processes scale, per kernel path, from 1 worker to every core?

    python benchmarks/scaling.py            # ~10 s warm-up, then 1-3 minutes per core count
    python benchmarks/scaling.py --quick    # smaller work, no warm-up: well under a minute here
    python benchmarks/scaling.py --out scaling.md   # also write the table as Markdown

Strong scaling: a fixed amount of work (for each kernel and path, sized so a
serial run takes about ``--seconds``) is split between N workers, for N = 1,
2, 4, ... up to the cores this process may use (taken from the machine, so
the same command serves a laptop and a 16-core server; the last count is the
core count itself when it is not a power of two). For each model
(threads, processes) and path (python, gil, nogil):

    speedup    = serial time / time with N workers
    efficiency = speedup / N

Only work that releases the GIL can scale in threads; processes scale every
path but pay to start and to talk. Expected on any machine: nogil threads
near 1.0 efficiency, python and gil threads near 1/N, processes close to
nogil threads for long enough work. ``--seconds`` sets "long enough".

Method (STYLE.md section 7): warm-up first, never reported; the paths are
timed in alternation at each N; min and median over the repeats; each
processes count gets one untimed run first so the pool's start-up is not
counted (the dispatch benchmark measures that separately). Timings use
``concmagic.run(..., measure=False)``: the sampler and probe stay out of it.
"""
import argparse
import functools
import os
import statistics
import sys
import time

import concmagic
from concmagic import kernels

try:                                    # python -m benchmarks
    from . import _util
except ImportError:                     # python benchmarks/scaling.py
    import _util

# count_primes(0, hi) in blocks dealt round-robin: trial division costs grow
# with the numbers tested, so contiguous halves would give the second worker
# more work. Many small blocks dealt in turn keep the workers even.
BLOCKS = 256


def primes_work(hi, path, blocks=BLOCKS):
    """A cell function: this worker's share of count_primes(0, hi) in ``blocks`` calls."""
    step = -(-hi // blocks)

    def cell(worker_id, n_workers):
        return sum(kernels.count_primes(lo, min(lo + step, hi), path=path)
                   for lo in range(worker_id * step, hi, n_workers * step))
    return cell


def pi_work(samples, path):
    """A cell function: this worker's share of monte_carlo_pi(samples)."""
    def cell(worker_id, n_workers):
        share = samples // n_workers + (worker_id < samples % n_workers)
        return kernels.monte_carlo_pi(share, seed=worker_id, path=path)
    return cell


KERNELS = {
    # name: (cell factory, size for a first timing, smallest size)
    "count_primes": (primes_work, 20_000, 1_000),
    "monte_carlo_pi": (pi_work, 100_000, 1_000),
}
MODELS = ("threads", "processes")


def worker_counts(cores):
    """1, 2, 4, ... below ``cores``, then ``cores`` itself."""
    counts, n = [], 1
    while n < cores:
        counts.append(n)
        n *= 2
    counts.append(cores)
    return counts


def usable_cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _serial_seconds(make, size, path):
    func = make(size, path)
    t0 = time.perf_counter()
    func(worker_id=0, n_workers=1)
    return time.perf_counter() - t0


def size_for(kernel, path, seconds):
    """The work size whose serial run takes about ``seconds`` (two rounds of guessing)."""
    make, size, smallest = KERNELS[kernel]
    for _ in range(2):
        took = max(_serial_seconds(make, size, path), 1e-4)
        # count_primes is a little worse than linear in hi; two rounds get close.
        size = max(smallest, int(size * seconds / took))
    return size


def _time(func, n, model):
    t0 = time.perf_counter()
    concmagic.run(func, n=n, model=model, measure=False)
    return time.perf_counter() - t0


def warm_up(seconds):
    """Run pure Python for ``seconds``: a fresh process runs it slower at first."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        kernels.count_primes(0, 5_000, path="python")


def measure(quick=False, seconds=None, repeats=None, cores=None, kernels_=None, blocks=None,
            log=None):
    """Measure; return one record (a dict) per kernel x model x path x worker count.

    Each timed run with N workers is paired with a serial run of the same
    work in the same round, and the speedup is the ratio of their medians:
    a machine that speeds up or slows down during the benchmark (turbo,
    neighbours) moves both alike.
    """
    seconds = seconds or (0.15 if quick else 0.6)
    repeats = repeats or (3 if quick else 5)
    cores = cores or usable_cores()
    counts = worker_counts(cores)
    say = log or (lambda *a: None)
    rows = []
    for kernel in kernels_ or KERNELS:
        make = KERNELS[kernel][0]
        if kernel == "count_primes" and blocks:
            make = functools.partial(primes_work, blocks=blocks)
        works = {path: make(size_for(kernel, path, seconds), path) for path in kernels.PATHS}
        for model in MODELS:
            for n in counts:
                for func in works.values():     # untimed: starts the workers (processes)
                    _time(func, n, model)
                serial = {path: [] for path in works}
                samples = {path: [] for path in works}
                for _ in range(repeats):
                    for path, func in works.items():
                        serial[path].append(_time(func, 1, "serial"))
                        samples[path].append(_time(func, n, model))
                for path, times in samples.items():
                    base = statistics.median(serial[path])
                    med = statistics.median(times)
                    row = {
                        "group": "scaling", "kernel": kernel, "model": model, "path": path,
                        "workers": n, "serial_median": base, "min": min(times), "median": med,
                        "speedup": base / med, "efficiency": base / med / n,
                    }
                    rows.append(row)
                    say(f"  {kernel:14} {model:9} {path:6} n={n:<3} "
                        f"{med * 1e3:8.1f} ms  speedup {row['speedup']:5.2f}x  "
                        f"efficiency {row['efficiency']:4.2f}")
    concmagic.shutdown()
    return rows


#: The goal of issue 6 for this group: nogil threads on 2 cores.
GOAL_EFFICIENCY = 0.95
RECORDED_16 = "benchmarks/scaling-16core.md"


def run(quick=False, tiny=False):
    """The rows for ``python -m benchmarks`` (shape: benchmarks/_results.py)."""
    try:
        from . import _results
    except ImportError:
        import _results
    seconds = 0.02 if tiny else 0.15 if quick else 0.6
    if tiny:
        records = measure(seconds=seconds, repeats=2, cores=min(2, usable_cores()),
                          kernels_=("count_primes",))
    else:
        if not quick:
            warm_up(10.0)
        records = measure(quick=quick, seconds=seconds)
    cores = usable_cores()
    rows = [_results.text(
        f"Strong scaling: the same work (a serial run of about "
        f"{seconds:g} s per path) split between N workers, N = "
        f"{', '.join(str(n) for n in worker_counts(cores))} (this machine has {cores} usable "
        f"cores, so no speedup can exceed {cores}x here). Each parallel run is paired with a "
        f"serial run of the same path in the same round; speedup = serial median / median, "
        f"efficiency = speedup / N. The goal: nogil threads at >= {GOAL_EFFICIENCY} efficiency "
        f"with 2 workers. The 16-core runs, made once on a lent 16-vCPU machine, are kept in "
        f"{RECORDED_16}: there nogil threads reached 1.97-2.02x at N=2, 3.8-4.0x at N=4, "
        f"6.1-7.9x at N=8 and 7.5-12.4x at N=16; processes 7.3-14.5x at N=16.")]
    for r in records:
        row = {
            "table": f"{r['kernel']} in {r['model']}",
            "tool": f"{r['path']}, N={r['workers']}",
            "min": r["min"], "median": r["median"],
            "extra": {"serial": _util.fmt_time(r["serial_median"]),
                      "speedup": f"{r['speedup']:.2f}x",
                      "efficiency": f"{r['efficiency']:.2f}"},
            "ratio": None,
        }
        if r["model"] == "threads" and r["path"] == "nogil" and r["workers"] == 2:
            row["goal"] = f"efficiency >= {GOAL_EFFICIENCY}"
            row["met"], verdict = _results.judge(
                r["efficiency"], GOAL_EFFICIENCY, lambda v: f"{v:.2f}", higher=True,
                value_min=r["serial_median"] / r["min"] / 2)
            row["verdict"] = f"efficiency {r['efficiency']:.2f}: {verdict}"
        rows.append(row)
    return rows


def markdown(rows, cores):
    """The table: one line per kernel x model x path, one column per worker count."""
    counts = sorted({r["workers"] for r in rows})
    lines = [
        f"Speedup over a serial run of the same path (efficiency = speedup / N), "
        f"median of the repeats; {cores} usable cores.",
        "",
        "| kernel | model | path | serial | " + " | ".join(f"N={n}" for n in counts) + " |",
        "|---|---|---|---:|" + "---:|" * len(counts),
    ]
    keyed = {}
    for r in rows:
        keyed.setdefault((r["kernel"], r["model"], r["path"]), {})[r["workers"]] = r
    for (kernel, model, path), by_n in keyed.items():
        serial = next(iter(by_n.values()))["serial_median"]
        cells = [f"{by_n[n]['speedup']:.2f}x ({by_n[n]['efficiency']:.2f})" if n in by_n else "-"
                 for n in counts]
        lines.append(f"| {kernel} | {model} | {path} | {serial * 1e3:.0f} ms | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small work, no warm-up")
    parser.add_argument("--seconds", type=float, help="serial time of each work (default 0.6, quick 0.15)")
    parser.add_argument("--repeats", type=int, help="timed runs per point (default 5, quick 3)")
    parser.add_argument("--cores", type=int, help="largest worker count (default: the usable cores)")
    parser.add_argument("--kernels", help="comma-separated: " + ", ".join(KERNELS))
    parser.add_argument("--blocks", type=int,
                        help=f"count_primes: blocks dealt to the workers (default {BLOCKS}); "
                             "each block is one compiled call, so one return to the GIL")
    parser.add_argument("--out", help="also write the Markdown table here")
    args = parser.parse_args(argv)
    names = args.kernels.split(",") if args.kernels else None
    for name in names or ():
        if name not in KERNELS:
            parser.error(f"unknown kernel {name!r}; choose from {', '.join(KERNELS)}")
    cores = args.cores or usable_cores()
    head = _util.machine_lines(os.path.dirname(os.path.abspath(__file__)))
    print("\n".join(head))
    if not args.quick:
        print("warming up for 10 s ...")
        warm_up(10.0)
    rows = measure(quick=args.quick, seconds=args.seconds, repeats=args.repeats, cores=cores,
                   kernels_=names, blocks=args.blocks, log=print)
    table = markdown(rows, cores)
    print()
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(f"- {line}" for line in head) + "\n\n" + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
