"""Tests for concmagic.kernels: three paths, one answer; cancel; the GIL.

Every kernel is checked three ways:
- the paths in ``kernels.PATHS`` agree with each other and with a reference
  written here, independently of the package (a sieve, splitmix64, a NumPy
  escape-time loop), bit for bit where the kernel returns floats;
- bad input fails early, with a message that names the argument;
- ``cancel()`` stops a running kernel of every path, and the GIL is held or
  released exactly as each path promises (measured by a counter thread, not
  by timing the kernels: speed claims live in benchmarks/).
"""
import math
import signal
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from concmagic import _core, kernels
from concmagic.kernels import PATHS, KernelCancelled

# Hypothesis examples run the pure-Python path too, so sizes stay small and
# there is no per-example deadline (the shared CI machine is noisy).
FAST = settings(max_examples=40, deadline=None)

needs_gil = pytest.mark.skipif(
    not getattr(sys, "_is_gil_enabled", lambda: True)(),
    reason="free-threaded build: the gil path does not freeze other threads")


def test_paths_are_the_documented_ones():
    assert PATHS == ("python", "gil", "nogil")
    assert set(kernels.KERNELS) == {"count_primes", "monte_carlo_pi", "mandelbrot", "io_wait"}


# ---------------------------------------------------------------------------
# Independent references
# ---------------------------------------------------------------------------
def ref_count_primes(lo, hi):
    """Primes in [lo, hi) by a segmented sieve of Eratosthenes (no trial division)."""
    lo = max(lo, 2)
    if hi <= lo:
        return 0
    root = math.isqrt(hi - 1)
    small = bytearray([1]) * (root + 1)        # hi >= 3 here, so root >= 1
    small[0] = small[1] = 0
    for p in range(2, math.isqrt(root) + 1):
        if small[p]:
            small[p * p::p] = bytes(len(range(p * p, root + 1, p)))
    segment = bytearray([1]) * (hi - lo)
    for p in range(2, root + 1):
        if small[p]:
            first = max(p * p, -(-lo // p) * p)
            segment[first - lo::p] = bytes(len(range(first - lo, hi - lo, p)))
    return sum(segment)


M64 = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15


def ref_splitmix64(state):
    """(next state, output) of splitmix64, following Steele, Lea & Flood (2014)."""
    state = (state + GAMMA) & M64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return state, z ^ (z >> 31)


def ref_seed_state(seed):
    return ref_splitmix64(seed & M64)[1]


def ref_monte_carlo_pi(n, seed):
    """Same generator and same double arithmetic as the documented kernel."""
    state = ref_seed_state(seed)
    hits = 0
    for _ in range(n):
        state, a = ref_splitmix64(state)
        state, b = ref_splitmix64(state)
        x = (a >> 11) / 2.0**53       # exact: a 53-bit integer times a power of 2
        y = (b >> 11) / 2.0**53
        hits += x * x + y * y <= 1.0
    return 4.0 * hits / n if n else math.nan


def ref_mandelbrot(height, width, xmin, xmax, ymin, ymax, max_iter):
    """Escape-time counts of the whole grid, vectorised over points with NumPy.

    Same coordinates (x = xmin + c*dx, y = ymin + r*dy) and the same order of
    floating-point operations as the kernels, so results are bit-identical.
    """
    dx = (xmax - xmin) / width
    dy = (ymax - ymin) / height
    cr = np.broadcast_to(xmin + np.arange(width, dtype=np.float64) * dx, (height, width))
    ci = np.broadcast_to((ymin + np.arange(height, dtype=np.float64) * dy)[:, None],
                         (height, width))
    zr = np.zeros((height, width))
    zi = np.zeros((height, width))
    counts = np.zeros((height, width), dtype=np.int32)
    active = np.ones((height, width), dtype=bool)
    for _ in range(max_iter):
        zr2 = zr * zr
        zi2 = zi * zi
        active &= ~(zr2 + zi2 > 4.0)
        if not active.any():
            break
        # Escaped points keep their last z (|z| <= ~6), so nothing overflows.
        new_zi = 2.0 * zr * zi + ci
        new_zr = zr2 - zi2 + cr
        zi = np.where(active, new_zi, zi)
        zr = np.where(active, new_zr, zr)
        counts += active
    return counts


def test_references_know_their_answers():
    # The references are only worth something if they are right themselves.
    assert ref_count_primes(0, 100) == 25
    assert ref_count_primes(0, 10**5) == 9592
    assert ref_count_primes(2**32 - 5, 2**32 + 16) == 2      # 4294967291, 4294967311
    # First splitmix64 output for state 0 (published test vector).
    assert ref_splitmix64(0)[1] == 0xE220A8397B1DCDAF
    # c = 0 never escapes; c = 1 escapes after 0,1,2,5: the 3rd update.
    grid = ref_mandelbrot(1, 2, 0.0, 2.0, 0.0, 1.0, 50)
    assert grid.tolist() == [[50, 3]]


# ---------------------------------------------------------------------------
# count_primes
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("path", PATHS)
@FAST
@given(lo=st.integers(0, 3000), hi=st.integers(0, 3000))
def test_count_primes_small_ranges(path, lo, hi):
    assert kernels.count_primes(lo, hi, path=path) == ref_count_primes(lo, hi)


@pytest.mark.parametrize("path", ["gil", "nogil"])
@FAST
@given(lo=st.integers(0, 10**10), width=st.integers(0, 3000))
def test_count_primes_anywhere_compiled(path, lo, width):
    assert kernels.count_primes(lo, lo + width, path=path) == ref_count_primes(lo, lo + width)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("lo, hi", [
    (2**32 - 500, 2**32 + 500),          # across the nogil path's 32/64-bit switch
    (4294967291, 4294967292),            # largest 32-bit prime: e*e must not wrap
    (65521**2, 65521**2 + 1),            # square of a prime, just below 2**32
    (65537**2, 65537**2 + 1),            # square of a prime, just above 2**32
    (1000003**2 - 2, 1000003**2 + 3),    # square of a prime near 10**12
])
def test_count_primes_hard_spots(path, lo, hi):
    assert kernels.count_primes(lo, hi, path=path) == ref_count_primes(lo, hi)


@pytest.mark.parametrize("path", PATHS)
def test_count_primes_paths_identical_on_a_bigger_range(path):
    # pi(10**5) = 9592 is the textbook value; the sieve must agree too.
    assert kernels.count_primes(0, 10**5, path=path) == ref_count_primes(0, 10**5) == 9592
    assert kernels.count_primes(10**6, 10**6 + 20000, path=path) == ref_count_primes(
        10**6, 10**6 + 20000)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("lo, hi", [(7, 7), (0, 0), (100, 3), (2**63, 2**63), (2**63, 0)])
def test_count_primes_empty_range_is_zero(path, lo, hi):
    assert kernels.count_primes(lo, hi, path=path) == 0


# ---------------------------------------------------------------------------
# monte_carlo_pi
# ---------------------------------------------------------------------------
def test_seed_state_matches_reference():
    for seed in (0, 1, 2, 12345, -1, 2**64 + 5, -(2**70)):
        assert _core.seed_state(seed) == ref_seed_state(seed), seed


@pytest.mark.parametrize("path", PATHS)
@FAST
@given(n=st.integers(1, 2000), seed=st.integers(-(2**70), 2**70))
def test_monte_carlo_pi_matches_reference_bit_for_bit(path, n, seed):
    assert kernels.monte_carlo_pi(n, seed, path=path) == ref_monte_carlo_pi(n, seed)


@pytest.mark.parametrize("path", PATHS)
def test_monte_carlo_pi_across_chunks(path):
    # 200_003 samples cross the compiled paths' 65536-sample chunk boundary
    # three times; the stream must carry on across chunks unchanged.
    assert kernels.monte_carlo_pi(200_003, 7, path=path) == ref_monte_carlo_pi(200_003, 7)


def test_monte_carlo_pi_large_n_compiled_paths_agree_and_are_sane():
    n = 4_000_000
    gil = kernels.monte_carlo_pi(n, 11, path="gil")
    nogil = kernels.monte_carlo_pi(n, 11, path="nogil")
    assert gil == nogil
    # The std dev of the estimate is 4*sqrt(p(1-p)/n) ~ 0.0008: 0.005 is > 6 sigma.
    assert abs(gil - math.pi) < 0.005, gil


@pytest.mark.parametrize("path", PATHS)
def test_monte_carlo_pi_zero_samples_is_nan(path):
    assert math.isnan(kernels.monte_carlo_pi(0, path=path))


@pytest.mark.parametrize("path", PATHS)
def test_monte_carlo_pi_seeds(path):
    n = 20_000 if path == "python" else 200_000
    estimates = [kernels.monte_carlo_pi(n, seed=w, path=path) for w in range(6)]
    # Per-worker seeds give different estimates ...
    assert len(set(estimates)) == len(estimates), estimates
    # ... and a seed gives the same value every time.
    assert kernels.monte_carlo_pi(n, seed=3, path=path) == estimates[3]
    # The default seed is 0.
    assert kernels.monte_carlo_pi(n, path=path) == estimates[0]


def test_worker_seeds_start_far_apart_in_the_sequence():
    # splitmix64 walks state -> state + GAMMA. Two seeds give overlapping
    # streams when their starting states are few steps apart on that walk.
    # Steps from state a to state b: (b - a) * GAMMA**-1 (mod 2**64).
    inv_gamma = pow(GAMMA, -1, 1 << 64)
    starts = [_core.seed_state(s) for s in range(64)]
    closest = min(
        min(d, (1 << 64) - d)
        for i, a in enumerate(starts) for b in starts[i + 1:]
        for d in [((b - a) * inv_gamma) & M64])
    # Each of 64 workers could draw 2**40 numbers without meeting another.
    assert closest > 2**40, f"two seeds start only {closest} steps apart"


# ---------------------------------------------------------------------------
# mandelbrot
# ---------------------------------------------------------------------------
SENTINEL = -7       # never an escape count: shows which rows a call wrote

coords = st.floats(-2.5, 2.5, allow_nan=False, allow_infinity=False)


@pytest.mark.parametrize("path", PATHS)
@FAST
@given(data=st.data(), height=st.integers(1, 6), width=st.integers(0, 8),
       xmin=coords, xmax=coords, ymin=coords, ymax=coords, max_iter=st.integers(0, 64))
def test_mandelbrot_matches_numpy_reference(path, data, height, width,
                                            xmin, xmax, ymin, ymax, max_iter):
    row_start = data.draw(st.integers(0, height), label="row_start")
    row_stop = data.draw(st.integers(row_start, height), label="row_stop")
    out = np.full((height, width), SENTINEL, dtype=np.int32)
    got = kernels.mandelbrot(out, row_start, row_stop, xmin=xmin, xmax=xmax, ymin=ymin,
                             ymax=ymax, max_iter=max_iter, path=path)
    assert got is out
    expected = np.full((height, width), SENTINEL, dtype=np.int32)
    if width:
        expected[row_start:row_stop] = ref_mandelbrot(
            height, width, xmin, xmax, ymin, ymax, max_iter)[row_start:row_stop]
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("path", PATHS)
def test_mandelbrot_default_view(path):
    out = np.full((48, 64), SENTINEL, dtype=np.int32)
    kernels.mandelbrot(out, max_iter=200, path=path)
    expected = ref_mandelbrot(48, 64, -2.0, 1.0, -1.5, 1.5, 200)
    np.testing.assert_array_equal(out, expected)
    assert out.min() >= 1 and out.max() == 200      # a real picture, not a constant


@pytest.mark.parametrize("path", PATHS)
def test_mandelbrot_one_row(path):
    out = np.full((1, 40), SENTINEL, dtype=np.int32)
    kernels.mandelbrot(out, max_iter=80, path=path)
    np.testing.assert_array_equal(out, ref_mandelbrot(1, 40, -2.0, 1.0, -1.5, 1.5, 80))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", [(3, 0), (0, 5), (0, 0)])
def test_mandelbrot_empty_array(path, shape):
    out = np.empty(shape, dtype=np.int32)
    assert kernels.mandelbrot(out, path=path) is out


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("row", [0, 2, 4])
def test_mandelbrot_empty_row_range_writes_nothing(path, row):
    out = np.full((4, 5), SENTINEL, dtype=np.int32)
    kernels.mandelbrot(out, row, row, path=path)
    assert (out == SENTINEL).all()


def test_mandelbrot_nogil_threads_fill_disjoint_rows_of_one_array():
    # The docstring's promise: workers writing disjoint rows share one array
    # with no lock. Start them together so the writes really overlap in time.
    out = np.full((64, 96), SENTINEL, dtype=np.int32)
    n = 4
    barrier = threading.Barrier(n)
    errors = []

    def worker(w):
        try:
            barrier.wait()
            kernels.mandelbrot(out, w * 16, (w + 1) * 16, max_iter=300, path="nogil")
        except BaseException as exc:            # reported below, with the worker id
            errors.append((w, exc))

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    np.testing.assert_array_equal(out, ref_mandelbrot(64, 96, -2.0, 1.0, -1.5, 1.5, 300))


# ---------------------------------------------------------------------------
# io_wait
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("seconds", [0, 0.0, 0.05, 1e-4])
def test_io_wait_waits_at_least_as_long_as_asked(path, seconds):
    t0 = time.monotonic()
    assert kernels.io_wait(seconds, path=path) is None
    elapsed = time.monotonic() - t0
    assert elapsed >= seconds
    assert elapsed < seconds + 2.0          # it does stop (not a speed claim)


# ---------------------------------------------------------------------------
# Bad input: the error names the argument
# ---------------------------------------------------------------------------
def _grid(shape=(4, 6), dtype=np.int32):
    return np.zeros(shape, dtype=dtype)


def _read_only():
    a = _grid()
    a.flags.writeable = False
    return a


BAD_CALLS = [
    # count_primes
    (lambda p: kernels.count_primes("3", 10, path=p), TypeError, "lo must be an int"),
    (lambda p: kernels.count_primes(3.0, 10, path=p), TypeError, "lo must be an int"),
    (lambda p: kernels.count_primes(True, 10, path=p), TypeError, "lo must be an int"),
    (lambda p: kernels.count_primes(3, None, path=p), TypeError, "hi must be an int"),
    (lambda p: kernels.count_primes(-1, 10, path=p), ValueError, "lo must be in"),
    (lambda p: kernels.count_primes(0, 2**63 + 1, path=p), ValueError, "hi must be in"),
    # monte_carlo_pi
    (lambda p: kernels.monte_carlo_pi(10.0, path=p), TypeError, "n must be an int"),
    (lambda p: kernels.monte_carlo_pi(-1, path=p), ValueError, "n must be in"),
    (lambda p: kernels.monte_carlo_pi(2**63, path=p), ValueError, "n must be in"),
    (lambda p: kernels.monte_carlo_pi(10, seed=1.5, path=p), TypeError, "seed must be an int"),
    (lambda p: kernels.monte_carlo_pi(10, seed="0", path=p), TypeError, "seed must be an int"),
    # mandelbrot: the array
    (lambda p: kernels.mandelbrot([[0, 0]], path=p), TypeError, "out must be a numpy.ndarray"),
    (lambda p: kernels.mandelbrot(_grid((6,)), path=p), ValueError, "out must be 2-D"),
    (lambda p: kernels.mandelbrot(_grid((2, 2, 2)), path=p), ValueError, "out must be 2-D"),
    (lambda p: kernels.mandelbrot(_grid(dtype=np.int64), path=p), TypeError,
     "out must have dtype int32"),
    (lambda p: kernels.mandelbrot(_grid(dtype=np.float64), path=p), TypeError,
     "out must have dtype int32"),
    (lambda p: kernels.mandelbrot(_grid()[:, ::2], path=p), ValueError,
     "out must be C-contiguous"),
    (lambda p: kernels.mandelbrot(np.asfortranarray(_grid()), path=p), ValueError,
     "out must be C-contiguous"),
    (lambda p: kernels.mandelbrot(_read_only(), path=p), ValueError, "out must be writeable"),
    # mandelbrot: rows, bounds, iterations
    (lambda p: kernels.mandelbrot(_grid(), -1, path=p), ValueError, "row_start must be in"),
    (lambda p: kernels.mandelbrot(_grid(), 5, path=p), ValueError, "row_start must be in"),
    (lambda p: kernels.mandelbrot(_grid(), 1.0, path=p), TypeError, "row_start must be an int"),
    (lambda p: kernels.mandelbrot(_grid(), 3, 2, path=p), ValueError, "row_stop must be in"),
    (lambda p: kernels.mandelbrot(_grid(), 0, 5, path=p), ValueError, "row_stop must be in"),
    (lambda p: kernels.mandelbrot(_grid(), max_iter=-1, path=p), ValueError,
     "max_iter must be in"),
    (lambda p: kernels.mandelbrot(_grid(), max_iter=2**31, path=p), ValueError,
     "max_iter must be in"),
    (lambda p: kernels.mandelbrot(_grid(), max_iter=10.0, path=p), TypeError,
     "max_iter must be an int"),
    (lambda p: kernels.mandelbrot(_grid(), xmin=None, path=p), TypeError,
     "xmin must be a real number"),
    (lambda p: kernels.mandelbrot(_grid(), ymax="1", path=p), TypeError,
     "ymax must be a real number"),
    (lambda p: kernels.mandelbrot(_grid(), xmax=math.nan, path=p), ValueError,
     "xmin, xmax, ymin, ymax must be finite"),
    (lambda p: kernels.mandelbrot(_grid(), ymin=-math.inf, path=p), ValueError,
     "xmin, xmax, ymin, ymax must be finite"),
    # io_wait
    (lambda p: kernels.io_wait("1", path=p), TypeError, "seconds must be a number"),
    (lambda p: kernels.io_wait(True, path=p), TypeError, "seconds must be a number"),
    (lambda p: kernels.io_wait(-0.5, path=p), ValueError, "seconds must be finite and >= 0"),
    (lambda p: kernels.io_wait(math.nan, path=p), ValueError, "seconds must be finite"),
    (lambda p: kernels.io_wait(math.inf, path=p), ValueError, "seconds must be finite"),
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("call, exc, match", BAD_CALLS,
                         ids=[f"{i}-{m.split()[0]}" for i, (_, _, m) in enumerate(BAD_CALLS)])
def test_bad_input_names_the_argument(path, call, exc, match):
    with pytest.raises(exc, match=match):
        call(path)


@pytest.mark.parametrize("name", sorted(kernels.KERNELS))
@pytest.mark.parametrize("bad_path", ["fast", "NOGIL", None, ""])
def test_unknown_path_lists_the_paths(name, bad_path):
    args = {"count_primes": (0, 10), "monte_carlo_pi": (10,),
            "mandelbrot": (_grid(),), "io_wait": (0,)}[name]
    with pytest.raises(ValueError, match=r"path must be one of 'python', 'gil', 'nogil'; got "):
        kernels.KERNELS[name](*args, path=bad_path)


def test_read_only_array_is_left_alone():
    a = _read_only()
    with pytest.raises(ValueError):
        kernels.mandelbrot(a, path="nogil")
    assert not a.any()


# ---------------------------------------------------------------------------
# Long runs, sized at test time, for the cancel and GIL tests
# ---------------------------------------------------------------------------
# Each `make_*(path, size)` returns (run, finished): `run()` does work that
# grows with `size`; `finished()` says whether it got to the end.
PRIME_BASE = 10**9          # ~0.1 ms per prime compiled: cancel checks stay frequent
# A window inside the main cardioid: every point runs all max_iter steps, so
# every row costs the same.
DEEP = dict(xmin=-0.3, xmax=0.1, ymin=-0.2, ymax=0.2)


def make_count_primes(path, size):
    box = {}

    def run():
        box["result"] = kernels.count_primes(PRIME_BASE, PRIME_BASE + size, path=path)
    return run, lambda: "result" in box


def make_monte_carlo_pi(path, size):
    box = {}

    def run():
        box["result"] = kernels.monte_carlo_pi(size, seed=1, path=path)
    return run, lambda: "result" in box


def make_mandelbrot(path, size):
    # max_iter is lower in pure Python so that one row (the cancel check
    # interval there) stays around 10 ms.
    max_iter = 1000 if path == "python" else 20000
    out = np.full((size, 32), SENTINEL, dtype=np.int32)

    def run():
        kernels.mandelbrot(out, max_iter=max_iter, path=path, **DEEP)
    return run, lambda: out[-1, -1] != SENTINEL


LONG_WORK = {
    "count_primes": make_count_primes,
    "monte_carlo_pi": make_monte_carlo_pi,
    "mandelbrot": make_mandelbrot,
}


def size_for(make, path, seconds):
    """The size at which make(path, size) runs about `seconds` on this machine."""
    size = 1
    while True:
        run, _ = make(path, size)
        t0 = time.perf_counter()
        run()
        took = time.perf_counter() - t0
        if took >= 0.03:
            return max(1, int(size * seconds / took))
        size *= 2 if took < 0.003 else 4


# If cancel() were broken, a test would wait for the whole run: keep that
# finite (a failure, not a hang) but far longer than the 0.2 s before cancel.
UNCANCELLED_SECONDS = 4.0
CANCEL_AFTER = 0.2
CANCEL_BOUND = 3.0


def long_run(kernel, path):
    if kernel == "io_wait":
        box = {}

        def run():
            box["result"] = kernels.io_wait(UNCANCELLED_SECONDS, path=path)
        return run, lambda: "result" in box
    make = LONG_WORK[kernel]
    return make(path, size_for(make, path, UNCANCELLED_SECONDS))


# ---------------------------------------------------------------------------
# cancel()
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("kernel", sorted(kernels.KERNELS))
@pytest.mark.parametrize("path", ["nogil", "python"])
def test_cancel_from_another_thread(kernel, path):
    # The kernel runs in a thread; the main thread cancels it. This works for
    # paths that let other threads run: nogil always, python between bytecodes.
    run, finished = long_run(kernel, path)
    started = threading.Event()
    outcome = {}

    def target():
        started.set()
        t0 = time.monotonic()
        try:
            run()
        except BaseException as exc:
            outcome["exc"] = exc
        outcome["t"] = time.monotonic() - t0

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert started.wait(5)
    time.sleep(CANCEL_AFTER)
    kernels.cancel()
    thread.join(CANCEL_BOUND)
    assert not thread.is_alive(), f"{kernel}[{path}] still running {CANCEL_BOUND} s after cancel()"
    assert isinstance(outcome.get("exc"), KernelCancelled), outcome
    assert kernel in str(outcome["exc"]) and repr(path) in str(outcome["exc"])
    assert not finished(), "the kernel finished its work despite cancel()"
    assert outcome["t"] < CANCEL_AFTER + CANCEL_BOUND


@pytest.mark.parametrize("kernel", sorted(kernels.KERNELS))
def test_cancel_gil_path_from_signal_handler(kernel):
    # The gil path freezes every other Python thread, so nobody could call
    # cancel() from one. It runs signal handlers between chunks instead: a
    # SIGALRM handler cancels it, as a Ctrl-C handler or a timeout would.
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers run on the main thread only")
    run, finished = long_run(kernel, "gil")
    fired = []

    def on_alarm(signum, frame):
        fired.append(time.monotonic())
        kernels.cancel()

    old = signal.signal(signal.SIGALRM, on_alarm)
    try:
        t0 = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, CANCEL_AFTER)
        with pytest.raises(KernelCancelled, match=rf"{kernel}\(path='gil'\)"):
            run()
        took = time.monotonic() - t0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert fired, "the alarm never went off"
    assert took < CANCEL_AFTER + CANCEL_BOUND, took
    assert not finished()


@pytest.mark.parametrize("path", PATHS)
def test_kernels_started_after_cancel_run_normally(path):
    kernels.cancel()
    kernels.cancel()
    # Nothing needs resetting: each kernel compares with the epoch it saw at start.
    assert kernels.count_primes(0, 5000, path=path) == ref_count_primes(0, 5000)
    assert kernels.monte_carlo_pi(300, 5, path=path) == ref_monte_carlo_pi(300, 5)
    out = np.full((8, 8), SENTINEL, dtype=np.int32)
    kernels.mandelbrot(out, max_iter=30, path=path)
    np.testing.assert_array_equal(out, ref_mandelbrot(8, 8, -2.0, 1.0, -1.5, 1.5, 30))
    assert kernels.io_wait(0.02, path=path) is None


# ---------------------------------------------------------------------------
# The GIL, seen from another thread
# ---------------------------------------------------------------------------
class Counter:
    """A thread that increments a counter as fast as Python lets it.

    It can only count while it holds the GIL, so its rate while the main
    thread runs a kernel shows whether that kernel let go of the GIL.
    """

    def __init__(self):
        self.count = 0
        self._running = True
        self._thread = threading.Thread(target=self._spin, daemon=True)

    def _spin(self):
        while self._running:
            self.count += 1

    def __enter__(self):
        self._thread.start()
        while self.count < 1000:            # really spinning before we measure
            time.sleep(0.001)
        return self

    def __exit__(self, *exc):
        self._running = False
        self._thread.join(5)

    def rate_during(self, func):
        """Counts per second while func() runs in the calling thread."""
        c0, t0 = self.count, time.perf_counter()
        func()
        c1, t1 = self.count, time.perf_counter()
        return (c1 - c0) / (t1 - t0)


@needs_gil
def test_count_primes_gil_freezes_other_threads_nogil_does_not():
    # Each path runs ~0.5 s alone (the python path longer beside the counter,
    # as the two take turns on the GIL). Rates, not speeds, are compared.
    runs = {p: make_count_primes(p, size_for(make_count_primes, p, 0.5))[0] for p in PATHS}
    with Counter() as counter:
        rate = {p: counter.rate_during(runs[p]) for p in PATHS}
    msg = ", ".join(f"{p}: {r:,.0f}/s" for p, r in rate.items())
    assert rate["nogil"] > 0, msg
    assert rate["gil"] < 0.2 * rate["nogil"], msg
    # Pure Python hands the GIL over every few ms: the counter gets turns.
    assert rate["python"] > rate["gil"], msg


@needs_gil
def test_io_wait_gil_freezes_other_threads_nogil_does_not():
    with Counter() as counter:
        rate = {p: counter.rate_during(lambda p=p: kernels.io_wait(0.3, path=p)) for p in PATHS}
    msg = ", ".join(f"{p}: {r:,.0f}/s" for p, r in rate.items())
    assert rate["gil"] < 0.2 * rate["nogil"], msg
    # time.sleep releases the GIL too, as well-behaved Python I/O does.
    assert rate["gil"] < 0.2 * rate["python"], msg
