"""Where live progress is drawn: a Jupyter display handle or one terminal line.

The IPython-facing half of concmagic.progress: the magics call
``progress_for(shell, model, n)``; runners only ever see the Progress.
"""
import sys

from .progress import Progress

__all__ = ["progress_for"]


def progress_for(shell, model, n):
    """A Progress that draws in the notebook (in place) or on the terminal."""
    if getattr(shell, "kernel", None) is not None:
        return _jupyter(model, n)
    stream = sys.__stderr__
    if stream is not None and stream.isatty():
        return _terminal(model, n, stream)
    return None                                   # nowhere sensible to draw


def _jupyter(model, n):
    from IPython.display import display
    handle = None

    def render(lines):
        nonlocal handle
        data = {"text/plain": "\n".join(lines)}
        if handle is None:
            handle = display(data, raw=True, display_id=True)
        else:
            handle.update(data, raw=True)

    def clear():
        if handle is not None:
            handle.update({"text/plain": ""}, raw=True)

    return Progress(model, n, render, clear)


def _terminal(model, n, stream):
    width = 0

    def render(lines):
        nonlocal width
        # One line: the summary, then each worker's state, cut to the terminal.
        text = lines[0] + " |" + " |".join(line.replace("  worker ", " w") for line in lines[1:])
        text = text[:159]
        stream.write("\r" + text.ljust(width))
        stream.flush()
        width = max(width, len(text))

    def clear():
        stream.write("\r" + " " * width + "\r")
        stream.flush()

    return Progress(model, n, render, clear)
