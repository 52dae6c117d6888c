"""Writes the teaching notebooks in this folder from the cells below.

    python notebooks/build.py            (re)write notebooks/NN-*.ipynb
    python notebooks/build.py --check    exit 1 if a notebook differs from its source here

The notebooks are generated, not edited by hand, so that a change to one is a
readable diff of this file, and so that what is committed carries no outputs
(no stale numbers from someone else's machine, no megabytes of PNG). Run them
with `make notebooks` (scripts/run_notebooks.py): outputs and an HTML copy of
each land in notebooks/_build/, which git ignores.

Cells that a test reads (tests/test_notebooks.py) have a stable ``id``; a
cell that shows an error on purpose carries the ``raises-exception`` tag,
which nbclient honours by carrying on.
"""
import sys
import textwrap
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

# The kernel the notebooks ask for: any Python 3 with concmagic installed.
# scripts/run_notebooks.py runs them on the interpreter that runs it.
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def md(text):
    return ("markdown", textwrap.dedent(text).strip(), None, ())


def code(text, id=None, tags=()):
    return ("code", textwrap.dedent(text).strip(), id, tuple(tags))


# ===========================================================================
# 01: the GIL in one cell
# ===========================================================================
NB01 = [
    md("""
    # 01 · The GIL in one cell

    CPython runs Python bytecode in one thread at a time: a thread must hold the
    *global interpreter lock* (GIL) to run it. This notebook makes that visible.
    The same pure-Python loop runs in 1, 2 and 4 threads, then in processes, and
    concmagic measures what each worker really did.

    You will see that threads do not make pure-Python computing faster, that
    their timelines take turns, and that processes do use every core.
    """),
    code("""
    %load_ext concmagic
    %concmagic
    """),
    md("""
    ## The work

    A loop that only computes: every step is Python bytecode, nothing waits.
    `TOTAL` is the whole job. In each cell below, every worker does its share,
    `TOTAL // n_workers` steps, so if the workers really ran side by side, the
    wall time would fall as workers are added.
    """),
    code("""
    def busy(steps):
        \"\"\"Sum of squares, the slow way: one bytecode loop per step.\"\"\"
        total = 0
        for i in range(steps):
            total += i * i
        return total

    TOTAL = 4_000_000
    %time busy(TOTAL)
    """),
    md("""
    ## One, two, four threads

    A `%%threads -n N` cell runs in N threads of this kernel. Inside it,
    `worker_id` (0 to N-1) and `n_workers` are given. The report lists each
    worker's start, end and CPU time, and draws its timeline: one lane per
    worker, dark where it had a full core, white where it waited; beneath, the
    strip of how busy the GIL was.
    """),
    code("""
    %%threads -n 1 -o one
    busy(TOTAL // n_workers)
    """, id="threads-1"),
    code("""
    %%threads -n 2 -o two
    busy(TOTAL // n_workers)
    """, id="threads-2"),
    code("""
    %%threads -n 4 -o four
    busy(TOTAL // n_workers)
    """, id="threads-4"),
    md("""
    The wall time did not fall. *CPU parallelism* (all workers' CPU time divided
    by the wall time) stayed near 1.0x: at any moment one thread ran and the
    others waited for the GIL. In the timelines, each lane is pale: a thread got
    a share of one core, never a core of its own. The GIL strip is full: it was
    busy the whole time (even with one thread, which holds it while it runs
    Python; what matters is that no other thread could run meanwhile).

    ## The same in processes

    `%%processes` runs the cell in worker processes. Each has its own
    interpreter, so its own GIL. The first such cell also starts the processes:
    look at the *start* column, and at how late the lanes begin.
    """),
    code("""
    %%processes -n 4
    busy(TOTAL // n_workers)
    """, id="processes-4-cold"),
    md("""
    Later cells reuse the processes, already started. Run it again:
    """),
    code("""
    %%processes -n 4 -o procs
    busy(TOTAL // n_workers)
    """, id="processes-4"),
    code("""
    for report in (one, two, four, procs):
        print(f"{report.model:9} x{report.n_workers}: wall {report.wall:.2f} s, "
              f"CPU parallelism {report.cpu_parallelism:.2f}x")
    """, id="summary"),
    md("""
    The processes ran on every core, so the wall time fell, but only as far as
    the cores allow: on a 2-core machine, 4 workers are no faster than 2.
    Starting processes and sending them the cell has a price of its own
    (notebook 03 is about it).

    ## One verdict

    `%%compare` runs the cell serially, in threads and in processes, one after
    another, and says in plain words what the numbers show. Its verdict comes
    from stated thresholds (see `concmagic.comparison`), never from a guess.
    """),
    code("""
    %%compare -n 2
    busy(TOTAL // n_workers)
    """, id="compare-python"),
    md("""
    ## Taking turns: the switch interval

    How long is a turn? A thread that wants the GIL waits
    `sys.getswitchinterval()` seconds, then asks the holder to let go:
    """),
    code("""
    import sys
    sys.getswitchinterval()
    """, id="switchinterval"),
    md("""
    5 ms turns are too fine to see in a half-second timeline. Make them 50 ms,
    and the turns show as stripes: while one lane is dark, the other is white.
    """),
    code("""
    sys.setswitchinterval(0.05)
    """),
    code("""
    %%threads -n 2
    busy(TOTAL // n_workers)
    """, id="threads-long-turns"),
    code("""
    sys.setswitchinterval(0.005)   # back to the default
    """),
    md("""
    ## What you saw

    - Pure Python in threads: adding threads did not cut the wall time; CPU
      parallelism stayed near 1x and the GIL was busy about 90% of the time.
      The threads took turns, as the timelines show.
    - The same work in processes ran on every core (up to the number of cores),
      because each process has its own GIL; the first run also paid for
      starting them.
    - `sys.getswitchinterval()` sets how long each turn lasts, not whether
      there are turns.

    Next: threads *do* win when the work waits (02), and compiled code can let
    go of the GIL (04).
    """),
]


# ===========================================================================
# 02: threads for waiting
# ===========================================================================
NB02 = [
    md("""
    # 02 · Threads for waiting

    Notebook 01 showed threads gaining nothing on pure-Python computing. They
    are, though, the simple and right tool for *waiting*: a thread that sleeps,
    or waits for a socket or a disk, releases the GIL, so the other threads run
    meanwhile. This notebook waits on a sleep and on a small web server it starts
    itself, then shows the third way to wait: `asyncio`.
    """),
    code("""
    %load_ext concmagic
    import time
    """),
    md("""
    ## Waiting: a sleep

    Each worker sleeps 0.2 s. Serially, 4 workers take 0.8 s.
    """),
    code("""
    %%compare -n 4
    time.sleep(0.2)
    """, id="compare-sleep"),
    md("""
    Threads waited side by side: 4 sleeps in the time of one. The GIL was free
    nearly all the time, because sleeping releases it. `%gilcheck` measures
    that directly (notebook 05 is about reading it):
    """),
    code("""
    %gilcheck time.sleep(0.01)
    """, id="gilcheck-sleep"),
    md("""
    ## Waiting: a web server

    A small HTTP server, started in this notebook and reachable only from this
    machine (`127.0.0.1`). Each request takes 100 ms, as a slow server would.
    It runs in a thread of its own, in the background.
    """),
    code("""
    import http.client
    import http.server
    import threading

    class SlowHandler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            time.sleep(0.1)                          # the server "thinks" for 100 ms
            body = b"hello " * 1000
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):                # keep the notebook quiet
            pass

    class Server(http.server.ThreadingHTTPServer):
        # Connections not yet accepted that the OS will queue. The default, 5,
        # is too few for 8 clients at once: the rest would retry a second later.
        request_queue_size = 64

    server = Server(("127.0.0.1", 0), SlowHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    PORT = server.server_address[1]

    def fetch(path="/"):
        \"\"\"GET one page from the server; returns its size in bytes.\"\"\"
        connection = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
        try:
            connection.request("GET", path)
            return len(connection.getresponse().read())
        finally:
            connection.close()

    %time fetch()
    """, id="server"),
    md("""
    Eight workers, one request each: serially 0.8 s; in threads, about the time
    of one request.
    """),
    code("""
    %%compare -n 8 --models serial,threads
    fetch()
    """, id="compare-http"),
    md("""
    ## Why threads win here, and when they do not

    While a thread waits for the server's answer, it holds no GIL, so the other
    threads send their requests meanwhile. That only works if the waiting code
    *releases* the GIL. Python's own I/O does; a badly written C extension may
    not. `concmagic.kernels.io_wait` imitates both: `path="nogil"` waits like
    well-behaved I/O, `path="gil"` waits holding the GIL.
    """),
    code("""
    from concmagic import kernels
    """),
    code("""
    %%compare -n 4 --models serial,threads
    kernels.io_wait(0.1, path="nogil")
    """, id="compare-io-nogil"),
    code("""
    %%compare -n 4 --models serial,threads
    kernels.io_wait(0.1, path="gil")
    """, id="compare-io-gil"),
    md("""
    Same waiting, no gain: while one thread waited holding the GIL, every other
    thread waited for it.

    ## The third way: asyncio

    `asyncio` waits without threads: one thread runs an event loop, and each
    task hands control back to it at every `await`. `%%asyncio -n 8` runs the
    cell as 8 tasks on one loop, so `await` is allowed in it. Here each task
    speaks HTTP to the same server through asyncio's own sockets.
    """),
    code("""
    import asyncio
    """),
    code("""
    %%asyncio -n 8
    reader, writer = await asyncio.open_connection("127.0.0.1", PORT)
    writer.write(b"GET / HTTP/1.0\\r\\nHost: 127.0.0.1\\r\\n\\r\\n")
    await writer.drain()
    reply = await reader.read()          # HTTP/1.0: the server closes when done
    writer.close()
    await writer.wait_closed()
    len(reply)
    """, id="asyncio-http"),
    md("""
    Eight requests in about the time of one, all in this one process (the
    `pid` column) and on one thread: the waits overlapped at each `await`. The catch: a task that calls
    something blocking, without `await`, stops the whole loop. Try
    `time.sleep(0.1)` in place of `await asyncio.sleep(0.1)` below and watch
    the wall time grow eightfold.
    """),
    code("""
    %%asyncio -n 8
    await asyncio.sleep(0.1)
    worker_id
    """, id="asyncio-sleep"),
    md("""
    ## The four models side by side

    `%%compare` takes asyncio too. A cell that `await`s runs as a coroutine
    everywhere: serial, threads and processes give each worker an event loop
    of its own, asyncio puts all the workers on its one loop.
    """),
    code("""
    %%compare -n 4 --models serial,threads,processes,asyncio
    await asyncio.sleep(0.2)
    """, id="compare-four-await"),
    md("""
    The same wait written as a blocking `time.sleep`: threads and processes
    still overlap it, asyncio cannot, and the verdict says why.
    """),
    code("""
    %%compare -n 4 --models serial,threads,processes,asyncio
    time.sleep(0.2)
    """, id="compare-four-blocking"),
    md("""
    ## What you saw

    - Waiting releases the GIL, so threads wait side by side: 8 requests took
      about as long as one.
    - Processes gain on waiting too, but each costs a process start and copies
      (notebook 03); threads or asyncio are the cheaper way to wait.
    - Code that waits *holding* the GIL (`io_wait(path="gil")`) stops every
      thread; `%gilcheck` tells you which kind you have.
    - `asyncio` overlaps the waits on one thread, at each `await`; a blocking
      call in a task holds the loop, and the tasks then wait one after another.
    """),
    code("""
    server.shutdown()   # stop the web server
    """),
]


# ===========================================================================
# 03: processes and their price
# ===========================================================================
NB03 = [
    md("""
    # 03 · Processes and their price

    Processes sidestep the GIL: each has its own interpreter. The price is
    paid in time: starting the processes, and shipping the cell and the data it
    uses to them (pickled, through a pipe), and the results back. This notebook
    measures that price, finds where processes start to pay off, and shows what
    cannot be shipped at all.
    """),
    code("""
    %load_ext concmagic
    import numpy as np
    import concmagic
    """),
    md("""
    ## Starting: a cold pool and a warm one

    The first `%%processes` cell starts the worker processes; later cells reuse
    them (`%concmagic` lists them). Look at the *start* column: when each worker
    began running the cell.
    """),
    code("""
    %%processes -n 2 -o cold
    worker_id
    """, id="cold"),
    code("""
    %%processes -n 2 -o warm
    worker_id
    """, id="warm"),
    code("""
    print(f"cold pool: {cold.wall * 1e3:7.1f} ms")
    print(f"warm pool: {warm.wall * 1e3:7.1f} ms")
    """, id="cold-warm"),
    md("""
    ## Tiny cells: start-up wins

    A warm pool still costs about a millisecond to hand out a cell and collect
    its results. Work much smaller than that cannot gain.
    """),
    code("""
    %%compare -n 2
    sum(range(1000))
    """, id="compare-tiny"),
    md("""
    ## Where processes start to pay

    The same loop at growing sizes, serial against processes (`concmagic.compare`
    is `%%compare` without the notebook).
    """),
    code("""
    def work(worker_id, n_workers, steps=0):
        return sum(i * i for i in range(steps))

    print("steps per worker   serial   processes   speedup")
    for steps in (1_000, 10_000, 100_000, 1_000_000):
        job = lambda worker_id, n_workers, steps=steps: work(worker_id, n_workers, steps)
        c = concmagic.compare(job, n=2, models=("serial", "processes"))
        print(f"{steps:>16,}  {c.reports['serial'].wall * 1e3:6.1f} ms"
              f"  {c.reports['processes'].wall * 1e3:7.1f} ms  {c.speedup('processes'):7.2f}x")
    """, id="break-even"),
    md("""
    Below a few milliseconds of work per worker, processes lose; above it, they
    approach the number of cores.

    ## Shipping data

    A `%%processes` cell is pickled (with `cloudpickle`) together with the
    notebook variables it uses, and sent to every worker, every time it runs.
    Threads share this process's memory and copy nothing.

    First, the workers import NumPy: a one-time cost of its own (about 0.1 s),
    which would otherwise hide in the numbers below.
    """),
    code("""
    %%processes -n 2 -q
    import numpy
    numpy.__version__
    """),
    code("""
    import cloudpickle

    small = np.ones(1_000)
    big = np.ones(10_000_000)          # 80 MB
    for name in ("small", "big"):
        print(f"{name:5}: {len(cloudpickle.dumps(globals()[name])):>11,} bytes pickled")
    """),
    code("""
    %%processes -n 2 -o ship_small
    small.sum()
    """),
    code("""
    %%processes -n 2 -o ship_big
    big.sum()
    """),
    code("""
    %%threads -n 2 -o share_big
    big.sum()
    """),
    code("""
    for label, report in (("processes, small", ship_small), ("processes, big", ship_big),
                          ("threads, big", share_big)):
        print(f"{label:17} wall {report.wall * 1e3:6.1f} ms, last worker started at "
              f"{max(w.start for w in report.workers) * 1e3:6.1f} ms")
    """, id="shipping"),
    md("""
    The big array made every worker process start late: it was pickled, pushed
    through a pipe and unpickled once per worker. The threads read it where it
    lies. The processes report says so in its `shipped` line.

    ## The way around it: shared memory

    `--share big` puts the array in shared memory once; each worker maps the
    same memory under the same name, with no copy. It is real shared memory:
    what the workers write is in the notebook's `big` afterwards (here each
    worker fills its own half).
    """),
    code("""
    %%processes -n 2 -o shared_first --share big
    half = len(big) // n_workers
    big[worker_id * half:(worker_id + 1) * half] = worker_id + 1
    big.sum()
    """, id="share-first"),
    code("""
    %%processes -n 2 -o shared_again --share big
    big.sum()
    """, id="share-again"),
    code("""
    print(f"first run {shared_first.wall * 1e3:.1f} ms, again {shared_again.wall * 1e3:.1f} ms; "
          f"big now holds {sorted(set(big[[0, -1]].tolist()))}")
    """, id="share-summary"),
    md("""
    The first run copied `big` into shared memory; the second found it already
    there (the report says `reused, no copy`), so it cost no more than a small
    cell.

    ## What cannot be shipped

    Some objects belong to this process and mean nothing elsewhere: a lock, an
    open file, a socket, a generator half-way through. A cell that uses one is
    stopped before any worker starts, with an error that names it. (This cell
    is tagged `raises-exception`, so the notebook carries on past the error.)
    """),
    code("""
    import threading
    lock = threading.Lock()
    """),
    code("""
    %%processes -n 2
    with lock:
        result = worker_id * 2
    result
    """, id="ship-error", tags=["raises-exception"]),
    md("""
    The fix: create such things inside the cell, so each worker has its own
    (a lock made in a worker guards only that worker's threads), or use
    `%%threads`, where everything is shared.

    Memory is not shared either. `global` in a `%%processes` cell changes the
    worker's copy of a variable, never the notebook's, and the report says so:
    """),
    code("""
    visits = 0
    """),
    code("""
    %%processes -n 2
    global visits
    visits += 1
    visits
    """, id="global-note"),
    code("""
    visits      # still 0 here: each worker changed its own copy
    """, id="visits"),
    md("""
    ## What you saw

    - Starting worker processes takes a noticeable fraction of a second; a warm
      pool hands out a cell in about a millisecond.
    - Work of a few milliseconds per worker or less is faster serially; bigger
      work approaches the number of cores.
    - Data a cell uses is pickled and copied to every worker on every run; big
      arrays make workers start late. Threads copy nothing.
    - Locks, open files and the like cannot be shipped; the error names them
      before anything runs. Each process has its own memory, so `global` stays
      in the worker.
    """),
]


# ===========================================================================
# 04: releasing the GIL in Cython
# ===========================================================================
NB04 = [
    md("""
    # 04 · Releasing the GIL in Cython

    Compiled code can do what Python bytecode cannot: let go of the GIL while
    it computes, so that threads run on every core. `concmagic.kernels` holds
    each kernel in three paths: pure Python, Cython *holding* the GIL, and the
    same Cython with its hot loop inside `with nogil:`. This notebook compares
    the three, then has you write and check your own with `%%cython`.
    """),
    code("""
    %load_ext concmagic
    from concmagic import kernels
    import concmagic
    kernels.PATHS
    """),
    md("""
    ## One kernel, three paths

    `monte_carlo_pi(n, seed, path)` estimates π from `n` random points. All
    three paths use the same random numbers, so they give the same answer:
    """),
    code("""
    [kernels.monte_carlo_pi(10_000, seed=1, path=path) for path in kernels.PATHS]
    """),
    md("""
    ... but they differ in what they do to the GIL. `concmagic.gilcheck` (the
    `%gilcheck` magic without the notebook) calls each in a thread while a probe
    asks for the GIL:
    """),
    code("""
    for path, n in (("python", 50_000), ("gil", 5_000_000), ("nogil", 5_000_000)):
        check = concmagic.gilcheck(kernels.monte_carlo_pi, n, path=path)
        print(f"{path:6} {check.verdict}")
    """, id="three-gilchecks"),
    md("""
    Now two threads each estimate π with their own seed. Pure Python first
    (it is hundreds of times slower, so it gets fewer points):
    """),
    code("""
    %%compare -n 2 --models serial,threads
    kernels.monte_carlo_pi(100_000, seed=worker_id, path="python")
    """, id="compare-python"),
    md("""
    Compiled, but holding the GIL: much faster, yet the threads still take turns.
    """),
    code("""
    %%compare -n 2 --models serial,threads
    kernels.monte_carlo_pi(20_000_000, seed=worker_id, path="gil")
    """, id="compare-gil"),
    md("""
    The same machine code with the GIL released around the loop: the threads
    run side by side.
    """),
    code("""
    %%compare -n 2 --models serial,threads
    kernels.monte_carlo_pi(20_000_000, seed=worker_id, path="nogil")
    """, id="compare-nogil"),
    md("""
    ## Your own: `%%cython`

    Cython's own magic compiles a cell into an extension module and puts its
    functions in the notebook. (It needs a C compiler and Python's headers;
    the first compile takes a few seconds.)

    Below, one loop twice: the sum 1 + 1/2 + 1/3 + ... + 1/n. The second
    function wraps the loop in `with nogil:`. Inside such a block only C may be
    touched: typed variables, no Python objects. Cython refuses to compile
    anything else there, which is what makes releasing the GIL safe.
    """),
    code("""
    %load_ext Cython
    """),
    code("""
    %%cython
    # cython: language_level=3, cdivision=True
    # cdivision: plain C division, no ZeroDivisionError check (k is never 0),
    # so the loop can never need to raise a Python exception.

    def harmonic_gil(long n):
        \"\"\"1 + 1/2 + ... + 1/n, holding the GIL throughout.\"\"\"
        cdef double total = 0
        cdef long k
        for k in range(1, n + 1):
            total += 1.0 / k
        return total

    def harmonic_nogil(long n):
        \"\"\"The same loop, with the GIL released around it.\"\"\"
        cdef double total = 0
        cdef long k
        # The GIL may go: the loop touches only C numbers, no Python objects.
        with nogil:
            for k in range(1, n + 1):
                total += 1.0 / k
        return total
    """, id="cython-compile"),
    code("""
    harmonic_gil(1_000_000) == harmonic_nogil(1_000_000)
    """, id="cython-same"),
    md("""
    Now check them. A function compiled by Cython is as fast either way; only
    the second lets other threads run meanwhile.
    """),
    code("""
    %gilcheck harmonic_gil(10_000_000)
    """, id="gilcheck-gil"),
    code("""
    %gilcheck harmonic_nogil(10_000_000)
    """, id="gilcheck-nogil"),
    code("""
    %%compare -n 2 --models serial,threads
    harmonic_nogil(50_000_000)
    """, id="compare-own"),
    md("""
    ## When the `nogil` block touches Python

    Forget one type, `long` on the argument, and `n` is a Python object: a
    `nogil` block cannot touch it, not even to compute `n + 1`. Cython refuses
    to compile and says where. (The magic prints the errors and carries on.)
    """),
    code("""
    %%cython
    # cython: language_level=3, cdivision=True
    def harmonic_broken(n):               # n has no type: a Python object
        cdef double total = 0
        cdef long k
        with nogil:
            for k in range(1, n + 1):
                total += 1.0 / k
        return total
    """, id="cython-refuses"),
    md("""
    ## Where Python is touched: `%%cython -a`

    `-a` shows the annotated source: each line shaded yellow by how much it
    calls into Python's C API (click a line's `+` to see the C it became).
    White lines are plain C. The untyped version is yellow throughout; the
    typed loop is white, and only the lines that take the argument and return
    the result touch Python.
    """),
    code("""
    %%cython -a
    # cython: language_level=3, cdivision=True

    def harmonic_untyped(n):
        total = 0
        for k in range(1, n + 1):
            total += 1.0 / k
        return total

    def harmonic_typed(long n):
        cdef double total = 0
        cdef long k
        with nogil:
            for k in range(1, n + 1):
                total += 1.0 / k
        return total
    """, id="cython-annotate"),
    md("""
    ## What you saw

    - One kernel in three paths: pure Python and compiled-with-the-GIL both
      make threads take turns; only the `nogil` path runs threads side by side.
    - Compiling alone does not release the GIL: `harmonic_gil` is compiled and
      still holds it. `with nogil:` around typed C code releases it.
    - Cython checks the `nogil` block: touching a Python object there is a
      compile error, not a crash.
    - `%%cython -a` shows which lines touch Python: keep the hot loop white.

    `src/concmagic/_core.pyx` is written to be read: the kernels used here,
    with a comment above each `with nogil:` saying why the GIL may go.
    """),
]


# ===========================================================================
# 05: does my function release the GIL?
# ===========================================================================
NB05 = [
    md("""
    # 05 · Does my function release the GIL?

    Threads speed up a call only if it releases the GIL while it works. The
    documentation rarely says. `%gilcheck f(x)` measures it: it calls the
    expression over and over in a thread for about 0.2 s while a native probe
    asks for the GIL every half millisecond and notes how long it had to wait.
    This notebook checks some standard-library and NumPy calls and shows how
    to read the verdict.
    """),
    code("""
    %load_ext concmagic
    import hashlib, json, time, zlib
    import numpy as np
    """),
    md("""
    ## Reading the verdict

    The *GIL wait* is the share of the probe's time spent waiting for the GIL.

    | verdict | GIL wait | what it means |
    |---|---|---|
    | **releases the GIL** | 20% or less (typically under 3%) | other threads run Python meanwhile: threads can help |
    | **holds the GIL** | 50% or more | Python bytecode (about 90%: the probe gets in every switch interval) or C code that keeps the lock (about 100%) |
    | **partly** | in between | the call holds the GIL for part of its time |
    | **inconclusive** | | the call was too short (under 10 µs) or the probe could not watch; give it a bigger input |

    ## The standard library
    """),
    code("""
    data = bytes(range(256)) * 16_000          # 4 MB
    records = [{"id": i, "name": str(i)} for i in range(20_000)]
    """),
    code("""
    %gilcheck time.sleep(0.005)
    """, id="sleep"),
    code("""
    %gilcheck hashlib.sha256(data).digest()
    """, id="sha256"),
    code("""
    %gilcheck zlib.compress(data)
    """, id="zlib"),
    code("""
    %gilcheck json.dumps(records)
    """, id="json"),
    code("""
    %gilcheck sum(i * i for i in range(100_000))
    """, id="python"),
    md("""
    Sleeping, hashing and compressing release the GIL: their C code works on
    plain bytes and lets go of the lock around the work. `json.dumps` walks
    Python objects, and a generator expression is Python bytecode: both hold
    it. Size matters too: `hashlib` releases the GIL only for inputs over 2 KiB,
    and a call this short cannot be judged at all:
    """),
    code("""
    %gilcheck hashlib.sha256(data[:1000]).digest()
    """, id="too-short"),
    md("""
    ## NumPy

    NumPy releases the GIL inside its loops over numbers. Over Python objects
    (`dtype=object`), every element is a Python object and the GIL stays held.
    """),
    code("""
    rng = np.random.default_rng(0)
    v = rng.random(2_000_000)
    m = rng.random((400, 400))
    objects = v[:200_000].astype(object)    # the same numbers, as Python floats
    numbers = v[:200_000].tolist()           # ... and as a Python list
    """),
    code("""
    %gilcheck v * 2.0 + 1.0
    """, id="ufunc"),
    code("""
    %gilcheck np.sort(v)
    """, id="sort"),
    code("""
    %gilcheck m @ m
    """, id="matmul"),
    code("""
    %gilcheck objects * 2.0
    """, id="objects"),
    code("""
    %gilcheck np.array(numbers)
    """, id="from-list"),
    md("""
    ## The result as an object

    `-o NAME` stores the check; `concmagic.gilcheck(f, *args)` does the same
    without the magic.
    """),
    code("""
    %gilcheck -q -o check np.sort(v)
    check.releases, f"{check.wait_fraction:.1%}", check.calls
    """, id="object"),
    md("""
    ## What you saw

    - A call that releases the GIL lets the probe in at once: GIL wait near 0%.
      Python bytecode and C code that keeps the lock make it wait: 90-100%.
    - Sleeping, hashing and compressing large buffers, and NumPy on numbers,
      release the GIL: threads running them can overlap.
    - Anything that walks Python objects holds it: `json`, generator
      expressions, NumPy on `dtype=object`, building arrays from lists.
    - A call under 10 µs is too short to judge; give it a bigger input.
    - *Releases the GIL* means threads can overlap the call, not that the call
      itself is faster.
    """),
]


# ===========================================================================
# 06: shared memory and races
# ===========================================================================
NB06 = [
    md("""
    # 06 · Shared memory and races

    Threads share the memory of their process. That is their strength: many
    threads can fill one array with nothing copied. It is also their danger:
    two threads that update the same variable can undo each other's work. This
    notebook shows both, and the fix for the second.
    """),
    code("""
    %load_ext concmagic
    import threading, time
    import numpy as np
    import matplotlib.pyplot as plt
    from concmagic import kernels
    """),
    md("""
    ## One array, many writers

    `kernels.mandelbrot(out, row_start, row_stop)` fills rows `row_start` to
    `row_stop` of *your* array with escape-time counts. Each thread takes its
    own band of rows. No two threads write the same element, so they need no
    lock; and the kernel releases the GIL, so they run side by side.
    """),
    code("""
    image = np.zeros((600, 900), dtype=np.int32)
    """),
    code("""
    %%threads -n 2
    rows = image.shape[0]
    start = worker_id * rows // n_workers
    stop = (worker_id + 1) * rows // n_workers
    kernels.mandelbrot(image, start, stop, max_iter=200, path="nogil")
    (start, stop)
    """, id="bands"),
    code("""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.imshow(image, cmap="magma")
    ax.axhline(image.shape[0] // 2 - 0.5, color="white", lw=0.8, ls="--")
    ax.set_title("one array, filled by 2 threads: one band each")
    ax.set_axis_off()
    """, id="picture"),
    md("""
    Processes cannot do this: each has its own memory, so each fills its own
    copy of the array and the notebook's stays empty.
    """),
    code("""
    other = np.zeros((600, 900), dtype=np.int32)
    """),
    code("""
    %%processes -n 2 -q
    rows = other.shape[0]
    kernels.mandelbrot(other, worker_id * rows // n_workers,
                       (worker_id + 1) * rows // n_workers, max_iter=200)
    int(other.max())                     # filled, in the worker's copy
    """, id="processes-copy"),
    code("""
    int(other.max())                     # ... but not here
    """, id="processes-empty"),
    md("""
    ## A race

    `counter = counter + 1` is three steps: read the value, add one, write it
    back. If another thread writes between our read and our write, our write
    overwrites theirs: an update is lost. That can happen whenever a thread
    loses the GIL between the two steps, which is rare, and a rare bug is the
    worst kind. Here `time.sleep(0)` hands the GIL over between read and write
    on purpose, so the race happens every time.
    """),
    code("""
    ROUNDS = 1000
    counter = 0
    """),
    code("""
    %%threads -n 4
    global counter                       # the notebook's counter, shared by all threads
    for _ in range(ROUNDS):
        value = counter                  # read
        time.sleep(0)                    # let another thread run here
        counter = value + 1              # write: overwrites what others wrote meanwhile
    ROUNDS                               # the increments this worker made
    """, id="race"),
    code("""
    expected = 4 * ROUNDS
    print(f"counter = {counter}, expected {expected}: {expected - counter} updates lost")
    """, id="race-count"),
    md("""
    ## The fix: a lock

    A `threading.Lock` lets one thread at a time through the read-modify-write.
    The threads still hand the GIL to each other at `sleep(0)`, but a thread
    that wants the lock now waits until the holder has written.
    """),
    code("""
    counter = 0
    lock = threading.Lock()
    """),
    code("""
    %%threads -n 4
    global counter
    for _ in range(ROUNDS):
        with lock:                       # one thread at a time from read to write
            value = counter
            time.sleep(0)
            counter = value + 1
    ROUNDS
    """, id="locked"),
    code("""
    print(f"counter = {counter}, expected {expected}: {expected - counter} updates lost")
    """, id="locked-count"),
    md("""
    ## What you saw

    - Threads filled disjoint bands of one NumPy array in place: shared memory,
      no copies, no lock needed, because no element had two writers.
    - Processes filled their own copies; the notebook's array stayed empty.
    - A read-modify-write of one shared variable lost updates as soon as the
      threads switched between the read and the write.
    - A lock around the read-modify-write made the count exact. The GIL is no
      such lock: it protects the interpreter, not your variables.
    """),
]


NOTEBOOKS = {
    "01-the-gil-in-one-cell": NB01,
    "02-threads-for-waiting": NB02,
    "03-processes-and-their-price": NB03,
    "04-releasing-the-gil-in-cython": NB04,
    "05-does-my-function-release-the-gil": NB05,
    "06-shared-memory-and-races": NB06,
}


def build(cells):
    """The notebook (an nbformat node) for a list of md()/code() cells."""
    nb = new_notebook(metadata={
        "kernelspec": dict(KERNELSPEC),
        "language_info": {"name": "python"},
    })
    for i, (kind, source, cell_id, tags) in enumerate(cells):
        metadata = {"tags": list(tags)} if tags else {}
        make = new_markdown_cell if kind == "markdown" else new_code_cell
        cell = make(source=source, metadata=metadata)
        # Ids that stay put from build to build (nbformat would draw random
        # ones): a cell a test reads is found by its id.
        cell["id"] = cell_id or f"cell-{i:02d}"
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def render(cells):
    return nbformat.writes(build(cells)) + "\n"


def main(argv):
    check = "--check" in argv
    stale = []
    for name, cells in NOTEBOOKS.items():
        path = HERE / f"{name}.ipynb"
        text = render(cells)
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(HERE.parent)}")
    if stale:
        print(f"out of date with notebooks/build.py: {', '.join(stale)}; "
              f"run `python notebooks/build.py`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
