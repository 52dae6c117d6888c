"""What ``get_ipython()`` returns inside a worker process.

A cell's ``!cmd`` lines become ``get_ipython().system(...)`` calls, and its
``%magic`` lines ``get_ipython().run_line_magic(...)``. The notebook's shell
lives in the kernel and cannot be sent to another process, so cells shipped
to worker processes get this stand-in: shell commands run for real (their
output captured like the worker's own prints), and magics, which need the
notebook's shell, fail with an error that says so.
"""
import subprocess
import sys

__all__ = ["WorkerShell", "get_ipython"]


class WorkerShell:
    """The part of IPython's shell that makes sense inside a worker process."""

    def var_expand(self, cmd, depth=0):
        """``{expr}`` and ``$name`` in a command, from the calling cell's variables.

        As the notebook's shell does it (IPython's own formatter), so
        ``!echo {worker_id}`` means the same in every model. Only the names
        the worker has can be used: a notebook variable that the cell does
        not otherwise use is not shipped to the worker. Like IPython, a
        command that cannot be expanded runs as written.
        """
        frame = sys._getframe(depth + 1)
        try:
            namespace = dict(frame.f_globals)
            namespace.update(frame.f_locals)
        finally:
            del frame
        try:
            from IPython.utils.text import DollarFormatter
            return DollarFormatter().vformat(cmd, args=[], kwargs=namespace)
        except Exception:
            return cmd

    def system(self, cmd):
        """``!cmd``: run it in a shell; its output becomes the worker's output."""
        cmd = self.var_expand(cmd, depth=1)
        done = subprocess.run(cmd, shell=True, capture_output=True, text=True)
        sys.stdout.write(done.stdout)
        sys.stderr.write(done.stderr)
        return None

    def getoutput(self, cmd, split=True, depth=0):
        """``x = !cmd``: the command's output, as a list of lines."""
        cmd = self.var_expand(cmd, depth=depth + 1)
        done = subprocess.run(cmd, shell=True, capture_output=True, text=True)
        return done.stdout.splitlines() if split else done.stdout

    def _no_magic(self, name):
        raise RuntimeError(
            f"%{name} needs the notebook's IPython shell, which a worker process does not "
            f"have; run it outside the %%processes cell (or use %%threads)")

    def run_line_magic(self, magic_name, line, _stack_depth=1):
        self._no_magic(magic_name)

    def run_cell_magic(self, magic_name, line, cell):
        self._no_magic(magic_name)


_SHELL = WorkerShell()


def get_ipython():
    """The worker's stand-in shell (see the module docstring)."""
    return _SHELL
