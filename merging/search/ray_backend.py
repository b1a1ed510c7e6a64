"""The Ray side of the λ search: the worker actors, the backend that keeps them busy and retries a
dead one's trial, and the runtime (a local one of our own, or an existing cluster).

Imported only when a search asks for Ray (`--ray`), so the in-process path never imports Ray.
Each actor builds its scorer once (merging.search.study.TrialScorer: a Lab, i.e. the base model, and the
dev sets) and then scores trials one at a time; the driver keeps one future per busy actor and
hands the results to Optuna's ask/tell loop (merging.search.study.run_study) as they land.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from merging.search.trials import MAX_RETRIES, PACKAGE_DIR, Scorer, SearchError, TrialOutcome, require_ray, score_trial


class _SearchWorker:
    """A Ray actor's body: builds its scorer once (loads the base model), then scores trials."""

    def __init__(self, make_scorer: Callable[[], Scorer]):
        self.scorer = make_scorer()

    def pid(self) -> int:
        return os.getpid()

    def run(self, number: int, params: dict) -> TrialOutcome:
        return score_trial(self.scorer, number, params)


@dataclass
class _Slot:
    actor: Any
    busy: bool = False


class RayBackend:
    """`workers` actors, one trial each at a time; a dead actor is replaced and its trial resubmitted.

    `on_submit(number, actor)` is told which actor runs each trial (tests kill one on purpose).
    """

    def __init__(
        self,
        make_scorer: Callable[[], Scorer],
        workers: int,
        actor_options: Mapping[str, Any] | None = None,
        max_retries: int = MAX_RETRIES,
        on_submit: Callable[[int, Any], None] | None = None,
    ):
        ray = require_ray()
        self.ray = ray
        self.remote_class = ray.remote(_SearchWorker)
        self.make_scorer = make_scorer
        self.options = {"num_cpus": 1, "max_restarts": 0, **(actor_options or {})}
        self.max_retries = max_retries
        self.on_submit = on_submit
        self.capacity = workers
        self.slots = [_Slot(self._new_actor()) for _ in range(workers)]
        self.in_flight: dict = {}  # future -> (slot, number, params, attempt)
        self.deaths: list[dict] = []

    def _new_actor(self):
        return self.remote_class.options(**self.options).remote(self.make_scorer)

    def _send(self, slot: _Slot, number: int, params: dict, attempt: int) -> None:
        slot.busy = True
        future = slot.actor.run.remote(number, params)
        self.in_flight[future] = (slot, number, params, attempt)
        if self.on_submit is not None:
            self.on_submit(number, slot.actor)

    def submit(self, number: int, params: dict) -> None:
        slot = next(s for s in self.slots if not s.busy)
        self._send(slot, number, params, 1)

    def next_finished(self) -> tuple[int, TrialOutcome | None]:
        ray = self.ray
        while True:
            ready, _ = ray.wait(list(self.in_flight), num_returns=1)
            future = ready[0]
            slot, number, params, attempt = self.in_flight.pop(future)
            try:
                outcome = ray.get(future)
            except ray.exceptions.RayActorError as err:
                self.deaths.append({"trial": number, "attempt": attempt, "error": type(err).__name__})
                with _quietly():
                    ray.kill(slot.actor, no_restart=True)
                slot.actor = self._new_actor()  # a fresh process loads the model again
                if attempt > self.max_retries:
                    slot.busy = False
                    return number, None  # given up: the trial counts as failed, the search goes on
                self._send(slot, number, params, attempt + 1)
                continue
            except ray.exceptions.RayTaskError as err:  # the trial itself failed: the same on any worker
                raise SearchError(f"trial {number} failed on a worker: {err.cause!r}") from err
            slot.busy = False
            return number, replace(outcome, attempts=attempt)

    def close(self) -> None:
        for slot in self.slots:
            with _quietly():
                self.ray.kill(slot.actor, no_restart=True)
        self.in_flight.clear()


class _quietly:
    """Ignore errors while cleaning up (the actor may already be gone)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return exc[0] is not None and issubclass(exc[0], Exception)


# ----------------------------------------------------------------------------------------------
# Ray runtimes: a local one we start, or an existing cluster we join


def parse_ray_address(address: str) -> tuple[str, int]:
    """host and port of `host:port` or `ray://host:port`; SearchError naming the address otherwise."""
    text = address.strip()
    bare = text.removeprefix("ray://")
    host, _, port = bare.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SearchError(f"--ray {address!r}: expected HOST:PORT (e.g. 10.0.0.5:6379, as `ray start --head` prints)")
    return host.strip("[]"), int(port)


def check_ray_address(address: str, timeout: float = 5.0) -> None:
    """Fail fast with one clear line unless a gRPC server (a Ray head's GCS) answers at `address`.

    Ray itself retries for minutes, at a port with nothing behind it or with another kind of
    server. A gRPC server answers the HTTP/2 connection preface with a SETTINGS frame; that is
    checked here (an HTTP/1 server, an SSH daemon… answer otherwise or not at all).
    """
    host, port = parse_ray_address(address)
    client = address.strip().startswith("ray://")
    reply = b""
    try:
        with socket.create_connection((host, port), timeout=timeout) as connection:
            if client:  # Ray Client may sit behind a proxy: a connection is all that is checked
                return
            connection.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            reply = connection.recv(9)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise SearchError(
            f"--ray {address}: no Ray cluster answers there ({reason}); start one with `ray start --head` "
            "and pass the address it prints"
        ) from err
    if len(reply) < 4 or reply[3] != 0x04:
        raise SearchError(
            f"--ray {address}: something answers there, but not a Ray head node (no gRPC); pass the address "
            "`ray start --head` prints (its GCS port, 6379 by default)"
        )


def _auth_token_available() -> bool:
    return bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")) or (
        Path.home() / ".ray" / "auth_token"
    ).is_file()


LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")


class _multi_node_off:
    """While inside, Ray keeps a loopback node address instead of replacing it with this machine's.

    `ray.init(_node_ip_address="127.0.0.1")` alone is not enough on Linux: Ray swaps a loopback
    address for the machine's routable one (so other nodes could join), and the GCS, raylet and
    worker gRPC servers then listen on every interface. With multi-node support off, as Ray
    itself runs on macOS and Windows (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), the address stays
    127.0.0.1 and every server binds to it. Ray reads that switch once, at import, into
    `ray_constants.ENABLE_RAY_CLUSTER`, so the constant is flipped for the start and put back after;
    RayRuntime checks the outcome, so a Ray that stops honouring this fails loudly, not openly.
    """

    def __enter__(self):
        from ray._private import ray_constants

        self.constants, self.saved = ray_constants, ray_constants.ENABLE_RAY_CLUSTER
        ray_constants.ENABLE_RAY_CLUSTER = False
        return self

    def __exit__(self, *exc) -> bool:
        self.constants.ENABLE_RAY_CLUSTER = self.saved
        return False


class RayRuntime:
    """Context manager: a local Ray runtime (address None) or a connection to a cluster.

    A local runtime listens on the loopback interface only (see _multi_node_off), has no dashboard
    and sends no usage statistics; it is shut down on exit. A runtime already initialised in this
    process (a test, a notebook) is used as it is and left running.
    """

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        self.address = address
        self.num_cpus = num_cpus
        self.started = False

    def __enter__(self):
        ray = require_ray()
        if ray.is_initialized():
            return ray
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if self.address is None:
            # address "local": a new runtime of our own, even where `ray start` left one running
            kwargs = {"address": "local", "num_cpus": self.num_cpus or os.cpu_count(), "include_dashboard": False,
                      "_node_ip_address": "127.0.0.1"}
        else:
            check_ray_address(self.address)
            kwargs = {"address": self.address}
            # a head started by `ray start` (Ray 2.60) wants its token; a client sends it only in token mode
            if "RAY_AUTH_MODE" not in os.environ and _auth_token_available():
                os.environ["RAY_AUTH_MODE"] = "token"
        # this package travels to the workers with the job, so a cluster's nodes need only the same environment
        kwargs["runtime_env"] = {"py_modules": [str(PACKAGE_DIR)]}
        where = f"the Ray cluster at {self.address}" if self.address else "a local Ray runtime"
        # in the calling thread: Ray's driver connection dies with the thread that made it
        try:
            with _multi_node_off() if self.address is None else nullcontext():
                ray.init(log_to_driver=False, logging_level="ERROR", **kwargs)
        except Exception as err:  # ConnectionError, RuntimeError, ValueError…: one line for the user
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            hint = ""
            if self.address is not None:
                hint = ("; a cluster with token authentication needs its token here "
                        "(`ray get-auth-token` on the head; set RAY_AUTH_TOKEN or copy it to ~/.ray/auth_token)")
            raise SearchError(f"could not start or join {where}: {first}{hint}") from err
        if self.address is None and (node := ray.util.get_node_ip_address()) not in LOOPBACK:
            ray.shutdown()
            raise SearchError(f"the local Ray runtime came up on {node}, not on loopback only, and was stopped; "
                              "start a cluster with `ray start --head` and pass its address with --ray")
        self.started = True
        return ray

    def __exit__(self, *exc) -> bool:
        if self.started:
            require_ray().shutdown()
        return False


def actor_options(ray_module, device: str, workers: int) -> dict:
    """One CPU per actor; where the cluster has GPUs and the recipe may use one, a share of them."""
    options: dict[str, Any] = {"num_cpus": 1}
    gpus = ray_module.cluster_resources().get("GPU", 0)
    if gpus and device != "cpu":
        options["num_gpus"] = min(1.0, gpus / workers)
    return options
