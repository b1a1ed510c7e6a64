"""The Adapters page, driven through the real app with Streamlit's AppTest against the tiny zoo on a tiny
BERT (`tiny_zoo` and `app_test` from conftest)."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from merging.adapters.lora import load_adapter
from tests.conftest import assert_page_ok, wait_for_job
from tests.test_stage_table import stage_tables

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PAGE = "pages/adapters.py"
JOB = "job:adapters-train"


@pytest.fixture
def app(app_test) -> AppTest:
    return app_test.switch_page(PAGE).run()


def _table(at: AppTest):
    return at.dataframe[0].value


def _no_exception(at: AppTest) -> None:
    assert_page_ok(at, errors_allowed=True)


def test_table_lists_the_zoo_and_inspect_draws_a_chart(app):
    _no_exception(app)
    table = _table(app)
    assert sorted(table["Adapter"]) == sorted(
        ["sms_spam-standard", "sms_spam-osrm", "question_type-standard", "question_type-osrm"]
    )
    assert set(table["Source"]) == {"zoo"} and set(table["Rank"]) == {"8"}
    assert table["Single-task accuracy (%)"].notna().all()
    assert app.get("plotly_chart"), "the inspector draws the per-layer norms"
    app.selectbox(key="adapters_inspect").set_value("question_type-osrm").run()
    _no_exception(app)
    assert app.get("plotly_chart") and any(m.value == "question_type" for m in app.metric)


def test_import_a_folder_by_path(app, tiny_zoo):
    app.text_input(key="adapters_import_path").set_value(str(tiny_zoo / "sms_spam-standard"))
    app.text_input(key="adapters_import_name").set_value("my-spam")
    app.button(key="adapters_import_folder").click().run()
    _no_exception(app)
    assert any("Imported" in s.value for s in app.success)
    table = _table(app)
    row = table[table["Adapter"] == "my-spam"].iloc[0]
    assert row["Source"] == "workspace" and row["Task"] == "sms_spam"
    assert app.selectbox(key="adapters_inspect").value == "my-spam" and app.get("plotly_chart")

    # the same name again is refused with a message, and the page carries on
    app.button(key="adapters_import_folder").click().run()
    _no_exception(app)
    assert any("already exists" in e.value for e in app.error)


def test_a_bad_path_shows_an_error(app, tmp_path):
    app.text_input(key="adapters_import_path").set_value(str(tmp_path / "no-such-adapter"))
    app.button(key="adapters_import_folder").click().run()
    _no_exception(app)
    assert any("no such folder" in e.value for e in app.error)
    not_lora = tmp_path / "not-lora"
    not_lora.mkdir()
    app.text_input(key="adapters_import_path").set_value(str(not_lora))
    app.button(key="adapters_import_folder").click().run()
    _no_exception(app)
    assert any("adapter_config.json" in e.value for e in app.error)
    assert len(_table(app)) == 4


def test_upload_a_zip(app, tiny_zoo):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for file in sorted((tiny_zoo / "question_type-osrm").iterdir()):
            archive.write(file, f"qt-upload/{file.name}")
    app.file_uploader(key="adapters_zip").set_value(("qt.zip", buffer.getvalue(), "application/zip"))
    app.run()
    app.button(key="adapters_import_zip").click().run()
    _no_exception(app)
    assert "qt-upload" in set(_table(app)["Adapter"])

    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../evil.txt", "x")
    app.file_uploader(key="adapters_zip").set_value(("evil.zip", evil.getvalue(), "application/zip"))
    app.run()
    app.button(key="adapters_import_zip").click().run()
    _no_exception(app)
    assert any("outside" in e.value for e in app.error)


def test_train_a_tiny_adapter_in_the_background(app):
    app.selectbox(key="adapters_train_task").set_value("sms_spam")
    app.radio(key="adapters_train_init").set_value("osrm").run()
    others = app.multiselect(key="adapters_train_others:sms_spam")
    assert others.value == ["question_type"], "OSRM defaults to the zoo's other tasks"
    app.number_input(key="adapters_train_size").set_value(24)
    app.number_input(key="adapters_train_epochs").set_value(1)
    app.number_input(key="adapters_osrm_samples").set_value(12)
    app.run()
    assert app.text_input(key="adapters_train_name").value == "sms_spam-osrm-2", "zoo names are taken"
    app.button(key="adapters_train").click().run()
    _no_exception(app)
    job = app.session_state[JOB]
    wait_for_job(app, "adapters-train")
    assert job.finished and job.error is None, job.error_detail
    _no_exception(app)
    assert any("Trained" in s.value for s in app.success)
    table = _table(app)
    row = table[table["Adapter"] == "sms_spam-osrm-2"].iloc[0]
    assert row["Source"] == "workspace" and row["Init"] == "osrm" and row["Single-task accuracy (%)"] >= 0
    saved = load_adapter(Path(app.session_state["workspace"]) / "adapters" / "sms_spam-osrm-2")
    assert saved.meta["data"]["train_size"] == 24 and saved.meta["other_tasks"] == ["question_type"]
    assert app.text_input(key="adapters_train_name").value == "sms_spam-osrm-3"


def test_train_a_bad_upload_shows_an_error(app):
    app.radio(key="adapters_train_source").set_value("Upload CSV/JSONL").run()
    app.file_uploader(key="adapters_train_file").set_value(("bad.csv", b"words,label\nhello,x\n", "text/csv"))
    app.run()
    _no_exception(app)
    assert any("no 'text' column" in e.value for e in app.error)
    assert app.button(key="adapters_train").disabled


def test_presentation_mode_hides_the_forms_and_lists_the_adapters_in_a_readable_table(app):
    app.session_state["presentation"] = True
    app.run()
    _no_exception(app)
    keys = {b.key for b in app.button}
    assert "adapters_train" not in keys and "adapters_import_folder" not in keys
    # on stage a table is HTML at 18 px, not st.dataframe's ~13-px canvas (pages/_stage.table)
    assert not app.dataframe
    (table,) = stage_tables(app)
    header, rows = table[0], table[1:]
    shown = [dict(zip(header, row)) for row in rows]
    assert sorted(r["Adapter"] for r in shown) == sorted(
        ["sms_spam-standard", "sms_spam-osrm", "question_type-standard", "question_type-osrm"]
    )
    assert {r["Source"] for r in shown} == {"zoo"} and {r["Rank"] for r in shown} == {"8"}
    accuracies = [r["Single-task accuracy (%)"] for r in shown]
    assert all(0 <= float(a) <= 100 for a in accuracies), accuracies  # a number, one decimal, never "nan"
    assert all(len(a.partition(".")[2]) == 1 for a in accuracies), accuracies
    assert not any(c.value.startswith("First ") for c in app.caption)  # 4 rows: all shown
    assert app.get("plotly_chart")
