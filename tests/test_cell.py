"""Tests for concmagic.cell: a cell's text becomes __cell__(worker_id, n_workers)."""
import asyncio
import inspect
import linecache
import pickle
import traceback

import cloudpickle
import pytest

from concmagic.cell import (MISSING, CellError, CellFunction, make_cell_function,
                            register_sources, unpack_pulled)


def run(cell, ns=None, worker_id=0, n_workers=1, **kwargs):
    ns = {} if ns is None else ns
    return make_cell_function(cell, ns, **kwargs).func(worker_id=worker_id, n_workers=n_workers)


# --- values, scopes ---------------------------------------------------------

def test_worker_id_and_n_workers_are_visible():
    assert [run("(worker_id, n_workers)", worker_id=i, n_workers=3) for i in range(3)] == [
        (0, 3), (1, 3), (2, 3)]


def test_returns_last_expression_value():
    cf = make_cell_function("a = 2\nb = a * 21\nb", {})
    assert isinstance(cf, CellFunction)
    assert cf.func(worker_id=0, n_workers=1) == 42
    assert cf.func.__name__ == "__cell__"


def test_no_last_expression_returns_none():
    assert run("a = 1\nif a:\n    b = 2\n") is None
    assert run("") is None
    assert run("# only a comment\n") is None


@pytest.mark.parametrize("cell", ["calls.append(1) or 5;\n", "calls.append(1) or 5 ;  # quiet\n\n"])
def test_semicolon_suppresses_value_but_still_evaluates(cell):
    ns = {"calls": []}
    assert run(cell, ns) is None
    assert ns["calls"] == [1]


def test_semicolon_inside_a_line_does_not_suppress():
    assert run("a = 1; b = 2\na + b") == 3
    assert run("calls.append(1) or 5\n", {"calls": []}) == 5


def test_reads_notebook_namespace():
    ns = {"data": [1, 2, 3], "scale": 10}
    assert run("sum(data) * scale + worker_id", ns, worker_id=2) == 62


def test_assignments_are_worker_private():
    ns = {"x": 1}
    run("x = 100\ny = worker_id\n", ns)
    assert ns["x"] == 1
    assert "y" not in ns


def test_global_writes_the_notebook_namespace():
    ns = {"counter": 0}
    cf = make_cell_function("global counter\ncounter += worker_id + 1\n", ns)
    assert cf.global_names == frozenset({"counter"})
    for i in range(3):
        cf.func(worker_id=i, n_workers=3)
    assert ns["counter"] == 6


def test_global_names_only_at_cell_level():
    cf = make_cell_function("if True:\n    global a\n    a = 1\ndef f():\n    global b\n", {})
    assert cf.global_names == frozenset({"a"})


def test_nested_def_class_lambda_comprehension():
    cell = (
        "base = 10 * worker_id\n"
        "def add(v):\n"
        "    return base + v\n"
        "class Box:\n"
        "    def __init__(self, v):\n"
        "        self.v = add(v)\n"
        "sq = lambda v: v * v\n"
        "[sq(Box(i).v) for i in range(3)] + [{k: k for k in 'a'}['a']]\n"
    )
    assert run(cell, worker_id=1) == [100, 121, 144, "a"]


def test_nested_generators_and_nonlocal_are_fine():
    cell = (
        "def gen():\n"
        "    yield from range(3)\n"
        "def counter():\n"
        "    n = 0\n"
        "    def inc():\n"
        "        nonlocal n\n"
        "        n += 1\n"
        "        return n\n"
        "    return inc\n"
        "inc = counter(); inc()\n"
        "(list(gen()), inc(), sum(i for i in range(4)))\n"
    )
    assert run(cell) == ([0, 1, 2], 2, 6)


# --- IPython syntax ---------------------------------------------------------

def test_shell_and_magic_lines_are_transformed():
    cf = make_cell_function("!echo hi\n%time 1+1\nout = !ls\n", {})
    assert "get_ipython().system('echo hi')" in cf.source
    assert "get_ipython().run_line_magic('time', '1+1')" in cf.source
    assert "get_ipython().getoutput('ls')" in cf.source


def test_transform_false_leaves_source_alone():
    with pytest.raises(CellError, match="line 1"):
        make_cell_function("%time 1+1\n", {}, transform=False)


def test_leading_blank_lines_keep_cell_line_numbers():
    cf = make_cell_function("\n\n!echo hi\nx = 1\n", {})
    assert cf.source.splitlines()[2] == "get_ipython().system('echo hi')"


def test_line_magic_runs_in_a_real_shell_namespace(capsys):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    assert shell.user_ns["get_ipython"]() is shell
    assert run("%time 40 + worker_id\n", shell.user_ns, worker_id=2) == 42
    assert "Wall time" in capsys.readouterr().out


# --- rejected constructs ----------------------------------------------------

@pytest.mark.parametrize("cell, construct, line", [
    ("a = 1\nyield a\n", "`yield`", 2),
    ("a = 1\n\nx = yield from g()\n", "`yield from`", 3),
    ("a = 1\nreturn a\n", "`return`", 2),
    ("import asyncio\nawait asyncio.sleep(0)\n", "`await`", 2),
    ("async for i in it():\n    pass\n", "`async for`", 1),
    ("a = 1\nasync with lock:\n    pass\n", "`async with`", 2),
    ("a = [i async for i in it()]\n", "`async for` in a comprehension", 1),
    ("a = 1\nfrom os.path import *\n", "`from os.path import *`", 2),
    ("x = 1\nnonlocal x\n", "`nonlocal`", 2),
    ("if True:\n    for i in range(2):\n        yield i\n", "`yield`", 3),
])
def test_rejected_constructs_name_construct_and_line(cell, construct, line):
    with pytest.raises(CellError) as info:
        make_cell_function(cell, {})
    message = str(info.value)
    assert construct in message
    assert f"line {line}" in message
    assert info.value.lineno == line


def test_import_star_suggests_explicit_names():
    with pytest.raises(CellError, match="import the names you need explicitly"):
        make_cell_function("from math import *\n", {})


def test_await_in_nested_async_def_is_fine():
    cell = "async def f():\n    await g()\n    return 1\nlambda: 0\n"
    assert callable(run(cell))


def test_syntax_error_becomes_cell_error_with_line():
    with pytest.raises(CellError) as info:
        make_cell_function("a = 1\nb = 2\nc = (3 +\n", {})
    assert isinstance(info.value.__cause__, SyntaxError)
    assert info.value.lineno == 3
    assert "line 3" in str(info.value)


def test_compile_time_syntax_error_becomes_cell_error():
    # Parses, but the compiler refuses it: `break` outside a loop.
    with pytest.raises(CellError, match="line 2") as info:
        make_cell_function("a = 1\nbreak\n", {})
    assert isinstance(info.value.__cause__, SyntaxError)


# --- tracebacks -------------------------------------------------------------

def test_traceback_shows_the_cell_line():
    cf = make_cell_function("a = 1\nb = 2\nraise KeyError('boom on three')\nc = 4\n", {})
    assert linecache.cache[cf.filename][1] is None  # survives checkcache
    linecache.checkcache()
    with pytest.raises(KeyError):
        try:
            cf.func(worker_id=0, n_workers=1)
        except KeyError as exc:
            text = traceback.format_exc()
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            raise
    assert frame.filename == cf.filename
    assert frame.lineno == 3
    assert f'File "{cf.filename}", line 3, in __cell__' in text
    assert "raise KeyError('boom on three')" in text


def test_unbound_local_gets_a_helpful_note():
    ns = {"x": 1}
    cf = make_cell_function("y = 0\nx = x + 1\n", ns)
    with pytest.raises(UnboundLocalError) as info:
        cf.func(worker_id=0, n_workers=1)
    assert traceback.extract_tb(info.value.__traceback__)[-1].lineno == 2
    if hasattr(info.value, "add_note"):
        (note,) = info.value.__notes__
        assert "global x" in note


def test_unbound_local_in_nested_def_gets_no_note():
    cell = "def f():\n    v = v + 1\nf()\n"
    with pytest.raises(UnboundLocalError) as info:
        run(cell, {"v": 1})
    assert not getattr(info.value, "__notes__", None)


# --- pull -------------------------------------------------------------------

def test_pull_returns_values_and_missing():
    cell = (
        "global total\n"
        "a = worker_id * 2\n"
        "if worker_id:\n"
        "    b = 'set'\n"
        "for i in range(3):\n"
        "    pass\n"
        "import math as m\n"
        "(c := 5)\n"
        "total = 7\n"
        "a + 1\n"
    )
    ns = {}
    pull = ("a", "b", "i", "m", "c", "total")
    cf = make_cell_function(cell, ns, pull=pull)
    assert cf.pull == pull
    value, pulled = unpack_pulled(cf.func(worker_id=0, n_workers=2), pull)
    assert value == 1
    assert pulled["a"] == 0 and pulled["i"] == 2 and pulled["c"] == 5 and pulled["total"] == 7
    assert pulled["m"].__name__ == "math"
    assert pulled["b"] is MISSING
    assert repr(MISSING) == "<not assigned>"
    value, pulled = unpack_pulled(cf.func(worker_id=1, n_workers=2), pull)
    assert (value, pulled["b"]) == (3, "set")


def test_pull_with_suppressed_or_no_value():
    value, pulled = unpack_pulled(run("a = 1\na;\n", pull=["a"]), ["a"])
    assert (value, pulled) == (None, {"a": 1})
    assert unpack_pulled(run("a = 1\n"), ()) == (None, {})


def test_pull_accepts_comma_string():
    cf = make_cell_function("a = 1\nb = 2\n", {}, pull="a, b")
    assert cf.pull == ("a", "b")


@pytest.mark.parametrize("name, why", [
    ("zz", "'zz' is not assigned in the cell"),
    ("worker_id", "'worker_id' is not assigned in the cell"),
    ("inner", "'inner' is not assigned in the cell"),   # assigned only in a nested def
    ("k", "'k' is not assigned in the cell"),           # comprehension variable
    ("1x", "'1x' is not a valid Python name"),
    ("class", "'class' is not a valid Python name"),
])
def test_bad_pull_names(name, why):
    cell = "a = 1\ndef f():\n    inner = 2\n[k for k in range(2)]\n"
    with pytest.raises(CellError, match="--pull: " + why):
        make_cell_function(cell, {}, pull=(name,))


def test_missing_survives_pickling():
    assert pickle.loads(pickle.dumps(MISSING)) is MISSING


# --- caching, processes, async ----------------------------------------------

def test_cache_hit_reuses_code_but_binds_fresh_namespace():
    ns1, ns2 = {"v": 1}, {"v": 2}
    one = make_cell_function("v * 10 + worker_id\n", ns1)
    two = make_cell_function("v * 10 + worker_id\n", ns2)
    assert one.func.__code__ is two.func.__code__
    assert one.func is not two.func
    assert one.filename == two.filename
    assert (one.func(worker_id=0, n_workers=1), two.func(worker_id=0, n_workers=1)) == (10, 20)
    other = make_cell_function("v * 10 + worker_id\n", ns1, pull=())
    assert other.func.__code__ is one.func.__code__
    assert make_cell_function("v * 10 + worker_id\n", ns1, is_async=True).func.__code__ \
        is not one.func.__code__


def test_cloudpickle_round_trip_carries_sources():
    cf = make_cell_function("a = worker_id\nscale * a\n", {"__name__": "__main__", "scale": 3},
                            pull=("a",))
    func = pickle.loads(cloudpickle.dumps(cf.func))
    assert func.__concmagic_sources__ == {cf.filename: cf.source}
    value, pulled = unpack_pulled(func(worker_id=2, n_workers=3), ("a",))
    assert (value, pulled) == (6, {"a": 2})
    del linecache.cache[cf.filename]
    assert register_sources(func) == (cf.filename,)
    assert linecache.getline(cf.filename, 2) == "scale * a\n"


def test_register_sources_restores_tracebacks_after_cloudpickle():
    # cloudpickle renames code objects' files to <dynamic-code>; a worker
    # process must get the cell's filename and lines back, nested defs included.
    cf = make_cell_function("def f():\n    return 1 / 0\nf()\n", {"__name__": "__main__"})
    func = pickle.loads(cloudpickle.dumps(cf.func))
    del linecache.cache[cf.filename]
    register_sources(func)
    with pytest.raises(ZeroDivisionError) as info:
        func(worker_id=0, n_workers=1)
    frames = traceback.extract_tb(info.value.__traceback__)[-2:]
    assert [(f.filename, f.lineno, f.line) for f in frames] == [
        (cf.filename, 3, "f()"), (cf.filename, 2, "return 1 / 0")]


def test_async_cell_is_a_coroutine_function_and_allows_await():
    cell = (
        "import asyncio\n"
        "await asyncio.sleep(0)\n"
        "async def twice(v):\n"
        "    return 2 * v\n"
        "got = [await twice(i) for i in range(worker_id + 1)]\n"
        "got\n"
    )
    cf = make_cell_function(cell, {}, is_async=True, pull=("got",))
    assert cf.is_async
    assert inspect.iscoroutinefunction(cf.func)
    value, pulled = unpack_pulled(asyncio.run(cf.func(worker_id=2, n_workers=3)), ("got",))
    assert value == [0, 2, 4] == pulled["got"]
