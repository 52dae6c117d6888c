"""Tests for concmagic.magics: the magics driven as a user drives them.

A real IPython shell with ``%load_ext concmagic``; cells go in through
``run_cell_magic`` (what ``%%threads`` calls) or ``run_cell`` (what a
notebook does, with its Out, ``_`` and traceback display). Every test
asserts values, in both models and several worker counts where it matters.
"""
import os
import re
import threading
import time

import psutil
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from concmagic import engine
from concmagic.cell import MISSING
from concmagic.errors import RunTimeout, WorkerDied, WorkerError
from concmagic.magics import ConcMagic
from concmagic.report import Report
from concmagic.runners import prestart

MODELS = ("threads", "processes")
N_WORKERS = (1, 3)


# ---------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shell():
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "concmagic")
    # The forkserver it starts in the background is up before any test
    # counts processes.
    prestart.wait(60)
    yield ip
    with capture_output():
        ip.run_line_magic("concmagic", "shutdown")


@pytest.fixture
def ip(shell):
    """The shell; the names a test adds to (or changes in) user_ns are undone after it."""
    before = dict(shell.user_ns)
    yield shell
    for name in list(shell.user_ns):
        if name not in before:
            del shell.user_ns[name]
        elif not name.startswith("_") and shell.user_ns[name] is not before[name]:
            shell.user_ns[name] = before[name]


def run(ip, model, line, cell):
    """``%%model line`` + cell via run_cell_magic: (its value, what it displayed and printed)."""
    with capture_output() as out:
        value = ip.run_cell_magic(model, line, cell)
    return value, out


def run_cell(ip, text, store_history=False):
    """A whole cell as a notebook runs it: (ExecutionResult, captured output)."""
    with capture_output() as out:
        result = ip.run_cell(text, store_history=store_history)
    return result, out


def shown_text(out):
    return out.stdout + out.stderr


# ---------------------------------------------------------------------------
# The cell as a function of worker_id and n_workers
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("n", N_WORKERS)
@pytest.mark.parametrize("model", MODELS)
def test_each_worker_sees_its_id_and_the_count(ip, model, n):
    value, _ = run(ip, model, f"-n {n} -q", "(worker_id, n_workers)")
    assert value == [(i, n) for i in range(n)]


@pytest.mark.parametrize("model", MODELS)
def test_value_is_the_list_of_results_and_becomes_out_and_underscore(ip, model):
    result, out = run_cell(ip, f"%%{model} -n 3\nsquare = worker_id ** 2\nsquare + 1",
                           store_history=True)
    assert result.error_in_exec is None
    assert result.result == [1, 2, 5]
    assert ip.user_ns["_"] == [1, 2, 5]
    assert ip.user_ns["Out"][result.execution_count] == [1, 2, 5]


@pytest.mark.parametrize("model", MODELS)
def test_reads_notebook_variables(ip, model):
    ip.user_ns["base"] = 100
    ip.user_ns["table"] = {0: "zero", 1: "one", 2: "two"}
    value, _ = run(ip, model, "-n 3 -q", "(base + worker_id, table[worker_id])")
    assert value == [(100, "zero"), (101, "one"), (102, "two")]


@pytest.mark.parametrize("model", MODELS)
def test_mutating_a_notebook_object_is_shared_in_threads_only(ip, model):
    ip.user_ns["seen"] = []
    value, _ = run(ip, model, "-n 3 -q", "seen.append(worker_id)\nlen(seen) > 0")
    assert value == [True, True, True]
    expected = [0, 1, 2] if model == "threads" else []   # processes mutate their own copy
    assert sorted(ip.user_ns["seen"]) == expected


@pytest.mark.parametrize("n", N_WORKERS)
@pytest.mark.parametrize("model", MODELS)
def test_assignments_in_the_cell_stay_in_the_worker(ip, model, n):
    ip.user_ns["mine"] = "notebook"
    value, _ = run(ip, model, f"-n {n} -q",
                   "mine = worker_id\nfresh_name = mine * 2\n"
                   "for loop_var in range(3):\n    pass\nmine, fresh_name")
    assert value == [(i, 2 * i) for i in range(n)]
    assert ip.user_ns["mine"] == "notebook"
    assert "fresh_name" not in ip.user_ns
    assert "loop_var" not in ip.user_ns


@pytest.mark.parametrize("n", N_WORKERS)
@pytest.mark.parametrize("model", MODELS)
def test_global_writes_the_notebook_in_threads_and_stays_in_processes(ip, model, n):
    ip.user_ns["gx"] = "orig"
    ip.user_ns["gy"] = 0
    cell = "global gx, gy\ngx = 'set'\ngy = worker_id + 1\n(gx, gy)"
    value, out = run(ip, model, f"-n {n} -o rep", cell)
    assert value == [("set", i + 1) for i in range(n)]
    rep = ip.user_ns["rep"]
    note = "2 names assigned with `global` stayed in the worker processes: gx, gy"
    if model == "threads":
        assert ip.user_ns["gx"] == "set"
        assert ip.user_ns["gy"] in range(1, n + 1)     # the last writer wins (a real race)
        assert not any("global" in text for text in rep.notes)
    else:
        assert (ip.user_ns["gx"], ip.user_ns["gy"]) == ("orig", 0)
        assert note in rep.notes
        (shown,) = out.outputs
        assert note in shown.data["text/plain"]
        assert "assigned with `global` stayed in the worker processes" in shown.data["text/html"]


def test_global_note_names_a_single_name(ip):
    ip.user_ns["only_one"] = 0
    run(ip, "processes", "-n 2 -q -o rep", "global only_one\nonly_one = worker_id")
    assert ip.user_ns["rep"].notes == [
        "1 name assigned with `global` stayed in the worker processes: only_one"]
    assert ip.user_ns["only_one"] == 0


@pytest.mark.parametrize("model", MODELS)
def test_notebook_functions_lambdas_and_classes_work_in_workers(ip, model):
    result, _ = run_cell(ip, (
        "def square(x):\n"
        "    return x * x\n"
        "add_one = lambda x: x + 1\n"
        "class Point:\n"
        "    def __init__(self, v):\n"
        "        self.v = v\n"
        "    def doubled(self):\n"
        "        return 2 * self.v\n"))
    assert result.error_in_exec is None
    assert ip.user_ns["square"].__module__ == "__main__"     # what a notebook gives us
    value, _ = run(ip, model, "-n 3 -q",
                   "p = Point(add_one(square(worker_id)))\n(p.doubled(), p)")
    assert [doubled for doubled, _ in value] == [2, 4, 10]
    points = [p for _, p in value]
    assert [p.v for p in points] == [1, 2, 5]
    # cloudpickle tracks classes shipped by value: the instances come back as Point
    assert all(type(p) is ip.user_ns["Point"] for p in points)


@pytest.mark.parametrize("model", MODELS)
def test_notebook_functions_bring_their_modules_and_globals(ip, model):
    run_cell(ip, "import math as m\nscale = 3\ndef scaled_root(x):\n    return m.sqrt(x) * scale\n")
    value, _ = run(ip, model, "-n 3 -q", "scaled_root(worker_id ** 2)")
    assert value == [0.0, 3.0, 6.0]


def test_notebook_function_running_shell_commands_in_processes_is_a_clear_error(ip):
    run_cell(ip, "def echo_hi():\n    lines = !echo hi\n    return list(lines)\n")
    value, _ = run(ip, "threads", "-n 2 -q", "echo_hi()")
    assert value == [["hi"], ["hi"]]
    with pytest.raises(UsageError, match=r"uses `!cmd` or `%magic` \(it calls get_ipython\(\)\)"):
        run(ip, "processes", "-n 2 -q", "echo_hi()")


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_start_methods(ip, method):
    value, _ = run(ip, "processes", f"-n 2 -q --start-method {method} -o rep",
                   "import multiprocessing, os\n"
                   "(worker_id * 3, multiprocessing.get_start_method(allow_none=True), os.getpid())")
    assert [v[:2] for v in value] == [(0, method), (3, method)]
    pids = [v[2] for v in value]
    assert len(set(pids)) == 2 and os.getpid() not in pids
    assert [w.pid for w in ip.user_ns["rep"].workers] == pids
    assert sorted(pids) == sorted(engine.status()["processes"][method])


def test_start_method_from_config(ip):
    try:
        ip.run_line_magic("config", "ConcMagic.start_method = 'spawn'")
        value, _ = run(ip, "processes", "-n 2 -q",
                       "import multiprocessing\nmultiprocessing.get_start_method(allow_none=True)")
    finally:
        ip.run_line_magic("config", "ConcMagic.start_method = 'forkserver'")
    assert value == ["spawn", "spawn"]


# ---------------------------------------------------------------------------
# Options: --pull, -o, -q
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("n", N_WORKERS)
@pytest.mark.parametrize("model", MODELS)
def test_pull_gives_lists_in_worker_order(ip, model, n):
    value, _ = run(ip, model, f"-n {n} -q --pull a,b",
                   "a = worker_id * 2\nb = f'w{worker_id}'\nworker_id")
    assert value == list(range(n))                        # the results, unwrapped
    assert ip.user_ns["a"] == [2 * i for i in range(n)]
    assert ip.user_ns["b"] == [f"w{i}" for i in range(n)]


@pytest.mark.parametrize("model", MODELS)
def test_pull_of_a_name_some_workers_never_assigned(ip, model):
    run(ip, model, "-n 3 -q --pull odd", "if worker_id % 2:\n    odd = worker_id\n")
    assert ip.user_ns["odd"] == [MISSING, 1, MISSING]
    assert ip.user_ns["odd"][0] is MISSING


@pytest.mark.parametrize("n", N_WORKERS)
@pytest.mark.parametrize("model", MODELS)
def test_out_stores_the_report(ip, model, n):
    value, _ = run(ip, model, f"-n {n} -q -o rep", "worker_id + 10")
    rep = ip.user_ns["rep"]
    assert isinstance(rep, Report)
    assert (rep.model, rep.n_workers, rep.results) == (model, n, value)
    assert value == [10 + i for i in range(n)]
    assert [w.worker_id for w in rep.workers] == list(range(n))
    assert rep.ok and rep.wall > 0
    pids = [w.pid for w in rep.workers]
    if model == "threads":
        assert pids == [os.getpid()] * n
    else:
        assert os.getpid() not in pids and len(set(pids)) == n


@pytest.mark.parametrize("model", MODELS)
def test_report_is_displayed_and_quiet_hides_it(ip, model):
    value, out = run(ip, model, "-n 2", "worker_id")
    assert value == [0, 1]
    (shown,) = out.outputs
    assert 'class="concmagic-report"' in shown.data["text/html"]
    assert shown.data["text/plain"].startswith(f"{model}: 2 workers")

    value, out = run(ip, model, "-n 2 -q", "print('still printed')\nworker_id")
    assert value == [0, 1]
    assert out.outputs == []
    assert out.stdout == "[stdout:0] still printed\n[stdout:1] still printed\n"


# ---------------------------------------------------------------------------
# Output: grouped per worker, in worker order, never interleaved
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("model", MODELS)
def test_output_is_grouped_by_worker_and_never_interleaved(ip, model, n):
    lines = 150
    cell = ("import sys, time\n"
            f"for k in range({lines}):\n"
            "    print(f'w{worker_id} out {k}')\n"
            "    print(f'w{worker_id} err {k}', file=sys.stderr)\n"
            "    if k % 10 == 0:\n"
            "        time.sleep(0.001)   # let the other workers print in between\n"
            "worker_id")
    value, out = run(ip, model, f"-n {n} -q -o rep", cell)
    assert value == list(range(n))
    expected_out = "".join(f"[stdout:{i}]\n" + "".join(f"w{i} out {k}\n" for k in range(lines))
                           for i in range(n))
    expected_err = "".join(f"[stderr:{i}]\n" + "".join(f"w{i} err {k}\n" for k in range(lines))
                           for i in range(n))
    assert out.stdout == expected_out
    assert out.stderr == expected_err
    if model == "threads":
        # the workers really printed at the same time (the grouping is not luck)
        workers = ip.user_ns["rep"].workers
        assert max(w.start for w in workers) < min(w.end for w in workers)


# ---------------------------------------------------------------------------
# Errors raised in workers
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("model", MODELS)
def test_a_failing_worker_keeps_the_others_results(ip, model, n):
    cell = ("value = 10 * worker_id\n"
            "if worker_id == 1:\n"
            "    raise ValueError(f'bad worker {worker_id}')\n"
            "value")
    result, out = run_cell(ip, f"%%{model} -n {n}\n{cell}")
    err = result.error_in_exec
    assert isinstance(err, WorkerError)
    assert err.report.results == [0, None, 20][:n]
    assert list(err.errors) == [1]
    assert isinstance(err.errors[1], ValueError)
    assert str(err.errors[1]) == "bad worker 1"
    shown = shown_text(out)
    assert f"WorkerError: 1 of {n} workers failed ({model})" in shown
    assert "[worker 1] ValueError: bad worker 1" in shown
    assert "raise ValueError(f'bad worker {worker_id}')" in shown   # the cell's own line
    assert re.search(r"line 3, in __cell__", shown)
    # no concmagic internals in what the user sees
    assert "runners" not in shown and "magics.py" not in shown
    # the report was shown too, with the failed row marked
    (report,) = out.outputs
    assert "concmagic-failed" in report.data["text/html"]


@pytest.mark.parametrize("model", MODELS)
def test_a_failing_worker_leaves_the_magic_usable(ip, model):
    with pytest.raises(WorkerError):
        run(ip, model, "-n 2 -q", "1 / (worker_id - 1)")
    value, _ = run(ip, model, "-n 2 -q", "worker_id")
    assert value == [0, 1]


@pytest.mark.parametrize(
    "make, what",
    [(threading.Lock, "_thread.lock"),
     (lambda: open(os.devnull, "w"), "_io.TextIOWrapper"),
     (lambda: (i for i in range(3)), "generator")],
    ids=["lock", "open-file", "generator"])
def test_unshippable_variable_is_named_before_any_worker_starts(ip, make, what):
    thing = make()
    try:
        ip.user_ns["unshippable_thing"] = thing
        with capture_output():
            ip.run_line_magic("concmagic", "shutdown")
        with pytest.raises(UsageError, match=r"cannot ship `unshippable_thing`") as info:
            run(ip, "processes", "-n 2 -q", "unshippable_thing\nworker_id")
        assert what in str(info.value)
        assert "use threads" in str(info.value)
        assert not any(engine.status()["processes"].values())    # nothing was started
        # in threads the very same object is simply shared
        value, _ = run(ip, "threads", "-n 2 -q", "unshippable_thing is not None")
        assert value == [True, True]
    finally:
        if hasattr(thing, "close"):
            thing.close()


def test_a_crashed_worker_process_is_reported_and_replaced(ip):
    cell = "import os\nif worker_id == 1:\n    os._exit(3)\nworker_id"
    result, out = run_cell(ip, f"%%processes -n 3\n{cell}")
    err = result.error_in_exec
    assert isinstance(err, WorkerError)
    assert err.report.results == [0, None, 2]
    died = err.errors[1]
    assert isinstance(died, WorkerDied)
    assert died.exitcode == 3
    shown = shown_text(out)
    assert "[worker 1] WorkerDied" in shown
    assert "exit code 3" in shown
    value, _ = run(ip, "processes", "-n 3 -q", "worker_id")
    assert value == [0, 1, 2]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("model", MODELS)
def test_timeout_stops_an_infinite_loop(ip, model):
    t0 = time.monotonic()
    result, out = run_cell(ip, f"%%{model} -n 2 --timeout 0.5\nwhile True:\n    pass")
    elapsed = time.monotonic() - t0
    assert elapsed < 15, f"the run took {elapsed:.1f} s to stop after a 0.5 s timeout"
    err = result.error_in_exec
    assert isinstance(err, WorkerError)
    assert sorted(err.errors) == [0, 1]
    assert all(isinstance(e, RunTimeout) for e in err.errors.values())
    shown = shown_text(out)
    assert "[worker 0] RunTimeout: did not finish within the timeout of 0.5 s" in shown
    assert "[worker 1] RunTimeout: did not finish within the timeout of 0.5 s" in shown
    value, _ = run(ip, model, "-n 2 -q", "worker_id")
    assert value == [0, 1]


# ---------------------------------------------------------------------------
# Misuse: UsageError naming the problem
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("line, message", [
    ("-n 0", "-n/--workers must be a positive integer; got 0"),
    ("-n -2", "-n/--workers must be a positive integer; got -2"),
    ("-n two", "invalid int value: 'two'"),
    ("--bogus", "unrecognized arguments: --bogus"),
    ("-n 2 --timout 1", "unrecognized arguments: --timout"),
    ("--pull 1x", "--pull takes comma-separated variable names; got '1x'"),
    ("--pull a,1x", "--pull takes comma-separated variable names; got 'a,1x'"),
    ("--pull missing", "--pull: 'missing' is not assigned in the cell"),
    ("--timeout 0", "--timeout must be a positive number of seconds; got 0"),
    ("--timeout -1", "--timeout must be a positive number of seconds; got -1"),
    ("-o 1bad", "-o needs a variable name; got '1bad'"),
    ("-n 2 extra words", "takes options only on its first line; unexpected: 'extra words'"),
])
def test_bad_options_are_usage_errors(ip, model, line, message):
    with pytest.raises(UsageError) as info:
        run(ip, model, line, "worker_id")
    assert message in str(info.value)


def test_fork_start_method_is_refused(ip):
    with pytest.raises(UsageError, match=r"invalid choice: 'fork'"):
        run(ip, "processes", "-n 2 --start-method fork", "worker_id")


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("cell, message", [
    ("x = 1\nyield x", "cell line 2: `yield` at the top level of a cell"),
    ("return worker_id", "cell line 1: `return` at the top level of a cell is not allowed"),
    ("import asyncio\nawait asyncio.sleep(0)", "cell line 2: top-level `await` needs an async cell"),
    ("x = (1", "syntax error"),
])
def test_cells_that_cannot_be_a_function_are_usage_errors(ip, model, cell, message):
    with pytest.raises(UsageError) as info:
        run(ip, model, "-n 2", cell)
    assert message in str(info.value)


@pytest.mark.parametrize("model", MODELS)
def test_usage_errors_show_as_one_line_through_run_cell(ip, model):
    result, out = run_cell(ip, f"%%{model} -n 0\nworker_id")
    assert isinstance(result.error_in_exec, UsageError)
    assert "-n/--workers must be a positive integer; got 0" in shown_text(out)
    assert "Traceback" not in shown_text(out)


# ---------------------------------------------------------------------------
# Line forms
# ---------------------------------------------------------------------------
def test_line_forms(ip):
    with capture_output() as out:
        assert ip.run_line_magic("threads", "-n 2 worker_id * 10") == [0, 10]
        assert ip.run_line_magic("processes", "-n 2 worker_id") == [0, 1]
    assert len(out.outputs) == 2                          # each shows its report


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("line, expected", [
    # the expression is taken as typed: not split into words and joined again
    ('-q -n 2 len("a  b")', [4, 4]),
    ("-q -n 2 len('-n 3')", [4, 4]),
    ("-q -n 2 -worker_id", [0, -1]),
    ("-q -n 2 worker_id -1", [-1, 0]),
    ("-q -n2 n_workers", [2, 2]),
    ("-q -n 2 -n_workers", [-2, -2]),
    ("-q --workers=2 n_workers", [2, 2]),
    ("-q --work 2 n_workers", [2, 2]),
])
def test_line_form_expression_is_taken_verbatim(ip, model, line, expected):
    with capture_output():
        assert ip.run_line_magic(model, line) == expected


@pytest.mark.parametrize("model", MODELS)
def test_line_form_without_an_expression(ip, model):
    with pytest.raises(UsageError, match=rf"%{model} needs an expression"):
        ip.run_line_magic(model, "-n 2")


# ---------------------------------------------------------------------------
# IPython syntax in cells: !cmd and %magic
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("model", MODELS)
def test_shell_commands_run_in_each_worker(ip, model):
    value, out = run(ip, model, "-n 2 -q", "!echo hi\nworker_id")
    assert value == [0, 1]
    # each worker's command output is that worker's output (pexpect may send \r\n)
    assert re.fullmatch(r"\[stdout:0\] hi\r?\n\[stdout:1\] hi\r?\n", out.stdout)


@pytest.mark.parametrize("model", MODELS)
def test_shell_command_output_as_a_value(ip, model):
    value, _ = run(ip, model, "-n 2 -q", "lines = !echo hi\nlist(lines)")
    assert value == [["hi"], ["hi"]]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("cell, expected", [
    ("lines = !echo w{worker_id} of {n_workers}\nlist(lines)", [["w0 of 2"], ["w1 of 2"]]),
    ("lines = !echo w$worker_id\nlist(lines)", [["w0"], ["w1"]]),
    ("tag = 'x' * (worker_id + 1)\nlines = !echo {tag.upper()}\nlist(lines)", [["X"], ["XX"]]),
])
def test_shell_commands_expand_the_workers_variables(ip, model, cell, expected):
    # as in the notebook: {expr} and $name are the cell's values, here per worker
    value, _ = run(ip, model, "-n 2 -q", cell)
    assert value == expected


@pytest.mark.parametrize("model", MODELS)
def test_system_expands_the_workers_variables(ip, model):
    value, out = run(ip, model, "-n 2 -q", "!echo hi from {worker_id}\nworker_id")
    assert value == [0, 1]
    assert re.fullmatch(r"\[stdout:0\] hi from 0\r?\n\[stdout:1\] hi from 1\r?\n", out.stdout)


def test_line_magic_in_processes_is_a_clear_error(ip):
    result, out = run_cell(ip, "%%processes -n 2\n%time 1 + 1\nworker_id")
    err = result.error_in_exec
    assert isinstance(err, WorkerError)
    assert sorted(err.errors) == [0, 1]
    for error in err.errors.values():
        assert isinstance(error, RuntimeError)
        assert str(error).startswith("%time needs the notebook's IPython shell")
        assert "%%processes" in str(error)
    assert "%time needs the notebook's IPython shell" in shown_text(out)


# ---------------------------------------------------------------------------
# %concmagic, %config, help
# ---------------------------------------------------------------------------
def test_status_and_shutdown(ip):
    run(ip, "processes", "-n 2 -q -o rep", "worker_id")
    pids = [w.pid for w in ip.user_ns["rep"].workers]
    assert all(psutil.pid_exists(pid) for pid in pids)

    with capture_output() as out:
        assert ip.run_line_magic("concmagic", "") is None
    status = out.stdout
    assert f"cores: {os.cpu_count()}" in status
    assert re.search(r"GIL (enabled|disabled)", status)
    assert "worker processes (forkserver): 2, pids" in status
    assert all(str(pid) in status for pid in pids)

    with capture_output() as out:
        ip.run_line_magic("concmagic", "shutdown")
    assert "stopped" in out.stdout
    assert not any(psutil.pid_exists(pid) for pid in pids)
    with capture_output() as out:
        ip.run_line_magic("concmagic", "")
    assert "worker processes: none running" in out.stdout
    assert not any(str(pid) in out.stdout for pid in pids)

    value, _ = run(ip, "processes", "-n 2 -q", "worker_id")     # restarted when needed
    assert value == [0, 1]


def test_concmagic_rejects_unknown_commands(ip):
    with pytest.raises(UsageError, match="'shutdown'; got 'restart'"):
        ip.run_line_magic("concmagic", "restart")


@pytest.mark.parametrize("model", MODELS)
def test_config_workers_changes_the_default(ip, model):
    try:
        ip.run_line_magic("config", "ConcMagic.workers = 3")
        value, _ = run(ip, model, "-q", "n_workers")
        assert value == [3, 3, 3]
        with capture_output() as out:
            ip.run_line_magic("concmagic", "")
        assert "default workers: 3" in out.stdout
        value, _ = run(ip, model, "-q -n 2", "n_workers")      # -n still wins
        assert value == [2, 2]
    finally:
        ip.run_line_magic("config", "ConcMagic.workers = 0")
    if model == "threads":                                # 0: one per core (cheap in threads)
        value, _ = run(ip, model, "-q", "n_workers")
        assert value == [os.cpu_count()] * os.cpu_count()


@pytest.mark.parametrize("model", MODELS)
def test_help_lists_the_options(ip, model):
    registered = ip.magics_manager.magics["cell"][model]
    for doc in (registered.__doc__, getattr(ConcMagic, model).__doc__):
        for option in ("-n N, --workers N", "--pull", "--timeout", "-o NAME", "-q, --quiet"):
            assert option in doc
    assert ("--start-method" in registered.__doc__) == (model == "processes")


# ---------------------------------------------------------------------------
# No leaks: threads, processes, file descriptors
# ---------------------------------------------------------------------------
@pytest.mark.timeout(240)
@pytest.mark.parametrize("model", MODELS)
def test_no_leaks_over_200_runs(ip, model):
    me = psutil.Process()

    def snapshot():
        return {"threads": threading.active_count(),
                "children": sorted(p.pid for p in me.children(recursive=True)),
                "fds": me.num_fds()}

    for _ in range(5):                                    # warm-up: pools, caches
        run(ip, model, "-n 2 -q", "worker_id")
    before = snapshot()
    for _ in range(200):
        value, out = run(ip, model, "-n 2 -q", "worker_id * 2")
        assert value == [0, 2]
    assert out.outputs == [] and out.stdout == ""
    after = snapshot()
    assert after == before


# -- %%asyncio ------------------------------------------------------------------
def test_asyncio_cell_awaits_concurrently_and_returns_results_in_order(ip):
    with capture_output() as cap:
        out = ip.run_cell_magic("asyncio", "-n 4 -o rep",
                                "import asyncio\nawait asyncio.sleep(0.3)\nprint('w', worker_id)\n"
                                "worker_id * 10")
    wall = ip.user_ns["rep"].wall           # the run's own wall: displaying it is not part of it
    assert out == [0, 10, 20, 30]
    assert wall < 0.3 * 4 * 0.6, f"4 tasks sleeping 0.3 s took {wall:.2f} s: not concurrent"
    assert [line for line in cap.stdout.splitlines() if line.startswith("[stdout")] == \
        [f"[stdout:{i}] w {i}" for i in range(4)]


def test_asyncio_line_form_and_pull(ip):
    with capture_output():
        assert ip.run_line_magic("asyncio", "-n 2 -q worker_id + 1") == [1, 2]
        ip.run_cell_magic("asyncio", "-n 2 -q --pull y", "y = worker_id * 3")
    assert ip.user_ns["y"] == [0, 3]


def test_asyncio_timeout_stops_an_awaiting_cell(ip):
    t0 = time.perf_counter()
    with capture_output():
        result = ip.run_cell("%%asyncio -n 2 --timeout 0.5\nimport asyncio\nawait asyncio.sleep(100)")
    assert time.perf_counter() - t0 < 5
    assert isinstance(result.error_in_exec, WorkerError)
    assert all(type(e).__name__ == "RunTimeout" for e in result.error_in_exec.errors.values())


def test_threads_cell_rejects_await_but_asyncio_accepts_it(ip):
    with pytest.raises(UsageError, match="await"):
        ip.run_cell_magic("threads", "-n 1", "import asyncio\nawait asyncio.sleep(0)")
    with capture_output():
        assert ip.run_cell_magic("asyncio", "-n 1 -q", "import asyncio\nawait asyncio.sleep(0)\n7") == [7]
