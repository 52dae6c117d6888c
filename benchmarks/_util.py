"""Helpers shared by the benchmarks: timing in alternation, formatting, the machine.

House rules (STYLE.md section 7), the same as benchmarks/kernels.py:
warm-up runs are kept apart and never reported; variants are timed in
alternation, round after round, so that slow drifts of a shared machine hit
all of them alike; min and median of the samples are reported, raw samples
are kept; differences under NOISE are called noise, not findings.

Kept light on imports on purpose: worker processes of the benchmarked pools
import this module to find ``noop``, and a cold start must not pay for our
helpers (statistics, platform, subprocess are imported where used).
"""
import math
import os
import sys
import time

__all__ = [
    "NOISE", "noop", "Stats", "alternate", "calibrate", "batch_timer",
    "fmt_time", "fmt_ratio", "load_average", "machine_lines", "goal_line", "print_table",
]

#: Differences smaller than this are reported as noise, not as findings.
NOISE = 0.10


def noop(*args, **kwargs):
    """The empty task the reference pools and executors run (pickled by reference)."""
    return None


# ---------------------------------------------------------------------------
# Samples
# ---------------------------------------------------------------------------
class Stats:
    """The raw samples of one variant (seconds per call) and what is reported of them."""

    def __init__(self, samples, loops=1):
        if not samples:
            raise ValueError("no samples")
        self.samples = sorted(samples)
        self.loops = loops              # calls timed back to back in each round

    @property
    def min(self):
        return self.samples[0]

    @property
    def median(self):
        import statistics
        return statistics.median(self.samples)

    @property
    def mean(self):
        import statistics
        return statistics.fmean(self.samples)

    def quantile(self, q):
        """The q-quantile (0..1) of the samples, nearest rank."""
        return self.samples[min(len(self.samples) - 1, int(q * len(self.samples)))]

    @property
    def spread(self):
        """Standard deviation as a fraction of the mean (0 with a single sample)."""
        import statistics
        if len(self.samples) < 2:
            return 0.0
        mean = self.mean
        return statistics.stdev(self.samples) / mean if mean > 0 else 0.0

    @property
    def runs(self):
        return len(self.samples)


def batch_timer(call, loops):
    """A zero-argument timer: the seconds of each of ``loops`` calls made in a row.

    Each call is timed alone (perf_counter costs ~0.1 us), so that the median
    is that of calls, not of batch means: one call that stalls for a few ms
    then moves one sample, not the whole batch's.
    """
    def timer():
        clock = time.perf_counter
        times = []
        for _ in range(loops):
            t0 = clock()
            call()
            times.append(clock() - t0)
        return times
    return timer


def calibrate(call, target, max_loops=10_000):
    """``(loops, seconds per call)``: how many calls make a sample of about ``target`` s."""
    once = math.inf
    for _ in range(3):                  # the best of 3: one stray slow call must not decide
        t0 = time.perf_counter()
        call()
        once = min(once, time.perf_counter() - t0)
        if once >= 5 * target:          # plainly slow: spare the two other calls
            return 1, once
    if once >= target:
        return 1, once
    # A second, better guess: a first call is often slower than the rest.
    probe = max(1, min(max_loops, int(target / max(once, 1e-7) / 4)))
    t0 = time.perf_counter()
    for _ in range(probe):
        call()
    each = (time.perf_counter() - t0) / probe
    return max(1, min(max_loops, round(target / max(each, 1e-9)))), each


def alternate(jobs, rounds, between=None):
    """Time ``jobs`` (name -> zero-arg timer returning seconds) in alternation.

    A timer may return a list of seconds (one per call of a batch).
    One sample of every job per round. ``rounds`` is a number, or a dict
    name -> number: a job with fewer takes part in the first rounds only
    (a slow variant gets fewer samples, all still alternated with the
    others). ``between``, if given, is called after every sample, outside
    the timing (housekeeping). Returns name -> list of seconds.
    """
    if not isinstance(rounds, dict):
        rounds = {name: rounds for name in jobs}
    samples = {name: [] for name in jobs}
    for rnd in range(max(rounds.values(), default=0)):
        for name, timer in jobs.items():
            if rnd < rounds[name]:
                took = timer()
                samples[name].extend(took if isinstance(took, list) else [took])
                if between is not None:
                    between()
    return samples


# ---------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------
def fmt_time(seconds):
    """3 significant digits in s, ms or us."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if abs(seconds) >= scale:
            break
    value = seconds / scale
    digits = max(0, 2 - int(math.floor(math.log10(abs(value))))) if value else 0
    return f"{value:.{digits}f} {unit}"


def fmt_ratio(r, ref=1.0):
    """``2.35x``, and "(= within noise)" when within NOISE of ``ref``."""
    if abs(r - ref) < NOISE * ref:
        return f"{r:.2f}x (= within noise)"
    return f"{r:.2f}x"


def print_table(header, rows, indent="  "):
    """Left-align the first column, right-align the others."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells):
        parts = [f"{cells[0]:<{widths[0]}}"]
        parts += [f"{c:>{w}}" for c, w in zip(cells[1:], widths[1:])]
        return indent + "  ".join(parts).rstrip()

    print(line(header))
    for row in rows:
        print(line(row))


def goal_line(label, value, limit, fmt, *, value_min=None, compare_note=""):
    """``Goal: label <= limit: measured value -- met / missed by X``.

    ``value`` (from medians) and ``limit`` are numbers in the same unit,
    lower is better; ``fmt`` turns one into text. ``value_min``, the same
    figure computed from the mins, is a second opinion: when the two fall on
    different sides of the limit, the verdict is "inconclusive" rather than
    a coin toss. Within NOISE of the limit, it says so too.
    """
    def verdict_of(v):
        return "met" if v <= limit else f"missed by {fmt(v - limit)}"

    if value is None or (isinstance(value, float) and math.isnan(value)):
        verdict = "not measured"
    else:
        verdict = verdict_of(value)
        if value_min is not None and (value_min <= limit) != (value <= limit):
            verdict = (f"inconclusive: the medians say {verdict}, the mins say "
                       f"{verdict_of(value_min)} ({fmt(value_min)}); the samples were "
                       f"unsteady, rerun at a quieter moment")
        elif limit and abs(value - limit) < NOISE * abs(limit):
            verdict += " (within noise of the limit: could go either way on a rerun)"
    note = f" {compare_note}" if compare_note else ""
    return f"Goal: {label} <= {fmt(limit)}: measured {fmt(value)}{note} -- {verdict}"


# ---------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------
def load_average():
    """The 1-minute load average, or None where the OS does not tell."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "unknown CPU"


def _git_state(path):
    """``abc1234`` or ``abc1234 + uncommitted changes in src/``; None outside git."""
    import subprocess
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=path,
                              capture_output=True, text=True, timeout=5)
        if head.returncode:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=path,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    state = head.stdout.strip()
    if dirty.stdout.strip():
        state += " + uncommitted changes in src/"
    return state


def machine_lines(repo=None):
    """Lines saying what ran the benchmark: Python, CPU, cores, load, code version."""
    import platform
    cpus = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    load = load_average()
    lines = [
        f"Python {platform.python_version()} ({sys.implementation.name}) on "
        f"{platform.system()} {platform.machine()}",
        f"CPU: {_cpu_model()}; {cpus} logical CPUs, {usable} usable by this process",
        f"Load average at start: {'n/a' if load is None else f'{load:.2f}'} "
        f"(other programs running slow down and spread the numbers)",
    ]
    if repo is not None:
        state = _git_state(repo)
        if state:
            lines.append(f"Code: git {state}")
    return lines
