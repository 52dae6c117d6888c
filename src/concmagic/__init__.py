"""concmagic: run a notebook cell under threads, processes and asyncio, and
measure what really happened (wall and CPU time, parallelism, the GIL).

    %load_ext concmagic

The engine works without IPython; the magics are a thin skin over it.
"""
from ._version import __version__

__all__ = [
    "__version__", "run", "shutdown", "status", "kernels",
    "compare", "Comparison", "gilcheck", "GilCheck",
    "Report", "WorkerRun", "WorkerError", "ShipError", "ShareError", "CommError", "CommTimeout",
    "load_ipython_extension", "unload_ipython_extension",
]

# Public names are loaded on first use: a worker process imports this package
# to reach its worker loop and should not pay for NumPy or the report code.
_LAZY = {
    "run": ("engine", "run"), "shutdown": ("engine", "shutdown"), "status": ("engine", "status"),
    "compare": ("comparison", "compare"), "Comparison": ("comparison", "Comparison"),
    "gilcheck": ("gil", "gilcheck"), "GilCheck": ("gil", "GilCheck"),
    "Report": ("report", "Report"), "WorkerRun": ("report", "WorkerRun"),
    "WorkerError": ("errors", "WorkerError"), "ShipError": ("errors", "ShipError"),
    "ShareError": ("errors", "ShareError"),
    "CommError": ("errors", "CommError"), "CommTimeout": ("errors", "CommTimeout"),
}


def __getattr__(name):
    import importlib
    if name == "kernels":
        return importlib.import_module(".kernels", __name__)
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value          # found once; later lookups skip this hook
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


def load_ipython_extension(ip):
    """Called by ``%load_ext concmagic``: registers the magics, and starts the
    process gang's forkserver in the background (concmagic.runners.prestart;
    ``CONCMAGIC_PRESTART=0`` switches that off)."""
    from .magics import ConcMagic
    from .runners import prestart

    prestart.in_background()
    magics = ConcMagic(shell=ip)
    ip.register_magics(magics)
    # Listed among the shell's configurables, so `%config ConcMagic.workers = 4` works.
    if magics not in ip.configurables:
        ip.configurables.append(magics)


def unload_ipython_extension(ip):
    """Called by ``%unload_ext concmagic``: nothing to undo but the pools."""
    from .engine import shutdown

    shutdown()
