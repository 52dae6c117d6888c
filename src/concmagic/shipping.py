"""What travelled between the notebook and its worker processes in one run.

Processes cannot share the notebook's objects: the cell function goes to
each worker pickled, with every value it captures, and each result comes
back pickled. That costs bytes and time, and for a cell that captures a big
array it can cost more than the work. The processes runner counts it into a
`Shipping` (``report.shipping``), which the report prints under its table:

    shipped: 419 MB to workers, 1.2 kB back; 2.31 s, 89% of the wall time
      pickle 402 ms, send 1.12 s, unpickle 781 ms in a worker, replies 0.2 ms
    pickled with the cell: A 210 MB (--share A would not copy it)

Arrays shared with ``--share`` are not shipped: the report says how many
bytes were shared instead, and whether they were copied into shared memory
for this run or reused from an earlier one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .comm import format_bytes
from .report import format_time

__all__ = ["Shipping", "SHOW_CAPTURED"]

#: A NumPy array the cell captured by value is named in the report (as one
#: that --share could spare the copying) from this many bytes: smaller ones
#: pickle in well under a millisecond, and naming them would be noise.
SHOW_CAPTURED = 1_000_000


def _top(values):
    """The largest of the measured values (the slowest worker), 0.0 if none."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    return max(values, default=0.0)


@dataclass(repr=False)
class Shipping:
    """Bytes and seconds spent moving the cell and its results (processes).

    Raw numbers are kept; `seconds` and `fraction` are derived. Times are
    seconds; ``worker_load`` and ``worker_dump`` hold one value per worker
    (None where no reply came: a worker that died).
    """

    n_workers: int
    wall: float = math.nan          # the run's wall time, which `fraction` divides
    sent: int = 0                   # bytes sent: the pickled function, once per worker
    received: int = 0               # bytes of the workers' replies (results, errors, output)
    pickle: float = 0.0             # notebook: pickling the function (once)
    send: float = 0.0               # notebook: writing it to the workers' pipes; a pipe
                                    # holds ~64 kB, so this includes waiting for them to read
    unpickle: float = 0.0           # notebook: unpickling the replies
    worker_load: list = field(default_factory=list)   # per worker: unpickling the function
    worker_dump: list = field(default_factory=list)   # per worker: pickling its result
    shared: dict = field(default_factory=dict)        # name -> bytes in shared memory, not shipped
    reused: list = field(default_factory=list)        # names of shared arrays not copied this run
    copied: int = 0                 # bytes copied into shared memory for this run
    place: float = 0.0              # seconds that copying took
    captured: dict = field(default_factory=dict)      # name -> bytes: arrays pickled with the cell

    def __post_init__(self):
        n = self.n_workers
        self.worker_load = list(self.worker_load) or [None] * n
        self.worker_dump = list(self.worker_dump) or [None] * n

    # --- derived ----------------------------------------------------------------
    @property
    def bytes(self):
        """Bytes shipped both ways (shared arrays not counted)."""
        return self.sent + self.received

    @property
    def seconds(self):
        """Time shipping on the run's critical path: the notebook's pickling,
        sending and unpickling, the last worker's unpickling (it gets the
        function last: the others unpickle while the notebook still sends)
        and the slowest worker's pickling of its result. Copying arrays
        into shared memory is not counted: that is `place`."""
        last = self.worker_load[-1] if self.worker_load else None
        load = _top([last]) if last is not None else _top(self.worker_load)
        return self.pickle + self.send + self.unpickle + load + _top(self.worker_dump)

    @property
    def fraction(self):
        """`seconds` / the run's wall time, at most 1; nan without a wall time."""
        if not self.wall or math.isnan(self.wall) or self.wall <= 0:
            return math.nan
        return min(self.seconds / self.wall, 1.0)

    @property
    def shareable(self):
        """Names of the arrays pickled with the cell that are worth sharing, largest first."""
        big = [(b, n) for n, b in self.captured.items() if b >= SHOW_CAPTURED]
        return [n for _, n in sorted(big, reverse=True)]

    # --- text -------------------------------------------------------------------
    def lines(self):
        """The report's lines on shipping (text and HTML use the same)."""
        fraction = self.fraction
        share = "" if math.isnan(fraction) else f", {fraction * 100:.0f}% of the wall time"
        lines = [f"shipped: {format_bytes(self.sent)} to workers, "
                 f"{format_bytes(self.received)} back; {format_time(self.seconds)}{share}",
                 f"  pickle {format_time(self.pickle)}, send {format_time(self.send)}, "
                 f"unpickle {format_time(_top(self.worker_load))} in a worker, "
                 f"replies {format_time(self.unpickle + _top(self.worker_dump))}"]
        if self.shared:
            parts = []
            for name, nbytes in self.shared.items():
                how = "reused, no copy" if name in self.reused else "copied in"
                parts.append(f"{name} {format_bytes(nbytes)} ({how})")
            line = "shared, not shipped: " + ", ".join(parts)
            if self.copied:
                line += f"; copying {format_bytes(self.copied)} took {format_time(self.place)}"
            lines.append(line)
        names = self.shareable
        if names:
            listed = ", ".join(f"{n} {format_bytes(self.captured[n])}" for n in names)
            it = "it" if len(names) == 1 else "them"
            lines.append(f"pickled with the cell: {listed} (--share {','.join(names)} "
                         f"would not copy {it})")
        return lines

    def __str__(self):
        return "\n".join(self.lines())

    def __repr__(self):
        return f"<Shipping {format_bytes(self.bytes)}, {format_time(self.seconds)}>"

    def _repr_pretty_(self, p, cycle):
        p.text(repr(self) if cycle else str(self))

    def to_dict(self):
        """Plain JSON-able values (nan becomes None)."""
        fraction = self.fraction
        return {
            "sent": self.sent, "received": self.received, "seconds": self.seconds,
            "fraction": None if math.isnan(fraction) else fraction,
            "pickle": self.pickle, "send": self.send, "unpickle": self.unpickle,
            "worker_load": list(self.worker_load), "worker_dump": list(self.worker_dump),
            "shared": dict(self.shared), "reused": list(self.reused),
            "copied": self.copied, "place": self.place, "captured": dict(self.captured),
        }
