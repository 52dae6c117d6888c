"""Live progress of a long run: one line per worker, updated in place.

The runner's wait loop, on the thread that called ``run``, wakes every
``Progress.every`` seconds and calls ``tick()``; after ``delay`` seconds of
run it hands ``render(lines)`` one line per worker (running / done / failed,
elapsed time, the CPU share it got since the last tick). ``close()`` takes
the lines away before the report appears. No thread of its own, no IPython:
the magics supply ``render`` and ``clear`` (a Jupyter display handle, or one
terminal line).
"""
import os
import time

from .report import format_time

__all__ = ["Progress"]

_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _thread_clock(ident):
    clock = time.pthread_getcpuclockid(ident)
    return lambda: time.clock_gettime(clock)


def _process_clock(pid):
    path = f"/proc/{pid}/stat"

    def read():
        # Fields 14 and 15 (utime, stime) follow the ")" that closes the name.
        with open(path, "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS_PER_SECOND
    return read


class Progress:
    """How a run is going, for people watching a long cell."""

    delay = 1.0        # seconds before anything is shown: short runs stay quiet
    every = 0.25       # seconds between updates

    def __init__(self, model, n, render, clear):
        self.model = model
        self.n = n
        self._render = render
        self._clear = clear
        self._clocks = [None] * n
        self._last = [None] * n                # (time, cpu) at the previous tick
        self.shown = False
        self.t0 = None

    # -- called by runners ------------------------------------------------------
    def watch_thread(self, slot, ident):
        """Follow the CPU clock of thread ``ident`` (threading.get_ident())."""
        if hasattr(time, "pthread_getcpuclockid"):
            self._watch(slot, _thread_clock(ident))

    def watch_pid(self, slot, pid):
        """Follow the CPU time of worker process ``pid`` (Linux: /proc)."""
        if os.path.exists(f"/proc/{pid}/stat"):
            self._watch(slot, _process_clock(pid))

    def _watch(self, slot, clock):
        self._clocks[slot] = clock
        try:
            self._last[slot] = (time.perf_counter(), clock())
        except (OSError, ValueError):
            self._clocks[slot] = None

    def tick(self, t0, finished):
        """Update the lines; ``finished`` maps worker id -> WorkerRun."""
        now = time.perf_counter()
        if now - t0 < self.delay:
            return
        self.shown = True
        self._render(self.lines(now - t0, finished))

    def close(self):
        if self.shown:
            self._clear()
            self.shown = False

    # -- the words --------------------------------------------------------------
    def lines(self, elapsed, finished):
        out = [f"{self.model}: {self.n} workers, {format_time(elapsed)} so far"]
        for i in range(self.n):
            run = finished.get(i)
            if run is not None:
                state = "done" if run.error is None else f"failed ({type(run.error).__name__})"
                out.append(f"  worker {i}: {state} after {format_time(run.end - run.start)}")
                continue
            out.append(f"  worker {i}: running{self._share(i)}")
        return out

    def _share(self, slot):
        clock = self._clocks[slot]
        if clock is None:
            return ""
        try:
            now, cpu = time.perf_counter(), clock()
        except (OSError, ValueError):           # the thread or process is gone
            return ""
        last, self._last[slot] = self._last[slot], (now, cpu)
        if last is None or now <= last[0]:
            return ""
        return f", CPU {100 * (cpu - last[1]) / (now - last[0]):.0f}% of a core"
