"""The λ search: its sampler loop on a synthetic objective, its dev split, its bootstrap interval, the
CLI on a real zoo (in-process and on a local Ray runtime with two worker processes, one of them
killed mid-study), a bad Ray address, and the Search page under AppTest.

Ray runs only in the tests that say so, started and stopped by a fixture through RayRuntime (what
`--ray` starts): loopback only, no dashboard, 2 CPUs.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from merging import plots
from merging.adapters.lora import load_adapter
from merging.cli import main
from merging.evaluation.evaluate import EvaluationResult, TaskScores
from merging.lab.lab import task_data_for
from merging.recipe.codec import recipe_from_dict
from merging.search.ray_backend import RayRuntime, check_ray_address
from merging.search.split import carve_dev_split, dev_set_for
from merging.search.study import (
    InProcessBackend,
    SearchError,
    SearchSpace,
    bootstrap_interval,
    merge_link,
    objective_value,
    run_search,
    run_study,
    space_for,
    trial_recipe,
)
from merging.store.runs import RunStore
from tests.conftest import RAY_OBJECT_STORE_BYTES, assert_page_ok, ray_memory_bounded, wait_for_job

ZOO = Path(__file__).resolve().parent.parent / "zoo"
TWO = ["sms_spam-standard", "movie_sentiment-standard"]


def zoo_recipe(names=TWO, **extra):
    return recipe_from_dict(
        {"adapters": [{"path": str(ZOO / n), "name": n} for n in names], "device": "cpu", **extra}
    )


# ----------------------------------------------------------------------------------------------
# The study on a synthetic objective


TARGET = {"weights.a": 0.3, "weights.b": 1.2}


def synthetic(params: dict) -> tuple[float, None]:
    """A smooth bowl with its top (0) at TARGET."""
    return -sum((params[k] - v) ** 2 for k, v in TARGET.items()), None


@pytest.mark.parametrize("sampler", ["tpe", "cmaes"])
def test_the_search_finds_the_known_optimum_of_a_synthetic_objective(sampler):
    space = SearchSpace(("a", "b"), (0.0, 1.5), start={"weights.a": 1.0, "weights.b": 1.0})
    result = run_study(space, 80, InProcessBackend(synthetic), sampler=sampler, seed=3)
    best = result.best
    assert len(result.outcomes) == 80 and result.failed == []
    assert abs(best.params["weights.a"] - 0.3) < 0.12 and abs(best.params["weights.b"] - 1.2) < 0.12
    assert best.dev_objective > -0.02
    # the first trial is the usual guess, uniform λ = 1
    assert result.outcomes[0].params == {"weights.a": 1.0, "weights.b": 1.0}


def test_a_fixed_seed_gives_identical_trials_in_process_and_another_seed_does_not():
    space = SearchSpace(("a", "b"), (0.0, 1.5))

    def params(seed):
        return [o.params for o in run_study(space, 15, InProcessBackend(synthetic), seed=seed).outcomes]

    assert params(7) == params(7)
    assert params(7) != params(8)


def test_a_non_finite_objective_counts_as_a_failed_trial_and_the_search_goes_on():
    def sometimes_nan(p):
        return (float("nan") if p["weights.a"] > 1.0 else -p["weights.a"]), None

    result = run_study(SearchSpace(("a",), (0.0, 1.5), start={"weights.a": 1.2}), 6, InProcessBackend(sometimes_nan))
    assert 0 in result.failed
    assert len(result.outcomes) + len(result.failed) == 6
    assert all(math.isfinite(o.dev_objective) for o in result.outcomes)


# ----------------------------------------------------------------------------------------------
# Recipes, spaces, objectives, intervals


def test_trial_recipe_sets_each_adapters_weight_and_the_density_and_keeps_the_rest():
    base = zoo_recipe(method="ties", density=0.5)
    recipe = trial_recipe(base, {"weights.sms_spam-standard": 0.25, "density": 0.8})
    assert recipe.weights == [0.25, 1.0]
    assert recipe.parameters["density"] == 0.8 and recipe.method == "ties" and recipe.adapters[1] == base.adapters[1]


def test_the_merge_link_carries_the_recipe_as_json():
    from urllib.parse import unquote

    recipe = zoo_recipe()
    link = merge_link(recipe)
    assert link.startswith("?recipe=")
    assert recipe_from_dict(json.loads(unquote(link[len("?recipe="):]))) == recipe


def test_the_space_refuses_density_for_a_method_without_one_and_bad_bounds():
    with pytest.raises(SearchError, match="has no density"):
        space_for(zoo_recipe(), ("weights", "density"))
    with pytest.raises(SearchError, match="not searchable"):
        space_for(zoo_recipe(), ("rank",))
    with pytest.raises(SearchError, match="LOW < HIGH"):
        space_for(zoo_recipe(), ("weights",), weight_bounds=(1.0, 1.0))
    space = space_for(zoo_recipe(method="ties", density=0.5), ("weights", "density"), (0.0, 0.8))
    assert space.start == {"weights.sms_spam-standard": 0.8, "weights.movie_sentiment-standard": 0.8, "density": 0.5}


def _result(merged, single):
    return EvaluationResult({f"t{i}": TaskScores(0.5, s, m, 0.5) for i, (m, s) in enumerate(zip(merged, single))})


def test_the_three_objectives_by_hand():
    result = _result([0.9, 0.6], [1.0, 0.8])  # ratios 0.9 and 0.75
    assert objective_value(result, "average") == pytest.approx(0.75)
    assert objective_value(result, "normalized") == pytest.approx(0.825)
    assert objective_value(result, "worst_task") == pytest.approx(0.75)
    assert math.isnan(objective_value(_result([0.5], [0.0]), "worst_task"))


def test_the_bootstrap_interval_is_exact_when_every_answer_is_right_and_matches_resampling_examples():
    assert bootstrap_interval({"a": (50, 50), "b": (20, 20)}) == (1.0, 1.0)
    low, high = bootstrap_interval({"a": (100, 200)})
    assert 0.42 < low < 0.44 and 0.56 < high < 0.58  # ±1.96·√(.25/200) ≈ ±0.069 around 0.5
    # an independent oracle: resample the 0/1 answers of two tasks themselves
    rng = np.random.default_rng(1)
    answers = {"a": np.array([1] * 150 + [0] * 50), "b": np.array([1] * 30 + [0] * 70)}
    means = [np.mean([rng.choice(v, v.size).mean() for v in answers.values()]) for _ in range(4000)]
    oracle = np.quantile(means, [0.025, 0.975])
    low, high = bootstrap_interval({"a": (150, 200), "b": (30, 100)})
    assert abs(low - oracle[0]) < 0.01 and abs(high - oracle[1]) < 0.01


def test_the_dev_split_never_overlaps_the_evaluation_split():
    for folder in sorted(p for p in ZOO.iterdir() if (p / "adapter_config.json").is_file() and "standard" in p.name):
        adapter = load_adapter(folder)
        data = task_data_for(adapter)
        dev = dev_set_for(adapter, size=60, seed=0)
        assert not set(dev.texts) & set(data.eval_texts), folder.name
        assert set(dev.texts) <= set(data.train_texts)
        counts = {label: dev.targets.count(label) for label in range(data.num_labels)}
        assert set(counts.values()) == {60 // data.num_labels}, (folder.name, counts)  # class-stratified


def test_the_dev_split_is_seeded_and_stratified_by_hand():
    texts = [f"x{i}" for i in range(10)]
    labels = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
    a = carve_dev_split(texts, labels, 2, 4, seed=5)
    assert a == carve_dev_split(texts, labels, 2, 4, seed=5)
    assert sorted(a[1]) == [0, 0, 1, 1]
    assert carve_dev_split(texts, labels, 2, 100, seed=0)[0] == texts  # asks for more than there is: all of it


def test_the_figures_draw_history_and_parallel_coordinates_from_trial_records():
    trials = [
        {"number": 0, "params": {"weights.a": 1.0, "weights.b": 1.0}, "dev_objective": 0.5, "worker": "h:1"},
        {"number": 1, "params": {"weights.a": 0.2, "weights.b": 0.9}, "dev_objective": 0.7, "worker": "h:1"},
        {"number": 2, "params": {"weights.a": 0.4, "weights.b": 1.3}, "dev_objective": 0.6, "worker": "h:2"},
    ]
    history = plots.optimization_history(trials)
    assert list(history.data[1].y) == [0.5, 0.7, 0.7]  # the best so far
    parallel = plots.parallel_coordinates(trials)
    dims = parallel.data[0].dimensions
    assert [d.label for d in dims] == ["λ a", "λ b", "average (dev)"]
    assert list(dims[0].values) == [1.0, 0.2, 0.4]
    assert plots.optimization_history([]).layout.annotations[0].text == "No finished trial yet"


# ----------------------------------------------------------------------------------------------
# The CLI on the shipped zoo, in-process


@pytest.fixture
def recipe_file(tmp_path):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({"adapters": [{"path": str(ZOO / n), "name": n} for n in TWO], "device": "cpu"}))
    return path


def test_the_cli_search_prints_the_issues_json_and_streams_every_trial_to_the_store(
    recipe_file, tmp_path, capsys, one_thread
):
    code = main([
        "search", str(recipe_file), "--trials", "3", "--dev-size", "8", "--seed", "1", "--json",
        "--workspace", str(tmp_path / "ws"), "--no-report",
    ])
    assert code == 0, capsys.readouterr().err
    out = json.loads(capsys.readouterr().out)
    assert [t["number"] for t in out["trials"]] == [0, 1, 2]
    for trial in out["trials"]:
        assert set(trial) >= {"number", "params", "dev_objective", "worker", "seconds"}
        assert trial["worker"] == f"{socket.gethostname()}:{os.getpid()}"
        assert 0.0 <= trial["dev_objective"] <= 1.0
    best = max(out["trials"], key=lambda t: t["dev_objective"])
    assert out["best"]["dev_objective"] == best["dev_objective"]
    assert [a["weight"] for a in out["best"]["recipe"]["adapters"]] == [
        best["params"][f"weights.{n}"] for n in TWO
    ]
    stored = RunStore(tmp_path / "ws" / "runs.sqlite").list(kind="search-trial")
    assert sorted(r.results["search"]["number"] for r in stored) == [0, 1, 2]
    assert all("average" not in r.results for r in stored)  # dev scores are never shown as results


def test_the_final_report_scores_best_uniform_and_shared_on_the_evaluation_split(tiny_zoo, tmp_path, one_thread):
    recipe = recipe_from_dict({
        "adapters": [{"path": str(tiny_zoo / n), "name": n} for n in ("sms_spam-standard", "question_type-standard")],
        "device": "cpu",
    })
    store = RunStore(tmp_path / "runs.sqlite")
    result = run_search(recipe, 4, objective="normalized", dev_size=8, store=store, shared_grid=(0.5, 1.0))
    data = result.to_dict()
    evaluation = data["best"]["evaluation"]
    assert set(evaluation["tasks"]) == {"sms_spam", "question_type"} and evaluation["preview"] is False
    low, high = data["best"]["interval_95"]["average_merged"]
    assert low <= evaluation["average"]["merged"] <= high
    assert data["baselines"]["uniform"]["weights"] == [1.0, 1.0]
    assert data["baselines"]["shared"]["lambda"] in (0.5, 1.0)
    # the evaluation split is not the dev split: the best recipe's accuracies are those of a hand-written
    # loop over each task's evaluation texts (recomputed here from the task data), not its 8 dev examples
    best = recipe.with_weights([a["weight"] for a in data["best"]["recipe"]["adapters"]])
    hand = _hand_accuracies(tiny_zoo, best)
    assert {task: s["merged"] for task, s in evaluation["tasks"].items()} == hand
    dev = _hand_accuracies(tiny_zoo, best, dev_size=8)
    assert dev != hand  # the check can tell the two splits apart on this zoo
    # and the interval's counts are the evaluation split's sizes
    lab_counts = {t: len(task_data_for(load_adapter(tiny_zoo / f"{t}-standard")).eval_texts) for t in hand}
    assert set(lab_counts.values()) == {24}
    counts = {t: (round(a * 24), 24) for t, a in hand.items()}
    assert data["best"]["interval_95"]["average_merged"] == pytest.approx(list(bootstrap_interval(counts)))
    final = store.list(kind="search")
    assert len(final) == 1 and final[0].results["average"] == evaluation["average"]
    assert len(store.list(kind="search-trial")) == 4


def _hand_accuracies(zoo: Path, recipe, dev_size: int | None = None) -> dict[str, float]:
    """Each task's accuracy of `recipe`'s merged body with the task's own head, scored text by text on
    the base model read from the zoo folder with transformers, on the evaluation split (or the dev split)."""
    import copy

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from merging.engine.merge import merge_adapters

    adapters = [load_adapter(a.path) for a in recipe.adapters]
    body = merge_adapters(adapters, recipe).adapter.modules
    base = zoo.parent / "tiny-bert"
    tokenizer = AutoTokenizer.from_pretrained(base)
    accuracies = {}
    for adapter in adapters:
        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2).eval()
        data = task_data_for(adapter)
        if dev_size is None:
            texts, targets = data.eval_texts, data.eval_labels
        else:
            dev = dev_set_for(adapter, size=dev_size, seed=0)
            texts, targets = dev.texts, dev.targets
        edited = copy.deepcopy(model)
        with torch.no_grad():
            for name, module in body.items():
                edited.get_submodule(name).weight += module.scale * module.B @ module.A
            head = {k.split(".", 1)[1]: v for k, v in adapter.saved_modules.items() if k.startswith("classifier.")}
            edited.classifier = torch.nn.Linear(head["weight"].shape[1], head["weight"].shape[0])
            edited.classifier.load_state_dict(head)
            correct = sum(
                int(edited(**tokenizer(text, return_tensors="pt", truncation=True, max_length=48)).logits.argmax(-1).item() == target)
                for text, target in zip(texts, targets)
            )
        accuracies[adapter.task] = correct / len(texts)
    return accuracies


def test_a_bad_ray_address_gives_one_clear_error(recipe_file, capsys):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = main(["search", str(recipe_file), "--trials", "2", "--ray", f"127.0.0.1:{port}", "--no-store"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"error: --ray 127.0.0.1:{port}: no Ray cluster answers there")
    assert "ray start --head" in err and "Traceback" not in err
    assert main(["search", str(recipe_file), "--ray", "not-an-address", "--no-store"]) == 2
    assert "expected HOST:PORT" in capsys.readouterr().err


def test_an_address_where_something_else_answers_is_refused_at_once():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)

        def answer_like_a_web_server() -> None:
            connection, _ = server.accept()
            with connection:
                connection.recv(64)
                connection.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        threading.Thread(target=answer_like_a_web_server, daemon=True).start()
        with pytest.raises(SearchError, match="not a Ray head node"):
            check_ray_address(f"127.0.0.1:{server.getsockname()[1]}")


def test_without_optuna_the_cli_says_how_to_install_it(recipe_file, capsys, monkeypatch):
    from merging.search import study as search

    monkeypatch.setattr(search, "missing_packages", lambda: ["optuna", "ray"])
    assert main(["search", str(recipe_file), "--no-store"]) == 2
    assert "pip install -r requirements-search.txt" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Ray: a local runtime with two worker processes


@pytest.fixture(scope="module")
def local_ray():
    import ray  # noqa: F401  requirements-search.txt is part of the test install: a missing Ray fails here, loudly

    # the runtime `--ray` starts (address "local": its own, even where `ray start` left a cluster file behind),
    # with its memory bounded (conftest.ray_memory_bounded) so it passes whatever else runs on the machine
    with ray_memory_bounded(), RayRuntime(num_cpus=2) as runtime:
        assert runtime.available_resources().get("object_store_memory", 0) <= RAY_OBJECT_STORE_BYTES
        yield runtime


def test_the_local_ray_runtime_listens_on_loopback_only(local_ray):
    """A search on a laptop must not open Ray's GCS, raylet and worker ports to the network."""
    import psutil

    assert local_ray.util.get_node_ip_address() == "127.0.0.1"
    assert local_ray.get_runtime_context().gcs_address.rsplit(":", 1)[0] == "127.0.0.1"
    ray_processes = psutil.Process().children(recursive=True)  # gcs_server, raylet, agents, workers
    listening = {
        (process.name(), c.laddr.ip, c.laddr.port)
        for process in ray_processes
        for c in process.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }
    assert any(name == "gcs_server" for name, _, _ in listening), listening  # the check saw Ray's servers
    assert {ip for _, ip, _ in listening} <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, listening


def tiny_recipe(tiny_zoo):
    names = ("sms_spam-standard", "question_type-standard")
    return recipe_from_dict({"adapters": [{"path": str(tiny_zoo / n), "name": n} for n in names], "device": "cpu"})


def test_two_ray_workers_record_every_trial_and_a_worker_killed_mid_study_has_its_trial_retried(
    local_ray, tiny_zoo, tmp_path
):
    """One study for both claims: a fresh pair of actors costs ~10-20 s of imports on a busy 2-core box."""
    store = RunStore(tmp_path / "runs.sqlite")
    actor_of: dict[int, object] = {}  # trial number -> the actor it was sent to
    pid_of: dict[str, int] = {}  # actor id -> its process, learnt from the trials it finished
    killed: list[tuple[int, int]] = []

    def learn_pid(outcome) -> None:
        pid_of[actor_of[outcome.number]._actor_id.hex()] = int(outcome.worker.rsplit(":", 1)[1])

    def kill_while_scoring(number, actor) -> None:
        actor_of[number] = actor
        pid = pid_of.get(actor._actor_id.hex())
        if number == 3 and pid is not None and not killed:  # trial 3 is in flight on this actor
            os.kill(pid, signal.SIGKILL)
            killed.append((number, pid))

    result = run_search(tiny_recipe(tiny_zoo), 8, dev_size=8, ray=True, workers=2, store=store, report=False,
                        on_trial=learn_pid, on_submit=kill_while_scoring)
    assert killed == [(3, killed[0][1])]
    assert [o.number for o in result.study.outcomes] == list(range(8)) and result.study.failed == []
    assert result.study.deaths == [{"trial": 3, "attempt": 1, "error": "ActorDiedError"}]
    retried = [o for o in result.study.outcomes if o.attempts == 2]
    assert [o.number for o in retried] == [3]
    assert not retried[0].worker.endswith(f":{killed[0][1]}")  # a fresh actor ran it
    workers = {o.worker for o in result.study.outcomes}  # the two first actors and the replacement
    assert len(workers) == 3 and all(not w.endswith(f":{os.getpid()}") for w in workers)
    stored = store.list(kind="search-trial")
    assert sorted(r.results["search"]["number"] for r in stored) == list(range(8))
    assert {r.results["search"]["worker"] for r in stored} == workers


# ----------------------------------------------------------------------------------------------
# The Search page


@pytest.fixture
def app(app_test):
    yield app_test
    job = app_test.session_state["job:search"] if "job:search" in app_test.session_state else None
    if job is not None:
        job.cancel_event.set()


def test_the_search_page_runs_a_tiny_search_and_links_the_best_recipe_to_merge(app, tiny_zoo):
    at = app.switch_page("pages/search.py").run()
    assert_page_ok(at)
    assert at.multiselect(key="search_adapters").value == ["sms_spam-standard", "question_type-standard"]
    at.number_input(key="search_trials").set_value(3)
    at.number_input(key="search_dev_size").set_value(4)
    at.button(key="search_run").click().run()
    wait_for_job(at, "search")
    assert_page_ok(at)
    charts = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    kinds = {trace["type"] for chart in charts for trace in chart["data"]}
    assert {"scatter", "parcoords"} <= kinds
    links = [b for b in at.get("link_button") if b.proto.label == "Open best in Merge"]
    assert links and links[0].proto.url.startswith("./?recipe=")
    result = at.session_state["search_result"]
    assert len(result["trials"]) == 3 and result["best"]["evaluation"]["tasks"]
    store = RunStore(Path(at.session_state["workspace"]) / "runs.sqlite")
    assert len(store.list(kind="search-trial")) == 3 and len(store.list(kind="search")) == 1


def test_the_search_page_without_optuna_says_how_to_install_it(app, monkeypatch):
    from merging.search import study as search

    monkeypatch.setattr(search, "missing_packages", lambda: ["optuna", "ray"])
    at = app.switch_page("pages/search.py").run()
    assert not at.exception
    assert any("pip install -r requirements-search.txt" in w.value for w in at.warning)
