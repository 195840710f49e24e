"""Notebook 01's explorer in a real browser: JupyterLab served here, driven by Debian's Chromium.

The unit tests of ``test_viz_memory_views.py`` call the explorer's callback directly. This test checks what
they cannot: that the widget renders in JupyterLab and that a slider moved with the keyboard redraws it.

1. Start JupyterLab on a free localhost port, with a token, serving ``notebooks/``. Autosave is off (a
   settings override in a temporary folder), checkpoints go to that folder too, and the notebook's bytes
   are checked afterwards, so the committed notebook is never rewritten.
2. Open ``01_linear_memory.ipynb`` in Chromium and run the two cells the explorer needs: the setup cell and
   the explorer cell.
3. Check the readout and the plot, press ArrowRight on the theta slider, and check that both change.
4. Save a screenshot to ``tests/artifacts/browser_widget.png``.

Skipped, with the reason, only when ``/usr/bin/chromium`` is absent or playwright is not importable
(``browser.py``, shared with the website's test).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from browser import chromium, free_port, require_browser

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
NOTEBOOK = "01_linear_memory.ipynb"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
SERVER_START_S = 45  # JupyterLab start on a busy 2-core machine
KERNEL_RUN_MS = 60_000  # the two cells, kernel start included
UI_MS = 30_000  # page load and redraws


def _cell_index(cells: list[dict], needle: str) -> int:
    for i, cell in enumerate(cells):
        if cell["cell_type"] == "code" and needle in "".join(cell["source"]):
            return i
    raise AssertionError(f"{NOTEBOOK} has no code cell containing {needle!r}")


def _wait_for_server(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"JupyterLab exited with code {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"JupyterLab did not answer within {SERVER_START_S} s:\n{log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen) -> None:
    """Stop the server we started, and everything it started (its own process group)."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@pytest.fixture
def jupyter_lab(tmp_path):
    """A JupyterLab serving ``notebooks/``: yields ``(base_url, token)``; always stopped afterwards."""
    port, token = free_port(), "titans-edu-browser-test"
    overrides = {  # user settings of JupyterLab, in a temporary folder: no autosave, no news pop-up
        "docmanager-extension/plugin": {"autosave": False},
        "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    }
    for name, values in overrides.items():
        file = tmp_path / "settings" / "@jupyterlab" / f"{name}.jupyterlab-settings"
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps(values))
    log = tmp_path / "jupyter.log"
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), PYTHONUNBUFFERED="1")
    command = [
        sys.executable, "-m", "jupyter", "lab", "--allow-root", "--no-browser",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={NOTEBOOKS}",
        f"--LabApp.user_settings_dir={tmp_path / 'settings'}", f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
        f"--FileCheckpoints.root_dir={tmp_path / 'checkpoints'}",  # keep notebooks/ free of .ipynb_checkpoints
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp, to run cells by command
    ]
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                                   start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for_server(f"{base}/api/status?token={token}", process, log)
        yield base, token
    finally:
        _stop(process)


RUN_CELLS = """
async (indices) => {
    const app = window.jupyterapp;
    const panel = app.shell.currentWidget;
    await panel.context.ready;
    await panel.sessionContext.ready;
    for (const i of indices) {
        panel.content.activeCellIndex = i;
        await app.commands.execute('notebook:run-cell');
    }
}
"""


def test_linear_memory_explorer_redraws_when_a_slider_moves(jupyter_lab):
    _, expect = require_browser()

    base, token = jupyter_lab
    path = NOTEBOOKS / NOTEBOOK
    committed = path.read_bytes()
    cells = json.loads(committed)["cells"]
    indices = [_cell_index(cells, "setup()"), _cell_index(cells, "linear_memory_explorer()")]
    assert indices[0] < indices[1]
    ARTIFACTS.mkdir(exist_ok=True)

    try:
        with chromium() as browser:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(UI_MS)
            page.goto(f"{base}/lab/tree/{NOTEBOOK}?token={token}")
            page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                                   " && window.jupyterapp.shell.currentWidget.content", timeout=UI_MS)
            page.evaluate(RUN_CELLS, indices)

            readout = page.locator(".titans-readout").first
            expect(readout).to_contain_text("theta = 0.50", timeout=KERNEL_RUN_MS)
            expect(readout).to_contain_text("mean recall error")
            explorer = readout.locator("xpath=..")  # the explorer's VBox
            image = explorer.locator(".widget-output img").first
            expect(image).to_be_visible()
            before_text, before_image = readout.inner_text(), image.get_attribute("src")

            handle = explorer.locator(".noUi-handle").first  # the theta slider: ipywidgets 8 uses noUiSlider
            handle.focus()
            page.keyboard.press("ArrowRight")  # one step: theta 0.50 -> 0.55
            expect(readout).to_contain_text("theta = 0.55")
            expect(explorer.locator(".widget-output img").first).not_to_have_attribute("src", before_image)
            assert readout.inner_text() != before_text

            explorer.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "browser_widget.png"))
    finally:
        changed = path.read_bytes() != committed
        if changed:  # never leave the committed notebook rewritten by the browser session
            path.write_bytes(committed)
        assert not changed, f"{NOTEBOOK} was modified on disk during the browser test (restored)"
