"""The teaching notebooks run top to bottom in a real kernel, and show their lesson.

Each notebook is executed by nbclient on an ipykernel running this very
Python, exactly as `make notebooks` runs it (scripts/run_notebooks.py). A
cell that raises fails the test, except one tagged ``raises-exception``,
which must raise. Then the cells that carry the lesson are read by their id
(notebooks/build.py gives them stable ids) and their outputs checked: the
report table and timeline are there, the verdict says what the notebook
says it says.

Only what a measurement guarantees is asserted: a verdict that rests on a
speedup (which a busy 2-core machine can spoil) is not; one that rests on
the GIL wait (which it cannot) is.
"""
import functools
import importlib.util
import re
from pathlib import Path

import pytest

pytest.importorskip("nbclient")
pytest.importorskip("nbconvert")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")
import nbformat  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run_notebooks = _load("run_notebooks", ROOT / "scripts" / "run_notebooks.py")
build = _load("notebooks_build", ROOT / "notebooks" / "build.py")

NAMES = [p.stem for p in run_notebooks.notebook_paths()]
# A whole notebook: about a minute at most on a loaded 2-core machine; the
# per-cell limit (run_notebooks.CELL_TIMEOUT) catches a single hung cell.
NOTEBOOK_TIMEOUT = 300


@functools.lru_cache(maxsize=None)
def executed(name):
    """The notebook ``name``, executed once per test session (test_browser.py
    reuses it); returns ``(notebook, seconds)``."""
    return run_notebooks.execute(run_notebooks.NOTEBOOKS / f"{name}.ipynb")


# ---------------------------------------------------------------------------
# Reading outputs
# ---------------------------------------------------------------------------
def cell(nb, cell_id):
    for c in nb.cells:
        if c.get("id") == cell_id:
            return c
    raise AssertionError(f"no cell with id {cell_id!r}")


def html(nb, cell_id):
    return "\n".join(o["data"]["text/html"] for o in cell(nb, cell_id).outputs
                     if "text/html" in o.get("data", {}))


def text(nb, cell_id):
    """Everything the cell showed as text: streams, then text/plain reprs."""
    parts = []
    for o in cell(nb, cell_id).outputs:
        if o.output_type == "stream":
            parts.append(o.text)
        elif "text/plain" in o.get("data", {}):
            parts.append(o["data"]["text/plain"])
    return "".join(p if p.endswith("\n") else p + "\n" for p in parts)


def result(nb, cell_id):
    """The cell's Out[] value, as text."""
    (out,) = [o for o in cell(nb, cell_id).outputs if o.output_type == "execute_result"]
    return out["data"]["text/plain"]


def stderr(nb, cell_id):
    return "".join(o.text for o in cell(nb, cell_id).outputs
                   if o.output_type == "stream" and o.name == "stderr")


def has_timeline(fragment):
    return re.search(r'<img [^>]*src="data:image/png;base64,[A-Za-z0-9+/]{100}', fragment)


def counts(line):
    """"counter = 1001, expected 4000: ..." -> (1001, 4000)."""
    match = re.search(r"counter = (\d+), expected (\d+)", line)
    assert match, f"no count in {line!r}"
    return int(match[1]), int(match[2])


# ---------------------------------------------------------------------------
# What each notebook must show
# ---------------------------------------------------------------------------
def check_01(nb):
    for cell_id in ("threads-1", "threads-2", "threads-4", "processes-4"):
        assert '<table class="concmagic-report">' in html(nb, cell_id), cell_id
    compare = html(nb, "compare-python")
    assert '<table class="concmagic-report">' in compare
    assert has_timeline(compare), "the %%compare output has no timeline picture"
    # Pure-Python threads keep the GIL ~90% busy whatever the machine's load.
    assert "GIL-bound" in text(nb, "compare-python")
    assert result(nb, "switchinterval") == "0.005"
    assert text(nb, "summary").count("CPU parallelism") == 4


def check_02(nb):
    assert "I/O-bound" in text(nb, "compare-sleep")
    assert "I/O-bound" in text(nb, "compare-http")
    assert "releases the GIL" in text(nb, "gilcheck-sleep")
    # waiting while holding the GIL: threads take turns at waiting
    assert "GIL-bound" in text(nb, "compare-io-gil")
    assert "the work waits while holding the GIL" in text(nb, "compare-io-gil")
    assert '<table class="concmagic-report">' in html(nb, "asyncio-http")
    sizes = eval(result(nb, "asyncio-http"))   # a list of ints, from our own kernel
    assert len(sizes) == 8 and len(set(sizes)) == 1 and sizes[0] > 6000
    # %%compare across the four models: asyncio beside threads for waiting.
    awaited = text(nb, "compare-four-await")
    assert "I/O-bound" in awaited and "waited as well on one thread" in awaited
    blocking = text(nb, "compare-four-blocking")
    assert "I/O-bound" in blocking and "its tasks waited one after another" in blocking


def check_03(nb):
    assert "too short to tell" in text(nb, "compare-tiny")
    assert text(nb, "break-even").count("x\n") == 4
    error = stderr(nb, "ship-error")
    assert "UsageError" in error and "cannot ship `lock`" in error
    assert "stayed in the worker processes: visits" in text(nb, "global-note")
    assert result(nb, "global-note") == "[1, 1]"
    assert result(nb, "visits") == "0"
    shipping = text(nb, "shipping")
    assert "processes, big" in shipping and "threads, big" in shipping
    assert "copied in" in text(nb, "share-first")
    assert "reused, no copy" in text(nb, "share-again")
    assert "[1.0, 2.0]" in text(nb, "share-summary")      # the workers' writes arrived


def check_04(nb):
    assert not stderr(nb, "cython-compile"), stderr(nb, "cython-compile")
    assert result(nb, "cython-same") == "True"
    assert "holds the GIL" in text(nb, "gilcheck-gil")
    assert "releases the GIL" in text(nb, "gilcheck-nogil")
    verdicts = text(nb, "three-gilchecks").splitlines()
    assert [line.split()[0] for line in verdicts] == ["python", "gil", "nogil"]
    assert "holds the GIL" in verdicts[0] and "holds the GIL" in verdicts[1]
    assert "releases the GIL" in verdicts[2]
    assert "GIL-bound" in text(nb, "compare-python")
    assert "GIL-bound" in text(nb, "compare-gil")
    assert "not allowed without" in stderr(nb, "cython-refuses")
    annotated = html(nb, "cython-annotate")
    assert "Generated by Cython" in annotated and "harmonic_typed" in annotated


def check_05(nb):
    for cell_id in ("sleep", "sha256", "zlib", "ufunc", "sort", "matmul"):
        assert text(nb, cell_id).startswith("releases the GIL"), (cell_id, text(nb, cell_id))
    for cell_id in ("json", "python", "objects", "from-list"):
        assert text(nb, cell_id).startswith("holds the GIL"), (cell_id, text(nb, cell_id))
    assert text(nb, "too-short").startswith("inconclusive")
    assert 'class="concmagic concmagic-gilcheck"' in html(nb, "sleep")
    assert result(nb, "object").startswith("(True, ")


def check_06(nb):
    assert '<table class="concmagic-report">' in html(nb, "bands")
    assert result(nb, "bands") == "[(0, 300), (300, 600)]"
    assert any("image/png" in o.get("data", {}) for o in cell(nb, "picture").outputs)
    assert result(nb, "processes-copy") == "[200, 200]"
    assert result(nb, "processes-empty") == "0"
    racy, expected = counts(text(nb, "race-count"))
    assert racy < expected, f"the race lost no update: {racy} of {expected}"
    locked, expected = counts(text(nb, "locked-count"))
    assert locked == expected


CHECKS = {name: globals()[f"check_{name[:2]}"] for name in NAMES}


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------
def test_every_notebook_has_its_checks():
    assert len(NAMES) == 6, NAMES
    assert sorted(NAMES) == sorted(build.NOTEBOOKS)


def test_notebooks_are_committed_without_outputs():
    for name in NAMES:
        nb = nbformat.read(run_notebooks.NOTEBOOKS / f"{name}.ipynb", as_version=4)
        for c in nb.cells:
            if c.cell_type == "code":
                assert c.outputs == [] and c.execution_count is None, (name, c.id)


def test_notebooks_match_their_source():
    # notebooks/build.py is the source; the .ipynb files are written from it.
    assert build.main(["--check"]) == 0


@pytest.mark.timeout(NOTEBOOK_TIMEOUT)
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_and_shows_its_lesson(name):
    nb, seconds = executed(name)     # a cell that raises fails here, naming it
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        errors = [o for o in c.outputs if o.output_type == "error"]
        if "raises-exception" in c.metadata.get("tags", []):
            # a UsageError is shown on stderr, not as an error output
            assert errors or "Error" in stderr(nb, c.id), f"cell {c.id} was meant to raise"
        else:
            assert not errors, f"cell {c.id}: {errors[0]['ename']}: {errors[0]['evalue']}"
    CHECKS[name](nb)
