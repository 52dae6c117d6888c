"""Per-worker capture of sys.stdout and sys.stderr, by thread or by asyncio task.

While a run is in progress, ``sys.stdout`` and ``sys.stderr`` are replaced by
routers that send each write to the buffer of the worker that made it, and
every other thread's writes to the stream that was there before. So each
worker's output is kept whole and apart (shown grouped afterwards, never
interleaved mid-line), and nothing a worker prints can land in the output of
whichever notebook cell happens to run next.

A worker is found by its thread, or, for asyncio tasks (which all share the
event loop's thread), by a context variable: each task runs in a copy of the
context, so the key a task sets for itself is seen by its own writes only
(and by the tasks and ``to_thread`` calls it starts, which copy its context).
The key is checked first; a write whose key this router does not know (a task
of an outer run, say) falls back to the thread lookup.
"""
import contextvars
import io
import sys
import threading

__all__ = ["capture_threads"]

# The output key of the asyncio task running now (None outside such tasks).
_task_key = contextvars.ContextVar("concmagic_output_key", default=None)


class _TaskKey:
    """Names one task's buffers; unique, and never equal to a thread ident."""

    __slots__ = ()


class _Router(io.TextIOBase):
    """A text stream that dispatches writes by the calling asyncio task or thread."""

    def __init__(self, original, which):
        self._original = original
        self._which = which                      # "stdout" or "stderr"
        self.buffers = {}                        # thread ident or task key -> written strings

    # The attributes callers commonly look at are the original stream's.
    @property
    def encoding(self):
        return getattr(self._original, "encoding", "utf-8")

    @property
    def errors(self):
        return getattr(self._original, "errors", "strict")

    def isatty(self):
        return False

    def writable(self):
        return True

    def fileno(self):
        return self._original.fileno()

    def _parts(self):
        """The calling worker's list of written strings, or None."""
        key = _task_key.get()
        if key is not None:
            parts = self.buffers.get(key)
            if parts is not None:
                return parts
        return self.buffers.get(threading.get_ident())

    def write(self, text):
        parts = self._parts()
        if parts is None:
            return self._original.write(text)
        parts.append(str(text))
        return len(text)

    def flush(self):
        if self._parts() is None:
            self._original.flush()

    def __getattr__(self, name):                 # e.g. ipykernel's OutStream extras
        return getattr(self._original, name)

    def __del__(self):
        # io.IOBase's finalizer would close() the router, and closing flushes
        # the original stream: ~5 us per router, twice each run, for nothing
        # (a router owns no buffer; the original stream is not ours to flush).
        pass


class capture_threads:
    """Context manager: route output of registered threads and tasks into buffers.

    ``register()`` is called by each worker thread for itself, ``register_task()``
    by each asyncio task for itself (it returns the task's key); ``output(ident)``
    returns ``(stdout, stderr)`` captured for that thread (or key), and
    ``unregister(ident)`` lets go of its buffers. Nesting is allowed
    (the serial runner inside a threads run, say): each level restores what it
    found, and only if nobody replaced the streams meanwhile.
    """

    _lock = threading.RLock()
    _closed = False

    def __enter__(self):
        with self._lock:
            self._saved = (sys.stdout, sys.stderr)
            self.out = _Router(sys.stdout, "stdout")
            self.err = _Router(sys.stderr, "stderr")
            sys.stdout, sys.stderr = self.out, self.err
        return self

    def register(self, ident=None):
        ident = threading.get_ident() if ident is None else ident
        self.out.buffers[ident] = []
        self.err.buffers[ident] = []

    def register_all(self, idents):
        """``register`` for each of ``idents``, by the runner for its workers."""
        out, err = self.out.buffers, self.err.buffers
        for ident in idents:
            out[ident] = []
            err[ident] = []

    def register_task(self):
        """Route the calling asyncio task's output to buffers of its own; its key.

        Sets the context variable in the task's own context, so no other task
        sees it (a task the caller starts later inherits it, as it should).
        """
        key = _TaskKey()
        self.out.buffers[key] = []
        self.err.buffers[key] = []
        _task_key.set(key)
        return key

    def output(self, ident=None):
        ident = threading.get_ident() if ident is None else ident
        out, err = self.out.buffers.get(ident), self.err.buffers.get(ident)
        return ("".join(out) if out else "", "".join(err) if err else "")

    def take(self):
        """``output()`` then ``unregister()`` for the calling thread: ``(stdout, stderr)``."""
        ident = threading.get_ident()
        out, err = self.out.buffers.pop(ident, None), self.err.buffers.pop(ident, None)
        if self._closed:
            with self._lock:
                if not self.out.buffers:
                    self._restore()               # the last straggler is done
        return ("".join(out) if out else "", "".join(err) if err else "")

    def unregister(self, ident=None):
        ident = threading.get_ident() if ident is None else ident
        with self._lock:
            self.out.buffers.pop(ident, None)
            self.err.buffers.pop(ident, None)
            if self._closed and not self.out.buffers:
                self._restore()                   # the last straggler is done

    def __exit__(self, *exc):
        with self._lock:
            self._closed = True
            # A worker that could not be stopped still owns a buffer: keep
            # routing its writes away from the notebook until it unregisters.
            if not self.out.buffers:
                self._restore()
        return False

    def _restore(self):
        if sys.stdout is self.out:
            sys.stdout = self._saved[0]
        if sys.stderr is self.err:
            sys.stderr = self._saved[1]
