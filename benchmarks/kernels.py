"""How fast are concmagic's kernels, next to plain C and numba, in 1 and N threads?

    python benchmarks/kernels.py            # full run: ~10 s warm-up, then a few minutes
    python benchmarks/kernels.py --quick    # smaller inputs, no warm-up: a few seconds
    python benchmarks/kernels.py --tiny     # the smoke test's sizes, no numba: about a second
    python -m benchmarks --groups kernels   # the same tables, into benchmarks/RESULTS.md

Two questions, two tables:

1. Single thread: each path of each CPU kernel (python, gil, nogil) beside the
   same algorithm in plain C (``gcc -O3 -ffp-contract=off``, built here and
   loaded with ctypes; also with ``-march=native``, as numba compiles for the
   host CPU) and in numba ``@njit(nogil=True)`` when numba is installed.
   Same inputs for every variant; ratios are to "C -O3". Goal (issue 6): the
   nogil path <= 1.05x C -O3 and no slower than numba.
2. Threads: each variant run by 1 thread, then by N = os.cpu_count() threads,
   each doing an equal share of the same total work. Speedup = 1-thread time /
   N-thread time. Only code that releases the GIL can gain.

Method (see STYLE.md section 7): a warm-up of about 10 s is run first and
never reported (pure Python runs 25-30% slower for ~8 s in a fresh process);
variants are timed in alternation, round after round, so that slow drifts of
the machine hit all of them alike; min and median of the runs are reported;
differences under 10% are called noise.
"""
import argparse
import ctypes
import hashlib
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from concmagic import kernels

try:                                             # python -m benchmarks.kernels
    from . import _results
except ImportError:                              # python benchmarks/kernels.py
    import _results

# Differences smaller than this are reported as noise, not as findings.
NOISE = 0.10
# The full run's warm-up, in seconds, before anything is measured.
WARMUP_SECONDS = 10.0
BUILD_DIR = Path(__file__).resolve().parent / "_build"
#: Goal (issue 6): each kernel's nogil path at most this many times gcc -O3's time
#: (and no slower than numba's).
GOAL_VS_C = 1.05


# ---------------------------------------------------------------------------
# Plain C reference, compiled at benchmark time
# ---------------------------------------------------------------------------
# The plain algorithms, exactly as in concmagic/_core.pyx, with one
# difference: count_primes divides in 64 bits throughout. concmagic's
# compiled paths switch to 32-bit division when n < 2**32, because gcc will
# not do it for us; LLVM (hence numba) inserts that same switch by itself.
# So below 2**32, "C -O3" here is expected to be slower than gil/nogil/numba.
C_SOURCE = r"""
#include <math.h>
#include <stdint.h>

static int is_prime(uint64_t n)
{
    if (n < 2) return 0;
    if (n < 4) return 1;
    if (n % 2 == 0) return 0;
    for (uint64_t d = 3; d * d <= n; d += 2)
        if (n % d == 0) return 0;
    return 1;
}

uint64_t count_primes(uint64_t lo, uint64_t hi)
{
    uint64_t count = 0;
    for (uint64_t n = lo; n < hi; n++)
        count += is_prime(n);
    return count;
}

static inline uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15u);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBu;
    return z ^ (z >> 31);
}

double monte_carlo_pi(uint64_t n, uint64_t seed)
{
    uint64_t state = seed, hits = 0;
    state = splitmix64(&state);             /* mix the seed, as concmagic does */
    for (uint64_t i = 0; i < n; i++) {
        double x = (double)(splitmix64(&state) >> 11) * (1.0 / 9007199254740992.0);
        double y = (double)(splitmix64(&state) >> 11) * (1.0 / 9007199254740992.0);
        hits += (x * x + y * y <= 1.0);
    }
    return n ? 4.0 * (double)hits / (double)n : NAN;
}

void mandelbrot(int32_t *out, int64_t height, int64_t width,
                int64_t row_start, int64_t row_stop,
                double xmin, double xmax, double ymin, double ymax, int32_t max_iter)
{
    double dx = (xmax - xmin) / width, dy = (ymax - ymin) / height;
    for (int64_t r = row_start; r < row_stop; r++) {
        double y = ymin + r * dy;
        for (int64_t c = 0; c < width; c++) {
            double cr = xmin + c * dx, zr = 0.0, zi = 0.0, zr2, zi2;
            int32_t it = 0;
            while (it < max_iter) {
                zr2 = zr * zr;
                zi2 = zi * zi;
                if (zr2 + zi2 > 4.0) break;
                zi = 2.0 * zr * zi + y;
                zr = zr2 - zi2 + cr;
                it++;
            }
            out[r * width + c] = it;
        }
    }
}
"""
C_FLAGS = ["-O3", "-ffp-contract=off"]
# The same, for this very CPU. numba (LLVM) always compiles for the host CPU;
# gcc, like the setup.py build of concmagic, targets baseline x86-64 unless
# told otherwise. Where numba beats "C -O3", compare it with this row: on an
# AVX-512 CPU the splitmix64 loop vectorises (64-bit vector multiplies).
C_NATIVE_FLAGS = ["-O3", "-march=native", "-ffp-contract=off"]


def build_c(flags):
    """The C reference built with `flags`, as a ctypes library; or (None, reason)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        return None, "skipped: gcc not found"
    flags = [*flags, "-shared", "-fPIC"]
    # Rebuild only when the source or the flags change.
    key = hashlib.sha256((C_SOURCE + " ".join(flags)).encode()).hexdigest()[:12]
    BUILD_DIR.mkdir(exist_ok=True)
    lib_path = BUILD_DIR / f"kernels_ref_{key}.so"
    if not lib_path.exists():
        src = BUILD_DIR / f"kernels_ref_{key}.c"
        src.write_text(C_SOURCE)
        proc = subprocess.run([gcc, *flags, "-o", str(lib_path), str(src), "-lm"],
                              capture_output=True, text=True)
        if proc.returncode:
            return None, f"skipped: gcc failed:\n{proc.stderr}"
    # CDLL (not PyDLL): ctypes releases the GIL for the whole call.
    lib = ctypes.CDLL(str(lib_path))
    u64, i64, i32, f64 = ctypes.c_uint64, ctypes.c_int64, ctypes.c_int32, ctypes.c_double
    lib.count_primes.argtypes, lib.count_primes.restype = [u64, u64], u64
    lib.monte_carlo_pi.argtypes, lib.monte_carlo_pi.restype = [u64, u64], f64
    lib.mandelbrot.argtypes = [ctypes.POINTER(ctypes.c_int32), i64, i64, i64, i64,
                               f64, f64, f64, f64, i32]
    lib.mandelbrot.restype = None
    return lib, "gcc " + " ".join(flags[:-2])


# ---------------------------------------------------------------------------
# numba reference, when numba is installed
# ---------------------------------------------------------------------------
def build_numba():
    """numba versions of the three kernels, or (None, reason)."""
    try:
        import numba
    except ImportError:
        return None, "skipped: numba not installed"
    njit = numba.njit(nogil=True, cache=True)
    # uint64 constants: mixing uint64 with a plain int would give float64.
    gamma, m1, m2 = (np.uint64(v) for v in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9,
                                            0x94D049BB133111EB))
    s11, s27, s30, s31 = (np.uint64(v) for v in (11, 27, 30, 31))
    two_m53 = 1.0 / 9007199254740992.0

    @njit
    def count_primes(lo, hi):
        count = 0
        for n in range(lo, hi):
            if n < 2:
                continue
            if n < 4:
                count += 1
                continue
            if n % 2 == 0:
                continue
            d = 3
            prime = 1
            while d * d <= n:
                if n % d == 0:
                    prime = 0
                    break
                d += 2
            count += prime
        return count

    @njit
    def splitmix64(state):
        state = state + gamma
        z = state
        z = (z ^ (z >> s30)) * m1
        z = (z ^ (z >> s27)) * m2
        return state, z ^ (z >> s31)

    @njit
    def monte_carlo_pi(n, seed):
        state = splitmix64(seed)[1]
        hits = 0
        for _ in range(n):
            state, a = splitmix64(state)
            state, b = splitmix64(state)
            x = (a >> s11) * two_m53
            y = (b >> s11) * two_m53
            hits += x * x + y * y <= 1.0
        return 4.0 * hits / n if n else math.nan

    @njit
    def mandelbrot(out, row_start, row_stop, xmin, xmax, ymin, ymax, max_iter):
        height, width = out.shape
        dx = (xmax - xmin) / width
        dy = (ymax - ymin) / height
        for r in range(row_start, row_stop):
            y = ymin + r * dy
            for c in range(width):
                cr = xmin + c * dx
                zr = 0.0
                zi = 0.0
                it = 0
                while it < max_iter:
                    zr2 = zr * zr
                    zi2 = zi * zi
                    if zr2 + zi2 > 4.0:
                        break
                    zi = 2.0 * zr * zi + y
                    zr = zr2 - zi2 + cr
                    it += 1
                out[r, c] = it

    impls = {"count_primes": count_primes, "monte_carlo_pi": monte_carlo_pi,
             "mandelbrot": mandelbrot}
    return impls, f"numba {numba.__version__} @njit(nogil=True)"


# ---------------------------------------------------------------------------
# The kernels, their inputs, and how a run splits into equal shares
# ---------------------------------------------------------------------------
# Full-run inputs are chosen so that C takes roughly 50 ms on a ~2.5 GHz core.
FULL = {
    "count_primes": dict(lo=10**9, width=5_000),
    "monte_carlo_pi": dict(n=12_000_000, seed=0),
    "mandelbrot": dict(height=400, width=600, max_iter=250),
}
QUICK = {
    "count_primes": dict(lo=10**9, width=2_000),
    "monte_carlo_pi": dict(n=100_000, seed=0),
    "mandelbrot": dict(height=60, width=80, max_iter=100),
}
# The smoke test's sizes (--tiny): each variant runs in milliseconds, python too.
TINY = {
    "count_primes": dict(lo=10**9, width=200),
    "monte_carlo_pi": dict(n=10_000, seed=0),
    "mandelbrot": dict(height=20, width=30, max_iter=50),
}
VIEW = dict(xmin=-2.0, xmax=1.0, ymin=-1.5, ymax=1.5)


def _split(total, parts):
    """Bounds of `parts` contiguous, equal (to within 1) shares of range(total)."""
    return [(total * i // parts, total * (i + 1) // parts) for i in range(parts)]


class CountPrimes:
    name = "count_primes"

    def __init__(self, lo, width):
        self.lo, self.width = lo, width
        self.label = f"count_primes({lo:_}, {lo + width:_})"

    def calls(self, impl, n_threads, scale=1.0):
        # Near 10**9 a narrow range has the same cost per number throughout,
        # so equal sub-ranges are equal work.
        width = max(n_threads, int(self.width * scale))
        return [lambda a=self.lo + a, b=self.lo + b: impl(a, b)
                for a, b in _split(width, n_threads)]

    def result(self, impl):
        return int(impl(self.lo, self.lo + self.width))

    def describe_share(self, scale):
        return f"{max(1, int(self.width * scale)):_} numbers"


class MonteCarloPi:
    name = "monte_carlo_pi"

    def __init__(self, n, seed):
        self.n, self.seed = n, seed
        self.label = f"monte_carlo_pi({n:_}, seed={seed})"

    def calls(self, impl, n_threads, scale=1.0):
        n = max(n_threads, int(self.n * scale))
        # One seed per thread: independent streams, as workers would use.
        return [lambda k=b - a, s=self.seed + i: impl(k, s)
                for i, (a, b) in enumerate(_split(n, n_threads))]

    def result(self, impl):
        return impl(self.n, self.seed)

    def describe_share(self, scale):
        return f"{max(1, int(self.n * scale)):_} samples"


class Mandelbrot:
    name = "mandelbrot"

    def __init__(self, height, width, max_iter):
        self.height, self.width, self.max_iter = height, width, max_iter
        self.label = f"mandelbrot({height}x{width}, max_iter={max_iter})"

    def calls(self, impl, n_threads, scale=1.0):
        # Fewer rows of the same picture when scaled down. With the default
        # view, row r and row height-1-r cost the same, so 2 halves balance.
        height = max(n_threads, int(self.height * scale))
        out = np.zeros((height, self.width), dtype=np.int32)
        return [lambda a=a, b=b: impl(out, a, b, self.max_iter)
                for a, b in _split(height, n_threads)]

    def result(self, impl):
        out = np.zeros((self.height, self.width), dtype=np.int32)
        impl(out, 0, self.height, self.max_iter)
        return hashlib.sha256(out.tobytes()).hexdigest()[:16]

    def describe_share(self, scale):
        return f"{max(1, int(self.height * scale))} rows"


def implementations(c_libs, nb):
    """kernel name -> {variant name: function}, all with the kernel's signature.

    ``c_libs`` maps a variant name ("C -O3", "C native") to a ctypes library.
    """
    impls = {name: {} for name in FULL}
    for path in kernels.PATHS:
        impls["count_primes"][path] = lambda lo, hi, p=path: kernels.count_primes(lo, hi, path=p)
        impls["monte_carlo_pi"][path] = (
            lambda n, seed, p=path: kernels.monte_carlo_pi(n, seed, path=p))
        impls["mandelbrot"][path] = (
            lambda out, a, b, it, p=path: kernels.mandelbrot(out, a, b, max_iter=it, path=p,
                                                             **VIEW))
    for variant, lib in c_libs.items():
        impls["count_primes"][variant] = lib.count_primes
        impls["monte_carlo_pi"][variant] = (
            lambda n, seed, lib=lib: lib.monte_carlo_pi(n, seed & 0xFFFFFFFFFFFFFFFF))
        impls["mandelbrot"][variant] = lambda out, a, b, it, lib=lib: lib.mandelbrot(
            out.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)), out.shape[0], out.shape[1],
            a, b, VIEW["xmin"], VIEW["xmax"], VIEW["ymin"], VIEW["ymax"], it)
    if nb is not None:
        impls["count_primes"]["numba"] = nb["count_primes"]
        impls["monte_carlo_pi"]["numba"] = (
            lambda n, seed: nb["monte_carlo_pi"](n, np.uint64(seed & 0xFFFFFFFFFFFFFFFF)))
        impls["mandelbrot"]["numba"] = lambda out, a, b, it: nb["mandelbrot"](
            out, a, b, VIEW["xmin"], VIEW["xmax"], VIEW["ymin"], VIEW["ymax"], it)
    # Order of the rows in the tables: references first, then the paths.
    order = ["C -O3", "C native", "numba", "nogil", "gil", "python"]
    return {k: {v: d[v] for v in order if v in d} for k, d in impls.items()}


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------
def run_in_threads(calls):
    """Wall time of running each call in its own thread, all started at once."""
    barrier = threading.Barrier(len(calls) + 1)
    errors = []

    def worker(call):
        barrier.wait()
        try:
            call()
        except BaseException as exc:                # re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    barrier.wait()                  # thread start-up is not part of the timing
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    took = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return took


def time_once(call):
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


def alternate(jobs, repeats):
    """Time jobs (name -> zero-arg timer) in rounds, in alternation.

    ``repeats`` maps name -> how many runs it gets; a job with fewer runs
    takes part in the first rounds only. Returns name -> list of seconds.
    """
    samples = {name: [] for name in jobs}
    for rnd in range(max(repeats.values())):
        for name, timer in jobs.items():
            if rnd < repeats[name]:
                samples[name].append(timer())
    return samples


def fmt_time(seconds):
    """3 significant digits in s, ms or us."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            break
    value = seconds / scale
    digits = max(0, 2 - int(math.floor(math.log10(value)))) if value > 0 else 0
    return f"{value:.{digits}f} {unit}"


def warm_up(benches, impls, seconds):
    """Run every variant on small inputs until `seconds` have passed; discard all."""
    small = {b.name: b for b in make_benches(QUICK)}
    deadline = time.perf_counter() + seconds
    rounds = 0
    while time.perf_counter() < deadline:
        for name in small:
            for impl in impls[name].values():
                small[name].calls(impl, 1)[0]()
        rounds += 1
    return rounds


def _load():
    """The 1-minute load average, or "n/a" where the OS does not tell."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except (AttributeError, OSError):
        return "n/a"


def make_benches(sizes):
    return [CountPrimes(**sizes["count_primes"]), MonteCarloPi(**sizes["monte_carlo_pi"]),
            Mandelbrot(**sizes["mandelbrot"])]


# ---------------------------------------------------------------------------
# The group: rows for python -m benchmarks; main() prints them
# ---------------------------------------------------------------------------
#: Why numba is left out of a --tiny pass: compiling its four functions takes seconds.
TINY_NUMBA = "--tiny leaves numba out (its JIT compile takes seconds)"


def _single_thread_rows(bench, variants, samples, skipped_refs):
    """Table 1 for one kernel: each variant alone, ratios to C -O3, the nogil goal."""
    table = f"1 thread: {bench.label}"
    rows = []
    med = {v: statistics.median(s) for v, s in samples.items()}
    low = {v: min(s) for v, s in samples.items()}
    for v, s in samples.items():
        row = {"table": table, "tool": v, "min": low[v], "median": med[v],
               "extra": {"runs": str(len(s))}}
        if v == "C -O3":
            row["reference"] = True
        if v == "nogil":
            parts = [f"<= {GOAL_VS_C}x C -O3", "no slower than numba"]
            met, verdicts = [], []
            if "C -O3" not in med:
                verdicts.append("vs C -O3: not judged (C -O3 not built)")
            else:
                m, words = _results.judge(med[v] / med["C -O3"], GOAL_VS_C,
                                          lambda r: f"{r:.2f}x",
                                          value_min=low[v] / low["C -O3"])
                met.append(m)
                verdicts.append(f"vs C -O3 {med[v] / med['C -O3']:.2f}x: {words}")
            if "numba" in med:
                m, words = _results.judge(med[v] / med["numba"], 1.0, lambda r: f"{r:.2f}x",
                                          value_min=low[v] / low["numba"])
                met.append(m)
                verdicts.append(f"vs numba {med[v] / med['numba']:.2f}x: {words}")
            else:
                verdicts.append("vs numba: not judged (numba not measured)")
            row["goal"] = " and ".join(parts)
            # Missed if either part is missed; met only if both were judged and met.
            row["met"] = False if False in met else (True if met == [True, True] else None)
            row["verdict"] = "; ".join(verdicts)
        rows.append(row)
    rows += [_results.skipped(table, name, reason) for name, reason in skipped_refs]
    return rows


def _speedup_rows(bench, variants, samples, n_threads, notes, skipped_refs):
    """Table 2 for one kernel: 1 thread vs n_threads, same total work."""
    table = f"Speedup, 1 vs {n_threads} threads: {bench.label}"
    rows = []
    speedups = {}
    for v in variants:
        one, many = statistics.median(samples[(v, 1)]), statistics.median(samples[(v, n_threads)])
        best = min(samples[(v, 1)]) / min(samples[(v, n_threads)])
        speed = speedups[v] = one / many
        verdict = ("no gain (within noise)" if abs(speed - 1.0) < NOISE else
                   "slower" if speed < 1.0 else "gains")
        rows.append({"table": table, "tool": v, "min": best, "median": speed, "unit": "x",
                     "better": "higher", "ratio": None,
                     "extra": {"1 thread (median)": fmt_time(one),
                               f"{n_threads} threads (median)": fmt_time(many),
                               "reading": verdict},
                     **({"note": notes[v]} if v in notes else {})})
    rows += [_results.skipped(table, name, reason) for name, reason in skipped_refs]
    # A machine check, not a kernel one: C and numba hold no GIL here, so
    # if they cannot gain either, the other CPUs were not free for us.
    free = [v for v in ("C -O3", "numba") if v in speedups]
    if n_threads > 1 and free and max(speedups[v] for v in free) < 1 + NOISE:
        rows.append(_results.text(
            f"Even {' and '.join(free)}, which hold no GIL, gained no more than "
            f"{max(speedups[v] for v in free):.2f}x: the other CPUs were busy (load average "
            f"now {_load()}). These speedups measure this machine's load, not the GIL: "
            f"rerun on an idle machine.", table))
    return rows


def run(quick=False, tiny=False):
    """Both kernel tables as rows (see benchmarks/_results.py)."""
    quick = quick or tiny
    sizes = TINY if tiny else QUICK if quick else FULL
    repeats_compiled, repeats_python = (2, 1) if tiny else (3, 1) if quick else (11, 3)
    n_threads = os.cpu_count() or 1

    c_lib, c_note = build_c(C_FLAGS)
    c_native, c_native_note = build_c(C_NATIVE_FLAGS)
    c_libs = {name: lib for name, lib in (("C -O3", c_lib), ("C native", c_native)) if lib}
    if tiny:
        import importlib.util
        nb = None
        try:
            found = importlib.util.find_spec("numba") is not None
        except ImportError:
            found = False
        nb_note = f"skipped: {TINY_NUMBA}" if found else "skipped: numba not installed"
    else:
        nb, nb_note = build_numba()
    skipped_refs = [(name, note.split(":", 1)[1].strip().splitlines()[0])
                    for name, lib, note in (("C -O3", c_lib, c_note),
                                            ("C native", c_native, c_native_note),
                                            ("numba", nb, nb_note)) if lib is None]
    impls = implementations(c_libs, nb)
    benches = make_benches(sizes)

    rows = [_results.text(
        f"Each kernel's three paths beside the same algorithm in plain C ({c_note}; "
        f"'C native' adds -march=native, as numba compiles for the host CPU) and in "
        f"numba ({nb_note}). concmagic's gil/nogil paths are built by setup.py with -O3 "
        f"-ffp-contract=off for baseline x86-64. The C reference divides in 64 bits; "
        f"concmagic's compiled count_primes (and LLVM, so numba) switch to 32-bit division "
        f"below 2**32, so there 'C -O3' is expected to be the slower. "
        f"{repeats_compiled} runs per compiled variant, {repeats_python} for the python "
        f"path, alternating. Load average at start: {_load()}.")]

    # Every variant must compute the same thing, or the timings compare nothing.
    for bench in benches:
        results = {v: bench.result(f) for v, f in impls[bench.name].items()}
        if len(set(map(repr, results.values()))) != 1:
            raise RuntimeError(f"{bench.label}: variants disagree: {results}")
    rows.append(_results.text("Results: identical across all variants (checked before "
                              "timing)."))

    if not quick:
        t0 = time.perf_counter()
        rounds = warm_up(benches, impls, WARMUP_SECONDS)
        rows.append(_results.text(f"Warm-up: {time.perf_counter() - t0:.1f} s ({rounds} "
                                  f"rounds of every variant), not reported."))

    # 1. Single thread, side by side with C
    for bench in benches:
        variants = impls[bench.name]
        jobs = {v: (lambda c=bench.calls(f, 1)[0]: time_once(c)) for v, f in variants.items()}
        reps = {v: repeats_python if v == "python" else repeats_compiled for v in variants}
        samples = alternate(jobs, reps)
        rows += _single_thread_rows(bench, variants, samples, skipped_refs)

    # 2. Threads: 1 vs n_threads
    for bench in benches:
        variants = impls[bench.name]
        # The python path does the same work in 1 and N threads, but less of
        # it than the others, so that the table finishes: the speedup is a
        # ratio within one variant, so its size does not matter.
        py_scale = 1.0
        if "python" in variants and not quick:
            py_one = time_once(bench.calls(variants["python"], 1, 1.0)[0])
            py_scale = min(1.0, 1.5 / py_one)
        jobs, reps, notes = {}, {}, {}
        for v, f in variants.items():
            scale = py_scale if v == "python" else 1.0
            for k in (1, n_threads):
                jobs[(v, k)] = lambda f=f, k=k, s=scale: run_in_threads(bench.calls(f, k, s))
                reps[(v, k)] = repeats_python if v == "python" else repeats_compiled
            if scale != 1.0:
                notes[v] = f"on {bench.describe_share(scale)}, {scale:.2g} of the input"
        samples = alternate(jobs, reps)
        rows += _speedup_rows(bench, variants, samples, n_threads, notes, skipped_refs)
    rows.append(_results.text(
        f"Speedup tables: each variant run by 1 thread, then by {n_threads} threads "
        f"(os.cpu_count()) each doing an equal share of the same total work; the median "
        f"column is 1-thread median / {n_threads}-thread median, the min column the same "
        f"of the mins. gil and nogil run the same machine code, so alone they are equally "
        f"fast; only nogil (and C via ctypes, and numba with nogil=True) let threads run "
        f"at once. The python path holds the GIL between bytecodes, so its threads take "
        f"turns.", f"Speedup, 1 vs {n_threads} threads: {benches[0].label}", before=True))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="small inputs, few runs, no warm-up (a smoke test, not a measurement)")
    parser.add_argument("--tiny", action="store_true",
                        help="smaller still, and no numba (the smoke test's pass)")
    args = parser.parse_args(argv)
    n_threads = os.cpu_count() or 1
    print(f"concmagic kernels benchmark"
          f"{' (--quick: not a measurement)' if args.quick or args.tiny else ''}")
    print(f"Python {platform.python_version()} on {platform.machine()}, {n_threads} logical CPUs")
    print()
    _results.print_rows(run(args.quick, args.tiny))
    return 0


if __name__ == "__main__":
    sys.exit(main())
