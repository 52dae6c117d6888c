"""Tests for shared arrays (``share=``, ``--share``) and the shipping report.

What they guard:
- no copy: a worker's array lies in a mapping of the run's memfd, with the
  notebook's shape, dtype and layout; worker writes are in the notebook's
  array after the run (and notebook writes reach the next run);
- the reuse rule: the very view concmagic handed out goes again with no
  copy; anything else (a new array, a slice, a copy) is copied in;
- nothing leaks, whatever happens: after every fault (an exception, os._exit,
  --timeout, a worker that ignores the stop and is killed, SIGKILL from
  outside, Ctrl-C, a cell that keeps a reference) no worker maps or holds a
  shared array, /dev/shm holds nothing new, and once the notebook drops its
  variable no process maps the memory and no descriptor is left;
- bad input is named before anything starts (no copy, no worker);
- the shipping figures and the verdict that names them.

Cell functions are made as the magics make them (a ``__main__`` namespace),
so cloudpickle ships them by value, as from a notebook; the magic tests go
through a real IPython shell. Arrays are small but for the shipping tests.
"""
import functools
import gc
import os
import signal
import threading
import time
import warnings

import numpy as np
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

import concmagic
from concmagic import engine
from concmagic.cell import make_cell_function
from concmagic.comparison import SHIPPING, SHIPPING_MIN, classify
from concmagic.errors import RunTimeout, ShareError, ShipError, WorkerDied, WorkerError
from concmagic.runners import processes
from concmagic.runners.processes import START_METHODS

MEMFD = "memfd:concmagic"
# Descriptors the notebook holds per shared array while its view lives:
# concmagic's own (to hand it out again) and the duplicate that Python's
# mmap object keeps of any file it maps.
FDS_PER_ARRAY = 2


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
def main_ns(**values):
    return {"__name__": "__main__", **values}


def cell(text, ns):
    return make_cell_function(text, ns).func


def pool_pids():
    return {pid for pids in processes.pool_status().values() for pid in pids}


def mapped(pid="self"):
    """Lines of /proc/PID/maps that map a concmagic memfd ([] for a process that is gone)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return [line for line in f if MEMFD in line]
    except (FileNotFoundError, ProcessLookupError):
        return []


def memfds(pid="self"):
    """Descriptors of PID open on a concmagic memfd."""
    found = []
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if MEMFD in os.readlink(f"/proc/{pid}/fd/{fd}"):
                    found.append(fd)
            except OSError:                       # closed meanwhile
                pass
    except (FileNotFoundError, ProcessLookupError):
        pass
    return found


def shm():
    """The shared memory segments in /dev/shm. Named semaphores (sem.*) are
    left out: other programs on this shared machine (multiprocessing and
    loky pools) make and drop them all the time, and concmagic makes none."""
    return {name for name in os.listdir("/dev/shm") if not name.startswith("sem.")}


def shm_leftover(before, deadline=2.0):
    """New segments in /dev/shm that stay (another program's may come and go)."""
    end = time.monotonic() + deadline
    while True:
        new = shm() - before
        if not new or time.monotonic() > end:
            return new
        time.sleep(0.05)


def workers_clean(pids=None):
    """{pid: what it still maps or holds} for worker processes holding a shared array."""
    pids = pool_pids() if pids is None else pids
    return {pid: mapped(pid) + memfds(pid) for pid in pids if mapped(pid) or memfds(pid)}


def forget(ns, *names):
    """Drop the notebook's views; True once this process maps and holds no memfd."""
    for name in names:
        ns.pop(name, None)
    end = time.monotonic() + 2
    while mapped() or memfds():
        gc.collect()
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture(scope="module", autouse=True)
def _stop_pools_at_end():
    yield
    engine.shutdown()


@pytest.fixture
def clean():
    """The test starts with no shared memory anywhere and must leave none:
    no new /dev/shm entry, no memfd mapped or held here or in a worker."""
    gc.collect()
    assert not mapped() and not memfds(), "an earlier test left shared memory behind"
    before = shm()
    yield
    gc.collect()
    assert shm_leftover(before) == set(), "/dev/shm has new entries"
    assert workers_clean() == {}
    assert not mapped() and not memfds(), "this process still maps or holds shared memory"


# Each worker says where its `A` lives: (pid, owns data, its base's type, shape,
# dtype, C/F-contiguous, the /proc/self/maps line holding A's first byte).
WHERE = """
import os
def where(a):
    addr = a.__array_interface__['data'][0]
    with open('/proc/self/maps') as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split('-'))
            if lo <= addr < hi:
                return line.split(None, 5)[-1].strip()
    return None
(os.getpid(), A.flags.owndata, type(A.base).__name__, A.shape, A.dtype.str,
 A.flags.c_contiguous, A.flags.f_contiguous, where(A))
"""


# ---------------------------------------------------------------------------
# No copy: the workers map the notebook's array
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("start_method", START_METHODS)
def test_workers_map_the_array_and_their_writes_reach_the_notebook(start_method, clean):
    ns = main_ns(A=np.zeros(1000))
    original = ns["A"]
    f = cell("A[worker_id] = worker_id + 1\n" + WHERE, ns)
    report = concmagic.run(f, 3, "processes", share=["A"], start_method=start_method)
    pids = {r[0] for r in report.results}
    assert len(pids) == 3
    for worker_id, (pid, owns, base, shape, dtype, c, fortran, where) in enumerate(report.results):
        assert (owns, shape, dtype, c) == (False, (1000,), "<f8", True), worker_id
        assert where is not None and "/memfd:concmagic:A" in where, \
            f"worker {worker_id}'s A is not in the shared memory: {where!r}"
    # The notebook's name now views the same memory: the writes are there.
    assert ns["A"] is not original and ns["A"] is report.shared["A"]
    assert list(ns["A"][:4]) == [1.0, 2.0, 3.0, 0.0]
    assert original[:3].tolist() == [0.0, 0.0, 0.0], "the old array was written to"
    assert workers_clean(pids) == {}, "a worker still maps the array after the run"
    del report
    assert forget(ns, "A")


DTYPES = {
    "float64": np.arange(12, dtype=np.float64),
    "int8": np.arange(-6, 6, dtype=np.int8),
    "bool": np.array([True, False] * 5),
    "complex": np.arange(5) * (1 + 2j),
    "unicode": np.array(["a", "bb", "ccc"]),
    "datetime": np.array(["2024-01-01", "2025-06-30"], dtype="datetime64[D]"),
    "record": np.array([(1, 2.5), (3, 4.5)], dtype=[("i", "<i4"), ("x", "<f8")]),
    "big-endian": np.arange(6, dtype=">i4"),
    "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
    "strided": np.arange(40.0).reshape(4, 10)[:, ::3],
    "empty": np.zeros((0, 3)),
    "scalar": np.array(7.5),
}


@pytest.mark.parametrize("kind", list(DTYPES))
def test_every_dtype_and_layout_arrives_intact(kind, clean):
    value = DTYPES[kind]
    ns = main_ns(A=value)
    f = cell("(A.shape, A.dtype.str, A.flags.f_contiguous and not A.flags.c_contiguous, "
             "A.tolist())", ns)
    report = concmagic.run(f, 2, "processes", share="A")
    fortran = kind == "fortran"
    expected = (value.shape, value.dtype.str, fortran, value.tolist())
    assert report.results == [expected, expected]
    assert ns["A"].tolist() == value.tolist() and ns["A"].dtype == value.dtype
    # A strided array is copied into shared memory in C order; a Fortran
    # one keeps its layout; nothing is shipped pickled.
    assert report.shipping.shared == {"A": value.nbytes}
    del report
    assert forget(ns, "A")


def test_notebook_writes_reach_the_next_run_and_races_are_real(clean):
    ns = main_ns(A=np.zeros(2, dtype=np.int64))
    # Each worker adds 1 to A[0] 20000 times, unsynchronised: a
    # read-modify-write race on real shared memory (`+=` on an element is
    # a load, an add and a store). A[1] is written by worker 1 only.
    f = cell("for _ in range(20000):\n"
             "    A[0] += 1\n"
             "if worker_id == 1:\n"
             "    A[1] = 7\n"
             "int(A[0])", ns)
    concmagic.run(f, 2, "processes", share=["A"])
    total = int(ns["A"][0])
    assert 20000 <= total <= 40000 and ns["A"][1] == 7
    ns["A"][:] = -5                               # the notebook writes; the workers see it
    report = concmagic.run(cell("A.tolist()", ns), 2, "processes", share=["A"])
    assert report.results == [[-5, -5], [-5, -5]]
    del report
    assert forget(ns, "A")


def test_a_result_that_is_the_shared_array_comes_back_as_the_view(clean):
    ns = main_ns(A=np.arange(100_000.0))
    report = concmagic.run(cell("A[worker_id] = -1\nA", ns), 2, "processes", share=["A"])
    assert report.results[0] is ns["A"] and report.results[1] is ns["A"]
    assert report.shipping.received < 10_000, "the array was sent back by value"
    del report
    assert forget(ns, "A")


def test_mapping_form_rebinds_nothing_and_gives_the_views_on_the_report(clean):
    data = np.zeros(4)

    def func(worker_id, n_workers):               # a closure over `data`: it goes as a reference
        data[worker_id] = worker_id + 1
        return float(data.sum())

    report = concmagic.run(func, 2, "processes", share={"C": data})
    view = report.shared["C"]
    assert data.tolist() == [0.0] * 4, "the caller's array was written to"
    assert view.tolist() == [1.0, 2.0, 0.0, 0.0]
    assert report.shipping.shared == {"C": 32} and report.shipping.sent < 20_000
    # The view handed back is reused: no copy.
    again = concmagic.run(func, 2, "processes", share={"C": view})
    assert again.shipping.reused == ["C"] and again.shipping.copied == 0
    assert again.shared["C"] is view
    del report, again, view, func
    assert forget({}), (mapped(), memfds())


def test_mapping_names_are_globals_in_the_workers_for_the_run_only(clean):
    # The cell reads a global C that its namespace does not define: the
    # workers have it as a global while the run lasts.
    f = cell("C[worker_id] = 5\nglobals().get('C') is C", main_ns())
    report = concmagic.run(f, 2, "processes", share={"C": np.zeros(2)})
    assert report.results == [True, True] and report.shared["C"].tolist() == [5.0, 5.0]
    after = concmagic.run(cell("'C' in globals()", main_ns()), 2, "processes")
    assert after.results == [False, False]
    del report
    assert forget({}), (mapped(), memfds())


def test_a_cell_that_keeps_a_reference_gets_its_worker_retired(clean):
    ns = main_ns(A=np.arange(3.0))
    # Stored in a module, the view would keep the memory mapped in that
    # worker for as long as it lives: it is retired after its reply instead.
    f = cell("import json\njson._kept = A\nA.tolist()", ns)
    report = concmagic.run(f, 1, "processes", share=["A"])
    assert report.results == [[0.0, 1.0, 2.0]]
    assert any("retired" in note for note in report.notes), report.notes
    pid = report.workers[0].pid
    assert mapped(pid) == [] and pid not in pool_pids()
    assert concmagic.run(cell("worker_id", main_ns()), 1, "processes").results == [0]
    del report
    assert forget(ns, "A")


def test_comm_and_share_in_one_run(clean):
    ns = main_ns(A=np.zeros(3))
    f = cell("A[worker_id] = worker_id + 10\n"
             "comm.barrier()\n"
             "comm.bcast(A.tolist() if worker_id == 0 else None)", ns)
    report = concmagic.run(f, 3, "processes", share=["A"])
    assert report.results == [[10.0, 11.0, 12.0]] * 3
    del report
    assert forget(ns, "A")


# ---------------------------------------------------------------------------
# The reuse rule
# ---------------------------------------------------------------------------
def test_the_view_is_reused_and_anything_else_copied(clean):
    ns = main_ns(A=np.arange(1000.0))
    f = cell("float(A.sum())", ns)
    first = concmagic.run(f, 2, "processes", share=["A"])
    assert first.shipping.copied == 8000 and first.shipping.reused == []
    view = ns["A"]
    fds = memfds()
    assert len(fds) == FDS_PER_ARRAY

    again = concmagic.run(f, 2, "processes", share=["A"])
    assert again.shipping.reused == ["A"] and again.shipping.copied == 0
    assert ns["A"] is view and memfds() == fds, "the unchanged view was copied again"

    view[0] = 1000.0                              # a write to the view: still no copy
    third = concmagic.run(f, 2, "processes", share=["A"])
    assert third.shipping.copied == 0 and third.results == [float(view.sum())] * 2

    for rebind in ("A + 0", "A.copy()", "A[::2]", "A.reshape(10, 100)", "A[:]"):
        ns["A"] = eval(rebind, {"A": view})       # not the view itself: copied in
        report = concmagic.run(f, 2, "processes", share=["A"])
        assert report.shipping.copied == ns["A"].nbytes, rebind
        assert report.shipping.reused == [], rebind
        assert report.results == [float(ns["A"].sum())] * 2, rebind
    del first, again, third, report, view
    assert forget(ns, "A")


def test_one_array_under_two_names_is_placed_once(clean):
    a = np.arange(10.0)
    ns = main_ns(A=a, B=a)
    report = concmagic.run(cell("A[0] = 99\nB[0]", ns), 1, "processes", share=["A", "B"])
    assert report.results == [99.0]
    assert ns["A"] is ns["B"] and report.shipping.copied == 80
    del report
    assert forget(ns, "A", "B")


# ---------------------------------------------------------------------------
# Bad input: named before anything starts
# ---------------------------------------------------------------------------
BAD = {
    "undefined": (None, "no variable of that name"),
    "list": ([1, 2, 3], "builtins.list, not a NumPy array"),
    "object dtype": (np.array([1, "a"], dtype=object), "holds Python objects"),
    "record of objects": (np.zeros(2, dtype=[("o", object)]), "holds Python objects"),
    "masked": (np.ma.masked_array([1, 2], mask=[0, 1]), "subclass"),
}
with warnings.catch_warnings():                   # np.matrix is pending deprecation
    warnings.simplefilter("ignore", PendingDeprecationWarning)
    BAD["matrix"] = (np.matrix([[1, 2]]), "subclass")


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_names_are_refused_before_anything_starts(kind, clean):
    value, words = BAD[kind]
    ns = main_ns() if value is None else main_ns(X=value)
    concmagic.run(cell("1", main_ns()), 2, "processes")        # a warm pool to leave alone
    pids = pool_pids()
    with pytest.raises(ShareError) as info:
        concmagic.run(cell("1", ns), 2, "processes", share=["X"])
    assert isinstance(info.value, ShipError) and info.value.name == "X"
    assert "`X`" in str(info.value) and words in str(info.value)
    assert pool_pids() == pids, "the warm pool was touched"
    assert ("X" not in ns) or ns["X"] is value, "the variable was rebound"


def test_other_bad_requests():
    ns = main_ns(A=np.zeros(3))
    f = cell("1", ns)
    for model in ("serial", "threads", "asyncio"):
        with pytest.raises(ValueError, match="share applies to model='processes' only"):
            concmagic.run(f, 2, model, share=["A"])
    with pytest.raises(ShareError, match="not a valid Python name"):
        concmagic.run(f, 2, "processes", share=["not a name"])
    with pytest.raises(ShareError, match="not a NumPy array"):
        concmagic.run(f, 2, "processes", share={"A": [1, 2]})
    with pytest.raises(ShareError, match="pass a mapping"):
        concmagic.run(functools.partial(lambda worker_id, n_workers: 1), 2, "processes",
                      share=["A"])
    assert isinstance(ns["A"], np.ndarray) and ns["A"].base is None


def test_an_unshippable_cell_places_nothing(clean):
    ns = main_ns(A=np.zeros(3), lock=threading.Lock())
    original = ns["A"]
    with pytest.raises(ShipError) as info:
        concmagic.run(cell("lock\nA", ns), 2, "processes", share=["A"])
    assert info.value.name == "lock" and not isinstance(info.value, ShareError)
    assert ns["A"] is original and not mapped()


# ---------------------------------------------------------------------------
# Faults: nothing leaks
# ---------------------------------------------------------------------------
FAULTS = {
    "raise": ("if worker_id == 1:\n    raise ValueError('boom')\n", None, ValueError),
    "os._exit": ("if worker_id == 1:\n    os._exit(3)\n", None, WorkerDied),
    "timeout": ("while True:\n    A[2] += 1\n", 0.5, RunTimeout),
    # SIGUSR1 ignored: the stop is not heard, and after a second the worker is killed.
    "timeout, killed": ("signal.signal(signal.SIGUSR1, signal.SIG_IGN)\n"
                        "while True:\n    A[2] += 1\n", 0.5, RunTimeout),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_faults_leave_nothing_behind(fault, clean):
    body, timeout, error_type = FAULTS[fault]
    ns = main_ns(A=np.zeros(4))
    f = cell("import os, signal\nA[worker_id] = 1\n" + body + "worker_id", ns)
    with pytest.raises(WorkerError) as info:
        concmagic.run(f, 2, "processes", share=["A"], timeout=timeout)
    report = info.value.report
    assert isinstance(report.errors[1], error_type), report.errors
    pids = {w.pid for w in report.workers}
    del info, report
    # Writes made before the fault are in the notebook's array.
    assert ns["A"][:2].tolist() == [1.0, 1.0]
    assert workers_clean(pids) == {}, "a worker kept the shared array after the fault"
    assert len(memfds()) == FDS_PER_ARRAY         # the notebook's view keeps it, nothing more
    assert forget(ns, "A"), "the memory outlived the notebook's variable"
    # The pool still works.
    assert concmagic.run(cell("worker_id", main_ns()), 2, "processes").results == [0, 1]


def test_sigkill_of_a_worker_from_outside(clean):
    concmagic.run(cell("1", main_ns()), 2, "processes")         # the workers, started
    target = processes._gang_for(processes.DEFAULT_START_METHOD).procs[1].pid
    ns = main_ns(A=np.zeros(4))
    f = cell("import time\nA[worker_id] = 1\n"
             "if worker_id == 1:\n"
             "    t = time.monotonic()\n"
             "    while time.monotonic() - t < 20:\n"
             "        time.sleep(0.01)\n"
             "worker_id", ns)

    def killer():                                 # once worker 1 has written to the array
        end = time.monotonic() + 10
        while time.monotonic() < end and ns["A"][1] != 1:
            time.sleep(0.01)
        os.kill(target, signal.SIGKILL)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    with pytest.raises(WorkerError) as info:
        concmagic.run(f, 2, "processes", share=["A"], timeout=30)
    thread.join(5)
    report = info.value.report
    assert report.workers[1].pid == target
    assert isinstance(report.errors[1], WorkerDied) and report.errors[1].signal == "SIGKILL"
    assert report.results[0] == 0
    del info, report
    assert ns["A"][:2].tolist() == [1.0, 1.0]
    assert workers_clean() == {}
    assert forget(ns, "A")


@pytest.mark.skipif(signal.getsignal(signal.SIGINT) is not signal.default_int_handler,
                    reason="SIGINT does not raise KeyboardInterrupt here")
def test_ctrl_c_leaves_nothing_behind(clean):
    concmagic.run(cell("1", main_ns()), 2, "processes")
    ns = main_ns(A=np.zeros(4))
    f = cell("import time\nA[worker_id] = 1\n"
             "t = time.monotonic()\n"
             "while time.monotonic() - t < 20:\n"
             "    time.sleep(0.01)\n", ns)
    main = threading.main_thread().ident
    assert threading.get_ident() == main
    timer = threading.Timer(0.5, signal.pthread_kill, args=(main, signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            concmagic.run(f, 2, "processes", share=["A"], timeout=30)
    finally:
        timer.cancel()
    assert ns["A"][:2].tolist() == [1.0, 1.0]
    assert workers_clean() == {}
    assert forget(ns, "A")


# ---------------------------------------------------------------------------
# Shipping: the report and the verdict
# ---------------------------------------------------------------------------
def test_shipping_counts_what_was_pickled_and_what_was_shared(clean):
    big = np.random.default_rng(0).random(2_000_000)          # 16 MB
    ns = main_ns(A=big)
    f = cell("float(A[worker_id])", ns)
    pickled = concmagic.run(f, 2, "processes")
    s = pickled.shipping
    assert s.sent >= 2 * big.nbytes and s.received < 10_000
    assert s.captured == {"A": big.nbytes} and s.shareable == ["A"]
    assert s.pickle > 0 and s.send > 0 and all(t > 0 for t in s.worker_load)
    assert all(t is not None and t >= 0 for t in s.worker_dump)
    assert 0 < s.fraction <= 1 and s.seconds >= s.pickle
    text = str(pickled)
    assert "shipped: 32 MB to workers" in text and "--share A would not copy it" in text
    assert "concmagic-shipping" in pickled._repr_html_()
    assert pickled.to_dict()["shipping"]["sent"] == s.sent

    shared_run = concmagic.run(f, 2, "processes", share=["A"])
    t = shared_run.shipping
    assert t.sent < 20_000, "the shared array was pickled anyway"
    assert t.shared == {"A": big.nbytes} and t.captured == {} and t.copied == big.nbytes
    assert "shared, not shipped: A 16 MB (copied in)" in str(shared_run)
    assert shared_run.results == pickled.results
    reused = concmagic.run(f, 2, "processes", share=["A"])
    assert "A 16 MB (reused, no copy)" in str(reused)
    del pickled, shared_run, reused
    assert forget(ns, "A")


def test_no_shipping_in_process():
    report = concmagic.run(lambda worker_id, n_workers: 1, 2, "threads")
    assert report.shipping is None and "shipped" not in str(report)


def _figures(fraction, seconds, sent=800_000_000, received=1000, shareable=("A",)):
    return {"n_workers": 2, "cores": 2, "models": ("serial", "threads", "processes"),
            "speedup": {"serial": 1.0, "threads": 1.0, "processes": 0.6},
            "cpu_parallelism": {"serial": 1.0, "threads": 1.0, "processes": 0.5},
            "gil_wait": {"threads": 0.9}, "worker_time": 0.5, "cpu_fraction": 1.0,
            "shipping": {"processes": {"fraction": fraction, "seconds": seconds,
                                       "bytes": sent + received, "sent": sent,
                                       "received": received, "shareable": list(shareable),
                                       "shared": []}}}


def test_verdict_names_shipping_from_its_thresholds():
    text = classify(_figures(0.4, 1.0)).text
    assert "processes lost 40% of the time shipping 800 MB; try --share A" in text
    assert "shipping" in classify(_figures(SHIPPING, SHIPPING_MIN)).text
    assert "shipping" not in classify(_figures(SHIPPING * 0.99, 1.0)).text
    assert "shipping" not in classify(_figures(0.9, SHIPPING_MIN * 0.99)).text
    other = classify(_figures(0.5, 1.0, shareable=())).text
    assert "make the data inside the cell" in other
    back = classify(_figures(0.5, 1.0, sent=1000, received=500_000_000, shareable=())).text
    assert "return less" in back
    assert classify(_figures(0.4, 1.0)).kind == classify(_figures(0.0, 0.0)).kind


def test_compare_names_shipping_and_share_fixes_it(clean):
    ns = main_ns(A=np.random.default_rng(1).random(4_000_000))     # 32 MB
    f = cell("float(A[worker_id::n_workers][:100].sum())", ns)
    pickled = concmagic.compare(f, 2, models=("serial", "processes"))
    assert "processes lost" in pickled.verdict and "try --share A" in pickled.verdict
    assert pickled.figures["shipping"]["processes"]["shareable"] == ["A"]
    shared_cmp = concmagic.compare(f, 2, models=("serial", "processes"), share=["A"])
    assert "processes lost" not in shared_cmp.verdict
    assert shared_cmp.reports["processes"].shipping.shared == {"A": 32_000_000}
    del pickled, shared_cmp
    assert forget(ns, "A")


# ---------------------------------------------------------------------------
# The magic, in a real shell
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shell():
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "concmagic")
    yield ip


def run_magic(ip, magic, line, body):
    """(the cell's value, the text of what it displayed)."""
    with capture_output() as out:
        value = ip.run_cell_magic(magic, line, body)
    return value, "\n".join(o.data["text/plain"] for o in out.outputs)


def test_magic_share_writes_reach_the_notebook_and_reuse(shell, clean):
    shell.user_ns["A"] = np.zeros(6)
    value, out = run_magic(shell, "processes", "-n 2 --share A -o rep",
                           "A[worker_id] = worker_id + 1\nfloat(A.sum())")
    assert shell.user_ns["rep"].shared["A"] is shell.user_ns["A"]
    assert shell.user_ns["A"][:3].tolist() == [1.0, 2.0, 0.0]
    assert "shared, not shipped: A 48 B (copied in)" in out
    # No local may hold the view across a magic: IPython reads its caller's
    # locals (for $var in the line), and Python 3.11 then keeps a snapshot.
    view_id = id(shell.user_ns["A"])
    value, out = run_magic(shell, "processes", "-n 2 --share A", "A[5] = 9\nA[5]")
    assert value == [9.0, 9.0] and id(shell.user_ns["A"]) == view_id
    assert "A 48 B (reused, no copy)" in out
    for name in ("A", "rep"):
        shell.user_ns.pop(name)
    assert forget({}), (mapped(), memfds())


def test_magic_share_keeps_writes_when_the_run_times_out(shell, clean):
    shell.user_ns["A"] = np.zeros(2)
    with pytest.raises(WorkerError):
        run_magic(shell, "processes", "-n 2 --share A --timeout 0.5",
                  "A[worker_id] = 3\nwhile True:\n    pass")
    assert shell.user_ns["A"].tolist() == [3.0, 3.0]
    assert workers_clean() == {}
    shell.user_ns.pop("A")
    assert forget({}), (mapped(), memfds())


@pytest.mark.parametrize("magic", ["threads", "asyncio"])
def test_magic_share_with_another_model_is_a_usage_error(shell, magic):
    shell.user_ns["A"] = np.zeros(2)
    with pytest.raises(UsageError, match="--share applies to %%processes only"):
        run_magic(shell, magic, "-n 2 --share A", "1")
    shell.user_ns.pop("A")


@pytest.mark.parametrize("line, words", [
    ("--share nope", "cannot share `nope`"),
    ("--share L", "not a NumPy array"),
    ("--share 1x", "--share takes comma-separated variable names"),
    ("--share O", "holds Python objects"),
])
def test_magic_bad_share_is_a_usage_error(shell, line, words):
    shell.user_ns.update(L=[1, 2], O=np.array([None, 1]))
    with pytest.raises(UsageError, match=words.replace("(", r"\(")):
        run_magic(shell, "processes", "-n 2 " + line, "1")
    for name in ("L", "O"):
        shell.user_ns.pop(name)


def test_magic_compare_with_share(shell, clean):
    shell.user_ns["A"] = np.ones(1000)
    with pytest.raises(UsageError, match="--models has none"):
        run_magic(shell, "compare", "-n 2 --models serial,threads --share A", "1")
    with capture_output() as out:
        shell.run_cell_magic("compare", "-n 2 --models serial,processes --share A -o cmp",
                             "float(A.sum())")
    assert "compare: 2 workers" in out.outputs[0].data["text/plain"]
    cmp = shell.user_ns.pop("cmp")
    assert cmp.reports["processes"].results == [1000.0, 1000.0]
    assert cmp.reports["processes"].shipping.shared == {"A": 8000}
    assert shell.user_ns["A"] is cmp.reports["processes"].shared["A"]
    del cmp
    shell.user_ns.pop("A")
    assert forget({}), (mapped(), memfds())
