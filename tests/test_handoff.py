"""The hand-off primitives of the threads runner: _core.Seat and _core.Gate.

A warm worker thread waits for its job on a Seat, without the GIL, and no
cell starts before every worker of the run has arrived at the job's Gate
(the start gate of issue 3: the workers' starts line up).
"""
import threading
import time

import pytest

from concmagic import _core

pytestmark = pytest.mark.timeout(60)


def _worker(seat, log, name, timeout=5.0):
    def serve():
        while seat.wait(timeout):
            log.append((name, time.perf_counter()))
        log.append((name, "exit"))
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_no_worker_passes_the_gate_before_the_last_one_arrives():
    # Workers 0..2 are posted at once; worker 3's post comes 0.2 s later. The
    # first three must wait at the gate for it.
    seats = [_core.Seat() for _ in range(4)]
    log = []
    threads = [_worker(seat, log, i) for i, seat in enumerate(seats)]
    gate = _core.Gate(4)
    for seat in seats[:3]:
        seat.post(gate)
    time.sleep(0.2)
    assert log == [], "a worker went through the gate before all had come"
    t_last = time.perf_counter()
    seats[3].post(gate)
    deadline = time.monotonic() + 5
    while len(log) < 4 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert sorted(name for name, _ in log) == [0, 1, 2, 3]
    assert all(t >= t_last for _, t in log)
    for seat in seats:
        seat.post_exit()
    for thread in threads:
        thread.join(5)
        assert not thread.is_alive()


def test_a_laggard_holds_the_gate_only_until_the_timeout():
    seats = [_core.Seat() for _ in range(2)]
    log = []
    threads = [_worker(seat, log, i, timeout=0.2) for i, seat in enumerate(seats)]
    gate = _core.Gate(3)                       # a third worker never comes
    t0 = time.perf_counter()
    for seat in seats:
        seat.post(gate)
    deadline = time.monotonic() + 5
    while len(log) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert sorted(name for name, _ in log) == [0, 1]
    assert all(0.15 <= t - t0 < 3 for _, t in log), [t - t0 for _, t in log]
    for seat in seats:
        seat.post_exit()
    for thread in threads:
        thread.join(5)


def test_a_post_made_while_the_worker_is_busy_is_kept_and_exit_stays_posted():
    seat = _core.Seat()
    seat.post(_core.Gate(1))                   # before anyone waits: kept
    assert seat.wait(1.0) is True
    seat.post_exit()
    seat.post(_core.Gate(1))                   # an exit, once posted, is not replaced
    assert seat.wait(1.0) is False
    assert seat.wait(1.0) is False


def test_gate_wait_from_python_threads():
    gate = _core.Gate(3)
    passed = []

    def arrive(i):
        gate.wait(5.0)
        passed.append(i)

    threads = [threading.Thread(target=arrive, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    assert passed == []
    arrive(2)
    for t in threads:
        t.join(5)
    assert sorted(passed) == [0, 1, 2]


def test_gate_rejects_no_workers():
    with pytest.raises(ValueError, match="n must be >= 1"):
        _core.Gate(0)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_a_forked_child_runs_threads_on_a_gang_of_its_own():
    # fork copies only the calling thread: the parent's warm gang is not in
    # the child, whose first run must start threads of its own.
    import os

    import concmagic
    assert concmagic.run(lambda worker_id, n_workers: worker_id, 3, "threads").results == [0, 1, 2]
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            report = concmagic.run(lambda worker_id, n_workers: worker_id * 2, 3, "threads",
                                   timeout=10)
            code = 0 if report.results == [0, 2, 4] else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.02)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child's run did not finish")
    assert os.waitstatus_to_exitcode(status) == 0
    assert concmagic.run(lambda worker_id, n_workers: worker_id, 3, "threads").results == [0, 1, 2]
