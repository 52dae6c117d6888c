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
# cost ~0.4 ms, more than handing an empty cell to eight workers. The thread
# ends on close() (or when the object is freed). After a fork the child has
# no such thread (fork copies only the calling one): each instrument notes
# the pid that started its thread and starts a new one in a new process.

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

# The seat of a parked instrument thread, and the stop flag of its run. One
# mutex, two condition variables on the monotonic clock:
#   wake    the controller -> the thread: armed, stop now, or exit
#   parked  the thread -> the controller: the run is over, buffers are quiet
# The instruments sleep between readings on `wake` too, so stop() never waits
# out a whole sleep (an empty cell lasts far less than the sampler's 1 ms).
# The mutex is never held while waiting for the GIL, on either side, so the
# controller may take it with the GIL held.
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
        pthread_cond_t parked;
        atomic_int stop;          /* the current run must end */
        int state;                /* CM_PARKED, CM_ARMED or CM_EXIT; under lock */
        atomic_int tid;           /* the thread's native id (0: not started yet) */
    } cm_control;
    static void cm_control_init(cm_control *c) {
        pthread_condattr_t attr;
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&c->wake, &attr);
        pthread_cond_init(&c->parked, &attr);
        pthread_condattr_destroy(&attr);
        pthread_mutex_init(&c->lock, NULL);
        atomic_store(&c->stop, 0);
        atomic_store(&c->tid, 0);
        c->state = CM_PARKED;
    }
    static void cm_control_destroy(cm_control *c) {
        pthread_cond_destroy(&c->wake);
        pthread_cond_destroy(&c->parked);
        pthread_mutex_destroy(&c->lock);
    }
    /* Back to parked, before a new thread is started on it (none runs now). */
    static void cm_control_reset(cm_control *c) {
        atomic_store(&c->tid, 0);
        atomic_store(&c->stop, 0);
        c->state = CM_PARKED;
    }
    static int cm_stopped(cm_control *c) { return atomic_load(&c->stop); }
    static int cm_control_tid(cm_control *c) { return atomic_load(&c->tid); }
    /* Sleep for ns nanoseconds or until stopped; 1 if stopped. */
    static int cm_control_sleep(cm_control *c, long ns) {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += ns / 1000000000L;
        until.tv_nsec += ns % 1000000000L;
        if (until.tv_nsec >= 1000000000L) { until.tv_sec += 1; until.tv_nsec -= 1000000000L; }
        pthread_mutex_lock(&c->lock);
        while (!atomic_load(&c->stop)) {
            if (pthread_cond_timedwait(&c->wake, &c->lock, &until) == ETIMEDOUT) break;
        }
        pthread_mutex_unlock(&c->lock);
        return atomic_load(&c->stop);
    }
    /* The thread's side. Park until armed (1) or told to exit (0). */
    static int cm_control_wait_armed(cm_control *c) {
        int run;
        if (!atomic_load(&c->tid)) atomic_store(&c->tid, (int)syscall(SYS_gettid));
        pthread_mutex_lock(&c->lock);
        while (c->state == CM_PARKED) pthread_cond_wait(&c->wake, &c->lock);
        run = c->state == CM_ARMED;
        pthread_mutex_unlock(&c->lock);
        return run;
    }
    /* The thread's side: the run is over and its buffers are no longer touched. */
    static void cm_control_done(cm_control *c) {
        pthread_mutex_lock(&c->lock);
        if (c->state == CM_ARMED) c->state = CM_PARKED;
        pthread_cond_broadcast(&c->parked);
        pthread_mutex_unlock(&c->lock);
    }
    /* The controller's side: start a run (the thread is parked). */
    static void cm_control_arm(cm_control *c) {
        pthread_mutex_lock(&c->lock);
        atomic_store(&c->stop, 0);
        c->state = CM_ARMED;
        pthread_cond_broadcast(&c->wake);
        pthread_mutex_unlock(&c->lock);
    }
    /* The controller's side: end the run and wait until the thread is parked. */
    static void cm_control_disarm(cm_control *c) {
        pthread_mutex_lock(&c->lock);
        atomic_store(&c->stop, 1);
        pthread_cond_broadcast(&c->wake);
        while (c->state == CM_ARMED) pthread_cond_wait(&c->parked, &c->lock);
        pthread_mutex_unlock(&c->lock);
    }
    /* The controller's side: end any run and let the thread return. */
    static void cm_control_exit(cm_control *c) {
        pthread_mutex_lock(&c->lock);
        atomic_store(&c->stop, 1);
        c->state = CM_EXIT;
        pthread_cond_broadcast(&c->wake);
        pthread_mutex_unlock(&c->lock);
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
    void cm_control_reset(cm_control* c) noexcept nogil
    int cm_stopped(cm_control* c) noexcept nogil
    int cm_control_tid(cm_control* c) noexcept nogil
    int cm_control_sleep(cm_control* c, long ns) noexcept nogil
    int cm_control_wait_armed(cm_control* c) noexcept nogil
    void cm_control_done(cm_control* c) noexcept nogil
    void cm_control_arm(cm_control* c) noexcept nogil
    void cm_control_disarm(cm_control* c) noexcept nogil
    void cm_control_exit(cm_control* c) noexcept nogil
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

    State, changed only by the controlling Python code (one run at a time
    per instrument; the caller serialises, as measure.py's pool does):
    ``thread_pid`` the process whose thread this is (0: none started);
    ``armed`` between start() and stop().
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

    cdef int _arm(self, void* (*main)(void*) noexcept nogil, void* state) except -1:
        if not self._thread_here():
            cm_control_reset(self.control)         # parked: it waits to be armed
            if cm_start_thread(&self.thread, main, state) != 0:
                raise OSError(f"could not start the {type(self).__name__} thread")
            self.thread_pid = getpid()
        cm_control_arm(self.control)
        self.armed = True
        return 0

    cdef void _disarm(self) noexcept:
        if self.armed and self._thread_here():
            # Without the GIL: the probe may be waiting for it to finish.
            with nogil:
                cm_control_disarm(self.control)
        self.armed = False

    def close(self):
        """End the thread (it is started again by the next start())."""
        if self._thread_here():
            cm_control_exit(self.control)
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
        return self._thread_here() and self.armed

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


cdef void _sample_run(SamplerState* s) noexcept nogil:
    while True:
        if s.count == s.capacity:
            _halve(s)
        _take_sample(s)
        if cm_stopped(s.control) or cm_control_sleep(s.control, s.interval_ns):
            if s.count == s.capacity:
                _halve(s)
            _take_sample(s)                # the last sample is taken at stop
            return


cdef void* _sampler_main(void* arg) noexcept nogil:
    # Runs on its own native thread and never takes the GIL: everything it
    # touches is in the SamplerState, which the Sampler object keeps alive
    # until this thread has been joined. Between runs it sits in
    # cm_control_wait_armed; start() resets the buffers only while it sits
    # there, and stop() reads them only once it is back.
    cdef SamplerState* s = <SamplerState*>arg
    while cm_control_wait_armed(s.control):
        _sample_run(s)
        cm_control_done(s.control)
    return NULL


cdef class Sampler(_Instrument):
    """Samples the CPU clocks of registered threads/processes every ~1 ms.

    ``register_thread(slot)`` is called by a worker thread for itself;
    ``register_pid(slot, pid)`` follows a whole worker process. ``stop()``
    returns ``(t, cpu)``: sample times (monotonic seconds, same clock as
    time.perf_counter) and CPU seconds per slot (NaN where unknown). Each
    start() begins a new series; the thread waits parked between runs, and
    ``resize(n_slots)`` fits a parked sampler to the next run's workers.
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
        if self._thread_here() and self.armed:
            raise RuntimeError("the sampler is running")
        if not 0 < n_slots <= MAX_SLOTS:
            raise ValueError(f"n_slots must be in 1..{MAX_SLOTS}; got {n_slots}")
        self._set_slots(n_slots)

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
        """Begin a new series (slots unregistered, the first interval again)."""
        cdef int i
        if self._thread_here() and self.armed:
            raise RuntimeError("the sampler is already running")
        # The thread is parked (or not started): nothing else touches these.
        self.s.count = 0
        self.s.interval_ns = self.s.start_interval_ns
        for i in range(self.s.n_slots):
            cm_store(&self.s.ready[i], 0)
        self._arm(_sampler_main, self.s)

    def stop(self):
        """Stop sampling; returns (t, cpu) as lists (cpu: one list per sample)."""
        self._disarm()
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


cdef void _probe_run(ProbeState* p) noexcept nogil:
    cdef double start, asked, got
    cdef Py_ssize_t b
    while not cm_stopped(p.control):
        start = _now()
        if cm_control_sleep(p.control, p.interval_ns):
            break
        asked = _now()
        with gil:
            pass                           # the whole probe: get it, let go
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


cdef void* _probe_main(void* arg) noexcept nogil:
    cdef ProbeState* p = <ProbeState*>arg
    # `with gil` in a thread Python did not create makes a thread state for
    # it; the nested `with nogil` gives the GIL straight back. Inside, each
    # `with gil` re-takes the GIL with that same thread state (no churn),
    # run after run: the thread state is kept while the thread is parked.
    with gil:
        with nogil:
            cm_store(&p.ready, 1)
            while cm_control_wait_armed(p.control):
                _probe_run(p)
                cm_control_done(p.control)
    return NULL


cdef class GilProbe(_Instrument):
    """Measures how busy the GIL is, from a native thread (see above).

    ``start()``, then ``stop()`` returns a dict: ``wait_fraction`` (total wait
    / total probe time), ``probes``, and per-bin ``t`` (bin starts, seconds
    since start), ``wait`` and ``span``. Each start() begins a new record; the
    thread waits parked between runs.
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
        if self._thread_here() and self.armed:
            raise RuntimeError("the probe is already running")
        # The thread is parked (or not started): nothing else touches these.
        # Bins past `used` are still zero (merging zeroes what it frees).
        memset(self.p.wait, 0, self.p.used * sizeof(double))
        memset(self.p.span, 0, self.p.used * sizeof(double))
        self.p.used = 0
        self.p.bin_width = self.p.start_bin_width
        self.p.total_wait = self.p.total_span = 0
        self.p.probes = 0
        if not self._thread_here():
            cm_store(&self.p.ready, 0)
        self.p.t0 = _now()
        self._arm(_probe_main, self.p)
        # A new thread's first act is to take the GIL once, to get a thread
        # state; wait for that with the GIL released, or a worker that takes
        # the GIL and keeps it would leave the probe blind for the whole run.
        # A parked thread has had its thread state since its first run.
        if not cm_load(&self.p.ready):
            with nogil:
                while not cm_load(&self.p.ready):
                    _sleep_ns(20000)

    def stop(self):
        self._disarm()
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
