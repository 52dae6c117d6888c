"""Report objects: what one run of a cell did, worker by worker.

A runner fills one `WorkerRun` per worker and wraps them in a `Report`. The
report keeps the raw numbers (seconds since the run's start, CPU seconds) and
derives the rest (total CPU, CPU parallelism, who failed) on demand, so that
nothing shown can disagree with what was measured.

Every rendering goes through the same few helpers:

    format_time   one duration formatter for text, HTML and plots
    Report.__str__        the wording (the terminal, and `_repr_pretty_`)
    Report._repr_html_    the same table for Jupyter, with the timeline picture
    Report.plot()         the timeline (concmagic.plot; needs matplotlib)
    Report.output()       every worker's stdout/stderr, grouped, never interleaved

This module imports nothing from IPython: the engine works without it.
"""
from __future__ import annotations

import html
import math
import reprlib
import sys
from dataclasses import dataclass, field
from typing import Any

__all__ = ["format_time", "WorkerRun", "Report"]

#: The models a report may describe (runners/ names these).
MODELS = ("serial", "threads", "processes", "asyncio", "dask")

# Durations step by 1000 between units; the last unit also takes anything smaller.
_UNITS = (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9))

# Widest text row we aim for: a report for 4 workers must read on an
# 80-column terminal without wrapping.
_TEXT_WIDTH = 80
# A result or error is cut to this many characters in tables; the full value
# stays on the report (`.results`, `.errors`).
_CELL_WIDTH = 40
# Never let the result column shrink below this, however wide the others are.
_MIN_CELL_WIDTH = 20
# The timeline in HTML: 8 in wide at this dpi is 640 px, a notebook cell's width.
_HTML_DPI = 80
#: Runs shorter than this get no picture in their HTML: the sampler reads the
#: CPU clocks every millisecond, so a shorter run has too few samples to show
#: anything, and drawing costs ~0.3 s, far more than such a run itself.
TIMELINE_MIN_WALL = 0.02


# ---------------------------------------------------------------------------
# Formatting helpers
# ---------------------------------------------------------------------------
def _micro():
    """"µs", or ASCII "us" where the terminal cannot print "µ".

    Some consoles have no encoding, or one without "µ"; printing it there
    raises UnicodeEncodeError from inside a repr, which is far worse than an
    ASCII "u". So ask the stream, and fall back when in doubt.
    """
    encoding = getattr(sys.stdout, "encoding", None)
    if encoding:
        try:
            "\u00b5".encode(encoding)
            return "\u00b5s"
        except (UnicodeEncodeError, LookupError):
            pass
    return "us"


def format_time(seconds: float, precision: int = 3) -> str:
    """A duration in the unit that fits (s, ms, µs, ns), to `precision`
    significant digits: ``1.23 ms``, ``12.3 s``, ``456 ns``.

    Not measured (nan, None) reads ``-``. Durations of 1000 s and more keep
    every digit of the whole seconds (``1234 s``) rather than turn into
    scientific notation.
    """
    try:
        seconds = float(seconds)
    except (TypeError, ValueError):
        return "-"
    if math.isnan(seconds):
        return "-"
    if math.isinf(seconds):
        return ("-" if seconds < 0 else "") + "inf s"
    sign = "-" if seconds < 0 else ""
    x = abs(seconds)
    if x == 0:
        return "0 s"
    index = next((i for i, (_, scale) in enumerate(_UNITS) if x >= scale), len(_UNITS) - 1)
    value = x / _UNITS[index][1]
    text = "%.*g" % (precision, value)
    # 999.96 ms rounds to 1000 ms: say 1 s instead.
    if float(text) >= 1000 and index > 0:
        index -= 1
        value = x / _UNITS[index][1]
        text = "%.*g" % (precision, value)
    if "e" in text:  # 1234 s (or a tiny fraction of a ns): no exponents in a report
        text = "%.0f" % value
    unit = _UNITS[index][0]
    if unit == "us":
        unit = _micro()
    return f"{sign}{text} {unit}"


def _format_ratio(value):
    """CPU parallelism: ``3.94x``; not measured: ``-``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2f}x"


def _one_line(text, width=_CELL_WIDTH):
    """Collapse whitespace runs (a NumPy array's repr spans lines) and cut to `width`."""
    text = " ".join(str(text).split())
    if len(text) > width:
        text = text[: max(width - 3, 0)] + "..."
    return text


def _short_repr(obj, width=_CELL_WIDTH):
    """A repr cut to `width` characters, that never raises and never builds a
    huge string first (reprlib stops early inside big containers)."""
    limits = reprlib.Repr()
    limits.maxstring = width
    limits.maxother = width
    limits.maxlong = width
    try:
        text = limits.repr(obj)
    except Exception as exc:  # a broken __repr__ must not break the report
        text = f"<{type(obj).__name__} object; repr failed: {type(exc).__name__}>"
    return _one_line(text, width)


def error_line(exc, width=None):
    """``ExcType: message`` on one line (cut to `width` if given)."""
    if exc is None:
        return ""
    name = type(exc).__name__
    try:
        message = str(exc)
    except Exception:
        message = "<str() failed>"
    text = f"{name}: {message}" if message else name
    text = " ".join(text.split())
    if width is not None:
        text = _one_line(text, width)
    return text


def _plural(n, word):
    return f"{n} {word}" + ("" if n == 1 else "s")


def _nan_to_none(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


# ---------------------------------------------------------------------------
# WorkerRun
# ---------------------------------------------------------------------------
@dataclass
class WorkerRun:
    """What one worker did. Times are seconds since the run's start.

    `start` is when the worker began executing the cell, so it is also the
    worker's start-up cost (thread creation, process hand-off, shipping the
    function); `end` is when it finished; `cpu` is the CPU time it used (the
    thread's CPU clock for threads, the process's for processes). Anything
    not measured stays nan.
    """

    worker_id: int
    pid: int | None = None
    host: str = ""                  # hostname (dask); "" means this machine
    thread_id: int | None = None    # native thread id (threads, asyncio)
    start: float = math.nan         # began executing the cell
    end: float = math.nan           # finished
    cpu: float = math.nan           # CPU seconds used
    result: Any = None              # the cell's last expression, if it succeeded
    error: BaseException | None = None
    traceback: str = field(default="", repr=False)   # `error`'s traceback, on the cell's lines
    stdout: str = field(default="", repr=False)
    stderr: str = field(default="", repr=False)

    @property
    def ok(self) -> bool:
        """True when the worker finished without an error."""
        return self.error is None

    @property
    def elapsed(self) -> float:
        """Seconds spent executing the cell (`end - start`; nan if unknown)."""
        return self.end - self.start

    def where(self, model=None) -> str:
        """Where it ran, for tables: ``host:pid``, the pid, or (threads) the thread id."""
        if model == "threads" and self.thread_id is not None:
            return str(self.thread_id)
        pid = "-" if self.pid is None else str(self.pid)
        return f"{self.host}:{pid}" if self.host else pid

    def summary(self, width=_CELL_WIDTH) -> str:
        """The result's short repr, or ``ExcType: message`` if it failed."""
        if self.error is not None:
            return error_line(self.error, width)
        return _short_repr(self.result, width)

    def to_dict(self) -> dict:
        """Plain JSON-able values: the result is repr'd, nan becomes None."""
        return {
            "worker_id": self.worker_id,
            "pid": self.pid,
            "host": self.host,
            "thread_id": self.thread_id,
            "start": _nan_to_none(self.start),
            "end": _nan_to_none(self.end),
            "elapsed": _nan_to_none(self.elapsed),
            "cpu": _nan_to_none(self.cpu),
            "ok": self.ok,
            "result": None if self.error is not None else _short_repr(self.result, 200),
            "error": error_line(self.error) or None,
            "traceback": self.traceback,
            "stdout": self.stdout,
            "stderr": self.stderr,
        }


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
@dataclass(repr=False)
class Report:
    """One run of a cell under one model: every worker, and what it adds up to.

    Raw values are stored; everything else (`results`, `errors`, `cpu`,
    `cpu_parallelism`, `failed`, `ok`) is derived when asked. Prints as the
    text report, renders as an HTML table in Jupyter.
    """

    model: str                      # "serial" | "threads" | "processes" | "asyncio" | "dask"
    n_workers: int
    wall: float                     # seconds, whole run
    workers: list[WorkerRun]
    gil_wait: float | None = None   # fraction 0..1 of probe time spent waiting for the GIL
    notes: list[str] = field(default_factory=list)  # plain-language notes for the reader
    samples: Any = None             # measurement series (CPU over time), when recorded
    comm: Any = None                # messages between workers (concmagic.comm.CommStats), if any
    shipping: Any = None            # what travelled to and from worker processes
                                    # (concmagic.shipping.Shipping); None in-process
    gil_enabled: bool = True        # False: free-threaded Python ran this without a GIL
    shared: dict = field(default_factory=dict)  # name -> the notebook's view of each
                                                # array shared with the workers (share=)

    def __post_init__(self):
        # Validate at construction: a report that contradicts itself would
        # print numbers nobody can trust.
        ids = [w.worker_id for w in self.workers]
        if len(set(ids)) != len(ids):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"Report has the same worker_id more than once: {dupes}")
        if self.gil_wait is not None and not (0.0 <= self.gil_wait <= 1.0 or math.isnan(self.gil_wait)):
            raise ValueError(f"gil_wait must be a fraction in [0, 1] or None; got {self.gil_wait!r}")
        self.notes = list(self.notes or [])

    # --- derived values ----------------------------------------------------
    def _ordered(self):
        # Runners may collect workers in completion order; readers want worker order.
        return sorted(self.workers, key=lambda w: w.worker_id)

    @property
    def results(self) -> list:
        """Each worker's result, in worker order (None where a worker failed)."""
        return [w.result if w.ok else None for w in self._ordered()]

    @property
    def errors(self) -> dict:
        """worker_id -> exception, for the workers that failed only."""
        return {w.worker_id: w.error for w in self._ordered() if not w.ok}

    @property
    def failed(self) -> list:
        """The failed `WorkerRun`s, in worker order."""
        return [w for w in self._ordered() if not w.ok]

    @property
    def ok(self) -> bool:
        """True when no worker failed."""
        return not self.failed

    @property
    def cpu(self) -> float:
        """Total CPU seconds of the workers that were measured (nan if none was)."""
        measured = [w.cpu for w in self.workers if w.cpu is not None and not math.isnan(w.cpu)]
        return math.fsum(measured) if measured else math.nan

    @property
    def cpu_parallelism(self) -> float:
        """Total CPU / wall: about 1 when workers took turns, about N when N
        ran at once. nan when CPU or wall time is unknown."""
        cpu = self.cpu
        if math.isnan(cpu) or not self.wall or math.isnan(self.wall) or self.wall <= 0:
            return math.nan
        return cpu / self.wall

    def raise_for_errors(self):
        """Raise `WorkerError` if any worker failed; otherwise return self."""
        if not self.ok:
            from .errors import WorkerError

            raise WorkerError(self)
        return self

    # --- text ---------------------------------------------------------------
    def summary(self) -> str:
        """The one-line summary: model, workers, wall, CPU, parallelism, GIL."""
        parts = [
            _plural(self.n_workers, "worker"),
            f"wall {format_time(self.wall)}",
            f"CPU {format_time(self.cpu)}",
            f"CPU parallelism {_format_ratio(self.cpu_parallelism)}",
        ]
        if not self.gil_enabled and self.model not in ("processes", "dask"):
            parts.append("no GIL (free-threaded Python)")
        elif self.gil_wait is not None and not math.isnan(self.gil_wait):
            parts.append(f"GIL busy {self.gil_wait * 100:.0f}%")
        return f"{self.model}: " + ", ".join(parts)

    def _where_header(self):
        if self.model == "threads" and any(w.thread_id is not None for w in self.workers):
            return "thread"
        if any(w.host for w in self.workers):
            return "host:pid"
        return "pid"

    def _rows(self, width=_CELL_WIDTH):
        """Header and cell texts, shared by the text and HTML tables."""
        header = ["worker", self._where_header(), "start", "end", "CPU",
                  "result" if self.ok else "result / error"]
        rows = []
        for w in self._ordered():
            rows.append([str(w.worker_id), w.where(self.model), format_time(w.start),
                         format_time(w.end), format_time(w.cpu), w.summary(width)])
        return header, rows

    def _table_lines(self):
        header, rows = self._rows(width=_CELL_WIDTH)
        # Size every column but the last to its content, then give the last
        # what is left of 80 columns (never less than _MIN_CELL_WIDTH).
        widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header) - 1)]
        used = sum(widths) + 2 * len(widths)
        last = max(_MIN_CELL_WIDTH, min(_CELL_WIDTH, _TEXT_WIDTH - used))
        lines = []
        for r in [header] + rows:
            cells = [r[0].rjust(widths[0]), r[1].rjust(widths[1])]
            cells += [c.rjust(wd) for c, wd in zip(r[2:-1], widths[2:])]
            cells.append(_one_line(r[-1], last))
            lines.append("  ".join(cells).rstrip())
        return lines

    def _failure_line(self):
        failed = self.failed
        if not failed:
            return None
        ids = ", ".join(str(w.worker_id) for w in failed)
        return (f"{len(failed)} of {_plural(len(self.workers), 'worker')} failed "
                f"(worker{'s' if len(failed) > 1 else ''} {ids}); "
                "the others' results are kept.")

    def __str__(self):
        lines = [self.summary()]
        lines += self._table_lines()
        if self.shipping is not None:
            lines += self.shipping.lines()
        failure = self._failure_line()
        if failure:
            lines.append(failure)
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)

    def __repr__(self):
        return f"<Report {self.summary()}>"

    def _repr_pretty_(self, p, cycle):
        if cycle:
            p.text(f"<Report {self.model}>")
        else:
            p.text(str(self))

    def output(self) -> str:
        """Every worker's stdout and stderr, grouped under one header each,
        in worker order; workers with no output are left out::

            [stdout:0] hello from 0
            [stderr:1]
                first line
                second line
        """
        blocks = []
        for w in self._ordered():
            for stream in ("stdout", "stderr"):
                text = getattr(w, stream) or ""
                text = text.rstrip("\n")
                if not text.strip():
                    continue
                head = f"[{stream}:{w.worker_id}]"
                if "\n" in text:
                    body = "\n".join("    " + line if line else line for line in text.split("\n"))
                    blocks.append(f"{head}\n{body}")
                else:
                    blocks.append(f"{head} {text}")
        return "\n".join(blocks)

    # --- HTML ---------------------------------------------------------------
    def _repr_html_(self):
        esc = html.escape
        header, rows = self._rows(width=_CELL_WIDTH)
        right = ' style="text-align:right"'
        out = ['<div class="concmagic">', '<table class="concmagic-report">']
        out.append(f'<caption style="text-align:left">{esc(self.summary())}</caption>')
        out.append("<thead><tr>" + "".join(
            f"<th{right if i < len(header) - 1 else ''}>{esc(h)}</th>" for i, h in enumerate(header)
        ) + "</tr></thead>")
        out.append("<tbody>")
        for w, row in zip(self._ordered(), rows):
            if w.ok:
                tr = "<tr>"
            else:
                tip = esc(w.traceback or error_line(w.error), quote=True)
                tr = f'<tr class="concmagic-failed" style="background-color:#fdd" title="{tip}">'
            cells = [f"<td{right}>{esc(c)}</td>" for c in row[:-1]]
            cells.append(f'<td style="text-align:left"><code>{esc(row[-1])}</code></td>')
            out.append(tr + "".join(cells) + "</tr>")
        out.append("</tbody>")
        out.append("</table>")
        if self.shipping is not None:
            out.append('<p class="concmagic-shipping">'
                       + "<br/>".join(esc(line) for line in self.shipping.lines()) + "</p>")
        failure = self._failure_line()
        notes = ([failure] if failure else []) + self.notes
        if notes:
            out.append('<ul class="concmagic-notes">'
                       + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
        picture = self._timeline_img()
        if picture:
            out.append(f"<div>{picture}</div>")
        for w in self.failed:
            tb = w.traceback or error_line(w.error)
            out.append(f"<details><summary>worker {w.worker_id}: {esc(error_line(w.error, 80))}"
                       f"</summary><pre>{esc(tb)}</pre></details>")
        text = self.output()
        if text:
            out.append(f'<details open><summary>output</summary><pre>{esc(text)}</pre></details>')
        out.append("</div>")
        return "\n".join(out)

    def _timeline_img(self):
        """The timeline as an inline ``<img>``, or "" when there is nothing to
        draw or no matplotlib. Never raises: the table matters more than the
        picture, and a repr that raises shows the user nothing at all."""
        if self.samples is None or not self.wall >= TIMELINE_MIN_WALL:
            return ""
        data = self.__dict__.get("_timeline_png")     # drawn once per report
        if data is None:
            try:
                import base64

                from .plot import figure_png, plot_report

                ax = plot_report(self)
                data = base64.b64encode(figure_png(ax.figure, dpi=_HTML_DPI)).decode("ascii")
            except Exception:
                data = ""
            self.__dict__["_timeline_png"] = data
        if not data:
            return ""
        alt = html.escape(f"timeline: {self.summary()}", quote=True)
        return (f'<img class="concmagic-timeline" alt="{alt}" style="max-width:100%" '
                f'src="data:image/png;base64,{data}"/>')

    # --- pictures -----------------------------------------------------------
    def plot(self, ax=None, path=None):
        """Draw the per-worker timeline and return its Axes (needs matplotlib).

        One lane per worker, shaded by the CPU it got over time, with the
        GIL-wait strip beneath (see `concmagic.plot.plot_report`). ``ax``:
        draw there; ``path``: also save the figure (.png, .svg, ... by suffix).
        """
        from .plot import plot_report, save

        ax = plot_report(self, ax=ax)
        if path is not None:
            save(ax, path)
        return ax

    # --- data ---------------------------------------------------------------
    def to_dict(self) -> dict:
        """A plain, JSON-able summary: numbers, repr'd results, error lines.
        Values not measured are None."""
        return {
            "model": self.model,
            "n_workers": self.n_workers,
            "wall": _nan_to_none(self.wall),
            "cpu": _nan_to_none(self.cpu),
            "cpu_parallelism": _nan_to_none(self.cpu_parallelism),
            "gil_wait": _nan_to_none(self.gil_wait),
            "gil_enabled": self.gil_enabled,
            "ok": self.ok,
            "notes": list(self.notes),
            "shipping": None if self.shipping is None else self.shipping.to_dict(),
            "workers": [w.to_dict() for w in self._ordered()],
        }
