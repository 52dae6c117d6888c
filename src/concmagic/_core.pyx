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
#
# Each instrument's thread is started by its first start() and then kept:
# between runs it is parked on a condition variable (no CPU, no GIL), and
# start()/stop() arm and disarm it. Creating and joining two threads per run
# cost ~0.4 ms, more than handing an empty cell to eight workers.
#
# Neither start() nor stop() waits for the instrument's thread. The buffers
# are guarded by the instrument's mutex, which its thread holds whenever it
# touches them and lets go of while it sleeps (and, the probe, while it asks
# for the GIL). So the caller itself takes the first and last CPU samples,
# and accounts for a GIL probe that is still waiting at stop() as a wait up
# to that moment. The thread notices at its next wake-up that its run is
# over (a generation number says which run it was armed for) and parks.
#
# The thread ends on close() (or when the object is freed). After a fork the
# child has no such thread (fork copies only the calling one): each
# instrument notes the pid that started its thread and starts a new one in
# a new process.

from posix.types cimport clockid_t, pid_t
from posix.unistd cimport getpid
from libc.stdlib cimport calloc, free
from libc.string cimport memset
from libc.math cimport NAN

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
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

# The seat of an instrument thread: one mutex, one condition variable on the
# monotonic clock (`wake`: armed, or exit), the state and the generation of
# the run it is armed for. The mutex is never held while waiting for the
# GIL, on either side, so the caller may take it with the GIL held.
cdef extern from *:
    """
    #include <errno.h>
    #include <pthread.h>
    #include <signal.h>
    #include <sys/syscall.h>
    #include <time.h>
    #include <unistd.h>
    enum { CM_PARKED = 0, CM_ARMED = 1, CM_EXIT = 2 };
    typedef struct {
        pthread_mutex_t lock;
        pthread_cond_t wake;
        int state;                /* CM_PARKED, CM_ARMED or CM_EXIT; under lock */
        unsigned gen;             /* bumped by each arm; under lock */
        atomic_int tid;           /* the thread's native id (0: not started yet) */
    } cm_control;
    static void cm_control_init(cm_control *c) {
        pthread_condattr_t attr;
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&c->wake, &attr);
        pthread_condattr_destroy(&attr);
        pthread_mutex_init(&c->lock, NULL);
        atomic_store(&c->tid, 0);
        c->state = CM_PARKED;
        c->gen = 0;
    }
    static void cm_control_destroy(cm_control *c) {
        pthread_cond_destroy(&c->wake);
        pthread_mutex_destroy(&c->lock);
    }
    static void cm_lock(cm_control *c) { pthread_mutex_lock(&c->lock); }
    static void cm_unlock(cm_control *c) { pthread_mutex_unlock(&c->lock); }
    static int cm_control_tid(cm_control *c) { return atomic_load(&c->tid); }
    static int cm_armed(cm_control *c) { return c->state == CM_ARMED; }

    /* --- the caller's side, with the lock held --- */
    /* Back to parked, before a new thread is started on it (none runs now). */
    static void cm_reset_locked(cm_control *c) {
        atomic_store(&c->tid, 0);
        c->state = CM_PARKED;
    }
    static void cm_arm_locked(cm_control *c) {
        c->state = CM_ARMED;
        c->gen++;
    }
    /* After cm_arm_locked, with the lock let go: a thread woken while the
       lock is still held would only wake to wait for it. */
    static void cm_wake(cm_control *c) { pthread_cond_broadcast(&c->wake); }
    static void cm_disarm_locked(cm_control *c) {
        /* No wake-up: the thread finds out when its sleep ends, and parks. */
        if (c->state == CM_ARMED) c->state = CM_PARKED;
    }
    static void cm_exit(cm_control *c) {
        pthread_mutex_lock(&c->lock);
        c->state = CM_EXIT;
        pthread_cond_broadcast(&c->wake);
        pthread_mutex_unlock(&c->lock);
    }

    /* --- the thread's side, with the lock held --- */
    /* Park until armed; 0 when told to exit, else 1 and the run's generation. */
    static int cm_wait_armed_locked(cm_control *c, unsigned *gen) {
        if (!atomic_load(&c->tid)) atomic_store(&c->tid, (int)syscall(SYS_gettid));
        while (c->state == CM_PARKED) pthread_cond_wait(&c->wake, &c->lock);
        *gen = c->gen;
        return c->state == CM_ARMED;
    }
    /* Sleep ns (the lock is let go meanwhile); 1 if run `gen` is still on
       when the time is up, 0 as soon as it is over (stopped, re-armed, exit). */
    static int cm_sleep_locked(cm_control *c, unsigned gen, long ns) {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += ns / 1000000000L;
        until.tv_nsec += ns % 1000000000L;
        if (until.tv_nsec >= 1000000000L) { until.tv_sec += 1; until.tv_nsec -= 1000000000L; }
        while (c->state == CM_ARMED && c->gen == gen) {
            if (pthread_cond_timedwait(&c->wake, &c->lock, &until) == ETIMEDOUT)
                return c->state == CM_ARMED && c->gen == gen;
        }
        return 0;
    }
    static int cm_still_on(cm_control *c, unsigned gen) {
        return c->state == CM_ARMED && c->gen == gen;
    }

    /* Start a thread with every signal blocked: a process-directed signal
       (Ctrl-C's SIGINT) must go to a Python thread, never to an instrument
       that lives as long as the process. */
    static int cm_start_thread(pthread_t *thread, void *(*main)(void *), void *arg) {
        sigset_t all, old;
        int err;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        err = pthread_create(thread, NULL, main, arg);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        return err;
    }
    """
    ctypedef struct cm_control:
        pass
    void cm_control_init(cm_control* c) noexcept nogil
    void cm_control_destroy(cm_control* c) noexcept nogil
    void cm_lock(cm_control* c) noexcept nogil
    void cm_unlock(cm_control* c) noexcept nogil
    int cm_control_tid(cm_control* c) noexcept nogil
    int cm_armed(cm_control* c) noexcept nogil
    void cm_reset_locked(cm_control* c) noexcept nogil
    void cm_arm_locked(cm_control* c) noexcept nogil
    void cm_wake(cm_control* c) noexcept nogil
    void cm_disarm_locked(cm_control* c) noexcept nogil
    void cm_exit(cm_control* c) noexcept nogil
    int cm_wait_armed_locked(cm_control* c, unsigned* gen) noexcept nogil
    int cm_sleep_locked(cm_control* c, unsigned gen, long ns) noexcept nogil
    int cm_still_on(cm_control* c, unsigned gen) noexcept nogil
    int cm_start_thread(pthread_t* thread, void* (*main)(void*) noexcept nogil,
                        void* arg) noexcept nogil

cdef enum:
    MAX_SLOTS = 1024            # workers one sampler can follow


cdef inline void _sleep_ns(long ns) noexcept nogil:
    cdef timespec ts
    ts.tv_sec = ns // 1000000000
    ts.tv_nsec = ns % 1000000000
    nanosleep(&ts, NULL)


cdef class _Instrument:
    """What the sampler and the probe share: a parked thread and its seat.

    One caller at a time per instrument (measure.py's shelf hands each to
    one run). ``thread_pid`` is the process whose thread this is (0: none
    started); ``armed`` is true between start() and stop().
    """
    cdef cm_control* control
    cdef pthread_t thread
    cdef pid_t thread_pid
    cdef bint armed

    cdef int _alloc_control(self) except -1:
        self.control = <cm_control*>calloc(1, sizeof(cm_control))
        if self.control == NULL:
            raise MemoryError()
        cm_control_init(self.control)
        return 0

    cdef bint _thread_here(self) noexcept:
        """True if this process has the thread (a forked child has not)."""
        if self.thread_pid != 0 and self.thread_pid != getpid():
            # Inherited through fork: the thread stayed in the parent, and
            # the mutex may have been copied while held. Start afresh.
            self.thread_pid = 0
            self.armed = False
            cm_control_init(self.control)
        return self.thread_pid != 0

    cdef int _ensure_thread(self, void* (*main)(void*) noexcept nogil, void* state) except -1:
        """Start the thread if this process has none yet (the lock is not held)."""
        if not self._thread_here():
            cm_reset_locked(self.control)          # parked: it waits to be armed
            if cm_start_thread(&self.thread, main, state) != 0:
                raise OSError(f"could not start the {type(self).__name__} thread")
            self.thread_pid = getpid()
        return 0

    cdef bint _is_running(self) noexcept:
        return self._thread_here() and self.armed

    def close(self):
        """End the thread (it is started again by the next start())."""
        if self._thread_here():
            cm_exit(self.control)
            with nogil:                           # the probe needs the GIL to leave
                pthread_join(self.thread, NULL)
            self.thread_pid = 0
        self.armed = False

    @property
    def parked(self):
        """True when a thread exists here and waits between runs."""
        return self._thread_here() and not self.armed

    @property
    def native_id(self):
        """The thread's native id (as in /proc/self/task), None when it has none here."""
        if not self._thread_here():
            return None
        cdef int tid = cm_control_tid(self.control)
        return tid if tid else None              # started, not yet running

    @property
    def running(self):
        """True between start() and stop()."""
        return self._is_running()

    def _free_control(self):
        if self.control == NULL:
            return
        if self.thread_pid == getpid() or self.thread_pid == 0:
            self.close()
            cm_control_destroy(self.control)
        # else: a forked copy, whose mutex may be held by a thread that is not
        # here; destroying it would be undefined, and freeing is enough.
        free(self.control)
        self.control = NULL


# ---------------------------------------------------------------------------
# The CPU sampler
# ---------------------------------------------------------------------------
cdef struct SamplerState:
    cm_control* control
    atomic_int ready[MAX_SLOTS]     # 1 once clocks[i] holds a valid clock
    clockid_t clocks[MAX_SLOTS]
    int n_slots
    int slots_allocated             # columns the cpu buffer has room for
    long interval_ns                # now (it doubles as a run grows long)
    long start_interval_ns          # at the start of each run
    Py_ssize_t capacity             # samples the buffers hold
    Py_ssize_t count                # samples taken so far
    double* t                       # [capacity] when each sample was taken
    double* cpu                     # [capacity * n_slots] CPU seconds per slot


cdef void _take_sample(SamplerState* s) noexcept nogil:
    cdef timespec ts
    cdef int i
    cdef double* row
    if s.count == s.capacity:
        _halve(s)
    row = s.cpu + s.count * s.n_slots
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
    # until this thread has been joined, and it touches it only with the
    # lock held (the lock is let go while it sleeps).
    cdef SamplerState* s = <SamplerState*>arg
    cdef unsigned gen
    cm_lock(s.control)
    while cm_wait_armed_locked(s.control, &gen):
        while cm_sleep_locked(s.control, gen, s.interval_ns):
            _take_sample(s)
    cm_unlock(s.control)
    return NULL


cdef class Sampler(_Instrument):
    """Samples the CPU clocks of registered threads/processes every ~1 ms.

    ``register_thread(slot)`` is called by a worker thread for itself;
    ``register_clock(slot, clock)`` by a runner for a worker thread;
    ``register_pid(slot, pid)`` follows a whole worker process. ``stop()``
    returns ``(t, cpu)``: sample times (monotonic seconds, same clock as
    time.perf_counter) and CPU seconds per slot (NaN where unknown). Each
    start() begins a new series, whose first and last samples are taken by
    the caller of start() and stop(); ``resize(n_slots)`` fits a stopped
    sampler to the next run's workers.
    """
    cdef SamplerState* s

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
        self._alloc_control()
        self.s.control = self.control
        self.s.start_interval_ns = self.s.interval_ns = <long>(interval * 1e9)
        self.s.capacity = capacity
        self.s.t = <double*>calloc(capacity, sizeof(double))
        if self.s.t == NULL:
            raise MemoryError()
        self._set_slots(n_slots)

    cdef int _set_slots(self, int n_slots) except -1:
        cdef double* cpu
        if n_slots > self.s.slots_allocated:
            cpu = <double*>calloc(self.s.capacity * n_slots, sizeof(double))
            if cpu == NULL:
                raise MemoryError()
            free(self.s.cpu)
            self.s.cpu = cpu
            self.s.slots_allocated = n_slots
        self.s.n_slots = n_slots
        return 0

    def __dealloc__(self):
        self._free_control()                 # ends the thread before the buffers go
        if self.s != NULL:
            free(self.s.t)
            free(self.s.cpu)
            free(self.s)

    def _check_slot(self, int slot):
        if not 0 <= slot < self.s.n_slots:
            raise ValueError(f"slot must be in 0..{self.s.n_slots - 1}; got {slot}")

    def resize(self, int n_slots):
        """Follow ``n_slots`` workers from the next start() (not while running)."""
        if self._is_running():
            raise RuntimeError("the sampler is running")
        if not 0 < n_slots <= MAX_SLOTS:
            raise ValueError(f"n_slots must be in 1..{MAX_SLOTS}; got {n_slots}")
        # The thread, if any, may still be finishing a sleep of the last run,
        # but it takes the lock before it looks at the buffers.
        cm_lock(self.control)
        try:
            self._set_slots(n_slots)
        finally:
            cm_unlock(self.control)

    def register_thread(self, int slot):
        """Follow the calling thread's CPU clock in ``slot``."""
        self._check_slot(slot)
        if pthread_getcpuclockid(pthread_self(), &self.s.clocks[slot]) != 0:
            raise OSError("pthread_getcpuclockid failed")
        cm_store(&self.s.ready[slot], 1)

    def register_clock(self, int slot, clockid_t clock):
        """Follow CPU clock ``clock`` in ``slot``: a thread's, from
        time.pthread_getcpuclockid(ident), so that the runner can register
        its workers itself instead of each worker registering on its way in."""
        self._check_slot(slot)
        self.s.clocks[slot] = clock
        cm_store(&self.s.ready[slot], 1)

    def register_clocks(self, clocks):
        """``register_clock`` for slots 0, 1, ... in turn; None skips a slot."""
        cdef int slot = 0
        for clock in clocks:
            if clock is not None:
                self.register_clock(slot, clock)
            slot += 1

    def register_pid(self, int slot, pid_t pid):
        """Follow process ``pid``'s CPU clock (all its threads) in ``slot``."""
        self._check_slot(slot)
        cdef int err = clock_getcpuclockid(pid, &self.s.clocks[slot])
        if err != 0:
            raise OSError(err, f"clock_getcpuclockid({pid}) failed")
        cm_store(&self.s.ready[slot], 1)

    def start(self):
        """Begin a new series (slots unregistered, the first interval again)."""
        cdef int i
        if self._is_running():
            raise RuntimeError("the sampler is already running")
        self._ensure_thread(_sampler_main, self.s)
        cm_lock(self.control)
        self.s.count = 0
        self.s.interval_ns = self.s.start_interval_ns
        for i in range(self.s.n_slots):
            cm_store(&self.s.ready[i], 0)
        _take_sample(self.s)                      # the first sample, here and now
        cm_arm_locked(self.control)
        cm_unlock(self.control)
        cm_wake(self.control)
        self.armed = True

    def stop(self):
        """Stop sampling; returns (t, cpu) as lists (cpu: one list per sample)."""
        if self._is_running():
            cm_lock(self.control)
            _take_sample(self.s)                  # the last sample, here and now
            cm_disarm_locked(self.control)
            cm_unlock(self.control)
        self.armed = False
        # The thread no longer writes: its next look (under the lock) finds
        # the run over, and a new one is armed only by start().
        cdef Py_ssize_t k
        cdef int n = self.s.n_slots
        t = [self.s.t[k] for k in range(self.s.count)]
        cpu = [[self.s.cpu[k * n + i] for i in range(n)] for k in range(self.s.count)]
        return t, cpu

    @property
    def n_slots(self):
        return self.s.n_slots

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
    cm_control* control
    atomic_int ready               # 1 once the probe thread has its thread state
    long interval_ns
    double start_bin_width         # seconds per bin at the start of each run
    double bin_width               # now; doubles when bins run out
    double t0
    Py_ssize_t n_bins              # capacity
    Py_ssize_t used                # bins touched so far
    double* wait                   # [n_bins] seconds spent waiting for the GIL
    double* span                   # [n_bins] seconds of probing (sleep + wait)
    double total_wait
    double total_span
    long probes
    double asked                   # when the probe now waiting asked (0: none waits)
    double asked_slept_from        # when that probe's sleep began


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


cdef void _probe_record(ProbeState* p, double start, double asked, double got) noexcept nogil:
    """One probe: slept from ``start``, asked for the GIL at ``asked``, got it at ``got``."""
    cdef Py_ssize_t b = <Py_ssize_t>((asked - p.t0) / p.bin_width)
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


cdef void* _probe_main(void* arg) noexcept nogil:
    cdef ProbeState* p = <ProbeState*>arg
    cdef double start, asked, got
    cdef unsigned gen
    # `with gil` in a thread Python did not create makes a thread state for
    # it; the nested `with nogil` gives the GIL straight back. Inside, each
    # `with gil` re-takes the GIL with that same thread state (no churn),
    # run after run: the thread state is kept while the thread is parked.
    with gil:
        with nogil:
            cm_store(&p.ready, 1)
            cm_lock(p.control)
            while cm_wait_armed_locked(p.control, &gen):
                while True:
                    start = _now()
                    if not cm_sleep_locked(p.control, gen, p.interval_ns):
                        break
                    asked = _now()
                    p.asked = asked                # stop() counts it if it comes first
                    p.asked_slept_from = start
                    cm_unlock(p.control)           # never held while waiting for the GIL
                    with gil:
                        pass                       # the whole probe: get it, let go
                    got = _now()
                    cm_lock(p.control)
                    if not cm_still_on(p.control, gen):
                        break                      # stop() has counted it, up to its call
                    p.asked = 0
                    _probe_record(p, start, asked, got)
            cm_unlock(p.control)
    return NULL


cdef class GilProbe(_Instrument):
    """Measures how busy the GIL is, from a native thread (see above).

    ``start()``, then ``stop()`` returns a dict: ``wait_fraction`` (total wait
    / total probe time), ``probes``, and per-bin ``t`` (bin starts, seconds
    since start), ``wait`` and ``span``. Each start() begins a new record; the
    thread waits parked between runs. A probe still waiting for the GIL at
    stop() counts as a wait until then.
    """
    cdef ProbeState* p

    def __cinit__(self, double interval=0.0005, double bin_width=0.005, Py_ssize_t n_bins=4096):
        if not interval > 0 or not bin_width > 0 or n_bins < 2:
            raise ValueError("interval and bin_width must be > 0, n_bins >= 2")
        self.p = <ProbeState*>calloc(1, sizeof(ProbeState))
        if self.p == NULL:
            raise MemoryError()
        self._alloc_control()
        self.p.control = self.control
        self.p.interval_ns = <long>(interval * 1e9)
        self.p.start_bin_width = self.p.bin_width = bin_width
        self.p.n_bins = n_bins
        self.p.wait = <double*>calloc(n_bins, sizeof(double))
        self.p.span = <double*>calloc(n_bins, sizeof(double))
        if self.p.wait == NULL or self.p.span == NULL:
            raise MemoryError()

    def __dealloc__(self):
        self._free_control()                 # ends the thread before the buffers go
        if self.p != NULL:
            free(self.p.wait)
            free(self.p.span)
            free(self.p)

    def start(self):
        if self._is_running():
            raise RuntimeError("the probe is already running")
        if not self._thread_here():
            cm_store(&self.p.ready, 0)
        self._ensure_thread(_probe_main, self.p)
        cm_lock(self.control)
        # Bins past `used` are still zero (merging zeroes what it frees).
        memset(self.p.wait, 0, self.p.used * sizeof(double))
        memset(self.p.span, 0, self.p.used * sizeof(double))
        self.p.used = 0
        self.p.bin_width = self.p.start_bin_width
        self.p.total_wait = self.p.total_span = 0
        self.p.probes = 0
        self.p.asked = 0
        self.p.t0 = _now()
        cm_arm_locked(self.control)
        cm_unlock(self.control)
        cm_wake(self.control)
        self.armed = True
        # A new thread's first act is to take the GIL once, to get a thread
        # state; wait for that with the GIL released, or a worker that takes
        # the GIL and keeps it would leave the probe blind for the whole run.
        # A parked thread has had its thread state since its first run.
        if not cm_load(&self.p.ready):
            with nogil:
                while not cm_load(&self.p.ready):
                    _sleep_ns(20000)

    def stop(self):
        cdef double now
        if self._is_running():
            cm_lock(self.control)
            if self.p.asked != 0:
                # A probe is waiting for the GIL right now (this caller may
                # well hold it): it has waited until now, and counts so.
                now = _now()
                _probe_record(self.p, self.p.asked_slept_from, self.p.asked, now)
                self.p.asked = 0
            cm_disarm_locked(self.control)
            cm_unlock(self.control)
        self.armed = False
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


# ===========================================================================
# Hand-off: warm worker threads that wait for a job without the GIL
# ===========================================================================
# The threads runner keeps a gang of worker threads and, each run, hands
# every one of them the same job; they must then start together (a start
# gate: no cell starts before every worker has come). With Python objects
# (a queue per worker, a lock-based gate) each worker slept and woke three
# times a run: for its queue, at the gate, and for the GIL, and it took the
# GIL twice, one worker after another. Here a worker waits for its job on a
# Seat and arrives at the job's Gate without the GIL, then asks for the GIL
# once; by the time it gets it the others have nearly always arrived too
# (they need no GIL to arrive), so it passes the gate without sleeping
# again. Only when one is still missing does it let go of the GIL and wait.
cdef extern from *:
    """
    typedef struct {
        pthread_mutex_t lock;
        pthread_cond_t cond;
        int left;                 /* workers yet to arrive; the gate opens at 0 */
    } cm_gate;
    typedef struct {
        pthread_mutex_t lock;
        pthread_cond_t cond;
        int posted;               /* 0 nothing, 1 a job, 2 exit */
        cm_gate *gate;            /* the posted job's gate (or NULL) */
    } cm_seat;
    static void cm_gate_init(cm_gate *g, int n) {
        pthread_condattr_t attr;
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&g->cond, &attr);
        pthread_condattr_destroy(&attr);
        pthread_mutex_init(&g->lock, NULL);
        g->left = n;
    }
    static void cm_gate_destroy(cm_gate *g) {
        pthread_cond_destroy(&g->cond);
        pthread_mutex_destroy(&g->lock);
    }
    /* Arrive; the last to come opens the gate (and wakes any waiter). */
    static void cm_gate_arrive(cm_gate *g) {
        pthread_mutex_lock(&g->lock);
        if (--g->left == 0) pthread_cond_broadcast(&g->cond);
        pthread_mutex_unlock(&g->lock);
    }
    static int cm_gate_open(cm_gate *g) {
        int open;
        pthread_mutex_lock(&g->lock);
        open = g->left <= 0;
        pthread_mutex_unlock(&g->lock);
        return open;
    }
    /* Wait until the gate opens, or `timeout_ns` has passed (a laggard). */
    static void cm_gate_wait(cm_gate *g, long timeout_ns) {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += timeout_ns / 1000000000L;
        until.tv_nsec += timeout_ns % 1000000000L;
        if (until.tv_nsec >= 1000000000L) { until.tv_sec += 1; until.tv_nsec -= 1000000000L; }
        pthread_mutex_lock(&g->lock);
        while (g->left > 0) {
            if (pthread_cond_timedwait(&g->cond, &g->lock, &until) == ETIMEDOUT) break;
        }
        pthread_mutex_unlock(&g->lock);
    }
    static void cm_seat_init(cm_seat *s) {
        pthread_cond_init(&s->cond, NULL);
        pthread_mutex_init(&s->lock, NULL);
        s->posted = 0;
        s->gate = NULL;
    }
    static void cm_seat_destroy(cm_seat *s) {
        pthread_cond_destroy(&s->cond);
        pthread_mutex_destroy(&s->lock);
    }
    static void cm_seat_post(cm_seat *s, int what, cm_gate *gate) {
        pthread_mutex_lock(&s->lock);
        if (s->posted != 2) {     /* an exit, once posted, stays */
            s->posted = what;
            s->gate = gate;
        }
        pthread_cond_signal(&s->cond);
        pthread_mutex_unlock(&s->lock);
    }
    /* Wait for a post; for a job, arrive at its gate. 1: a job, 0: exit. */
    static int cm_seat_wait(cm_seat *s) {
        int what;
        cm_gate *gate;
        pthread_mutex_lock(&s->lock);
        while (s->posted == 0) pthread_cond_wait(&s->cond, &s->lock);
        what = s->posted;
        gate = s->gate;
        if (what == 1) s->posted = 0;
        pthread_mutex_unlock(&s->lock);
        if (what != 1) return 0;
        if (gate != NULL) cm_gate_arrive(gate);
        return 1;
    }
    """
    ctypedef struct cm_gate:
        pass
    ctypedef struct cm_seat:
        pass
    void cm_gate_init(cm_gate* g, int n) noexcept nogil
    void cm_gate_destroy(cm_gate* g) noexcept nogil
    void cm_gate_arrive(cm_gate* g) noexcept nogil
    int cm_gate_open(cm_gate* g) noexcept nogil
    void cm_gate_wait(cm_gate* g, long timeout_ns) noexcept nogil
    void cm_seat_init(cm_seat* s) noexcept nogil
    void cm_seat_destroy(cm_seat* s) noexcept nogil
    void cm_seat_post(cm_seat* s, int what, cm_gate* gate) noexcept nogil
    int cm_seat_wait(cm_seat* s) noexcept nogil


cdef class Gate:
    """A one-shot start gate for ``n`` workers: each waits until all have come.

    ``wait(timeout)`` may be called by a Python thread; worker threads on a
    Seat arrive without the GIL (Seat.wait). After ``timeout`` seconds a
    waiter gives up on a laggard and goes on.
    """
    cdef cm_gate* g

    def __cinit__(self, int n):
        if n < 1:
            raise ValueError(f"n must be >= 1; got {n}")
        self.g = <cm_gate*>calloc(1, sizeof(cm_gate))
        if self.g == NULL:
            raise MemoryError()
        cm_gate_init(self.g, n)

    def __dealloc__(self):
        if self.g != NULL:
            cm_gate_destroy(self.g)
            free(self.g)

    def wait(self, double timeout):
        """Arrive, and wait until all have (or ``timeout`` seconds have passed)."""
        cdef long ns = <long>(timeout * 1e9)
        with nogil:
            cm_gate_arrive(self.g)
            cm_gate_wait(self.g, ns)

    cdef void _wait_open(self, long timeout_ns) noexcept:
        # Called with the GIL; it is let go only if the gate is still shut.
        if not cm_gate_open(self.g):
            with nogil:
                cm_gate_wait(self.g, timeout_ns)


cdef class Seat:
    """Where one warm worker thread waits for its next job, without the GIL.

    The runner calls ``post(gate)`` (a job: its data is the caller's to pass
    along, set before posting) or ``post_exit()``; the worker thread loops on
    ``wait(timeout)``, which returns True for a job, once it has also passed
    the job's gate (or given up on a laggard after ``timeout`` seconds), and
    False when told to exit. One post is kept until taken, so a post made
    while the worker is still busy with the last job is not lost.
    """
    cdef cm_seat* s
    cdef Gate gate                  # keeps the posted job's gate alive

    def __cinit__(self):
        self.s = <cm_seat*>calloc(1, sizeof(cm_seat))
        if self.s == NULL:
            raise MemoryError()
        cm_seat_init(self.s)

    def __dealloc__(self):
        if self.s != NULL:
            cm_seat_destroy(self.s)
            free(self.s)

    def post(self, Gate gate=None):
        self.gate = gate
        cm_seat_post(self.s, 1, gate.g if gate is not None else NULL)

    def post_exit(self):
        cm_seat_post(self.s, 2, NULL)

    def wait(self, double timeout):
        cdef int what
        cdef Gate gate
        # The GIL may go: the seat and the gate are C structs this object
        # keeps alive (the gate through self.gate) for as long as we wait.
        with nogil:
            what = cm_seat_wait(self.s)
        if what != 1:
            return False
        gate = self.gate
        if gate is not None:
            gate._wait_open(<long>(timeout * 1e9))
        return True
