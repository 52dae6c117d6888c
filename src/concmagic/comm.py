"""Messages between workers: the ``comm`` a cell sees.

A cell that mentions ``comm`` (or any function with a ``comm`` parameter)
gets, in each worker, that worker's end of the run's channels:

    comm.rank, comm.size                     this worker's id, how many workers
    comm.send(dest, obj)                     hand obj to worker dest; never waits
    comm.recv(source=None, timeout=None)     the next message from source (None: anyone)
    comm.barrier(timeout=None)               return once every worker has called it
    comm.bcast(obj=None, root=0, timeout=None)   root's obj, in every worker
    comm.last_source                         who sent the message recv returned last

The calls are the same in every model; what travels, and what it costs, is
the lesson (the report counts messages, bytes and the time spent in them):

    threads    worker i --(kind, i, obj)--> inbox of j, a queue.SimpleQueue --> worker j
               the very object is handed over: nothing is pickled or copied
    serial     the same inboxes, but the workers run one after another: a
               message to a later worker arrives, a wait for anything else
               can never end and raises CommError at once (never a hang)
    asyncio    the same, one deque per inbox on the event loop; recv,
               barrier and bcast are coroutines (``await comm.recv()``),
               send is done when called and may be awaited or not
    processes  a socket pair between each two workers, made by the parent
               for the run and handed to the workers over their control
               pipes (SCM_RIGHTS); the parent keeps no copy

               worker i ==[kind:1 | length:8 | pickled obj]==> worker j

Receiving: whatever arrives goes to the receiver's own stash, per source and
per kind, so ``recv(source=2)`` can pass over a message from worker 1
without losing it, and a bcast or a barrier token never answers a recv.
Messages from one worker to another arrive in the order they were sent.

Ending, never hanging (deadlock-prone code is easy to write with messages):
  - every wait has a limit, the comm timeout (``comm_timeout=`` of
    concmagic.run, 10 s by default, or the call's own ``timeout=``); past
    it, CommTimeout names the worker, the call and who is missing;
  - a wait that can never end raises CommError at once: the worker waited
    for has finished or died (in memory it leaves a "done" marker in every
    inbox when its cell ends; a process's end of each socket closes), or a
    worker waits for a message from itself.

Sending never waits, in any model. In memory the inboxes are unbounded.
Between processes a frame that does not fit the socket's buffer (a receiver
busy elsewhere, two workers sending each other megabytes at once) goes to a
backlog for that peer, which a sender thread writes out as the peer reads;
the thread is started only then. When a worker's cell ends, it stops
reading (peers' later sends to it are dropped, as a message to a finished
thread is never read), writes out its backlogs, and closes its sockets:
peers then see end-of-file.

A run that is stopped (its timeout, Ctrl-C) reports the stop as the error of
every worker it caught, even one that first saw a stopped peer end.

A worker's comm belongs to that worker: threads or tasks the cell starts
itself must not call it at the same time as the cell does.
"""
import collections
import inspect
import io
import math
import numbers
import pickle
import queue
import select
import socket
import struct
import sys
import threading
import time
import types
from dataclasses import dataclass, field

from .errors import CommError, CommTimeout
from .report import format_time

__all__ = ["DEFAULT_TIMEOUT", "Comm", "ThreadComm", "SerialComm", "AsyncComm", "ProcessComm",
           "CommStats", "MemoryWorld", "AsyncWorld", "wants_comm", "socket_mesh", "close_mesh",
           "hand_over", "receive_channels", "blame_the_stop", "attach", "format_bytes"]

#: Seconds a recv, barrier or bcast waits before CommTimeout, unless told
#: otherwise: long enough for any honest exchange in a notebook cell, short
#: enough that a cell waiting for a message nobody sends ends while the
#: reader still remembers starting it.
DEFAULT_TIMEOUT = 10.0

# Kinds of what travels. DONE never travels between processes: there, the
# end of a peer's socket says it.
_MSG, _BCAST, _BARRIER, _DONE = 0, 1, 2, 3

# A waiting thread wakes this often: an asynchronous stop (the run's
# timeout, Ctrl-C) can only land while it runs Python code, and a wait
# inside one C call would hold it off until the comm timeout.
_WAIT_SLICE = 0.1

_EMPTY = object()          # "nothing yet": an attempt that may succeed later

# The longest wait poll() takes (an int of milliseconds); longer is no limit.
_TIMEOUT_MAX = (2**31 - 1) / 1000

# The waiting calls, as `_wait` and the error texts name them.
_RECV, _BARRIER_CALL, _BCAST_CALL = "recv", "barrier", "bcast"

_clock = time.perf_counter
_monotonic = time.monotonic
# The event loop may fire a timer this early (its clock's resolution); a
# deadline this close counts as reached.
_CLOCK_SLACK = 1e-3


def _call(op, key):
    """The call as the user wrote it, for messages: ``comm.recv(source=0)``."""
    if op is _RECV:
        return "comm.recv()" if key is None else f"comm.recv(source={key})"
    if op is _BCAST_CALL:
        return f"comm.bcast(root={key})"
    return "comm.barrier()"


def wants_comm(func):
    """True if ``func`` takes a ``comm`` keyword argument (or ``**kwargs``).

    Runners pass ``comm=`` only then, and set up channels only then: a
    function of ``(worker_id, n_workers)`` runs exactly as before. Plain
    functions (every cell function) are answered from their code object,
    cheaper than any cache; other callables through inspect.signature.
    """
    code = getattr(func, "__code__", None)
    if isinstance(func, types.FunctionType) and code is not None:
        named = code.co_varnames[code.co_posonlyargcount:code.co_argcount + code.co_kwonlyargcount]
        return "comm" in named or bool(code.co_flags & inspect.CO_VARKEYWORDS)
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is p.VAR_KEYWORD or (p.name == "comm" and p.kind in (
        p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)) for p in parameters)


def format_bytes(n):
    """``512 B``, ``1.23 kB``, ``45.6 MB``: decimal units, 3 significant digits."""
    n = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 999.5 or unit == "GB":
            break
        n /= 1000.0
    return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"


def _plural(n, word):
    return f"{n} {word}{'' if n == 1 else 's'}"


def _workers(ids):
    ids = list(ids)
    return f"worker{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))}"


def _ending(error):
    """How a worker's cell ended, as the DONE marker says it."""
    if error is None:
        return "has finished"
    return f"has ended with {type(error).__name__}"


def _check_timeout(timeout, call):
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not timeout >= 0:
        raise ValueError(f"{call}: timeout must be a number of seconds >= 0 or None; "
                         f"got {timeout!r}")
    if timeout > _TIMEOUT_MAX:                  # math.inf, or as good as: no limit
        return None
    return float(timeout)


# ---------------------------------------------------------------------------
# Comm: the contract, and the receiver's stash every model shares
# ---------------------------------------------------------------------------
class Comm:
    """One worker's end of the run's channels (threads, serial, processes).

    ``send(dest, obj)`` never waits. ``recv``, ``barrier`` and non-root
    ``bcast`` wait at most ``timeout`` seconds (None: the run's comm
    timeout), then raise CommTimeout; a wait that can never end raises
    CommError at once. Bad ids raise ValueError. Subclasses move the
    messages (`_push`, `_pump`); this class keeps what arrived and decides.
    """

    def __init__(self, rank, size, timeout=DEFAULT_TIMEOUT):
        self._rank = rank
        self._size = size
        self._timeout = timeout
        self._msgs = [collections.deque() for _ in range(size)]     # per source: (seq, payload)
        self._bcasts = [collections.deque() for _ in range(size)]   # per source: payload
        self._tokens = [0] * size       # barrier arrivals seen, per source
        self._done = [None] * size      # per source: how it ended, None while it may still send
        self._seq = 0                   # arrival order, for recv from anyone
        self._gen = 0                   # barriers this worker has entered
        self.last_source = None
        # Counted for the report.
        self.sent = self.received = self.bytes_sent = self.bytes_received = 0
        self.barriers = 0
        self.seconds = 0.0

    @property
    def rank(self):
        """This worker's id (its ``worker_id``)."""
        return self._rank

    @property
    def size(self):
        """The number of workers (``n_workers``)."""
        return self._size

    def __repr__(self):
        return f"<{type(self).__name__} worker {self._rank} of {self._size}>"

    def __reduce__(self):
        raise TypeError(f"worker {self._rank}'s comm belongs to that worker and cannot be "
                        "pickled or sent; send the data itself with comm.send")

    def stats(self):
        """What this worker's comm did, as plain numbers (for the report)."""
        return {"sent": self.sent, "received": self.received, "bytes_sent": self.bytes_sent,
                "bytes_received": self.bytes_received, "barriers": self.barriers,
                "seconds": self.seconds}

    # --- the public calls (synchronous models) -----------------------------
    # Kept lean up to the moment they block: a thread woken by a message must
    # find the GIL free, or it waits a second time (for the GIL) and the
    # round trip doubles. Texts for errors are built only when raised.
    def send(self, dest, obj):
        """Hand ``obj`` to worker ``dest``. Returns at once; never waits."""
        t0 = _clock()
        try:
            if type(dest) is not int or not 0 <= dest < self._size:
                dest = self._check_id(dest, "dest", "comm.send")
            payload = self._dump(obj, dest, 1)
            self.sent += 1
            self._push(dest, _MSG, payload)
        finally:
            self.seconds += _clock() - t0

    def recv(self, source=None, timeout=None):
        """The next message from ``source`` (None: from any worker, in order of arrival)."""
        t0 = _clock()
        try:
            if source is not None and (type(source) is not int or not 0 <= source < self._size):
                source = self._check_id(source, "source", "comm.recv")
            limit = self._timeout if timeout is None else self._limit(timeout, _RECV, source)
            got = self._try_recv(source)
            if got is _EMPTY:
                got = self._wait(_RECV, source, limit)
            return got
        finally:
            self.seconds += _clock() - t0

    def barrier(self, timeout=None):
        """Return once every worker has called ``barrier`` (as often as this one)."""
        t0 = _clock()
        try:
            limit = self._limit(timeout, _BARRIER_CALL, None)
            self._gen += 1
            self.barriers += 1
            self._push_all(_BARRIER, b"")
            if self._try_barrier(self._gen) is _EMPTY:
                self._wait(_BARRIER_CALL, self._gen, limit)
        finally:
            self.seconds += _clock() - t0

    def bcast(self, obj=None, root=0, timeout=None):
        """``obj`` of worker ``root``, returned in every worker (root returns its own)."""
        t0 = _clock()
        try:
            if type(root) is not int or not 0 <= root < self._size:
                root = self._check_id(root, "root", "comm.bcast")
            limit = self._limit(timeout, _BCAST_CALL, root)
            if self._rank == root:
                payload = self._dump(obj, None, self._size - 1)
                self.sent += self._size - 1
                self._push_all(_BCAST, payload)
                return obj
            got = self._try_bcast(root)
            if got is _EMPTY:
                got = self._wait(_BCAST_CALL, root, limit)
            return got
        finally:
            self.seconds += _clock() - t0

    # --- arguments ---------------------------------------------------------
    def _check_id(self, value, what, call):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) \
                or not 0 <= value < self._size:
            raise ValueError(f"worker {self._rank}: {call}: {what} must be a worker id from 0 "
                             f"to {self._size - 1}; got {value!r}")
        return int(value)

    def _limit(self, timeout, op, key):
        """The longest wait: the call's own ``timeout`` (checked), else the run's."""
        if timeout is None:
            return self._timeout
        return _check_timeout(timeout, f"worker {self._rank}: {_call(op, key)}")

    # --- what arrived ------------------------------------------------------
    def _deliver(self, kind, source, payload):
        if kind == _MSG:
            self._seq += 1
            self._msgs[source].append((self._seq, payload))
        elif kind == _BCAST:
            self._bcasts[source].append(payload)
        elif kind == _BARRIER:
            self._tokens[source] += 1
        else:
            self._done[source] = payload

    def _never(self, op, key, why):
        call = _call(op, key)
        return CommError(f"worker {self._rank}: {call} can never return: {why}",
                         self._rank, call)

    def _try_recv(self, source):
        """The message, _EMPTY if none yet; CommError if none can ever come."""
        if source is None:
            best = None
            for i, q in enumerate(self._msgs):
                if q and (best is None or q[0][0] < self._msgs[best][0][0]):
                    best = i
            if best is None:
                others = [i for i in range(self._size) if i != self._rank]
                if not others:
                    raise self._never(_RECV, None, "there is no other worker (n_workers is 1)")
                if all(self._done[i] is not None for i in others):
                    raise self._never(_RECV, None, "every other worker has ended, and "
                                                   "nothing more is on its way")
                return _EMPTY
            source = best
        else:
            q = self._msgs[source]
            if not q:
                if source == self._rank:
                    raise self._never(_RECV, source, "a worker cannot receive from itself a "
                                                     "message it has not sent itself")
                if self._done[source] is not None:
                    raise self._never(_RECV, source, f"worker {source} {self._done[source]} "
                                      f"without sending (any more) to worker {self._rank}")
                return _EMPTY
        payload = self._msgs[source].popleft()[1]
        self.received += 1
        self.last_source = source
        return self._load(payload, source, _RECV)

    def _try_barrier(self, gen):
        missing = [i for i in range(self._size) if i != self._rank and self._tokens[i] < gen]
        if not missing:
            return None
        gone = [i for i in missing if self._done[i] is not None]
        if gone:
            self._pump(0)               # the count in the message: as fresh as can be
            missing = [i for i in missing if self._tokens[i] < gen]
            if not missing:
                return None
            arrived = self._size - len(missing)
            raise self._never(_BARRIER_CALL, None,
                              f"worker {gone[0]} {self._done[gone[0]]} without calling it "
                              f"({arrived} of {self._size} workers arrived)")
        return _EMPTY

    def _try_bcast(self, root):
        q = self._bcasts[root]
        if q:
            self.received += 1
            return self._load(q.popleft(), root, _BCAST_CALL)
        if self._done[root] is not None:
            raise self._never(_BCAST_CALL, root, f"worker {root} {self._done[root]} without "
                                                 f"calling comm.bcast(root={root})")
        return _EMPTY

    def _attempt(self, op):
        return (self._try_recv if op is _RECV else
                self._try_barrier if op is _BARRIER_CALL else self._try_bcast)

    # --- what a timeout says ------------------------------------------------
    def _expired(self, op, key, limit):
        call = _call(op, key)
        who = f"worker {self._rank}: {call}"
        if op is _RECV:
            hint = "no worker sent to it?" if key is None else f"worker {key} did not send to it?"
            text = f"{who} got nothing within {format_time(limit)} ({hint})"
        elif op is _BCAST_CALL:
            text = (f"{who} got nothing from worker {key} within {format_time(limit)} "
                    f"(did worker {key} call comm.bcast?)")
        else:
            missing = [i for i in range(self._size)
                       if i != self._rank and self._tokens[i] < key]
            text = (f"{who} timed out after {format_time(limit)}: "
                    f"{self._size - len(missing)} of {self._size} workers arrived "
                    f"(missing: {_workers(missing)})")
        return CommTimeout(text, self._rank, call)

    # --- waiting -------------------------------------------------------------
    def _wait(self, op, key, limit):
        """Pump and retry op's attempt until it returns a value; at most ``limit`` s.

        ``op`` is _RECV (``key``: the source, or None), _BARRIER_CALL (the
        barrier's generation) or _BCAST_CALL (the root). Called after a
        first attempt found nothing.
        """
        attempt = self._attempt(op)
        deadline = None if limit is None else _monotonic() + limit
        while True:
            left = None if deadline is None else max(0.0, deadline - _monotonic())
            self._pump(left)
            got = attempt(key)
            if got is not _EMPTY:
                return got
            if deadline is not None and _monotonic() >= deadline:
                raise self._expired(op, key, limit)

    def _push_all(self, kind, payload):
        for dest in range(self._size):
            if dest != self._rank:
                self._push(dest, kind, payload)

    # --- transport: what subclasses provide ---------------------------------
    def _push(self, dest, kind, payload):
        raise NotImplementedError

    def _pump(self, left):
        """Wait up to ``left`` s (None: no limit, 0: not at all) for something
        to arrive, and `_deliver` everything that has."""
        raise NotImplementedError

    def _dump(self, obj, dest, copies):
        """What travels for ``obj`` (to ``dest``, None for a bcast, ``copies`` times)."""
        return obj                      # in memory: the object itself

    def _load(self, payload, source, op):
        return payload


# ---------------------------------------------------------------------------
# In memory: threads and serial
# ---------------------------------------------------------------------------
class ThreadComm(Comm):
    """A worker's comm in the threads model: inboxes in memory, objects handed over."""

    def __init__(self, world, rank, size, timeout):
        super().__init__(rank, size, timeout)
        self._world = world
        self._inbox = world.inboxes[rank]

    def _push(self, dest, kind, payload):
        if dest == self._rank:
            self._deliver(kind, dest, payload)
        else:
            self._world.inboxes[dest].put((kind, self._rank, payload))

    def _pump(self, left):
        inbox = self._inbox
        wait = _WAIT_SLICE if left is None else min(left, _WAIT_SLICE)
        try:
            item = inbox.get(timeout=wait) if wait > 0 else inbox.get_nowait()
        except queue.Empty:
            return
        self._deliver(*item)
        while True:
            try:
                item = inbox.get_nowait()
            except queue.Empty:
                return
            self._deliver(*item)


class SerialComm(ThreadComm):
    """A worker's comm in the serial model, where nothing arrives while it waits.

    Workers run one after another on one thread, so a message can only come
    from a worker that ran before; a wait for anything else would wait for
    ever. It raises CommError at once instead, saying why.
    """

    def _wait(self, op, key, limit):
        self._pump(0)                    # what earlier workers sent is all there is
        got = self._attempt(op)(key)
        if got is not _EMPTY:
            return got
        if op is _BARRIER_CALL:
            what = f"the workers after {self._rank} cannot arrive while it waits"
        elif key is None:
            what = (f"no earlier worker sent to it, and the workers after {self._rank} "
                    f"have not started yet")
        else:
            what = (f"worker {key} has not started yet and cannot send before worker "
                    f"{self._rank} ends")
        call = _call(op, key)
        raise CommError(
            f"worker {self._rank}: {call} can never return in a serial run: workers run one "
            f"after another, so {what}. Serial delivers messages to later workers only; "
            f"run the cell in threads, processes or asyncio to exchange messages.",
            self._rank, call)


class MemoryWorld:
    """The channels of one threads or serial run: one inbox per worker."""

    def __init__(self, n, timeout=DEFAULT_TIMEOUT, model="threads"):
        self.model = model
        self.inboxes = [queue.SimpleQueue() for _ in range(n)]
        kind = SerialComm if model == "serial" else ThreadComm
        self.comms = [kind(self, i, n, timeout) for i in range(n)]

    def comm(self, worker_id):
        return self.comms[worker_id]

    def finish(self, worker_id, error=None):
        """Worker ``worker_id``'s cell has ended: tell everyone (after its messages)."""
        text = _ending(error)
        for dest, inbox in enumerate(self.inboxes):
            if dest != worker_id:
                inbox.put((_DONE, worker_id, text))

    def stats(self):
        return CommStats(self.model, [c.stats() for c in self.comms])


# ---------------------------------------------------------------------------
# asyncio: the same inboxes, waited on with the event loop's futures
# ---------------------------------------------------------------------------
class _Sent:
    """What ``comm.send`` returns in asyncio: already done, so ``await`` is optional."""

    __slots__ = ()

    def __await__(self):
        return iter(())

    def __repr__(self):
        return "<sent>"


_SENT = _Sent()


def _wake(future):
    if not future.done():
        future.set_result(None)


class AsyncComm(Comm):
    """A worker's comm in the asyncio model: ``await`` recv, barrier and bcast.

    ``send`` hands the message over when called (it never waits) and returns
    an awaitable that is already done, so ``await comm.send(1, x)`` and
    ``comm.send(1, x)`` do the same. ``recv``, ``barrier`` and ``bcast`` are
    coroutines: they wait without holding the loop, so the other tasks run.
    """

    def __init__(self, world, rank, size, timeout):
        super().__init__(rank, size, timeout)
        self._world = world
        self._inbox = world.inboxes[rank]

    def send(self, dest, obj):
        """Hand ``obj`` to worker ``dest`` now; awaiting the result is optional."""
        super().send(dest, obj)
        return _SENT

    async def recv(self, source=None, timeout=None):
        """The next message from ``source`` (None: from any worker, in order of arrival)."""
        t0 = _clock()
        try:
            if source is not None and (type(source) is not int or not 0 <= source < self._size):
                source = self._check_id(source, "source", "comm.recv")
            limit = self._timeout if timeout is None else self._limit(timeout, _RECV, source)
            got = self._try_recv(source)
            if got is _EMPTY:
                got = await self._await(_RECV, source, limit)
            return got
        finally:
            self.seconds += _clock() - t0

    async def barrier(self, timeout=None):
        """Return once every worker has awaited ``barrier`` (as often as this one)."""
        t0 = _clock()
        try:
            limit = self._limit(timeout, _BARRIER_CALL, None)
            self._gen += 1
            self.barriers += 1
            self._push_all(_BARRIER, b"")
            if self._try_barrier(self._gen) is _EMPTY:
                await self._await(_BARRIER_CALL, self._gen, limit)
        finally:
            self.seconds += _clock() - t0

    async def bcast(self, obj=None, root=0, timeout=None):
        """``obj`` of worker ``root``, returned in every worker (root returns its own)."""
        t0 = _clock()
        try:
            if type(root) is not int or not 0 <= root < self._size:
                root = self._check_id(root, "root", "comm.bcast")
            limit = self._limit(timeout, _BCAST_CALL, root)
            if self._rank == root:
                self.sent += self._size - 1
                self._push_all(_BCAST, obj)
                return obj
            got = self._try_bcast(root)
            if got is _EMPTY:
                got = await self._await(_BCAST_CALL, root, limit)
            return got
        finally:
            self.seconds += _clock() - t0

    async def _await(self, op, key, limit):
        """`Comm._wait` for the event loop: the task waits, the loop runs on."""
        import asyncio                  # here, not at the top: worker processes never need it
        attempt = self._attempt(op)
        loop = asyncio.get_running_loop()
        deadline = None if limit is None else loop.time() + limit
        while True:
            left = None if deadline is None else max(0.0, deadline - loop.time())
            await self._apump(loop, left)
            got = attempt(key)
            if got is not _EMPTY:
                return got
            if deadline is not None and loop.time() >= deadline - _CLOCK_SLACK:
                raise self._expired(op, key, limit)

    def _pump(self, left):
        """What has arrived, without waiting (nothing may block the loop)."""
        inbox = self._inbox
        while inbox:
            self._deliver(*inbox.popleft())

    async def _apump(self, loop, left):
        inbox = self._inbox
        if not inbox and left != 0:
            world = self._world
            waiter = loop.create_future()
            waiters = world.waiters[self._rank]
            waiters.add(waiter)
            if left is not None:
                world.watch(loop, waiter, loop.time() + left)
            try:
                await waiter
            finally:
                waiters.discard(waiter)
                world.deadlines.pop(waiter, None)
        while inbox:
            self._deliver(*inbox.popleft())

    def _push(self, dest, kind, payload):
        if dest == self._rank:
            self._deliver(kind, dest, payload)
        else:
            self._world.put(dest, (kind, self._rank, payload))


class AsyncWorld:
    """The channels of one asyncio run; used on the event loop's thread only.

    Deadlines of waiting tasks are kept by one timer for the whole run, set
    for the earliest of them, not by a timer per wait: a timer made and
    cancelled at every recv cost more than the message itself (the loop's
    heap fills with cancelled timers it keeps sorting).
    """

    model = "asyncio"

    def __init__(self, n, timeout=DEFAULT_TIMEOUT):
        self.inboxes = [collections.deque() for _ in range(n)]
        self.waiters = [set() for _ in range(n)]
        self.deadlines = {}             # waiter future -> loop time it must be woken by
        self._timer = None
        self.comms = [AsyncComm(self, i, n, timeout) for i in range(n)]

    def watch(self, loop, waiter, deadline):
        """Wake ``waiter`` at ``deadline`` (loop time) if nothing else does first."""
        self.deadlines[waiter] = deadline
        if self._timer is None or deadline < self._timer.when():
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(deadline, self._expire, loop)

    def _expire(self, loop):
        self._timer = None
        now = loop.time() + _CLOCK_SLACK
        later = []
        for waiter, deadline in list(self.deadlines.items()):
            if deadline <= now:
                _wake(waiter)
            else:
                later.append(deadline)
        if later:
            self._timer = loop.call_at(min(later), self._expire, loop)

    def comm(self, worker_id):
        return self.comms[worker_id]

    def put(self, dest, item):
        self.inboxes[dest].append(item)
        for waiter in tuple(self.waiters[dest]):
            _wake(waiter)

    def finish(self, worker_id, error=None):
        text = _ending(error)
        for dest in range(len(self.inboxes)):
            if dest != worker_id:
                self.put(dest, (_DONE, worker_id, text))

    def stats(self):
        return CommStats(self.model, [c.stats() for c in self.comms])


# ---------------------------------------------------------------------------
# Processes: a socket pair between each two workers
# ---------------------------------------------------------------------------
# A frame: kind (1 byte), payload length (8 bytes), then the payload.
_HEADER = struct.Struct("!BQ")
# Bytes read from a socket at once, into a buffer kept for the run: a whole
# frame of up to this size, or many small ones, in one system call.
_READ_SIZE = 1 << 18
# A frame longer than this is read straight into a buffer of its own size
# (recv_into), not gathered piecewise and copied out; an object this big is
# pickled through a BytesIO (see _pickled).
_BIG_FRAME = 1 << 16
# Without it a write to a peer that has gone would raise SIGPIPE (Python
# ignores it, but a library may not have left it so).
_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)
# The cell's own thread waits in poll, not in a socket call, except to finish
# a big frame that has begun; the sockets stay blocking for the sender threads.
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
_WAITALL = getattr(socket, "MSG_WAITALL", 0)


def _pickled(obj, pickler):
    """``obj`` pickled: bytes, or for a big object a memoryview of the pickle.

    ``pickle.dumps`` grows its result by reallocation, and a megabyte took
    it 0.7 ms (ten times the copy itself); a Pickler writing to a BytesIO
    puts a big payload in one write, and getbuffer() hands it over uncopied.
    For small objects dumps is the faster (1.5 against 3.4 us), so the size
    the object says it has picks the way (a container's is only its own).
    """
    if sys.getsizeof(obj) < _BIG_FRAME and pickler is pickle.Pickler:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    out = io.BytesIO()
    pickler(out, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return out.getbuffer()


def socket_mesh(n):
    """``ends[i][j]``: worker i's socket to worker j (None on the diagonal).

    Made by the parent for one run; each worker gets its row (`hand_over`),
    and the parent closes every socket once handed over.
    """
    ends = [[None] * n for _ in range(n)]
    try:
        for i in range(n):
            for j in range(i + 1, n):
                ends[i][j], ends[j][i] = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    except BaseException:
        close_mesh(ends)
        raise
    return ends


def close_mesh(ends):
    for row in ends:
        for sock in row:
            if sock is not None:
                sock.close()


def hand_over(conn, socks):
    """Send a worker its sockets (in peer order) over its control connection.

    The connection is a Unix socket pair on POSIX (multiprocessing's duplex
    Pipe), so the file descriptors travel as SCM_RIGHTS, one message with
    one byte of data, read by `receive_channels` in the worker.
    """
    with socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as ctl:
        ctl.setblocking(True)           # shares the connection's file: keep it blocking
        socket.send_fds(ctl, [b"C"], [s.fileno() for s in socks])


def receive_channels(conn, rank, size):
    """In the worker: the sockets `hand_over` sent, as ``{peer: socket}``."""
    expected = size - 1
    with socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as ctl:
        ctl.setblocking(True)
        _, fds, flags, _ = socket.recv_fds(ctl, 1, expected)
    socks = {}
    for fd in fds:
        sock = socket.socket(fileno=fd)
        sock.settimeout(None)           # blocking, even under socket.setdefaulttimeout
        socks[len(socks) + (len(socks) >= rank)] = sock
    if len(fds) != expected or flags & getattr(socket, "MSG_CTRUNC", 0):
        for sock in socks.values():
            sock.close()
        raise OSError(f"worker {rank} received {len(fds)} of its {expected} channels to the "
                      "other workers (out of file descriptors?)")
    return socks


class ProcessComm(Comm):
    """A worker process's comm: objects pickled through a socket to each peer.

    The cell's thread writes a frame with one non-blocking ``sendmsg``; what
    does not fit the socket's buffer goes to that peer's backlog, written
    out by a sender thread of its own (blocking ``sendall``, started the
    first time a backlog forms), so a send never waits and a slow reader
    holds up no other peer. Reads happen in the cell's thread, in `_pump`.
    """

    def __init__(self, rank, size, socks, timeout=DEFAULT_TIMEOUT):
        super().__init__(rank, size, timeout)
        self._socks = socks                                  # peer -> socket (blocking)
        self._peer_of = {s.fileno(): p for p, s in socks.items()}
        self._poll = select.poll()
        for fd in self._peer_of:
            self._poll.register(fd, select.POLLIN)
        self._rbuf = {p: bytearray() for p in socks}         # bytes read, not yet a frame
        self._scratch = bytearray(_READ_SIZE) if socks else None
        self._big = {}              # peer -> [kind, buffer, bytes filled]: a big frame arriving
        # Frames that did not fit a socket's buffer, per peer, and their writers.
        self._out = threading.Condition(threading.Lock())
        self._backlog = {}                                   # peer -> deque of memoryviews
        self._senders = {}                                   # peer -> its sender thread
        self._closing = False

    # --- pickling -----------------------------------------------------------
    def _dump(self, obj, dest, copies):
        try:
            data = _pickled(obj, pickle.Pickler)
        except Exception:
            # Lambdas, functions and classes made in the cell go by value.
            try:
                import cloudpickle
                data = _pickled(obj, cloudpickle.Pickler)
            except Exception as exc:
                call = "comm.bcast()" if dest is None else f"comm.send(dest={dest})"
                raise CommError(
                    f"worker {self._rank}: {call}: a {type(obj).__module__}."
                    f"{type(obj).__qualname__} cannot be pickled, so it cannot go to another "
                    f"process ({type(exc).__name__}: {exc}); send the data it holds instead, "
                    f"or run the cell in threads", self._rank, call) from exc
        self.bytes_sent += len(data) * copies
        return data

    def _load(self, payload, source, op):
        self.bytes_received += len(payload)
        try:
            return pickle.loads(payload)
        except Exception as exc:
            call = _call(op, source)
            raise CommError(f"worker {self._rank}: {call}: the message from worker {source} "
                            f"cannot be loaded here ({type(exc).__name__}: {exc})",
                            self._rank, call) from exc

    # --- sending -------------------------------------------------------------
    def _push(self, dest, kind, payload):
        if dest == self._rank:                   # to itself: still a pickled copy
            self._deliver(kind, dest, payload)
            return
        header = _HEADER.pack(kind, len(payload))
        if self._senders:
            with self._out:
                backlog = self._backlog.get(dest)
                if backlog is not None:          # behind frames not yet written: keep order
                    backlog.append(memoryview(header))
                    if payload:
                        backlog.append(memoryview(payload))
                    self._out.notify_all()
                    return
        try:
            sent = self._socks[dest].sendmsg([header, payload] if payload else [header],
                                             (), _DONTWAIT | _NOSIGNAL)
        except BlockingIOError:
            sent = 0
        except OSError:                          # the peer has ended: it reads no more
            return
        if sent == len(header) + len(payload):
            return
        rest = []
        if sent < len(header):
            rest.append(memoryview(header)[sent:])
            sent = 0
        else:
            sent -= len(header)
        if payload:
            rest.append(memoryview(payload)[sent:])
        with self._out:
            self._backlog[dest] = collections.deque(rest)
            sender = self._senders.get(dest)
            if sender is None:
                sender = self._senders[dest] = threading.Thread(
                    target=self._send_backlog, args=(dest,), daemon=True,
                    name=f"concmagic-comm-{self._rank}-to-{dest}")
            self._out.notify_all()
        if not sender.is_alive() and sender.ident is None:
            sender.start()

    def _send_backlog(self, peer):
        """A sender thread: write ``peer``'s backlog out as it reads, until closing."""
        sock = self._socks[peer]
        while True:
            with self._out:
                while not self._backlog.get(peer) and not self._closing:
                    self._out.wait(_WAIT_SLICE)
                backlog = self._backlog.get(peer)
                if not backlog:                  # closing, and all written
                    return
                chunk = backlog[0]               # stays queued until written: keeps order
            try:
                sock.sendall(chunk, _NOSIGNAL)
            except OSError:                      # the peer has ended: drop what it won't read
                with self._out:
                    self._backlog.pop(peer, None)
                continue
            with self._out:
                backlog.popleft()
                if not backlog and self._backlog.get(peer) is backlog:
                    del self._backlog[peer]

    # --- receiving ------------------------------------------------------------
    def _pump(self, left):
        ms = -1 if left is None else math.ceil(left * 1000)
        for fd, _ in self._poll.poll(ms):
            self._read(self._peer_of[fd])

    def _read(self, peer):
        sock = self._socks[peer]
        big = self._big.get(peer)
        try:
            if big is not None:
                # Straight into the frame's own buffer, to its end: the frame
                # has begun, so the rest is on its way (a sender that dies
                # ends the read with end-of-file; a stop signal interrupts it).
                n = sock.recv_into(memoryview(big[1])[big[2]:], 0, _WAITALL)
            else:
                n = sock.recv_into(self._scratch, 0, _DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            n = 0
        if not n:                                # the peer's cell has ended, or it died
            self._poll.unregister(sock.fileno())
            self._big.pop(peer, None)
            self._deliver(_DONE, peer, "has finished or died")
            return
        if big is not None:
            big[2] += n
            if big[2] == len(big[1]):
                del self._big[peer]
                self._deliver(big[0], peer, big[1])
            return
        buf = self._rbuf[peer]
        if buf:                                  # the end of a frame begun earlier
            buf += memoryview(self._scratch)[:n]
            data, end = buf, len(buf)
        else:                                    # the usual case: frames from the start
            data, end = self._scratch, n
        pos, size = 0, _HEADER.size
        while end - pos >= size:
            kind, length = _HEADER.unpack_from(data, pos)
            stop = pos + size + length
            if stop > end:
                if length > _BIG_FRAME:          # the rest goes straight into its buffer
                    frame = bytearray(length)
                    have = end - pos - size
                    frame[:have] = data[pos + size:end]
                    self._big[peer] = [kind, frame, have]
                    pos = end
                    self._keep(peer, data, pos, end)
                    self._read(peer)
                    return
                break
            self._deliver(kind, peer, data[pos + size:stop])     # one copy, a bytearray
            pos = stop
        self._keep(peer, data, pos, end)

    def _keep(self, peer, data, pos, end):
        """Keep ``data[pos:end]`` (the start of a frame) for the next read."""
        buf = self._rbuf[peer]
        if data is buf:
            del buf[:pos]
        elif pos < end:
            buf += data[pos:end]

    # --- the end of the worker's cell -------------------------------------------
    def close(self):
        """Stop reading, write out the backlogs, close every socket.

        Reading stops first (SHUT_RD): a peer's later send to this worker
        then fails at once and is dropped, so two workers that both end with
        a backlog for each other cannot wait on each other here.
        """
        for sock in self._socks.values():
            try:
                sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass
        with self._out:
            self._closing = True
            senders = list(self._senders.values())
            self._out.notify_all()
        for sender in senders:
            if sender.ident is not None:
                sender.join()
        for sock in self._socks.values():
            sock.close()


# ---------------------------------------------------------------------------
# What the report shows
# ---------------------------------------------------------------------------
# How the messages went, by model, for the report's comm line.
_HOW = {
    "threads": "handed over in memory (no copy)",
    "serial": "handed over in memory (no copy; serial: to later workers only)",
    "asyncio": "handed over in memory on the event loop (no copy)",
    "processes": "pickled through a socket pair between each two workers",
}


@dataclass
class CommStats:
    """What the workers' comm did in one run (``report.comm``).

    `workers` holds one dict per worker (sent, received, bytes_sent,
    bytes_received, barriers, seconds), or None for a worker whose numbers
    never came back (a process that died). Bytes are pickled bytes, so 0 in
    the in-memory models, where objects are handed over, not copied.
    `seconds` is the time the workers spent inside comm calls, added up.
    """

    model: str
    workers: list = field(default_factory=list)

    def _sum(self, key):
        return sum(w[key] for w in self.workers if w is not None)

    @property
    def messages(self):
        """Messages sent (a bcast counts one per receiver)."""
        return self._sum("sent")

    @property
    def received(self):
        return self._sum("received")

    @property
    def bytes(self):
        """Pickled bytes sent (0 where nothing is copied)."""
        return self._sum("bytes_sent")

    @property
    def seconds(self):
        """Time inside comm calls, all workers added up."""
        return math.fsum(w["seconds"] for w in self.workers if w is not None)

    @property
    def barriers(self):
        """Barriers the run went through (the most any worker called)."""
        return max((w["barriers"] for w in self.workers if w is not None), default=0)

    @property
    def unreceived(self):
        """Messages sent that no worker received (None if a worker's numbers are missing)."""
        if any(w is None for w in self.workers):
            return None
        return self.messages - self.received

    @property
    def copied(self):
        return self.model in ("processes", "dask")

    @property
    def active(self):
        """True if any message or barrier went through."""
        return bool(self.messages or self.barriers)

    def __str__(self):
        parts = []
        if self.messages or not self.barriers:
            how = _HOW.get(self.model, f"in {self.model}")
            if self.copied:
                how = f"{format_bytes(self.bytes)} {how}"
            parts += [_plural(self.messages, "message"), how]
        if self.barriers:
            parts.append(_plural(self.barriers, "barrier"))
        parts.append(f"{format_time(self.seconds)} in comm calls (all workers together)")
        text = "comm: " + ", ".join(parts)
        if self.unreceived:
            text += f"; {_plural(self.unreceived, 'message')} sent but never received"
        return text

    def __repr__(self):
        return f"<CommStats {self}>"

    def _repr_pretty_(self, p, cycle):
        p.text(str(self))

    def to_dict(self):
        return {"model": self.model, "messages": self.messages, "bytes": self.bytes,
                "barriers": self.barriers, "seconds": self.seconds,
                "unreceived": self.unreceived, "workers": [dict(w) if w else None
                                                           for w in self.workers]}


def blame_the_stop(runs, pending, reason):
    """After a run was stopped: a stopped worker's peers may have seen it end
    (CommError: "worker 0 has ended...") before their own stop reached them.
    For a worker still running when the stop came, the stop is the cause."""
    for i in pending:
        run = runs.get(i)
        if run is not None and isinstance(run.error, CommError) \
                and not isinstance(run.error, CommTimeout):
            run.traceback = (run.traceback or "") + f"(then stopped: {reason})\n"
            run.error = reason


def attach(report, stats):
    """Put ``stats`` on the report (``report.comm``), with a note when anything went through."""
    report.comm = stats
    if stats is not None and stats.active:
        report.notes.append(str(stats))
    return report

