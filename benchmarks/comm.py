"""What does a message between two workers cost, in threads, processes and asyncio?

    python benchmarks/comm.py            # full run: about 10 s
    python benchmarks/comm.py --quick    # about a second: a smoke test, not a measurement
    python -m benchmarks --groups comm   # the same tables, into benchmarks/RESULTS.md

A ping-pong: worker 0 sends a payload to worker 1, which sends it back;
worker 0 times each round trip inside the cell (``time.perf_counter``
around ``comm.send`` + ``comm.recv``), so the figures are the price of the
messages alone, not of starting the run. Payloads: a small int, 64 KiB and
1 MiB of bytes. In threads and asyncio the object itself is handed over (no
copy: the payload's size should not matter); between processes it is
pickled, written to a socket, read and unpickled, both ways.

Beside each concmagic row, the same ping-pong on the plain standard-library
tool (two threads and two queue.SimpleQueue; two processes and a
multiprocessing.Pipe; two tasks and two asyncio.Queue): what concmagic's
comm layer adds to the bare mechanism.

Method (STYLE.md section 7): each variant runs in batches of round trips;
the first round trips of every batch, and one whole batch per variant, are
warm-up and never reported; batches of all variants alternate, so slow
drifts of the machine hit all of them alike; min and median of the round
trips are reported, with the spread (std dev as % of the mean) and a
warning where it is large. Differences under 10% are noise.
"""
import argparse
import asyncio
import functools
import multiprocessing
import queue
import statistics
import sys
import threading
import time
from pathlib import Path

try:                                             # python -m benchmarks.comm
    from . import _results, _util
except ImportError:                              # python benchmarks/comm.py
    import _results
    import _util

import concmagic

REPO = Path(__file__).resolve().parent.parent
fmt_time = _util.fmt_time

#: Payload name -> the object sent back and forth.
PAYLOADS = {"int": 12345, "64 KiB": bytes(64 * 1024), "1 MiB": bytes(1024 * 1024)}

#: A spread (std dev / mean) above this gets a warning: the medians may move on a rerun.
NOISY_SPREAD = 0.5


class Settings:
    def __init__(self, quick, tiny=False):
        self.quick = quick = quick or tiny
        self.batches = 1 if tiny else 2 if quick else 6    # reported batches per variant
        self.trips = 50 if tiny else 200 if quick else 1000  # round trips per batch (small)
        self.warmup = 5 if tiny else 20 if quick else 100  # dropped at each batch's start
        self.payloads = (["int"] if tiny else ["int", "64 KiB"] if quick
                         else list(PAYLOADS))

    def trips_for(self, payload):
        # Big payloads cost far more per trip: fewer trips keep the run short.
        size = len(PAYLOADS[payload]) if isinstance(PAYLOADS[payload], bytes) else 0
        scale = 1 + size // (64 * 1024)
        return max(40, self.trips // scale), max(5, self.warmup // scale)


# ---------------------------------------------------------------------------
# The cells: concmagic comm
# ---------------------------------------------------------------------------
def pingpong(worker_id, n_workers, comm, payload, trips, warmup):
    """Worker 0's round-trip times, in seconds, after ``warmup`` trips."""
    clock = time.perf_counter
    samples = []
    comm.barrier()                                # both workers are running
    if worker_id == 0:
        for i in range(warmup + trips):
            t0 = clock()
            comm.send(1, payload)
            comm.recv(source=1)
            if i >= warmup:
                samples.append(clock() - t0)
    elif worker_id == 1:
        for _ in range(warmup + trips):
            comm.send(0, comm.recv(source=0))
    return samples


async def apingpong(worker_id, n_workers, comm, payload, trips, warmup):
    """The same as an asyncio cell: recv is awaited."""
    clock = time.perf_counter
    samples = []
    await comm.barrier()
    if worker_id == 0:
        for i in range(warmup + trips):
            t0 = clock()
            comm.send(1, payload)
            await comm.recv(source=1)
            if i >= warmup:
                samples.append(clock() - t0)
    elif worker_id == 1:
        for _ in range(warmup + trips):
            comm.send(0, await comm.recv(source=0))
    return samples


def concmagic_batch(model, payload, trips, warmup):
    func = apingpong if model == "asyncio" else pingpong
    report = concmagic.run(functools.partial(func, payload=payload, trips=trips, warmup=warmup),
                           2, model, measure=False, comm_timeout=60)
    return report.results[0]


# ---------------------------------------------------------------------------
# The references: the bare standard-library mechanism
# ---------------------------------------------------------------------------
def raw_threads_batch(payload, trips, warmup):
    ping, pong = queue.SimpleQueue(), queue.SimpleQueue()

    def echo():
        for _ in range(warmup + trips):
            pong.put(ping.get())

    thread = threading.Thread(target=echo)
    thread.start()
    clock, samples = time.perf_counter, []
    for i in range(warmup + trips):
        t0 = clock()
        ping.put(payload)
        pong.get()
        if i >= warmup:
            samples.append(clock() - t0)
    thread.join()
    return samples


def raw_asyncio_batch(payload, trips, warmup):
    async def main():
        ping, pong = asyncio.Queue(), asyncio.Queue()

        async def echo():
            for _ in range(warmup + trips):
                await pong.put(await ping.get())

        task = asyncio.create_task(echo())
        clock, samples = time.perf_counter, []
        for i in range(warmup + trips):
            t0 = clock()
            await ping.put(payload)
            await pong.get()
            if i >= warmup:
                samples.append(clock() - t0)
        await task
        return samples
    return asyncio.run(main())


def _echo(conn):
    """The other process of the multiprocessing.Pipe reference: send back what comes."""
    while True:
        obj = conn.recv()
        if obj is None:
            return
        conn.send(obj)


class RawProcesses:
    """A warm second process at the other end of a multiprocessing.Pipe."""

    def __init__(self):
        method = concmagic.status()["start_methods"][0]
        ctx = multiprocessing.get_context(method)
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_echo, args=(child,), daemon=True)
        self.process.start()
        child.close()

    def batch(self, payload, trips, warmup):
        conn, clock, samples = self.conn, time.perf_counter, []
        for i in range(warmup + trips):
            t0 = clock()
            conn.send(payload)
            conn.recv()
            if i >= warmup:
                samples.append(clock() - t0)
        return samples

    def close(self):
        self.conn.send(None)
        self.process.join(5)
        self.conn.close()


# ---------------------------------------------------------------------------
# Running and reporting
# ---------------------------------------------------------------------------
def variants(raw_processes):
    """Name -> (model, batch(payload, trips, warmup))."""
    return {
        "threads     concmagic comm": ("threads", functools.partial(concmagic_batch, "threads")),
        "threads     2 SimpleQueues": ("threads", raw_threads_batch),
        "processes   concmagic comm": ("processes",
                                       functools.partial(concmagic_batch, "processes")),
        "processes   mp.Pipe": ("processes", raw_processes.batch),
        "asyncio     concmagic comm": ("asyncio", functools.partial(concmagic_batch, "asyncio")),
        "asyncio     2 asyncio.Queues": ("asyncio", raw_asyncio_batch),
    }


def measure(settings, jobs):
    """payload -> name -> list of round-trip seconds (warm-up left out)."""
    results = {}
    for payload_name in settings.payloads:
        payload = PAYLOADS[payload_name]
        trips, warmup = settings.trips_for(payload_name)
        for _, batch in jobs.values():             # one whole batch each: warm-up, not kept
            batch(payload, trips, warmup)
        samples = {name: [] for name in jobs}
        for _ in range(settings.batches):          # alternate the variants, batch by batch
            for name, (_, batch) in jobs.items():
                samples[name].extend(batch(payload, trips, warmup))
        results[payload_name] = samples
    return results


def spread(samples):
    mean = statistics.fmean(samples)
    return statistics.stdev(samples) / mean if len(samples) > 1 and mean > 0 else 0.0


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(settings, results, jobs):
    header = ["model       mechanism", "payload", "min", "median", "p90", "spread",
              "vs threads comm", "trips"]
    rows, noisy = [], 0
    for payload_name, samples in results.items():
        base = statistics.median(samples["threads     concmagic comm"])
        for name in jobs:
            values = samples[name]
            med = statistics.median(values)
            sp = spread(values)
            noisy += sp > NOISY_SPREAD
            rows.append([name, payload_name, fmt_time(min(values)), fmt_time(med),
                         fmt_time(percentile(values, 0.9)), f"{sp:.0%}",
                         f"{med / base:.1f}x", str(len(values))])
    _util.print_table(header, rows)
    if noisy:
        print(f"\n! {noisy} of {len(rows)} rows have a spread (std dev / mean) over "
              f"{NOISY_SPREAD:.0%}: a few round trips took far longer than the rest (a "
              "woken thread waiting out another's hold on the GIL, the scheduler of a "
              "shared machine). The median and p90 are robust to them; the min is the "
              "mechanism's own cost. Rerun on a quiet machine before quoting a mean.")


def _label(name):
    """ "threads     concmagic comm" -> "threads: concmagic comm" """
    model, mechanism = name.split(None, 1)
    return f"{model}: {mechanism}"


def rows_of(settings, results, jobs):
    """The tables as rows (see benchmarks/_results.py): one table per payload."""
    rows = [_results.text(
        f"Ping-pong between worker 0 and worker 1: round-trip time (send + reply) per "
        f"message pair, timed in worker 0, so the figures are the messages alone, not the "
        f"run's start. Each concmagic row sits beside the bare standard-library mechanism "
        f"of its model (2 queue.SimpleQueue, a multiprocessing.Pipe, 2 asyncio.Queue). "
        f"{settings.batches} batch(es) per variant, alternating, after one warm-up batch; "
        f"the first trips of each batch are warm-up too. Ratios are to concmagic's "
        f"threads comm, same payload. The extra columns: p90 and spread (std dev / mean) "
        f"of the round trips.")]
    noisy = 0
    for payload_name, samples in results.items():
        table = f"Round trip, payload {payload_name}"
        for name in jobs:
            values = samples[name]
            sp = spread(values)
            noisy += sp > NOISY_SPREAD
            row = {"table": table, "tool": _label(name), "min": min(values),
                   "median": statistics.median(values),
                   "extra": {"p90": percentile(values, 0.9), "spread": f"{sp:.0%}",
                             "trips": str(len(values))}}
            if name == "threads     concmagic comm":
                row["reference"] = True
            rows.append(row)
    def ratio(payload_name):
        samples = results[payload_name]
        return (statistics.median(samples["processes   concmagic comm"])
                / statistics.median(samples["threads     concmagic comm"]))
    first, last = settings.payloads[0], settings.payloads[-1]
    rows.append(_results.text(
        f"Between processes, a round trip costs {ratio(first):.1f}x what it costs between "
        f"threads with a payload of {first}"
        + (f", and {ratio(last):.0f}x with {last}" if last != first else "")
        + ": each way it is pickled, written, read and unpickled, where threads hand the "
          "object over."))
    if noisy:
        rows.append(_results.text(
            f"{noisy} rows have a spread (std dev / mean) over {NOISY_SPREAD:.0%}: a few "
            f"round trips took far longer than the rest (a woken thread waiting out "
            f"another's hold on the GIL, the scheduler of a shared machine). The median "
            f"and p90 are robust to them; the min is the mechanism's own cost."))
    return rows


def run(quick=False, tiny=False):
    """Every comm table as rows (see benchmarks/_results.py)."""
    settings = Settings(quick, tiny)
    results, jobs = measure_all(settings)
    return rows_of(settings, results, jobs)


def measure_all(settings):
    """``(results, jobs)``: every variant measured, the pools closed after."""
    raw_processes = RawProcesses()
    try:
        jobs = variants(raw_processes)
        return measure(settings, jobs), jobs
    finally:
        raw_processes.close()
        concmagic.shutdown()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="few round trips, two payloads (a smoke test, not a measurement)")
    parser.add_argument("--tiny", action="store_true",
                        help="fewer still, one payload (the smoke test's pass)")
    args = parser.parse_args(argv)
    settings = Settings(args.quick, args.tiny)
    started = time.perf_counter()
    print(f"concmagic comm benchmark{' (--quick: not a measurement)' if args.quick else ''}")
    print(f"concmagic {concmagic.__version__}")
    for line in _util.machine_lines(REPO):
        print(line)
    print(f"Ping-pong between worker 0 and worker 1: round-trip time (send + reply) per "
          f"message pair, timed in worker 0. {settings.batches} batches per variant, "
          f"alternating, after one warm-up batch; the first trips of each batch are warm-up.")
    print(f"Differences under {_util.NOISE:.0%} are noise. 'vs threads comm' is the ratio of "
          f"medians to concmagic's threads comm, same payload.\n")
    results, jobs = measure_all(settings)
    report(settings, results, jobs)
    print()
    def ratio(payload_name):
        samples = results[payload_name]
        return (statistics.median(samples["processes   concmagic comm"])
                / statistics.median(samples["threads     concmagic comm"]))

    first, last = settings.payloads[0], settings.payloads[-1]
    print(f"Between processes, a round trip costs {ratio(first):.1f}x what it costs between "
          f"threads with a payload of {first}"
          + (f", and {ratio(last):.0f}x with {last}" if last != first else "")
          + ": each way it is pickled, written, read and unpickled, where threads hand the "
            "object over.")
    load = _util.load_average()
    print(f"Took {time.perf_counter() - started:.1f} s; load average at the end: "
          f"{'n/a' if load is None else f'{load:.2f}'}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
