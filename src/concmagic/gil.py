"""concmagic.gil: does this call release the GIL? Measured, not guessed.

    gilcheck(f, *args, **kwargs) -> GilCheck

    calling thread                 worker thread              probe (native, _core.GilProbe)
    start the probe, settle  ----------------------------->   every 0.5 ms: ask for the GIL,
    start the worker --------->  f(*args, **kwargs)            note how long the wait was
    join() (holds no GIL)        f(...) again, until
                                 EVIDENCE seconds of calls
    stop the probe  <----------  done
    wait fraction over the bins of the calls' own time window -> GilCheck

While the worker calls ``f`` the calling thread only waits (``Thread.join``
releases the GIL), so the GIL is held by ``f`` or by no one. A call that
releases the GIL lets the probe in within microseconds: it waits ~0% of its
time. A call that keeps it makes the probe wait: about a switch interval
(5 ms) per probe when ``f`` runs Python bytecode (CPython then makes the holder
let go), the whole call when ``f`` is compiled code that never lets go. So a
pure-Python function also "holds the GIL" (~90%), as it should: while it runs,
no other thread runs Python.

What the probe cannot judge: a call so short that the loop around it (one
Python iteration per call, which holds the GIL) is a large part of the time.
Those are "inconclusive" (`TOO_SHORT_CALL`). Verdicts come only from the
named thresholds below.

This module imports nothing from IPython; ``%gilcheck`` in magics.py is a
thin skin over `gilcheck`.
It is not named ``gilcheck.py``: importing a submodule sets the package's
attribute of that name, which would turn ``concmagic.gilcheck`` from the
function into the module.
"""
from __future__ import annotations

import html
import math
import threading
import time
from dataclasses import dataclass, field

from .report import format_time

__all__ = ["gilcheck", "GilCheck", "EVIDENCE", "TOO_SHORT_CALL", "HOLDS", "RELEASES",
           "MIN_COVERAGE"]

# ---------------------------------------------------------------------------
# Thresholds (the verdict comes from these and nothing else)
# ---------------------------------------------------------------------------
#: Seconds of calls to watch. The probe asks every 0.5 ms, so 0.2 s is ~400
#: probes: enough that one unlucky wait (the OS pausing a thread) moves the
#: fraction by well under 1%, and short enough for an interactive check. A
#: single call longer than this is watched once, to its end.
EVIDENCE = 0.2
#: A wait fraction at or above this means the call holds the GIL. Holders
#: measure 0.9 (Python bytecode: the probe waits a 5 ms switch interval per
#: 0.5 ms sleep) to 1.0 (compiled code that never lets go); releasers measure
#: under 0.03. Half-way leaves room for a loaded machine either side.
HOLDS = 0.5
#: A wait fraction at or below this means the call releases the GIL. Between
#: RELEASES and HOLDS the call holds it for part of the time ("partly").
RELEASES = 0.2
#: Calls shorter than this are inconclusive. Each call costs the loop around
#: it about a microsecond of Python bytecode (which holds the GIL); below
#: 10 µs that is more than a tenth of what is measured, and a holding loop
#: around a releasing call could not be told from a holding call.
TOO_SHORT_CALL = 10e-6
#: The probe must have watched at least this share of the calls' time. It
#: needs the GIL once to start; if the machine is so busy that it got it only
#: after the calls began, it saw too little to judge.
MIN_COVERAGE = 0.5
# Seconds the probe gets to take the GIL once (for its thread state) before
# the first call; with the GIL free that takes microseconds.
_SETTLE = 0.005


# ---------------------------------------------------------------------------
# The result
# ---------------------------------------------------------------------------
@dataclass(repr=False)
class GilCheck:
    """What `gilcheck` measured about one call, and the verdict.

    `releases`: True (releases the GIL), False (holds it), None (inconclusive,
    partly, or no GIL on this Python). `wait_fraction`: share of the probe's
    time spent waiting for the GIL while the calls ran (None where not
    measured). `call_time`: seconds per call; `calls`: how many were made;
    `elapsed`: seconds of calls watched; `coverage`: share of that time the
    probe watched; `probes`: how many times it asked.
    """

    label: str                          # what was called, for the text: "f(x)"
    calls: int
    elapsed: float                      # seconds, all calls together
    wait_fraction: float | None
    coverage: float | None = None
    probes: int = 0
    gil_enabled: bool = True
    result: object = field(default=None, repr=False)   # the last call's return value

    # --- derived -------------------------------------------------------------
    @property
    def call_time(self) -> float:
        """Seconds per call."""
        return self.elapsed / self.calls if self.calls else math.nan

    @property
    def kind(self) -> str:
        """"releases", "holds", "partly", "too-short", "unwatched" or "no-gil"."""
        if not self.gil_enabled:
            return "no-gil"
        if self.call_time < TOO_SHORT_CALL:
            return "too-short"
        if self.wait_fraction is None or self.coverage is None or self.coverage < MIN_COVERAGE:
            return "unwatched"
        if self.wait_fraction >= HOLDS:
            return "holds"
        if self.wait_fraction <= RELEASES:
            return "releases"
        return "partly"

    @property
    def releases(self) -> bool | None:
        """True if the call releases the GIL, False if it holds it, None when
        the measurement cannot say (see `verdict`)."""
        return {"releases": True, "holds": False}.get(self.kind)

    def _evidence(self):
        per = format_time(self.call_time)
        return f"`{self.label}` ran {per} per call x {self.calls}"

    @property
    def verdict(self) -> str:
        """One sentence, naming the figures it rests on."""
        kind = self.kind
        wait = "-" if self.wait_fraction is None else _percent(self.wait_fraction)
        if kind == "no-gil":
            return (f"no GIL: this Python runs free-threaded, so there is no GIL to hold or "
                    f"release ({self._evidence()})")
        if kind == "too-short":
            return (f"inconclusive: the call `{self.label}` took {format_time(self.call_time)}; "
                    f"too short to judge (under {format_time(TOO_SHORT_CALL)}, the loop around "
                    f"it weighs as much as the call). Give it a bigger input")
        if kind == "unwatched":
            cover = "-" if self.coverage is None else _percent(self.coverage)
            return (f"inconclusive: the probe watched only {cover} of the time "
                    f"`{self.label}` ran (under {_percent(MIN_COVERAGE)}; the machine may be "
                    f"busy); run it again")
        if kind == "holds":
            return (f"holds the GIL (runs Python bytecode or C code that keeps the lock): "
                    f"the probe waited {wait} of the time while {self._evidence()}")
        if kind == "releases":
            return (f"releases the GIL: the probe waited {wait} of the time while "
                    f"{self._evidence()}")
        return (f"partly: holds the GIL for part of each call; the probe waited {wait} of "
                f"the time (releases <= {_percent(RELEASES)}, holds >= {_percent(HOLDS)}) "
                f"while {self._evidence()}")

    # --- reprs ---------------------------------------------------------------
    def __str__(self):
        lines = [self.verdict]
        wait = "not measured" if self.wait_fraction is None else _percent(self.wait_fraction)
        lines.append(f"  GIL wait {wait}, {self.calls} call{'s' if self.calls != 1 else ''} "
                     f"in {format_time(self.elapsed)}, {self.probes} probes")
        return "\n".join(lines)

    def __repr__(self):
        return f"<GilCheck {self.label}: {self.kind}>"

    def _repr_pretty_(self, p, cycle):
        p.text(repr(self) if cycle else str(self))

    def _repr_html_(self):
        esc = html.escape
        colour = {"releases": "#dfd", "holds": "#fdd"}.get(self.kind, "#eee")
        wait = "-" if self.wait_fraction is None else _percent(self.wait_fraction)
        rows = [("GIL wait", wait), ("per call", format_time(self.call_time)),
                ("calls", str(self.calls)), ("watched", format_time(self.elapsed)),
                ("probes", str(self.probes))]
        body = "".join(f'<tr><th style="text-align:left">{esc(k)}</th>'
                       f'<td style="text-align:right">{esc(v)}</td></tr>' for k, v in rows)
        return (f'<div class="concmagic concmagic-gilcheck">'
                f'<p style="background-color:{colour};padding:4px">'
                f'<code>{esc(self.label)}</code>: {esc(self.verdict)}</p>'
                f'<table>{body}</table></div>')

    def to_dict(self) -> dict:
        """Plain JSON-able values."""
        return {"label": self.label, "kind": self.kind, "releases": self.releases,
                "wait_fraction": self.wait_fraction, "call_time": self.call_time,
                "calls": self.calls, "elapsed": self.elapsed, "coverage": self.coverage,
                "probes": self.probes, "gil_enabled": self.gil_enabled,
                "verdict": self.verdict}


def _percent(x):
    """0.004 -> "0.4%", 0.97 -> "97%": one decimal under 10%, whole above."""
    x *= 100
    return f"{x:.0f}%" if x >= 10 or x == 0 else f"{x:.1f}%"


# ---------------------------------------------------------------------------
# The check
# ---------------------------------------------------------------------------
def gilcheck(f, *args, **kwargs) -> GilCheck:
    """Does ``f(*args, **kwargs)`` release the GIL? Calls it repeatedly in a
    worker thread (at least once, until `EVIDENCE` seconds of calls) while a
    native probe asks for the GIL from outside; returns a `GilCheck`.

    An exception from ``f`` propagates (after the probe is stopped).
    """
    if not callable(f):
        raise TypeError(f"gilcheck needs a callable; got {type(f).__name__}")
    return check_call(lambda: f(*args, **kwargs), _label(f, args, kwargs))


def check_call(call, label, evidence=EVIDENCE) -> GilCheck:
    """`gilcheck` for a no-argument ``call``, shown as ``label`` (``%gilcheck``
    passes the expression as typed). ``evidence``: seconds of calls to watch."""
    from .freethreading import gil_enabled
    from .measure import PROBE_INTERVAL

    enabled = gil_enabled()
    probe = None
    if enabled:
        from . import _core
        probe = _core.GilProbe(PROBE_INTERVAL)
    box = {}
    stop = threading.Event()

    def worker():
        calls, result = 0, None
        start = time.perf_counter()
        end = start
        try:
            while True:
                result = call()
                calls += 1
                end = time.perf_counter()
                if end - start >= evidence or stop.is_set():
                    break
        except BaseException as exc:   # noqa: B036 - handed to the calling thread
            box["error"] = exc
        box.update(calls=calls, start=start, end=end, result=result)

    thread = threading.Thread(target=worker, name="concmagic-gilcheck", daemon=True)
    gil = None
    try:
        if probe is not None:
            probe.start()
            time.sleep(_SETTLE)            # the probe takes the GIL once, to start
        thread.start()
        thread.join()                      # waits with the GIL released
    finally:
        stop.set()                         # Ctrl-C: no further calls
        if probe is not None:
            gil = probe.stop()
            probe.close()                  # its thread ends now, not when collected
    if "error" in box:
        raise box.pop("error")
    elapsed = box["end"] - box["start"]
    wait, coverage, probes = (None, None, 0) if gil is None else \
        _window(gil, box["start"], box["end"])
    return GilCheck(label=label, calls=box["calls"], elapsed=elapsed, wait_fraction=wait,
                    coverage=coverage, probes=probes, gil_enabled=enabled,
                    result=box["result"])


def _window(gil, start, end):
    """(wait fraction, coverage, probes) over the probe bins that overlap the
    calls' window [start, end] (perf_counter seconds; the probe's clock is
    the same CLOCK_MONOTONIC). The settling time before the calls, when the
    GIL was idle, is left out, or it would dilute the fraction."""
    width = gil["bin_width"]
    lo, hi = start - gil["t0"], end - gil["t0"]
    wait = span = 0.0
    for t, w, s in zip(gil["t"], gil["wait"], gil["span"]):
        if t + width > lo and t < hi:
            wait += w
            span += s
    if span <= 0:
        return None, 0.0, gil["probes"]
    coverage = span / (hi - lo) if hi > lo else math.inf
    return wait / span, min(coverage, 1.0), gil["probes"]


def _label(f, args, kwargs):
    """``name(args)`` for the text, each argument cut short."""
    from .report import _short_repr

    name = getattr(f, "__qualname__", None) or getattr(f, "__name__", None) or repr(f)
    module = getattr(f, "__module__", None)
    if module and module not in ("builtins", "__main__") and "<" not in name:
        name = f"{module.rsplit('.', 1)[-1]}.{name}"
    parts = [_short_repr(a, 20) for a in args]
    parts += [f"{k}={_short_repr(v, 20)}" for k, v in kwargs.items()]
    return f"{name}({', '.join(parts)})"
