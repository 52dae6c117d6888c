"""Start the process gang's forkserver ahead of need, so its boot costs no one.

The first ``%%processes`` cell used to spend most of its time waiting for
multiprocessing's forkserver: a new interpreter that imports
multiprocessing, cloudpickle and concmagic's worker loop (~0.1 s) before it
can fork the first worker. ``%load_ext concmagic`` now starts it in the
background (``in_background()``: a daemon thread starts the server, which
boots in a process of its own, and loads the measurement code), so that by
the first ``%%processes`` cell only the forks are left.

(Starting it from engine.run, before the runner's imports, was tried: on a
2-core machine the server's boot, those imports and multiprocessing's
resource tracker compete for the cores, and no first run got faster.)

Nothing here starts a worker process: an extension that is loaded but never
used for processes leaves one idle server, which ends with the kernel (it
exits when its parent does: multiprocessing gives it the read end of a pipe
whose write end only the parent holds). ``CONCMAGIC_PRESTART=0`` in the
environment switches it off. Light on imports: %load_ext imports it, and
the work happens in the thread.
"""
import os
import sys
import threading

__all__ = ["PRELOAD", "forkserver", "in_background", "wait", "enabled"]

#: What the forkserver imports before it forks anyone: the worker loop (and
#: with it cloudpickle), so every worker starts warm. The same list as the
#: gang's in runners/processes.py (the first to start the server sets it).
PRELOAD = ["concmagic.runners._worker"]

_thread = None
_lock = threading.Lock()


def enabled():
    """False when ``CONCMAGIC_PRESTART=0`` (or ``false``/``no``/``off``) is set."""
    return os.environ.get("CONCMAGIC_PRESTART", "1").strip().lower() not in ("0", "false",
                                                                            "no", "off")


def forkserver():
    """Start multiprocessing's forkserver with concmagic's preload, if it is not
    running yet; returns at once (True). False where it does not apply (no
    forkserver on this system, switched off, or inside a concmagic worker
    process)."""
    worker = sys.modules.get("concmagic.runners._worker")
    if worker is not None and getattr(worker, "_busy", False):
        return False                              # a cell in a worker process: no children
    if not enabled():
        return False
    import multiprocessing
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    from multiprocessing import forkserver as server
    multiprocessing.get_context("forkserver").set_forkserver_preload(PRELOAD)
    server.ensure_running()
    return True


def _warm():
    try:
        forkserver()
        # The measurement code, which the magics' own imports leave out.
        from .. import measure  # noqa: F401
    except Exception:                             # noqa: BLE001 - an optimisation only:
        pass                                      # the first run starts what it needs


def in_background():
    """Start the forkserver (and load the measurement code) in a daemon thread.

    Returns the thread, or None when switched off. Called by
    ``%load_ext concmagic``; costs the caller only the thread's start.
    """
    global _thread
    if not enabled():
        return None
    with _lock:
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_warm, name="concmagic-prestart", daemon=True)
            _thread.start()
        return _thread


def wait(timeout=None):
    """Wait for a background prestart to finish; True if none is running."""
    thread = _thread
    if thread is not None:
        thread.join(timeout)
        return not thread.is_alive()
    return True
