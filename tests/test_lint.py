"""The code style gate: `ruff check` under pyproject.toml's [tool.ruff] settings, run by the test command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.browser_support import HANG_GUARD_S

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing_under_the_projects_settings():
    completed = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)],
        cwd=ROOT, capture_output=True, text=True, timeout=HANG_GUARD_S, check=False,
    )
    assert completed.returncode == 0, completed.stdout[-5000:] + completed.stderr[-2000:]
