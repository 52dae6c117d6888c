"""Tests for concmagic.gilcheck (concmagic/gil.py) and the %gilcheck magic.

The verdict rules are tested on made-up figures (every threshold edge). The
measurement is tested on calls whose GIL behaviour is known from their
source, each checked empirically before it was written here (wait fraction
on a loaded 2-core machine, 8+ runs each, one core kept busy by another
program for some of them):

    releases  time.sleep 0.1-0.3%, hashlib.sha256(1 MiB) 0-0.5%,
              zlib.compress(1 MiB) 0.5-1.2%, numpy.dot 200x200 0.1-3.9%,
              numpy.sort 0.1-4.3%, count_primes nogil 0-0.3%,
              io_wait nogil/python 0-0.4%
    holds     count_primes gil 92-96%, io_wait gil 98-99%, a Python loop
              87-92%, sorted() of ints 99%, re.search 96-99.5%, sum(range) 97-99%
    too short len([1]) (0.5 µs), sha256 of 1000 bytes (4-8 µs; hashlib
              keeps the GIL under 2048 bytes, ~89%)

Thresholds are RELEASES = 20% and HOLDS = 50%, so each case has a wide margin.
numpy.dot of 400x400 was dropped for 200x200: its BLAS threads fill both cores
and the probe then waited for a CPU, up to 8%.
"""
import hashlib
import random
import re
import threading
import time
import zlib

import numpy as np
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.lib.pretty import pretty
from IPython.utils.capture import capture_output

import concmagic
from concmagic import gil, kernels
from concmagic.gil import HOLDS, MIN_COVERAGE, RELEASES, TOO_SHORT_CALL, GilCheck


def _check(wait=0.01, call_time=1e-3, calls=100, coverage=1.0, gil_enabled=True):
    return GilCheck(label="f(x)", calls=calls, elapsed=call_time * calls, wait_fraction=wait,
                    coverage=coverage, probes=400, gil_enabled=gil_enabled)


# ---------------------------------------------------------------------------
# The verdict rules, on made-up figures
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("wait, kind, releases", [
    (0.0, "releases", True),
    (RELEASES, "releases", True),            # the edge counts as free
    (RELEASES + 0.001, "partly", None),
    (HOLDS - 0.001, "partly", None),
    (HOLDS, "holds", False),                 # the edge counts as held
    (1.0, "holds", False),
])
def test_wait_thresholds(wait, kind, releases):
    check = _check(wait=wait)
    assert check.kind == kind
    assert check.releases is releases


def test_too_short_call_is_inconclusive_whatever_the_wait():
    for wait in (0.0, 0.9):
        check = _check(wait=wait, call_time=TOO_SHORT_CALL * 0.99)
        assert check.kind == "too-short" and check.releases is None
        assert check.verdict.startswith("inconclusive: the call `f(x)` took 9.9")
        assert "too short to judge" in check.verdict
    assert _check(wait=0.9, call_time=TOO_SHORT_CALL).kind == "holds"


def test_probe_that_saw_too_little_is_inconclusive():
    assert _check(wait=0.9, coverage=MIN_COVERAGE * 0.99).kind == "unwatched"
    check = _check(wait=0.9, coverage=0.3)
    assert check.kind == "unwatched" and check.releases is None
    assert "watched only 30% of the time `f(x)` ran (under 50%" in check.verdict
    assert _check(wait=0.9, coverage=MIN_COVERAGE).kind == "holds"
    assert _check(wait=None, coverage=None).kind == "unwatched"


def test_no_gil_python_says_so():
    check = _check(wait=None, coverage=None, gil_enabled=False)
    assert check.kind == "no-gil" and check.releases is None
    assert check.verdict.startswith("no GIL:")


def test_verdict_names_its_figures():
    check = _check(wait=0.004, call_time=1.2e-3, calls=170)
    assert check.verdict == ("releases the GIL: the probe waited 0.4% of the time while "
                             "`f(x)` ran 1.2 ms per call x 170")
    held = _check(wait=0.97, call_time=0.05, calls=4)
    assert held.verdict.startswith("holds the GIL (runs Python bytecode or C code that keeps "
                                   "the lock): the probe waited 97% of the time while `f(x)` "
                                   "ran 50 ms per call x 4")
    partly = _check(wait=0.35)
    assert partly.verdict.startswith("partly: holds the GIL for part of each call; "
                                     "the probe waited 35%")


def test_reprs():
    check = _check(wait=0.97)
    text = str(check)
    assert text.splitlines()[0] == check.verdict
    assert "GIL wait 97%, 100 calls in 100 ms, 400 probes" in text
    assert pretty(check) == text
    assert repr(check) == "<GilCheck f(x): holds>"
    page = check._repr_html_()
    assert "<code>f(x)</code>" in page and "holds the GIL" in page and "97%" in page
    assert _check()._repr_html_().count("#dfd") == 1          # releases: green
    assert check.to_dict()["releases"] is False and check.to_dict()["kind"] == "holds"


def test_window_keeps_only_the_calls_bins():
    # Bins of 5 ms from the probe's start t0 = 100.0; the calls ran from
    # 100.010 to 100.020. The idle settling bins before (and after) are left out.
    probe = {"t0": 100.0, "bin_width": 0.005, "probes": 40,
             "t": [0.0, 0.005, 0.010, 0.015, 0.020, 0.025],
             "wait": [0.0, 0.0, 0.0045, 0.0045, 0.0, 0.0],
             "span": [0.005, 0.005, 0.005, 0.005, 0.005, 0.005]}
    wait, coverage, probes = gil._window(probe, 100.010, 100.020)
    assert wait == pytest.approx(0.9)
    assert coverage == pytest.approx(1.0)
    assert probes == 40
    # The probe got the GIL only after the calls: nothing watched.
    probe["span"] = [0.0, 0.0, 0.0, 0.0, 0.005, 0.005]
    probe["wait"] = [0.0] * 6
    assert gil._window(probe, 100.010, 100.020)[:2] == (None, 0.0)


# ---------------------------------------------------------------------------
# Measured on real calls
# ---------------------------------------------------------------------------
_RNG = np.random.default_rng(0)
_BIG = _RNG.bytes(1 << 20)                 # random: zlib must work for it
_MATRIX = _RNG.random((200, 200))
_INTS = list(range(200_000))
random.Random(0).shuffle(_INTS)
_ARRAY = _RNG.integers(0, 1 << 30, 1_000_000)
_TEXT = "abc " * 125_000 + "xyz"
_PATTERN = re.compile(r"(a|b)+c\s+x")


def _python_loop(n):
    total = 0
    for i in range(n):
        total += i
    return total


RELEASING = {
    "time.sleep": (time.sleep, 0.05),
    "hashlib.sha256 1 MiB": (lambda: hashlib.sha256(_BIG).digest(),),
    "zlib.compress 1 MiB": (zlib.compress, _BIG),
    "numpy.dot": (np.dot, _MATRIX, _MATRIX),
    "numpy.sort": (np.sort, _ARRAY),
    "count_primes nogil": (kernels.count_primes, 0, 200_000, "nogil"),
    "io_wait nogil": (kernels.io_wait, 0.05, "nogil"),
    "io_wait python": (kernels.io_wait, 0.05, "python"),
}
HOLDING = {
    "count_primes gil": (kernels.count_primes, 0, 200_000, "gil"),
    "io_wait gil": (kernels.io_wait, 0.05, "gil"),
    "python loop": (_python_loop, 100_000),
    "sorted": (sorted, _INTS),
    "re.search": (_PATTERN.search, _TEXT),
    "sum(range)": (sum, range(1_000_000)),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", list(RELEASING))
def test_calls_that_release_the_gil(name):
    f, *args = RELEASING[name]
    check = concmagic.gilcheck(f, *args)
    assert check.releases is True, str(check)
    assert check.wait_fraction <= RELEASES
    assert check.calls >= 1 and check.elapsed >= 0.2 * 0.9, str(check)
    assert check.verdict.startswith("releases the GIL")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", list(HOLDING))
def test_calls_that_hold_the_gil(name):
    f, *args = HOLDING[name]
    check = concmagic.gilcheck(f, *args)
    assert check.releases is False, str(check)
    assert check.wait_fraction >= HOLDS
    assert check.verdict.startswith("holds the GIL")


@pytest.mark.timeout(30)
def test_too_short_calls_are_inconclusive():
    check = concmagic.gilcheck(len, [1])
    assert check.releases is None and check.kind == "too-short", str(check)
    assert check.calls > 1000                      # ~0.2 s of evidence, not one call
    assert check.call_time < TOO_SHORT_CALL
    assert check.verdict.startswith("inconclusive: the call `len([1])` took")
    # hashlib keeps the GIL for data under 2048 bytes (a few µs: too short, or
    # held on a slow machine; never "releases").
    small = concmagic.gilcheck(lambda: hashlib.sha256(_BIG[:1000]).digest())
    assert small.releases is not True, str(small)


@pytest.mark.timeout(30)
def test_a_call_longer_than_the_evidence_is_made_once():
    check = concmagic.gilcheck(time.sleep, 0.3)
    assert check.calls == 1
    assert 0.29 <= check.call_time < 2.0
    assert check.releases is True, str(check)


@pytest.mark.timeout(30)
def test_the_result_and_label():
    check = concmagic.gilcheck(kernels.count_primes, 0, 1000, path="nogil")
    assert check.result == 168
    assert check.label == "kernels.count_primes(0, 1000, path='nogil')"


@pytest.mark.timeout(30)
def test_an_error_in_the_call_propagates_and_the_probe_stops():
    def broken():
        raise ValueError("bad input")

    before = threading.active_count()
    with pytest.raises(ValueError, match="bad input"):
        concmagic.gilcheck(broken)
    assert threading.active_count() == before
    assert concmagic.gilcheck(time.sleep, 0.05).releases is True   # nothing left behind


def test_not_callable():
    with pytest.raises(TypeError, match="needs a callable; got int"):
        concmagic.gilcheck(3)


@pytest.mark.timeout(30)
def test_free_threaded_python_runs_no_probe(monkeypatch):
    import sys
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)
    check = concmagic.gilcheck(time.sleep, 0.01)
    assert check.kind == "no-gil" and check.wait_fraction is None and check.probes == 0
    assert check.calls >= 10


# ---------------------------------------------------------------------------
# %gilcheck, as a user runs it
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shell():
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "concmagic")
    return ip


@pytest.fixture
def ip(shell):
    before = set(shell.user_ns)
    yield shell
    for name in set(shell.user_ns) - before:
        del shell.user_ns[name]


@pytest.mark.timeout(30)
def test_magic_checks_an_expression_in_the_notebook_namespace(ip):
    ip.user_ns["data"] = _BIG
    ip.run_cell("import hashlib", store_history=False)
    with capture_output() as out:
        value = ip.run_line_magic("gilcheck", "-o g hashlib.sha256(data).digest()")
    assert value is None
    check = ip.user_ns["g"]
    assert isinstance(check, GilCheck)
    assert check.releases is True, str(check)
    assert check.label == "hashlib.sha256(data).digest()"
    assert check.result == hashlib.sha256(_BIG).digest()        # evaluated whole, each call
    (shown,) = out.outputs
    assert shown.data["text/plain"] == str(check)
    assert shown.data["text/plain"].startswith("releases the GIL: the probe waited")
    assert "<code>hashlib.sha256(data).digest()</code>" in shown.data["text/html"]


@pytest.mark.timeout(30)
def test_magic_holding_and_quiet(ip):
    ip.user_ns["loop"] = _python_loop
    with capture_output() as out:
        ip.run_line_magic("gilcheck", "-q -o g loop(100_000)")
    assert out.outputs == [] and out.stdout == ""
    assert ip.user_ns["g"].releases is False, str(ip.user_ns["g"])


@pytest.mark.parametrize("line, message", [
    ("", "needs a call to check"),
    ("-q", "needs a call to check"),
    ("f(", "needs a Python expression"),
    ("-o 1x len([])", "-o needs a variable name"),
    ("--bogus len([])", "unrecognized arguments"),
])
def test_magic_usage_errors(ip, line, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        ip.run_line_magic("gilcheck", line)


@pytest.mark.timeout(30)
def test_magic_error_in_the_expression_propagates(ip):
    with pytest.raises(NameError, match="no_such_name"):
        ip.run_line_magic("gilcheck", "no_such_name(1)")


def test_magic_help_is_the_docstring(ip):
    doc = ip.find_line_magic("gilcheck").__doc__
    assert "release the GIL" in doc and "-o NAME" in doc
