"""Tests for the Dask backend: ``model="dask"`` and ``%%processes --backend dask``.

Two real clusters, both on loopback: concmagic's own LocalCluster (started by
the first run, reused, closed by shutdown), and a scheduler plus two workers
started here as separate processes (``dask scheduler``, ``dask worker``),
reached by address. Every process started here is stopped by the fixtures,
which then check that none is left. Cell functions are made as the magics
make them, over a namespace named ``__main__``, so they travel by value as
from a notebook. Timing asserts keep wide margins: a shared, noisy 2-core
machine runs them, where starting a cluster can take seconds.
"""
import importlib.util
import json
import multiprocessing
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time

import cloudpickle
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

import concmagic
from concmagic import engine
from concmagic.cell import make_cell_function
from concmagic.errors import RemoteTraceback, RunTimeout, ShipError, WorkerDied, WorkerError
from concmagic.runners import _dask_task
from concmagic.runners import dask as dask_runner

HAVE_DISTRIBUTED = importlib.util.find_spec("distributed") is not None
needs_dask = pytest.mark.skipif(not HAVE_DISTRIBUTED, reason="distributed is not installed")
HOST = socket.gethostname()


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
def main_ns(**values):
    """A namespace like a notebook's: named __main__, holding `values`."""
    return {"__name__": "__main__", **values}


def cell(text, ns=None):
    return make_cell_function(text, main_ns() if ns is None else ns).func


def local_cluster():
    """``(scheduler address, sorted worker pids)`` of concmagic's LocalCluster, or None."""
    for cluster in engine.status()["dask"]:
        if cluster["local"]:
            return cluster["address"], sorted(w["pid"] for w in cluster["workers"] or ())
    return None


def alive(pid):
    """True while process `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def all_gone(pids, deadline=10.0):
    end = time.monotonic() + deadline
    while any(alive(p) for p in pids):
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def group_members(pgid):
    """Live (non-zombie) processes of process group `pgid`."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
    return members


@pytest.fixture(scope="module", autouse=True)
def _no_leftovers():
    """Whatever the tests started, shutdown() stops: no worker process left."""
    children = len(multiprocessing.active_children())
    seen = set()
    yield seen
    status = local_cluster()
    if status is not None:
        seen.update(status[1])
    dask_runner.shutdown()
    assert engine.status()["dask"] == []
    assert all_gone(seen), f"Dask worker processes left running: {[p for p in seen if alive(p)]}"
    assert len(multiprocessing.active_children()) <= children


@pytest.fixture(scope="module")
def shell():
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "concmagic")
    return ip


def magic(ip, line, body):
    """``%%processes line`` + body: (its value, what it displayed and printed)."""
    with capture_output() as out:
        value = ip.run_cell_magic("processes", line, body)
    return value, out


# ---------------------------------------------------------------------------
# A scheduler and two workers, each a process of its own, on loopback
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def external(tmp_path_factory):
    """The address of a cluster started here: `dask scheduler` + 2 `dask worker`s.

    Each runs in a session of its own, so the whole group (a worker's nanny
    and its worker process) is stopped together, and checked gone.
    """
    if not HAVE_DISTRIBUTED:
        pytest.skip("distributed is not installed")
    tmp = tmp_path_factory.mktemp("dask-cluster")
    scheduler_file = tmp / "scheduler.json"
    procs = []

    def start(*args, log):
        with open(tmp / log, "wb") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "dask", *args], stdout=out, stderr=subprocess.STDOUT,
                cwd=tmp, start_new_session=True))

    common = ["--scheduler-file", str(scheduler_file)]
    try:
        start("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", *common,
              log="scheduler.log")
        for i in range(2):
            start("worker", "--host", "127.0.0.1", "--nthreads", "1", "--nworkers", "1",
                  "--no-dashboard", "--name", f"ext-{i}", *common, log=f"worker-{i}.log")
        end = time.monotonic() + 60
        while not scheduler_file.exists() or not scheduler_file.read_text().strip():
            assert time.monotonic() < end, "the scheduler wrote no scheduler file in 60 s"
            assert procs[0].poll() is None, (tmp / "scheduler.log").read_text()
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        import distributed
        with distributed.Client(address, set_as_default=False, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
            pids = sorted(client.run(os.getpid).values())
        yield address, pids
    finally:
        dask_runner.shutdown()                    # our clients first, then their cluster
        groups = [p.pid for p in procs]
        for pgid in reversed(groups):             # workers, then the scheduler
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        end = time.monotonic() + 10
        while any(group_members(g) for g in groups) and time.monotonic() < end:
            time.sleep(0.05)
        left = {g: group_members(g) for g in groups if group_members(g)}
        for pgid in left:
            os.killpg(pgid, signal.SIGKILL)
        assert not left, f"processes of the test cluster outlived it: {left}"


# ---------------------------------------------------------------------------
# The cell contract on concmagic's LocalCluster
# ---------------------------------------------------------------------------
@needs_dask
@pytest.mark.timeout(120)
def test_results_in_worker_order_with_host_and_pid(_no_leftovers):
    f = cell("import os, socket\n(worker_id, n_workers, os.getpid(), socket.gethostname())")
    report = concmagic.run(f, 2, "dask")
    assert report.model == "dask" and report.n_workers == 2
    assert [r[:2] for r in report.results] == [(0, 2), (1, 2)]
    pids = [r[2] for r in report.results]
    assert len(set(pids)) == 2 and os.getpid() not in pids, pids
    _no_leftovers.update(pids)
    for run, (_, _, pid, host) in zip(report.workers, report.results):
        assert run.pid == pid and run.host == host == HOST
        assert 0 <= run.start <= run.end <= report.wall, (run.start, run.end, report.wall)
        assert run.cpu >= 0
    assert report.gil_wait is None and report.samples is None
    # Where each worker ran shows as host:pid, in text and HTML.
    text = str(report)
    assert "host:pid" in text and f"{HOST}:{pids[1]}" in text, text
    assert f"{HOST}:{pids[0]}" in report._repr_html_()
    # The cluster the run used is on loopback, and said so.
    address, cluster_pids = local_cluster()
    assert address.startswith("tcp://127.0.0.1:") and cluster_pids == sorted(pids)
    assert any(address in note for note in report.notes), report.notes


@needs_dask
@pytest.mark.timeout(120)
def test_output_captured_and_grouped_per_worker():
    f = cell("import sys\n"
             "print('out', worker_id)\n"
             "print('second line', worker_id)\n"
             "print('err', worker_id, file=sys.stderr)\n"
             "worker_id")
    report = concmagic.run(f, 2, "dask")
    for i, run in enumerate(report.workers):
        assert run.stdout == f"out {i}\nsecond line {i}\n"
        assert run.stderr == f"err {i}\n"
    assert report.output().splitlines() == [
        "[stdout:0]", "    out 0", "    second line 0", "[stderr:0] err 0",
        "[stdout:1]", "    out 1", "    second line 1", "[stderr:1] err 1"]


@needs_dask
@pytest.mark.timeout(120)
def test_error_keeps_the_others_results_with_traceback_on_the_cell_lines():
    f = cell("x = worker_id * 10\n"
             "if worker_id == 1:\n"
             "    1 / 0\n"
             "x")
    with pytest.raises(WorkerError) as info:
        concmagic.run(f, 2, "dask")
    err = info.value
    assert err.results == [0, None] and sorted(err.errors) == [1]
    assert isinstance(err.errors[1], ZeroDivisionError)
    assert isinstance(err.errors[1].__cause__, RemoteTraceback)
    tb = err.report.workers[1].traceback
    assert "1 / 0" in tb and "line 3, in __cell__" in tb, tb
    assert "_dask_task" not in tb and "<dynamic-code>" not in tb, tb   # only the cell's frames
    assert "[worker 1] ZeroDivisionError: division by zero" in str(err)


@needs_dask
@pytest.mark.timeout(120)
def test_result_that_cannot_come_back_is_that_workers_error():
    f = cell("(i for i in range(3)) if worker_id == 1 else worker_id")
    report = concmagic.run(f, 2, "dask", raise_errors=False)
    assert report.results == [0, None]
    assert isinstance(report.errors[1], TypeError)
    assert "cannot be sent back" in str(report.errors[1])


# Endless cells: the workers get their own copies of everything, so nothing
# the test sets could end them; a stop that failed shows as a failed test,
# and the fixtures' shutdown then ends the process.
_ENDLESS = {
    "python-loop": "while True:\n    pass",
    "nogil-kernel": "import concmagic.kernels\nconcmagic.kernels.count_primes(0, 10**12)",
}


@needs_dask
@pytest.mark.timeout(120)
@pytest.mark.parametrize("loop", _ENDLESS)
def test_timeout_stops_the_cells_still_running(loop):
    body = "\n".join("    " + line for line in _ENDLESS[loop].splitlines())
    f = cell(f"if worker_id == 1:\n{body}\nworker_id")
    concmagic.run(cell("0"), 2, "dask")           # a warm cluster: time the stop only
    pids = local_cluster()[1]
    t0 = time.perf_counter()
    with pytest.raises(WorkerError) as info:
        concmagic.run(f, 2, "dask", timeout=0.5)
    took = time.perf_counter() - t0
    assert 0.45 <= took < 5, f"a run with timeout=0.5 returned after {took:.2f} s"
    err = info.value
    assert err.results == [0, None]
    assert isinstance(err.errors[1], RunTimeout) and "timeout" in str(err.errors[1])
    # Where the cell was when it stopped, on the cell's own lines.
    assert "in __cell__" in err.report.workers[1].traceback
    # Stopped, not killed: the same workers serve the next run, free.
    assert concmagic.run(cell("worker_id * 3"), 2, "dask").results == [0, 3]
    assert local_cluster()[1] == pids


@needs_dask
@pytest.mark.timeout(120)
def test_cell_blocked_in_c_is_killed_and_its_worker_replaced(_no_leftovers):
    concmagic.run(cell("0"), 2, "dask")
    before = local_cluster()[1]
    f = cell("import os, time\nif worker_id == 1:\n    time.sleep(60)\nos.getpid()")
    report = concmagic.run(f, 2, "dask", timeout=0.5, raise_errors=False)
    stuck = report.workers[1].pid
    assert isinstance(report.errors[1], RunTimeout), report.errors
    assert report.results[0] in before and stuck in before
    assert any("did not stop within 1 s and was killed" in n for n in report.notes), report.notes
    assert all_gone([stuck]), "the stuck worker process is still running"
    again = concmagic.run(cell("import os\nos.getpid()"), 2, "dask")
    _no_leftovers.update(again.results)
    assert stuck not in again.results and len(set(again.results)) == 2


@needs_dask
@pytest.mark.timeout(120)
@pytest.mark.skipif(signal.getsignal(signal.SIGINT) is not signal.default_int_handler,
                    reason="SIGINT does not raise KeyboardInterrupt here")
def test_ctrl_c_stops_the_run():
    concmagic.run(cell("0"), 2, "dask")
    pids = local_cluster()[1]
    f = cell("while True:\n    pass")
    timer = threading.Timer(0.5, signal.pthread_kill, args=(threading.main_thread().ident,
                                                           signal.SIGINT))
    t0 = time.perf_counter()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            concmagic.run(f, 2, "dask")
    finally:
        timer.cancel()
    took = time.perf_counter() - t0
    assert took < 4, f"KeyboardInterrupt came {took:.2f} s after the run began"
    # Both cells were stopped, not left spinning: the next run gets the workers.
    assert concmagic.run(cell("worker_id"), 2, "dask", timeout=10).results == [0, 1]
    assert local_cluster()[1] == pids


@needs_dask
@pytest.mark.timeout(120)
def test_worker_that_dies_is_that_workers_error(_no_leftovers):
    f = cell("import os\nif worker_id == 1:\n    os._exit(3)\nworker_id")
    report = concmagic.run(f, 2, "dask", raise_errors=False)
    assert report.results == [0, None]
    assert isinstance(report.errors[1], WorkerDied), report.errors
    assert report.errors[1].worker_id == 1 and report.workers[1].pid is not None
    again = concmagic.run(cell("import os\nos.getpid()"), 2, "dask")
    _no_leftovers.update(again.results)
    assert len(set(again.results)) == 2


@needs_dask
@pytest.mark.timeout(120)
def test_unshippable_variable_named_before_anything_runs():
    concmagic.run(cell("0"), 2, "dask")
    before = local_cluster()
    f = cell("my_lock\nworker_id", main_ns(my_lock=threading.Lock()))
    with pytest.raises(ShipError) as info:
        concmagic.run(f, 2, "dask")
    assert info.value.name == "my_lock" and "`my_lock`" in str(info.value)
    assert local_cluster() == before


@needs_dask
def test_comm_is_refused_clearly():
    f = cell("comm.barrier()\nworker_id")
    with pytest.raises(ValueError, match="comm between workers is not available on Dask"):
        concmagic.run(f, 2, "dask")


def test_scheduler_only_with_the_dask_model():
    with pytest.raises(ValueError, match="scheduler applies to model='dask' only"):
        concmagic.run(cell("0"), 2, "processes", scheduler="tcp://127.0.0.1:8786")


def _run_task_without_concmagic(func, tmp_path):
    """The task of worker 1 of 2 for `func`, run by a Python that cannot
    import concmagic (as a bare Dask worker would); its reply record."""
    payload = dask_runner.ship(func)
    blob = cloudpickle.dumps(dask_runner._Call(_dask_task.run_cell, payload, 1, 2, "k-1"))
    (tmp_path / "task.pkl").write_bytes(blob)
    code = ("import sys, pickle\n"
            "sys.modules['concmagic'] = None\n"   # `import concmagic` now fails
            "sys.stdout.buffer.write(pickle.loads(open('task.pkl', 'rb').read()))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    return pickle.loads(out.stdout)


@pytest.mark.timeout(60)
def test_task_goes_by_value_and_says_when_a_cell_needs_concmagic(tmp_path):
    # A plain function: the task itself needs nothing of concmagic.
    ns = main_ns()
    exec("def work(worker_id, n_workers):\n"
         "    print('hi')\n"
         "    return (worker_id, n_workers)\n", ns)
    rec = _run_task_without_concmagic(ns["work"], tmp_path)
    assert "traceback" not in rec, rec.get("traceback")
    assert pickle.loads(rec["result"]) == (1, 2) and rec["stdout"] == "hi\n"
    # A notebook cell calls concmagic.cell's helpers: the error says to install it.
    rec = _run_task_without_concmagic(cell("worker_id"), tmp_path)
    assert "notebook cells need concmagic installed on the Dask workers" in rec["error_text"]


# ---------------------------------------------------------------------------
# Without distributed
# ---------------------------------------------------------------------------
def test_missing_distributed_says_how_to_install(monkeypatch, shell):
    monkeypatch.setitem(sys.modules, "distributed", None)     # `import distributed` fails
    before = engine.status()["dask"]
    with pytest.raises(ImportError, match=r"pip install 'concmagic\[dask\]'") as info:
        concmagic.run(cell("worker_id"), 2, "dask")
    assert isinstance(info.value, dask_runner.DaskUnavailable)
    with pytest.raises(UsageError, match=r"pip install 'concmagic\[dask\]'"):
        magic(shell, "--backend dask -n 2", "worker_id")
    assert engine.status()["dask"] == before      # nothing was started
    # The local backend does not need it.
    assert magic(shell, "-n 2 -q", "worker_id")[0] == [0, 1]


# ---------------------------------------------------------------------------
# The magic
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("line, message", [
    ("--scheduler tcp://127.0.0.1:8786 -n 2", "--scheduler applies to --backend dask only"),
    ("--backend dask --start-method spawn -n 2", "--start-method applies to the local backend"),
    ("--backend dusk -n 2", "invalid choice: 'dusk'"),
])
def test_magic_options_that_do_not_go_together(shell, line, message):
    with pytest.raises(UsageError, match=message):
        magic(shell, line, "worker_id")


@needs_dask
def test_magic_refuses_comm_on_dask(shell):
    with pytest.raises(UsageError, match="comm is not available with --backend dask"):
        magic(shell, "--backend dask -n 2", "comm.barrier()")


@needs_dask
@pytest.mark.timeout(120)
def test_magic_runs_the_cell_on_the_local_cluster(shell):
    shell.user_ns["scale"] = 10
    try:
        value, out = magic(shell, "--backend dask -n 2 -o rep --pull x",
                           "x = worker_id * scale\nprint('hello from', worker_id)\nx + 1")
        assert value == [1, 11] and shell.user_ns["x"] == [0, 10]
        report = shell.user_ns["rep"]
        assert report.model == "dask" and [w.host for w in report.workers] == [HOST, HOST]
        assert "[stdout:0] hello from 0\n[stdout:1] hello from 1\n" in out.stdout
        (shown,) = out.outputs                                    # the report, shown
        assert f"{HOST}:{report.workers[0].pid}" in shown.data["text/plain"]
        with pytest.raises(UsageError, match="cannot ship `lock`"):
            shell.user_ns["lock"] = threading.Lock()
            magic(shell, "--backend dask -n 2", "lock\nworker_id")
    finally:
        for name in ("scale", "x", "rep", "lock"):
            shell.user_ns.pop(name, None)


@needs_dask
@pytest.mark.timeout(120)
def test_cluster_reused_then_restarted_when_n_changes(_no_leftovers):
    f = cell("import os\nos.getpid()")
    first = concmagic.run(f, 2, "dask")
    address, pids = local_cluster()
    second = concmagic.run(f, 2, "dask")
    assert local_cluster() == (address, pids), "a second run with the same n started a new cluster"
    assert first.results == second.results
    assert not any("started for this run" in note for note in second.notes), second.notes
    # Another n: a new cluster of that size; the old one's workers are gone.
    one = concmagic.run(f, 1, "dask")
    new_address, new_pids = local_cluster()
    _no_leftovers.update(new_pids)
    assert new_address != address and new_pids == one.results and len(new_pids) == 1
    assert any("started for this run" in note for note in one.notes), one.notes
    assert all_gone(pids), "the workers of the replaced cluster are still running"


@needs_dask
@pytest.mark.timeout(120)
def test_status_shows_the_cluster_and_shutdown_closes_it(shell):
    magic(shell, "--backend dask -n 2 -q", "worker_id")
    address, pids = local_cluster()
    with capture_output() as out:
        shell.run_line_magic("concmagic", "")
    assert f"dask LocalCluster: {address}, 2 workers" in out.stdout, out.stdout
    assert all(f"(pid {pid})" in out.stdout for pid in pids), out.stdout
    with capture_output() as out:
        shell.run_line_magic("concmagic", "shutdown")
    assert "Dask cluster stopped" in out.stdout
    assert local_cluster() is None
    assert all_gone(pids), "%concmagic shutdown left Dask worker processes running"
    with capture_output() as out:
        shell.run_line_magic("concmagic", "")
    assert "dask" not in out.stdout.split("models:")[1].split("\n", 1)[1]


# ---------------------------------------------------------------------------
# A cluster by address: a scheduler and workers started as processes
# ---------------------------------------------------------------------------
@needs_dask
@pytest.mark.timeout(180)
def test_cells_run_on_a_cluster_by_address(shell, external):
    address, worker_pids = external
    line = f"--backend dask --scheduler {address} -n 2"
    value, out = magic(shell, line + " -o rep",
                       "import os, socket\nprint('on', worker_id)\n(worker_id, os.getpid())")
    assert [v[0] for v in value] == [0, 1]
    assert sorted(v[1] for v in value) == worker_pids        # the cluster's own workers
    report = shell.user_ns.pop("rep")
    assert [w.host for w in report.workers] == [HOST, HOST]
    assert report.notes[0] == f"ran on the Dask cluster at {address}"
    assert "[stdout:0] on 0\n[stdout:1] on 1\n" in out.stdout
    assert local_cluster() is None, "a run by address started a LocalCluster"
    with capture_output() as shown:
        shell.run_line_magic("concmagic", "")
    assert f"dask cluster: {address}, 2 workers" in shown.stdout, shown.stdout
    client = dask_runner._remote[address].client
    # Errors, by worker, on the cell's lines; the same client serves the run.
    with pytest.raises(WorkerError) as info:
        magic(shell, line, "if worker_id == 0:\n    raise KeyError('nope')\nworker_id")
    assert info.value.results == [None, 1] and isinstance(info.value.errors[0], KeyError)
    assert "line 2, in __cell__" in info.value.report.workers[0].traceback
    assert dask_runner._remote[address].client is client


@needs_dask
@pytest.mark.timeout(180)
def test_timeout_on_a_cluster_by_address(external):
    address, worker_pids = external
    f = cell("if worker_id == 1:\n    while True:\n        pass\nworker_id")
    t0 = time.perf_counter()
    report = concmagic.run(f, 2, "dask", scheduler=address, timeout=0.5, raise_errors=False)
    assert time.perf_counter() - t0 < 5
    assert report.results == [0, None] and isinstance(report.errors[1], RunTimeout)
    assert not any("did not stop" in note for note in report.notes), report.notes
    again = concmagic.run(cell("import os\nos.getpid()"), 2, "dask", scheduler=address)
    assert sorted(again.results) == worker_pids    # stopped, not killed


@needs_dask
@pytest.mark.timeout(180)
def test_too_few_workers_on_the_cluster_is_a_clear_error(shell, external):
    address, _ = external
    with pytest.raises(UsageError, match=r"has 2 workers; 3 are needed.*-n 2"):
        magic(shell, f"--backend dask --scheduler {address} -n 3", "worker_id")


@needs_dask
@pytest.mark.timeout(60)
def test_unreachable_scheduler_is_a_clear_error(monkeypatch, shell):
    monkeypatch.setattr(dask_runner, "CONNECT_TIMEOUT", 1.0)
    with socket.socket() as s:                    # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    with pytest.raises(dask_runner.ClusterError, match="cannot reach the Dask scheduler"):
        concmagic.run(cell("0"), 1, "dask", scheduler=address)
    with pytest.raises(UsageError, match=f"cannot reach the Dask scheduler at '{address}'"):
        magic(shell, f"--backend dask --scheduler {address} -n 1", "0")
    assert address not in dask_runner._remote
