"""On stage: text sizes for the back row and a clicker's keys.

- `stage_css()` (presentation mode, app.py): no visible text under 18 px — captions, buttons, toggles,
  tabs, metrics' labels, alerts, tables — and each page's headline (`.ms-headline`, the Tour's) at 32 px.
- `table()`: a table on stage. st.dataframe draws its cells on a canvas at ~13 px, out of reach of any
  style sheet (and of a page-text check), so on stage a table is plain HTML (`.ms-table`): its first
  `TABLE_ROWS` rows, every cell escaped, and a line saying how many rows there are in all.
- `keyboard()` (the Tour always, every page in presentation mode): a presenter's clicker sends
  PageDown / PageUp (some send the arrows or Space). ArrowRight, PageDown and Space press the page's
  "next" button (an element with the class `st-key-<key>` of `NEXT_KEYS`, e.g. the Tour's Next →),
  ArrowLeft and PageUp its "back" button; a page without such buttons scrolls to the next or
  previous section heading instead (Interference in presentation mode: one section per screen).
  N shows or hides the Tour's speaker notes. Keys typed into a text field, a select box or a slider are
  left alone.

The script is put into the app's own document (a <script> element in the parent page, once per
browser tab), so it keeps working when Streamlit replaces the small frame that carried it.
"""

from __future__ import annotations

import html
import math
import numbers

import pandas as pd
import streamlit as st

NEXT_KEYS = ("tour_next", "interference_next")
BACK_KEYS = ("tour_back", "interference_back")
HEADLINE_PX = 32
MIN_TEXT_PX = 18
# A table's rows on stage: a header and ten one-line rows of 18-px text (~35 px each) end at ~670 px
# under the top navigation and a page title (the Adapters page at 1280 × 720), the "First 10 of N
# rows." line under them inside the 720-px window; more would run past it.
TABLE_ROWS = 10
MAX_DECIMALS = 4  # as the pages round their tables' scores
LONG_CELL = 40  # characters: a cell longer than this wraps (free text); shorter ones keep one line
MISSING = "—"  # what a table shows for None and NaN, as the pages' own "—" cells do

_KEYS_SCRIPT = """
(function () {
  if (window.__mergescopeKeys) return;
  window.__mergescopeKeys = true;
  const NEXT = %(next)s, BACK = %(back)s, NOTES = '.st-key-tour_notes';
  function button(keys) {
    for (const key of keys) {
      const found = document.querySelector('.st-key-' + key + ' button');
      if (found) return found;
    }
    return null;
  }
  function sections() {
    return Array.from(document.querySelectorAll(
      '[data-testid="stMain"] h2, [data-testid="stMain"] h3')).filter(h => h.offsetParent !== null);
  }
  function scrollSection(forward) {
    const list = sections();
    if (!list.length) return false;
    const tops = list.map(h => h.getBoundingClientRect().top);
    let target = null;
    if (forward) { const i = tops.findIndex(t => t > 8); target = i >= 0 ? list[i] : null; }
    else { for (let i = tops.length - 1; i >= 0; i--) { if (tops[i] < -8) { target = list[i]; break; } } }
    if (!target) return false;
    target.scrollIntoView({block: 'start'});
    return true;
  }
  document.addEventListener('keydown', function (event) {
    if (event.altKey || event.ctrlKey || event.metaKey) return;
    const where = event.target;
    const tag = (where && where.tagName || '').toLowerCase();
    // a toggle or a button keeps focus after a click: the clicker's keys still move the talk on
    const pressable = tag === 'button' || (tag === 'input' && ['checkbox', 'radio', 'button', 'submit'].includes(
      (where.getAttribute('type') || '').toLowerCase()));
    if ((tag === 'input' && !pressable) || tag === 'textarea' || tag === 'select'
        || (where && where.isContentEditable)) return;
    if (where && where.getAttribute && where.getAttribute('role') === 'slider') return;
    if (event.key === 'n' || event.key === 'N') {  // the speaker notes' toggle, where the page has one
      const notes = document.querySelector(NOTES + ' input');
      if (notes) { event.preventDefault(); notes.click(); }
      return;
    }
    let forward = null;
    if (event.key === 'ArrowRight' || event.key === 'PageDown' || event.key === ' ') forward = true;
    if (event.key === 'ArrowLeft' || event.key === 'PageUp') forward = false;
    if (forward === null) return;
    if (event.key === ' ' && pressable) return;  // Space on a focused button or toggle presses that one
    const pressed = button(forward ? NEXT : BACK);
    if (pressed) {
      event.preventDefault();
      if (!pressed.disabled) pressed.click();
      return;
    }
    if (document.body.classList.contains('ms-presenting') && scrollSection(forward)) event.preventDefault();
  }, true);
})();
"""


def keys_script() -> str:
    import json

    return _KEYS_SCRIPT % {"next": json.dumps(list(NEXT_KEYS)), "back": json.dumps(list(BACK_KEYS))}


def keyboard(presenting: bool) -> None:
    """Install the clicker keys in the app's document (once per tab) and mark presentation mode on
    its body (section scrolling is for presentation mode only)."""
    import json

    code = json.dumps(keys_script())
    st.iframe(
        "<html><body><script>const doc = window.parent.document;"
        f"doc.body.classList.toggle('ms-presenting', {str(bool(presenting)).lower()});"
        "if (!window.parent.__mergescopeKeys) { const s = doc.createElement('script');"
        f" s.textContent = {code}; doc.head.appendChild(s); }}</script></body></html>",
        height=1,
    )


def theme_type() -> str | None:
    """The app's theme as the browser reports it: "dark", "light", or None (not known yet)."""
    try:
        reported = st.context.theme.type
    except Exception:  # no browser context (a bare script) or an older Streamlit
        reported = None
    if reported:
        return reported
    # not reported yet (a session's first run): the server's configured base (--theme.base=dark)
    try:
        return st.get_option("theme.base") or None
    except Exception:
        return None


def stage_css() -> str:
    """Presentation mode's sizes: nothing under 18 px, headlines at 32 px, the keys' frame hidden."""
    px = MIN_TEXT_PX
    return (
        "<style>"
        f"[data-testid='stCaptionContainer'], [data-testid='stCaptionContainer'] p {{font-size: {px}px !important;}}"
        f" [data-testid='stMain'] button p, [data-testid='stMain'] button span,"
        f" [data-testid='stMain'] a[data-testid^='stBaseLinkButton'] p {{font-size: {px}px !important;}}"
        f" [data-testid='stMain'] label p, [data-testid='stWidgetLabel'] p {{font-size: {px}px !important;}}"
        # a multiselect's chosen items (the Merge and Interference pages' adapters) are tags at 14 px
        f" [data-testid='stMain'] [data-testid='stMultiSelectTagsContainer'] [data-tag],"
        f" [data-testid='stMain'] [data-testid='stMultiSelectTagsContainer'] [data-tag] span"
        f" {{font-size: {px}px !important; height: auto;}}"
        # a number or text field's value and a select box's chosen value (λ from, Method) are 14 px
        f" [data-testid='stMain'] input, [data-testid='stMain'] textarea,"
        f" [data-testid='stMain'] [data-baseweb='select'] div {{font-size: {px}px !important;}}"
        f" [data-testid='stMain'] [data-testid='stMarkdownContainer'] p,"
        f" [data-testid='stMain'] [data-testid='stMarkdownContainer'] li {{font-size: {max(px, 20)}px;}}"
        # inline code (a folder in the Adapters page's caption) is 0.75 em: 13.5 px in an 18-px caption
        f" [data-testid='stMain'] [data-testid='stMarkdownContainer'] code,"
        f" [data-testid='stMain'] [data-testid='stCaptionContainer'] code {{font-size: {px}px !important;}}"
        f" [data-testid='stMetricLabel'] p {{font-size: {px}px !important;}}"
        f" [data-testid='stAlertContainer'] p {{font-size: {px}px !important;}}"
        f" [data-testid='stHeader'] a, [data-testid='stTopNavLink'] span {{font-size: {px}px !important;}}"
        f" [data-testid='stMain'] [data-testid='stIconMaterial'] {{font-size: {px}px !important;}}"
        f" .ms-headline {{font-size: {HEADLINE_PX}px !important; line-height: 1.2; font-weight: 700;}}"
        f" .ms-table {{overflow-x: auto; margin-bottom: 0.5rem;}}"
        f" .ms-table table {{border-collapse: collapse; width: auto; margin: 0;}}"
        f" .ms-table th, .ms-table td {{font-size: {px}px !important; line-height: 1.35; padding: 0.3rem 0.7rem;"
        " border: none; border-bottom: 1px solid rgba(128, 128, 128, 0.35); text-align: left; vertical-align: top;}"
        # a row is one line (a name breaks at its hyphens otherwise, and three-line rows fit five to a
        # window); free text longer than LONG_CELL wraps; a table wider than the page scrolls sideways
        " .ms-table th {font-weight: 600;} .ms-table td {white-space: nowrap;}"
        " .ms-table td.ms-long {white-space: normal; min-width: 16rem;}"
        " .ms-table td.ms-number {text-align: right; font-variant-numeric: tabular-nums;}"
        "</style>"
    )


def headline(text: str) -> None:
    """A step's or section's headline: one line at HEADLINE_PX (the class `ms-headline`)."""
    st.markdown(f"<p class='ms-headline' style='font-size: {HEADLINE_PX}px; line-height: 1.2; font-weight: 700; "
                f"margin: 0.2rem 0 0.4rem 0'>{html.escape(text)}</p>", unsafe_allow_html=True)


def _decimals(value: float) -> int | None:
    """The decimals Python's shortest form of `value` has (0.85 → 2, 3.0 → 0); None in exponent form."""
    text = repr(float(value))
    if "e" in text or "E" in text:
        return None
    _, _, fraction = text.partition(".")
    return 0 if fraction in ("", "0") else len(fraction)


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _not_a_value(value: object) -> bool:
    """None, NaN, NaT, pd.NA: a missing cell (a list or an array is a value, however it compares)."""
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # pd.isna of a list is elementwise
        return False


def column_texts(values: list[object]) -> list[str]:
    """A column's cells as text, numbers as the frame holds them: floats with as many decimals as the
    column's most precise value (a frame rounded to one decimal reads 85.0, 90.3, not 85, 90.3) up to
    MAX_DECIMALS (an unrounded 0.5700000000000001 reads 0.5700), and None / NaN as "—" and ±inf as
    "∞" / "−∞" rather than Python's "nan" and "inf"."""
    finite = [float(v) for v in values if _is_number(v) and not isinstance(v, numbers.Integral)
              and not _not_a_value(v) and math.isfinite(float(v))]
    places = [p for p in (_decimals(v) for v in finite) if p is not None]
    shared = min(max(places), MAX_DECIMALS) if places else 0
    texts = []
    for value in values:
        if _not_a_value(value):
            texts.append(MISSING)
        elif isinstance(value, (bool, numbers.Integral)) or not _is_number(value):
            texts.append(str(value))
        elif math.isinf(float(value)):
            texts.append("∞" if float(value) > 0 else "−∞")
        elif _decimals(float(value)) is None or (float(value) != 0 and round(float(value), shared) == 0):
            texts.append(f"{float(value):.3g}")  # 2e-05, not 0.0000
        else:
            texts.append(f"{float(value):.{shared}f}")
    return texts


def _cell(tag: str, text: str, number: bool) -> str:
    # one line per cell: a blank line inside st.markdown's HTML block would end the block
    text = " ".join(text.split())
    kind = "ms-number" if number else "ms-long" if len(text) > LONG_CELL else ""
    shown = html.escape(text, quote=True)
    return f"<{tag} class='{kind}'>{shown}</{tag}>" if kind else f"<{tag}>{shown}</{tag}>"


def table_html(frame: pd.DataFrame, rows: int = TABLE_ROWS, index: bool = False) -> str:
    """The first `rows` rows of `frame` as one line of escaped HTML in a `.ms-table` block (the
    index, when asked, as the first column); numbers right-aligned, as column_texts writes them."""
    shown = frame.head(rows)
    if index:
        shown = shown.reset_index(names=[str(n) if n is not None else "" for n in shown.index.names])
    columns = [column_texts(shown.iloc[:, i].tolist()) for i in range(shown.shape[1])]
    numeric = [pd.api.types.is_numeric_dtype(shown.iloc[:, i]) and not pd.api.types.is_bool_dtype(shown.iloc[:, i])
               for i in range(shown.shape[1])]
    header = "".join(_cell("th", str(name), False) for name in shown.columns)
    body = "".join(
        "<tr>" + "".join(_cell("td", columns[i][r], numeric[i]) for i in range(len(columns))) + "</tr>"
        for r in range(len(shown))
    )
    return (f"<div class='ms-table'><table style='font-size: {MIN_TEXT_PX}px'><thead><tr>{header}</tr></thead>"
            f"<tbody>{body}</tbody></table></div>")


def shown_rows_line(total: int, rows: int = TABLE_ROWS) -> str | None:
    """The line under a cut table ("First 10 of 30 rows."); None when every row is shown."""
    return f"First {rows} of {total} rows." if total > rows else None


def table(frame: pd.DataFrame, index: bool = False, rows: int = TABLE_ROWS) -> None:
    """A table on stage: its first `rows` rows in HTML at ≥ 18 px, and a line saying when there are
    more (the whole table, with its CSV, is on the page outside presentation mode)."""
    st.markdown(table_html(frame, rows=rows, index=index), unsafe_allow_html=True)
    line = shown_rows_line(len(frame), rows)
    if line:
        st.caption(line)
