"""Shared builders: random adapters in memory and tiny real PEFT adapters on disk."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import pytest
import torch

from merging.adapters.lora import Adapter, LoraModule
from tests.browser_support import HANG_GUARD_S

# Nothing in the suite may reach a hub: fail loudly instead of trying the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# ----------------------------------------------------------------------------------------------
# The fast subset: `pytest -m "not slow"` (docs/TESTING.md). Slow = trains or evaluates a real model
# (the shipped zoo's MiniLM), starts servers, browsers, Ray or pip, or takes tens of seconds on the
# 2-core CI machine. Every browser test is slow. Listed here, in one place, rather than in each file:
# {file: None (every test of the file) or the test functions (parametrised ones by their function name)}.
SLOW_TESTS: dict[str, tuple[str, ...] | None] = {
    "test_packaging.py": (  # the wheel, built and pip-installed into a fresh venv
        "test_the_wheel_holds_the_library_the_app_its_settings_and_the_demo_zoo",
        "test_the_installed_mergescope_command_runs_the_installed_library",
        "test_mergescope_merge_writes_a_merged_adapter_from_another_folder",
        "test_mergescope_dashboard_starts_from_another_folder_with_the_projects_settings",
    ),
    "test_cli_training.py": None,  # trains adapters and a zoo through the CLI
    "test_bench_smoke.py": None,  # runs every benchmark program, Ray included
    "test_server_warm_up.py": (  # dashboard servers in subprocesses
        "test_the_dashboard_command_warms_up_before_any_browser_connects",
        "test_the_dashboard_command_says_when_the_warm_up_is_turned_off",
        "test_a_stop_during_the_warm_up_ends_the_server_with_streamlits_exit_code_not_an_abort",
    ),
    "test_search.py": (
        "test_the_cli_search_prints_the_issues_json_and_streams_every_trial_to_the_store",  # the shipped zoo's MiniLM
        "test_the_local_ray_runtime_listens_on_loopback_only",  # Ray
        "test_two_ray_workers_record_every_trial_and_a_worker_killed_mid_study_has_its_trial_retried",
    ),
    "test_tour.py": (  # every tour step measured on the shipped zoo
        "test_the_tour_page_walks_every_step_forward_and_back",
        "test_a_step_that_fails_to_measure_says_why_and_can_be_tried_again",
    ),
    "test_export.py": ("test_a_full_model_export_holds_well_under_one_copy_of_the_base",),  # a 100 MB model in a child
    "test_method_oracles.py": ("test_dare_merges_average_over_seeds_to_the_unsparsified_sum",),  # 1,000 seeded merges
}


def pytest_collection_modifyitems(config, items):
    seen: dict[str, set[str]] = {}
    for item in items:
        seen.setdefault(item.path.name, set()).add(item.originalname)
        listed = SLOW_TESTS.get(item.path.name, ())
        if item.get_closest_marker("browser") or listed is None or item.originalname in (listed or ()):
            item.add_marker(pytest.mark.slow)
    # a renamed test would silently leave the slow set: a file collected whole must have every name listed
    if not config.option.keyword and not config.option.markexpr:
        for file, names in SLOW_TESTS.items():
            missing = set(names or ()) - seen.get(file, set()) if file in seen else set()
            if missing:
                raise pytest.UsageError(f"tests/conftest.py SLOW_TESTS lists tests {file} does not have: {sorted(missing)}")


RAY_OBJECT_STORE_BYTES = 256 * 1024**2


@contextlib.contextmanager
def ray_memory_bounded():
    """For a local Ray runtime started inside: a 256 MB object store (trials pass recipes and JSON,
    not tensors), no memory monitor (Ray's kills workers when the *machine* is above 95 % used, even
    when another process is the cause), one OpenMP thread per worker. Ray reads these at its start;
    its object-store cap is a constant it reads at import, so the constant is set too."""
    from ray._private import ray_constants

    bounds = {"RAY_DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES": str(RAY_OBJECT_STORE_BYTES),
              "RAY_memory_monitor_refresh_ms": "0", "OMP_NUM_THREADS": "1"}
    saved = {key: os.environ.get(key) for key in bounds}
    cap = ray_constants.DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES
    os.environ.update(bounds)
    ray_constants.DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES = RAY_OBJECT_STORE_BYTES
    try:
        yield
    finally:
        ray_constants.DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES = cap
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run far slower with 2 OpenMP threads when other processes share the 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_adapter(
    name: str,
    modules: dict[str, tuple[int, int]],
    rank: int = 4,
    scale: float = 0.5,
    seed: int = 0,
) -> Adapter:
    """An adapter with random factors; `modules` maps module name -> (d_out, d_in)."""
    generator = torch.Generator().manual_seed(seed)
    built = {
        module: LoraModule(
            torch.randn(rank, d_in, generator=generator),
            torch.randn(d_out, rank, generator=generator),
            scale,
        )
        for module, (d_out, d_in) in modules.items()
    }
    return Adapter(name=name, modules=built)


TWO_LAYERS = {
    "encoder.layer.0.attention.self.query": (12, 10),
    "encoder.layer.0.attention.self.value": (12, 10),
    "encoder.layer.1.attention.self.query": (12, 10),
}


@pytest.fixture
def three_adapters() -> list[Adapter]:
    return [random_adapter(f"task{i}", TWO_LAYERS, rank=r, seed=i) for i, r in enumerate([4, 2, 4])]


# ----------------------------------------------------------------------------------------------
# A tiny zoo and the app under AppTest


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory):
    """Two real demo tasks × standard/OSRM, trained briefly on a tiny BERT saved to a folder."""
    from merging.training.pipeline import TrainSettings
    from merging.training.zoo import BuildSettings, build_zoo
    from tests.tiny_models import tiny_bert

    root = tmp_path_factory.mktemp("tiny_zoo")
    model, tokenizer = tiny_bert()
    model.save_pretrained(root / "tiny-bert")
    tokenizer.save_pretrained(root / "tiny-bert")
    settings = BuildSettings(
        tasks=("sms_spam", "question_type"),
        inits=("standard", "osrm"),
        train_size=40,
        eval_size=24,
        training=TrainSettings(epochs=1, osrm_samples=20, max_grad_norm=None),  # as before clipping existed
        shared_seed_tasks=(),
        refuse_chance=False,  # one epoch of a tiny BERT need not learn: the fixture is about structure
    )
    build_zoo(root / "zoo", settings, base_model=str(root / "tiny-bert"))
    return root / "zoo"


APP = str(Path(__file__).resolve().parent.parent / "app.py")


def new_app_test(workspace, timeout: float = HANG_GUARD_S, device: str = "cpu"):
    """The one AppTest factory: the whole app (app.py), one browser session on `workspace`.

    `timeout` bounds each script run (a hang guard; background jobs are waited for by state, see
    wait_for_job). Environment (zoo, warm-up, pages flag) is the caller's: see the app_test fixture.
    """
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=timeout)
    at.session_state["workspace"] = str(workspace)
    at.session_state["device"] = device
    return at


def assert_page_ok(at, errors_allowed: bool = False) -> None:
    """The one "no exception" check of a page under AppTest: no exception element, and (unless the
    test expects one) no st.error either; the assertion message lists what was shown."""
    assert not at.exception, [e.value for e in at.exception]
    if not errors_allowed:
        assert not at.error, [e.value for e in at.error]


@pytest.fixture
def app_test(tiny_zoo, tmp_path, monkeypatch):
    """The whole app (app.py) on the tiny zoo, with a fresh workspace, on the CPU."""
    from pages import _ui

    monkeypatch.setenv("MERGESCOPE_ZOO", str(tiny_zoo))
    monkeypatch.setenv("MERGESCOPE_WARM_UP", "0")  # cold pages; tests of the warm-up turn it on
    # the server's warm-up keeps what it measures in the default workspace: the session's, not the repository's
    monkeypatch.setattr(_ui, "DEFAULT_WORKSPACE", tmp_path / "workspace")
    _run_app_py_on_every_rerun(monkeypatch)
    _ui._zoo.clear()
    _ui.forget_labs()
    yield new_app_test(tmp_path / "workspace")
    _ui._zoo.clear()
    _ui.forget_labs()


def _run_app_py_on_every_rerun(monkeypatch) -> None:
    """AppTest resets Streamlit's 'uses a pages/ directory' flag before every run, so with our
    pages/ folder each rerun would execute the current page alone, without app.py's sidebar. The
    real server sets the flag once, when app.py first calls st.navigation; do the same here."""
    from streamlit.runtime.pages_manager import PagesManager

    original_init = PagesManager.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", init)


def wait_for_job(at, key: str, timeout: float = HANG_GUARD_S):
    """Wait for a page's background job to finish, then rerun the script to show its result.

    The wait ends on the job's state; `timeout` only stops a hang (a busy machine is slow, not stuck)."""
    deadline = time.monotonic() + timeout
    while f"job:{key}" in at.session_state and not at.session_state[f"job:{key}"].finished:
        assert time.monotonic() < deadline, f"the background job '{key}' did not finish in {timeout} s"
        time.sleep(0.1)
    return at.run()


@pytest.fixture(autouse=True, scope="session")
def _no_background_torch_work_at_exit():
    """Pages start daemon threads (warm-ups, jobs) that run torch; one still inside torch when the
    interpreter exits aborts the process (exit 134). Let them finish before pytest exits."""
    yield
    import threading

    for thread in threading.enumerate():
        if thread is not threading.current_thread() and thread.daemon and thread.name.startswith("mergescope"):
            thread.join(timeout=300)
