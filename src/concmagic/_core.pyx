# cython: language_level=3
"""The compiled core of concmagic: kernels that can let go of the GIL.

This file is meant to be read. It is the reference example of how a C
extension releases the Global Interpreter Lock, and why that is safe.

Design
------
Every kernel comes in layers, from the inside out:

1. A ``cdef ... noexcept nogil`` function that does the work on C values and
   raw pointers. It touches no Python object, so it may run without the GIL.
   ``noexcept`` says it never raises: Cython then need not take the GIL after
   each call to look for an exception (the GIL is *not* a lock you can forget
   to take; re-taking it is simply expensive).
2. Two thin ``def`` wrappers that check their inputs (with the GIL: raising
   needs it) and then call the inner function in chunks:
   - ``<kernel>_gil``  keeps the GIL the whole time. Other Python threads are
     frozen until it returns. Between chunks it calls PyErr_CheckSignals() so
     that Ctrl-C still works when it runs on the main thread.
   - ``<kernel>_nogil`` runs the chunks inside ``with nogil:``. Other threads
     run Python meanwhile, and other threads calling it run on other cores.
   Both paths run the very same machine code for the work, so one thread is
   no faster with the GIL released: the gain is only in what runs *beside* it.
3. The pure Python path of each kernel lives in ``concmagic/kernels.py``; it
   gives bit-identical results and is the reference the tests check against.

Cancellation: between chunks, every kernel compares a global "cancel epoch"
with the value it read at start; ``cancel()`` bumps the epoch, so every kernel
running at that moment (in any thread of this process) stops within a chunk,
about a millisecond, and raises KernelCancelled once it holds the GIL again.
Kernels started after the call are not affected, so nothing needs resetting.
"""

cimport cython
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, nanosleep, timespec

cdef extern from "Python.h":
    # Runs pending Python signal handlers (main thread only). Needs the GIL.
    int PyErr_CheckSignals() except -1


# ---------------------------------------------------------------------------
# Cancellation: one atomic counter, readable without the GIL
# ---------------------------------------------------------------------------
# The counter is plain C, so a thread inside `with nogil:` can read it with no
# Python call. It is atomic because it is written by one thread and read by
# others at the same time; relaxed ordering suffices, since it guards no data.
cdef extern from *:
    """
    #include <stdatomic.h>
    static atomic_ulong concmagic_cancel_epoch = 0;
    static inline unsigned long cm_epoch(void) {
        return atomic_load_explicit(&concmagic_cancel_epoch, memory_order_relaxed);
    }
    static inline void cm_cancel(void) {
        atomic_fetch_add_explicit(&concmagic_cancel_epoch, 1, memory_order_relaxed);
    }
    """
    unsigned long cm_epoch() noexcept nogil
    void cm_cancel() noexcept nogil


class KernelCancelled(RuntimeError):
    """Raised by a kernel that stopped early because `cancel()` was called."""


def cancel():
    """Stop every kernel running now, in any thread of this process.

    Each one raises KernelCancelled within about a millisecond of work.
    Safe to call from any thread, or from a signal handler.
    """
    cm_cancel()


def cancel_epoch():
    """The current cancel epoch (the pure-Python kernels poll it too)."""
    return cm_epoch()


cdef inline void _raise_if_cancelled(unsigned long epoch, str name, str path) except *:
    if cm_epoch() != epoch:
        raise KernelCancelled(
            f"{name}(path={path!r}) was cancelled by concmagic.kernels.cancel()")


# ---------------------------------------------------------------------------
# count_primes: integer work, trial division
# ---------------------------------------------------------------------------
# Candidates per chunk between cancel checks. Near 1e9 a prime costs ~16k
# divisions (~0.1 ms), so 256 candidates stay within a few milliseconds.
cdef enum:
    PRIMES_CHUNK = 256

@cython.cdivision(True)     # operands are unsigned: C's % is Python's %
cdef inline bint _is_prime(uint64_t n) noexcept nogil:
    """1 if n is prime, by trial division with odd divisors up to sqrt(n)."""
    cdef uint64_t d
    cdef uint32_t m, e
    if n < 2:
        return False
    if n < 4:
        return True
    if n % 2 == 0:
        return False
    if n <= 0xFFFFFFFFu:
        # A 32-bit division costs a fraction of a 64-bit one on x86-64, and
        # gcc will not pick it for us (LLVM, hence numba, does it on its own).
        # The product is taken in 64 bits: e*e overflows 32 bits near 2**32.
        m = <uint32_t>n
        e = 3
        while <uint64_t>e * e <= m:
            if m % e == 0:
                return False
            e += 2
        return True
    d = 3
    while d * d <= n:           # n < 2**63, so d*d cannot overflow here
        if n % d == 0:
            return False
        d += 2
    return True


cdef uint64_t _count_primes(uint64_t lo, uint64_t hi) noexcept nogil:
    """Number of primes p with lo <= p < hi."""
    cdef uint64_t n, count = 0
    for n in range(lo, hi):
        count += _is_prime(n)
    return count


cdef inline uint64_t _checked_bound(object value, str name) except? 0:
    if not isinstance(value, int):
        raise TypeError(f"{name} must be an int; got {type(value).__name__}")
    if value < 0 or value > 2**63:
        raise ValueError(f"{name} must be in [0, 2**63]; got {value}")
    return value


def count_primes_gil(lo, hi):
    """Number of primes in [lo, hi), computed while holding the GIL."""
    cdef uint64_t a = _checked_bound(lo, "lo"), b = _checked_bound(hi, "hi")
    cdef uint64_t stop, total = 0
    cdef unsigned long epoch = cm_epoch()
    while a < b:
        stop = min(b, a + PRIMES_CHUNK)
        total += _count_primes(a, stop)
        a = stop
        PyErr_CheckSignals()                  # lets Ctrl-C in on the main thread
        _raise_if_cancelled(epoch, "count_primes", "gil")
    return total


def count_primes_nogil(lo, hi):
    """Number of primes in [lo, hi), computed with the GIL released."""
    cdef uint64_t a = _checked_bound(lo, "lo"), b = _checked_bound(hi, "hi")
    cdef uint64_t stop, total = 0
    cdef unsigned long epoch = cm_epoch()
    # The GIL may go: from here on only C integers on this thread's stack are
    # touched. Reading a Python int here instead would be a crash waiting to
    # happen, since another thread may free or change it (and Cython refuses
    # to compile it).
    with nogil:
        while a < b and cm_epoch() == epoch:
            stop = min(b, a + PRIMES_CHUNK)
            total += _count_primes(a, stop)
            a = stop
    _raise_if_cancelled(epoch, "count_primes", "nogil")
    return total


# ---------------------------------------------------------------------------
# monte_carlo_pi: floating-point work with a PRNG of our own
# ---------------------------------------------------------------------------
# splitmix64 (Steele, Lea, Flood 2014): a tiny, fast generator with a 64-bit
# state, easy to write identically in Python, so the three paths agree bit
# for bit. Seeds are mixed once, so seeds 0, 1, 2 ... (one per worker) start
# at unrelated points of the sequence.
cdef enum:
    MC_CHUNK = 1 << 16                       # samples between cancel checks

cdef inline uint64_t _splitmix64(uint64_t* state) noexcept nogil:
    state[0] += 0x9E3779B97F4A7C15u           # the golden gamma; wraps mod 2**64
    cdef uint64_t z = state[0]
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBu
    return z ^ (z >> 31)


cdef inline double _uniform(uint64_t* state) noexcept nogil:
    """A double in [0, 1) from the top 53 bits: exact, as in Python."""
    return <double>(_splitmix64(state) >> 11) * (1.0 / 9007199254740992.0)


cdef uint64_t _mc_hits(uint64_t n, uint64_t* state) noexcept nogil:
    """How many of n random points in the unit square fall in the quarter disc."""
    cdef uint64_t i, hits = 0
    cdef double x, y
    for i in range(n):
        x = _uniform(state)
        y = _uniform(state)
        hits += (x * x + y * y <= 1.0)
    return hits


def seed_state(seed):
    """The generator's starting state for ``seed`` (any int, taken mod 2**64)."""
    cdef uint64_t state = <uint64_t>(seed & 0xFFFFFFFFFFFFFFFF)
    return _splitmix64(&state)


cdef inline uint64_t _checked_count(object n) except? 0:
    if not isinstance(n, int):
        raise TypeError(f"n must be an int; got {type(n).__name__}")
    if n < 0 or n >= 2**63:
        raise ValueError(f"n must be in [0, 2**63); got {n}")
    return n


cdef inline double _estimate(uint64_t hits, uint64_t n):
    return 4.0 * hits / n if n else float("nan")


def monte_carlo_pi_gil(n, seed):
    """Estimate pi from n samples, holding the GIL."""
    cdef uint64_t total = _checked_count(n), done = 0, hits = 0, step
    cdef uint64_t state = seed_state(seed)
    cdef unsigned long epoch = cm_epoch()
    while done < total:
        step = min(total - done, MC_CHUNK)
        hits += _mc_hits(step, &state)
        done += step
        PyErr_CheckSignals()
        _raise_if_cancelled(epoch, "monte_carlo_pi", "gil")
    return _estimate(hits, total)


def monte_carlo_pi_nogil(n, seed):
    """Estimate pi from n samples, with the GIL released."""
    cdef uint64_t total = _checked_count(n), done = 0, hits = 0, step
    cdef uint64_t state = seed_state(seed)
    cdef unsigned long epoch = cm_epoch()
    # The GIL may go: the generator state is a C integer on this thread's
    # stack, so threads running this kernel share nothing at all.
    with nogil:
        while done < total and cm_epoch() == epoch:
            step = min(total - done, MC_CHUNK)
            hits += _mc_hits(step, &state)
            done += step
    _raise_if_cancelled(epoch, "monte_carlo_pi", "nogil")
    return _estimate(hits, total)


# ---------------------------------------------------------------------------
# mandelbrot: rows of a shared, caller-owned array
# ---------------------------------------------------------------------------
@cython.boundscheck(False)      # c < width, the row's length: checked by caller
@cython.wraparound(False)
cdef void _mandelbrot_row(int32_t* row, Py_ssize_t width, double y,
                          double xmin, double dx, int32_t max_iter) noexcept nogil:
    """Escape-time iteration counts of one row of points (x, y)."""
    cdef Py_ssize_t c
    cdef int32_t it
    cdef double cr, zr, zi, zr2, zi2
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
        row[c] = it


def mandelbrot_gil(int32_t[:, ::1] out, Py_ssize_t row_start, Py_ssize_t row_stop,
                   double xmin, double xmax, double ymin, double ymax, int32_t max_iter):
    """Fill out[row_start:row_stop] with escape counts, holding the GIL."""
    cdef Py_ssize_t r, height = out.shape[0], width = out.shape[1]
    cdef double dx = (xmax - xmin) / width, dy = (ymax - ymin) / height
    cdef unsigned long epoch = cm_epoch()
    for r in range(row_start, row_stop):
        _mandelbrot_row(&out[r, 0], width, ymin + r * dy, xmin, dx, max_iter)
        PyErr_CheckSignals()
        _raise_if_cancelled(epoch, "mandelbrot", "gil")


def mandelbrot_nogil(int32_t[:, ::1] out, Py_ssize_t row_start, Py_ssize_t row_stop,
                     double xmin, double xmax, double ymin, double ymax, int32_t max_iter):
    """Fill out[row_start:row_stop] with escape counts, GIL released.

    Threads may call this at once on disjoint rows of the same array: the
    memoryview ``out`` holds a reference to the buffer for the whole call,
    so it cannot be freed under us, and no two threads write the same row,
    so no lock is needed. (Overlapping rows would be a race, yet a harmless
    one: both writers store the same values.)
    """
    cdef Py_ssize_t r, height = out.shape[0], width = out.shape[1]
    cdef double dx = (xmax - xmin) / width, dy = (ymax - ymin) / height
    cdef unsigned long epoch = cm_epoch()
    if width == 0:
        return
    # The GIL may go: the loop reads C doubles and writes through a raw
    # pointer into a buffer the memoryview keeps alive until we return.
    with nogil:
        for r in range(row_start, row_stop):
            if cm_epoch() != epoch:
                break
            _mandelbrot_row(&out[r, 0], width, ymin + r * dy, xmin, dx, max_iter)
    _raise_if_cancelled(epoch, "mandelbrot", "nogil")


# ---------------------------------------------------------------------------
# io_wait: a stand-in for blocking I/O (a simulation: it only sleeps)
# ---------------------------------------------------------------------------
# A real read() on a socket blocks in the kernel much like nanosleep does.
# Well-behaved extensions release the GIL around such calls; the gil path
# shows what happens when one does not: every other thread stops too.
cdef enum:
    WAIT_SLICE_NS = 1000000                  # 1 ms between cancel checks

cdef inline double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline bint _sleep_slice(double deadline) noexcept nogil:
    """Sleep until deadline or for one slice, whichever is first; 1 if done."""
    cdef timespec ts
    cdef double left = deadline - _now()
    if left <= 0:
        return True
    cdef long ns = <long>(left * 1e9)
    if ns > WAIT_SLICE_NS:
        ns = WAIT_SLICE_NS
    ts.tv_sec = 0
    ts.tv_nsec = ns
    nanosleep(&ts, NULL)
    return False


cdef inline double _checked_seconds(object seconds) except? -1:
    if not isinstance(seconds, (int, float)):
        raise TypeError(f"seconds must be a number; got {type(seconds).__name__}")
    if not seconds >= 0:                     # also rejects NaN
        raise ValueError(f"seconds must be >= 0; got {seconds}")
    return seconds


def io_wait_gil(seconds):
    """Block for ``seconds`` like I/O that forgot to release the GIL."""
    cdef double deadline = _now() + _checked_seconds(seconds)
    cdef unsigned long epoch = cm_epoch()
    while not _sleep_slice(deadline):
        PyErr_CheckSignals()
        _raise_if_cancelled(epoch, "io_wait", "gil")


def io_wait_nogil(seconds):
    """Block for ``seconds`` like well-behaved I/O: the GIL is released."""
    cdef double deadline = _now() + _checked_seconds(seconds)
    cdef unsigned long epoch = cm_epoch()
    # The GIL may go: sleeping touches nothing of Python's.
    with nogil:
        while cm_epoch() == epoch and not _sleep_slice(deadline):
            pass
    _raise_if_cancelled(epoch, "io_wait", "nogil")
