"""Measurement: the native CPU sampler and GIL probe around one run.

    m = Measurement(n)         runners call
      m.start()                just before their run starts
      m.register_thread(slot)  from a worker thread, for itself
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
"""
import math
import sys
from dataclasses import dataclass

import numpy as np

__all__ = ["Measurement", "Samples", "gil_enabled", "PROBE_INTERVAL", "SAMPLE_INTERVAL"]

#: Seconds between CPU samples at the start of a run (it doubles whenever the
#: buffer fills, so a run of minutes keeps bounded memory).
SAMPLE_INTERVAL = 0.001
#: Seconds the GIL probe sleeps between probes.
PROBE_INTERVAL = 0.0005
#: Samples kept before halving; 8192 x 1 ms covers 8 s at full resolution.
SAMPLE_CAPACITY = 8192


def gil_enabled():
    """False on a free-threaded CPython running with the GIL disabled."""
    check = getattr(sys, "_is_gil_enabled", None)
    return True if check is None else bool(check())


@dataclass
class Samples:
    """Raw measurement series of one run; times are seconds since its start."""

    t: np.ndarray                    # (k,) when each CPU sample was taken
    cpu: np.ndarray                  # (k, n) CPU seconds per worker slot; nan = no reading
    interval: float                  # sampling interval at the end (grows on long runs)
    gil_t: np.ndarray                # (b,) start of each GIL-probe bin
    gil_wait: np.ndarray             # (b,) seconds the probe waited for the GIL in the bin
    gil_span: np.ndarray             # (b,) seconds the probe ran in the bin
    gil_wait_fraction: float | None  # whole run; None when not measured
    gil_enabled: bool = True         # False: free-threaded build, GIL off

    @property
    def n_slots(self):
        return self.cpu.shape[1] if self.cpu.ndim == 2 else 0

    def cpu_share(self, slot, start=-math.inf, end=math.inf):
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
        c = self.cpu[:, slot] if self.n_slots else np.empty(0)
        keep = np.isfinite(c) & (self.t >= start - self.interval) & (self.t <= end + self.interval)
        if keep.sum() < 2:
            return math.nan
        c = c[keep]
        return float(c[-1] - c[0])

    def gil_series(self):
        """``(t, fraction)``: the GIL-wait fraction per probe bin."""
        span = np.where(self.gil_span > 0, self.gil_span, np.nan)
        return self.gil_t, self.gil_wait / span


class Measurement:
    """The sampler and (where a GIL exists) the probe, for one run of n workers."""

    def __init__(self, n_slots, *, gil=True, interval=SAMPLE_INTERVAL,
                 probe_interval=PROBE_INTERVAL):
        from . import _core
        self._gil_enabled = gil_enabled()
        self._sampler = _core.Sampler(n_slots, interval, SAMPLE_CAPACITY)
        self._probe = _core.GilProbe(probe_interval) if gil and self._gil_enabled else None
    def start(self):
        """Start sampling (before the run's clock starts: it takes ~0.1 ms)."""
        self._sampler.start()
        try:
            if self._probe is not None:
                self._probe.start()
        except BaseException:
            self._sampler.stop()
            raise
        return self

    def register_thread(self, slot):
        """Follow the calling thread's CPU clock as worker ``slot``."""
        try:
            self._sampler.register_thread(slot)
        except OSError:                           # no CPU clock: that lane stays empty
            pass

    def register_pid(self, slot, pid):
        """Follow process ``pid``'s CPU clock as worker ``slot``."""
        try:
            self._sampler.register_pid(slot, pid)
        except OSError:
            pass

    def stop(self, t0):
        """Stop both instruments (idempotent); Samples relative to ``t0``."""
        try:
            t, cpu = self._sampler.stop()
        finally:
            gil = self._probe.stop() if self._probe is not None else None
        t = np.asarray(t, dtype=float) - t0
        cpu = np.asarray(cpu, dtype=float).reshape(len(t), -1)
        if gil is None:
            empty = np.empty(0)
            return Samples(t, cpu, self._sampler.interval, empty, empty, empty, None,
                           self._gil_enabled)
        offset = gil["t0"] - t0
        return Samples(t, cpu, self._sampler.interval,
                       np.asarray(gil["t"]) + offset, np.asarray(gil["wait"]),
                       np.asarray(gil["span"]), gil["wait_fraction"], self._gil_enabled)
