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
   Both paths call the very same C function for the work, so one thread is
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
    cdef double dx, dy
    cdef unsigned long epoch = cm_epoch()
    if width == 0 or row_start >= row_stop:  # nothing to write; also avoids x/0
        return
    dx = (xmax - xmin) / width
    dy = (ymax - ymin) / height
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
    cdef double dx, dy
    cdef unsigned long epoch = cm_epoch()
    if width == 0 or row_start >= row_stop:  # nothing to write; also avoids x/0
        return
    dx = (xmax - xmin) / width
    dy = (ymax - ymin) / height
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


# ===========================================================================
# Measurement: a CPU sampler and a GIL probe, both native threads
# ===========================================================================
# Both run on threads of their own that hold no GIL while they work, so they
# cost the measured code almost nothing: the sampler never touches Python at
# all, and the probe touches it only for the instant it measures.

from posix.types cimport clockid_t, pid_t
from libc.stdlib cimport calloc, free
from libc.math cimport NAN

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    int pthread_create(pthread_t* thread, void* attr,
                       void* (*start)(void*) noexcept nogil, void* arg)
    int pthread_join(pthread_t thread, void** retval)
    pthread_t pthread_self()
    int pthread_getcpuclockid(pthread_t thread, clockid_t* clock)

cdef extern from "<time.h>" nogil:
    int clock_getcpuclockid(pid_t pid, clockid_t* clock)

# Flags shared between a Python thread and a native one are C11 atomics: a
# plain int could be cached in a register by the compiler and never re-read.
cdef extern from *:
    """
    #include <stdatomic.h>
    static inline int cm_load(atomic_int *p) { return atomic_load(p); }
    static inline void cm_store(atomic_int *p, int v) { atomic_store(p, v); }
    """
    ctypedef int atomic_int "atomic_int"
    int cm_load(atomic_int* p) noexcept nogil
    void cm_store(atomic_int* p, int v) noexcept nogil

# A stop flag that can also wake a sleeper: the instruments sleep between
# readings, and stop() must not wait out a whole sleep (a run of an empty cell
# lasts far less than the sampler's millisecond). A condition variable on the
# monotonic clock does both.
cdef extern from *:
    """
    #include <errno.h>
    #include <pthread.h>
    #include <time.h>
    typedef struct {
        pthread_mutex_t lock;
        pthread_cond_t wake;
        atomic_int stop;
    } cm_stopper;
    static void cm_stopper_init(cm_stopper *s) {
        pthread_condattr_t attr;
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&s->wake, &attr);
        pthread_condattr_destroy(&attr);
        pthread_mutex_init(&s->lock, NULL);
        atomic_store(&s->stop, 0);
    }
    static void cm_stopper_destroy(cm_stopper *s) {
        pthread_cond_destroy(&s->wake);
        pthread_mutex_destroy(&s->lock);
    }
    static int cm_stopped(cm_stopper *s) { return atomic_load(&s->stop); }
    /* Sleep for ns nanoseconds or until stopped; 1 if stopped. */
    static int cm_stopper_sleep(cm_stopper *s, long ns) {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += ns / 1000000000L;
        until.tv_nsec += ns % 1000000000L;
        if (until.tv_nsec >= 1000000000L) { until.tv_sec += 1; until.tv_nsec -= 1000000000L; }
        pthread_mutex_lock(&s->lock);
        while (!atomic_load(&s->stop)) {
            if (pthread_cond_timedwait(&s->wake, &s->lock, &until) == ETIMEDOUT) break;
        }
        pthread_mutex_unlock(&s->lock);
        return atomic_load(&s->stop);
    }
    static void cm_stopper_stop(cm_stopper *s) {
        pthread_mutex_lock(&s->lock);
        atomic_store(&s->stop, 1);
        pthread_cond_broadcast(&s->wake);
        pthread_mutex_unlock(&s->lock);
    }
    """
    ctypedef struct cm_stopper:
        pass
    void cm_stopper_init(cm_stopper* s) noexcept nogil
    void cm_stopper_destroy(cm_stopper* s) noexcept nogil
    int cm_stopped(cm_stopper* s) noexcept nogil
    int cm_stopper_sleep(cm_stopper* s, long ns) noexcept nogil
    void cm_stopper_stop(cm_stopper* s) noexcept nogil

cdef enum:
    MAX_SLOTS = 1024            # workers one sampler can follow


cdef inline void _sleep_ns(long ns) noexcept nogil:
    cdef timespec ts
    ts.tv_sec = ns // 1000000000
    ts.tv_nsec = ns % 1000000000
    nanosleep(&ts, NULL)


# ---------------------------------------------------------------------------
# The CPU sampler
# ---------------------------------------------------------------------------
cdef struct SamplerState:
    cm_stopper stop
    atomic_int ready[MAX_SLOTS]     # 1 once clocks[i] holds a valid clock
    clockid_t clocks[MAX_SLOTS]
    int n_slots
    long interval_ns
    Py_ssize_t capacity             # samples the buffers hold
    Py_ssize_t count                # samples taken so far
    double* t                       # [capacity] when each sample was taken
    double* cpu                     # [capacity * n_slots] CPU seconds per slot


cdef void _take_sample(SamplerState* s) noexcept nogil:
    cdef timespec ts
    cdef int i
    cdef double* row = s.cpu + s.count * s.n_slots
    s.t[s.count] = _now()
    for i in range(s.n_slots):
        # A slot's clock may vanish (its thread or process ended): NaN says
        # "no reading" and the series simply skips it.
        if cm_load(&s.ready[i]) and clock_gettime(s.clocks[i], &ts) == 0:
            row[i] = ts.tv_sec + ts.tv_nsec * 1e-9
        else:
            row[i] = NAN
    s.count += 1


cdef void _halve(SamplerState* s) noexcept nogil:
    """Keep every other sample and sample half as often: memory stays bounded."""
    cdef Py_ssize_t k, i
    for k in range(s.count // 2):
        s.t[k] = s.t[2 * k]
        for i in range(s.n_slots):
            s.cpu[k * s.n_slots + i] = s.cpu[2 * k * s.n_slots + i]
    s.count //= 2
    s.interval_ns *= 2


cdef void* _sampler_main(void* arg) noexcept nogil:
    # Runs on its own native thread and never takes the GIL: everything it
    # touches is in the SamplerState, which the Sampler object keeps alive
    # until this thread has been joined.
    cdef SamplerState* s = <SamplerState*>arg
    while True:
        if s.count == s.capacity:
            _halve(s)
        _take_sample(s)
        if cm_stopped(&s.stop) or cm_stopper_sleep(&s.stop, s.interval_ns):
            if s.count == s.capacity:
                _halve(s)
            _take_sample(s)                # the last sample is taken at stop
            return NULL


cdef class Sampler:
    """Samples the CPU clocks of registered threads/processes every ~1 ms.

    ``register_thread(slot)`` is called by a worker thread for itself;
    ``register_pid(slot, pid)`` follows a whole worker process. ``stop()``
    returns ``(t, cpu)``: sample times (monotonic seconds, same clock as
    time.perf_counter) and CPU seconds per slot (NaN where unknown).
    """
    cdef SamplerState* s
    cdef pthread_t thread
    cdef bint running

    def __cinit__(self, int n_slots, double interval=0.001, Py_ssize_t capacity=8192):
        if not 0 < n_slots <= MAX_SLOTS:
            raise ValueError(f"n_slots must be in 1..{MAX_SLOTS}; got {n_slots}")
        if not interval > 0:
            raise ValueError(f"interval must be > 0; got {interval}")
        if capacity < 2:
            raise ValueError(f"capacity must be >= 2; got {capacity}")
        self.s = <SamplerState*>calloc(1, sizeof(SamplerState))
        if self.s == NULL:
            raise MemoryError()
        cm_stopper_init(&self.s.stop)
        self.s.n_slots = n_slots
        self.s.interval_ns = <long>(interval * 1e9)
        self.s.capacity = capacity
        self.s.t = <double*>calloc(capacity, sizeof(double))
        self.s.cpu = <double*>calloc(capacity * n_slots, sizeof(double))
        if self.s.t == NULL or self.s.cpu == NULL:
            raise MemoryError()

    def __dealloc__(self):
        if self.running:                    # never free under a live thread
            cm_stopper_stop(&self.s.stop)
            with nogil:
                pthread_join(self.thread, NULL)
        if self.s != NULL:
            free(self.s.t)
            free(self.s.cpu)
            cm_stopper_destroy(&self.s.stop)
            free(self.s)

    def _check_slot(self, int slot):
        if not 0 <= slot < self.s.n_slots:
            raise ValueError(f"slot must be in 0..{self.s.n_slots - 1}; got {slot}")

    def register_thread(self, int slot):
        """Follow the calling thread's CPU clock in ``slot``."""
        self._check_slot(slot)
        if pthread_getcpuclockid(pthread_self(), &self.s.clocks[slot]) != 0:
            raise OSError("pthread_getcpuclockid failed")
        cm_store(&self.s.ready[slot], 1)

    def register_pid(self, int slot, pid_t pid):
        """Follow process ``pid``'s CPU clock (all its threads) in ``slot``."""
        self._check_slot(slot)
        cdef int err = clock_getcpuclockid(pid, &self.s.clocks[slot])
        if err != 0:
            raise OSError(err, f"clock_getcpuclockid({pid}) failed")
        cm_store(&self.s.ready[slot], 1)

    def start(self):
        if self.running:
            raise RuntimeError("the sampler is already running")
        if pthread_create(&self.thread, NULL, _sampler_main, self.s) != 0:
            raise OSError("could not start the sampler thread")
        self.running = True

    def stop(self):
        """Stop sampling; returns (t, cpu) as lists (cpu: one list per sample)."""
        if self.running:
            cm_stopper_stop(&self.s.stop)
            with nogil:
                pthread_join(self.thread, NULL)
            self.running = False
        cdef Py_ssize_t k
        cdef int n = self.s.n_slots
        t = [self.s.t[k] for k in range(self.s.count)]
        cpu = [[self.s.cpu[k * n + i] for i in range(n)] for k in range(self.s.count)]
        return t, cpu

    @property
    def interval(self):
        """The current sampling interval in seconds (it doubles as runs grow long)."""
        return self.s.interval_ns * 1e-9


# ---------------------------------------------------------------------------
# The GIL probe
# ---------------------------------------------------------------------------
# Every `interval`, a native thread asks for the GIL and notes how long it
# waited. When no thread holds the GIL, that is a microsecond. When Python
# threads keep it busy, it is about a switch interval (sys.getswitchinterval(),
# 5 ms): that is how long CPython lets a waiter wait before asking the holder
# to let go. A compiled call that holds the GIL makes the probe wait until it
# returns. So "waiting / (waiting + sleeping)" estimates how busy the GIL was.
# Waits are summed into time bins, so a long run keeps bounded memory.
cdef struct ProbeState:
    cm_stopper stop
    atomic_int ready               # 1 once the probe thread has its thread state
    long interval_ns
    double bin_width               # seconds per bin; doubles when bins run out
    double t0
    Py_ssize_t n_bins              # capacity
    Py_ssize_t used                # bins touched so far
    double* wait                   # [n_bins] seconds spent waiting for the GIL
    double* span                   # [n_bins] seconds of probing (sleep + wait)
    double total_wait
    double total_span
    long probes


cdef void _probe_merge(ProbeState* p) noexcept nogil:
    cdef Py_ssize_t k
    for k in range(p.n_bins // 2):
        p.wait[k] = p.wait[2 * k] + p.wait[2 * k + 1]
        p.span[k] = p.span[2 * k] + p.span[2 * k + 1]
    for k in range(p.n_bins // 2, p.n_bins):
        p.wait[k] = 0
        p.span[k] = 0
    p.bin_width *= 2
    p.used = (p.used + 1) // 2


cdef void* _probe_main(void* arg) noexcept nogil:
    cdef ProbeState* p = <ProbeState*>arg
    cdef double start, asked, got
    cdef Py_ssize_t b
    # `with gil` in a thread Python did not create makes a thread state for
    # it; the nested `with nogil` gives the GIL straight back. Inside, each
    # `with gil` re-takes the GIL with that same thread state (no churn).
    with gil:
        with nogil:
            cm_store(&p.ready, 1)
            while not cm_stopped(&p.stop):
                start = _now()
                if cm_stopper_sleep(&p.stop, p.interval_ns):
                    break
                asked = _now()
                with gil:
                    pass                   # the whole probe: get it, let go
                got = _now()
                b = <Py_ssize_t>((asked - p.t0) / p.bin_width)
                while b >= p.n_bins:
                    _probe_merge(p)
                    b = <Py_ssize_t>((asked - p.t0) / p.bin_width)
                p.wait[b] += got - asked
                p.span[b] += got - start
                if b + 1 > p.used:
                    p.used = b + 1
                p.total_wait += got - asked
                p.total_span += got - start
                p.probes += 1
    return NULL


cdef class GilProbe:
    """Measures how busy the GIL is, from a native thread (see above).

    ``start()``, then ``stop()`` returns a dict: ``wait_fraction`` (total wait
    / total probe time), ``probes``, and per-bin ``t`` (bin starts, seconds
    since start), ``wait`` and ``span``.
    """
    cdef ProbeState* p
    cdef pthread_t thread
    cdef bint running

    def __cinit__(self, double interval=0.0005, double bin_width=0.005, Py_ssize_t n_bins=4096):
        if not interval > 0 or not bin_width > 0 or n_bins < 2:
            raise ValueError("interval and bin_width must be > 0, n_bins >= 2")
        self.p = <ProbeState*>calloc(1, sizeof(ProbeState))
        if self.p == NULL:
            raise MemoryError()
        cm_stopper_init(&self.p.stop)
        self.p.interval_ns = <long>(interval * 1e9)
        self.p.bin_width = bin_width
        self.p.n_bins = n_bins
        self.p.wait = <double*>calloc(n_bins, sizeof(double))
        self.p.span = <double*>calloc(n_bins, sizeof(double))
        if self.p.wait == NULL or self.p.span == NULL:
            raise MemoryError()

    def __dealloc__(self):
        if self.running:
            cm_stopper_stop(&self.p.stop)
            with nogil:                     # the probe needs the GIL to finish
                pthread_join(self.thread, NULL)
        if self.p != NULL:
            free(self.p.wait)
            free(self.p.span)
            cm_stopper_destroy(&self.p.stop)
            free(self.p)

    def start(self):
        if self.running:
            raise RuntimeError("the probe is already running")
        self.p.t0 = _now()
        if pthread_create(&self.thread, NULL, _probe_main, self.p) != 0:
            raise OSError("could not start the GIL probe thread")
        self.running = True
        # The probe's first act is to take the GIL once, to get a thread
        # state; wait for that with the GIL released, or a worker that takes
        # the GIL and keeps it would leave the probe blind for the whole run.
        with nogil:
            while not cm_load(&self.p.ready):
                _sleep_ns(20000)

    def stop(self):
        if self.running:
            cm_stopper_stop(&self.p.stop)
            # Joined without the GIL: the probe may be waiting for it.
            with nogil:
                pthread_join(self.thread, NULL)
            self.running = False
        cdef Py_ssize_t k
        return {
            "wait_fraction": self.p.total_wait / self.p.total_span if self.p.total_span > 0 else None,
            "probes": self.p.probes,
            "total_wait": self.p.total_wait,
            "t0": self.p.t0,
            "bin_width": self.p.bin_width,
            "t": [k * self.p.bin_width for k in range(self.p.used)],
            "wait": [self.p.wait[k] for k in range(self.p.used)],
            "span": [self.p.span[k] for k in range(self.p.used)],
        }
