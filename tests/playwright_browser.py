"""A real browser for the tests, started by jupyter_tunnel.py through ``-b``.

Usage (as ``-b``): ``python tests/playwright_browser.py URL`` with ``JT_BROWSER_RESULT`` set
to a file.  It opens URL (the tool's one-time address) in headless Debian Chromium, driven
by Playwright, waits until JupyterLab's own UI has rendered (or the login page shows up, or
60 s pass), and writes what a person would see as JSON to JT_BROWSER_RESULT: the URL it was
given, where it landed, the page title, whether the lab UI rendered, the chain of redirects
it followed, and what the same address shows to a browser without the token (the control).
With ``JT_BROWSER_GO`` set to a file, the tab then stays open: once that file exists (the
test has cut the tunnel's connection), the page asks its server for ``api/kernels`` until it
answers 200 or 90 s pass, as JupyterLab's own polling would, and the result is written again
with what it got (``after_drop``).  With ``JT_BROWSER_CELL`` set, it also opens a notebook from
the launcher and runs a cell (``cell``: its output; the kernel's websocket goes through the
tunnel too), and after the drop another one (``cell_after_drop``).  Playwright's own browser download needs the internet:
Debian's ``chromium`` (``/usr/bin/chromium``, or ``JT_CHROMIUM``) is used instead.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time

# Only JupyterLab's authenticated shell has its main dock panel; the login page (a form with
# a password/token field) has none.
LAB_UI = "#jp-main-dock-panel"
LOGIN_FORM = "input[type=password]"
WAIT_MS = 60_000
AFTER_DROP_MS = 60_000
NOTEBOOK_IN_FRONT = ".jp-NotebookPanel:not(.lm-mod-hidden)"  # Lumino hides the tabs behind


def write_result(path: str, result: dict) -> None:
    """Write the result atomically: the test polls for the file."""
    with open(path + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(path + ".tmp", path)


def shows(page) -> str:
    """``lab`` or ``login``: whichever the page renders first."""
    page.wait_for_selector(f"{LAB_UI}, {LOGIN_FORM}", timeout=WAIT_MS)
    return "lab" if page.locator(LAB_UI).count() else "login"


def visit(browser, url: str, result: dict) -> None:
    """Open ``url``, note the redirects followed and what the page shows; then, as a control,
    open where it landed in a fresh context (no cookie, no token): that must be the login."""
    page = browser.new_page()
    response = page.goto(url, wait_until="commit", timeout=WAIT_MS)
    chain = []
    request = response.request if response else None
    while request is not None:
        chain.insert(0, request.url)
        request = request.redirected_from
    result["redirects"] = chain
    result["lab_ui"] = shows(page) == "lab"
    result.update(final_url=page.url, title=page.title())
    stranger = browser.new_context().new_page()
    stranger.goto(page.url.split("?")[0], wait_until="commit", timeout=WAIT_MS)
    result["without_token"] = shows(stranger)
    if os.environ.get("JT_BROWSER_CELL") and result["lab_ui"]:
        try:
            # a new launcher: the lab may restore the user's last layout, a notebook in front
            page.locator('[data-command="launcher:create"]').first.click(timeout=WAIT_MS)
            page.locator('.jp-LauncherCard[data-category="Notebook"]:visible').first.click(timeout=WAIT_MS)
            result["cell"] = run_cell(page, "print(6 * 7)", 0)
        except Exception as error:  # the test tells what, and a screenshot shows it
            result["cell"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            page.screenshot(path=os.environ["JT_BROWSER_RESULT"] + ".png")
    go = os.environ.get("JT_BROWSER_GO")
    if go:
        stay(page, go, result)


def run_cell(page, code: str, number: int, wait_ms: int = WAIT_MS, idle_first: bool = True) -> str:
    """Type ``code`` into the open notebook's last cell, run it (Shift+Enter), and return the
    text of output ``number`` of the notebook once the kernel has answered."""
    notebook = page.locator(f"{NOTEBOOK_IN_FRONT} .jp-Notebook")
    # a cell run before the kernel is up stays unrun ("[ ]"): the status bar says when it is
    if idle_first:
        page.locator(".jp-StatusBar-TextItem", has_text=re.compile(r"\| Idle$")).first.wait_for(timeout=wait_ms)
    editor = notebook.locator(".jp-Cell .cm-content").last
    editor.wait_for(timeout=WAIT_MS)
    editor.click()
    page.keyboard.type(code)
    page.keyboard.press("Shift+Enter")
    output = notebook.locator(".jp-OutputArea-output").nth(number)
    output.wait_for(timeout=wait_ms)
    return output.inner_text()


def stay(page, go: str, result: dict) -> None:
    """Keep the tab; once ``go`` exists, fetch api/kernels from it until it answers 200."""
    # its pid: it runs in a session of its own (the tool detaches the browser), so a test that
    # fails before "go" must be able to stop it
    write_result(os.environ["JT_BROWSER_RESULT"], dict(result, waiting=True, pid=os.getpid()))
    deadline = time.monotonic() + 300
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.1)
    statuses: list = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and statuses[-1:] != [200]:
        statuses.append(page.evaluate(
            "async () => { try { return (await fetch(new URL('/api/kernels', location.href),"
            " {cache: 'no-store'})).status; } catch (e) { return String(e); } }"))
        time.sleep(0.2)
    result["after_drop"] = statuses
    if "cell" in result and statuses[-1:] == [200]:
        try:
            # the lab's kernel websocket comes back by itself; its status bar may say "Unknown"
            # until the kernel next speaks: the cell is run at once, its output awaited
            result["cell_after_drop"] = run_cell(page, "print(7 * 7)", 1, wait_ms=AFTER_DROP_MS, idle_first=False)
        except Exception as error:  # the test tells what, and a screenshot shows it
            result["cell_after_drop"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            page.screenshot(path=os.environ["JT_BROWSER_RESULT"] + ".png")


def main() -> int:
    url, result_path = sys.argv[1], os.environ["JT_BROWSER_RESULT"]
    result: dict = {"argv_url": url, "lab_ui": False}
    try:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            # --no-sandbox: the tests run as root, where Chromium refuses its sandbox
            browser = playwright.chromium.launch(
                executable_path=os.environ.get("JT_CHROMIUM", "/usr/bin/chromium"),
                headless=True, args=["--no-sandbox"])
            try:
                visit(browser, url, result)
            finally:
                browser.close()
    except Exception as error:  # refused, no answer, nothing rendered: the test tells what
        result["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    finally:
        write_result(result_path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
