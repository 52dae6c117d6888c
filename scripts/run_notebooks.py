"""Execute the teaching notebooks top to bottom and export each to HTML.

    python scripts/run_notebooks.py [NAME ...]    (`make notebooks`)

    notebooks/NN-*.ipynb  --nbclient, a real ipykernel-->  notebooks/_build/NN-*.ipynb
                                                          notebooks/_build/NN-*.html

The committed notebooks carry no outputs (notebooks/build.py writes them);
what a reader wants to see is in notebooks/_build/, which git ignores. NAME
picks notebooks by prefix ("01", "03-processes"); none means all.

The kernel runs on this very interpreter, from a kernel spec made in a
temporary folder: whatever "python3" spec the machine has may belong to
another Python without concmagic. tests/test_notebooks.py uses the same
functions, so the tests execute exactly what `make notebooks` does.
"""
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
BUILD = NOTEBOOKS / "_build"

#: Seconds one cell may run. Every cell here takes a few seconds at most on
#: 2 cores; a minute means something hangs.
CELL_TIMEOUT = 120
#: Seconds a fresh kernel may take to answer (importing IPython on a loaded
#: machine is slow, but not this slow).
STARTUP_TIMEOUT = 60
_KERNEL = "concmagic-notebooks"


def notebook_paths(names=()):
    """The notebooks in order, or those whose names start with one of ``names``."""
    paths = sorted(NOTEBOOKS.glob("[0-9][0-9]-*.ipynb"))
    if names:
        paths = [p for p in paths if any(p.stem.startswith(n) for n in names)]
    return paths


@contextlib.contextmanager
def kernel_spec_manager():
    """A KernelSpecManager that knows one kernel: this interpreter's ipykernel."""
    from jupyter_client.kernelspec import KernelSpecManager

    with tempfile.TemporaryDirectory(prefix="concmagic-kernels-") as tmp:
        spec = Path(tmp) / _KERNEL
        spec.mkdir()
        (spec / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "concmagic notebooks", "language": "python",
        }))
        yield KernelSpecManager(kernel_dirs=[tmp], ensure_native_kernel=False)


def execute(path, cell_timeout=CELL_TIMEOUT):
    """Run the notebook at ``path`` in a fresh kernel (cwd: notebooks/);
    returns ``(executed notebook, seconds)``. A cell that raises, unless
    tagged ``raises-exception``, raises nbclient's CellExecutionError."""
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    with kernel_spec_manager() as ksm:
        # IPC sockets in the spec's temporary folder: a local kernel needs no
        # TCP port (and ipykernel warns about unencrypted TCP).
        km = KernelManager(kernel_name=_KERNEL, kernel_spec_manager=ksm, transport="ipc",
                           ip=str(Path(ksm.kernel_dirs[0]) / "kernel"))
        client = NotebookClient(nb, km=km, timeout=cell_timeout,
                                startup_timeout=STARTUP_TIMEOUT,
                                resources={"metadata": {"path": str(NOTEBOOKS)}})
        start = time.perf_counter()
        try:
            client.execute(cleanup_kc=True)
        finally:
            # nbclient shuts down only kernels it started itself.
            if km.has_kernel:
                km.shutdown_kernel(now=True)
        return nb, time.perf_counter() - start


def export_html(nb):
    """The executed notebook as one self-contained HTML page (images inline)."""
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    return body


def main(argv):
    paths = notebook_paths(argv)
    if not paths:
        print(f"no notebook in {NOTEBOOKS} matches {' '.join(argv)}", file=sys.stderr)
        return 2
    BUILD.mkdir(exist_ok=True)
    total = 0.0
    for path in paths:
        print(f"{path.name:45}", end=" ", flush=True)
        nb, seconds = execute(path)
        total += seconds
        nbformat.write(nb, BUILD / path.name)
        html = BUILD / f"{path.stem}.html"
        html.write_text(export_html(nb), encoding="utf-8")
        print(f"{seconds:5.1f} s  -> {html.relative_to(ROOT)}")
    print(f"{'all':45} {total:5.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
