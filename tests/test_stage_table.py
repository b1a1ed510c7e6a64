"""Tables on stage (pages/_stage.table, through pages/_ui.show_table): HTML at ≥ 18 px instead of
st.dataframe's canvas, the first rows only with a line saying so, every cell escaped, numbers as the
frame holds them. The browser's view of it is in tests/test_browser_stage.py."""

from __future__ import annotations

import math
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from pages import _stage


class _Cells(HTMLParser):
    """The rows of an HTML table as lists of cell texts, and every tag met (an escaped name makes none)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[list[str]] = []
        self.tags: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def table_rows(markup: str) -> list[list[str]]:
    """The header row and the body rows an `.ms-table` shows, as text."""
    parser = _Cells()
    parser.feed(markup)
    return parser.rows


def stage_tables(at: AppTest) -> list[list[list[str]]]:
    """Every stage table a page drew under AppTest (st.markdown blocks of class ms-table)."""
    return [table_rows(m.value) for m in at.markdown if "class='ms-table'" in m.value]


def test_numbers_read_as_the_frame_holds_them_and_nothing_reads_nan_or_inf():
    assert _stage.column_texts([85.0, 90.3, None, float("nan")]) == ["85.0", "90.3", "—", "—"]
    assert _stage.column_texts([0.8512, 0.9]) == ["0.8512", "0.9000"]  # one column, one number of decimals
    assert _stage.column_texts([8.0, 16.0, float("nan")]) == ["8", "16", "—"]  # integers with a gap: no ".0"
    assert _stage.column_texts([np.int64(3), 7]) == ["3", "7"]
    assert _stage.column_texts([math.inf, -math.inf, 1.5]) == ["∞", "−∞", "1.5"]
    assert _stage.column_texts([1e-07, 0.5]) == ["1e-07", "0.5"]  # exponent form kept, not rounded to 0
    assert _stage.column_texts([0.1 + 0.2, 0.00002, 1.0]) == ["0.3000", "2e-05", "1.0000"]  # unrounded: 4 decimals
    assert _stage.column_texts(["yes", True, pd.NA, "—"]) == ["yes", "True", "—", "—"]


def test_a_stage_table_escapes_what_a_user_named():
    frame = pd.DataFrame({"Adapter": ["<script>alert(1)</script>", "a & b\n\nc"], "<b>task</b>": ["x", "y"]})
    markup = _stage.table_html(frame)
    parser = _Cells()
    parser.feed(markup)
    assert set(parser.tags) == {"div", "table", "thead", "tbody", "tr", "th", "td"}
    # the names read back as typed; a blank line (which would end st.markdown's HTML block) is a space
    assert parser.rows == [["Adapter", "<b>task</b>"], ["<script>alert(1)</script>", "x"], ["a & b c", "y"]]
    assert "\n" not in markup


def test_a_long_table_shows_its_first_rows_and_says_so():
    frame = pd.DataFrame({"run": range(1, 31), "score": [0.5 + i / 100 for i in range(30)]})
    rows = table_rows(_stage.table_html(frame))
    assert len(rows) == 1 + _stage.TABLE_ROWS and rows[1] == ["1", "0.5000"] and rows[-1][0] == str(_stage.TABLE_ROWS)
    assert _stage.shown_rows_line(30) == f"First {_stage.TABLE_ROWS} of 30 rows."
    assert _stage.shown_rows_line(_stage.TABLE_ROWS) is None


def test_the_index_can_be_the_first_column():
    frame = pd.DataFrame({"run 1": ["0.9", ""], "run 2": ["0.8", "ties"]}, index=["merged %", "method"])
    assert table_rows(_stage.table_html(frame, index=True)) == [
        ["", "run 1", "run 2"], ["merged %", "0.9", "0.8"], ["method", "", "ties"]]


def _show_table_script() -> None:
    import pandas as pd

    from pages import _ui

    frame = pd.DataFrame({"adapter": [f"a{i}" for i in range(30)], "accuracy (%)": [50 + i / 2 for i in range(30)]})
    _ui.show_table(frame, "numbers", caption="How to read it.")


@pytest.mark.parametrize("presenting", [True, False])
def test_show_table_is_html_on_stage_and_a_dataframe_with_its_csv_elsewhere(tmp_path, presenting):
    at = AppTest.from_function(_show_table_script)
    at.session_state["workspace"] = str(tmp_path / "workspace")
    at.session_state["presentation"] = presenting
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    captions = [c.value for c in at.caption]
    if presenting:
        assert not at.dataframe  # a canvas at ~13 px: unreadable from the back row
        (table,) = stage_tables(at)
        assert table[0] == ["adapter", "accuracy (%)"]
        assert table[1:] == [[f"a{i}", f"{50 + i / 2:.1f}"] for i in range(_stage.TABLE_ROWS)]
        assert captions == [f"First {_stage.TABLE_ROWS} of 30 rows.", "How to read it."]
        assert not at.get("download_button")
    else:
        assert len(at.dataframe[0].value) == 30 and not stage_tables(at)
        assert captions == ["How to read it."]
        assert len(at.get("download_button")) == 1
