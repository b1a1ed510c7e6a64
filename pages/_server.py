"""The dashboard's server entry: Streamlit's own command line, with the server's warm-up started when
the server starts. `mergescope dashboard` (merging/cli.py) runs this file in place of
`python -m streamlit run app.py`, with the same arguments.

Why: Streamlit runs no script before a browser session connects, so a warm-up started by app.py
(pages/_warm.py) begins only when someone opens the page. A speaker who starts the server minutes
before a talk wants those minutes used: the base model, every zoo adapter alone, the Merge page's
first merge and the cross-task matrix are computed while nobody is looking, and the terminal says
when they are ready.

How: a daemon thread waits until Streamlit's Runtime is running, then calls `pages._warm.start` with
the device a new session asks for ("auto"). That function is an `st.cache_resource`, and Streamlit's
resource caches belong to the process, not to a session: the first session's own call finds the
Readiness started here and shows it, without starting a second warm-up. The thread then prints one
line per finished step and one when all is done. The main thread hands over to
`streamlit.web.cli.main`, so flags, config and signals behave as under `streamlit run`.
`MERGESCOPE_WARM_UP=0` turns the warm-up off here as in the sessions.

Run as a file, Python puts pages/ first on sys.path; the app folder goes there instead, so that
`pages._warm` here and in app.py is one module (Streamlit adds the same folder for app.py).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

APP_FOLDER = Path(__file__).resolve().parent.parent
DEVICE = "auto"  # the sidebar's default: what a new session's app.py asks the warm-up for
PREFIX = "mergescope warm-up:"


def say(text: str) -> None:
    """One line in the terminal the server was started from."""
    print(f"{PREFIX} {text}", flush=True)


def wait_for_running_runtime(poll: float = 0.1) -> bool:
    """Block until Streamlit's Runtime serves (True), or has stopped before it did (False)."""
    from streamlit.runtime import Runtime, RuntimeState

    serving = {RuntimeState.NO_SESSIONS_CONNECTED, RuntimeState.ONE_OR_MORE_SESSIONS_CONNECTED}
    while True:
        if Runtime.exists():
            state = Runtime.instance().state
            if state in serving:
                return True
            if state in (RuntimeState.STOPPING, RuntimeState.STOPPED):
                return False
        time.sleep(poll)


def report(readiness, poll: float = 0.25) -> None:
    """Print each step's end as it happens, then the total (or what failed), from a Readiness."""
    from pages._warm import STEPS

    steps = [step for step in STEPS if step in readiness.state] + [s for s in readiness.state if s not in STEPS]
    if all(readiness.state.get(step) == "off" for step in steps):
        say("off (MERGESCOPE_WARM_UP=0)")
        return
    told: set[str] = set()
    while True:
        done = readiness.done  # read before the steps: every step's end is told before the total
        for step in steps:
            value = readiness.state[step]
            if step in told or value in ("waiting", "running"):
                continue
            told.add(step)
            say(f"{step} {value}")
        if done:
            break
        time.sleep(poll)
    seconds = readiness.seconds if readiness.seconds is not None else time.perf_counter() - readiness.started
    failed = [step for step in steps if readiness.state[step] not in ("ready", "off")]
    if failed:
        say(f"done in {seconds:.1f} s, failed: {', '.join(failed)} (the pages work without it)")
    else:
        say(f"ready in {seconds:.1f} s")


def warm_up_at_server_start() -> None:
    """The warm-up thread: wait for the server, start the shared warm-up, report it."""
    try:
        if not wait_for_running_runtime():
            return
        from pages import _warm

        report(_warm.start(DEVICE))
    except Exception as err:  # the server runs on without a warm-up; sessions try again themselves
        say(f"failed: {type(err).__name__}: {err}")


def main(argv: list[str]) -> None:
    if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
        sys.path[0] = str(APP_FOLDER)
    elif str(APP_FOLDER) not in sys.path:
        sys.path.insert(0, str(APP_FOLDER))
    from merging.core import jobs
    from pages._ui import app_navigation_only

    app_navigation_only()  # a deep link as the first request still goes through app.py
    jobs.start_thread("server-start-warm-up", warm_up_at_server_start)
    from streamlit.web import cli

    try:
        cli.main(args=argv, prog_name="streamlit")  # returns by SystemExit when the server stops
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if stop.code is not None and not isinstance(stop.code, int):
            print(stop.code, file=sys.stderr)
        # A warm-up (or a page's job) still inside torch when the interpreter shuts down aborts the
        # process ("terminate called without an active exception", exit 134): a Ctrl-C during the
        # warm-up would end in a crash. Streamlit has stopped by now; leave without the shutdown.
        if jobs.our_threads_alive():
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        raise


if __name__ == "__main__":
    main(sys.argv[1:])
