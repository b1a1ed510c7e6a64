"""Start the dashboard on a free port and drive it with Debian's Chromium through Playwright.

Used by the real-browser test and by scripts/screenshots.py. Playwright drives /usr/bin/chromium;
it never downloads a browser of its own.

Waiting: every wait ends on the page's state (an element shown, Plotly's charts drawn and no longer
changing, a value read back), never after a fixed time. The one time limit, HANG_GUARD_S, only stops
a test that hangs: a busy machine is slow, not stuck, so it is far above any run's real duration.
`browser_page` makes it Playwright's default timeout, so a plain click or wait_for uses it too.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HANG_GUARD_S = 900.0  # against a hang only; see the module's docstring
HANG_GUARD_MS = int(HANG_GUARD_S * 1000)
CHROMIUM = os.environ.get("MERGESCOPE_CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium keeps trying to reach the network, which this
# machine's closed network refuses many times a second.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def stop_process(process: subprocess.Popen, timeout: float = 30) -> None:
    """Ask a server to stop (SIGTERM); kill it if it has not within `timeout` s."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


# True once the same signature was read `polls` times in a row (the page polls it every 250 ms).
_SETTLED = """([signature, polls, key]) => {
  const state = (window.__mergescopeSettled = window.__mergescopeSettled || {});
  const last = state[key];
  if (signature === null || !last || last.signature !== signature) {
    state[key] = {signature: signature, count: 1};
    return false;
  }
  last.count += 1;
  return last.count >= polls;
}"""

# The drawn charts' sizes and text counts, or null while fewer than `count` are drawn.
_CHARTS_SIGNATURE = """(count) => {
  const plots = Array.from(document.querySelectorAll('.js-plotly-plot'));
  if (plots.length < count) return null;
  if (!plots.every(p => p._fullLayout && p._fullData && p.querySelector('.main-svg'))) return null;
  return JSON.stringify(plots.map(p => {
    const r = p.getBoundingClientRect();
    return [p._fullLayout.width, p._fullLayout.height, Math.round(r.width), Math.round(r.height),
            p.querySelectorAll('svg text').length];
  }));
}"""


def wait_until_settled(page, signature_js: str, arg=None, polls: int = 4, key: str = "default") -> None:
    """Wait until `signature_js(arg)` (a JS function; null = not ready) gives the same value `polls`
    times in a row, 250 ms apart: the page reached a state and stays in it."""
    page.evaluate("key => { if (window.__mergescopeSettled) delete window.__mergescopeSettled[key]; }", key)
    page.wait_for_function(
        f"([arg, polls, key]) => ({_SETTLED})([({signature_js})(arg), polls, key])",
        arg=[arg, polls, key], polling=250, timeout=HANG_GUARD_MS,
    )


def wait_for_plotly(page, count: int = 1) -> None:
    """Wait until at least `count` Plotly charts are drawn and none changes size or text any more
    (Plotly's relayout to the window, Streamlit's reruns replacing a chart)."""
    wait_until_settled(page, _CHARTS_SIGNATURE, count, key="charts")


_IDLE = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  return app && app.getAttribute('data-test-script-state') === 'notRunning' ? 'idle' : null;
}"""


def wait_for_app_idle(page) -> None:
    """Wait until Streamlit's script run has ended and no new one started for a second: the reruns a
    result triggers (the URL's recipe, the scroll to the result) are over, so a click is not undone."""
    wait_until_settled(page, _IDLE, key="idle")


def wait_until_still(locator) -> None:
    """Wait until an element stops moving (after a scroll, or while the page above it grows)."""
    handle = locator.element_handle(timeout=HANG_GUARD_MS)
    signature = "(e) => { const r = e.getBoundingClientRect(); return JSON.stringify([r.top, r.left, r.height]); }"
    wait_until_settled(locator.page, signature, handle, key="still")


def shown_charts(page) -> dict[str, dict[str, dict[str, float]]]:
    """{chart title: {trace name: {x: y}}} of every Plotly chart as the browser drew it."""
    wait_for_plotly(page)
    figures = page.evaluate(
        """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(plot => ({
            title: String((plot.layout && plot.layout.title && plot.layout.title.text) || ''),
            traces: (plot._fullData || plot.data).map(t => ({
                name: t.name, x: Array.from(t.x || []), y: Array.from(t.y || [])}))
        }))"""
    )
    return {f["title"]: {t["name"]: dict(zip(t["x"], t["y"])) for t in f["traces"]} for f in figures}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_app(env: dict[str, str] | None = None, timeout: float = HANG_GUARD_S) -> Iterator[str]:
    """Serve app.py on 127.0.0.1 and a free port; yield its URL; stop the server afterwards.

    The server computes with one OpenMP thread unless `env` says otherwise: the tests compare its
    numbers with a CLI subprocess run with one thread, and float sums depend on the thread count."""
    port = free_port()
    command = [
        sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
        "--server.port", str(port), "--server.address", "127.0.0.1", "--server.headless", "true",
        "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
    ]
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    log = open(ROOT / "artifacts" / f"streamlit-{port}.log", "w") if (ROOT / "artifacts").is_dir() else subprocess.DEVNULL
    process = subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"streamlit exited with code {process.returncode} before serving")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"streamlit did not answer on {url} within {timeout:.0f} s")
            time.sleep(0.3)
        yield url
    finally:
        stop_process(process, timeout=10)
        if log is not subprocess.DEVNULL:
            log.close()


@contextlib.contextmanager
def browser_page(width: int = 1400, height: int = 1000):
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise FileNotFoundError(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(HANG_GUARD_MS)  # every wait ends on the page's state; this only stops a hang
            try:
                yield page
            except Exception:
                _keep_failed_page(page)
                raise
        finally:
            browser.close()


def _keep_failed_page(page) -> None:
    """A failed browser test leaves the page as it was (screenshot, visible text, URL) in artifacts/, so
    a wait that ran into the hang guard on a loaded CI runner says what the page was showing."""
    folder = ROOT / "artifacts"
    stamp = f"failed-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    with contextlib.suppress(Exception):  # the page may be gone; the test's own error is what matters
        folder.mkdir(exist_ok=True)
        page.screenshot(path=str(folder / f"{stamp}.png"), timeout=30_000)
        (folder / f"{stamp}.txt").write_text(f"{page.url}\n\n{page.inner_text('body', timeout=30_000)}", encoding="utf-8")
