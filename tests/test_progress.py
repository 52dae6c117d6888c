"""Live progress: long runs show a line per worker, short runs stay quiet."""
import time

import pytest

import concmagic
from concmagic.progress import Progress

pytestmark = pytest.mark.timeout(60)


class Recorder:
    def __init__(self):
        self.renders, self.cleared = [], 0

    def progress(self, model, n):
        return Progress(model, n, self.renders.append, self._clear)

    def _clear(self):
        self.cleared += 1


def busy(worker_id, n_workers):
    # Worker 0 finishes early, so a later update shows it done beside a runner.
    end = time.perf_counter() + (1.0 if worker_id == 0 else 1.7)
    while time.perf_counter() < end:
        pass


@pytest.mark.parametrize("model", ["threads", "processes"])
def test_a_long_run_shows_each_worker_then_clears(model):
    rec = Recorder()
    concmagic.run(busy, 2, model, progress=rec.progress(model, 2))
    assert rec.renders, "a 1.7 s run showed no progress"
    for lines in rec.renders:
        assert lines[0].startswith(f"{model}: 2 workers")
        assert len(lines) == 3 and lines[1].startswith("  worker 0") and lines[2].startswith("  worker 1")
    last = rec.renders[-1]
    assert "done after" in last[1] and "running" in last[2], last
    assert any("% of a core" in line for lines in rec.renders for line in lines[1:])
    assert rec.cleared == 1


@pytest.mark.parametrize("model", ["threads", "processes"])
def test_a_short_run_shows_nothing(model):
    rec = Recorder()
    concmagic.run(lambda worker_id, n_workers: worker_id, 2, model, progress=rec.progress(model, 2))
    assert rec.renders == [] and rec.cleared == 0


def test_a_failed_worker_is_shown_failed():
    def cell(worker_id, n_workers):
        if worker_id == 0:
            raise ValueError("early")
        time.sleep(1.6)
    rec = Recorder()
    concmagic.run(cell, 2, "threads", progress=rec.progress("threads", 2), raise_errors=False)
    assert "failed (ValueError)" in rec.renders[-1][1]


def test_progress_is_cleared_on_timeout():
    def forever(worker_id, n_workers):
        while True:
            pass
    rec = Recorder()
    concmagic.run(forever, 2, "threads", timeout=1.4, progress=rec.progress("threads", 2),
                  raise_errors=False)
    assert rec.renders and rec.cleared == 1


def test_terminal_renderer_draws_one_line_and_wipes_it():
    import io

    from concmagic import live

    class Tty(io.StringIO):
        def isatty(self):
            return True
    stream = Tty()
    progress = live._terminal("threads", 2, stream)
    progress.shown = True
    progress._render(progress.lines(1.5, {}))
    progress.close()
    text = stream.getvalue()
    assert "\n" not in text
    assert "threads: 2 workers, 1.5 s so far | w0: running | w1: running" in text
    assert text.endswith("\r") and text.rstrip("\r").endswith(" ")
