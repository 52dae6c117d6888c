"""concmagic.comparison: the same work under serial, threads and processes; one table, a verdict.

    compare(func, n)  ->  run(func, n, "serial")      the baseline
                          run(func, n, "threads")     (pool warmed first, not counted)
                          run(func, n, "processes")   (pool warmed first, not counted)
                      ->  Comparison(reports)
                              .figures   the measured numbers the verdict reads
                              .verdict   classify(figures).text: plain words
                              .plot()    the timelines side by side (plot.py)

The verdict comes from `classify`, a pure function of the figures, so every
rule can be tested with made-up numbers; each rule reads only the named
thresholds below. The text always names the figures it rests on.

Models run one after another on the calling thread, never at the same time:
each must have the machine to itself. The thread and process pools are warmed
with a no-op run before their measured run (pyperf's habit: warmups kept
apart), because a cold process pool costs ~0.2 s to start, far more than most
cells, and every later cell reuses the warm pool. The warm-up time is kept on
`Comparison.warmups` and mentioned when it was large.

This module imports nothing from IPython; ``%%compare`` is a thin skin over it.
It is not named ``compare.py``: importing a submodule sets the package's
attribute of that name, which would turn ``concmagic.compare`` from the
function into the module.
"""
from __future__ import annotations

import html
import math
import os
import statistics
from dataclasses import dataclass, field

from .errors import WorkerError
from .comm import format_bytes
from .report import _format_ratio, format_time

__all__ = [
    "compare", "compare_functions", "Comparison", "Verdict", "classify", "usable_cores",
    "DEFAULT_MODELS", "KINDS",
    "TOO_SHORT", "GIL_BUSY", "GIL_FREE", "NOISE", "GAIN", "WAITING", "IMBALANCE", "WARMUP_NOTE",
    "CONTENDED", "SHIPPING", "SHIPPING_MIN",
]

#: The models compared when none are named, in run order: serial first, the
#: baseline every speedup divides.
DEFAULT_MODELS = ("serial", "threads", "processes")

#: Every verdict kind `classify` can return.
KINDS = ("one-worker", "too-short", "gil-bound", "io-bound", "load-imbalance", "parallel",
         "mixed")

# ---------------------------------------------------------------------------
# Thresholds: every verdict reads these and nothing else
# ---------------------------------------------------------------------------
#: Seconds of work per worker below which nothing can be told. A warm process
#: pool takes about 1 ms to hand out a run and collect it (0.8-1.1 ms for 2
#: workers, measured on a 2-core machine), starting and stopping the
#: measurement ~0.1 ms more; under 2 ms per worker that fixed cost is as large
#: as the work itself, so speedups measure start-up, not the work.
TOO_SHORT = 0.002
#: GIL wait fraction (threads) at or above which the GIL was busy. Python
#: threads keeping the GIL busy measure ~0.9 (the probe waits one 5 ms switch
#: interval per 0.5 ms sleep); a compiled call holding it ~1.0; a free GIL
#: under 0.03. Half-way leaves room for a loaded machine either side.
GIL_BUSY = 0.5
#: GIL wait fraction at or below which the GIL was free (compiled code that
#: releases it, or threads that mostly wait). Between GIL_FREE and GIL_BUSY,
#: part of the work holds it.
GIL_FREE = 0.2
#: Relative difference under which two speedups count as the same (the
#: ~10% run-to-run noise of wall times on a shared machine).
NOISE = 0.1
#: A speedup at or above this counts as a gain. Wall times of the same run on
#: a shared machine vary by about 10%; 1.2x is beyond that noise.
GAIN = 1.2
#: Serial CPU time / wall time below which the work mostly waits (I/O, sleep,
#: a lock) rather than computes. At 0.5, more than half the time was waiting.
WAITING = 0.5
#: Load imbalance: when the busiest worker does a share s of all the CPU work,
#: no model can finish before it does, so speedup <= 1/s. That bound counts as
#: the limit when it is below this fraction of what the machine allows,
#: min(workers, cores): i.e. it costs more than 10% of the possible speedup.
IMBALANCE = 0.9
#: Seconds a pool warm-up must take before the text mentions it (a cold
#: process pool: ~0.2 s; a warm one: ~1 ms, not worth a word).
WARMUP_NOTE = 0.05
#: Share of the serial run's wall time spent runnable but waiting for a CPU
#: (Linux run-queue delay) above which the machine counts as busy with other
#: work: every wall time then includes someone else's, and the verdict says
#: its speedups are uncertain. On an idle machine it reads under 1%.
CONTENDED = 0.1
#: Share of a processes run's wall time spent shipping (pickling, sending
#: and unpickling the cell, what it captures and its results; see
#: concmagic.shipping) at or above which the verdict names it and the way
#: around it. With the work spread over every core, a quarter of the time
#: spent copying costs a quarter of the possible speedup, well beyond the
#: ~10% run-to-run noise that GAIN allows for.
SHIPPING = 0.25
#: ...and only when shipping took this many seconds or more: handing a small
#: cell to a warm pool takes about 1 ms, mostly pickling and unpickling it,
#: which is start-up (TOO_SHORT's business), not data to keep from copying.
SHIPPING_MIN = 0.01


def usable_cores():
    """Cores this process may run on (its CPU affinity), else os.cpu_count()."""
    if hasattr(os, "sched_getaffinity"):
        try:
            return len(os.sched_getaffinity(0)) or 1
        except OSError:
            pass
    return os.cpu_count() or 1


def _run_queue_seconds():
    """Seconds the calling thread has spent runnable but not running (waiting
    for a CPU), from /proc/thread-self/schedstat; None where unavailable."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) * 1e-9
    except (OSError, ValueError, IndexError):
        return None


def _finite(x):
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def _percent(x):
    """0.97 -> "97%", 0.031 -> "3.1%"."""
    x *= 100
    return f"{x:.0f}%" if x >= 10 or x == 0 else f"{x:.1f}%"


def _shipping_clause(figures):
    """". processes lost 40% of the time shipping 800 MB; try --share A" for
    each model whose shipping took SHIPPING of its wall time (and
    SHIPPING_MIN seconds) or more; "" for none."""
    text = ""
    for model, s in (figures.get("shipping") or {}).items():
        if not s or not _finite(s.get("fraction")) or s["fraction"] < SHIPPING \
                or not s.get("seconds", 0) >= SHIPPING_MIN:
            continue
        text += (f". {model} lost {_percent(s['fraction'])} of the time shipping "
                 f"{format_bytes(s['bytes'])}")
        if s.get("shareable"):
            text += f"; try --share {','.join(s['shareable'])}"
        elif s.get("received", 0) > s.get("sent", 0):
            text += "; return less, or write the results into an array shared with --share"
        else:
            text += ("; make the data inside the cell, share NumPy arrays with --share, "
                     "or use threads")
    return text


# ---------------------------------------------------------------------------
# The classifier: figures -> Verdict
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    """What `classify` concluded: ``kind`` (one of KINDS) and ``text`` (plain
    words naming the figures it rests on)."""

    kind: str
    text: str

    def __str__(self):
        return self.text


def classify(figures) -> Verdict:
    """The verdict on a comparison, from its figures alone (see
    `Comparison.figures` for the keys). Rules, first match wins:

    one-worker      n_workers == 1: nothing ran side by side
    too-short       each worker ran under TOO_SHORT seconds
    gil-bound       threads: GIL wait >= GIL_BUSY and no gain
    io-bound        the work waited (serial CPU + run-queue time < WAITING of
                    its wall) and threads gained
    load-imbalance  the busiest worker's CPU share s caps speedup at 1/s,
                    under IMBALANCE x min(workers, cores)
    parallel        a model gained with the GIL free (threads) or in
                    processes
    mixed           anything else (the text says what was seen)

    A model "gains" with a speedup of GAIN or more and, for work that
    computes, a CPU parallelism of GAIN or more. Figures that are missing
    (None) are not used. Whatever the kind (one-worker aside), a model that
    spent SHIPPING of its wall time or more shipping data (and SHIPPING_MIN
    seconds) is named, with the way around it (`_shipping_clause`).
    """
    f = figures
    n = f["n_workers"]
    cores = f.get("cores") or 1
    speedup = f.get("speedup") or {}
    parallelism = f.get("cpu_parallelism") or {}
    gil = f.get("gil_wait") or {}
    models = f.get("models") or tuple(speedup)
    gil_enabled = f.get("gil_enabled", True)
    cpu_fraction = f.get("cpu_fraction")
    queue = f.get("queue_fraction")
    # How much of the time the work wanted a CPU: computing, or runnable but
    # queued behind other programs. The rest it waited (I/O, sleep, a lock).
    demand = cpu_fraction + (queue if _finite(queue) else 0.0) if _finite(cpu_fraction) else None
    waits = _finite(demand) and demand < WAITING

    def x(model):
        return _format_ratio(speedup.get(model))

    def gains(model):
        # A speedup of GAIN or more. For work that computes, also CPU
        # parallelism of GAIN or more: it can only finish sooner by computing
        # on several cores at once, and on a busy machine a serial run slowed
        # by others can make a model look faster than it was.
        s = speedup.get(model)
        if not (_finite(s) and s >= GAIN):
            return False
        p = parallelism.get(model)
        return waits or not _finite(demand) or not _finite(p) or p >= GAIN

    # asyncio runs work that computes serially; cap() says so in a sentence
    # of its own, so the lists of speedups leave it out.
    async_serial = "asyncio" in models and not waits and _finite(demand)

    def listed(m):
        return m != "serial" and not (m == "asyncio" and async_serial)

    def others(*skip):
        """"; processes 1.90x" for the models not yet named (serial left out)."""
        rest = [m for m in models if listed(m) and m not in skip]
        return "".join(f"; {m} {x(m)}" for m in rest)

    def asyncio_waits():
        """For work that waits: asyncio next to threads."""
        if gains("asyncio"):
            a, t = speedup["asyncio"], speedup.get("threads")
            if _finite(t) and a >= t / (1 + NOISE):
                return (f"; asyncio {x('asyncio')} waited as well on one thread, with no "
                        "thread per wait: the lighter way when the waits can be awaited")
            return (f"; asyncio {x('asyncio')}, less than threads: some of its waits block "
                    "the event loop's one thread")
        return (f"; asyncio {x('asyncio')}: its tasks waited one after another, so the waits "
                "block its one thread (time.sleep, blocking I/O): await asyncio.sleep or an "
                "async client instead, or use threads")

    def cap(text, kind):
        # Speedup verdicts: with fewer usable cores than workers, the cores
        # bound every model's speedup (waiting work is not bound by them).
        if kind in ("gil-bound", "load-imbalance", "parallel", "mixed") and cores < n \
                and not waits:
            text += (f". This machine has {cores} usable core{'s' if cores != 1 else ''}, "
                     f"so no model can beat {cores}x here")
        if kind != "too-short" and _finite(queue) and queue >= CONTENDED:
            text += (f". The machine was busy with other work (the serial run waited "
                     f"{_percent(queue)} of its time for a CPU), so these speedups are "
                     f"uncertain")
        if async_serial and kind in ("gil-bound", "load-imbalance", "parallel", "mixed"):
            text += (f". asyncio ran it serially ({x('asyncio')}): its tasks share one thread "
                     "and take turns, and work that computes never awaits")
        text += _shipping_clause(f)
        return Verdict(kind, text)

    if n <= 1:
        return Verdict("one-worker", "one worker: nothing ran side by side, so there is no "
                                     "speedup to judge; compare with 2 or more workers")

    worker_time = f.get("worker_time")
    if _finite(worker_time) and worker_time < TOO_SHORT:
        return cap((
            f"too short to tell: each worker ran {format_time(worker_time)}; start-up cost "
            f"dominates (under {format_time(TOO_SHORT)} per worker)"
            + "".join(f", {m} {x(m)}" for m in models if m != "serial")
            + ". Give each worker more work"), "too-short")

    thread_gil = gil.get("threads")
    if "threads" in models and _finite(thread_gil) and thread_gil >= GIL_BUSY \
            and not gains("threads"):
        turns = parallelism.get("threads")
        text = f"GIL-bound: threads {x('threads')}"
        if _finite(turns) and not waits:
            text += f" (CPU parallelism {_format_ratio(turns)}: they took turns)"
        text += f", the GIL was busy {_percent(thread_gil)} of the time{others('threads')}"
        if waits:
            text += ("; the work waits while holding the GIL: release it around the wait "
                     "(see concmagic.kernels.io_wait, path='nogil')")
        elif gains("processes"):
            text += ("; use processes, or release the GIL (see concmagic.kernels, "
                     "path='nogil')")
        else:
            text += "; release the GIL in compiled code (see concmagic.kernels, path='nogil')"
        return cap(text, "gil-bound")

    if waits:
        if gains("threads"):
            text = f"I/O-bound: threads {x('threads')}"
            if _finite(thread_gil):
                text += f", the GIL was mostly free ({_percent(thread_gil)})"
            elif not gil_enabled:
                text += " (no GIL)"
            text += (f"; the work waited {_percent(1 - demand)} of the time rather than "
                     f"computed{others('threads', 'asyncio')}")
            if "asyncio" in models:
                text += asyncio_waits()
            elif gains("processes"):
                text += "; threads (or asyncio) are the cheaper way to wait side by side"
            return cap(text, "io-bound")
        if "threads" not in models and gains("asyncio"):
            return cap((
                f"I/O-bound: asyncio {x('asyncio')}; the work waited {_percent(1 - demand)} "
                f"of the time rather than computed{others('asyncio')}; its tasks waited side "
                "by side on one thread"), "io-bound")
        if "threads" not in models and gains("processes"):
            return cap((
                f"I/O-bound: processes {x('processes')}; the work waited "
                f"{_percent(1 - demand)} of the time rather than computed; threads "
                "(or asyncio) are the cheaper way to wait side by side"), "io-bound")

    share, busiest = f.get("busiest_share"), f.get("busiest_worker")
    if _finite(share) and share > 0 and busiest is not None and not waits:
        bound = 1.0 / share
        if bound < IMBALANCE * min(n, cores):
            text = (f"load imbalance: worker {busiest} did {_percent(share)} of the CPU work, "
                    f"so no model can beat {bound:.2f}x"
                    + "".join(f"; {m} {x(m)}" for m in models if listed(m))
                    + "; split the work more evenly")
            return cap(text, "load-imbalance")

    parallel = []
    if gains("threads"):
        if not gil_enabled and not _finite(thread_gil):
            parallel.append(f"threads {x('threads')} (no GIL: free-threaded Python)")
        elif _finite(thread_gil) and thread_gil <= GIL_FREE:
            parallel.append(f"threads {x('threads')} with the GIL free "
                            f"({_percent(thread_gil)}: nogil code)")
    if parallel or (gains("processes") and "threads" not in models):
        rest = [m for m in models if listed(m) and m != "threads"]
        text = "parallel: " + "; ".join(parallel + [f"{m} {x(m)}" for m in rest])
        return cap(text, "parallel")

    # Nothing clear: say what was seen.
    seen = []
    for m in models:
        if not listed(m):
            continue
        part = f"{m} {x(m)}"
        if m == "threads" and _finite(thread_gil):
            part += f" (GIL busy {_percent(thread_gil)})"
        seen.append(part)
    text = "mixed: " + ", ".join(seen) if seen else "mixed: nothing to compare"
    if "threads" in models and _finite(thread_gil) and GIL_FREE < thread_gil < GIL_BUSY:
        text += "; part of the work holds the GIL"
    elif "threads" in models and gil_enabled and not _finite(thread_gil):
        text += "; the GIL was not measured (measurement off)"
    elif not any(gains(m) for m in models if m != "serial") and len(seen):
        if _finite(demand) and not waits:
            text += "; no model gained though the work computes: the cores may be busy"
        elif waits:
            text += "; no model gained though the work waits: the workers may wait on each other"
    elif gains("processes") and "threads" in models:
        text += "; processes gain where threads do not"
    return cap(text, "mixed")


# ---------------------------------------------------------------------------
# The comparison
# ---------------------------------------------------------------------------
@dataclass(repr=False)
class Comparison:
    """Reports of the same function under several models, and what they say.

    `reports`: model -> Report, in run order. `warmups`: model -> seconds its
    pool warm-up took (not counted in any report). `cores`: usable cores.
    `run_queue`: model -> seconds the run spent runnable but waiting for a
    CPU (measured for serial, which runs on the calling thread).
    """

    reports: dict
    warmups: dict = field(default_factory=dict)
    cores: int = field(default_factory=usable_cores)
    gil_enabled: bool = True
    run_queue: dict = field(default_factory=dict)  # model -> seconds runnable but queued
    _png: bytes | None = field(default=None, init=False, repr=False, compare=False)

    # --- numbers ---------------------------------------------------------------
    @property
    def models(self):
        return tuple(self.reports)

    @property
    def n_workers(self):
        return max((r.n_workers for r in self.reports.values()), default=0)

    def speedup(self, model):
        """Serial wall time / ``model``'s wall time; None without a serial run."""
        serial = self.reports.get("serial")
        report = self.reports[model]
        if serial is None or not _finite(serial.wall) or not _finite(report.wall) \
                or report.wall <= 0:
            return None
        return serial.wall / report.wall

    def efficiency(self, model):
        """Speedup / workers: 1.0 when n workers ran n times faster."""
        s = self.speedup(model)
        return None if s is None else s / self.reports[model].n_workers

    @property
    def figures(self) -> dict:
        """The measured numbers the verdict rests on.

        ``n_workers``, ``cores`` (usable), ``gil_enabled``, ``models`` (run
        order), per model: ``wall``, ``speedup``, ``cpu_parallelism``,
        ``gil_wait``; ``worker_time`` (median seconds a worker ran, serial
        run if any), ``cpu_fraction`` (serial CPU / wall: how much of the
        time the work computed), ``queue_fraction`` (serial seconds runnable
        but waiting for a CPU / wall: other programs' load; None where not
        measured), ``busiest_worker`` and ``busiest_share``
        (share of the serial run's CPU done by its busiest worker).
        """
        reports = self.reports
        base = reports.get("serial") or next(iter(reports.values()), None)
        worker_time = None
        if base is not None:
            times = [w.elapsed for w in base.workers if w.ok and _finite(w.elapsed)]
            worker_time = statistics.median(times) if times else None
        cpu_fraction = queue_fraction = share = busiest = None
        serial = reports.get("serial")
        if serial is not None:
            if _finite(serial.cpu) and _finite(serial.wall) and serial.wall > 0:
                cpu_fraction = serial.cpu / serial.wall
                queued = self.run_queue.get("serial")
                if _finite(queued):
                    queue_fraction = min(queued / serial.wall, 1.0)
            cpus = [(w.cpu, w.worker_id) for w in serial.workers if _finite(w.cpu)]
            total = math.fsum(c for c, _ in cpus)
            if len(cpus) == len(serial.workers) and total > 0:
                top, busiest = max(cpus)
                share = top / total
        return {
            "n_workers": self.n_workers,
            "cores": self.cores,
            "gil_enabled": self.gil_enabled,
            "models": self.models,
            "wall": {m: r.wall for m, r in reports.items()},
            "speedup": {m: self.speedup(m) for m in reports},
            "cpu_parallelism": {m: _none_if_nan(r.cpu_parallelism) for m, r in reports.items()},
            "gil_wait": {m: _none_if_nan(r.gil_wait) for m, r in reports.items()},
            "worker_time": worker_time,
            "cpu_fraction": cpu_fraction,
            "queue_fraction": queue_fraction,
            "busiest_worker": busiest,
            "busiest_share": share,
            "shipping": {m: _shipping_figures(r.shipping) for m, r in reports.items()
                         if getattr(r, "shipping", None) is not None},
        }

    def classify(self) -> Verdict:
        """The `Verdict` (kind and text) from `figures`."""
        return classify(self.figures)

    @property
    def kind(self) -> str:
        """The verdict's kind, one of KINDS."""
        return self.classify().kind

    @property
    def verdict(self) -> str:
        """The verdict in plain words, naming the figures it rests on."""
        return self.classify().text

    @property
    def notes(self) -> list:
        """Plain-language notes: warm-ups that took long, the reports' own notes."""
        notes = []
        for model, seconds in self.warmups.items():
            if seconds >= WARMUP_NOTE:
                n = self.reports[model].n_workers if model in self.reports else self.n_workers
                what = "worker processes" if model == "processes" else "threads"
                notes.append(f"starting the {n} {what} took {format_time(seconds)} (a warm-up "
                             f"run before the measured one, not counted; later runs reuse them)")
        for model, report in self.reports.items():
            notes += [f"{model}: {note}" for note in report.notes]
        if any(w.stdout or w.stderr for r in self.reports.values() for w in r.workers):
            notes.append("the cell printed output in each run; each report keeps its own "
                         "(.reports[model].output())")
        return notes

    # --- text ------------------------------------------------------------------
    def _rows(self):
        header = ["model", "wall", "speedup", "efficiency", "CPU parallelism", "GIL wait"]
        rows = []
        for model, r in self.reports.items():
            s, e = self.speedup(model), self.efficiency(model)
            if _finite(r.gil_wait):
                gil = _percent(r.gil_wait)
            elif not self.gil_enabled and model != "processes":
                gil = "no GIL"
            else:
                gil = "-"
            rows.append([model, format_time(r.wall), _format_ratio(s),
                         "-" if e is None else _percent(e),
                         _format_ratio(r.cpu_parallelism), gil])
        return header, rows

    def summary(self):
        n = self.n_workers
        return (f"compare: {n} worker{'s' if n != 1 else ''}, {self.cores} usable "
                f"core{'s' if self.cores != 1 else ''}")

    def __str__(self):
        header, rows = self._rows()
        widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
        lines = [self.summary()]
        for row in [header] + rows:
            cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
            lines.append("  ".join(cells).rstrip())
        failed = [m for m, r in self.reports.items() if not r.ok]
        if failed:
            lines.append(f"failed: {', '.join(failed)} (see .reports[model].errors)")
        lines.append(self.verdict)
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)

    def __repr__(self):
        return f"<Comparison {', '.join(self.models)}: {self.kind}>"

    def _repr_pretty_(self, p, cycle):
        p.text(repr(self) if cycle else str(self))

    # --- pictures and HTML -----------------------------------------------------
    def plot(self, path=None):
        """The per-model timelines side by side (matplotlib Figure); saved to
        ``path`` if given. Needs matplotlib."""
        from .plot import plot_comparison
        return plot_comparison(self, path=path)

    def _picture(self):
        """PNG bytes of `plot()`, made once; None where plotting is unavailable."""
        if self._png is None:
            try:
                from .plot import figure_png, plot_comparison
                self._png = figure_png(plot_comparison(self))
            except Exception:           # a repr must never raise: the table still shows
                self._png = b""
        return self._png or None

    def _repr_html_(self):
        import base64
        esc = html.escape
        header, rows = self._rows()
        right = ' style="text-align:right"'
        out = ['<div class="concmagic concmagic-compare">', '<table class="concmagic-report">',
               f'<caption style="text-align:left">{esc(self.summary())}</caption>',
               "<thead><tr>" + "".join(
                   f"<th{right if i else ''}>{esc(h)}</th>" for i, h in enumerate(header))
               + "</tr></thead>", "<tbody>"]
        for row in rows:
            out.append("<tr>" + "".join(
                f"<td{right if i else ''}>{esc(c)}</td>" for i, c in enumerate(row)) + "</tr>")
        out += ["</tbody>", "</table>", f"<p><b>{esc(self.verdict)}</b></p>"]
        notes = self.notes
        if notes:
            out.append('<ul class="concmagic-notes">'
                       + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
        png = self._picture()
        if png:
            data = base64.b64encode(png).decode("ascii")
            out.append(f'<img alt="per-worker timelines" src="data:image/png;base64,{data}"/>')
        for model, report in self.reports.items():
            out.append(f"<details><summary>{esc(model)} report</summary>"
                       f"{report._repr_html_()}</details>")
        out.append("</div>")
        return "\n".join(out)

    def to_dict(self) -> dict:
        """Plain JSON-able values: the figures, the verdict, each report."""
        return {"figures": self.figures, "kind": self.kind, "verdict": self.verdict,
                "warmups": dict(self.warmups), "notes": self.notes,
                "reports": {m: r.to_dict() for m, r in self.reports.items()}}


def _shipping_figures(shipping):
    """What the verdict reads of a report's Shipping."""
    return {"fraction": _none_if_nan(shipping.fraction), "seconds": shipping.seconds,
            "bytes": shipping.bytes, "sent": shipping.sent, "received": shipping.received,
            "shareable": shipping.shareable, "shared": list(shipping.shared)}


def _none_if_nan(x):
    return x if _finite(x) else None


# ---------------------------------------------------------------------------
# Running it
# ---------------------------------------------------------------------------
class _Warmup:
    """The warm-up run's work: nothing, but it carries ``func``.

    Shipping ``func`` to worker processes imports the modules it uses there
    (cloudpickle sends modules by name), which is a one-time cost of a new
    pool, like starting it: 0.1-0.2 s for NumPy. So the warm-up ships the
    function without calling it; the cell itself runs only when measured.
    """

    def __init__(self, func):
        self.func = func
        self.__wrapped__ = func         # share= names are looked up in func's globals

    def __call__(self, worker_id, n_workers):
        return None


def _check_models(models):
    from .engine import MODELS

    if isinstance(models, str):
        models = (models,)
    models = tuple(models)
    bad = [m for m in models if m not in MODELS]
    if bad or not models:
        raise ValueError(f"models must be one or more of {', '.join(map(repr, MODELS))}; "
                         f"got {models!r}")
    if len(set(models)) != len(models):
        raise ValueError(f"models must not repeat; got {models!r}")
    return models


def compare(func, n=4, *, models=DEFAULT_MODELS, timeout=None, **kw) -> Comparison:
    """Run ``func(worker_id=i, n_workers=n)`` under each of ``models`` in turn
    and return a `Comparison` (reports, speedups, a verdict).

    ``timeout`` applies to each model's run. Other keywords go to
    `concmagic.run`: ``measure`` to every run, ``start_method`` and
    ``share`` to the processes run only. If a worker fails, raises `WorkerError` for that
    model's report, after running no further models; the partial comparison
    is on the error as ``.comparison``.
    """
    models = _check_models(models)
    return compare_functions({m: func for m in models}, n, timeout=timeout, **kw)


def compare_functions(funcs, n=4, *, timeout=None, start_method=None, measure=True,
                      warmup=True, share=None) -> Comparison:
    """`compare` with a function per model (``{model: func}``, run in that
    order): ``%%compare`` ships processes a variant of the cell function.
    ``warmup`` starts the thread and process pools before their measured runs.
    ``share`` goes to the processes runs (warm-up included, so the arrays are
    placed in shared memory once, before the measured run)."""
    from .engine import run
    from .freethreading import gil_enabled

    _check_models(tuple(funcs))
    reports, warmups, queued = {}, {}, {}
    comparison = Comparison(reports, warmups, gil_enabled=gil_enabled(), run_queue=queued)
    for model, func in funcs.items():
        options = {}
        if model == "processes" and start_method is not None:
            options["start_method"] = start_method
        if model == "processes" and share is not None:
            options["share"] = share
        if warmup and model != "serial":
            import time
            t = time.perf_counter()
            run(_Warmup(func), n, model, timeout=timeout, measure=False, **options)
            warmups[model] = time.perf_counter() - t
        before = _run_queue_seconds() if model == "serial" else None
        report = run(func, n, model, timeout=timeout, measure=measure, raise_errors=False,
                     **options)
        after = _run_queue_seconds() if before is not None else None
        if after is not None:
            queued[model] = after - before
        reports[model] = report
        if not report.ok:
            error = WorkerError(report)
            error.comparison = comparison
            raise error
    return comparison
