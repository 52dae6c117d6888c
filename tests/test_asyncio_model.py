"""Tests for model="asyncio": N tasks of one event loop, in a thread of concmagic's own.

Cells are made as %%asyncio makes them, with `make_cell_function(...,
is_async=True)` over a namespace named ``__main__``, so they may ``await`` and
their tracebacks show the cell's own lines. Timing asserts keep margins of
several times what a healthy run needs (a shared, noisy 2-core machine runs
them); every test has an explicit timeout.

A cell that blocks the loop on purpose (``time.sleep``, a loop without
``await``) polls a ``halt`` flag or sleeps a bounded time, so that a loop
the runner failed to free ends with the test instead of under later ones.
"""
import asyncio
import os
import signal
import threading
import time

import pytest

import concmagic
from concmagic import engine
from concmagic.cell import make_cell_function
from concmagic.errors import RunTimeout, WorkerError
from concmagic.progress import Progress
from concmagic.report import Report
from concmagic.runners import aio

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
def main_ns(**values):
    """A namespace like a notebook's: named __main__, with asyncio and time imported."""
    return {"__name__": "__main__", "asyncio": asyncio, "time": time, **values}


def prepared(text, ns=None):
    return make_cell_function(text, main_ns() if ns is None else ns, is_async=True)


def acell(text, ns=None):
    """The coroutine function of the async cell `text`."""
    return prepared(text, ns).func


def loop_threads():
    return [t for t in threading.enumerate() if t.name == aio.LOOP_THREAD_NAME]


def resources():
    """What a leak would grow: Python threads, OS threads, open fds."""
    return {
        "threads": threading.active_count(),
        "tasks": len(os.listdir("/proc/self/task")),
        "fds": len(os.listdir("/proc/self/fd")),
    }


def settle(expected, deadline=5.0):
    end = time.monotonic() + deadline
    now = resources()
    while now != expected and time.monotonic() < end:
        time.sleep(0.02)
        now = resources()
    return now


def wait_for(predicate, deadline=10.0):
    end = time.monotonic() + deadline
    while not predicate():
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture(scope="module", autouse=True)
def _stop_loop_at_end():
    yield
    engine.shutdown()


@pytest.fixture
def halt():
    """A flag blocking cells poll; set when the test ends."""
    flag = [False]
    yield flag
    flag[0] = True


# ---------------------------------------------------------------------------
# One loop, many waits
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 4, 16])
def test_waiting_tasks_overlap_on_one_thread(n):
    # N tasks each awaiting a 0.3 s sleep take about one sleep, not N: the
    # waits overlap on one thread, which is not the caller's.
    nap = 0.3
    f = acell(f"import threading\nt0 = time.perf_counter()\nawait asyncio.sleep({nap})\n"
              "(worker_id, n_workers, threading.get_native_id(), t0)")
    concmagic.run(f, 1, "asyncio")                 # the loop thread exists
    report = concmagic.run(f, n, "asyncio")
    assert isinstance(report, Report) and report.model == "asyncio"
    assert [r[:2] for r in report.results] == [(i, n) for i in range(n)]
    limit = max(nap * n * 0.6, nap * 1.8)
    assert report.wall < limit, f"{n} tasks sleeping {nap} s took {report.wall:.3f} s"
    # All on the loop's one thread, never the caller's.
    tids = {r[2] for r in report.results}
    assert len(tids) == 1 and threading.get_native_id() not in tids
    assert [w.thread_id for w in report.workers] == [r[2] for r in report.results]
    assert {w.pid for w in report.workers} == {os.getpid()}
    # Their starts line up: all begin before the first one ends.
    starts = [w.start for w in report.workers]
    assert max(starts) - min(starts) < 0.05, f"tasks began {1e3 * (max(starts) - min(starts)):.1f} ms apart"
    assert max(starts) < min(w.end for w in report.workers)
    cell_starts = [r[3] for r in report.results]
    assert max(cell_starts) - min(cell_starts) < 0.05


def test_results_in_worker_order_whatever_order_tasks_finish():
    # Later workers finish first; results still come back in worker order.
    f = acell("await asyncio.sleep(0.02 * (n_workers - worker_id))\nworker_id ** 2")
    report = concmagic.run(f, 5, "asyncio")
    assert report.results == [0, 1, 4, 9, 16]
    ends = [w.end for w in report.workers]
    assert ends == sorted(ends, reverse=True), ends


def test_cpu_bound_tasks_take_turns():
    # Code that never awaits holds the loop: three 0.1 s computations run one
    # after another, so the wall is their sum, and each task begins only when
    # the one before it has finished.
    f = acell("end = time.perf_counter() + 0.1\n"
              "while time.perf_counter() < end:\n"
              "    pass\n"
              "worker_id")
    report = concmagic.run(f, 3, "asyncio")
    assert report.results == [0, 1, 2]
    assert report.wall >= 0.3 * 0.95, report.wall
    for a, b in zip(report.workers, report.workers[1:]):
        assert b.start >= a.end - 0.001, (a.end, b.start)


def test_plain_function_runs_as_is_in_its_task():
    # A plain function is called inside the task; it holds the loop while it
    # runs, so two 0.15 s time.sleep calls take 0.3 s.
    def blocking(*, worker_id, n_workers):
        time.sleep(0.15)
        return (worker_id, n_workers, threading.current_thread().name)

    report = concmagic.run(blocking, 2, "asyncio")
    assert report.results == [(0, 2, aio.LOOP_THREAD_NAME), (1, 2, aio.LOOP_THREAD_NAME)]
    assert report.wall >= 0.3 * 0.95


def test_plain_and_coroutine_functions_tracebacks_start_at_their_own_line():
    def plain(*, worker_id, n_workers):
        raise ValueError("plain")

    async def coro(*, worker_id, n_workers):
        await asyncio.sleep(0)
        raise ValueError("coro")

    for func in (plain, coro):
        report = concmagic.run(func, 1, "asyncio", raise_errors=False)
        tb = report.workers[0].traceback.splitlines()
        assert tb[0] == "Traceback (most recent call last):"
        assert tb[1].endswith(f"in {func.__name__}"), tb
        assert tb[-1] == f"ValueError: {func.__name__}"


def test_function_returning_an_awaitable_is_awaited():
    async def body(worker_id):
        await asyncio.sleep(0.01)
        return worker_id * 10

    def returns_coroutine(*, worker_id, n_workers):
        return body(worker_id)

    assert concmagic.run(returns_coroutine, 3, "asyncio").results == [0, 10, 20]


def test_tasks_can_talk_through_an_asyncio_queue():
    # They share one loop, so asyncio primitives made in the cell's namespace
    # work between them (created lazily on the loop by the first task).
    ns = main_ns(box={})
    f = acell("q = box.setdefault('q', asyncio.Queue())\n"
              "if worker_id == 0:\n"
              "    got = [await q.get() for _ in range(n_workers - 1)]\n"
              "else:\n"
              "    await q.put(worker_id)\n"
              "    got = None\n"
              "sorted(got) if got else got", ns)
    assert concmagic.run(f, 4, "asyncio").results == [[1, 2, 3], None, None, None]


# ---------------------------------------------------------------------------
# CPU per task
# ---------------------------------------------------------------------------
def test_cpu_is_counted_per_task():
    # Worker 0 computes ~0.1 s of CPU in ten slices with awaits between them,
    # while worker 1 sleeps through it all: the loop's thread did both, but
    # each task is charged only its own steps.
    f = acell("if worker_id == 0:\n"
              "    for _ in range(10):\n"
              "        c0 = time.thread_time()\n"
              "        while time.thread_time() - c0 < 0.01:\n"
              "            pass\n"
              "        await asyncio.sleep(0)\n"
              "else:\n"
              "    await asyncio.sleep(0.3)\n"
              "worker_id")
    report = concmagic.run(f, 2, "asyncio")
    busy, idle = report.workers
    assert 0.095 <= busy.cpu < 0.2, f"the busy task was charged {busy.cpu:.4f} s"
    assert idle.cpu < 0.01, f"the sleeping task was charged {idle.cpu:.4f} s"
    assert busy.cpu <= busy.elapsed + 0.01


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------
def test_output_captured_per_task_not_interleaved(capsys):
    # Every task prints between awaits, so the loop switches tasks between
    # each pair of lines; each still gets exactly its own lines, in order.
    f = acell("import sys\n"
              "for k in range(20):\n"
              "    print('out', worker_id, k)\n"
              "    await asyncio.sleep(0)\n"
              "    print('err', worker_id, k, file=sys.stderr)\n"
              "    await asyncio.sleep(0.001 * (worker_id % 2))\n"
              "sys.stdout.write('tail' * worker_id)\n"
              "worker_id")
    report = concmagic.run(f, 3, "asyncio")
    for i, w in enumerate(report.workers):
        assert w.stdout == "".join(f"out {i} {k}\n" for k in range(20)) + "tail" * i
        assert w.stderr == "".join(f"err {i} {k}\n" for k in range(20))
    seen = capsys.readouterr()
    assert "out " not in seen.out and "tail" not in seen.out
    assert "err " not in seen.err


def test_output_of_tasks_and_threads_the_cell_starts_is_the_workers():
    # A task or to_thread call started by the cell copies its context, so its
    # prints belong to that worker too.
    f = acell("async def child():\n"
              "    print('child of', worker_id)\n"
              "await asyncio.create_task(child())\n"
              "await asyncio.to_thread(print, 'thread of', worker_id)\n"
              "worker_id")
    report = concmagic.run(f, 2, "asyncio")
    assert [w.stdout for w in report.workers] == [
        f"child of {i}\nthread of {i}\n" for i in range(2)]


def test_tasks_a_cell_leaves_running_are_cancelled_at_the_end():
    # A task started and not awaited would go on running on concmagic's loop
    # during later runs (and print into later cells): the run cancels it.
    ns = main_ns(ticks=[], cleaned=[])
    f = acell("async def forever():\n"
              "    try:\n"
              "        while True:\n"
              "            ticks.append(worker_id)\n"
              "            await asyncio.sleep(0.01)\n"
              "    finally:\n"
              "        cleaned.append(worker_id)\n"
              "background = asyncio.create_task(forever())\n"
              "await asyncio.sleep(0.05)\n"
              "worker_id", ns)
    report = concmagic.run(f, 2, "asyncio")
    assert report.results == [0, 1]
    assert report.notes == ["the cell left 2 tasks running (started with asyncio.create_task "
                            "or ensure_future and not awaited); they were cancelled when the "
                            "run ended"]
    assert wait_for(lambda: sorted(ns["cleaned"]) == [0, 1], 5)
    seen = len(ns["ticks"])
    time.sleep(0.1)
    assert len(ns["ticks"]) == seen
    assert concmagic.run(acell("worker_id"), 2, "asyncio").notes == []


def test_output_of_other_threads_is_not_captured(capsys):
    printed, ready = threading.Event(), threading.Event()

    def bystander():
        ready.wait(10)
        print("from the bystander")
        printed.set()

    helper = threading.Thread(target=bystander)
    helper.start()
    f = acell("print('worker', worker_id)\n"
              "if worker_id == 0:\n"
              "    ready.set()\n"
              "    await asyncio.to_thread(printed.wait, 10)\n"
              "worker_id", main_ns(ready=ready, printed=printed))
    report = concmagic.run(f, 2, "asyncio")
    helper.join(10)
    assert printed.is_set()
    assert [w.stdout for w in report.workers] == ["worker 0\n", "worker 1\n"]
    seen = capsys.readouterr().out
    assert "from the bystander" in seen
    assert "worker 0" not in seen


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------
_RAISING = """\
x = worker_id * 2
await asyncio.sleep(0.01)
if worker_id == 1:
    raise ValueError(f'bad worker {worker_id}')
await asyncio.sleep(0.01)
x
"""


def test_one_task_raises_the_others_keep_their_results():
    cell = prepared(_RAISING)
    with pytest.raises(WorkerError) as info:
        concmagic.run(cell.func, 3, "asyncio")
    err = info.value
    assert err.results == [0, None, 4]
    assert list(err.errors) == [1] and str(err.errors[1]) == "bad worker 1"
    tb = err.report.workers[1].traceback
    assert tb.startswith("Traceback (most recent call last):\n"), tb
    assert f'File "{cell.filename}", line 4' in tb
    assert "raise ValueError(f'bad worker {worker_id}')" in tb
    assert "concmagic/runners" not in tb and "concmagic/engine" not in tb
    assert "[worker 1] ValueError: bad worker 1" in str(err)
    # The loop lives on.
    assert concmagic.run(acell("worker_id"), 2, "asyncio").results == [0, 1]


def test_base_exceptions_in_a_task_do_not_stop_the_loop():
    # asyncio lets KeyboardInterrupt and SystemExit out of a task through the
    # loop; a cell raising them must fail only its own worker.
    f = acell("if worker_id == 0:\n    raise SystemExit(3)\n"
              "if worker_id == 1:\n    raise KeyboardInterrupt\n"
              "await asyncio.sleep(0.01)\nworker_id")
    report = concmagic.run(f, 3, "asyncio", raise_errors=False)
    assert report.results == [None, None, 2]
    assert isinstance(report.errors[0], SystemExit)
    assert isinstance(report.errors[1], KeyboardInterrupt)
    assert concmagic.run(acell("worker_id"), 2, "asyncio").results == [0, 1]


def test_a_cell_that_cancels_its_own_task():
    f = acell("asyncio.current_task().cancel()\n"
              "if worker_id == 0:\n"
              "    await asyncio.sleep(1)\n"
              "worker_id")
    report = concmagic.run(f, 2, "asyncio", raise_errors=False)
    assert isinstance(report.errors[0], asyncio.CancelledError)
    assert report.results == [None, 1]


# ---------------------------------------------------------------------------
# Timeout and interrupt
# ---------------------------------------------------------------------------
def test_timeout_cancels_waiting_tasks_promptly():
    cell = prepared("if worker_id > 0:\n"
                    "    await asyncio.sleep(100)\n"
                    "worker_id")
    t0 = time.perf_counter()
    report = concmagic.run(cell.func, 3, "asyncio", timeout=0.3, raise_errors=False)
    took = time.perf_counter() - t0
    assert 0.29 <= took < 1.5, f"a run with timeout=0.3 returned after {took:.2f} s"
    assert report.results == [0, None, None]
    assert all(isinstance(report.errors[i], RunTimeout) for i in (1, 2)), report.errors
    assert "timeout" in str(report.errors[1])
    tb = report.workers[1].traceback
    assert f'File "{cell.filename}", line 2' in tb and "await asyncio.sleep(100)" in tb
    assert "RunTimeout" in tb.splitlines()[-1] and "CancelledError" not in tb
    assert report.notes == []                      # nothing was stuck
    assert concmagic.run(acell("worker_id * 3"), 3, "asyncio").results == [0, 3, 6]


def test_timeout_runs_the_cells_cancellation_clean_up():
    ns = main_ns(cleaned=[])
    f = acell("try:\n"
              "    await asyncio.sleep(100)\n"
              "except asyncio.CancelledError:\n"
              "    cleaned.append(worker_id)\n"
              "    raise", ns)
    report = concmagic.run(f, 2, "asyncio", timeout=0.2, raise_errors=False)
    assert sorted(ns["cleaned"]) == [0, 1]
    assert all(isinstance(e, RunTimeout) for e in report.errors.values())


def test_timeout_stops_a_computation_that_never_awaits(halt):
    # Cancelling waits for an await that never comes; the run stops the
    # running step the way the thread runner stops a thread.
    cell = prepared("while not halt[0]:\n    pass\nworker_id", main_ns(halt=halt))
    t0 = time.perf_counter()
    report = concmagic.run(cell.func, 2, "asyncio", timeout=0.3, raise_errors=False)
    took = time.perf_counter() - t0
    assert took < 1.5, f"took {took:.2f} s"
    assert all(isinstance(e, RunTimeout) for e in report.errors.values()), report.errors
    assert f'File "{cell.filename}", line 1' in report.workers[0].traceback
    assert report.workers[1].traceback == ""       # never began: worker 0 held the loop
    assert report.notes == []
    assert concmagic.run(acell("worker_id"), 2, "asyncio").results == [0, 1]


def test_task_blocked_in_C_is_reported_stuck_and_the_next_run_gets_a_fresh_loop():
    # time.sleep blocks the loop itself: nothing can be cancelled until it
    # returns. The run reports every unfinished task, says which one held the
    # loop, and sets that loop's thread aside; the next run is unaffected.
    f = acell("print('before', worker_id)\n"
              "if worker_id == 1:\n"
              "    time.sleep(4)\n"
              "await asyncio.sleep(100)")
    concmagic.run(acell("1"), 1, "asyncio")
    first = loop_threads()
    assert len(first) == 1
    t0 = time.perf_counter()
    report = concmagic.run(f, 3, "asyncio", timeout=0.3, raise_errors=False)
    took = time.perf_counter() - t0
    assert took < 3.5, f"took {took:.2f} s"
    assert sorted(report.errors) == [0, 1, 2]
    assert all(isinstance(e, RunTimeout) for e in report.errors.values())
    # Worker 2's first step never came: worker 1 held the loop before it.
    assert [w.stdout for w in report.workers] == ["before 0\n", "before 1\n", ""]
    assert len(report.notes) == 1 and "worker 1 held the event loop" in report.notes[0]
    assert "fresh loop" in report.notes[0]
    assert concmagic.status()["asyncio"]["abandoned"] == 1

    t0 = time.perf_counter()
    assert concmagic.run(acell("await asyncio.sleep(0.01)\nworker_id"), 2,
                         "asyncio").results == [0, 1]
    assert time.perf_counter() - t0 < 1.0
    assert concmagic.status()["asyncio"]["running"]
    # The set-aside thread ends once its sleep returns.
    assert wait_for(lambda: not first[0].is_alive()), "the stuck loop's thread lives on"
    assert concmagic.status()["asyncio"]["abandoned"] == 0
    assert len(loop_threads()) == 1


@pytest.mark.skipif(signal.getsignal(signal.SIGINT) is not signal.default_int_handler,
                    reason="SIGINT does not raise KeyboardInterrupt here")
def test_ctrl_c_cancels_the_tasks_and_raises_keyboard_interrupt():
    ns = main_ns(cancelled=[])
    f = acell("try:\n"
              "    await asyncio.sleep(100)\n"
              "except asyncio.CancelledError:\n"
              "    cancelled.append(worker_id)\n"
              "    raise", ns)
    concmagic.run(acell("1"), 1, "asyncio")
    main = threading.main_thread().ident
    assert threading.get_ident() == main
    timer = threading.Timer(0.3, signal.pthread_kill, args=(main, signal.SIGINT))
    t0 = time.perf_counter()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            concmagic.run(f, 3, "asyncio")
    finally:
        timer.cancel()
    took = time.perf_counter() - t0
    assert took < 2.3, f"KeyboardInterrupt came {took:.2f} s after the run began"
    assert sorted(ns["cancelled"]) == [0, 1, 2]
    assert concmagic.run(acell("await asyncio.sleep(0.01)\nworker_id"), 3,
                         "asyncio").results == [0, 1, 2]


# ---------------------------------------------------------------------------
# Where run may be called from
# ---------------------------------------------------------------------------
def test_run_from_inside_a_running_event_loop():
    # A Jupyter kernel calls the cell from inside its own running loop; run
    # must neither nest that loop nor run the tasks on it.
    f = acell("await asyncio.sleep(0.05)\n(worker_id, id(asyncio.get_running_loop()))")

    async def main():
        outer = id(asyncio.get_running_loop())
        report = concmagic.run(f, 3, "asyncio", timeout=10)
        return outer, report

    outer, report = asyncio.run(main())
    assert [r[0] for r in report.results] == [0, 1, 2]
    inner = {r[1] for r in report.results}
    assert len(inner) == 1 and outer not in inner


def test_run_from_inside_a_task():
    # A cell that itself calls concmagic.run (blocking its own loop) gets a
    # loop of its own for the inner run instead of waiting on itself.
    ns = main_ns(concmagic=concmagic, inner=acell("await asyncio.sleep(0.01)\nworker_id * 10"))
    outer = acell("r = concmagic.run(inner, 2, 'asyncio', timeout=10)\n(worker_id, r.results)", ns)
    concmagic.run(acell("1"), 1, "asyncio")
    before = resources()
    report = concmagic.run(outer, 2, "asyncio", timeout=20)
    assert report.results == [(0, [0, 10]), (1, [0, 10])]
    assert settle(before) == before


def test_runs_from_two_threads_at_once():
    f = acell("await asyncio.sleep(0.2)\nworker_id")
    out = {}

    def go(k):
        out[k] = concmagic.run(f, 3, "asyncio", timeout=10).results

    helpers = [threading.Thread(target=go, args=(k,)) for k in range(2)]
    t0 = time.perf_counter()
    for h in helpers:
        h.start()
    for h in helpers:
        h.join(20)
    assert out == {0: [0, 1, 2], 1: [0, 1, 2]}
    assert time.perf_counter() - t0 < 0.2 * 2 * 0.9 + 0.3


def test_other_models_run_inside_a_task():
    ns = main_ns(concmagic=concmagic, inner=lambda *, worker_id, n_workers: worker_id + 100)
    outer = acell("(concmagic.run(inner, 2, 'threads').results,\n"
                  " concmagic.run(inner, 2, 'serial').results)", ns)
    assert concmagic.run(outer, 2, "asyncio").results == [([100, 101], [100, 101])] * 2


# ---------------------------------------------------------------------------
# Measurement, progress, lifecycle
# ---------------------------------------------------------------------------
def test_measured_by_default():
    f = acell("await asyncio.sleep(0.05)\nworker_id")
    report = concmagic.run(f, 3, "asyncio")
    assert report.samples is not None and report.samples.n_slots == 3
    assert report.gil_wait is not None and 0 <= report.gil_wait <= 1
    assert concmagic.run(f, 3, "asyncio", measure=False).gil_wait is None


def test_progress_on_a_long_run():
    renders, cleared = [], []
    progress = Progress("asyncio", 2, renders.append, lambda: cleared.append(1))
    progress.delay, progress.every = 0.1, 0.05
    f = acell("await asyncio.sleep(0.15 if worker_id == 0 else 0.5)\nworker_id")
    concmagic.run(f, 2, "asyncio", progress=progress)
    assert renders, "a 0.5 s run showed no progress"
    assert all(lines[0].startswith("asyncio: 2 workers") for lines in renders)
    assert "done after" in renders[-1][1] and "running" in renders[-1][2], renders[-1]
    assert cleared == [1]


def test_status_and_shutdown():
    concmagic.run(acell("worker_id"), 2, "asyncio")
    status = concmagic.status()
    assert "asyncio" in status["models"]
    assert status["asyncio"]["running"]
    thread = aio._shared.current.thread
    assert status["asyncio"]["thread_id"] == thread.native_id
    engine.shutdown()
    assert not thread.is_alive()
    assert concmagic.status()["asyncio"] == {"running": False, "thread_id": None, "abandoned": 0}
    assert concmagic.run(acell("worker_id"), 2, "asyncio").results == [0, 1]
    assert aio._shared.current.thread is not thread


@pytest.mark.timeout(120)
def test_no_leaks_over_many_runs():
    ns = main_ns(fail=[False])
    f = acell("print('hello', worker_id)\n"
              "await asyncio.sleep(0)\n"
              "if fail[0] and worker_id == 1:\n"
              "    raise ValueError('planned')\n"
              "worker_id", ns)
    # Start from a fresh loop (no executor threads of earlier tests' cells)
    # once any loop set aside by an earlier test has ended.
    assert wait_for(lambda: concmagic.status()["asyncio"]["abandoned"] == 0)
    engine.shutdown()
    concmagic.run(f, 4, "asyncio", timeout=30)     # the loop thread exists before counting
    before = resources()
    for k in range(100):
        ns["fail"][0] = k % 10 == 0
        report = concmagic.run(f, 1 + k % 4, "asyncio", timeout=30, raise_errors=False)
        expected = list(range(1 + k % 4))
        if k % 10 == 0 and len(expected) > 1:
            expected[1] = None
        assert report.results == expected
    # Timeouts cancel tasks; they must leave nothing behind either.
    slow = acell("await asyncio.sleep(100)")
    for _ in range(3):
        concmagic.run(slow, 3, "asyncio", timeout=0.05, raise_errors=False)
    assert settle(before) == before
    assert len(loop_threads()) == 1
    assert asyncio.all_tasks(aio._shared.current.loop) == set()


def test_bad_model_lists_asyncio():
    with pytest.raises(ValueError, match=r"'processes', 'asyncio'"):
        concmagic.run(acell("1"), 2, "async")
