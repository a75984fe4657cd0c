"""What a user sees in JupyterLab: notebook 05 run in headless Chromium, then the Workbench's Run button clicked.

Skipped, with the reason, where Chromium or Playwright is absent; ``.ci/run`` installs Debian's chromium so CI runs
it. Playwright drives the system Chromium (``executable_path``): no browser download.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.env import REPO_ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
    from playwright.sync_api import sync_playwright
except ImportError:  # the [browser] extra is not installed
    sync_playwright = None

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (Debian: apt-get install chromium)"),
    pytest.mark.skipif(sync_playwright is None, reason="playwright is not installed (pip install -e '.[browser]')"),
]
# a hang guard for the whole notebook, not a budget: a busy 2-core machine is slower, not wrong
HANG_GUARD_MS = 40 * 60 * 1000
# the flags a closed network needs: without them Chromium keeps dialling Google's hosts
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-default-apps"]
NOTEBOOK = "05_advance.ipynb"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def jupyter(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    shutil.copy(REPO_ROOT / "notebooks" / NOTEBOOK, root / NOTEBOOK)
    port, token = _free_port(), "lab-browser-test"
    env = {**os.environ, "LAB_MODEL": "tiny", "LAB_DEVICE": "cpu", "LAB_STEPS": "4", "LAB_REPEATS": "1",
           "LAB_COMPILE": "0", "JUPYTER_CONFIG_DIR": str(root / ".jupyter"), "HF_HUB_OFFLINE": "1"}
    log = (root / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", f"--port={port}",
         "--ServerApp.ip=127.0.0.1", f"--ServerApp.root_dir={root}", f"--IdentityProvider.token={token}",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.extension_manager=readonly", "--LabApp.expose_app_in_browser=True"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start: {(root / 'server.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield {"url": f"http://127.0.0.1:{port}/lab/tree/{NOTEBOOK}?token={token}", "root": root}
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _outputs_text(page, index: int) -> str:
    return page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".jp-OutputArea").inner_text()


def test_notebook_05_and_the_workbench_in_a_real_browser(jupyter):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            _run(page, jupyter)
        finally:
            page.screenshot(path=str(jupyter["root"] / "last.png"), full_page=True)
            browser.close()


def _run(page, jupyter) -> None:
    page.goto(jupyter["url"])
    page.wait_for_selector(".jp-Notebook .jp-Cell >> nth=3", timeout=180_000)  # the notebook is open
    page.wait_for_selector(".jp-StatusBar-TextItem:has-text('Idle')", timeout=180_000)  # and its kernel ready
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")  # Run ▸ Run All Cells
    cells = page.locator(".jp-Notebook .jp-CodeCell")
    last = cells.nth(cells.count() - 1)
    # the takeaway cell prints last: every cell before it has run
    last.locator(".jp-OutputArea-output").first.wait_for(timeout=HANG_GUARD_MS)
    page.wait_for_selector(".jp-StatusBar-TextItem:has-text('Idle')", timeout=HANG_GUARD_MS)

    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts()
    assert not [e for e in errors if "requires torchvision" in e], errors  # transformers' notices stay out
    assert not page.locator(".jp-OutputArea-output:has-text('Traceback')").count(), "a cell raised"
    takeaway = last.locator(".jp-OutputArea").inner_text()
    assert "Mixed precision" in takeaway and "{" not in takeaway
    assert page.locator(".jp-RenderedMarkdown table:has-text('Lanczos upscale')").count() == 1  # HiresTimes table

    bench = page.locator(".widget-vbox:has(button:has-text('Run'))").last
    listbox = bench.locator("select").first
    assert listbox.evaluate("el => el.scrollTop") == 0, "the recipe list opens at its first entry"
    assert listbox.evaluate("el => el.options[0].selected"), "the pre-selected recipe is the first one listed"
    bench.locator("button:has-text('Run')").click()
    status = bench.locator(".widget-html-content").first
    page.wait_for_function("el => /done:|Error/.test(el.innerText)", arg=status.element_handle(),
                           timeout=HANG_GUARD_MS)
    said = status.inner_text()
    assert said.startswith("done:"), said
    assert re.search(r"faster|slower|not distinguishable|no speed-up can be claimed", said), said
    assert not re.search(r"is \d+\.\d+x the speed", said), said  # no bare ratio without its verdict
    assert "bar-success" in (bench.locator(".progress-bar").first.get_attribute("class") or ""), "bar left half full"
    images = bench.locator(".jp-OutputArea-output img")
    assert images.count() >= 2
    assert all(images.nth(i).evaluate("im => im.naturalWidth") > 0 for i in range(images.count()))
    assert "verdict" in bench.locator(".jp-RenderedHTMLCommon table, table").first.inner_text()
    Path(jupyter["root"] / "status.txt").write_text(said)
