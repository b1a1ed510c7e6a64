"""`pip install .` gives a working `mergescope` command, and `mergescope dashboard` keeps the project's
Streamlit settings wherever it is started.

The wheel is built from a copy of the files it is made of (so a file the build needs but the copy
lacks fails here), installed with pip into a folder of its own (`--target`: the dependencies are the
ones this interpreter already has), and its console script is run from a folder outside the
repository, with that folder first on PYTHONPATH so that the installed copy, not the checkout, is
what runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
import zipfile
from pathlib import Path

import pytest

from merging.cli import app_folder, dashboard_command, streamlit_flags
from tests.browser_support import HANG_GUARD_S, stop_process

ROOT = Path(__file__).resolve().parent.parent
# What setup.py and pyproject.toml build the wheel from.
SOURCES = ["pyproject.toml", "setup.py", "README.md", "app.py", "pages", ".streamlit", "merging", "zoo"]


def _requirement_lines(text: str) -> list[str]:
    return [line.split("#")[0].strip() for line in text.splitlines() if line.split("#")[0].strip()]


def test_pyproject_pins_the_same_packages_as_requirements_txt():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["test"]
    assert sorted(declared, key=str.lower) == sorted(
        _requirement_lines((ROOT / "requirements.txt").read_text()), key=str.lower
    )
    assert project["scripts"] == {"mergescope": "merging.cli:main"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    """The wheel built from a copy of the sources, and the folder pip installed it into."""
    work = tmp_path_factory.mktemp("packaging")
    source = work / "src"
    source.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*.tmp"))
        else:
            shutil.copy2(path, source / name)
    dist = work / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    built = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist), str(source)],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = dist.glob("mergescope-*.whl")
    site = work / "site"
    done = subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    elsewhere = work / "elsewhere"  # a working folder with no project files in it
    elsewhere.mkdir()
    return {"wheel": wheel, "site": site, "elsewhere": elsewhere}


def _installed_env(site: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(site)  # the installed copy first: not the checkout's merging/
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("MERGESCOPE_ZOO", None)
    return env


def test_the_wheel_holds_the_library_the_app_its_settings_and_the_demo_zoo(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    for needed in [
        "merging/__init__.py",
        "merging/cli.py",
        "merging/recipe/mergekit_config.py",
        "mergescope_app/app.py",
        "mergescope_app/pages/merge.py",
        "mergescope_app/pages/_ui.py",
        "mergescope_app/pages/_server.py",  # what `mergescope dashboard` runs
        "mergescope_app/.streamlit/config.toml",
        "mergescope_app/zoo/manifest.json",
    ]:
        assert needed in names, needed
    # every page and every zoo adapter of the checkout is in it
    for page in (ROOT / "pages").glob("*.py"):
        assert f"mergescope_app/pages/{page.name}" in names
    for adapter in (ROOT / "zoo").glob("*/adapter_model.safetensors"):
        assert f"mergescope_app/zoo/{adapter.parent.name}/adapter_model.safetensors" in names
    # and every training seed's zoo, and the seed study the Tour reads
    for adapter in (ROOT / "zoo").glob("seeds/*/*/adapter_model.safetensors"):
        assert f"mergescope_app/{adapter.relative_to(ROOT).as_posix()}" in names
    for data in [*(ROOT / "zoo").glob("seeds/*/manifest.json"), *(ROOT / "zoo").glob("seed_study.json")]:
        assert f"mergescope_app/{data.relative_to(ROOT).as_posix()}" in names
    # nothing but the app from the repository's root: no tests, scripts, setup.py
    assert not any(
        n.startswith(("tests/", "scripts/", "mergescope_app/tests", "mergescope_app/setup.py")) for n in names
    )
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(installed["wheel"]).read(entry_points).decode()
    assert re.search(r"^\[console_scripts\]\s*\nmergescope = merging\.cli:main\s*$", text, re.M), text


def test_the_installed_mergescope_command_runs_the_installed_library(installed):
    site, elsewhere = installed["site"], installed["elsewhere"]
    script = site / "bin" / "mergescope"
    assert script.is_file()
    shown = subprocess.run(
        [str(script), "--help"], cwd=elsewhere, env=_installed_env(site), capture_output=True, text=True, timeout=HANG_GUARD_S
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("usage: mergescope ")
    for command in ("merge", "inspect", "metrics", "evaluate", "train", "zoo", "dashboard"):
        assert command in shown.stdout
    where = subprocess.run(
        [sys.executable, "-c", "import merging, merging.cli as c; print(merging.__file__); print(c.app_folder())"],
        cwd=elsewhere,
        env=_installed_env(site),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    library, app = where.stdout.split()
    assert Path(library).is_relative_to(site) and Path(app) == site / "mergescope_app"
    # bad input: exit 2 and one line, from the installed command too
    bad = subprocess.run(
        [str(script), "merge", "missing.json", "--out", "x"],
        cwd=elsewhere,
        env=_installed_env(site),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert bad.returncode == 2 and bad.stderr.strip() == "error: missing.json: no such recipe file"


def test_mergescope_merge_writes_a_merged_adapter_from_another_folder(installed):
    site, elsewhere = installed["site"], installed["elsewhere"]
    recipe = elsewhere / "recipe.json"
    zoo = site / "mergescope_app" / "zoo"
    recipe.write_text(
        json.dumps(
            {
                "adapters": [
                    {"path": str(zoo / "sms_spam-standard"), "weight": 0.5},
                    {"path": str(zoo / "movie_sentiment-standard"), "weight": 0.5},
                ],
                "method": "task_arithmetic",
            }
        )
    )
    out = elsewhere / "merged"
    done = subprocess.run(
        [str(site / "bin" / "mergescope"), "merge", "recipe.json", "--out", "merged"],
        cwd=elsewhere,
        env=_installed_env(site),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["out"] == "merged"
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()


def test_from_a_checkout_the_dashboard_runs_the_checkouts_own_app():
    assert app_folder() == ROOT


def test_streamlit_flags_carry_every_setting_of_a_config_file(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[server]\naddress = "127.0.0.1"\nport = 8501\nheadless = true\n[runner]\npostScriptGC = false\n')
    assert streamlit_flags(config) == [
        "--server.address=127.0.0.1",
        "--server.port=8501",
        "--server.headless=true",
        "--runner.postScriptGC=false",
    ]
    assert streamlit_flags(config, leave_out=("server.port",)) == [
        "--server.address=127.0.0.1",
        "--server.headless=true",
        "--runner.postScriptGC=false",
    ]
    assert streamlit_flags(tmp_path / "absent.toml") == []


def test_the_dashboard_command_puts_the_callers_choices_after_the_projects_settings(tmp_path):
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "config.toml").write_text(
        '[server]\naddress = "127.0.0.1"\nport = 8501\n[client]\ntoolbarMode = "minimal"\n'
    )
    command = dashboard_command(tmp_path, 9123, "0.0.0.0", ["--client.toolbarMode=auto"])
    # the app's server entry (Streamlit's command line plus the warm-up at start), given `run app.py`
    assert command[:4] == [sys.executable, str(tmp_path / "pages" / "_server.py"), "run", str(tmp_path / "app.py")]
    assert command[4:] == [
        "--client.toolbarMode=minimal",
        "--server.address=0.0.0.0",
        "--server.port=9123",
        "--client.toolbarMode=auto",
    ]
    # no --port: the config's port stays
    assert "--server.port=8501" in dashboard_command(tmp_path, None, "127.0.0.1", [])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _listening_addresses(port: int) -> set[str]:
    """The local IPv4 addresses with a socket listening on `port` (from /proc/net/tcp, state 0A)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        address, port_hex = fields[1].split(":")
        if fields[3] == "0A" and int(port_hex, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def test_mergescope_dashboard_starts_from_another_folder_with_the_projects_settings(installed):
    site, elsewhere = installed["site"], installed["elsewhere"]
    port = _free_port()
    process = subprocess.Popen(
        [str(site / "bin" / "mergescope"), "dashboard", "--port", str(port)],
        cwd=elsewhere,
        env=_installed_env(site),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + HANG_GUARD_S  # a hang guard: the loop ends when the server answers
        health = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as reply:
                    health = reply.read().decode()
                    break
            except OSError:
                time.sleep(0.5)
        assert health == "ok", f"no answer on port {port}; exit {process.poll()}"
        # 127.0.0.1 by default, and only there
        assert _listening_addresses(port) == {"127.0.0.1"}
        # the process is Streamlit itself (the command replaced itself, by the installed server entry),
        # running the installed app with every setting of the project's .streamlit/config.toml
        arguments = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")
        arguments = [a.decode() for a in arguments if a]
        app = site / "mergescope_app"
        assert arguments[1:4] == [str(app / "pages" / "_server.py"), "run", str(app / "app.py")]
        project = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
        assert project["runner"]["postScriptGC"] is False and project["client"]["toolbarMode"] == "minimal"
        assert "--runner.postScriptGC=false" in arguments
        assert "--client.toolbarMode=minimal" in arguments
        assert "--browser.gatherUsageStats=false" in arguments
        assert f"--server.port={port}" in arguments
        environ = dict(
            item.split("=", 1)
            for item in Path(f"/proc/{process.pid}/environ").read_bytes().decode().split("\0")
            if "=" in item
        )
        assert environ["MERGESCOPE_ZOO"] == str(site / "mergescope_app" / "zoo")
        assert environ["HF_HUB_OFFLINE"] == "1"
    finally:
        stop_process(process)
    assert process.returncode is not None
