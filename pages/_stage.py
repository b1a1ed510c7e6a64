"""On stage: text sizes for the back row and a clicker's keys.

- `stage_css()` (presentation mode, app.py): no visible text under 18 px — captions, buttons, toggles,
  tabs, metrics' labels, alerts — and each page's headline (`.ms-headline`, the Tour's) at 32 px.
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

import streamlit as st

NEXT_KEYS = ("tour_next", "interference_next")
BACK_KEYS = ("tour_back", "interference_back")
HEADLINE_PX = 32
MIN_TEXT_PX = 18

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
        f" [data-testid='stMain'] [data-testid='stMarkdownContainer'] p,"
        f" [data-testid='stMain'] [data-testid='stMarkdownContainer'] li {{font-size: {max(px, 20)}px;}}"
        f" [data-testid='stMetricLabel'] p {{font-size: {px}px !important;}}"
        f" [data-testid='stAlertContainer'] p {{font-size: {px}px !important;}}"
        f" [data-testid='stHeader'] a, [data-testid='stTopNavLink'] span {{font-size: {px}px !important;}}"
        f" [data-testid='stMain'] [data-testid='stIconMaterial'] {{font-size: {px}px !important;}}"
        f" .ms-headline {{font-size: {HEADLINE_PX}px !important; line-height: 1.2; font-weight: 700;}}"
        "</style>"
    )


def headline(text: str) -> None:
    """A step's or section's headline: one line at HEADLINE_PX (the class `ms-headline`)."""
    import html

    st.markdown(f"<p class='ms-headline' style='font-size: {HEADLINE_PX}px; line-height: 1.2; font-weight: 700; "
                f"margin: 0.2rem 0 0.4rem 0'>{html.escape(text)}</p>", unsafe_allow_html=True)
