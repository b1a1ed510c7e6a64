"""`mergescope dashboard` warms the server up when the server starts, not when a browser connects.

The launcher is run as a subprocess on a free port, and no browser or session ever connects: the
warm-up's lines in the terminal (pages/_server.py) must still reach "ready". A session that opens
later finds the Readiness the server's start began (one st.cache_resource for the whole process),
and a stop in the middle of the warm-up ends the server cleanly instead of aborting in torch.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.browser_support import HANG_GUARD_S, free_port, stop_process

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "mergescope warm-up: "


class Launched:
    """`python -m merging dashboard` in a subprocess, its output read line by line as it comes."""

    def __init__(self, process: subprocess.Popen, port: int) -> None:
        self.process, self.port = process, port
        self.lines: list[str] = []
        self._new_line = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            with self._new_line:
                self.lines.append(line.rstrip("\n"))
                self._new_line.notify_all()
        with self._new_line:
            self.lines.append("<end of output>")
            self._new_line.notify_all()

    def wait_for(self, wanted: Callable[[str], bool], timeout: float) -> str:
        """The first line for which `wanted` holds; fails with the whole output after `timeout` s."""
        deadline = time.monotonic() + timeout
        with self._new_line:
            while True:
                found = next((line for line in self.lines if wanted(line)), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                assert left > 0 and self.lines[-1:] != ["<end of output>"], "\n".join(self.lines)
                self._new_line.wait(left)

    def warm_up_lines(self) -> list[str]:
        with self._new_line:
            return [line.removeprefix(PREFIX) for line in self.lines if line.startswith(PREFIX)]


@contextmanager
def launched(tmp_path: Path, **env: str) -> Iterator[Launched]:
    port = free_port()
    full_env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),  # this checkout's merging/, from a folder with no project files
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "MERGESCOPE_WARM_UP": "1",
        **env,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "merging", "dashboard", "--port", str(port)],
        cwd=tmp_path,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield Launched(process, port)
    finally:
        if process.poll() is None:
            stop_process(process)


def test_the_dashboard_command_warms_up_before_any_browser_connects(tiny_zoo, tmp_path):
    with launched(tmp_path, MERGESCOPE_ZOO=str(tiny_zoo)) as server:
        server.wait_for(lambda line: "URL: http://127.0.0.1:" in line, timeout=HANG_GUARD_S)
        last = server.wait_for(lambda line: re.match(rf"{PREFIX}(ready|done) in ", line) is not None, timeout=HANG_GUARD_S)
        # every step's end, in order, then the total: nothing failed on the tiny zoo
        told = server.warm_up_lines()
        assert told[:6] == [
            "base model ready", "single adapters ready", "first merge ready", "cross-task matrix ready", "other adapters ready",
            "tour ready",
        ]
        seconds = float(re.fullmatch(rf"{PREFIX}ready in (\d+\.\d) s", last).group(1))
        assert seconds > 0  # how long is the machine's business; that it ended and said so is the claim
        assert len(told) == 7
        # the server still serves after its warm-up, and a stop ends it cleanly
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/_stcore/health", timeout=10) as reply:
            assert reply.read().decode() == "ok"
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=HANG_GUARD_S) == 0


def test_the_dashboard_command_says_when_the_warm_up_is_turned_off(tiny_zoo, tmp_path):
    with launched(tmp_path, MERGESCOPE_ZOO=str(tiny_zoo), MERGESCOPE_WARM_UP="0") as server:
        server.wait_for(lambda line: line.startswith(PREFIX), timeout=HANG_GUARD_S)
        assert server.warm_up_lines() == ["off (MERGESCOPE_WARM_UP=0)"]


# A job of the dashboard inside torch (its GIL released) while Streamlit's command line returns: the
# interpreter's shutdown would abort the process. Streamlit's own stop is replaced by a SystemExit,
# so that the warm-up's thread is surely inside a matrix product when it comes.
STOP_WHILE_IN_TORCH = """
import sys, threading, time
sys.path.insert(0, sys.argv[1])
import torch
from streamlit.web import cli
from pages import _server

torch.set_num_threads(1)
inside = threading.Event()

def job():
    product = torch.randn(1200, 1200)
    inside.set()
    while True:
        product @ product

threading.Thread(target=job, name="mergescope-server-warm-up", daemon=True).start()
inside.wait()

def streamlit_stops(args, prog_name):
    time.sleep(0.3)
    raise SystemExit(int(sys.argv[2]))

cli.main = streamlit_stops
_server.main(["run", "app.py"])
"""


@pytest.mark.parametrize("code", [0, 2])
def test_a_stop_during_the_warm_up_ends_the_server_with_streamlits_exit_code_not_an_abort(code):
    done = subprocess.run(
        [sys.executable, "-c", STOP_WHILE_IN_TORCH, str(ROOT), str(code)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    # not 134 with "terminate called without an active exception", as a plain shutdown gives
    assert done.returncode == code, done.stdout + done.stderr
    assert "terminate called" not in done.stderr


def test_a_session_shows_the_readiness_the_server_start_began(app_test, monkeypatch, capsys):
    """The server's thread runs outside any session (no ScriptRunContext); the first session's
    app.py finds its warm-up done instead of starting one of its own."""
    from pages import _server, _warm

    monkeypatch.setenv("MERGESCOPE_WARM_UP", "1")
    _warm._started.clear()
    _warm.cross_task_results.clear()
    try:
        started = {}

        def at_server_start() -> None:
            started["readiness"] = _warm.start("cpu")
            _server.report(started["readiness"], poll=0.05)

        thread = threading.Thread(target=at_server_start)
        thread.start()
        thread.join(timeout=HANG_GUARD_S)
        assert not thread.is_alive()
        assert capsys.readouterr().out.splitlines()[-1].startswith("mergescope warm-up: ready in ")
        at = app_test.run()  # the fixture's session asks for the same device, "cpu"
        assert not at.exception
        assert _warm.start("cpu") is started["readiness"]
        assert any(c.value.startswith("Ready: ✓ base model") for c in at.sidebar.caption), [
            c.value for c in at.sidebar.caption
        ]
    finally:
        _warm._started.clear()
        _warm.cross_task_results.clear()


def test_the_report_names_each_failed_step_and_says_the_pages_work_without_it(capsys):
    from pages._server import report
    from pages._warm import Readiness

    readiness = Readiness(
        state={
            "base model": "ready",
            "single adapters": "ready",
            "first merge": "failed: RuntimeError: out of memory",
            "cross-task matrix": "failed: skipped",
            "other adapters": "failed: skipped",
        },
        seconds=12.34,
    )
    report(readiness)
    assert capsys.readouterr().out.splitlines() == [
        "mergescope warm-up: base model ready",
        "mergescope warm-up: single adapters ready",
        "mergescope warm-up: first merge failed: RuntimeError: out of memory",
        "mergescope warm-up: cross-task matrix failed: skipped",
        "mergescope warm-up: other adapters failed: skipped",
        "mergescope warm-up: done in 12.3 s, failed: first merge, cross-task matrix, other adapters (the pages work without it)",
    ]
    report(Readiness(state=dict.fromkeys(readiness.state, "off"), seconds=0.0))
    assert capsys.readouterr().out == "mergescope warm-up: off (MERGESCOPE_WARM_UP=0)\n"


@pytest.mark.browser
def test_a_deep_link_as_a_fresh_servers_first_request_opens_the_page_inside_the_app(tiny_zoo, tmp_path):
    """A speaker's link to one page (/runs here, /tour?present=1 in a talk) as the very first request:
    app.py must run around the page (its sidebar settings, its seven pages), not the page alone with
    every file of pages/ — helpers included — listed as a page (Streamlit's pages/ folder mode)."""
    from tests.browser_support import browser_page

    with launched(tmp_path, MERGESCOPE_ZOO=str(tiny_zoo), MERGESCOPE_WARM_UP="0") as server, \
            browser_page(1280, 720) as page:  # fmt: skip
        server.wait_for(lambda line: "URL: http://127.0.0.1:" in line, timeout=HANG_GUARD_S)
        page.goto(f"http://127.0.0.1:{server.port}/runs")  # browser_page's default timeout: the hang guard
        page.get_by_text("Workspace folder").first.wait_for()  # app.py's sidebar
        page.locator('[data-testid="stSidebarNavLink"]').first.wait_for()
        names = [n.strip().splitlines()[-1].strip() for n in page.locator('[data-testid="stSidebarNavLink"]').all_inner_texts()]  # the last line: the icon's name comes first
        assert names == ["Merge", "Interference", "Sweep", "Search", "Adapters", "Runs", "Tour"], names
        page.get_by_role("heading", name="Runs").first.wait_for()  # and the page itself
