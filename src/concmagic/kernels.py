"""The built-in compute kernels, each in three paths with identical results.

    path="python"  plain Python, below: the reference, and GIL-bound
    path="gil"     compiled (concmagic._core), holding the GIL throughout
    path="nogil"   compiled, the hot loop inside ``with nogil:``

The compiled paths run the same machine code; they differ only in whether
other threads may run Python meanwhile. Long kernels stop early when
`cancel()` is called from any thread, raising `KernelCancelled`.
"""
import math
import numbers
import time

import numpy as np

from . import _core
from ._core import KernelCancelled, cancel

__all__ = [
    "PATHS", "KERNELS", "cancel", "KernelCancelled",
    "count_primes", "monte_carlo_pi", "mandelbrot", "io_wait",
]

#: The paths every kernel offers, from slowest to most parallel.
PATHS = ("python", "gil", "nogil")

_MASK64 = 0xFFFFFFFFFFFFFFFF
# How often the Python paths look at the cancel epoch: rarely enough to cost
# nothing measurable, often enough to stop within a few milliseconds.
_PY_CHECK_EVERY = 256


def _check_path(path):
    if path not in PATHS:
        raise ValueError(f"path must be one of {', '.join(map(repr, PATHS))}; got {path!r}")
    return path


def _check_int(value, name, lo=None, hi=None):
    # bool is an int subclass, but count_primes(True, 9) is surely a mistake.
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int; got {type(value).__name__}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{name} must be in [{lo}, {hi}]; got {value}")
    return value


def _cancelled(name, path):
    return KernelCancelled(f"{name}(path={path!r}) was cancelled by concmagic.kernels.cancel()")


# ---------------------------------------------------------------------------
# count_primes
# ---------------------------------------------------------------------------
def _is_prime_py(n):
    if n < 2:
        return False
    if n < 4:
        return True
    if n % 2 == 0:
        return False
    d = 3
    while d * d <= n:
        if n % d == 0:
            return False
        d += 2
    return True


def _count_primes_py(lo, hi):
    epoch = _core.cancel_epoch()
    count = 0
    for n in range(lo, hi):
        if n % _PY_CHECK_EVERY == 0 and _core.cancel_epoch() != epoch:
            raise _cancelled("count_primes", "python")
        count += _is_prime_py(n)
    return count


def count_primes(lo, hi, path="nogil"):
    """Number of primes p with ``lo <= p < hi``, by trial division.

    Work per number grows like sqrt(p), so splitting a range into equal parts
    gives the upper parts more work: a real load imbalance.
    """
    _check_path(path)
    lo = _check_int(lo, "lo", 0, 2**63)
    hi = _check_int(hi, "hi", 0, 2**63)
    if path == "python":
        return _count_primes_py(lo, hi)
    if path == "gil":
        return _core.count_primes_gil(lo, hi)
    return _core.count_primes_nogil(lo, hi)


# ---------------------------------------------------------------------------
# monte_carlo_pi
# ---------------------------------------------------------------------------
_GOLDEN_GAMMA = 0x9E3779B97F4A7C15
_TWO_POW_MINUS_53 = 1.0 / 9007199254740992.0


def _splitmix64(state):
    """One step of splitmix64: returns (new_state, output), all mod 2**64."""
    state = (state + _GOLDEN_GAMMA) & _MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return state, z ^ (z >> 31)


def _seed_state(seed):
    return _splitmix64(seed & _MASK64)[1]


def _monte_carlo_pi_py(n, seed):
    epoch = _core.cancel_epoch()
    state = _seed_state(seed)
    hits = 0
    for i in range(n):
        if i % 4096 == 0 and _core.cancel_epoch() != epoch:
            raise _cancelled("monte_carlo_pi", "python")
        state, a = _splitmix64(state)
        state, b = _splitmix64(state)
        x = (a >> 11) * _TWO_POW_MINUS_53
        y = (b >> 11) * _TWO_POW_MINUS_53
        hits += x * x + y * y <= 1.0
    return 4.0 * hits / n if n else math.nan


def monte_carlo_pi(n, seed=0, path="nogil"):
    """Estimate pi from ``n`` random points (nan when n == 0).

    The generator (splitmix64) is the same in every path, so a given
    ``(n, seed)`` gives the same float in all three. Give each worker its own
    seed (e.g. ``seed=worker_id``) for independent streams.
    """
    _check_path(path)
    n = _check_int(n, "n", 0, 2**63 - 1)
    seed = _check_int(seed, "seed")
    if path == "python":
        return _monte_carlo_pi_py(n, seed)
    if path == "gil":
        return _core.monte_carlo_pi_gil(n, seed)
    return _core.monte_carlo_pi_nogil(n, seed)


# ---------------------------------------------------------------------------
# mandelbrot
# ---------------------------------------------------------------------------
def _mandelbrot_py(out, row_start, row_stop, xmin, xmax, ymin, ymax, max_iter):
    epoch = _core.cancel_epoch()
    height, width = out.shape
    dx = (xmax - xmin) / width if width else 0.0
    dy = (ymax - ymin) / height
    for r in range(row_start, row_stop):
        if _core.cancel_epoch() != epoch:
            raise _cancelled("mandelbrot", "python")
        y = ymin + r * dy
        row = [0] * width
        for c in range(width):
            cr = xmin + c * dx
            zr = zi = 0.0
            it = 0
            while it < max_iter:
                zr2 = zr * zr
                zi2 = zi * zi
                if zr2 + zi2 > 4.0:
                    break
                zi = 2.0 * zr * zi + y
                zr = zr2 - zi2 + cr
                it += 1
            row[c] = it
        out[r, :] = row


def mandelbrot(out, row_start=0, row_stop=None, *, xmin=-2.0, xmax=1.0,
               ymin=-1.5, ymax=1.5, max_iter=100, path="nogil"):
    """Write escape-time counts for rows ``row_start:row_stop`` into ``out``.

    ``out`` is the caller's 2-D, C-contiguous, writeable ``int32`` array; its
    shape sets the resolution over [xmin, xmax] x [ymin, ymax]. Workers that
    fill disjoint row ranges of one array share it with no copying: in threads
    that is the same memory. Returns ``out``.
    """
    _check_path(path)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray; got {type(out).__name__}")
    if out.ndim != 2:
        raise ValueError(f"out must be 2-D; got {out.ndim}-D with shape {out.shape}")
    if out.dtype != np.int32:
        raise TypeError(f"out must have dtype int32; got {out.dtype}")
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous; got a strided view (use np.ascontiguousarray)")
    if not out.flags.writeable:
        raise ValueError("out must be writeable; got a read-only array")
    height = out.shape[0]
    if row_stop is None:
        row_stop = height
    row_start = _check_int(row_start, "row_start", 0, height)
    row_stop = _check_int(row_stop, "row_stop", row_start, height)
    max_iter = _check_int(max_iter, "max_iter", 0, 2**31 - 1)
    for name, value in (("xmin", xmin), ("xmax", xmax), ("ymin", ymin), ("ymax", ymax)):
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            raise TypeError(f"{name} must be a real number; got {type(value).__name__}")
    bounds = [float(v) for v in (xmin, xmax, ymin, ymax)]
    if not all(map(math.isfinite, bounds)):
        raise ValueError(f"xmin, xmax, ymin, ymax must be finite; got {bounds}")
    if row_start == row_stop:
        return out
    if path == "python":
        _mandelbrot_py(out, row_start, row_stop, *bounds, max_iter)
    elif path == "gil":
        _core.mandelbrot_gil(out, row_start, row_stop, *bounds, max_iter)
    else:
        _core.mandelbrot_nogil(out, row_start, row_stop, *bounds, max_iter)
    return out


# ---------------------------------------------------------------------------
# io_wait
# ---------------------------------------------------------------------------
def _io_wait_py(seconds):
    # time.sleep releases the GIL, like a real blocking read in Python would.
    epoch = _core.cancel_epoch()
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if _core.cancel_epoch() != epoch:
            raise _cancelled("io_wait", "python")
        time.sleep(min(left, 0.01))


def io_wait(seconds, path="nogil"):
    """Simulated I/O: block for ``seconds`` as a network read would. Returns None.

    Only a stand-in for I/O (it sleeps): ``python`` and ``nogil`` release the
    GIL while waiting, as well-behaved I/O does; ``gil`` keeps it, as a badly
    written extension would, and stops every other thread for the duration.
    """
    _check_path(path)
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        raise TypeError(f"seconds must be a number; got {type(seconds).__name__}")
    if not seconds >= 0 or math.isinf(seconds):
        raise ValueError(f"seconds must be finite and >= 0; got {seconds}")
    if path == "python":
        return _io_wait_py(seconds)
    if path == "gil":
        return _core.io_wait_gil(seconds)
    return _core.io_wait_nogil(seconds)


#: name -> function, for tours and benchmarks that loop over the kernels.
KERNELS = {
    "count_primes": count_primes,
    "monte_carlo_pi": monte_carlo_pi,
    "mandelbrot": mandelbrot,
    "io_wait": io_wait,
}
