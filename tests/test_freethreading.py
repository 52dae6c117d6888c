"""Free-threaded CPython: detection, reports without a GIL, and the GIL coming back.

CI runs a CPython with a GIL (no free-threaded build can be installed there:
Debian 12 has none, and nothing but PyPI and Debian is reachable), so the
interpreter's answers are simulated: ``sys._is_gil_enabled`` (3.13+) is
replaced by a switch the test controls, exactly the function concmagic asks.
"""
import sys
import sysconfig
import types

import pytest

import concmagic
from concmagic import engine, freethreading
from concmagic.freethreading import GilWatch

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module", autouse=True)
def _stop_pools_at_end():
    yield
    engine.shutdown()


@pytest.fixture
def gil(monkeypatch):
    """A free-threaded interpreter running without the GIL, until ``state[0] = True``."""
    state = [False]
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: state[0], raising=False)
    return state


@pytest.fixture
def fake_extension(monkeypatch):
    """A module that looks compiled (loaded from a .so), imported by the cell."""
    name = "concmagic_test_legacy_ext"
    module = types.ModuleType(name)
    module.__file__ = f"/site-packages/{name}.cpython-313t-x86_64-linux-gnu.so"
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name, module


def test_detection_follows_the_interpreter(monkeypatch, gil):
    assert freethreading.gil_enabled() is False
    gil[0] = True
    assert freethreading.gil_enabled() is True
    monkeypatch.delattr(sys, "_is_gil_enabled")
    assert freethreading.gil_enabled() is True              # before 3.13: always a GIL
    monkeypatch.setattr(sysconfig, "get_config_var",
                        lambda name: 1 if name == "Py_GIL_DISABLED" else None)
    assert freethreading.free_threaded_build() is True
    monkeypatch.setattr(sysconfig, "get_config_var", lambda name: None)
    assert freethreading.free_threaded_build() is False


def test_watch_is_silent_when_nothing_changes(gil):
    assert GilWatch().note() is None                         # off, and still off
    gil[0] = True
    assert GilWatch().note() is None                         # on all along


def test_watch_names_the_import_that_brought_the_gil_back(gil, fake_extension, monkeypatch):
    name, module = fake_extension
    watch = GilWatch()
    monkeypatch.setitem(sys.modules, name, module)          # the cell's import...
    gil[0] = True                                            # ...switched the GIL on
    note = watch.note()
    assert note.startswith("the GIL was switched back on during this run: the run imported "
                           f"{name}, compiled without declaring free-threading support")
    assert "PYTHON_GIL=0" in note


def test_report_without_a_gil_says_so(gil):
    report = concmagic.run(lambda worker_id, n_workers: worker_id, n=2, model="threads")
    assert report.gil_enabled is False
    assert report.gil_wait is None                           # no GIL, no probe
    assert "no GIL (free-threaded Python)" in report.summary()
    assert "GIL busy" not in str(report)
    assert report.notes == []
    assert report.to_dict()["gil_enabled"] is False


def test_a_cell_that_switches_the_gil_on_is_flagged(gil, fake_extension, monkeypatch):
    name, module = fake_extension

    def cell(worker_id, n_workers):
        if worker_id == 0:
            monkeypatch.setitem(sys.modules, name, module)
            gil[0] = True
        return worker_id

    report = concmagic.run(cell, n=2, model="threads")
    assert report.gil_enabled is True
    (note,) = report.notes
    assert name in note and "switched back on" in note
    assert f"note: {note}" in str(report)


def test_with_a_gil_nothing_is_added():
    report = concmagic.run(lambda worker_id, n_workers: 1, n=2, model="threads")
    assert report.gil_enabled is True and report.notes == []
    assert "free-threaded" not in str(report)
