"""Background work around a shared Lab: the one place that starts threads.

Why threads, not processes: CUDA must not be initialised in a forked child, and the model is shared
through one cached Lab (its `lock` serialises the work on it). Every thread is a daemon named
``mergescope-…``: the dashboard's server (pages/_server.py) looks for that prefix before it exits.

- :func:`start_thread`: run a function in a named daemon thread.
- :class:`Job` and :func:`start_job`: work with progress, Cancel, a result or an error, and an
  optional first look (`partial`) — what the pages poll.
- :func:`claim_warm_up` and :func:`warm_up_in_background`: score a Lab's single adapters once per
  Lab, whoever asks first (the server's warm-up or the Merge page).
"""

from __future__ import annotations

import threading
import time
import traceback
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from merging.core.progress import Cancelled

THREAD_PREFIX = "mergescope-"


def start_thread(name: str, target: Callable[..., Any], *args: Any) -> threading.Thread:
    """`target(*args)` in a daemon thread named ``mergescope-<name>``, started."""
    thread = threading.Thread(target=target, args=args, name=f"{THREAD_PREFIX}{name}", daemon=True)
    thread.start()
    return thread


def our_threads_alive() -> bool:
    """Whether a thread started here still runs (a warm-up or a job inside torch)."""
    return any(t.daemon and t.is_alive() and t.name.startswith(THREAD_PREFIX) for t in threading.enumerate())


@dataclass
class Job:
    label: str
    done: int = 0
    total: int = 1
    what: str = ""
    result: Any = None
    partial: Any = None  # a first look the work may publish before its result (e.g. a preview)
    error: str | None = None
    error_detail: str | None = None
    finished: bool = False
    cancel_event: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.perf_counter)
    seconds: float = 0.0

    @property
    def fraction(self) -> float:
        return min(max(self.done / self.total, 0.0), 1.0) if self.total else 0.0

    def progress(self, done: int, total: int, what: str) -> None:
        """The work's progress callback; raises Cancelled once Cancel was pressed."""
        if self.cancel_event.is_set():
            raise Cancelled()
        self.done, self.total, self.what = done, total, what

    def cancel(self) -> None:
        self.cancel_event.set()


def start_job(name: str, job: Job, work: Callable[[Callable[[int, int, str], None]], Any]) -> Job:
    """Run `work(job.progress)` in a thread; its result or error lands on `job`. The work must not
    call Streamlit; it may publish `job.partial`."""

    def target() -> None:
        try:
            job.result = work(job.progress)
        except Cancelled:
            job.error = "Cancelled."
        except Exception as err:  # shown in the page; the app stays usable
            job.error = f"{type(err).__name__}: {err}"
            job.error_detail = traceback.format_exc()
        finally:
            job.seconds = time.perf_counter() - job.started
            job.finished = True

    start_thread(name, target)
    return job


_warm_ups: weakref.WeakSet = weakref.WeakSet()  # the Labs whose warm-up has started
_warm_ups_lock = threading.Lock()


def claim_warm_up(lab: Any) -> bool:
    """True for the first caller per Lab (who then warms it up), False for every later one."""
    with _warm_ups_lock:
        if lab in _warm_ups:
            return False
        _warm_ups.add(lab)
        return True


def warm_up_in_background(lab: Any, adapters: Callable[[], Sequence[Any]]) -> bool:
    """Once per Lab: score the adapters alone in a daemon thread (see Lab.warm_up). `adapters` is
    called only when this call starts the warm-up (loading them costs). True when it started one."""
    if not claim_warm_up(lab):
        return False
    start_thread("warm-up", lab.warm_up, list(adapters()))
    return True
