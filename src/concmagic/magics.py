"""The IPython magics: parse options, call the engine, display. Nothing else.

    %%threads -n 4        the cell in 4 threads (shared memory, one GIL)
    %%processes -n 4      the cell in 4 worker processes (isolated memory)
    %threads -n 4 expr    the line forms evaluate one expression per worker
    %concmagic            status: pools, cores, the GIL; `%concmagic shutdown`

In each, the cell is a function of ``worker_id`` (0..n-1) and ``n_workers``;
its value is the list of the workers' last-expression values. Options shared
by the magics are declared once (``_run_options``) and stacked on each.
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
from .errors import ShipError, WorkerError
from .runners.processes import START_METHODS

__all__ = ["ConcMagic"]


def _run_options(func):
    """The options every running magic takes (written once, stacked on each)."""
    options = [
        magic_arguments.argument(
            "-n", "--workers", type=int, default=None, metavar="N",
            help="number of workers (default: %%config ConcMagic.workers, else the cores)"),
        magic_arguments.argument(
            "-o", "--out", metavar="NAME",
            help="store the whole Report in the variable NAME"),
        magic_arguments.argument(
            "--pull", metavar="A,B",
            help="bring back the workers' values of these names, as lists in worker order"),
        magic_arguments.argument(
            "-q", "--quiet", action="store_true",
            help="show no report, only the results"),
        magic_arguments.argument(
            "--timeout", type=float, default=None, metavar="SECONDS",
            help="stop the workers still running after SECONDS"),
        magic_arguments.argument(
            "code", nargs="*",
            help="line form only: the expression each worker evaluates"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@magics_class
class ConcMagic(Magics):
    """Run a cell under threads or processes and measure what happened."""

    workers = Integer(0, help="Default number of workers for -n; 0 means one per core.").tag(config=True)
    start_method = Unicode(
        START_METHODS[0], help=f"How worker processes start: one of {', '.join(START_METHODS)}."
    ).tag(config=True)
    timeout = Float(0.0, help="Default --timeout in seconds; 0 means none.").tag(config=True)

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
    @_run_options
    @line_cell_magic
    def processes(self, line, cell=None):
        """Run the cell in N worker processes: isolated memory, every core."""
        return self._run("processes", self.processes, line, cell)

    # -- status ----------------------------------------------------------------
    @line_magic
    def concmagic(self, line):
        """%concmagic: show workers, pools, cores and the GIL. %concmagic shutdown: stop pools."""
        command = line.strip()
        if command == "shutdown":
            engine.shutdown()
            print("concmagic: worker threads and processes stopped")
            return None
        if command:
            raise UsageError(f"%concmagic takes no argument or 'shutdown'; got {command!r}")
        print(_format_status(engine.status(), self))
        return None

    # -- the one path every running magic takes ------------------------------
    def _run(self, model, magic, line, cell):
        argv, code = _split_line(magic.parser, line)
        args = magic.parser.parse_args(argv)
        n = self._workers(args.workers)
        timeout = self._timeout(args.timeout)
        pull = _parse_pull(args.pull)
        if args.out is not None and not args.out.isidentifier():
            raise UsageError(f"-o needs a variable name; got {args.out!r}")
        if cell is None:
            cell = code
            if not cell.strip():
                raise UsageError(f"%{model} needs an expression, e.g. `%{model} -n 2 worker_id`; "
                                 f"or use the cell magic %%{model}")
        elif code:
            raise UsageError(f"%%{model} takes options only on its first line; "
                             f"unexpected: {code!r}")
        try:
            prepared = make_cell_function(cell, self.shell.user_ns, pull=pull)
        except CellError as exc:
            raise UsageError(str(exc)) from None
        func, options = prepared.func, {}
        if model == "processes":
            func = _for_worker_processes(func)
            options["start_method"] = args.start_method or self.start_method
        try:
            report = engine.run(func, n, model, timeout=timeout, raise_errors=False, **options)
        except ShipError as exc:
            if exc.name == "get_ipython":
                # Only the cell's own get_ipython is swapped for the worker's
                # stand-in; a notebook function calling it would ship the shell.
                raise UsageError(
                    "a notebook function this cell calls uses `!cmd` or `%magic` (it calls "
                    "get_ipython()), and the notebook's shell cannot be sent to worker "
                    "processes; put those lines in the %%processes cell itself, or use "
                    "%%threads") from None
            raise UsageError(str(exc)) from None
        if pull:
            self._pull(report, pull)
        if model == "processes" and prepared.global_names:
            names = sorted(prepared.global_names)
            report.notes.append(
                f"{len(names)} name{'s' if len(names) != 1 else ''} assigned with `global` "
                f"stayed in the worker processes: {', '.join(names)}")
        self._show(report, args)
        if report.errors:
            raise WorkerError(report)
        return report.results

    def _workers(self, n):
        if n is None:
            n = self.workers or os.cpu_count() or 1
        if n < 1:
            raise UsageError(f"-n/--workers must be a positive integer; got {n}")
        return n

    def _timeout(self, timeout):
        if timeout is None:
            return self.timeout or None
        if not timeout > 0:
            raise UsageError(f"--timeout must be a positive number of seconds; got {timeout:g}")
        return timeout

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
        for run in report.workers:               # grouped by worker, never interleaved
            if run.stdout:
                sys.stdout.write(_block("stdout", run.worker_id, run.stdout))
            if run.stderr:
                sys.stderr.write(_block("stderr", run.worker_id, run.stderr))
        sys.stdout.flush()
        sys.stderr.flush()
        if not args.quiet:
            display(report)


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


def _parse_pull(spec):
    if spec is None:
        return ()
    names = tuple(name.strip() for name in spec.split(",") if name.strip())
    bad = [name for name in names if not name.isidentifier() or keyword.iskeyword(name)]
    if bad or not names:
        raise UsageError(f"--pull takes comma-separated variable names; got {spec!r}")
    return names


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
    ]
    pools = status["processes"]
    if any(pools.values()):
        for method, pids in pools.items():
            lines.append(f"worker processes ({method}): {len(pids)}, pids {', '.join(map(str, pids))}")
    else:
        lines.append(f"worker processes: none running (start method {magic.start_method})")
    return "\n".join(lines)
