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
    if not isinstance(result, _Coroutine):
        return result
    import asyncio
    outer = asyncio._get_running_loop()
    if outer is None:
        return asyncio.run(result)
    # This thread is inside a callback of a running loop: the serial model
    # in a Jupyter kernel, whose cells run in its event loop. That loop is
    # blocked until this call returns, so it is stood aside while a loop of
    # our own runs the coroutine, then put back. (asyncio exports
    # _get/_set_running_loop for event loop implementations, which this is.)
    # asyncio.run is not used here: it would also unset the thread's
    # current event loop, which the kernel still needs afterwards.
    asyncio._set_running_loop(None)
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(result)
    finally:
        try:
            left = asyncio.all_tasks(loop)        # what the cell left running
            if left:
                for task in left:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
            asyncio._set_running_loop(outer)
