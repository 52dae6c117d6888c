"""IPython magics: argument parsing and display only (placeholders for now)."""
from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class


@magics_class
class ConcMagics(Magics):
    """%%threads, %%processes, %%asyncio, %%compare, %gilcheck, %concmagic."""

    def _not_yet(self, name):
        raise UsageError(f"%%{name} is not implemented yet in concmagic "
                         f"{__import__('concmagic').__version__}; use concmagic.kernels for now")

    @cell_magic
    def threads(self, line, cell):
        self._not_yet("threads")

    @cell_magic
    def processes(self, line, cell):
        self._not_yet("processes")
