"""Runners: run a cell function N ways. They know nothing of IPython.

Each runner takes ``func`` (called as ``func(worker_id=i, n_workers=n)``), a
worker count and options, and returns a Report; none of them raises for a
failed worker (the engine decides that).
"""
from types import CoroutineType as _Coroutine


def settle(result):
    """A worker's result, with a coroutine it returned run to completion.

    An ``async def`` cell run by threads, processes or serially (as
    ``%%compare`` does with a cell that awaits) returns a coroutine; each
    worker runs it in an event loop of its own, as ``asyncio.run`` does, so
    its waits overlap only with other workers', never inside one worker.
    (The asyncio model awaits it on its one shared loop instead.)
    """
    if isinstance(result, _Coroutine):
        import asyncio
        return asyncio.run(result)
    return result
