"""Cell -> function: turn a notebook cell's text into ``__cell__(worker_id, n_workers)``.

    cell text --IPython transforms--> Python source --ast--> checked statements
        --> def __cell__(worker_id, n_workers): <the cell's own statements>
        --> code object (cached by hash) --> function bound to the notebook namespace

A cell that mentions the name ``comm`` gets a third parameter, ``comm=None``:
runners then pass each worker its channels to the others (concmagic.comm),
and ``comm`` is a local name of the cell like ``worker_id``. Other cells keep
the two parameters, so no runner sets up channels nobody uses.

The function's globals are the notebook's namespace, so reading a notebook
variable reads the shared one and ``global x`` writes the notebook's ``x``;
names assigned in the cell are function locals, the worker's own. The function
returns the value of the cell's last expression (None when it ends with ``;``).
The statements keep their line numbers and the source is registered in
`linecache`, so tracebacks show the cell's own lines.

This module starts no threads and knows nothing of runners; it imports IPython
only when a cell is transformed, so worker processes that merely unpickle a
cell function do not pay for importing IPython.
"""
import ast
import builtins
import functools
import hashlib
import io
import keyword
import linecache
import re
import sys
import threading
import tokenize
import types
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

__all__ = [
    "CellError", "CellFunction", "MISSING",
    "make_cell_function", "unpack_pulled", "register_sources",
]

# Names the generated wrapper uses. They are closure variables of __cell__, never
# entries of the notebook namespace, so a cell cannot clobber them by accident.
_PICK = "__concmagic_pick__"
_NOTE = "__concmagic_note__"
# The name under which a cell sees its worker's channels (concmagic.comm).
_COMM = "comm"

# Cells prepared in this process, by hash of everything that changes the code
# (STYLE.md §2). Bounded so that a long session of edited cells cannot grow it
# without end; 256 covers any notebook a person re-runs by hand.
_CACHE_SIZE = 256
_cache = OrderedDict()
_cache_lock = threading.Lock()


class CellError(ValueError):
    """The cell cannot be made into a worker function (the message names the construct and line).

    ``lineno`` is the cell line at fault, or None when no single line is.
    """

    def __init__(self, message, lineno=None, needs_async=False):
        super().__init__(message)
        self.lineno = lineno
        #: True when the cell would be fine as a coroutine (it awaits).
        self.needs_async = needs_async


class _Missing:
    """The value of a pulled name that was not assigned in that worker."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self):
        return "<not assigned>"

    def __bool__(self):
        return False

    def __reduce__(self):
        # Pickled by reference, so a value sent back from a worker process is
        # the very same sentinel and `value is MISSING` holds in the parent.
        return "MISSING"


#: Stands for a pulled name that a worker never assigned (or deleted).
MISSING = _Missing()


@dataclass(frozen=True)
class CellFunction:
    """A cell prepared to run as ``func(worker_id=..., n_workers=...)``."""

    func: Callable           # def __cell__(worker_id, n_workers[, comm]); `async def` when is_async
    source: str              # the transformed Python source (what tracebacks show)
    filename: str            # the name `source` is registered under in linecache
    global_names: frozenset  # names the cell declares `global` at its own level
    pull: tuple              # names whose per-worker values func returns, see unpack_pulled
    is_async: bool


# ---------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------

def make_cell_function(cell, namespace, *, is_async=False, pull=(), transform=True):
    """Turn the text of a cell into a `CellFunction` whose globals are `namespace`.

    `transform` runs IPython's input transforms first (``!cmd``, ``%magic``).
    With `is_async` the function is a coroutine function and ``await`` is
    allowed at the cell's level. `pull` names variables assigned in the cell
    whose values each worker hands back: func then returns
    ``(value, {name: value or MISSING})``; `unpack_pulled` splits that.
    Raises `CellError` naming the construct and line when the cell cannot run
    as a function. Adds ``__builtins__`` to `namespace` if it has none, as
    `exec` does.
    """
    if not isinstance(cell, str):
        raise TypeError(f"cell must be a str; got {type(cell).__name__}")
    if not isinstance(namespace, dict):
        raise TypeError(f"namespace must be a dict; got {type(namespace).__name__}")
    is_async = bool(is_async)
    pull = _normalize_pull(pull)
    source = _transform(cell) if transform else cell
    if not source.endswith("\n"):
        source += "\n"
    filename = f"<concmagic-cell-{hashlib.sha1(source.encode('utf-8')).hexdigest()[:12]}>"

    key = hashlib.sha1(f"{int(is_async)}\0{','.join(pull)}\0{source}".encode("utf-8")).hexdigest()
    with _cache_lock:
        prepared = _cache.get(key)
        if prepared is not None:
            _cache.move_to_end(key)
    if prepared is None:
        prepared = _prepare(source, filename, is_async, pull)
        with _cache_lock:
            _cache[key] = prepared
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
    code, global_names, local_names = prepared

    _register(filename, source)
    namespace.setdefault("__builtins__", builtins.__dict__)
    helpers = {_PICK: _Pick(pull, global_names), _NOTE: _UnboundNote(local_names)}
    closure = tuple(types.CellType(helpers[name]) for name in code.co_freevars)
    # Defaults live on the function, not the code: `comm=None` is given here.
    defaults = (None,) if _COMM in code.co_varnames[:code.co_argcount] else None
    func = types.FunctionType(code, namespace, "__cell__", defaults, closure)
    func.__qualname__ = "__cell__"
    # A plain attribute travels with the function through cloudpickle, so a
    # worker process can show the cell's lines in its tracebacks too.
    func.__concmagic_sources__ = {filename: source}
    return CellFunction(func=func, source=source, filename=filename,
                        global_names=global_names, pull=pull, is_async=is_async)


def unpack_pulled(result, pull):
    """Split what a cell function returned into ``(value, {name: value or MISSING})``.

    The inverse of the wrapping that `pull` adds; with no `pull`, returns
    ``(result, {})``.
    """
    pull = _normalize_pull(pull)
    if not pull:
        return result, {}
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], dict)):
        raise ValueError("expected (value, {name: value}) from a cell function made with "
                         f"pull={pull!r}; got {type(result).__name__}")
    value, pulled = result
    return value, {name: pulled.get(name, MISSING) for name in pull}


def register_sources(func):
    """Make tracebacks of `func` show the cell's lines in this process.

    For worker processes that received a cell function by cloudpickle: puts the
    sources it carries into linecache and, since cloudpickle renames every code
    object's file to ``<dynamic-code>``, gives `func`'s code (nested defs
    included) its cell filename back. Returns the filenames registered.
    """
    sources = getattr(func, "__concmagic_sources__", None) or {}
    for filename, source in sources.items():
        _register(filename, source)
    if len(sources) == 1:
        (filename,) = sources
        code = getattr(func, "__code__", None)
        if code is not None and code.co_filename != filename:
            func.__code__ = _renamed(code, filename)
    return tuple(sources)


def _renamed(code, filename):
    consts = tuple(_renamed(c, filename) if isinstance(c, types.CodeType) else c
                   for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


# ---------------------------------------------------------------------------
# Transforming and checking
# ---------------------------------------------------------------------------

def _normalize_pull(pull):
    # "a,b" is a likely slip for ("a", "b"); iterating it would pull "a", ",", "b".
    if isinstance(pull, str):
        pull = [p for p in re.split(r"[\s,]+", pull) if p]
    names = []
    for name in pull or ():
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise CellError(f"--pull: {name!r} is not a valid Python name")
        if name not in names:
            names.append(name)
    return tuple(names)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _ipython_transform(cell):
    # A fresh TransformerManager is a pure function of the text (it consults
    # no shell), so a cell run again is not transformed again (~30 us).
    from IPython.core.inputtransformer2 import TransformerManager
    return TransformerManager().transform_cell(cell)


def _transform(cell):
    try:
        source = _ipython_transform(cell)
    except SyntaxError as exc:
        raise _syntax_error(exc) from exc
    # IPython drops leading blank lines; put them back so that line N of the
    # source is line N of the cell as the user typed it.
    lines = cell.splitlines()
    blank = next((i for i, line in enumerate(lines) if line.strip()), 0)
    return "\n" * blank + source


def _syntax_error(exc):
    where = f"cell line {exc.lineno}: " if exc.lineno else ""
    text = f"\n    {exc.text.strip()}" if exc.text and exc.text.strip() else ""
    return CellError(f"{where}syntax error: {exc.msg}{text}", lineno=exc.lineno)


def _prepare(source, filename, is_async, pull):
    """Parse, check, wrap and compile; returns (code, global_names, local_names)."""
    try:
        tree = ast.parse(source, filename)
    except SyntaxError as exc:
        raise _syntax_error(exc) from exc
    body = tree.body
    # `from __future__` must open the compiled module, so it moves out of the function.
    future = []
    while body and isinstance(body[0], ast.ImportFrom) and body[0].module == "__future__":
        future.append(body.pop(0))

    global_names, assigned = _check_scope(body, is_async)
    local_names = frozenset(assigned - global_names)
    # `global comm` keeps the notebook's comm (a parameter cannot be global).
    uses_comm = _COMM not in global_names and any(
        isinstance(node, ast.Name) and node.id == _COMM
        for statement in body for node in ast.walk(statement))
    for name in pull:
        if name not in assigned and name not in global_names:
            raise CellError(f"--pull: {name!r} is not assigned in the cell")

    module = _wrap(body, future, is_async, pull, _semicolon_at_end(source), uses_comm)
    try:
        code = compile(module, filename, "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise _syntax_error(exc) from exc
    factory = _code_named(code, "__concmagic_factory__")
    return _code_named(factory, "__cell__"), frozenset(global_names), local_names


def _code_named(code, name):
    return next(c for c in code.co_consts if isinstance(c, types.CodeType) and c.co_name == name)


_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def _check_scope(body, is_async):
    """Reject what cannot run inside a function; collect `global` and assigned names.

    Walks what runs in the cell's own scope: nested def/lambda/class bodies are
    skipped (only their decorators, defaults and bases run at the cell's level),
    and comprehensions are entered, since a walrus there binds in the cell.
    """
    global_names, assigned = set(), set()
    stack = [(node, False) for node in reversed(body)]
    while stack:
        node, in_comp = stack.pop()
        line = getattr(node, "lineno", None)
        problem = _problem(node, is_async)
        if problem:
            raise CellError(f"cell line {line}: {problem}", lineno=line,
                            needs_async=not is_async and _problem(node, True) is None)

        if isinstance(node, ast.Global):
            global_names.update(node.names)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and not in_comp:
            assigned.add(node.id)
        elif isinstance(node, ast.NamedExpr):
            assigned.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            assigned.update(a.asname or a.name.split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            assigned.add(node.name)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            assigned.add(node.name)
        elif type(node).__name__ in ("MatchAs", "MatchStar") and node.name:
            assigned.add(node.name)
        elif type(node).__name__ == "MatchMapping" and node.rest:
            assigned.add(node.rest)

        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            args = node.args
            children = [*getattr(node, "decorator_list", ()), *args.defaults,
                        *(d for d in args.kw_defaults if d is not None)]
        elif isinstance(node, ast.ClassDef):
            children = [*node.decorator_list, *node.bases, *node.keywords]
        else:
            children = list(ast.iter_child_nodes(node))
        comp = in_comp or isinstance(node, _COMPREHENSIONS)
        stack.extend((child, comp) for child in reversed(children))
    return global_names, assigned


def _problem(node, is_async):
    """Why `node`, found at the cell's own level, cannot run in the function; or None."""
    if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names):
        module = "." * node.level + (node.module or "")
        return (f"`from {module} import *` is not allowed inside a function, and the cell runs "
                f"as one; import the names you need explicitly: `from {module} import a, b`")
    if isinstance(node, (ast.Yield, ast.YieldFrom)):
        word = "yield from" if isinstance(node, ast.YieldFrom) else "yield"
        return (f"`{word}` at the top level of a cell would make the cell a generator; "
                f"move it into a `def` inside the cell")
    if isinstance(node, ast.Return):
        return ("`return` at the top level of a cell is not allowed; the cell's value is "
                "its last expression, so put the value on the last line instead")
    if isinstance(node, ast.Nonlocal):
        return ("`nonlocal` at the top level of a cell has no enclosing function to refer to; "
                "use `global NAME` to write the notebook's variable")
    if not is_async:
        hint = "run the cell with %%asyncio, or move it into an `async def` inside the cell"
        if isinstance(node, ast.Await):
            return f"top-level `await` needs an async cell; {hint}"
        if isinstance(node, ast.AsyncFor):
            return f"top-level `async for` needs an async cell; {hint}"
        if isinstance(node, ast.AsyncWith):
            return f"top-level `async with` needs an async cell; {hint}"
        if isinstance(node, _COMPREHENSIONS) and any(g.is_async for g in node.generators):
            return f"top-level `async for` in a comprehension needs an async cell; {hint}"
    return None


def _semicolon_at_end(source):
    """True when the last token of `source` is ``;`` (IPython's "no output")."""
    skip = (tokenize.ENDMARKER, tokenize.NEWLINE, tokenize.NL, tokenize.COMMENT,
            tokenize.INDENT, tokenize.DEDENT)
    last = None
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type not in skip:
                last = tok
    except (tokenize.TokenError, SyntaxError):
        return False
    return last is not None and last.type == tokenize.OP and last.string == ";"


# ---------------------------------------------------------------------------
# Wrapping
# ---------------------------------------------------------------------------

# The statements of the cell go into the `try`; the return of the last value is
# added there too. The handler only annotates and re-raises, which keeps the
# traceback's line on the cell line that failed.
_TEMPLATE = f"""
def __concmagic_factory__({_PICK}, {_NOTE}):
    def __cell__(worker_id, n_workers):
        try:
            pass
        except UnboundLocalError:
            {_NOTE}()
            raise
"""


def _wrap(body, future, is_async, pull, suppressed, uses_comm=False):
    """The module ``def factory(...): def __cell__(worker_id, n_workers): <body>``
    (``__cell__(worker_id, n_workers, comm=None)`` with `uses_comm`)."""
    module = ast.parse(_TEMPLATE)
    # Every node of the template sits on line 1, so no cell line is claimed by it.
    for node in ast.walk(module):
        if "lineno" in node._attributes:
            node.lineno = node.end_lineno = 1
            node.col_offset = node.end_col_offset = 0
    factory = module.body[0]
    cell_def = factory.body[0]
    if is_async:
        cell_def = ast.AsyncFunctionDef(**{f: getattr(cell_def, f) for f in cell_def._fields},
                                        lineno=1, col_offset=0, end_lineno=1, end_col_offset=0)
        factory.body[0] = cell_def
    try_node = cell_def.body[0]
    if uses_comm:
        cell_def.args.args.append(ast.arg(arg=_COMM, lineno=1, col_offset=0,
                                          end_lineno=1, end_col_offset=0))
        cell_def.args.defaults.append(ast.Constant(value=None, lineno=1, col_offset=0,
                                                   end_lineno=1, end_col_offset=0))

    statements = list(body)
    value = None
    last = statements[-1] if statements else None
    if isinstance(last, ast.Expr) and not suppressed:
        value = statements.pop().value
    picked = None
    if pull:
        picked = ast.Call(func=ast.Name(id=_PICK, ctx=ast.Load()), args=[], keywords=[])
    if picked is not None:
        result = ast.Tuple(elts=[value or ast.Constant(value=None), picked], ctx=ast.Load())
    else:
        result = value
    ret = ast.Return(value=result)
    ast.copy_location(ret, value or last or try_node)
    statements.append(ret)

    try_node.body = statements
    module.body[:0] = future
    return ast.fix_missing_locations(module)


# ---------------------------------------------------------------------------
# Helpers the wrapper calls (closure variables of __cell__)
# ---------------------------------------------------------------------------

class _Pick:
    """Reads the pulled names from the calling __cell__ frame at its end."""

    def __init__(self, pull, global_names):
        self.pull = tuple(pull)
        self.global_names = frozenset(global_names)

    def __call__(self):
        frame = sys._getframe(1)
        try:
            local, glob = frame.f_locals, frame.f_globals
        finally:
            del frame  # no reference cycle through the frame
        return {name: (glob if name in self.global_names else local).get(name, MISSING)
                for name in self.pull}


class _UnboundNote:
    """Explains the UnboundLocalError of ``x = x + 1`` where x is a notebook variable."""

    _NAME = re.compile(r"'([^']+)'")

    def __init__(self, local_names):
        self.local_names = frozenset(local_names)

    def __call__(self):
        exc = sys.exc_info()[1]
        frame = sys._getframe(1)
        try:
            tb = exc.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            # Only errors of the cell's own scope: a def inside the cell has its own.
            if tb is None or tb.tb_frame is not frame or not hasattr(exc, "add_note"):
                return
        finally:
            del frame, tb
        name = getattr(exc, "name", None)
        if not name:
            match = self._NAME.search(str(exc))
            name = match.group(1) if match else None
        if name not in self.local_names:
            return
        exc.add_note(
            f"'{name}' is assigned in this cell, so in the cell it is each worker's own "
            f"variable, unset until that assignment runs; the notebook's '{name}' is not "
            f"read. To update the notebook's '{name}', put `global {name}` at the top of "
            f"the cell; to keep a private copy, assign it to a new name "
            f"(`my_{name} = {name} + ...`).")


def _register(filename, source):
    # mtime None: linecache.checkcache keeps the entry, as IPython does for its cells.
    lines = [line + "\n" for line in source.splitlines()]
    linecache.cache[filename] = (len(source), None, lines, filename)
