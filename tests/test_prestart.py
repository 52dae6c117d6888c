"""Starting the process gang's forkserver ahead of need (runners/prestart.py).

``%load_ext concmagic`` starts multiprocessing's forkserver in a background
thread, so the first ``%%processes`` cell finds it booted. It may not slow
%load_ext, start a worker process, or leave a process behind when the kernel
ends.
"""
import os
import subprocess
import sys
import textwrap
import time

import pytest

import concmagic
from concmagic.runners import prestart

pytestmark = pytest.mark.timeout(120)


def _python(code, **env):
    environ = {**os.environ, **env}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=60, env=environ)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()


def _gone(pid, deadline=10.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


LOAD_EXT = """
    import os, time
    from IPython.core.interactiveshell import InteractiveShell
    from multiprocessing import forkserver
    import psutil
    ip = InteractiveShell.instance()
    t = time.perf_counter()
    ip.run_line_magic("load_ext", "concmagic")
    from concmagic.runners import prestart
    done = prestart.wait(30)
    pid = forkserver._forkserver._forkserver_pid
    print(done)
    print(pid)
    print(sorted(p.pid for p in psutil.Process().children()))
"""


def test_load_ext_starts_the_forkserver_and_it_ends_with_the_kernel():
    done, pid, children = _python(LOAD_EXT)
    assert done == "True"
    pid = int(pid)
    # The forkserver (and multiprocessing's resource tracker) only: no worker.
    assert pid in eval(children) and len(eval(children)) <= 2, children
    assert _gone(pid), f"the forkserver {pid} outlived the process that started it"


def test_prestart_can_be_switched_off():
    done, pid, children = _python(LOAD_EXT, CONCMAGIC_PRESTART="0")
    assert done == "True" and pid == "None" and children == "[]"


def test_the_first_run_in_processes_after_load_ext_is_correct():
    lines = _python("""
        from IPython.core.interactiveshell import InteractiveShell
        ip = InteractiveShell.instance()
        ip.run_line_magic("load_ext", "concmagic")
        print(ip.run_cell_magic("processes", "-n 2 -q", "worker_id * 10"))
        print(ip.run_cell_magic("processes", "-n 3 -q", "worker_id * 10"))
    """)
    assert lines[-2:] == ["[0, 10]", "[0, 10, 20]"]


def test_no_prestart_inside_a_worker_process():
    # A cell in a worker process may not start children (and need not).
    ns = {"__name__": "__main__", "prestart": prestart}
    exec("def inside(worker_id, n_workers):\n    return prestart.forkserver()\n", ns)
    assert concmagic.run(ns["inside"], 1, "processes").results == [False]


def test_load_ext_returns_before_the_server_has_booted():
    # The background thread starts the server; %load_ext only starts the thread.
    lines = _python("""
        import time
        from IPython.core.interactiveshell import InteractiveShell
        ip = InteractiveShell.instance()
        import concmagic.magics                      # the imports %load_ext would do anyway
        from concmagic.runners import prestart
        t = time.perf_counter()
        ip.run_line_magic("load_ext", "concmagic")
        took = time.perf_counter() - t
        print(prestart._thread is not None)
        print(took)
    """)
    assert lines[0] == "True"
    assert float(lines[1]) < 0.05, f"%load_ext took {float(lines[1]) * 1e3:.1f} ms"
