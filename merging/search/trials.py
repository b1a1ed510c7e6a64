"""A trial of the search, the part both backends share: the error the CLI turns into exit 2, the
optional packages, and scoring one trial into an outcome (merging.search.study runs them in-process,
merging.search.ray_backend on Ray actors)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

Scorer = Callable[[dict], "tuple[float, dict | None]"]  # params -> (dev objective, dev evaluation JSON)
MAX_RETRIES = 2
INSTALL_HINT = "pip install -r requirements-search.txt  (or: pip install 'mergescope[search]')"
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the merging package, shipped to Ray workers


class SearchError(ValueError):
    """A search that cannot run as asked, with a message fit for the user (the CLI exits 2)."""


def require_optuna():
    try:
        import optuna
    except ImportError as err:
        raise SearchError(f"the λ search needs Optuna, which is not installed; run: {INSTALL_HINT}") from err
    return optuna


def require_ray():
    try:
        import ray
    except ImportError as err:
        raise SearchError(f"--ray needs Ray, which is not installed; run: {INSTALL_HINT}") from err
    return ray


def worker_name() -> str:
    """host:pid of the process that runs a trial."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class TrialOutcome:
    number: int
    params: dict
    dev_objective: float
    worker: str
    seconds: float
    dev: dict | None = None  # the dev evaluation's JSON (not an evaluation result: see the module doc)
    attempts: int = 1

    def to_dict(self) -> dict:
        return {
            "number": self.number,
            "params": self.params,
            "dev_objective": self.dev_objective,
            "worker": self.worker,
            "seconds": round(self.seconds, 3),
            "attempts": self.attempts,
        }


def score_trial(scorer: Scorer, number: int, params: dict) -> TrialOutcome:
    start = time.perf_counter()
    value, details = scorer(params)
    return TrialOutcome(number, dict(params), float(value), worker_name(), time.perf_counter() - start, details)
