"""Shared builders: random adapters in memory and tiny real PEFT adapters on disk."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from merging.lora import Adapter, LoraModule
from tests.browser_support import HANG_GUARD_S

# Nothing in the suite may reach a hub: fail loudly instead of trying the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


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
    from merging.train_pipeline import TrainSettings
    from merging.zoo import BuildSettings, build_zoo
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
        training=TrainSettings(epochs=1, osrm_samples=20),
        shared_seed_tasks=(),
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
    _run_app_py_on_every_rerun(monkeypatch)
    _ui._zoo.clear()
    _ui.lab_for.clear()
    yield new_app_test(tmp_path / "workspace")
    _ui._zoo.clear()
    _ui.lab_for.clear()


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
