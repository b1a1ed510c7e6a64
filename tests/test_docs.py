"""The README is a front door and the docs hold together: README.md stays short, every relative link
in README.md and docs/*.md reaches a file (and, with `#anchor`, a heading GitHub would give that
anchor), every page under docs/ can be reached from the README, and the README's test command is
the one `.ci/run` runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]
README_MAX_LINES = 250

LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^()\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def prose(text: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code blanked (links there are not links)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            lines.append("")
            continue
        lines.append("" if fenced else re.sub(r"`[^`]*`", "``", line))
    return lines


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: the text as shown, lower case, punctuation and symbols dropped,
    spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link shows its text
    text = text.replace("`", "").strip().lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
        match = None if fenced else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = anchor(match.group(1))
            slug, n = base, 0
            while slug in found:  # GitHub numbers repeated headings: x, x-1, x-2
                n += 1
                slug = f"{base}-{n}"
            found.add(slug)
    return found


def relative_links(path: Path) -> list[tuple[int, str]]:
    links = []
    for number, line in enumerate(prose(path.read_text(encoding="utf-8")), start=1):
        for target in LINK.findall(line):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: are not checked
                links.append((number, target))
    return links


def test_the_readme_is_a_front_door_of_at_most_250_lines():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for number, target in relative_links(page):
        file_part, _, fragment = target.partition("#")
        destination = (page.parent / file_part).resolve() if file_part else page
        where = f"{page.relative_to(ROOT)}:{number}: {target}"
        if not destination.exists():
            broken.append(f"{where} (no such file)")
        elif fragment and destination.suffix == ".md" and fragment not in anchors(destination):
            broken.append(f"{where} (no heading gives #{fragment})")
    assert not broken, "\n".join(broken)


def test_the_anchor_rule_is_githubs():
    """Checked against anchors GitHub renders for headings of this kind."""
    assert anchor("Installing: the `mergescope` command") == "installing-the-mergescope-command"
    assert anchor("Searching λ (optional: Optuna, Ray)") == "searching-λ-optional-optuna-ray"
    assert anchor("λ search on the demo zoo (bench/search.py)") == "λ-search-on-the-demo-zoo-benchsearchpy"
    assert anchor("What mergescope refuses, and why") == "what-mergescope-refuses-and-why"


def test_a_broken_link_is_found(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [gone](missing.md) [bad](#nowhere)\n```\n[code](not-a-link.md)\n```\n"
                    "`[inline](nor-this.md)` [web](https://example.org/x)\n", encoding="utf-8")
    assert relative_links(page) == [(3, "#title"), (3, "missing.md"), (3, "#nowhere")]
    assert anchors(page) == {"title"}


def test_every_docs_page_is_reachable_from_the_readme():
    reached, todo = set(), [ROOT / "README.md"]
    while todo:
        page = todo.pop()
        if page in reached:
            continue
        reached.add(page)
        for _, target in relative_links(page):
            file_part = target.partition("#")[0]
            destination = (page.parent / file_part).resolve() if file_part else page
            if destination.suffix == ".md" and destination.exists():
                todo.append(destination)
    orphans = [str(p.relative_to(ROOT)) for p in DOCS if p.resolve() not in reached]
    assert not orphans, f"no link from README.md leads to {orphans}"


def test_the_readmes_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Two commands\n.*?```bash\n(.*?)```", readme, re.S)
    assert block, "README.md has no '## Two commands' section with a bash block"
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]
    assert commands == ["bash scripts/dashboard.sh", "bash scripts/test.sh"]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#") and not line.startswith(("set ", "cd "))]
    assert ci == [commands[1]]


def test_contributings_module_table_names_every_module_of_merging_and_only_those():
    """docs/CONTRIBUTING.md's table of `merging/` by role: a module added, moved or removed shows here."""
    text = (ROOT / "docs" / "CONTRIBUTING.md").read_text(encoding="utf-8")
    table = text.split("## The modules", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| role")]
    named = {cell.strip("`") for row in rows for column in row.split("|")[1:3] for cell in re.findall(r"`[^`]+`", column)}
    merging = ROOT / "merging"
    modules = {p.name for p in merging.glob("*.py") if p.name != "__init__.py"}
    packages = {f"{p.name}/" for p in merging.iterdir() if (p / "__init__.py").exists()}
    # each layer's modules by path, except the three packages the table describes as a whole
    modules |= {str(p.relative_to(merging)) for p in merging.glob("*/*.py")
                if p.name != "__init__.py" and p.parent.name not in {"methods", "tasks", "plots"}}
    assert modules | packages <= named, f"not in docs/CONTRIBUTING.md's module table: {sorted((modules | packages) - named)}"
    assert named <= modules | packages | {"app.py", "pages/"}, f"named but absent: {sorted(named - modules - packages)}"
