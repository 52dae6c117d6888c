"""A notebook exported to HTML shows its report and timeline in a real browser.

Notebook 01 is executed (tests/test_notebooks.py shares the run), exported
with nbconvert's HTMLExporter as `make notebooks` exports it, and opened in
headless Chromium. Two looks: the DOM after the page has loaded must hold
the report table and the timeline <img> (inline PNG), and a screenshot must
show the timeline's dark lanes, i.e. the image really decoded and rendered.
The page is read offline: every host name fails to resolve, so the CDN
scripts nbconvert's template links to cannot load, as for a reader without
a network.

Chromium is Debian's ``chromium`` package; .ci/run installs it. Without it
the test skips, except in CI (``CI`` set), where it fails.

    python tests/test_browser.py docs/notebook-01-screenshot.png

executes notebook 01 and saves the same screenshot there.
"""
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_notebooks import executed, run_notebooks  # noqa: E402

NOTEBOOK = "01-the-gil-in-one-cell"
# The darkest shade of the timeline's colour map (matplotlib "Blues" at 1.0:
# a worker that had a full core); nothing else on the page is this colour.
LANE_RGB = (8, 48, 107)
# Wide enough for the notebook's column; tall enough for the first report
# and its timeline.
WINDOW = "1000,1400"
BROWSER_TIMEOUT = 120


def chromium():
    """The path of a Chromium binary; skips (fails in CI) when there is none."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        message = "chromium is not installed (Debian: apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must run the browser test (.ci/run installs it)")
        pytest.skip(message)
    return path


def browse(browser, url, *args):
    """Run headless Chromium on ``url``; returns its stdout."""
    with tempfile.TemporaryDirectory(prefix="concmagic-chromium-") as profile:
        proc = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}",
             "--host-resolver-rules=MAP * ~NOTFOUND",      # offline: no CDN
             f"--window-size={WINDOW}", *args, url],
            capture_output=True, text=True, encoding="utf-8", errors="replace",
            timeout=BROWSER_TIMEOUT)
    assert proc.returncode == 0, f"chromium exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc.stdout


def export(path):
    """Execute notebook 01 (once per session) and write its HTML to ``path``."""
    nb, _ = executed(NOTEBOOK)
    path.write_text(run_notebooks.export_html(nb), encoding="utf-8")
    return path


def screenshot(browser, page, png):
    browse(browser, page.as_uri(), f"--screenshot={png}")
    assert png.exists() and png.stat().st_size > 0, "chromium wrote no screenshot"
    return png


def lane_pixels(png):
    """How many pixels of the screenshot are the timeline's darkest blue."""
    import numpy as np
    from matplotlib.image import imread

    rgb = (imread(png)[..., :3] * 255).astype(int)
    return int((np.abs(rgb - LANE_RGB).sum(axis=-1) < 30).sum())


@pytest.mark.timeout(300)
def test_the_exported_notebook_renders_its_report_and_timeline(tmp_path):
    browser = chromium()
    page = export(tmp_path / f"{NOTEBOOK}.html")

    dom = browse(browser, page.as_uri(), "--dump-dom")
    assert "01 · The GIL in one cell" in dom, "the page did not render the notebook"
    assert '<table class="concmagic-report">' in dom
    assert 'src="data:image/png;base64,' in dom
    assert dom.count('<table class="concmagic-report">') >= 5   # 4 runs and a comparison

    png = screenshot(browser, page, tmp_path / "page.png")
    # The first report's timeline is within the window: a lane fully shaded
    # (one thread, one core) is thousands of pixels of its darkest blue.
    assert lane_pixels(png) > 2000, "no timeline lane is visible in the screenshot"


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/notebook-01-screenshot.png")
    browser = shutil.which("chromium") or sys.exit("chromium is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        page = export(Path(tmp) / f"{NOTEBOOK}.html")
        screenshot(browser, page, out.resolve())
    print(f"wrote {out}")
