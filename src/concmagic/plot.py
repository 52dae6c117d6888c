"""Pictures of a run: the per-worker timeline in which the GIL becomes visible.

    plot_report(report)          one lane per worker, shaded by the CPU it got
                                 over time; beneath, the GIL-wait strip
    plot_comparison(comparison)  the same timelines side by side, one per model
    figure_png(fig) / save(...)  bytes for HTML, or a file (png, svg, pdf)

What the reader sees::

    worker 0 |  ▓▓░░▓▓░░▓▓░░▓▓░░▓▓  |     threads, pure Python: the lanes take
    worker 1 |  ░░▓▓░░▓▓░░▓▓░░▓▓░░  |     turns (about half a core each), and
    GIL wait |  ████████████████████|     the GIL strip beneath is full
                                           (it is busy the whole time)

    worker 0 |  ████████████████████|     threads, a `nogil` kernel: every
    worker 1 |  ████████████████████|     lane fully shaded at once; the GIL
    GIL wait |  ____________________|     strip stays empty

A lane is light grey where its worker was not running yet (start-up) or any
more; within its ``[start, end]`` (outlined) the shade is its CPU share, from
white (no CPU: waiting) to dark (a full core). A failed worker's outline is red.

Only matplotlib's object API is used (``matplotlib.figure.Figure``, never
pyplot), so nothing depends on a display or on pyplot's global figure list,
and nothing is shown or closed behind the caller's back. matplotlib is
imported on first use: the engine and the reports work without it.
"""
from __future__ import annotations

import io
import math
import textwrap

import numpy as np

from .report import _UNITS, format_time

__all__ = ["plot_report", "plot_comparison", "figure_png", "save", "lane_series", "gil_strip"]

# --- what the picture looks like, named once -------------------------------
#: Sequential colormap for CPU share: its 0 is (near) white, so "no CPU" reads as empty.
CMAP = "Blues"
#: A lane where its worker was not running (before start, after end).
IDLE_COLOR = "#ececec"
#: Lanes when nothing was sampled: the worker's [start, end] only, one flat colour.
FLAT_COLOR = "#9ecae1"
OUTLINE_COLOR = "#404040"
FAILED_COLOR = "#d62728"
GIL_COLOR = "#e6550d"
#: Fraction of a lane's unit height that is drawn (the rest is the gap between lanes).
LANE_HEIGHT = 0.72
#: About this many shaded cells across a lane: finer than a 5 ms switch interval
#: for runs under a second (the GIL's turn-taking shows as stripes), coarse
#: enough that a long run still draws quickly.
TARGET_BINS = 400
#: Points of the labels written inside lanes.
SMALL_PT = 7.5
#: A CPU clock that moves in scheduler ticks is averaged over this many ticks.
TICK_SMOOTHING = 3
#: Gaps in the GIL series (probe bins with no probe in them) up to this many
#: bins long are bridged when drawn.
GIL_GAP_BRIDGE = 2
#: GIL strip: inches tall, and inches between it and the lanes.
GIL_STRIP_IN = 0.42
GIL_GAP_IN = 0.08
#: Inches per lane in a figure we make (shrinks for many workers), and the
#: least height of all lanes together (room for the colorbar's label).
LANE_IN = 0.42
MIN_LANES_IN = 1.0
#: Width of a one-report figure we make; HTML shows it at `figure_png`'s dpi.
FIG_WIDTH_IN = 8.0
COLORBAR_LABEL = "CPU share\n(1 = one full core)"
#: Time scales of different models are drawn on one x axis only when the
#: longest run is at most this many times the shortest; past that the short
#: runs would be slivers.
SHAREX_MAX_RATIO = 20.0


def _mpl():
    """matplotlib, or an ImportError that says how to get it."""
    try:
        import matplotlib
        from matplotlib.figure import Figure  # noqa: F401  (fails where matplotlib is a stub)
    except ImportError as exc:
        raise ImportError(
            "concmagic's plots need matplotlib, which is not installed: "
            "pip install 'concmagic[plot]'") from exc
    return matplotlib


# ---------------------------------------------------------------------------
# Data: what a lane and the GIL strip show (no matplotlib here)
# ---------------------------------------------------------------------------
def _bin_edges(report, bins=TARGET_BINS):
    """Shared time bins for all lanes: [0, wall], at least one sample interval wide."""
    s = report.samples
    wall = _extent(report)
    width = wall / bins
    if s is not None and len(s.t) > 1:
        width = max(width, float(np.median(np.diff(s.t))))
    n = max(1, int(math.ceil(wall / width)))
    return np.linspace(0.0, n * width, n + 1)


def _extent(report):
    """The x range to draw: the wall time, or the last worker end if later."""
    ends = [w.end for w in report.workers if w.end is not None and math.isfinite(w.end)]
    wall = report.wall if report.wall is not None and math.isfinite(report.wall) else 0.0
    wall = max([wall] + ends)
    return wall if wall > 0 else 1.0


def _cpu_knots(t, c, start=None, end=None, cpu=None):
    """Knots of a worker's cumulative CPU clock, for interpolation.

    Some clocks advance in ticks: another process's CPU clock on Linux moves
    in steps of a scheduler tick (4 ms at HZ=250) although it is read every
    millisecond, so raw differences read 0, 0, 0, 4 cores. A jump of J CPU
    seconds at time t says the CPU was used since the previous jump, at most
    one core's worth, so we put it in [max(previous jump, t - J), t] and hold
    the clock flat before that, unless that flat part is shorter than about
    a sample interval (then it is jitter between the tick and the sampler,
    not a pause: spread J evenly). For a clock that moves every sample (a
    thread's) this changes nothing but where in a sample interval a resume or
    a pause falls.

    The sampler's first reading of a worker may come a few milliseconds
    after the worker started (it registers itself, then waits for the next
    sample). Given the worker's ``start``/``end`` and its measured ``cpu``,
    the CPU the samples missed at either end is put back there, again at
    most one core's worth.
    """
    keep = np.isfinite(c)
    t, c = t[keep], c[keep]
    if len(t) < 2:
        return t, c
    moved = np.concatenate(([True], np.diff(c) > 0))
    tk, ck = t[moved], c[moved]
    if len(tk) < 2:
        return t[[0, -1]], c[[0, -1]]
    jump = np.diff(ck)
    slack = 1.5 * float(np.median(np.diff(t)))
    before = tk[1:] - jump
    before = np.where(before - tk[:-1] < slack, tk[:-1], before)
    kt = np.empty(2 * len(tk) - 1)
    kc = np.empty_like(kt)
    kt[0], kc[0] = tk[0], ck[0]
    kt[1::2], kc[1::2] = before, ck[:-1]
    kt[2::2], kc[2::2] = tk[1:], ck[1:]
    # the clock holds its last value to the end of the samples
    if t[-1] > kt[-1]:
        kt, kc = np.append(kt, t[-1]), np.append(kc, ck[-1])
    if start is None or cpu is None or not (math.isfinite(start) and math.isfinite(end)
                                             and math.isfinite(cpu)):
        return kt, kc
    # CPU used before the first reading or after the last, from the runner's total
    gap_before = max(0.0, min(t[0], end) - start)
    gap_after = max(0.0, end - max(t[-1], start))
    if gap_before + gap_after <= 0:
        return kt, kc
    seen = np.interp(min(end, t[-1]), kt, kc) - np.interp(max(start, t[0]), kt, kc)
    missing = max(0.0, cpu - seen)
    before = min(gap_before, missing * gap_before / (gap_before + gap_after))
    after = min(gap_after, missing - before)
    if before > 0:
        kt = np.concatenate(([kt[0] - before], kt))
        kc = np.concatenate(([kc[0] - before], kc))
    if after > 0:
        kt, kc = np.append(kt, kt[-1] + after), np.append(kc, kc[-1] + after)
    return kt, kc


def lane_series(report, worker, edges=None):
    """``(edges, share)`` for one worker: CPU share per time bin (nan = not running).

    ``share[k]`` is the worker's CPU seconds in ``[edges[k], edges[k+1]]``,
    counted only within its own ``[start, end]`` (in a serial run every worker's
    clock is the one thread's), per wall second of the bin. Outside
    ``[start, end]`` it is nan. Returns ``share`` None when the worker has no
    CPU samples.
    """
    if edges is None:
        edges = _bin_edges(report)
    s = report.samples
    slot = worker.worker_id
    if s is None or slot >= s.n_slots or np.isfinite(s.cpu[:, slot]).sum() < 2:
        return edges, None
    start = worker.start if math.isfinite(worker.start) else edges[0]
    end = worker.end if math.isfinite(worker.end) else edges[-1]
    kt, kc = _cpu_knots(np.asarray(s.t, float), np.asarray(s.cpu[:, slot], float),
                        start, end, worker.cpu)
    lo = np.clip(edges[:-1], start, end)
    hi = np.clip(edges[1:], start, end)
    used = np.interp(hi, kt, kc) - np.interp(lo, kt, kc)
    share = np.clip(used / np.diff(edges), 0.0, None)
    share[hi <= lo] = np.nan
    # A clock that moves in ticks still ripples: read every 1.07 ms, 4 ms
    # ticks are seen 3.2 or 4.3 ms apart, so a busy worker would read 0.94,
    # 1.25, 0.94, ... Averaged over TICK_SMOOTHING ticks it reads even.
    tick = _clock_tick(np.asarray(s.t, float), np.asarray(s.cpu[:, slot], float))
    k = int(round(TICK_SMOOTHING * tick / (edges[1] - edges[0])))
    if k > 1:
        share = _moving_mean(share, k)
    return edges, share


def _clock_tick(t, c):
    """The step a CPU clock moves in: about a sample interval for a thread's
    clock, a scheduler tick (4 ms at HZ=250) for another process's."""
    keep = np.isfinite(c)
    t, c = t[keep], c[keep]
    if len(t) < 3:
        return 0.0
    dt = float(np.median(np.diff(t)))
    dc = np.diff(c)
    dc = dc[dc > 0]
    if len(dc) == 0:
        return 0.0
    tick = float(np.median(dc))
    return tick if tick > 1.5 * dt else 0.0


def _moving_mean(x, k):
    """Centred mean over k bins of the finite values; nan stays nan."""
    ok = np.isfinite(x)
    kernel = np.ones(k)
    total = np.convolve(np.where(ok, x, 0.0), kernel, mode="same")
    count = np.convolve(ok.astype(float), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total / count
    out[~ok] = np.nan
    return out


def gil_strip(report, edges=None):
    """``(edges, fraction)``: GIL-wait fraction per time bin, or None if not measured.

    The probe files each probe under the bin where it *asked* for the GIL;
    a wait of 15 ms then lands in one bin and leaves the next two empty. So
    each bin's record is spread over ``max(its probing time, bin width)``
    from its start before re-binning: a GIL held busy reads busy throughout,
    not as a comb of gaps.
    """
    s = report.samples
    if s is None or len(getattr(s, "gil_t", ())) == 0:
        return None
    t0 = np.asarray(s.gil_t, float)
    wait = np.asarray(s.gil_wait, float)
    span = np.asarray(s.gil_span, float)
    keep = span > 0
    if not keep.any():
        return None
    t0, wait, span = t0[keep], wait[keep], span[keep]
    bin_width = float(np.median(np.diff(s.gil_t))) if len(s.gil_t) > 1 else float(span.max())
    length = np.maximum(span, bin_width)
    if edges is None:
        edges = _bin_edges(report)
    # Coarser than the probe bins: a fraction over a few probes, not one.
    step = max(1, int(round(bin_width / (edges[1] - edges[0]))))
    edges = edges[::step] if len(edges[::step]) > 1 else edges

    def cumulative(total):
        # sum over records of total * (share of the record's interval before each edge)
        frac = np.clip((edges[:, None] - t0[None, :]) / length[None, :], 0.0, 1.0)
        return frac @ total

    w = np.diff(cumulative(wait))
    sp = np.diff(cumulative(span))
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = np.where(sp > 1e-9, w / sp, np.nan)
    return edges, np.clip(fraction, 0.0, 1.0)


# ---------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------
def _time_unit(extent):
    """(name, seconds per unit) chosen once for an axis, from format_time."""
    name = format_time(extent).split()[-1]
    for unit, scale in _UNITS:
        if unit == name or (unit == "us" and name in ("\u00b5s", "us")):
            return name, scale
    return "s", 1.0


def _format_time_axis(ax, extent):
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    unit, scale = _time_unit(extent)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=8, steps=[1, 2, 2.5, 5, 10]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, pos: "%g" % round(x / scale, 9)))
    ax.set_xlabel(f"time since the run started ({unit})")


def _lane_label(report, w, short=False):
    if report.model == "threads" and w.thread_id is not None:
        where = f"thread {w.thread_id}"
    elif w.pid is not None:
        where = f"{w.host}:{w.pid}" if w.host else f"pid {w.pid}"
    else:
        where = ""
    if short:
        return f"worker {w.worker_id}" + (f"\n{where}" if where else "")
    return f"worker {w.worker_id}" + (f" ({where})" if where else "")


def _has_samples(report):
    s = report.samples
    return s is not None and len(getattr(s, "t", ())) > 1


def _fits(ax, fraction, text, pt=SMALL_PT):
    """Whether ``text`` fits in ``fraction`` of the axes' width, with room to spare."""
    fig = ax.get_figure()
    width_in = ax.get_position().width * fig.get_size_inches()[0] * fraction
    # DejaVu Sans averages about 0.6 em a character; keep a quarter spare
    return len(text) * 0.6 * pt / 72 * 1.25 < width_in


def _draw_lanes(ax, report, cmap, norm, short_labels=False):
    """One lane per worker; returns the lane outline patches (worker order)."""
    from matplotlib.patches import Rectangle

    extent = _extent(report)
    edges = _bin_edges(report)
    half = LANE_HEIGHT / 2
    sampled = _has_samples(report)
    outlines = []
    for lane, w in enumerate(report._ordered()):
        y0 = lane - half
        # the track: the whole run, grey where the worker is not running
        ax.add_patch(Rectangle((0, y0), extent, LANE_HEIGHT, facecolor=IDLE_COLOR,
                               edgecolor="none", zorder=0))
        start = w.start if math.isfinite(w.start) else 0.0
        end = w.end if math.isfinite(w.end) else extent
        share = lane_series(report, w, edges)[1] if sampled else None
        if share is not None:
            ax.pcolormesh(edges, [y0, y0 + LANE_HEIGHT], np.ma.masked_invalid(share)[None, :],
                          cmap=cmap, norm=norm, shading="flat", zorder=1,
                          rasterized=True, antialiased=False)
        else:
            # no CPU samples: the worker's [start, end] in one flat colour (hatched
            # inside a sampled run, where flat colour would read as a CPU share)
            ax.add_patch(Rectangle((start, y0), max(end - start, 0), LANE_HEIGHT,
                                   facecolor=FLAT_COLOR if not sampled else "white",
                                   hatch=None if not sampled else "///",
                                   edgecolor=FLAT_COLOR if sampled else "none", lw=0, zorder=1))
            if sampled:
                ax.text(start + (end - start) / 2, lane, "no CPU samples", ha="center",
                        va="center", fontsize="x-small", color=OUTLINE_COLOR, zorder=4)
        # The grey before a lane is its start-up cost (in a serial run: its
        # wait for the workers before it); say how long, where the words fit.
        words = f"{'waiting' if report.model == 'serial' else 'start-up'} {format_time(start)}"
        if _fits(ax, start / extent, words):
            ax.text(start / 2, lane, words, ha="center", va="center", fontsize=SMALL_PT,
                    color="#707070", zorder=4)
        failed = not w.ok
        outline = Rectangle((start, y0), max(end - start, 0), LANE_HEIGHT, fill=False,
                            edgecolor=FAILED_COLOR if failed else OUTLINE_COLOR,
                            lw=1.8 if failed else 0.9, zorder=3,
                            label=f"worker {w.worker_id}" + (" (failed)" if failed else ""))
        outline.set_gid(f"concmagic-lane-{w.worker_id}")
        ax.add_patch(outline)
        outlines.append(outline)
        if failed:
            name = type(w.error).__name__
            # the label goes after the lane's end if there is room, else inside it
            inside = end > 0.75 * extent
            ax.text(end - 0.01 * extent if inside else end + 0.01 * extent, lane,
                    f"failed: {name}", ha="right" if inside else "left", va="center",
                    fontsize="small", color=FAILED_COLOR, fontweight="bold", zorder=5,
                    bbox=dict(facecolor="white", edgecolor="none", alpha=0.8, pad=1))
    n = len(report.workers)
    ax.set_yticks(range(n), [_lane_label(report, w, short_labels) for w in report._ordered()],
                  **({"fontsize": "small"} if short_labels else {}))
    ax.set_ylim(max(n, 1) - 0.5, -0.5)    # worker 0 on top
    ax.set_xlim(0, extent)
    ax.tick_params(axis="y", length=0)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    return outlines


def _style_gil_axes(gax):
    gax.set_ylim(0, 1.05)
    gax.set_yticks([0, 1], ["0", "1"], fontsize="x-small")
    gax.set_ylabel("GIL\nwait", rotation=0, ha="right", va="center", fontsize="small",
                   labelpad=4)
    for side in ("top", "right"):
        gax.spines[side].set_visible(False)
    gax.set_gid("concmagic-gil")


def _draw_no_gil(gax, report):
    """The strip's place in a comparison, for a run whose GIL was not probed."""
    _style_gil_axes(gax)
    why = ("not probed: each process has its own GIL" if report.model == "processes"
           else "not probed")
    gax.text(0.5, 0.5, why, transform=gax.transAxes, ha="center", va="center",
             fontsize="x-small", color=OUTLINE_COLOR)
    gax.set_yticks([])


def _draw_gil(gax, report):
    edges, fraction = gil_strip(report)
    fraction = _bridge_gaps(fraction, GIL_GAP_BRIDGE)
    # steps: each bin's value across the bin
    x = np.repeat(edges, 2)[1:-1]
    y = np.repeat(np.nan_to_num(fraction, nan=0.0), 2)
    gax.fill_between(x, 0, y, color=GIL_COLOR, alpha=0.55, lw=0, step=None)
    gax.plot(x, np.repeat(fraction, 2), color=GIL_COLOR, lw=0.8)
    _style_gil_axes(gax)


def _bridge_gaps(x, longest):
    """Fill runs of up to ``longest`` nan between values with the value before:
    a probe descheduled for a moment is no news; a long gap stays a gap."""
    x = np.array(x, dtype=float)
    bad = np.isnan(x)
    k = 0
    while k < len(x):
        if not bad[k]:
            k += 1
            continue
        j = k
        while j < len(x) and bad[j]:
            j += 1
        if 0 < k and j < len(x) and j - k <= longest:
            x[k:j] = x[k - 1]
        k = j
    return x


def _wrap_summary(text, width):
    """Break a summary line at its commas, never inside a part."""
    lines, line = [], ""
    for part in text.split(", "):
        candidate = f"{line}, {part}" if line else part
        if line and len(candidate) > width:
            lines.append(line + ",")
            line = part
        else:
            line = candidate
    lines.append(line)
    return "\n".join(lines)


def _lanes_height_in(n):
    """Inches for n lanes in a figure we make (thinner lanes for many workers)."""
    lane_in = LANE_IN if n <= 16 else max(0.12, LANE_IN * 16 / n)
    return max(lane_in * n, MIN_LANES_IN)


def _add_colorbar(fig, norm, cmap, *, ax=None, cax=None):
    from matplotlib.cm import ScalarMappable

    kw = dict(cax=cax) if cax is not None else dict(ax=ax, fraction=0.025, pad=0.015, aspect=12)
    cb = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), **kw)
    cb.set_label(COLORBAR_LABEL, fontsize="small")
    cb.set_ticks([0, 0.25, 0.5, 0.75, 1.0], labels=["0", "", "0.5", "", "1"])
    cb.ax.tick_params(labelsize="x-small")
    return cb


def _draw_report(report, ax, gax, *, title, short_labels=False):
    """Lanes on ``ax``, GIL strip on ``gax`` (None: no strip); x axis formatted."""
    mpl = _mpl()
    from matplotlib.colors import Normalize

    cmap, norm = mpl.colormaps[CMAP], Normalize(0.0, 1.0)
    _draw_lanes(ax, report, cmap, norm, short_labels=short_labels)
    extent = _extent(report)
    bottom = ax
    if gax is not None:
        if gil_strip(report) is not None:
            _draw_gil(gax, report)
        else:
            _draw_no_gil(gax, report)
        ax.tick_params(axis="x", labelbottom=False)
        bottom = gax
    _format_time_axis(bottom, extent)
    if title is None:
        title = report.summary()
        if not _has_samples(report):
            title += ", no CPU samples: each worker's start to end only"
    if title:
        width_in = ax.get_position().width * ax.get_figure().get_size_inches()[0]
        ax.set_title(_wrap_summary(title, max(30, int(width_in * 12))) if "\n" not in title
                     else title, fontsize="medium", loc="left")
    return cmap, norm


def plot_report(report, ax=None, *, title=None, colorbar=True):
    """Draw ``report``'s timeline and return the Axes holding the lanes.

    One horizontal lane per worker (worker 0 on top), x in seconds since the
    run's start, shaded by the worker's CPU share over time (0 white, 1 a full
    core); each worker's ``[start, end]`` outlined, a failed worker's in red
    and labelled. Beneath, where the GIL was probed, a strip of the GIL-wait
    fraction on the same x axis. Without samples, each worker's
    ``[start, end]`` in one flat colour.

    ``ax``: draw the lanes there; the GIL strip and the colorbar become inset
    axes of it. Otherwise a new Figure is made (reach it as ``ax.figure``).
    ``title``: default ``report.summary()``; ``""`` for none.
    """
    _mpl()
    gil = gil_strip(report) is not None
    sampled = _has_samples(report)
    own = ax is None
    if own:
        from matplotlib.figure import Figure

        lanes_in = _lanes_height_in(len(report.workers))
        height = lanes_in + 1.0 + (GIL_STRIP_IN + GIL_GAP_IN if gil else 0)
        fig = Figure(figsize=(FIG_WIDTH_IN, height), layout="constrained")
        if gil:
            gs = fig.add_gridspec(2, 1, height_ratios=[lanes_in, GIL_STRIP_IN])
            ax = fig.add_subplot(gs[0])
            gax = fig.add_subplot(gs[1], sharex=ax)
        else:
            ax, gax = fig.add_subplot(), None
    else:
        fig = ax.get_figure()
        gax = None
        if gil:
            # sized in inches from the axes as they are now
            h_in = max(ax.get_position().height * fig.get_size_inches()[1], 0.3)
            h, gap = GIL_STRIP_IN / h_in, GIL_GAP_IN / h_in
            gax = ax.inset_axes([0, -gap - h, 1, h], sharex=ax)
    cmap, norm = _draw_report(report, ax, gax, title=title)
    if colorbar and sampled:
        if own:
            _add_colorbar(fig, norm, cmap, ax=[ax] + ([gax] if gax is not None else []))
        else:
            _add_colorbar(fig, norm, cmap, cax=ax.inset_axes([1.015, 0.0, 0.015, 1.0]))
    return ax


def plot_comparison(comparison, path=None, *, models=None):
    """The timelines of ``comparison.reports`` side by side, one column per model.

    Columns share one x scale (seconds) unless the runs differ by more than
    SHAREX_MAX_RATIO times; one colorbar for all. The suptitle carries
    ``comparison.verdict`` when there is one. Saved to ``path`` if given;
    returns the Figure.
    """
    mpl = _mpl()
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    reports = dict(getattr(comparison, "reports", comparison))
    if models is not None:
        missing = [m for m in models if m not in reports]
        if missing:
            raise ValueError(f"models not in this comparison: {missing}; "
                             f"it has {list(reports)}")
        reports = {m: reports[m] for m in models}
    if not reports:
        raise ValueError("nothing to plot: the comparison has no reports")
    n = max(max(len(r.workers) for r in reports.values()), 1)
    gil = any(gil_strip(r) is not None for r in reports.values())
    lanes_in = _lanes_height_in(n)
    k = len(reports)
    height = lanes_in + 1.9 + (GIL_STRIP_IN + GIL_GAP_IN if gil else 0)
    fig = Figure(figsize=(max(3.6 * k + 1.2, FIG_WIDTH_IN), height), layout="constrained")
    extents = [_extent(r) for r in reports.values()]
    share = max(extents) / max(min(extents), 1e-12) <= SHAREX_MAX_RATIO
    gs = fig.add_gridspec(2 if gil else 1, k,
                          height_ratios=[lanes_in, GIL_STRIP_IN] if gil else None)
    first = None
    bottoms = []
    for j, (model, report) in enumerate(reports.items()):
        ax = fig.add_subplot(gs[0, j], sharex=first if share else None)
        gax = fig.add_subplot(gs[1, j], sharex=ax) if gil else None
        first = first or ax
        head = report.summary()
        if head.startswith(model + ": "):
            head = head[len(model) + 2:]
        _draw_report(report, ax, gax, title=model + "\n" + _wrap_summary(head, 36),
                     short_labels=True)
        bottoms.append(gax if gax is not None else ax)
    if share:
        first.set_xlim(0, max(extents))
        # shared axes share one tick formatter: one unit for all, from the longest run
        for bottom in bottoms:
            _format_time_axis(bottom, max(extents))
    if any(_has_samples(r) for r in reports.values()):
        _add_colorbar(fig, Normalize(0.0, 1.0), mpl.colormaps[CMAP], ax=list(fig.axes))
    verdict = getattr(comparison, "verdict", None)
    n_workers = max(r.n_workers for r in reports.values())
    head = f"{n_workers} workers: " + " vs ".join(reports)
    if verdict:
        # the verdict names its figures and can run long: wrap to the figure
        width = int(fig.get_size_inches()[0] * 12)
        head += "\n" + "\n".join(textwrap.fill(line, width) for line in str(verdict).splitlines())
    fig.suptitle(head, fontsize="medium")
    if path is not None:
        save(fig, path)
    return fig


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------
def _root_figure(fig_or_ax):
    from matplotlib.figure import Figure

    fig = fig_or_ax
    while fig is not None and not isinstance(fig, Figure):
        fig = getattr(fig, "figure", None)
    if fig is None:
        raise TypeError(f"expected a matplotlib Figure or Axes; got {type(fig_or_ax).__name__}")
    return fig


def _bbox(fig):
    # A constrained layout already keeps everything on the canvas; "tight"
    # would draw the figure twice (half the time of an HTML repr). Without
    # one (a caller's figure), "tight" keeps insets hanging off an Axes.
    return None if fig.get_layout_engine() is not None else "tight"


def figure_png(fig, dpi=80) -> bytes:
    """The figure (or an Axes' figure) as PNG bytes."""
    _mpl()
    buf = io.BytesIO()
    fig = _root_figure(fig)
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches=_bbox(fig))
    return buf.getvalue()


def save(fig_or_ax, path, dpi=110):
    """Write the figure holding ``fig_or_ax`` to ``path`` (format from the suffix:
    .png, .svg, .pdf, ...). Closes nothing: the figure stays the caller's."""
    _mpl()
    import os

    fig = _root_figure(fig_or_ax)
    fig.savefig(os.fspath(path), dpi=dpi, bbox_inches=_bbox(fig))
    return path
