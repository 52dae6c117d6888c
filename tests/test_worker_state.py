"""Per-worker state: what a worker keeps between runs, and what it shares.

The documented rules (README, "Per-worker state"):
- threads: the gang's threads are reused, worker i on the same thread while
  the gang keeps its size, so ``threading.local`` values set in one run are
  still there in the next; each worker sees only its own.
- asyncio: every task runs on the loop's one thread, so a ``threading.local``
  is shared by all of them; ``contextvars`` give each task its own value.
- processes: the cell's function and the notebook globals it reads travel
  afresh each run; what a worker process keeps is module state.
- an ``async def`` function run by serial, threads or processes is run to
  completion in an event loop of each worker's own.
"""
import asyncio
import contextvars
import threading

import pytest

import concmagic
from concmagic import engine

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module", autouse=True)
def _stop_pools_at_end():
    yield
    engine.shutdown()


def test_thread_locals_persist_per_worker_between_runs():
    engine.shutdown()                       # a fresh gang: nothing left from other tests
    local = threading.local()

    def remember(worker_id, n_workers):
        seen = getattr(local, "value", None)
        local.value = worker_id
        return seen, threading.get_ident()

    first = concmagic.run(remember, n=3, model="threads").results
    second = concmagic.run(remember, n=3, model="threads").results
    assert [seen for seen, _ in first] == [None, None, None]
    # Same threads, same worker order: each worker finds its own last value.
    assert [seen for seen, _ in second] == [0, 1, 2]
    assert [t for _, t in first] == [t for _, t in second]
    assert len({t for _, t in first}) == 3
    # After a shutdown, new threads: the thread-locals are gone.
    engine.shutdown()
    third = concmagic.run(remember, n=3, model="threads").results
    assert [seen for seen, _ in third] == [None, None, None]


def test_asyncio_tasks_share_one_thread_and_its_locals():
    local = threading.local()
    var = contextvars.ContextVar("var", default=None)

    async def cell(worker_id, n_workers):
        local.value = worker_id
        var.set(worker_id)
        await asyncio.sleep(0.01)           # every task sets before any reads
        return local.value, var.get(), threading.get_ident()

    results = concmagic.run(cell, n=3, model="asyncio").results
    assert len({ident for _, _, ident in results}) == 1
    # One thread: the last task's write is what all of them read back...
    assert len({value for value, _, _ in results}) == 1
    # ...while each task has its own context.
    assert [v for _, v, _ in results] == [0, 1, 2]


@pytest.mark.parametrize("model", ["serial", "threads", "processes"])
def test_async_function_runs_in_a_loop_per_worker(model):
    async def cell(worker_id, n_workers):
        await asyncio.sleep(0.01)
        return worker_id * 10, asyncio.get_running_loop() is not None

    report = concmagic.run(cell, n=2, model=model)
    assert report.results == [(0, True), (10, True)]


def test_processes_get_the_notebook_globals_afresh_each_run():
    ns = {"__name__": "__main__"}
    exec("counter = 0\n"
         "def bump(worker_id, n_workers):\n"
         "    global counter\n"
         "    counter += 1\n"
         "    return counter\n", ns)
    assert concmagic.run(ns["bump"], n=2, model="processes").results == [1, 1]
    # The workers' writes stayed there, and the next run starts from 0 again.
    assert ns["counter"] == 0
    assert concmagic.run(ns["bump"], n=2, model="processes").results == [1, 1]


def test_async_function_runs_serially_inside_a_running_loop():
    # The serial model runs on the calling thread; in a Jupyter kernel that
    # thread is inside the kernel's event loop, which must survive the run.
    async def cell(worker_id, n_workers):
        await asyncio.sleep(0.01)
        return worker_id

    async def kernel():
        loop = asyncio.get_running_loop()
        report = concmagic.run(cell, n=2, model="serial")
        assert asyncio.get_running_loop() is loop       # put back
        await asyncio.sleep(0)                           # and still usable
        return report.results

    assert asyncio.run(kernel()) == [0, 1]
