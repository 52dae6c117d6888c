"""Measurement: the native CPU sampler and GIL probe around one run.

    m = Measurement(n)         runners call
      m.start()                just before their run starts
      m.register_thread(slot)  from a worker thread, for itself
      m.register_clock(slot, clock)  or by the runner, with the thread's clock id
      m.register_pid(slot, pid) for a worker process
    ... the run ...
      m.stop(t0) -> Samples    raw series, times in seconds since the run's
                               start t0 (a time.perf_counter() value)

Both instruments are native threads of concmagic._core that hold no GIL
while they work: the sampler reads each worker's CPU clock about every
millisecond (Linux: pthread_getcpuclockid / clock_getcpuclockid), and the
probe asks for the GIL every half millisecond and notes how long it waited.

What "GIL wait" means: the fraction of the probe's time spent waiting for the
GIL, wait / (wait + sleep). An idle GIL reads about 0.00; a GIL kept busy by
Python threads reads about 0.9, because the probe sleeps 0.5 ms and then
waits one switch interval (sys.getswitchinterval(), 5 ms) before CPython
makes the holder let go; a compiled call holding the GIL reads about 1.0.
The probe measures this process's GIL only: worker processes each have their
own, so for them it is not measured (None).

Both are stopped in ``finally`` by the runners, Ctrl-C included: a native
thread left running would outlive the run and disturb the next one.

Between runs the instruments' threads are parked, not ended: one idle
sampler and one idle probe wait on a shelf here for the next run (starting
and joining two threads cost ~0.4 ms a run). A run that finds the shelf
empty (runs at once in several threads, a run inside a run) makes its own,
and whichever is handed back second is closed. The shelf is closed at exit
and forgotten in a forked child, whose copies have no threads behind them.
"""
import atexit
import math
import os
import threading

from .freethreading import gil_enabled

__all__ = ["Measurement", "Samples", "gil_enabled", "instrument_threads", "close_instruments",
           "PROBE_INTERVAL", "SAMPLE_INTERVAL"]

#: Seconds between CPU samples at the start of a run (it doubles whenever the
#: buffer fills, so a run of minutes keeps bounded memory).
SAMPLE_INTERVAL = 0.001
#: Seconds the GIL probe sleeps between probes.
PROBE_INTERVAL = 0.0005
#: Samples kept before halving; 8192 x 1 ms covers 8 s at full resolution.
SAMPLE_CAPACITY = 8192




class Samples:
    """Raw measurement series of one run; times are seconds since its start.

    ``t`` (k,) when each CPU sample was taken; ``cpu`` (k, n) CPU seconds per
    worker slot, nan where there was no reading; ``interval`` the sampling
    interval at the end (it grows on long runs); ``gil_t``, ``gil_wait``,
    ``gil_span`` (b,) each GIL-probe bin's start, seconds waited and seconds
    probed; ``gil_wait_fraction`` for the whole run (None: not measured);
    ``gil_enabled`` False on a free-threaded build running without a GIL.

    The series become NumPy arrays when first read, not when the run ends:
    a run that nobody plots never imports NumPy for them.
    """

    def __init__(self, t, cpu, interval, gil_t, gil_wait, gil_span, gil_wait_fraction,
                 gil_enabled=True, *, t0=0.0, n_slots=None):
        self._raw = {"t": t, "cpu": cpu, "gil_t": gil_t, "gil_wait": gil_wait,
                     "gil_span": gil_span}
        self._t0 = t0
        self._n = n_slots
        self.interval = interval
        self.gil_wait_fraction = gil_wait_fraction
        self.gil_enabled = gil_enabled

    def __repr__(self):
        return (f"<Samples {len(self._raw['t'])} CPU samples every {self.interval * 1e3:g} ms, "
                f"{len(self._raw['gil_t'])} GIL bins>")

    def _array(self, name, shift=0.0):
        import numpy as np
        cached = self.__dict__.get("_" + name + "_array")
        if cached is None:
            cached = np.asarray(self._raw[name], dtype=float) - shift
            self.__dict__["_" + name + "_array"] = cached
        return cached

    @property
    def t(self):
        return self._array("t", self._t0)

    @property
    def cpu(self):
        a = self._array("cpu")
        n = self._n if self._n is not None else (a.shape[1] if a.ndim == 2 else 0)
        return a.reshape(len(self._raw["t"]), n)

    @property
    def gil_t(self):
        return self._array("gil_t")

    @property
    def gil_wait(self):
        return self._array("gil_wait")

    @property
    def gil_span(self):
        return self._array("gil_span")

    @property
    def n_slots(self):
        return self.cpu.shape[1] if self.cpu.ndim == 2 else 0

    def cpu_share(self, slot, start=-math.inf, end=math.inf):
        import numpy as np
        """``(t_mid, share)``: CPU seconds per wall second of ``slot`` between samples.

        Only the time between ``start`` and ``end`` (the worker's own run) is
        counted; elsewhere the share is 0. Serial runs need this: every
        worker's clock there is the one thread's.
        """
        if len(self.t) < 2:
            return np.empty(0), np.empty(0)
        t, c = self.t, self.cpu[:, slot]
        dt = np.diff(t)
        dc = np.diff(c)
        lo = np.maximum(t[:-1], start)
        hi = np.minimum(t[1:], end)
        inside = np.clip(hi - lo, 0, None) / np.where(dt > 0, dt, np.inf)
        share = np.where(np.isfinite(dc) & (dt > 0), dc / np.where(dt > 0, dt, 1.0), 0.0)
        return (t[:-1] + t[1:]) / 2, np.clip(share, 0, None) * np.where(inside > 0, 1.0, 0.0)

    def cpu_total(self, slot, start=-math.inf, end=math.inf):
        """CPU seconds of ``slot`` between ``start`` and ``end``, from the samples."""
        import numpy as np
        c = self.cpu[:, slot] if self.n_slots else np.empty(0)
        keep = np.isfinite(c) & (self.t >= start - self.interval) & (self.t <= end + self.interval)
        if keep.sum() < 2:
            return math.nan
        c = c[keep]
        return float(c[-1] - c[0])

    def gil_series(self):
        """``(t, fraction)``: the GIL-wait fraction per probe bin."""
        import numpy as np
        span = np.where(self.gil_span > 0, self.gil_span, np.nan)
        return self.gil_t, self.gil_wait / span


# ---------------------------------------------------------------------------
# The shelf: parked instruments kept between runs
# ---------------------------------------------------------------------------
_shelf = {}                      # (kind, settings) -> a parked instrument
_shelf_lock = threading.Lock()
_at_exit = []                    # [True] once the exit hook is registered


def _take(key, make):
    """A parked instrument for ``key`` from the shelf, or a new one."""
    with _shelf_lock:
        instrument = _shelf.pop(key, None)
        if not _at_exit:
            _at_exit.append(True)
            atexit.register(close_instruments)
    return instrument if instrument is not None else make()


def _put_back(key, instrument):
    """Shelve a stopped instrument; if one is shelved already, end this one's thread."""
    with _shelf_lock:
        if key not in _shelf:
            _shelf[key] = instrument
            return
    instrument.close()


def close_instruments():
    """End the shelved instruments' threads (a later run starts new ones)."""
    with _shelf_lock:
        shelved = list(_shelf.values())
        _shelf.clear()
    for instrument in shelved:
        instrument.close()


def instrument_threads():
    """Native ids of the shelved instruments' parked threads (``/proc/self/task``
    lists them; they are no Python threads, and no leak)."""
    with _shelf_lock:
        ids = [instrument.native_id for instrument in _shelf.values()]
    return {i for i in ids if i is not None}


def _forget_shelf():
    # In a forked child: the parked threads stayed in the parent, and the
    # lock may have been copied while held. The copies free only memory.
    global _shelf_lock
    _shelf_lock = threading.Lock()
    _shelf.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_shelf)


def _make_sampler(n_slots, interval):
    from . import _core
    return _core.Sampler(n_slots, interval, SAMPLE_CAPACITY)


def _make_probe(interval):
    from . import _core
    return _core.GilProbe(interval)


class Measurement:
    """The sampler and (where a GIL exists) the probe, for one run of n workers.

    The instruments are taken from the shelf by ``start()`` and handed back
    by ``stop()``.
    """

    def __init__(self, n_slots, *, gil=True, interval=SAMPLE_INTERVAL,
                 probe_interval=PROBE_INTERVAL):
        self._gil_enabled = gil_enabled()
        self._n_slots = n_slots
        self._interval = interval
        self._probe_interval = probe_interval if gil and self._gil_enabled else None
        self._sampler = self._probe = None
        self._samples = None
        # Held while a worker registers and while the run hands the
        # instruments back: a late worker (one that woke after a timeout)
        # must not register in a sampler that another run may be using.
        self._lock = threading.Lock()

    def start(self):
        """Start sampling (before the run's clock starts)."""
        if self._sampler is not None:
            raise RuntimeError("this Measurement has been started already")
        key = ("sampler", self._interval)
        self._sampler = sampler = _take(key, lambda: _make_sampler(self._n_slots, self._interval))
        try:
            if sampler.n_slots != self._n_slots:
                sampler.resize(self._n_slots)
            sampler.start()
            if self._probe_interval is not None:
                self._probe = _take(("probe", self._probe_interval),
                                    lambda: _make_probe(self._probe_interval))
                self._probe.start()
        except BaseException:
            self._release()
            raise
        return self

    def _release(self):
        """Stop and shelve the instruments; ``(t, cpu), gil, interval`` of the run."""
        with self._lock:
            sampler, probe = self._sampler, self._probe
            self._sampler = self._probe = False       # handed back: not ours any more
        series, gil, interval = ([], []), None, self._interval
        try:
            if sampler:
                series = sampler.stop()
                interval = sampler.interval       # read before another run may take it
        finally:
            if probe:
                gil = probe.stop()
                _put_back(("probe", self._probe_interval), probe)
            if sampler:
                _put_back(("sampler", self._interval), sampler)
        return series, gil, interval

    def register_thread(self, slot):
        """Follow the calling thread's CPU clock as worker ``slot``."""
        with self._lock:
            if self._sampler:
                try:
                    self._sampler.register_thread(slot)
                except OSError:                   # no CPU clock: that lane stays empty
                    pass

    def register_clock(self, slot, clock):
        """Follow CPU clock ``clock`` (time.pthread_getcpuclockid of a worker
        thread) as worker ``slot``: a runner registering its workers itself."""
        with self._lock:
            if self._sampler:
                self._sampler.register_clock(slot, clock)

    def register_clocks(self, clocks):
        """``register_clock(slot, clock)`` for each of ``clocks`` in slot
        order (None: no clock, that lane stays empty)."""
        with self._lock:
            if self._sampler:
                self._sampler.register_clocks(clocks)

    def register_pid(self, slot, pid):
        """Follow process ``pid``'s CPU clock as worker ``slot``."""
        with self._lock:
            if self._sampler:
                try:
                    self._sampler.register_pid(slot, pid)
                except OSError:
                    pass

    def stop(self, t0):
        """Stop both instruments (idempotent); Samples relative to ``t0``."""
        if self._samples is None:
            self._samples = self._release()
        (t, cpu), gil, interval = self._samples
        n = self._n_slots
        if gil is None:
            return Samples(t, cpu, interval, [], [], [], None, self._gil_enabled,
                           t0=t0, n_slots=n)
        offset = gil["t0"] - t0
        return Samples(t, cpu, interval, [x + offset for x in gil["t"]],
                       gil["wait"], gil["span"], gil["wait_fraction"], self._gil_enabled,
                       t0=t0, n_slots=n)
