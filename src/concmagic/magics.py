"""The IPython magics: parse options, call the engine, display. Nothing else.

    %%threads -n 4        the cell in 4 threads (shared memory, one GIL)
    %%processes -n 4      the cell in 4 worker processes (isolated memory)
    %%asyncio -n 4        the cell as 4 tasks on one event loop (await allowed)
    %threads -n 4 expr    the line forms evaluate one expression per worker
    %%compare -n 4        serial vs threads vs processes: one table, a verdict
    %gilcheck f(x)        does this call release the GIL? measured
    %concmagic            status: pools, cores, the GIL; `%concmagic shutdown`

In each, the cell is a function of ``worker_id`` (0..n-1) and ``n_workers``;
its value is the list of the workers' last-expression values. A cell that
mentions ``comm`` also gets its worker's channels to the others
(``comm.send``, ``comm.recv``, ``comm.barrier``, ``comm.bcast``; see
concmagic.comm), with ``--comm-timeout`` as the longest wait. ``--share A,B``
(%%processes, %%compare) puts NumPy arrays in shared memory for the worker
processes (concmagic.runners.shared). Options shared
by the magics are declared once (``_run_options``, ``_compare_options``) and
stacked on each. ``%%compare`` and ``%gilcheck`` display their result object
(a Comparison, a GilCheck) and return None; ``-o NAME`` stores it.
"""
import keyword
import os
import re
import sys
import types

from IPython.core import magic_arguments
from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.display import display
from traitlets import Float, Integer, Unicode

from . import engine
from .cell import CellError, make_cell_function, unpack_pulled
from .live import progress_for
from .comparison import DEFAULT_MODELS
from .errors import ShipError, WorkerError
from .comm import wants_comm
from .runners.dask import ClusterError, DaskUnavailable
from .runners.dask import require as require_dask
from .runners.processes import START_METHODS

__all__ = ["ConcMagic"]


# The options, each written once; `_run_options` and `_compare_options`
# stack them (an argument decorator may decorate several magics).
_WORKERS = magic_arguments.argument(
    "-n", "--workers", type=int, default=None, metavar="N",
    help="number of workers (default: %%config ConcMagic.workers, else the cores)")
_PULL = magic_arguments.argument(
    "--pull", metavar="A,B",
    help="bring back the workers' values of these names, as lists in worker order")
_TIMEOUT = magic_arguments.argument(
    "--timeout", type=float, default=None, metavar="SECONDS",
    help="stop the workers still running after SECONDS")
_COMM_TIMEOUT = magic_arguments.argument(
    "--comm-timeout", type=float, default=None, metavar="SECONDS",
    help="how long comm.recv, comm.barrier and comm.bcast wait before CommTimeout "
         "(default: %%config ConcMagic.comm_timeout)")
_SHARE = magic_arguments.argument(
    "--share", metavar="A,B",
    help="processes: put these NumPy arrays in shared memory instead of pickling them; the "
         "workers see them without a copy, their writes show in the notebook (real shared "
         "memory, races included), and the variables become views of that memory, reused "
         "without a copy by the next run")
_NO_MEASURE = magic_arguments.argument(
    "--no-measure", action="store_true",
    help="run without the CPU sampler and GIL probe (no GIL figure, no CPU timeline)")
_CODE = magic_arguments.argument(
    "code", nargs="*",
    help="line form only: the expression each worker evaluates")


def _stack(*options):
    def apply(func):
        for option in reversed(options):
            func = option(func)
        return func
    return apply


#: The options every running magic takes (written once, stacked on each).
_run_options = _stack(
    _WORKERS,
    magic_arguments.argument("-o", "--out", metavar="NAME",
                             help="store the whole Report in the variable NAME"),
    _PULL,
    magic_arguments.argument("-q", "--quiet", action="store_true",
                             help="show no report, only the results"),
    _TIMEOUT, _COMM_TIMEOUT, _NO_MEASURE, _CODE)

#: The options of %%compare.
_compare_options = _stack(
    _WORKERS,
    magic_arguments.argument(
        "--models", metavar="A,B", default=None,
        help=f"comma-separated models to compare, in run order (default: "
             f"{','.join(DEFAULT_MODELS)}; any of {', '.join(engine.MODELS)})"),
    magic_arguments.argument("-o", "--out", metavar="NAME",
                             help="store the Comparison in the variable NAME"),
    magic_arguments.argument("-q", "--quiet", action="store_true",
                             help="show no comparison"),
    _TIMEOUT, _NO_MEASURE, _SHARE,
    magic_arguments.argument(
        "--start-method", choices=START_METHODS, default=None,
        help="how the worker processes start (default: %%config ConcMagic.start_method)"),
    _CODE)


@magics_class
class ConcMagic(Magics):
    """Run a cell under threads or processes and measure what happened."""

    workers = Integer(0, help="Default number of workers for -n; 0 means one per core.").tag(config=True)
    start_method = Unicode(
        START_METHODS[0], help=f"How worker processes start: one of {', '.join(START_METHODS)}."
    ).tag(config=True)
    timeout = Float(0.0, help="Default --timeout in seconds; 0 means none.").tag(config=True)
    comm_timeout = Float(
        engine.DEFAULT_COMM_TIMEOUT,
        help="Default --comm-timeout in seconds (how long a comm.recv waits); 0 means no limit."
    ).tag(config=True)

    # -- the running magics --------------------------------------------------
    @magic_arguments.magic_arguments()
    @_run_options
    @line_cell_magic
    def threads(self, line, cell=None):
        """Run the cell in N threads of this process: shared memory, one GIL."""
        return self._run("threads", self.threads, line, cell)

    @magic_arguments.magic_arguments()
    @magic_arguments.argument(
        "--start-method", choices=START_METHODS, default=None,
        help="how the worker processes start (default: %%config ConcMagic.start_method)")
    @magic_arguments.argument(
        "--backend", choices=("local", "dask"), default="local",
        help="local: worker processes of this machine; dask: tasks on a Dask cluster "
             "(needs pip install 'concmagic[dask]')")
    @magic_arguments.argument(
        "--scheduler", metavar="ADDRESS", default=None,
        help="with --backend dask: the scheduler's address (tcp://host:port); "
             "default: a LocalCluster on 127.0.0.1, started once and reused")
    @_SHARE
    @_run_options
    @line_cell_magic
    def processes(self, line, cell=None):
        """Run the cell in N worker processes: isolated memory, every core.

        With --backend dask, in N tasks on N workers of a Dask cluster (the
        one at --scheduler, or concmagic's own LocalCluster): the same cell,
        results, output and errors, with each worker's host in the report.
        """
        return self._run("processes", self.processes, line, cell)

    @magic_arguments.magic_arguments()
    @_run_options
    @line_cell_magic
    def asyncio(self, line, cell=None):
        """Run the cell as N tasks on one event loop (in a thread of its own): `await` is allowed."""
        return self._run("asyncio", self.asyncio, line, cell)

    @magic_arguments.magic_arguments()
    @_compare_options
    @line_cell_magic
    def compare(self, line, cell=None):
        """Run the cell serially, in N threads and in N processes; show one
        table (wall, speedup, efficiency, CPU parallelism, GIL wait) and a
        verdict measured against stated thresholds (concmagic.compare).

        Displays the Comparison (unless -q) and returns None; -o NAME stores it.
        If a worker fails, the models after it are not run: that report is
        shown, -o stores the comparison so far, and WorkerError is raised.
        """
        from .comparison import compare_functions

        argv, code = _split_line(self.compare.parser, line)
        args = self.compare.parser.parse_args(argv)
        n = self._workers(args.workers)
        timeout = self._seconds(args.timeout, self.timeout, "--timeout")
        models = _parse_models(args.models)
        share = _parse_pull(args.share, "--share")
        if share and "processes" not in models:
            raise UsageError("--share applies to the processes run, and --models has none")
        _check_out(args.out)
        prepared = self._prepare("compare", cell, code, async_if_needed="asyncio" in models)
        funcs = {m: _for_worker_processes(prepared.func) if m == "processes" else prepared.func
                 for m in models}
        try:
            comparison = compare_functions(
                funcs, n, timeout=timeout, measure=not args.no_measure,
                start_method=args.start_method or self.start_method, share=share or None)
        except ShipError as exc:
            raise _ship_usage_error(exc) from None
        except WorkerError as exc:
            if args.out and getattr(exc, "comparison", None) is not None:
                self.shell.user_ns[args.out] = exc.comparison
            _write_output(exc.report)
            if not args.quiet:
                display(exc.report)
            raise
        finally:
            _adopt_shared(self.shell.user_ns, funcs.get("processes"), share)
        note = _global_note(prepared)
        if note and "processes" in comparison.reports:
            comparison.reports["processes"].notes.append(note)
        if args.out:
            self.shell.user_ns[args.out] = comparison
        _write_output(next(iter(comparison.reports.values())))  # the first run's output
        if not args.quiet:
            display(comparison)
        return None

    @magic_arguments.magic_arguments()
    @magic_arguments.argument("-o", "--out", metavar="NAME",
                              help="store the GilCheck in the variable NAME")
    @magic_arguments.argument("-q", "--quiet", action="store_true", help="show nothing")
    @magic_arguments.argument("expression", nargs="*", help="the call to check, e.g. f(x)")
    @line_magic
    def gilcheck(self, line):
        """Does this call release the GIL? Calls the expression repeatedly in a
        thread for about 0.2 s while a native probe asks for the GIL, and says
        which (concmagic.gilcheck). Displays the GilCheck (unless -q) and
        returns None; -o NAME stores it.
        """
        from .gil import check_call

        argv, code = _split_line(self.gilcheck.parser, line)
        args = self.gilcheck.parser.parse_args(argv)
        _check_out(args.out)
        if not code:
            raise UsageError("%gilcheck needs a call to check, e.g. `%gilcheck f(x)`")
        try:
            compiled = compile(f"lambda: (\n{code}\n)", "<gilcheck>", "eval")
        except SyntaxError as exc:
            raise UsageError(f"%gilcheck needs a Python expression; got {code!r} "
                             f"({exc.msg})") from None
        call = eval(compiled, self.shell.user_ns)   # names are looked up at each call
        result = check_call(call, code)
        if args.out:
            self.shell.user_ns[args.out] = result
        if not args.quiet:
            display(result)
        return None

    # -- status ----------------------------------------------------------------
    @line_magic
    def concmagic(self, line):
        """%concmagic: show workers, pools, cores and the GIL. %concmagic shutdown: stop pools."""
        command = line.strip()
        if command == "shutdown":
            engine.shutdown()
            print("concmagic: worker threads, processes and Dask cluster stopped")
            return None
        if command:
            raise UsageError(f"%concmagic takes no argument or 'shutdown'; got {command!r}")
        print(_format_status(engine.status(), self))
        return None

    # -- the one path every running magic takes ------------------------------
    def _run(self, model, magic, line, cell):
        argv, code = _split_line(magic.parser, line)
        if model != "processes" and any(w.split("=")[0] == "--share" for w in argv):
            raise UsageError(f"--share applies to %%processes only: %%{model} runs in the "
                             "notebook's process, where every array is shared already")
        args = magic.parser.parse_args(argv)
        n = self._workers(args.workers)
        timeout = self._seconds(args.timeout, self.timeout, "--timeout")
        comm_timeout = self._seconds(args.comm_timeout, self.comm_timeout, "--comm-timeout")
        pull = _parse_pull(args.pull)
        share = _parse_pull(getattr(args, "share", None), "--share")
        _check_out(args.out)
        dask = _dask_options(args) if model == "processes" else None
        prepared = self._prepare(model, cell, code, pull)
        func, options = prepared.func, {}
        if model == "processes":
            func = _for_worker_processes(func)
            options["start_method"] = args.start_method or self.start_method
            if share:
                options["share"] = share
        if dask is not None:
            if wants_comm(func):
                raise UsageError("comm is not available with --backend dask: Dask workers "
                                 "have no channels to each other; use the local backend")
            model, options = "dask", dask
        if model != "serial":
            # Drawn by the runner's own wait loop; the magic starts no thread.
            options["progress"] = progress_for(self.shell, model, n)
        try:
            report = engine.run(func, n, model, timeout=timeout, raise_errors=False,
                                measure=not args.no_measure, comm_timeout=comm_timeout,
                                **options)
        except ShipError as exc:
            raise _ship_usage_error(exc) from None
        except (DaskUnavailable, ClusterError) as exc:
            raise UsageError(str(exc)) from None
        finally:
            _adopt_shared(self.shell.user_ns, func, share)
        if pull:
            self._pull(report, pull)
        note = _global_note(prepared)
        if model in ("processes", "dask") and note:
            report.notes.append(note)
        self._show(report, args)
        if report.errors:
            raise WorkerError(report)
        return report.results

    def _prepare(self, magic, cell, code, pull=(), async_if_needed=False):
        """The cell (or a line form's expression) as a CellFunction.

        With ``async_if_needed`` (%%compare with asyncio among its models), a
        cell that awaits becomes a coroutine function; the other models run
        it in an event loop per worker (concmagic.runners.settle).
        """
        if cell is None:
            cell = code
            if not cell.strip():
                raise UsageError(f"%{magic} needs an expression, e.g. `%{magic} -n 2 worker_id`; "
                                 f"or use the cell magic %%{magic}")
        elif code:
            raise UsageError(f"%%{magic} takes options only on its first line; "
                             f"unexpected: {code!r}")
        try:
            return make_cell_function(cell, self.shell.user_ns, pull=pull,
                                      is_async=magic == "asyncio")
        except CellError as exc:
            if not (async_if_needed and exc.needs_async):
                raise UsageError(str(exc)) from None
        try:
            prepared = make_cell_function(cell, self.shell.user_ns, pull=pull, is_async=True)
        except CellError as exc:
            raise UsageError(str(exc)) from None
        if wants_comm(prepared.func):
            raise UsageError(f"a %%{magic} cell that awaits cannot use comm: comm calls are "
                             "awaited under asyncio only; run it with %%asyncio, or drop the "
                             "await to compare it across models")
        return prepared

    def _workers(self, n):
        if n is None:
            n = self.workers or os.cpu_count() or 1
        if n < 1:
            raise UsageError(f"-n/--workers must be a positive integer; got {n}")
        return n

    @staticmethod
    def _seconds(value, default, option):
        """A positive number of seconds from ``option``, else the %config
        ``default`` (where 0 means none)."""
        if value is None:
            return default or None
        if not value > 0:
            raise UsageError(f"{option} must be a positive number of seconds; got {value:g}")
        return value

    def _pull(self, report, pull):
        pulled = {name: [] for name in pull}
        for run in report.workers:
            if run.error is None:
                run.result, values = unpack_pulled(run.result, pull)
            else:
                values = {}
            for name in pull:
                pulled[name].append(values.get(name))
        self.shell.user_ns.update(pulled)

    def _show(self, report, args):
        if args.out:
            self.shell.user_ns[args.out] = report
        _write_output(report)
        if not args.quiet:
            display(report)


def _write_output(report):
    """Each worker's stdout and stderr, grouped by worker, never interleaved."""
    for run in report.workers:
        if run.stdout:
            sys.stdout.write(_block("stdout", run.worker_id, run.stdout))
        if run.stderr:
            sys.stderr.write(_block("stderr", run.worker_id, run.stderr))
    sys.stdout.flush()
    sys.stderr.flush()


def _check_out(name):
    if name is not None and not name.isidentifier():
        raise UsageError(f"-o needs a variable name; got {name!r}")


def _ship_usage_error(exc):
    """The UsageError for a ShipError (something the cell uses cannot travel)."""
    if exc.name == "get_ipython":
        # Only the cell's own get_ipython is swapped for the worker's
        # stand-in; a notebook function calling it would ship the shell.
        return UsageError(
            "a notebook function this cell calls uses `!cmd` or `%magic` (it calls "
            "get_ipython()), and the notebook's shell cannot be sent to worker "
            "processes; put those lines in the %%processes cell itself, or use "
            "%%threads")
    return UsageError(str(exc))


def _global_note(prepared):
    """The note for names a cell assigns with `global`: in processes they stay there."""
    if not prepared.global_names:
        return None
    names = sorted(prepared.global_names)
    return (f"{len(names)} name{'s' if len(names) != 1 else ''} assigned with `global` "
            f"stayed in the worker processes: {', '.join(names)}")


def _dask_options(args):
    """``{"scheduler": address or None}`` for ``--backend dask``, None for the
    local backend; UsageError for options that do not go with the backend."""
    if args.backend != "dask":
        if args.scheduler is not None:
            raise UsageError(f"--scheduler applies to --backend dask only; got --scheduler "
                             f"{args.scheduler} with the local backend")
        return None
    for option, value in (("--start-method", args.start_method),
                          ("--share", getattr(args, "share", None))):
        if value:
            raise UsageError(f"{option} applies to the local backend (worker processes of "
                             f"this machine), not to --backend dask")
    try:
        require_dask()
    except DaskUnavailable as exc:
        raise UsageError(str(exc)) from None
    return {"scheduler": args.scheduler}


def _parse_models(spec):
    """``--models threads,processes`` -> ("threads", "processes"); default: all."""
    if spec is None:
        return DEFAULT_MODELS
    models = tuple(m.strip() for m in spec.split(",") if m.strip())
    bad = [m for m in models if m not in engine.MODELS]
    if bad or not models:
        raise UsageError(f"--models takes a comma-separated list of {', '.join(engine.MODELS)}; "
                         f"got {spec!r}")
    if len(set(models)) != len(models):
        raise UsageError(f"--models names a model twice; got {spec!r}")
    return models


def _split_line(parser, line):
    """``(option tokens, expression)``: the options up front, the rest verbatim.

    The expression of a line form is Python, not shell words: splitting it
    into arguments and joining them back would change it (``len("a  b")``
    lost a space; ``x -y`` and ``f('-n 3')`` were taken for options). So the
    options are the leading words that name one of the magic's options (with
    their values); the expression is the rest of the line as typed.
    """
    options = parser._option_string_actions
    words = list(re.finditer(r"\S+", line))
    i = 0
    while i < len(words):
        word = words[i].group()
        name = word.split("=", 1)[0] if word.startswith("--") else word
        long = [o for o in options if o.startswith(name)] if name.startswith("--") else []
        action = options.get(name) or (options[long[0]] if len(long) == 1 else None)
        if action is not None:                    # -n 4, --workers=4, --work 4, -q
            i += 2 if action.nargs != 0 and "=" not in word else 1
        elif re.fullmatch(r"-[A-Za-z]\d\S*", word) and word[:2] in options:
            i += 1                                # -n4: the value attached
        elif re.fullmatch(r"--[A-Za-z][\w-]*(=\S*)?", word):
            i += 1                                # a mistyped option: argparse names it
        else:
            break
    argv = [w.group() for w in words[:i]]
    code = line[words[i].start():].strip() if i < len(words) else ""
    return argv, code


def _block(stream, worker_id, text):
    text = text if text.endswith("\n") else text + "\n"
    return f"[{stream}:{worker_id}] {text}" if text.count("\n") == 1 else \
        f"[{stream}:{worker_id}]\n{text}"


def _parse_pull(spec, option="--pull"):
    if spec is None:
        return ()
    names = tuple(name.strip() for name in spec.split(",") if name.strip())
    bad = [name for name in names if not name.isidentifier() or keyword.iskeyword(name)]
    if bad or not names:
        raise UsageError(f"{option} takes comma-separated variable names; got {spec!r}")
    return names


def _adopt_shared(namespace, func, names):
    """Rebind the notebook's variables to their shared views.

    The engine rebinds ``--share`` names in the globals of the function it
    runs, which for processes is a copy of the notebook's namespace (see
    `_for_worker_processes`); the notebook must see the views too. Done
    however the run ended, so a run stopped half-way keeps its writes.
    """
    if not names or func is None:
        return
    for name in names:
        if name in func.__globals__ and namespace.get(name) is not func.__globals__[name]:
            namespace[name] = func.__globals__[name]


def _for_worker_processes(func):
    """The cell function with ``get_ipython`` bound to the worker's stand-in.

    The notebook's shell cannot travel to another process; ``!cmd`` lines
    still work there through concmagic.shell_shim.
    """
    from . import shell_shim
    namespace = dict(func.__globals__)
    namespace["get_ipython"] = shell_shim.get_ipython
    shipped = types.FunctionType(func.__code__, namespace, func.__name__,
                                 func.__defaults__, func.__closure__)
    shipped.__dict__.update(func.__dict__)
    shipped.__kwdefaults__ = func.__kwdefaults__
    return shipped


def _format_status(status, magic):
    gil = "disabled (free-threaded build)" if not status["gil_enabled"] else "enabled"
    lines = [
        f"concmagic {__import__('concmagic').__version__}: "
        f"Python {status['python']} ({status['implementation']}), GIL {gil}",
        f"cores: {status['cores']} ({status['usable_cores']} usable by this process)",
        f"models: {', '.join(status['models'])}",
        f"default workers: {magic.workers or status['usable_cores']}"
        f"{'' if magic.workers else ' (one per core)'}",
        f"warm threads: {status['threads']['threads']}",
        f"event loop: {'running' if status['asyncio']['running'] else 'not started'}",
    ]
    pools = status["processes"]
    if any(pools.values()):
        for method, pids in pools.items():
            lines.append(f"worker processes ({method}): {len(pids)}, pids {', '.join(map(str, pids))}")
    else:
        lines.append(f"worker processes: none running (start method {magic.start_method})")
    for cluster in status.get("dask") or ():
        kind = "LocalCluster" if cluster["local"] else "cluster"
        workers = cluster["workers"]
        if workers is None:
            lines.append(f"dask {kind}: {cluster['address']}, not reachable")
            continue
        where = ", ".join(f"{w['address']}" + (f" (pid {w['pid']})" if w["pid"] else "")
                          for w in workers)
        lines.append(f"dask {kind}: {cluster['address']}, {len(workers)} "
                     f"worker{'' if len(workers) == 1 else 's'}: {where}")
    return "\n".join(lines)
