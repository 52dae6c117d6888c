"""concmagic: run a notebook cell under threads, processes and asyncio, and
measure what really happened (wall and CPU time, parallelism, the GIL).

    %load_ext concmagic

The engine works without IPython; the magics are a thin skin over it.
"""
from . import kernels
from ._version import __version__

__all__ = ["__version__", "kernels", "load_ipython_extension", "unload_ipython_extension"]


def load_ipython_extension(ip):
    """Called by ``%load_ext concmagic``: registers the magics, nothing more."""
    from .magics import ConcMagics

    ip.register_magics(ConcMagics)


def unload_ipython_extension(ip):
    """Called by ``%unload_ext concmagic``."""
