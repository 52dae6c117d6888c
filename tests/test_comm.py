"""Tests for concmagic.comm: workers talking with send, recv, barrier and bcast.

Every exchange runs for real in each model: threads, asyncio (where the
waiting calls are awaited), processes under forkserver and spawn, and serial
where a message can go forward only. Cells are made as the magics make them
(`make_cell_function` over a namespace named ``__main__``), so processes get
them by value. Deadlock-prone cells run with a short comm timeout and must
end with the error that names the worker and the call; the margins on wall
time are several times what a healthy run needs (a shared 2-core machine).
"""
import math
import multiprocessing
import os
import pickle
import re
import threading
import time

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

import concmagic
from concmagic import comm as comm_module
from concmagic import engine
from concmagic.cell import make_cell_function
from concmagic.comm import CommStats, format_bytes, wants_comm
from concmagic.errors import CommError, CommTimeout, RunTimeout, WorkerDied, WorkerError

# (model, start method): every way a cell's workers can talk.
KINDS = [("threads", None), ("asyncio", None), ("processes", "forkserver"),
         ("processes", "spawn")]
KIND_IDS = ["threads", "asyncio", "processes-forkserver", "processes-spawn"]
IN_MEMORY = [("threads", None), ("asyncio", None)]


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
def main_ns(**values):
    return {"__name__": "__main__", **values}


def cell(text, model, ns=None):
    """The cell function of `text`; ``AWAIT `` becomes ``await `` in asyncio and
    ``SLEEP(`` the model's sleep (asyncio.sleep awaited, time.sleep elsewhere)."""
    is_async = model == "asyncio"
    text = text.replace("AWAIT ", "await " if is_async else "")
    text = text.replace("SLEEP(", "await asyncio.sleep(" if is_async else "time.sleep(")
    text = "import asyncio, time\n" + text
    return make_cell_function(text, main_ns() if ns is None else ns, is_async=is_async).func


def go(func, n, kind, **kwargs):
    model, method = kind
    kwargs.setdefault("timeout", 60)
    if method is not None:
        kwargs["start_method"] = method
    return concmagic.run(func, n, model, **kwargs)


def resources():
    """What a leak would grow: threads, child processes, OS threads, open fds."""
    return {
        "threads": threading.active_count(),
        "children": len(multiprocessing.active_children()),
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


@pytest.fixture(scope="module", autouse=True)
def _stop_pools_at_end():
    yield
    engine.shutdown()


PING_PONG = """
if worker_id == 0:
    comm.send(1, ('ping', 1))
    got = AWAIT comm.recv(source=1)
else:
    msg = AWAIT comm.recv(source=0)
    comm.send(0, (msg[0] + '-pong', msg[1] + 1))
    got = msg
got
"""


# ---------------------------------------------------------------------------
# Values: ping-pong, many round trips, bcast, barrier, recv from anyone
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_ping_pong(kind):
    report = go(cell(PING_PONG, kind[0]), 2, kind)
    assert report.results == [("ping-pong", 2), ("ping", 1)]


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_many_round_trips_keep_their_order(kind):
    text = """
got = []
for i in range(200):
    if worker_id == 0:
        comm.send(1, i)
        got.append(AWAIT comm.recv(source=1))
    else:
        comm.send(0, 2 * (AWAIT comm.recv(source=0)))
got
"""
    report = go(cell(text, kind[0]), 2, kind)
    assert report.results == [[2 * i for i in range(200)], []]


@pytest.mark.parametrize("root", [0, 2])
@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_bcast_gives_every_worker_the_roots_object(kind, root):
    text = f"""
obj = {{'from': worker_id, 'data': list(range(5))}} if worker_id == {root} else None
AWAIT comm.bcast(obj, root={root})
"""
    report = go(cell(text, kind[0]), 3, kind)
    assert report.results == [{"from": root, "data": [0, 1, 2, 3, 4]}] * 3
    assert report.comm.messages == 2
    assert report.comm.workers[root]["sent"] == 2


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_barrier_waits_for_every_worker(kind):
    # Workers arrive 0.15 s apart; none may leave before the last arrives,
    # twice over (the second barrier must not be answered by the first's tokens).
    text = """
times = []
for round in range(2):
    SLEEP(0.15 * worker_id if round == 0 else 0.15 * (2 - worker_id))
    arrived = time.monotonic()
    AWAIT comm.barrier()
    times.append((arrived, time.monotonic()))
times
"""
    report = go(cell(text, kind[0]), 3, kind)
    for round in range(2):
        arrivals = [r[round][0] for r in report.results]
        departures = [r[round][1] for r in report.results]
        assert min(departures) >= max(arrivals), (round, arrivals, departures)
    assert report.comm.barriers == 2
    assert "2 barriers" in str(report)


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_recv_from_anyone_and_last_source(kind):
    text = """
if worker_id == 0:
    got = []
    for _ in range(n_workers - 1):
        value = AWAIT comm.recv()
        got.append((comm.last_source, value))
    result = sorted(got)
else:
    comm.send(0, worker_id * 10)
    result = None
result
"""
    report = go(cell(text, kind[0]), 3, kind)
    assert report.results == [[(1, 10), (2, 20)], None, None]


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_recv_from_one_source_passes_over_the_others(kind):
    text = """
if worker_id == 0:
    SLEEP(0.2)                         # both messages are there: 1's may have come first
    result = [AWAIT comm.recv(source=2), AWAIT comm.recv(source=1), AWAIT comm.recv(source=2)]
elif worker_id == 1:
    comm.send(0, 'from 1')
    result = None
else:
    comm.send(0, 'from 2 first')
    comm.send(0, 'from 2 second')
    result = None
result
"""
    report = go(cell(text, kind[0]), 3, kind)
    assert report.results[0] == ["from 2 first", "from 1", "from 2 second"]


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_bcast_and_messages_do_not_mix(kind):
    text = """
if worker_id == 0:
    comm.send(1, 'message')
    b = AWAIT comm.bcast('broadcast')
    result = b
else:
    b = AWAIT comm.bcast()
    m = AWAIT comm.recv()
    result = (b, m)
result
"""
    report = go(cell(text, kind[0]), 2, kind)
    assert report.results == ["broadcast", ("broadcast", "message")]


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_send_to_itself(kind):
    report = go(cell("comm.send(worker_id, [worker_id])\nAWAIT comm.recv(source=worker_id)",
                     kind[0]), 2, kind)
    assert report.results == [[0], [1]]


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_one_worker_comm(kind):
    text = "AWAIT comm.barrier()\n(comm.rank, comm.size, AWAIT comm.bcast('solo'))"
    assert go(cell(text, kind[0]), 1, kind).results == [(0, 1, "solo")]


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_objects_handed_over_in_memory_and_copied_between_processes(kind):
    ns = main_ns(box=[1, 2, 3])
    text = """
if worker_id == 0:
    comm.send(1, box)
    result = None
else:
    got = AWAIT comm.recv()
    result = (got == box, got is box)
result
"""
    report = go(cell(text, kind[0], ns), 2, kind)
    assert report.results[1] == (True, kind[0] != "processes")


def test_asyncio_send_is_done_without_await():
    text = """
if worker_id == 0:
    comm.send(1, 'no await')
    sent = comm.send(1, 'awaited')
    await sent
    result = repr(sent)
else:
    result = [await comm.recv(), await comm.recv()]
result
"""
    report = go(cell(text, "asyncio"), 2, ("asyncio", None))
    assert report.results == ["<sent>", ["no await", "awaited"]]


def test_big_messages_both_ways_at_once_do_not_deadlock():
    # Each 4 MB message is far beyond a socket's buffer: if sends waited for
    # the receiver, two workers sending each other one at once would wait for
    # ever. Sends never wait, in every model.
    text = """
data = bytes([worker_id]) * 4_000_000
comm.send(1 - worker_id, data)
got = AWAIT comm.recv(source=1 - worker_id)
(len(got), got[:1])
"""
    for kind in KINDS:
        report = go(cell(text, kind[0]), 2, kind, comm_timeout=30)
        assert report.results == [(4_000_000, b"\x01"), (4_000_000, b"\x00")], kind


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_big_message_to_a_busy_receiver_from_a_worker_that_ends(kind):
    text = """
if worker_id == 0:
    comm.send(1, b'x' * 3_000_000)
    result = 'sent'
else:
    SLEEP(0.3)
    result = len(AWAIT comm.recv(source=0))
result
"""
    report = go(cell(text, kind[0]), 2, kind, comm_timeout=30)
    assert report.results == ["sent", 3_000_000]


# ---------------------------------------------------------------------------
# Deadlock-prone use ends, never hangs
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("source", [0, None])
@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_recv_with_no_sender_times_out_naming_the_worker_and_call(kind, source):
    # Worker 0 stays alive (so the wait could still be answered) but never sends.
    arg = "" if source is None else f"source={source}"
    text = f"""
if worker_id == 0:
    SLEEP(1.0)
    result = 'quiet'
else:
    result = AWAIT comm.recv({arg})
result
"""
    t0 = time.monotonic()
    report = go(cell(text, kind[0]), 2, kind, comm_timeout=0.3, raise_errors=False)
    assert time.monotonic() - t0 < 10
    assert report.results[0] == "quiet"
    error = report.errors[1]
    assert isinstance(error, CommTimeout)
    call = f"comm.recv({arg})"
    assert str(error).startswith(f"worker 1: {call} got nothing within 300 ms")
    assert (error.worker_id, error.call) == (1, call)
    assert "cell" in report.workers[1].traceback or "comm.recv" in report.workers[1].traceback


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_per_call_timeout_overrides_the_runs(kind):
    text = """
if worker_id == 0:
    SLEEP(1.0)
else:
    AWAIT comm.recv(timeout=0.2)
"""
    t0 = time.monotonic()
    report = go(cell(text, kind[0]), 2, kind, comm_timeout=30, raise_errors=False)
    assert time.monotonic() - t0 < 10
    assert "got nothing within 200 ms" in str(report.errors[1])


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_recv_from_a_worker_that_has_ended_fails_at_once(kind):
    text = """
if worker_id == 1:
    AWAIT comm.recv(source=0)
"""
    t0 = time.monotonic()
    report = go(cell(text, kind[0]), 2, kind, comm_timeout=30, raise_errors=False)
    assert time.monotonic() - t0 < 10                # not the 30 s comm timeout
    error = report.errors[1]
    assert isinstance(error, CommError) and not isinstance(error, CommTimeout)
    assert str(error).startswith("worker 1: comm.recv(source=0) can never return: worker 0 has")
    assert 0 not in report.errors


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_mismatched_barrier_times_out(kind):
    text = """
if worker_id == 0:
    AWAIT comm.barrier()
else:
    SLEEP(1.0)
"""
    t0 = time.monotonic()
    report = go(cell(text, kind[0]), 2, kind, comm_timeout=0.3, raise_errors=False)
    assert time.monotonic() - t0 < 10
    error = report.errors[0]
    assert isinstance(error, CommTimeout)
    assert str(error) == ("worker 0: comm.barrier() timed out after 300 ms: 1 of 2 workers "
                          "arrived (missing: worker 1)")
    assert 1 not in report.errors


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_barrier_that_a_worker_ended_without_fails_at_once(kind):
    text = "if worker_id != 2:\n    AWAIT comm.barrier()\n"
    t0 = time.monotonic()
    report = go(cell(text, kind[0]), 3, kind, comm_timeout=30, raise_errors=False)
    assert time.monotonic() - t0 < 10
    assert sorted(report.errors) == [0, 1]
    for i in (0, 1):
        assert str(report.errors[i]).startswith(
            f"worker {i}: comm.barrier() can never return: worker 2 has")
        # Worker 1 may not have arrived yet when worker 0 sees worker 2 end.
        assert re.search(r"\([12] of 3 workers arrived\)$", str(report.errors[i]))


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_bcast_with_no_root_times_out(kind):
    text = """
if worker_id == 1:
    AWAIT comm.bcast(root=0)
else:
    SLEEP(1.0)
"""
    report = go(cell(text, kind[0]), 2, kind, comm_timeout=0.3, raise_errors=False)
    assert str(report.errors[1]).startswith(
        "worker 1: comm.bcast(root=0) got nothing from worker 0 within 300 ms")


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_recv_from_itself_fails_at_once(kind):
    report = go(cell("AWAIT comm.recv(source=worker_id)", kind[0]), 1, kind,
                comm_timeout=30, raise_errors=False)
    assert "cannot receive from itself" in str(report.errors[0])


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_everyone_waiting_on_everyone_ends_with_the_comm_timeout(kind):
    # The classic: both receive first. The first to give up times out; the
    # other then learns at once that its peer has ended. Each names itself.
    text = "AWAIT comm.recv(source=1 - worker_id)\ncomm.send(1 - worker_id, 1)"
    t0 = time.monotonic()
    report = go(cell(text, kind[0]), 2, kind, comm_timeout=0.3, raise_errors=False)
    assert time.monotonic() - t0 < 10
    assert sorted(report.errors) == [0, 1]
    assert any(isinstance(e, CommTimeout) for e in report.errors.values())
    for i in (0, 1):
        text = str(report.errors[i])
        assert text.startswith(f"worker {i}: comm.recv(source={1 - i}) ")
        assert "got nothing within 300 ms" in text or \
            f"worker {1 - i} has ended with CommTimeout" in text or \
            f"worker {1 - i} has finished or died" in text


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_run_timeout_stops_workers_blocked_in_recv_without_a_comm_limit(kind):
    text = "AWAIT comm.recv(source=1 - worker_id)"
    t0 = time.monotonic()
    report = go(cell(text, kind[0]), 2, kind, comm_timeout=None, timeout=0.5,
                raise_errors=False)
    assert time.monotonic() - t0 < 8
    assert all(isinstance(e, RunTimeout) for e in report.errors.values())
    assert sorted(report.errors) == [0, 1]
    assert not any("did not stop" in note or "killed" in note for note in report.notes)


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_a_killed_worker_does_not_hang_the_others(method):
    text = """
import os, signal
if worker_id == 0:
    os.kill(os.getpid(), signal.SIGKILL)
elif worker_id == 1:
    comm.recv(source=0)
else:
    comm.barrier()
"""
    t0 = time.monotonic()
    report = go(cell(text, "processes"), 3, ("processes", method), comm_timeout=30,
                raise_errors=False)
    assert time.monotonic() - t0 < 10                 # not the 30 s comm timeout
    assert isinstance(report.errors[0], WorkerDied)
    assert "worker 0 has finished or died" in str(report.errors[1])
    assert "worker 0 has finished or died" in str(report.errors[2])
    assert report.comm.workers[0] is None and report.comm.unreceived is None
    # ...and the next run has a full, working pool.
    assert go(cell(PING_PONG, "processes"), 2, ("processes", method)).results[0] == \
        ("ping-pong", 2)


# ---------------------------------------------------------------------------
# Serial: messages go forward only
# ---------------------------------------------------------------------------
def test_serial_delivers_messages_to_later_workers():
    text = """
value = 1 if worker_id == 0 else comm.recv(source=worker_id - 1) * 2
if worker_id + 1 < n_workers:
    comm.send(worker_id + 1, value)
value
"""
    report = concmagic.run(cell(text, "serial"), 4, "serial")
    assert report.results == [1, 2, 4, 8]
    root = concmagic.run(cell("comm.bcast(worker_id + 100)", "serial"), 3, "serial")
    assert root.results == [100, 100, 100]


@pytest.mark.parametrize("text, call, what", [
    (PING_PONG, "comm.recv(source=1)", "worker 1 has not started yet"),
    ("comm.barrier()", "comm.barrier()", "the workers after 0 cannot arrive"),
    ("comm.recv() if worker_id == 0 else None", "comm.recv()", "no earlier worker sent"),
])
def test_serial_waits_that_could_never_end_fail_at_once(text, call, what):
    t0 = time.monotonic()
    report = concmagic.run(cell(text, "serial"), 2, "serial", comm_timeout=30,
                           raise_errors=False)
    assert time.monotonic() - t0 < 5
    message = str(report.errors[0])
    assert message.startswith(f"worker 0: {call} can never return in a serial run")
    assert what in message and "threads, processes or asyncio" in message


# ---------------------------------------------------------------------------
# Statistics in the report
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS + [("serial", None)], ids=KIND_IDS + ["serial"])
def test_stats_are_counted(kind):
    text = """
payload = b'x' * 1000
for i in range(5):
    if worker_id == 0:
        comm.send(1, payload)
    elif kind != 'serial':
        comm.send(0, AWAIT comm.recv(source=0))
    else:
        AWAIT comm.recv(source=0)
    if worker_id == 0 and kind != 'serial':
        AWAIT comm.recv(source=1)
"""
    ns = main_ns(kind=kind[0])
    report = go(cell(text, kind[0], ns), 2, kind)
    stats = report.comm
    assert isinstance(stats, CommStats) and stats.model == kind[0]
    back = 0 if kind[0] == "serial" else 5
    assert [w["sent"] for w in stats.workers] == [5, back]
    assert [w["received"] for w in stats.workers] == [back, 5]
    assert stats.messages == 5 + back and stats.unreceived == 0
    assert all(w["seconds"] > 0 for w in stats.workers)
    if kind[0] == "processes":
        assert stats.workers[0]["bytes_sent"] >= 5000
        assert stats.workers[1]["bytes_received"] >= 5000
        assert f"{format_bytes(stats.bytes)} pickled through a socket pair" in str(report)
    else:
        assert stats.bytes == 0
        assert "no copy" in str(report)
    line = [line for line in str(report).splitlines() if line.startswith("note: comm:")]
    assert len(line) == 1 and line[0].startswith(f"note: comm: {5 + back} messages")
    assert "in comm calls" in line[0]


def test_unreceived_messages_are_reported():
    report = concmagic.run(cell("comm.send(1 - worker_id, 'lost')", "threads"), 2, "threads")
    assert report.comm.unreceived == 2
    assert "2 messages sent but never received" in str(report)


@pytest.mark.parametrize("model", ["serial", "threads", "asyncio", "processes"])
def test_functions_without_comm_get_no_channels(model):
    report = concmagic.run(cell("worker_id", model), 2, model)
    assert report.results == [0, 1]
    assert report.comm is None
    assert not any(note.startswith("comm:") for note in report.notes)


def test_plain_functions_with_a_comm_parameter():
    def f(worker_id, n_workers, comm):
        return comm.bcast(worker_id + 7, root=1)

    async def g(worker_id, n_workers, comm=None):
        return await comm.bcast(worker_id + 7, root=1)

    def h(worker_id, n_workers):
        return worker_id

    assert concmagic.run(f, 3, "threads").results == [8, 8, 8]
    assert concmagic.run(f, 3, "serial", raise_errors=False).results == [None, 8, 8]
    assert concmagic.run(g, 3, "asyncio").results == [8, 8, 8]
    assert concmagic.run(h, 2, "threads").results == [0, 1]


def test_wants_comm():
    import functools

    class Callable:
        def __call__(self, worker_id, n_workers, comm=None):
            return None

    assert wants_comm(lambda worker_id, n_workers, comm: 0)
    assert wants_comm(lambda worker_id, n_workers, **kw: 0)
    assert wants_comm(functools.partial(lambda worker_id, n_workers, comm, x: 0, x=1))
    assert wants_comm(Callable())
    assert not wants_comm(lambda worker_id, n_workers: 0)
    assert not wants_comm(lambda worker_id, n_workers, *, commit=1: 0)
    assert not wants_comm(lambda comm, /, worker_id, n_workers: 0)   # positional only
    assert not wants_comm(print)


def test_only_cells_that_mention_comm_take_it():
    import inspect

    def params(text, ns=None):
        func = make_cell_function(text, ns if ns is not None else {}).func
        return str(inspect.signature(func))

    assert params("worker_id") == "(worker_id, n_workers)"
    assert params("comm.send(0, 1)") == "(worker_id, n_workers, comm=None)"
    assert params("def f():\n    return comm.rank\nf()") == "(worker_id, n_workers, comm=None)"
    # `global comm` means the notebook's comm: not a parameter.
    ns = {"comm": "notebook's"}
    assert params("global comm\ncomm", ns) == "(worker_id, n_workers)"
    assert make_cell_function("global comm\ncomm", ns).func(worker_id=0, n_workers=1) == \
        "notebook's"
    # Called without a comm (as a plain function), the name is None, not the notebook's.
    assert make_cell_function("comm", {"comm": 1}).func(worker_id=0, n_workers=1) is None


# ---------------------------------------------------------------------------
# Misuse gets clear errors
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("call, message", [
    ("comm.send(5, 'x')", "worker 0: comm.send: dest must be a worker id from 0 to 1; got 5"),
    ("AWAIT comm.recv(source=-1)", "source must be a worker id from 0 to 1; got -1"),
    ("AWAIT comm.bcast(1, root='0')", "root must be a worker id from 0 to 1; got '0'"),
    ("AWAIT comm.recv(source=1, timeout=-1)", "timeout must be a number of seconds >= 0"),
])
def test_bad_arguments(kind, call, message):
    report = go(cell(f"if worker_id == 0:\n    {call}", kind[0]), 2, kind, raise_errors=False)
    assert isinstance(report.errors[0], ValueError)
    assert message in str(report.errors[0])


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_what_cannot_be_pickled_cannot_go_between_processes(method):
    text = """
import threading
if worker_id == 0:
    comm.send(1, lambda x: x + 1)            # by value, as cloudpickle ships cells
    comm.send(1, threading.Lock())
    result = None
else:
    result = comm.recv(source=0)(41)
result
"""
    report = go(cell(text, "processes"), 2, ("processes", method), raise_errors=False)
    assert report.results[1] == 42
    error = report.errors[0]
    assert isinstance(error, CommError)
    assert str(error).startswith("worker 0: comm.send(dest=1): a _thread.lock cannot be pickled")


def test_comm_itself_cannot_be_sent():
    text = "import pickle\npickle.dumps(comm)"
    report = concmagic.run(cell(text, "threads"), 1, "threads", raise_errors=False)
    assert "comm belongs to that worker and cannot be pickled" in str(report.errors[0])


def test_comm_timeout_is_checked():
    func = cell("comm.rank", "threads")
    for bad in (0, -1, "1", True):
        with pytest.raises(ValueError, match="comm_timeout must be a positive number"):
            concmagic.run(func, 2, "threads", comm_timeout=bad)
    assert engine.DEFAULT_COMM_TIMEOUT == comm_module.DEFAULT_TIMEOUT == 10.0


def test_errors_survive_pickling():
    for error in (CommError("worker 1: comm.recv() can never return: x", 1, "comm.recv()"),
                  CommTimeout("worker 0: comm.barrier() timed out", 0, "comm.barrier()")):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert (str(copy), copy.worker_id, copy.call) == (str(error), error.worker_id,
                                                          error.call)


def test_format_bytes():
    assert [format_bytes(n) for n in (0, 999, 1000, 1234, 5_678_901, 2 * 10**9, 3 * 10**12)] \
        == ["0 B", "999 B", "1 kB", "1.23 kB", "5.68 MB", "2 GB", "3e+03 GB"]


def test_comm_stats_text_without_messages():
    stats = CommStats("threads", [{"sent": 0, "received": 0, "bytes_sent": 0,
                                   "bytes_received": 0, "barriers": 3, "seconds": 0.002}] * 2)
    assert str(stats) == "comm: 3 barriers, 4 ms in comm calls (all workers together)"
    assert stats.active and stats.to_dict()["barriers"] == 3
    idle = CommStats("threads", [dict(stats.workers[0], barriers=0)])
    assert not idle.active and not math.isnan(idle.seconds)


# ---------------------------------------------------------------------------
# Through the magics
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shell():
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "concmagic")
    yield ip


@pytest.mark.parametrize("magic", ["threads", "processes", "asyncio"])
def test_magics_cells_talk(shell, magic):
    wait = "await " if magic == "asyncio" else ""
    text = (f"comm.send((worker_id + 1) % n_workers, f'hello from {{worker_id}}')\n"
            f"{wait}comm.recv()\n")
    with capture_output() as out:
        value = shell.run_cell_magic(magic, "-n 3 -o rep", text)
    assert value == ["hello from 2", "hello from 0", "hello from 1"]
    report = shell.user_ns["rep"]
    assert report.model == magic and report.comm.messages == 3
    assert "note: comm: 3 messages" in str(report)


def test_magics_comm_timeout_option(shell):
    text = "if worker_id == 1:\n    comm.recv()\nelse:\n    import time; time.sleep(1)\n"
    t0 = time.monotonic()
    with capture_output(), pytest.raises(WorkerError) as info:
        shell.run_cell_magic("threads", "-n 2 --comm-timeout 0.25", text)
    assert time.monotonic() - t0 < 10
    assert "worker 1: comm.recv() got nothing within 250 ms (no worker sent to it?)" \
        in str(info.value)


# ---------------------------------------------------------------------------
# Leaks
# ---------------------------------------------------------------------------
@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", [("processes", "forkserver"), ("threads", None)],
                         ids=["processes", "threads"])
def test_no_leaks_over_50_runs_with_comm(kind):
    # Sockets made for each run, sender threads for big messages, runs where
    # a worker ends without sending: none may leave a descriptor, a thread or
    # a process behind.
    text = """
if worker_id == 0:
    comm.send(1, big if k % 5 == 0 else k)
    result = comm.recv(source=1)
elif worker_id == 1:
    msg = comm.recv(source=0)
    comm.send(0, msg if isinstance(msg, int) else len(msg))
    comm.barrier() if k % 10 == 3 else None
    result = None
else:
    comm.barrier() if k % 10 == 3 else None
    result = None
result
"""
    ns = main_ns(k=0, big=b"b" * 1_000_000)
    func = cell(text, kind[0], ns)
    go(func, 3, kind, raise_errors=False)           # the warm pool exists before counting
    before = resources()
    for k in range(50):
        ns["k"] = k
        report = go(func, 3, kind, comm_timeout=5, raise_errors=False)
        if k % 10 == 3:                             # worker 0 never reaches the barrier
            assert sorted(report.errors) == [1, 2], report.errors
        else:
            assert report.ok, report.errors
        assert report.results[0] == (1_000_000 if k % 5 == 0 else k)
    assert settle(before) == before
