"""The timeline pictures: one lane per worker, the GIL strip, HTML embedding.

Real runs (short busy loops) give real samples for each model; hand-built
reports cover what a run rarely shows (no samples, a failed worker, a worker
the sampler never read). Drawing goes through matplotlib's Agg canvas only.
"""
import math
import sys
import time

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

import concmagic  # noqa: E402
from concmagic import plot  # noqa: E402
from concmagic.measure import Samples  # noqa: E402
from concmagic.report import Report, WorkerRun  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _busy(worker_id, n_workers):
    t = time.perf_counter()
    x = 0
    while time.perf_counter() - t < 0.03:
        x += 1
    return worker_id


@pytest.fixture(scope="module")
def reports():
    """One real, measured run per model, 2 workers each."""
    return {model: concmagic.run(_busy, 2, model) for model in ("serial", "threads", "processes")}


def _lanes(ax):
    """The lane outlines plot.py tags, in worker order."""
    return [p for p in ax.patches if (p.get_gid() or "").startswith("concmagic-lane-")]


def _hand_report(n=3, samples=True, fail=(), model="threads"):
    """A report with made-up samples: worker i busy on a full core in [start, end]."""
    workers = []
    for i in range(n):
        w = WorkerRun(i, pid=100, thread_id=200 + i, start=0.01 * i, end=0.2 + 0.01 * i,
                      cpu=0.19, result=i)
        if i in fail:
            w.result, w.error = None, ValueError(f"bad value in worker {i}")
        workers.append(w)
    s = None
    if samples:
        t = np.arange(0, 0.25, 0.001)
        cpu = np.stack([np.clip(t - w.start, 0, w.end - w.start) for w in workers], axis=1)
        gil_t = np.arange(0, 0.25, 0.005)
        s = Samples(t, cpu, 0.001, gil_t, np.full(len(gil_t), 0.0045), np.full(len(gil_t), 0.005),
                    0.9)
    return Report(model, n, wall=0.25, workers=workers, gil_wait=0.9 if samples else None,
                  samples=s)


# ---------------------------------------------------------------------------
# Real runs, every model
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["serial", "threads", "processes"])
def test_plot_has_one_lane_per_worker(reports, model):
    report = reports[model]
    assert report.samples is not None
    ax = plot.plot_report(report)
    assert len(_lanes(ax)) == report.n_workers
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0].startswith("worker 0 (") and labels[1].startswith("worker 1 (")
    assert ax.get_title(loc="left").startswith(f"{model}: 2 workers")
    png = plot.figure_png(ax.figure)
    assert png.startswith(PNG_MAGIC)
    # the GIL strip is drawn where this process's GIL was probed, not for processes
    has_strip = any(a.get_gid() == "concmagic-gil" for a in ax.figure.axes)
    assert has_strip == (model != "processes")


@pytest.mark.parametrize("model", ["serial", "threads", "processes"])
def test_html_embeds_the_timeline(reports, model):
    text = reports[model]._repr_html_()
    assert "<table" in text
    assert "<img" in text and "data:image/png;base64," in text


def test_lane_shares_add_up_to_measured_cpu(reports):
    # The shading is the CPU the worker used: summed over its lane it must
    # come back to the runner's own CPU figure (within sampling slack).
    report = reports["threads"]
    for w in report.workers:
        edges, share = plot.lane_series(report, w)
        used = np.nansum(share * np.diff(edges))
        assert used == pytest.approx(w.cpu, abs=0.006), (w.worker_id, used, w.cpu)


def test_serial_lanes_only_count_their_own_turn(reports):
    # Serial workers share one thread's clock: worker 1's lane must be empty
    # (nan, not running) while worker 0 ran.
    report = reports["serial"]
    w0, w1 = report._ordered()
    edges, share = plot.lane_series(report, w1)
    before = edges[1:] <= w1.start
    assert before.any() and np.isnan(share[before]).all()


# ---------------------------------------------------------------------------
# Hand-built reports: the cases a run rarely gives
# ---------------------------------------------------------------------------
def test_without_samples_draws_start_to_end_only():
    report = _hand_report(samples=False)
    ax = plot.plot_report(report)
    assert len(_lanes(ax)) == 3
    assert not any(a.get_gid() == "concmagic-gil" for a in ax.figure.axes)
    assert "no CPU samples" in ax.get_title(loc="left")
    assert plot.figure_png(ax).startswith(PNG_MAGIC)
    # and the HTML keeps its table, without a picture
    text = report._repr_html_()
    assert "<table" in text and "<img" not in text


def test_failed_worker_is_marked():
    report = _hand_report(fail=(1,))
    ax = plot.plot_report(report)
    lanes = _lanes(ax)
    red = matplotlib.colors.to_rgba(plot.FAILED_COLOR)
    assert [lane.get_edgecolor() == red for lane in lanes] == [False, True, False]
    assert any(t.get_text() == "failed: ValueError" for t in ax.texts)


def test_worker_without_samples_gets_a_plain_lane():
    report = _hand_report()
    report.samples.cpu[:, 2] = np.nan           # the sampler never read worker 2
    ax = plot.plot_report(report)
    assert len(_lanes(ax)) == 3
    assert plot.lane_series(report, report.workers[2])[1] is None
    assert any(t.get_text() == "no CPU samples" for t in ax.texts)


def test_hand_samples_read_as_full_core():
    report = _hand_report(n=1)
    edges, share = plot.lane_series(report, report.workers[0])
    inside = (edges[:-1] >= 0.01) & (edges[1:] <= 0.19)
    assert np.allclose(share[inside], 1.0)
    _, fraction = plot.gil_strip(report)
    assert np.nanmean(fraction) == pytest.approx(0.9, abs=0.05)


def test_tick_quantized_clock_is_smoothed():
    # Another process's CPU clock moves in 4 ms ticks though read every 1 ms:
    # a busy worker must still read about one core, not stripes of 0 and 4.
    t = np.arange(0, 0.2, 0.00105)
    cpu = (np.floor(t / 0.004) * 0.004)[:, None]
    w = WorkerRun(0, pid=1, start=0.0, end=0.2, cpu=0.2)
    report = Report("processes", 1, wall=0.2, workers=[w],
                    samples=Samples(t, cpu, 0.001, np.empty(0), np.empty(0), np.empty(0), None))
    edges, share = plot.lane_series(report, w)
    inner = share[5:-10]
    assert np.median(inner) == pytest.approx(1.0, abs=0.05)
    assert (inner > 0.6).mean() > 0.95


def test_given_axes_is_drawn_on():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3))
    ax = fig.add_subplot()
    out = plot.plot_report(_hand_report(), ax=ax, title="mine")
    assert out is ax
    assert ax.get_title(loc="left") == "mine"
    assert len(_lanes(ax)) == 3
    assert any(a.get_gid() == "concmagic-gil" for a in ax.child_axes)
    assert plot.figure_png(fig).startswith(PNG_MAGIC)


# ---------------------------------------------------------------------------
# Report.plot, saving, and HTML without matplotlib
# ---------------------------------------------------------------------------
def test_report_plot_writes_png(tmp_path):
    path = tmp_path / "x.png"
    ax = _hand_report().plot(path=path)
    assert path.read_bytes().startswith(PNG_MAGIC)
    assert len(_lanes(ax)) == 3


def test_save_svg_by_suffix(tmp_path):
    path = tmp_path / "x.svg"
    plot.save(plot.plot_report(_hand_report()), path)
    assert b"<svg" in path.read_bytes()[:500]


def test_html_without_matplotlib(monkeypatch):
    report = _hand_report()
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    text = report._repr_html_()
    assert "<table" in text and "<img" not in text
    with pytest.raises(ImportError, match=r"pip install 'concmagic\[plot\]'"):
        report.plot()


def test_html_survives_a_failing_plot(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(plot, "plot_report", broken)
    text = _hand_report()._repr_html_()
    assert "<table" in text and "<img" not in text


# ---------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------
class _Comparison:
    def __init__(self, reports, verdict=None):
        self.reports = reports
        if verdict is not None:
            self.verdict = verdict


def test_plot_comparison_one_column_per_model(reports, tmp_path):
    path = tmp_path / "c.png"
    fig = plot.plot_comparison(_Comparison(dict(reports), verdict="processes win"), path)
    lane_axes = [a for a in fig.axes if _lanes(a)]
    assert len(lane_axes) == 3
    assert all(len(_lanes(a)) == 2 for a in lane_axes)
    assert "processes win" in fig.get_suptitle()
    assert path.read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize("wall, shared", [(1.5, True), (10.0, False)])
def test_plot_comparison_shares_time_scale_when_reasonable(wall, shared):
    # One x scale in seconds, so the shorter run looks shorter; unless one run
    # is more than SHAREX_MAX_RATIO times longer (a cold process pool), where
    # the short run would shrink to a sliver.
    long = _hand_report(samples=False)
    long.wall = wall
    fig = plot.plot_comparison(_Comparison({"threads": _hand_report(), "processes": long}))
    lane_axes = [a for a in fig.axes if _lanes(a)]
    assert (len({a.get_xlim() for a in lane_axes}) == 1) == shared
    # shared axes share one tick formatter, so they must say one unit
    labels = {a.get_xlabel() for a in fig.axes if a.get_xlabel()}
    assert len(labels) == (1 if shared else 2), labels


def test_plot_comparison_models_and_no_verdict(reports):
    fig = plot.plot_comparison(_Comparison(dict(reports)), models=["threads"])
    assert len([a for a in fig.axes if _lanes(a)]) == 1
    with pytest.raises(ValueError, match="asyncio"):
        plot.plot_comparison(_Comparison(dict(reports)), models=["asyncio"])


def test_time_axis_unit_from_format_time():
    assert plot._time_unit(0.405) == ("ms", 1e-3)
    assert plot._time_unit(12.0) == ("s", 1.0)
    assert math.isclose(plot._time_unit(0.0004)[1], 1e-6)
