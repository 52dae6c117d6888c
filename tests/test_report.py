"""Report objects and errors: wording, numbers, HTML, grouping of output.

No workers are started here: reports are built by hand, as runners build
them, so every number on screen can be checked against the one put in.
"""
import html.parser
import io
import json
import math
import pickle
import sys
import traceback

import pytest
from IPython.lib.pretty import pretty

from concmagic.errors import (
    ConcmagicError, RemoteTraceback, RunTimeout, ShipError, WorkerDied, WorkerError,
)
from concmagic.report import Report, WorkerRun, format_time


class _Stream(io.StringIO):
    """A stdout whose encoding we choose."""

    def __init__(self, encoding):
        super().__init__()
        self._encoding = encoding

    @property
    def encoding(self):
        return self._encoding


@pytest.fixture
def utf8_stdout(monkeypatch):
    monkeypatch.setattr(sys, "stdout", _Stream("utf-8"))


def _error_with_traceback(exc):
    try:
        raise exc
    except BaseException as caught:
        return caught, traceback.format_exc()


def _report(n=4, model="threads", fail=(), **kw):
    workers = []
    for i in range(n):
        w = WorkerRun(i, pid=4000 + i, thread_id=7000 + i, start=0.001 * (i + 1),
                      end=0.5 + 0.1 * i, cpu=0.25 + 0.01 * i, result=i * 10)
        if i in fail:
            w.result = None
            w.error, w.traceback = _error_with_traceback(ValueError(f"bad value in worker {i}"))
        workers.append(w)
    kw.setdefault("wall", 1.0)
    return Report(model, n, workers=workers, **kw)


# ---------------------------------------------------------------------------
# format_time
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("seconds, text", [
    (12.34, "12.3 s"),
    (1.0, "1 s"),
    (1.234e-3, "1.23 ms"),
    (0.5, "500 ms"),
    (456e-9, "456 ns"),
    (4.567e-6, "4.57 \u00b5s"),
    (0.99996, "1 s"),          # rounds up into the next unit, not "1e+03 ms"
    (999.96e-6, "1 ms"),
    (1234.5, "1234 s"),        # no scientific notation for long runs
    (0.0, "0 s"),
    (-0.25, "-250 ms"),
])
def test_format_time_units_and_digits(utf8_stdout, seconds, text):
    assert format_time(seconds) == text


def test_format_time_three_significant_digits(utf8_stdout):
    for seconds in (1.23456, 0.0123456, 123.456e-6, 987.654e-9):
        number = format_time(seconds).split()[0]
        assert len(number.replace(".", "")) == 3, (seconds, number)
    assert format_time(1.23456, precision=5) == "1.2346 s"


def test_format_time_not_measured():
    assert format_time(math.nan) == "-"
    assert format_time(None) == "-"


def test_format_time_ascii_fallback(monkeypatch):
    monkeypatch.setattr(sys, "stdout", _Stream("ascii"))
    assert format_time(4.567e-6) == "4.57 us"
    monkeypatch.setattr(sys, "stdout", _Stream(None))
    assert format_time(4.567e-6) == "4.57 us"
    monkeypatch.setattr(sys, "stdout", _Stream("utf-8"))
    assert format_time(4.567e-6) == "4.57 \u00b5s"


# ---------------------------------------------------------------------------
# WorkerRun and Report properties
# ---------------------------------------------------------------------------
def test_worker_run_properties():
    w = WorkerRun(3, start=0.25, end=1.0)
    assert w.ok and w.elapsed == 0.75
    assert math.isnan(WorkerRun(0).elapsed)
    w.error = RuntimeError("x")
    assert not w.ok


def test_report_results_in_worker_order_and_errors():
    report = _report(fail={2})
    # Runners may collect workers in completion order.
    report.workers.reverse()
    assert report.results == [0, 10, None, 30]
    assert list(report.errors) == [2]
    assert isinstance(report.errors[2], ValueError)
    assert [w.worker_id for w in report.failed] == [2]
    assert not report.ok
    assert _report().ok and _report().errors == {} and _report().failed == []


def test_report_cpu_and_parallelism():
    report = _report(wall=0.5)
    assert report.cpu == pytest.approx(0.25 * 4 + 0.06)
    assert report.cpu_parallelism == pytest.approx((0.25 * 4 + 0.06) / 0.5)


def test_report_cpu_is_nan_safe():
    report = _report()
    report.workers[1].cpu = math.nan
    assert report.cpu == pytest.approx(0.25 + 0.27 + 0.28)
    for w in report.workers:
        w.cpu = math.nan
    assert math.isnan(report.cpu)
    assert math.isnan(report.cpu_parallelism)
    assert "CPU -" in str(report) and "CPU parallelism -" in str(report)
    assert math.isnan(_report(wall=0.0).cpu_parallelism)


def test_report_rejects_duplicate_workers():
    with pytest.raises(ValueError, match=r"worker_id more than once: \[1\]"):
        Report("threads", 2, 1.0, [WorkerRun(1), WorkerRun(1)])


def test_to_dict_is_json_able():
    report = _report(fail={1})
    report.workers[0].cpu = math.nan
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["model"] == "threads" and data["n_workers"] == 4
    assert [w["result"] for w in data["workers"]] == ["0", None, "20", "30"]
    assert data["workers"][1]["error"] == "ValueError: bad value in worker 1"
    assert data["workers"][0]["cpu"] is None
    assert data["ok"] is False


# ---------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------
def test_str_summary_line(utf8_stdout):
    report = _report(wall=1.02, gil_wait=0.97)
    first = str(report).splitlines()[0]
    assert first == ("threads: 4 workers, wall 1.02 s, CPU 1.06 s, "
                     "CPU parallelism 1.04x, GIL busy 97%")
    assert "GIL" not in str(_report())  # not measured: not mentioned


def test_str_has_a_row_per_worker(utf8_stdout):
    report = _report(model="processes", fail={3}, notes=["names assigned with `global` stayed: x"])
    lines = str(report).splitlines()
    header = lines[1].split()
    assert header[:5] == ["worker", "pid", "start", "end", "CPU"]
    rows = lines[2:6]
    for i, row in enumerate(rows):
        cells = row.split()
        assert cells[0] == str(i)
        assert cells[1] == str(4000 + i)
        assert format_time(0.001 * (i + 1)) in row
        assert format_time(0.5 + 0.1 * i) in row
    assert rows[0].endswith("  0") and rows[2].endswith("  20")
    assert rows[3].endswith("ValueError: bad value in worker 3")
    assert "1 of 4 workers failed (worker 3)" in str(report)
    assert lines[-1] == "note: names assigned with `global` stayed: x"


def test_str_fits_80_columns_and_caps_long_results(utf8_stdout):
    report = _report(model="processes")
    for w in report.workers:
        w.pid = 4_000_000 + w.worker_id
        w.result = "x" * 500
        w.start, w.end, w.cpu = 12.3456, 123.456, 0.0123456
    lines = str(report).splitlines()
    assert all(len(line) <= 80 for line in lines[1:]), max(map(len, lines))
    assert all(line.endswith("...") for line in lines[2:6])


def test_str_threads_show_thread_id_and_missing_values_as_dash(utf8_stdout):
    report = Report("threads", 1, 0.1, [WorkerRun(0, pid=1, thread_id=98765)])
    row = str(report).splitlines()[2].split()
    assert str(report).splitlines()[1].split()[1] == "thread"
    assert row[:5] == ["0", "98765", "-", "-", "-"]


def test_repr_pretty_reuses_str(utf8_stdout):
    report = _report(fail={0})
    assert pretty(report) == str(report)
    assert repr(report).startswith("<Report threads: 4 workers")
    assert "\n" not in repr(report)


def test_failing_repr_does_not_break_report():
    class Broken:
        def __repr__(self):
            raise RuntimeError("nope")

    report = Report("serial", 1, 0.1, [WorkerRun(0, result=Broken())])
    row = str(report).splitlines()[2]
    assert "Broken" in row
    assert "Broken" in report._repr_html_()


# ---------------------------------------------------------------------------
# output()
# ---------------------------------------------------------------------------
def test_output_grouped_by_worker_never_interleaved():
    workers = [
        WorkerRun(2, stdout="two\n"),
        WorkerRun(0, stdout="zero a\nzero b\n", stderr="warn 0\n"),
        WorkerRun(1),                                   # no output: left out
        WorkerRun(3, stderr="err three"),
    ]
    report = Report("threads", 4, 1.0, workers)
    assert report.output() == (
        "[stdout:0]\n"
        "    zero a\n"
        "    zero b\n"
        "[stderr:0] warn 0\n"
        "[stdout:2] two\n"
        "[stderr:3] err three"
    )
    assert Report("threads", 1, 1.0, [WorkerRun(0)]).output() == ""


# ---------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------
class _TableParser(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []
        self.stack = []
        self.text = []
        self.tables = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "table":
            self.tables.append(dict(attrs))
        self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, (self.stack, tag)
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _parse(markup):
    parser = _TableParser()
    parser.feed(markup)
    parser.close()
    assert parser.stack == [], parser.stack  # every tag closed, in order
    return parser


def test_html_table_rows_and_caption(utf8_stdout):
    report = _report(fail={1}, notes=["a note"])
    parser = _parse(report._repr_html_())
    assert parser.tables == [{"class": "concmagic-report"}]
    rows = [attrs for tag, attrs in parser.tags if tag == "tr"]
    assert len(rows) == report.n_workers + 1
    failed = [attrs for attrs in rows if "background" in attrs.get("style", "")]
    assert len(failed) == 1 and "bad value in worker 1" in failed[0]["title"]
    text = "".join(parser.text)
    assert report.summary() in text
    assert "a note" in text
    assert "ValueError: bad value in worker 1" in text


def test_html_escapes_results_and_output():
    evil = "<script>alert(1)</script>"
    workers = [WorkerRun(0, result=evil, stdout=evil + "\n"),
               WorkerRun(1, error=ValueError(evil), stderr=evil)]
    report = Report("threads", 2, 1.0, workers, notes=[evil])
    markup = report._repr_html_()
    assert "<script>" not in markup
    assert "&lt;script&gt;" in markup
    text = "".join(_parse(markup).text)
    assert "[stdout:0] <script>alert(1)</script>" in text
    assert "[stderr:1] <script>alert(1)</script>" in text


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------
def test_worker_error_shows_first_three_tracebacks():
    report = _report(n=6, fail={0, 1, 2, 4, 5})
    err = WorkerError(report)
    assert isinstance(err, ConcmagicError)
    assert err.report is report
    assert err.results == [None, None, None, 30, None, None]
    assert sorted(err.errors) == [0, 1, 2, 4, 5]
    message = str(err)
    assert message.splitlines()[0] == "5 of 6 workers failed (threads)"
    for i in (0, 1, 2):
        assert f"[worker {i}] ValueError: bad value in worker {i}" in message
    for i in (4, 5):
        assert f"[worker {i}]" not in message
    assert message.count("Traceback (most recent call last)") == 3
    assert message.rstrip().endswith("... 2 more failed workers")
    assert repr(err) == "WorkerError('5 of 6 workers failed (threads)')"


def test_worker_error_one_more_is_singular():
    message = str(WorkerError(_report(n=4, fail={0, 1, 2, 3})))
    assert message.rstrip().endswith("... 1 more failed worker")


def test_worker_error_render_traceback_lines():
    report = _report(n=5, fail={1, 3})
    err = WorkerError(report)
    lines = err._render_traceback_()
    assert isinstance(lines, list) and all(isinstance(x, str) and "\n" not in x for x in lines)
    assert lines[0] == "WorkerError: 2 of 5 workers failed (threads)"
    joined = "\n".join(lines)
    for run in report.failed:
        assert run.traceback.rstrip("\n") in joined
    assert "... " not in joined


def test_worker_error_without_traceback_text_formats_the_exception():
    w = WorkerRun(0, error=KeyError("k"))
    message = str(WorkerError(Report("serial", 1, 0.1, [w])))
    assert "[worker 0] KeyError: 'k'" in message


def test_remote_traceback_str():
    tb = 'Traceback (most recent call last):\n  File "<cell>", line 1\nValueError: x\n'
    remote = RemoteTraceback(tb)
    assert str(remote) == '\n"""\n' + tb.rstrip("\n") + '\n"""'
    assert remote.tb == tb
    err = ValueError("x")
    err.__cause__ = remote
    shown = "".join(traceback.format_exception(type(err), err, None))
    assert 'line 1\nValueError: x\n"""' in shown


@pytest.mark.parametrize("exitcode, words", [
    (-11, ["worker 2", "-11", "SIGSEGV", "segmentation fault: a crash in compiled code"]),
    (-9, ["worker 2", "-9", "SIGKILL", "killed: out of memory (the OOM killer) or killed by hand"]),
    (3, ["worker 2", "exit code 3",
         "the worker called os._exit(3) or a C library called exit()"]),
])
def test_worker_died_messages(exitcode, words):
    err = WorkerDied(2, exitcode)
    assert err.worker_id == 2 and err.exitcode == exitcode
    message = str(err)
    for word in words:
        assert word in message
    assert "restarted for the next run" in message
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == message and again.exitcode == exitcode


def test_ship_error_message_and_pickling():
    err = ShipError("lock", "_thread.lock", "cannot pickle '_thread.lock' object")
    assert str(err) == ("cannot ship `lock` (a _thread.lock) to worker processes: "
                        "cannot pickle '_thread.lock' object. "
                        "Create it inside the cell, or use threads.")
    assert (err.name, err.obj_type, err.reason) == ("lock", "_thread.lock",
                                                      "cannot pickle '_thread.lock' object")
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.name == "lock"


def test_run_timeout(utf8_stdout):
    assert str(RunTimeout("worker 1 did not finish")) == "worker 1 did not finish"
    err = RunTimeout(timeout=2.5, worker_id=1)
    assert str(err) == "worker 1 did not finish within the 2.5 s timeout"
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.timeout == 2.5
    assert isinstance(err, ConcmagicError)


def test_report_raise_for_errors():
    report = _report(fail={2})
    with pytest.raises(WorkerError) as info:
        report.raise_for_errors()
    assert info.value.report is report
    ok = _report()
    assert ok.raise_for_errors() is ok
