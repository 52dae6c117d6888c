"""Is there a GIL? Free-threaded CPython, and the imports that bring the GIL back.

A free-threaded build (3.13t and later, ``Py_GIL_DISABLED``) runs with the
GIL off, so Python threads compute side by side. But importing an extension
module that has not declared itself safe without the GIL switches the GIL
back on, for the whole process, from then on (CPython warns once). A cell
that does so changes what every later run measures, so a run watches for it
(`GilWatch`) and its report says which imports could have done it.

Only this process is watched: a worker process has an interpreter, and a GIL
state, of its own.
"""
import sys
import sysconfig

__all__ = ["free_threaded_build", "gil_enabled", "GilWatch"]


def free_threaded_build():
    """True when this CPython was built free-threaded (it may still run with the GIL on)."""
    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def gil_enabled():
    """False on a free-threaded CPython running with the GIL disabled."""
    check = getattr(sys, "_is_gil_enabled", None)
    return True if check is None else bool(check())


def _extension_modules(names):
    """The compiled extension modules among ``names`` (those loaded from a shared library)."""
    found = []
    for name in sorted(names):
        path = getattr(sys.modules.get(name), "__file__", None) or ""
        if path.endswith((".so", ".pyd")):
            found.append(name)
    return found


class GilWatch:
    """Notices the GIL being switched back on during a run.

    Started before the workers, read after them: ``note()`` is None unless
    the GIL was off when the run began and is on now. Costs nothing (one
    call) except on a free-threaded build running without the GIL, where it
    also remembers which modules were loaded, to name the new ones.
    """

    def __init__(self):
        self.was_enabled = gil_enabled()
        self._modules = None if self.was_enabled else set(sys.modules)

    @property
    def enabled(self):
        """Whether the GIL is on now."""
        return gil_enabled()

    def note(self):
        """A sentence for the report when the run switched the GIL on; else None."""
        if self.was_enabled or not gil_enabled():
            return None
        new = _extension_modules(set(sys.modules) - self._modules)
        culprit = (f"the run imported {', '.join(new)}, compiled without declaring "
                   f"free-threading support" if new else
                   "an extension module imported during the run did not declare "
                   "free-threading support")
        return (f"the GIL was switched back on during this run: {culprit}. From here on "
                f"threads take turns again; import it before measuring, use a "
                f"free-threading build of it, or set PYTHON_GIL=0 to keep the GIL off "
                f"(at your own risk)")
