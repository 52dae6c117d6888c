"""Shared NumPy arrays for worker processes: ``share=`` of concmagic.run, ``--share`` of %%processes.

    notebook process                                       each worker process
    A (a private array)
      |  place(): one copy, os.write into a memfd
      v
    memfd "concmagic:A"   A is rebound to a view of it
      |  (anonymous shared memory: no file in /dev/shm)
      +-- its descriptor, over the worker's control pipe ---> mmap(fd), close(fd)
          (SCM_RIGHTS, after the run's header)                 A = a view of it: no copy
      the pickled function carries A as a reference
      ("shared array 0"), never its data                       ...the cell runs...
                                            <--- reply ---     a result that *is* A comes
                                                               back as a reference too;
                                                               views dropped, munmap

Why a memfd rather than multiprocessing.shared_memory: a memfd has no name,
so nothing can be left behind in /dev/shm. Its memory is freed when the last
descriptor and the last mapping of it go, whoever holds them and however
they end: a worker killed by SIGKILL unmaps as it dies, and so does a
notebook kernel that crashes. A shared_memory segment is a file in /dev/shm
that someone must unlink; a process killed between creating and unlinking
it leaks it until reboot. The price: Linux only (os.memfd_create).

The rules users rely on:
- Names (``share=["A"]``, ``--share A``) are looked up in the function's
  globals (the notebook's namespace) and rebound there, before any worker
  starts, to views of the shared memory. From then on the notebook and every
  worker see the same memory: a worker's writes are in the notebook's ``A``
  when the run ends (and during it: real shared memory, races included).
  Other references to the old array (``B = A`` made earlier) keep the old data.
- With a mapping (``share={"A": arr}``) nothing is rebound: the workers see
  ``A`` as a global, and the notebook's views are ``report.shared["A"]``.
- Reuse: an array that *is* a view handed out by concmagic (the very object,
  still alive) goes to the workers as it is, with no copy. Anything else (a
  new array, a slice or a copy of a view, ``A = A + 1``) is copied into new
  shared memory. Writes to a view need no re-copy: they are writes to the
  shared memory itself, so "unchanged" never needs checking.
- The descriptor is kept while the view lives, so that later runs can hand
  it out again; it is closed when the view is garbage-collected, and the
  memory goes with the last array that looks at it.
- Workers map the arrays for one run: after the cell, they drop their views
  and unmap before replying. A worker whose cell kept a reference (stored in
  a module, say) is retired after its reply, so its mapping dies with it.
- Arrays are copied in their own layout (C or Fortran order); a
  non-contiguous one (a strided slice) becomes a C-ordered copy. Arrays of
  Python objects cannot be shared (the objects live in one process's heap).

The worker side (`receive`, `Attached`) imports NumPy only when a run
shares arrays; the parent side only when ``share`` is given.
"""
import gc
import inspect
import io
import keyword
import math
import mmap
import os
import pickle
import re
import socket
import time
import weakref
from collections.abc import Mapping

import cloudpickle

from ..errors import ShareError

__all__ = ["resolve", "place", "send", "receive", "dumps", "loads", "Request", "Placed",
           "Attached", "MAX_ARRAYS"]

#: Most arrays one run may share: all their descriptors travel in one
#: SCM_RIGHTS message, and Linux carries at most 253 per message.
MAX_ARRAYS = 253
# Bytes per os.write: Linux writes at most 2 GiB - 4 kB in one call.
_WRITE_CHUNK = 1 << 30
# The tag byte that carries the descriptors (comm's channels use b"C").
_TAG = b"S"

# id(view) -> (weak reference to the view, Segment): the views handed out in
# this process, alive. Looked up by identity only (see `_registered`).
_segments = {}


# ---------------------------------------------------------------------------
# Pickling with references to shared arrays
# ---------------------------------------------------------------------------
class _Pickler(cloudpickle.CloudPickler):
    """cloudpickle, except that the given objects travel as references (keys)."""

    def __init__(self, file, keys):
        super().__init__(file)
        self._keys = keys                          # id(obj) -> key; the objects are held elsewhere

    def persistent_id(self, obj):
        return self._keys.get(id(obj))


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, objects):
        super().__init__(file)
        self._objects = objects                    # key -> object

    def persistent_load(self, key):
        try:
            return self._objects[key]
        except (IndexError, KeyError, TypeError):
            raise pickle.UnpicklingError(f"no shared array {key!r} in this run") from None


def dumps(obj, keys):
    """``cloudpickle.dumps(obj)``, with the objects whose ids are in ``keys`` as references."""
    buf = io.BytesIO()
    _Pickler(buf, keys).dump(obj)
    return buf.getvalue()


def loads(data, objects):
    """``pickle.loads(data)``, with references resolved in ``objects`` (key -> object)."""
    return _Unpickler(io.BytesIO(data), objects).load()


# ---------------------------------------------------------------------------
# The notebook's side: what to share, placing it, handing it out
# ---------------------------------------------------------------------------
class Request:
    """A checked ``share`` argument; nothing placed or rebound yet.

    ``arrays`` are the distinct arrays (two names for one array share one
    segment); ``keys`` maps each name to its array's index; ``ids`` maps
    id(array) -> index, for pickling; ``namespace`` is where names are
    rebound (None for a mapping).
    """

    def __init__(self, items, namespace):
        self.namespace = namespace
        self.arrays, self.keys, self.ids = [], {}, {}
        for name, array in items:
            key = self.ids.get(id(array))
            if key is None:
                key = self.ids[id(array)] = len(self.arrays)
                self.arrays.append(array)
            self.keys[name] = key

    @property
    def names(self):
        return tuple(self.keys)


class Placed:
    """The arrays of one run, in shared memory.

    ``segments`` and ``views`` by index; ``names``: name -> index;
    ``copied`` (bytes) and ``seconds`` spent placing; ``reused``: the names
    whose arrays were already shared views, handed out again without a copy.
    """

    def __init__(self, request):
        self.names = dict(request.keys)
        self.segments, self.views = [], []
        self.copied, self.reused, self.seconds = 0, [], 0.0

    @property
    def spec(self):
        """What a worker needs to map them: layouts by index, and the names."""
        return [s.layout for s in self.segments], self.names

    def by_name(self):
        return {name: self.views[key] for name, key in self.names.items()}

    def nbytes(self):
        """name -> bytes in shared memory."""
        return {name: self.views[key].nbytes for name, key in self.names.items()}


class _Segment:
    """One array's shared memory in the notebook: the memfd and the layout of its array."""

    def __init__(self, fd, shape, dtype, order):
        self.fd, self.shape, self.dtype, self.order = fd, shape, dtype, order

    @property
    def layout(self):
        return self.shape, self.dtype, self.order

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def resolve(share, func):
    """Check ``share`` (names, "a,b", or a mapping name -> array) against ``func``.

    Returns a Request; raises ShareError naming the first name that cannot
    be shared. Changes nothing.
    """
    if not hasattr(os, "memfd_create") or not hasattr(socket, "send_fds"):
        raise ShareError("share", "shared arrays need Linux (os.memfd_create and "
                                  "socket.send_fds); ship the data pickled, or use threads")
    try:
        import numpy as np
    except ImportError:
        raise ShareError("share", "it takes NumPy arrays, and NumPy is not installed") from None
    if isinstance(share, Mapping):
        namespace = None
        items = list(share.items())
        for name, _ in items:
            _check_name(name)
    else:
        if isinstance(share, str):                 # "a,b" as on the magic's line
            share = [s for s in re.split(r"[\s,]+", share) if s]
        names = []
        for name in share:
            _check_name(name)
            if name not in names:
                names.append(name)
        target = inspect.unwrap(func)
        namespace = getattr(target, "__globals__", None)
        if namespace is None:
            raise ShareError(names[0] if names else "share",
                             f"names are looked up in the globals of the function, and "
                             f"{type(target).__name__} objects have none; pass a mapping "
                             f"instead: share={{'name': array}}")
        missing = object()
        items = [(name, namespace.get(name, missing)) for name in names]
        for name, value in items:
            if value is missing:
                raise ShareError(name, "no variable of that name is defined in the notebook "
                                       "(the function's globals)")
    if not items:
        raise ShareError("share", "it names no arrays")
    for name, value in items:
        _check_array(name, value, np)
    request = Request(items, namespace)
    if len(request.arrays) > MAX_ARRAYS:
        raise ShareError(request.names[MAX_ARRAYS], f"at most {MAX_ARRAYS} arrays can be "
                                                    f"shared in one run; got {len(request.arrays)}")
    return request


def _check_name(name):
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise ShareError(str(name), f"{name!r} is not a valid Python name")


def _check_array(name, value, np):
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    if not isinstance(value, np.ndarray):
        raise ShareError(name, f"it is {_article(kind)} {kind}, not a NumPy array "
                               f"(np.asarray({name}) makes one)")
    if type(value) is not np.ndarray:
        # A subclass carries more than its buffer (a mask, units...), which
        # would not be shared: the workers would see a plain array.
        raise ShareError(name, f"it is {_article(kind)} {kind}, a NumPy array subclass, whose "
                               f"extra state cannot be shared; share a plain array "
                               f"(np.asarray({name}))")
    if value.dtype.hasobject:
        raise ShareError(name, f"its dtype {value.dtype} holds Python objects, which live in "
                               f"one process's memory; only numbers, booleans, strings, bytes "
                               f"and records of them can be shared")


def _article(word):
    return "an" if word[:1].lower() in "aeiou" else "a"


def place(request):
    """Put the request's arrays in shared memory (or reuse the views they
    already are); rebind names in the request's namespace. -> Placed."""
    t0 = time.perf_counter()
    placed = Placed(request)
    reused = set()
    for key, array in enumerate(request.arrays):
        segment = _registered(array)
        if segment is not None:
            view = array
            reused.add(key)
        else:
            label = next(n for n, k in request.keys.items() if k == key)
            segment, view = _new_segment(array, label)
            placed.copied += array.nbytes
        placed.segments.append(segment)
        placed.views.append(view)
    placed.reused = [name for name, key in request.keys.items() if key in reused]
    if request.namespace is not None:
        for name, key in request.keys.items():
            request.namespace[name] = placed.views[key]
    placed.seconds = time.perf_counter() - t0
    return placed


def _registered(array):
    """The segment of ``array`` if it is a live view handed out here, else None."""
    entry = _segments.get(id(array))
    if entry is not None and entry[0]() is array:
        return entry[1]
    return None


def _new_segment(array, label):
    """A memfd holding a copy of ``array``, and the array's view of it."""
    import numpy as np
    if array.flags.c_contiguous:
        order, data = "C", array
    elif array.flags.f_contiguous:
        order, data = "F", array.T                 # a Fortran array's bytes, in C order
    else:
        order, data = "C", np.ascontiguousarray(array)   # strided: one copy more
    fd = os.memfd_create(f"concmagic:{label}", os.MFD_CLOEXEC)
    try:
        # os.write fills the memfd's pages inside the kernel, about twice as
        # fast as copying through a fresh mapping, which takes a page fault
        # per 4 kB (84 vs 170-200 ms for 200 MiB, measured on this project's
        # 2-core machine).
        raw = memoryview(data.reshape(-1).view(np.uint8))
        done = 0
        while done < len(raw):
            done += os.write(fd, raw[done:done + _WRITE_CHUNK])
        if array.nbytes == 0:
            os.ftruncate(fd, 1)                    # mmap refuses an empty file
        view = _view(mmap.mmap(fd, max(array.nbytes, 1)), array.shape, array.dtype, order)
    except BaseException:
        os.close(fd)
        raise
    segment = _Segment(fd, array.shape, array.dtype, order)
    _segments[id(view)] = (weakref.ref(view), segment)
    # The descriptor is needed only to hand the view out again: it goes with
    # the view. (The mapping lives on in any slice of the view.)
    weakref.finalize(view, _forget, id(view), segment)
    return segment, view


def _view(mm, shape, dtype, order):
    """The array of ``shape``, ``dtype``, ``order`` over the mapping ``mm``.

    Made with np.frombuffer, which holds a buffer export of the mapping for
    as long as any array looks at it, so that ``mm.close()`` refuses
    (BufferError) while one does. (``np.ndarray(buffer=mm)`` holds none: the
    mapping could then be closed under a live array, which would crash.)
    """
    import numpy as np
    flat = np.frombuffer(mm, dtype=dtype, count=math.prod(shape))
    return flat.reshape(shape, order=order)


def _forget(view_id, segment):
    entry = _segments.get(view_id)
    if entry is not None and entry[1] is segment:
        del _segments[view_id]
    segment.close()


def send(conn, placed):
    """Hand a worker the run's descriptors over its control connection
    (a Unix socket pair: SCM_RIGHTS, one tag byte read by `receive`)."""
    with socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as ctl:
        ctl.setblocking(True)                      # shares the connection's file: keep it blocking
        socket.send_fds(ctl, [_TAG], [s.fd for s in placed.segments])


# ---------------------------------------------------------------------------
# The worker's side
# ---------------------------------------------------------------------------
def receive(conn, spec):
    """In the worker: the descriptors `send` sent, mapped -> Attached."""
    layouts, names = spec
    with socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as ctl:
        ctl.setblocking(True)
        _, fds, flags, _ = socket.recv_fds(ctl, 1, len(layouts))
    try:
        if len(fds) != len(layouts) or flags & getattr(socket, "MSG_CTRUNC", 0):
            raise OSError(f"received {len(fds)} of the {len(layouts)} shared arrays "
                          "(out of file descriptors?)")
        return Attached(layouts, names, fds)
    finally:
        for fd in fds:                             # the mappings keep the memory
            os.close(fd)


class Attached:
    """A worker's views of one run's shared arrays."""

    def __init__(self, layouts, names, fds):
        self.names = names
        self.maps, self.views = [], []
        for (shape, dtype, order), fd in zip(layouts, fds):
            mm = mmap.mmap(fd, max(math.prod(shape) * dtype.itemsize, 1))
            self.maps.append(mm)
            self.views.append(_view(mm, shape, dtype, order))

    def loads(self, data):
        return loads(data, self.views)

    def dumps(self, obj):
        return dumps(obj, {id(v): i for i, v in enumerate(self.views)})

    def inject(self, func):
        """Set the names as globals of ``func``; returns a function that undoes it.

        A function shipped by value already finds its views there (they were
        references in its pickle); one pickled by reference (defined in an
        importable module) finds them only this way.
        """
        namespace = getattr(func, "__globals__", None)
        if namespace is None:
            return lambda: None
        absent = object()
        saved = {name: namespace.get(name, absent) for name in self.names}
        for name, key in self.names.items():
            namespace[name] = self.views[key]

        def restore():
            for name, old in saved.items():
                if old is absent:
                    namespace.pop(name, None)
                else:
                    namespace[name] = old
        return restore

    def release(self):
        """Drop the views and unmap; False if some reference outlived the cell."""
        self.views.clear()
        if self._close():
            # A cycle may still hold a view: a traceback's frames, a notebook
            # function and the globals dict that holds it.
            gc.collect()
            self._close()
        return not self.maps

    def _close(self):
        left = []
        for mm in self.maps:
            try:
                mm.close()
            except BufferError:                    # an array still looks at it
                left.append(mm)
        self.maps = left
        return left
