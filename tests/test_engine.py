"""Tests for concmagic.run: the engine and its runners, without IPython.

Every cell function here is made the way the magics make one, with
`make_cell_function` over a namespace named ``__main__``: cloudpickle then
ships it (and any notebook function, lambda or class it uses) by value, as
from a notebook, and its source is in linecache, so tracebacks can show the
cell's own lines. Tests assert values, worker by worker, for every model and
several worker counts; timing asserts keep margins of several times what a
healthy run needs (a shared, noisy 2-core machine runs them).

Endless loops in shared-memory models poll a ``halt`` flag that the test sets
when it ends, so a thread the runner failed to stop ends with the test instead
of spinning under every later one (a process is killed by the runner anyway).
"""
import math
import multiprocessing
import os
import signal
import socket
import threading
import time
import traceback

import pytest

import concmagic
from concmagic import engine, kernels
from concmagic.cell import make_cell_function
from concmagic.errors import RemoteTraceback, RunTimeout, ShipError, WorkerDied, WorkerError
from concmagic.report import Report, WorkerRun
from concmagic.runners import processes
from concmagic.runners.processes import START_METHODS

MODELS = ("serial", "threads", "processes")
# Models whose workers share this process's memory.
SHARED = ("serial", "threads")


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
def main_ns(**values):
    """A namespace like a notebook's: named __main__, holding `values`."""
    return {"__name__": "__main__", **values}


def cell(text, ns=None):
    """The cell function of `text` over `ns` (a fresh notebook namespace if None)."""
    return make_cell_function(text, main_ns() if ns is None else ns).func


def indent(text, spaces=4):
    return "\n".join(" " * spaces + line for line in text.splitlines())


def resources():
    """What a leak would grow: threads, child processes, OS threads, open fds."""
    return {
        "threads": threading.active_count(),
        "children": len(multiprocessing.active_children()),
        "tasks": len(os.listdir("/proc/self/task")),
        "fds": len(os.listdir("/proc/self/fd")),
    }


def settle(expected, deadline=5.0):
    """`resources()` once it equals `expected`, or as it is at the deadline
    (a retired thread or a reaped process may take a moment to be gone)."""
    end = time.monotonic() + deadline
    now = resources()
    while now != expected and time.monotonic() < end:
        time.sleep(0.02)
        now = resources()
    return now


def process_gone(pid, deadline=5.0):
    """True once no process `pid` exists (a zombie still counts as there)."""
    end = time.monotonic() + deadline
    while os.path.exists(f"/proc/{pid}"):
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


def pool_pids():
    return {pid for pids in processes.pool_status().values() for pid in pids}


@pytest.fixture(scope="module", autouse=True)
def _stop_pools_at_end():
    yield
    engine.shutdown()


@pytest.fixture
def halt():
    """A flag the test's endless loops poll; set when the test ends."""
    flag = [False]
    yield flag
    flag[0] = True
    kernels.cancel()              # any compiled kernel still running stops too


# ---------------------------------------------------------------------------
# worker_id, n_workers, where each worker ran
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 3, 6])
@pytest.mark.parametrize("model", MODELS)
def test_results_in_worker_order_with_pid_and_thread(model, n):
    f = cell("import os, threading\n"
             "(worker_id, n_workers, worker_id ** 2, os.getpid(), threading.get_native_id())")
    report = concmagic.run(f, n, model)
    assert isinstance(report, Report)
    assert [r[:3] for r in report.results] == [(i, n, i * i) for i in range(n)]
    pids = [r[3] for r in report.results]
    tids = [r[4] for r in report.results]
    assert [w.worker_id for w in report.workers] == list(range(n))
    assert [w.pid for w in report.workers] == pids
    if model == "processes":
        assert len(set(pids)) == n, f"{n} workers ran in only {len(set(pids))} processes"
        assert os.getpid() not in pids
        assert set(pids) <= pool_pids()
    else:
        assert set(pids) == {os.getpid()}
    if model == "threads":
        assert len(set(tids)) == n, f"{n} workers ran on only {len(set(tids))} threads"
        assert threading.get_native_id() not in tids
        assert [w.thread_id for w in report.workers] == tids
    if model == "serial":
        assert set(tids) == {threading.get_native_id()}


@pytest.mark.parametrize("model", MODELS)
def test_plain_function_called_by_keyword(model):
    # Keyword-only parameters: a runner passing worker_id positionally fails.
    def func(*, worker_id, n_workers):
        return f"{worker_id}/{n_workers}"

    # processes ship by value only what cloudpickle cannot import by name,
    # and a function local to a test is not importable: by value it goes.
    assert concmagic.run(func, 3, model).results == ["0/3", "1/3", "2/3"]


# ---------------------------------------------------------------------------
# Concurrency: workers really run at once
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 4, 8])
def test_threads_start_together(n):
    # The runner releases its threads from a barrier, so they begin within a
    # moment of each other and a 50 ms sleep in each overlaps all the others.
    f = cell("import time\nt0 = time.perf_counter()\ntime.sleep(0.05)\n(t0, time.perf_counter())")
    concmagic.run(f, n, "threads")                # the gang exists at this size
    report = concmagic.run(f, n, "threads")
    starts = [r[0] for r in report.results]
    ends = [r[1] for r in report.results]
    spread = max(starts) - min(starts)
    assert spread < 0.025, f"{n} threads began {spread * 1e3:.1f} ms apart"
    assert max(starts) < min(ends), "some worker began after another had finished"
    report_starts = [w.start for w in report.workers]
    assert max(report_starts) - min(report_starts) < 0.025


@pytest.mark.timeout(60)
@pytest.mark.parametrize("model", MODELS)
def test_sleeping_workers_overlap(model):
    # Waiting releases the GIL: 3 workers sleeping 0.2 s each take ~0.2 s in
    # threads and processes, 0.6 s in turn. The serial case proves the test
    # can tell them apart.
    n, nap = 3, 0.2
    f = cell(f"import time\ntime.sleep({nap})\nworker_id")
    concmagic.run(cell("worker_id"), n, model)   # warm pool/gang of this size
    report = concmagic.run(f, n, model)
    assert report.results == list(range(n))
    if model == "serial":
        assert report.wall >= n * nap * 0.95
        for a, b in zip(report.workers, report.workers[1:]):
            assert a.end <= b.start
    else:
        assert report.wall < n * nap * 0.7, (
            f"{n} workers sleeping {nap} s took {report.wall:.3f} s in {model}")
        assert max(w.start for w in report.workers) < min(w.end for w in report.workers)


# ---------------------------------------------------------------------------
# Memory: shared by threads, isolated in processes
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("model", MODELS)
def test_global_writes_shared_in_threads_isolated_in_processes(model):
    ns = main_ns(box={}, hits=[], count=0)
    f = cell("global last, count\n"
             "last = worker_id\n"
             "count = count + 1\n"
             "box[worker_id] = worker_id * 10\n"
             "hits.append(worker_id)\n"
             "(count, sorted(box))", ns)
    for _ in range(2):
        report = concmagic.run(f, 3, model)
        if model == "processes":
            # Each worker wrote its own copy, which starts from the notebook's
            # values on every run (a warm process keeps nothing of the last).
            assert report.results == [(1, [0]), (1, [1]), (1, [2])]
        elif model == "serial":
            assert report.results[-1][1] == [0, 1, 2]
    if model == "processes":
        assert "last" not in ns
        assert ns["count"] == 0 and ns["box"] == {} and ns["hits"] == []
    else:
        assert ns["last"] in (0, 1, 2)
        assert ns["box"] == {0: 0, 1: 10, 2: 20}
        assert sorted(ns["hits"]) == [0, 0, 1, 1, 2, 2]
        # `count = count + 1` races in threads (that is the lesson), but
        # never overshoots.
        assert 1 <= ns["count"] <= 6
        if model == "serial":
            assert ns["count"] == 6


_NOTEBOOK = """\
import math
SCALE = 3

def square(x):
    return x * x

cube = lambda x: x ** 3

class Point:
    def __init__(self, x):
        self.x = x

    def norm1(self):
        return abs(self.x) * SCALE

def both(x):
    return square(x) + cube(x)
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("start_method", START_METHODS)
def test_notebook_functions_lambdas_classes_in_processes(start_method):
    # Defined in the notebook (__main__), so no worker could import them by
    # name: they must travel by value, under every start method.
    ns = main_ns()
    exec(compile(_NOTEBOOK, "<notebook>", "exec"), ns)
    f = cell("p = Point(worker_id)\n"
             "(square(worker_id), cube(worker_id), p.norm1(), both(worker_id),\n"
             " math.isqrt(worker_id * worker_id), p)", ns)
    report = concmagic.run(f, 3, "processes", start_method=start_method)
    values = [r[:5] for r in report.results]
    assert values == [(i * i, i ** 3, 3 * i, i * i + i ** 3, i) for i in range(3)]
    points = [r[5] for r in report.results]
    assert all(isinstance(p, ns["Point"]) for p in points)
    assert [p.x for p in points] == [0, 1, 2]
    assert {w.pid for w in report.workers} <= set(processes.pool_status()[start_method])


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("model", MODELS)
def test_output_captured_per_worker(model, capsys):
    f = cell("import sys\n"
             "for k in range(50):\n"
             "    print('out', worker_id, k)\n"
             "    print('err', worker_id, k, file=sys.stderr)\n"
             "sys.stdout.write('tail' * worker_id)\n"
             "worker_id")
    report = concmagic.run(f, 3, model)
    for i, w in enumerate(report.workers):
        assert w.stdout == "".join(f"out {i} {k}\n" for k in range(50)) + "tail" * i
        assert w.stderr == "".join(f"err {i} {k}\n" for k in range(50))
    seen = capsys.readouterr()
    assert "out " not in seen.out and "tail" not in seen.out
    assert "err " not in seen.err


@pytest.mark.parametrize("model", SHARED)
def test_output_of_other_threads_is_not_captured(model, capsys):
    # While workers run, a thread that is not a worker still prints to the
    # real stream (the notebook's), and none of it lands in a worker's output.
    printed, ready = threading.Event(), threading.Event()

    def bystander():
        ready.wait(10)
        print("from the bystander")
        printed.set()

    helper = threading.Thread(target=bystander)
    helper.start()
    ns = main_ns(ready=ready, printed=printed)
    f = cell("print('worker', worker_id)\n"
             "if worker_id == 0:\n"
             "    ready.set()\n"
             "    printed.wait(10)\n"
             "worker_id", ns)
    report = concmagic.run(f, 2, model)
    helper.join(10)
    assert printed.is_set()
    assert [w.stdout for w in report.workers] == ["worker 0\n", "worker 1\n"]
    seen = capsys.readouterr().out
    assert "from the bystander" in seen
    assert "worker 0" not in seen and "worker 1" not in seen


# ---------------------------------------------------------------------------
# A worker that raises
# ---------------------------------------------------------------------------
_RAISING = """\
x = worker_id * 2
if worker_id == 1:
    raise ValueError(f'bad worker {worker_id}')
x
"""


@pytest.mark.parametrize("model", MODELS)
def test_one_worker_raises(model):
    prepared = make_cell_function(_RAISING, main_ns())
    with pytest.raises(WorkerError) as info:
        concmagic.run(prepared.func, 3, model)
    err = info.value
    assert err.results == [0, None, 4]
    assert list(err.errors) == [1]
    assert isinstance(err.errors[1], ValueError)
    assert str(err.errors[1]) == "bad worker 1"
    assert err.report.model == model and not err.report.ok

    # The traceback is on the cell's own line, without the runner's frames.
    tb = err.report.workers[1].traceback
    assert f'File "{prepared.filename}", line 3' in tb
    assert "raise ValueError(f'bad worker {worker_id}')" in tb
    assert "concmagic/runners" not in tb and "concmagic/engine" not in tb
    text = str(err)
    assert "1 of 3 workers failed" in text
    assert "[worker 1] ValueError: bad worker 1" in text
    assert "raise ValueError(f'bad worker {worker_id}')" in text

    if model == "processes":
        # Rebuilt from the worker, with the worker's stack chained as cause.
        cause = err.errors[1].__cause__
        assert isinstance(cause, RemoteTraceback)
        assert "raise ValueError(f'bad worker {worker_id}')" in str(cause)
        shown = "".join(traceback.format_exception(type(err.errors[1]), err.errors[1],
                                                   err.errors[1].__traceback__))
        assert "RemoteTraceback" in shown
        assert f'File "{prepared.filename}", line 3' in shown

    report = concmagic.run(prepared.func, 3, model, raise_errors=False)
    assert report.results == [0, None, 4]
    assert [w.worker_id for w in report.failed] == [1]
    assert [w.ok for w in report.workers] == [True, False, True]


@pytest.mark.parametrize("model", MODELS)
def test_every_worker_raises(model):
    f = cell("raise KeyError(worker_id)")
    with pytest.raises(WorkerError) as info:
        concmagic.run(f, 4, model)
    assert info.value.results == [None] * 4
    assert sorted(info.value.errors) == [0, 1, 2, 3]
    assert [e.args for e in info.value.errors.values()] == [(0,), (1,), (2,), (3,)]
    assert "... 1 more failed worker" in str(info.value)


def test_unloadable_result_is_that_workers_error_and_pool_stays_in_step():
    # A result that pickles in the worker but cannot be loaded here must fail
    # that worker only; it once escaped as a bare exception, lost the other
    # results, and left their replies in the pipes to be read by the next run.
    f = cell("class Odd:\n"
             "    def __reduce__(self):\n"
             "        return (int, ('not a number',))\n"
             "import time\n"
             "time.sleep(0.05 * worker_id)\n"
             "Odd() if worker_id == 0 else worker_id")
    report = concmagic.run(f, 3, "processes", raise_errors=False)
    assert report.results == [None, 1, 2]
    assert list(report.errors) == [0]
    assert "cannot be loaded in the notebook" in str(report.errors[0])
    assert isinstance(report.errors[0].__cause__, ValueError)
    second = concmagic.run(cell("('second', worker_id)"), 3, "processes")
    assert second.results == [("second", 0), ("second", 1), ("second", 2)]


def test_run_failing_part_way_does_not_leave_the_pool_out_of_step(monkeypatch):
    # Whatever goes wrong in the parent after the jobs were sent (here: the
    # first reply cannot be read), no reply of that run may be taken for one
    # of the next run's results.
    real_decode = processes._decode
    calls = []

    def flaky_decode(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("simulated failure while reading a reply")
        return real_decode(*args, **kwargs)

    concmagic.run(cell("worker_id"), 3, "processes")
    monkeypatch.setattr(processes, "_decode", flaky_decode)
    with pytest.raises(RuntimeError, match="simulated"):
        concmagic.run(cell("import time\ntime.sleep(0.05 * worker_id)\n('first', worker_id)"),
                      3, "processes")
    monkeypatch.setattr(processes, "_decode", real_decode)
    second = concmagic.run(cell("('second', worker_id)"), 3, "processes")
    assert second.results == [("second", 0), ("second", 1), ("second", 2)]


# ---------------------------------------------------------------------------
# Variables that cannot go to processes
# ---------------------------------------------------------------------------
def _unshippable(kind, tmp_path):
    if kind == "lock":
        return threading.Lock(), "lock"
    if kind == "file":
        return open(tmp_path / "out.txt", "w"), "TextIOWrapper"
    if kind == "socket":
        return socket.socket(), "socket"
    return (i for i in range(3)), "generator"


@pytest.mark.parametrize("via_function", [False, True], ids=["direct", "via-function"])
@pytest.mark.parametrize("kind", ["lock", "file", "socket", "generator"])
def test_unshippable_variable_named_before_any_worker_starts(kind, via_function, tmp_path):
    obj, type_word = _unshippable(kind, tmp_path)
    try:
        name = f"my_{kind}"
        ns = main_ns(**{name: obj})
        if via_function:
            exec(f"def helper():\n    return {name}\n", ns)
            f = cell("helper()\nworker_id", ns)
        else:
            f = cell(f"{name}\nworker_id", ns)
        processes.shutdown()
        assert pool_pids() == set()
        children = len(multiprocessing.active_children())
        with pytest.raises(ShipError) as info:
            concmagic.run(f, 2, "processes")
        # The variable itself is blamed (not the helper that uses it).
        assert info.value.name == name
        assert type_word in info.value.obj_type
        assert f"`{name}`" in str(info.value) and type_word in str(info.value)
        assert pool_pids() == set(), "workers were started for a cell that cannot be shipped"
        assert len(multiprocessing.active_children()) == children
        # The same cell is fine in threads, where nothing is shipped.
        assert concmagic.run(f, 2, "threads").results == [0, 1]
    finally:
        close = getattr(obj, "close", None)
        if close is not None:
            close()


def test_ship_error_leaves_a_warm_pool_alone():
    concmagic.run(cell("worker_id"), 2, "processes")
    before = processes.pool_status()
    with pytest.raises(ShipError):
        concmagic.run(cell("lock\nworker_id", main_ns(lock=threading.Lock())), 2, "processes")
    assert processes.pool_status() == before


# ---------------------------------------------------------------------------
# A worker process that dies
# ---------------------------------------------------------------------------
_CRASHES = {
    "exit3": ("import os\nos._exit(3)", 3, None),
    "segfault": ("import ctypes\nctypes.string_at(0)", -signal.SIGSEGV, "SIGSEGV"),
    "sigkill": ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
                -signal.SIGKILL, "SIGKILL"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("start_method,crash", [
    *((START_METHODS[0], c) for c in _CRASHES), (START_METHODS[-1], "exit3")])
def test_worker_process_dies(crash, start_method):
    code, exitcode, sig = _CRASHES[crash]
    f = cell("import os, time\n"
             "if worker_id == 1:\n"
             "    time.sleep(0.05)\n"
             f"{indent(code)}\n"
             "(worker_id, os.getpid())")
    report = concmagic.run(f, 3, "processes", start_method=start_method, raise_errors=False)
    assert [r and r[0] for r in report.results] == [0, None, 2]
    assert list(report.errors) == [1]
    died = report.errors[1]
    assert isinstance(died, WorkerDied)
    assert died.worker_id == 1
    assert died.exitcode == exitcode
    assert died.signal == sig
    dead_pid = report.workers[1].pid
    assert died.pid == dead_pid and str(dead_pid) in str(died)
    assert str(exitcode) in str(died)
    if sig:
        assert sig in str(died)
    assert [w.pid for w in report.workers[::2]] == [r[1] for r in report.results[::2]]

    # raise_errors=True: the same, as a WorkerError.
    with pytest.raises(WorkerError) as info:
        concmagic.run(f, 3, "processes", start_method=start_method)
    assert isinstance(info.value.errors[1], WorkerDied)
    assert info.value.results[0] == (0, info.value.report.workers[0].pid)
    dead_pids = {dead_pid, info.value.report.workers[1].pid}

    # The next run is whole again, on a fresh process in place of the dead one.
    again = concmagic.run(cell("import os\n(worker_id, os.getpid())"), 3, "processes",
                          start_method=start_method)
    assert [r[0] for r in again.results] == [0, 1, 2]
    assert len({r[1] for r in again.results}) == 3
    assert not dead_pids & {r[1] for r in again.results}
    assert not dead_pids & pool_pids()
    for pid in dead_pids:
        assert process_gone(pid), f"dead worker {pid} is still in the process table"


# ---------------------------------------------------------------------------
# Timeouts
# ---------------------------------------------------------------------------
_ENDLESS = {
    "python-loop": "while not halt[0]:\n    pass",
    "nogil-kernel": "import concmagic.kernels\nconcmagic.kernels.count_primes(0, 10**12)",
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop", _ENDLESS)
@pytest.mark.parametrize("model", MODELS)
def test_timeout_stops_endless_workers(model, loop, halt):
    f = cell("if worker_id > 0:\n"
             f"{indent(_ENDLESS[loop])}\n"
             "worker_id", main_ns(halt=halt))
    t0 = time.perf_counter()
    with pytest.raises(WorkerError) as info:
        concmagic.run(f, 3, model, timeout=0.5)
    took = time.perf_counter() - t0
    assert 0.45 <= took < 5, f"a run with timeout=0.5 returned after {took:.2f} s"
    err = info.value
    assert err.results == [0, None, None]
    assert sorted(err.errors) == [1, 2]
    assert all(isinstance(e, RunTimeout) for e in err.errors.values()), err.errors
    assert "timeout" in str(err.errors[1])

    # Nothing of the stopped run is left over: the next run is right.
    again = concmagic.run(cell("import os\n(worker_id * 3, os.getpid())"), 3, model)
    assert [r[0] for r in again.results] == [0, 3, 6]
    if model == "processes":
        assert len({r[1] for r in again.results}) == 3


@pytest.mark.timeout(30)
def test_serial_timeout_that_expires_between_workers(halt):
    # Time ran out while worker 0's traceback was being formatted (its
    # exception's __str__ is slow), when no cell was running to be stopped;
    # the timeout was lost and worker 1 then ran forever (until `halt`).
    f = cell("class SlowStr(Exception):\n"
             "    def __str__(self):\n"
             "        import time\n"
             "        time.sleep(0.6)\n"
             "        return 'slow'\n"
             "if worker_id == 0:\n"
             "    raise SlowStr()\n"
             "while not halt[0]:\n"
             "    pass\n"
             "worker_id", main_ns(halt=halt))
    rescue = threading.Timer(5, halt.__setitem__, args=(0, True))
    rescue.start()
    try:
        t0 = time.perf_counter()
        report = concmagic.run(f, 2, "serial", timeout=0.2, raise_errors=False)
        took = time.perf_counter() - t0
    finally:
        rescue.cancel()
    assert took < 3, f"the run took {took:.2f} s"
    assert type(report.errors[0]).__name__ == "SlowStr"
    assert isinstance(report.errors.get(1), RunTimeout), report.errors


@pytest.mark.parametrize("model", MODELS)
def test_timeout_not_reached_changes_nothing(model):
    report = concmagic.run(cell("import time\ntime.sleep(0.05)\nworker_id"), 2, model, timeout=30)
    assert report.results == [0, 1] and report.ok


@pytest.mark.parametrize("timeout", [math.inf, 1e12])
@pytest.mark.parametrize("model", MODELS)
def test_huge_timeout_means_no_timeout(model, timeout):
    # These once raised OverflowError from the OS waits (or, in serial, killed
    # the watchdog thread with a traceback on stderr).
    assert concmagic.run(cell("worker_id"), 2, model, timeout=timeout).results == [0, 1]


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, -1, 1.5, True, False, "2", None])
def test_bad_worker_count(n):
    with pytest.raises((ValueError, TypeError), match=r"\bn must be a positive integer"):
        concmagic.run(cell("1"), n, "threads")


def test_integral_worker_count_accepted():
    np = pytest.importorskip("numpy")
    assert concmagic.run(cell("worker_id"), np.int64(2), "threads").results == [0, 1]


@pytest.mark.parametrize("model", ["thread", "Threads", "", None, "asyncio-ish"])
def test_bad_model(model):
    with pytest.raises(ValueError, match=r"model must be one of 'serial', 'threads', 'processes'"):
        concmagic.run(cell("1"), 2, model)


@pytest.mark.parametrize("timeout", [0, -1, -0.5, True, "1", math.nan])
def test_bad_timeout(timeout):
    with pytest.raises((ValueError, TypeError), match=r"timeout must be a positive number"):
        concmagic.run(cell("1"), 2, "threads", timeout=timeout)


@pytest.mark.parametrize("model", SHARED)
def test_start_method_only_for_processes(model):
    with pytest.raises(ValueError, match=r"start_method applies to model='processes' only"):
        concmagic.run(cell("1"), 2, model, start_method="spawn")


@pytest.mark.parametrize("method", ["fork", "Spawn", ""])
def test_bad_start_method(method):
    with pytest.raises(ValueError, match=r"start_method must be one of"):
        concmagic.run(cell("1"), 2, "processes", start_method=method)


def test_func_must_be_callable():
    with pytest.raises(TypeError, match=r"func must be callable; got int"):
        concmagic.run(5, 2, "threads")


# ---------------------------------------------------------------------------
# Leaks
# ---------------------------------------------------------------------------
@pytest.mark.timeout(90)
@pytest.mark.parametrize("model", MODELS)
def test_no_leaks_over_many_runs(model):
    ns = main_ns(fail=[False])
    f = cell("print('hello', worker_id)\n"
             "if fail[0] and worker_id == 1:\n"
             "    raise ValueError('planned')\n"
             "worker_id", ns)
    concmagic.run(f, 4, model, timeout=30)        # the warm pool exists before counting
    before = resources()
    for k in range(200):
        ns["fail"][0] = k % 10 == 0
        report = concmagic.run(f, 4, model, timeout=30, raise_errors=False)
        assert report.results == ([0, None, 2, 3] if k % 10 == 0 else [0, 1, 2, 3])
    for k in range(12):                           # resizing, back to 4 at the end
        concmagic.run(f, 1 + k % 4, model)
    after = settle(before)
    assert after == before


@pytest.mark.timeout(60)
def test_no_leaks_after_crashes_and_timeouts():
    f = cell("import os\nworker_id")
    concmagic.run(f, 3, "processes")
    before = resources()
    for code, _, _ in _CRASHES.values():
        crash = cell(f"if worker_id == 2:\n{indent(code)}\nworker_id")
        assert concmagic.run(crash, 3, "processes", raise_errors=False).results == [0, 1, None]
        assert concmagic.run(f, 3, "processes").results == [0, 1, 2]
    endless = cell("if worker_id == 0:\n    while True:\n        pass\nworker_id")
    report = concmagic.run(endless, 3, "processes", timeout=0.3, raise_errors=False)
    assert isinstance(report.errors[0], RunTimeout)
    assert concmagic.run(f, 3, "processes").results == [0, 1, 2]
    assert settle(before) == before


@pytest.mark.timeout(60)
def test_shutdown_leaves_no_worker_processes():
    for method in START_METHODS:
        concmagic.run(cell("worker_id"), 2, "processes", start_method=method)
    concmagic.run(cell("worker_id"), 3, "threads")
    pids = pool_pids()
    assert len(pids) == 2 * len(START_METHODS)
    engine.shutdown()
    assert pool_pids() == set()
    assert multiprocessing.active_children() == []
    for pid in pids:
        assert process_gone(pid), f"worker {pid} is alive after shutdown()"
    assert concmagic.status()["threads"]["threads"] == 0
    # ...and everything starts again on the next run.
    assert concmagic.run(cell("worker_id"), 2, "processes").results == [0, 1]
    assert concmagic.run(cell("worker_id"), 2, "threads").results == [0, 1]


# ---------------------------------------------------------------------------
# Runs inside runs
# ---------------------------------------------------------------------------
def test_threads_run_inside_a_threads_worker():
    ns = main_ns(concmagic=concmagic, inner=cell("worker_id * 10"))
    outer = cell("r = concmagic.run(inner, 2, 'threads')\n(worker_id, r.results)", ns)
    concmagic.run(cell("1"), 3, "threads")
    before = resources()
    report = concmagic.run(outer, 3, "threads")
    assert report.results == [(i, [0, 10]) for i in range(3)]
    assert settle(before) == before


def test_threads_run_inside_a_process_worker():
    inner = cell("print('in', worker_id)\nworker_id + 100")
    outer = cell("import concmagic\n"
                 "r = concmagic.run(inner, 2, 'threads')\n"
                 "(r.results, r.workers[1].stdout)", main_ns(inner=inner))
    report = concmagic.run(outer, 2, "processes")
    assert report.results == [([100, 101], "in 1\n")] * 2


def test_processes_run_inside_a_process_worker_is_refused_clearly():
    inner = cell("worker_id")
    outer = cell("import concmagic\nconcmagic.run(inner, 2, 'processes')", main_ns(inner=inner))
    report = concmagic.run(outer, 2, "processes", raise_errors=False)
    assert sorted(report.errors) == [0, 1]
    for error in report.errors.values():
        assert isinstance(error, RuntimeError)
        assert "cannot be nested" in str(error)


@pytest.mark.timeout(60)
def test_processes_pool_busy_is_a_clear_error():
    # Worker 0 holds the process pool for a while; worker 1 asks for it meanwhile.
    slow = cell("import time\ntime.sleep(1.5)\nworker_id")
    quick = cell("worker_id")
    ns = main_ns(concmagic=concmagic, slow=slow, quick=quick)
    f = cell("import time\n"
             "if worker_id == 0:\n"
             "    r = concmagic.run(slow, 2, 'processes')\n"
             "else:\n"
             "    time.sleep(0.3)\n"
             "    r = concmagic.run(quick, 2, 'processes')\n"
             "r.results", ns)
    concmagic.run(quick, 2, "processes")          # warm: worker 0 starts at once
    report = concmagic.run(f, 2, "threads", raise_errors=False)
    assert report.results[0] == [0, 1]
    assert list(report.errors) == [1]
    assert isinstance(report.errors[1], RuntimeError)
    assert str(report.errors[1]) == ("the process pool is busy with another run; "
                                     "runs in processes cannot be nested or run at once")
    assert concmagic.run(quick, 2, "processes").results == [0, 1]


# ---------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("model", MODELS)
def test_report_fields(model):
    f = cell("import time\n"
             "s = sum(range(200_000))\n"
             "time.sleep(0.02)\n"
             "if worker_id == 2:\n"
             "    raise RuntimeError('third fails')\n"
             "worker_id + 1")
    report = concmagic.run(f, 3, model, raise_errors=False)
    assert report.model == model and report.n_workers == 3
    assert [w.worker_id for w in report.workers] == [0, 1, 2]
    assert all(isinstance(w, WorkerRun) for w in report.workers)
    assert report.wall > 0
    for w in report.workers:
        assert 0 <= w.start <= w.end <= report.wall, (w.start, w.end, report.wall)
        assert w.elapsed >= 0.019
    ok = report.workers[:2]
    assert all(w.ok and w.error is None for w in ok)
    assert all(w.cpu >= 0 for w in ok)
    assert all(w.cpu < w.elapsed + 0.05 for w in ok)
    assert report.results == [1, 2, None]
    assert list(report.errors) == [2] and str(report.errors[2]) == "third fails"
    assert not report.ok and report.failed == [report.workers[2]]
    assert report.cpu >= 0
    assert report.cpu_parallelism >= 0
    if model == "serial":
        assert report.wall >= sum(w.elapsed for w in report.workers)
    assert model in str(report) and "third fails" in str(report)
    with pytest.raises(WorkerError):
        report.raise_for_errors()
