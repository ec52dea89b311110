"""The README's layout table matches the tree: every module of the packages and every entry point is listed once, and
every listed path exists. Reads README.md and lists files; imports nothing of the lab."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("utils", "vlm_datasets", "training", "evals", "scripts")
ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|")  # a table row whose first cell is one backticked path


def layout_paths(readme: str) -> list[str]:
    """First-column paths of the table under '## Layout' (up to the next '## ' heading)."""
    match = re.search(r"^## Layout\n(.*?)(?=^## |\Z)", readme, re.MULTILINE | re.DOTALL)
    if match is None:
        raise AssertionError("README.md has no '## Layout' section")
    return [row.group(1) for line in match.group(1).splitlines() if (row := ROW.match(line))]


def tree_modules(repo: Path) -> set[str]:
    """Every .py file under the package folders except __init__.py, as repository-relative paths."""
    return {
        path.relative_to(repo).as_posix()
        for folder in FOLDERS
        for path in (repo / folder).rglob("*.py")
        if path.name != "__init__.py"
    }


def test_layout_table_is_found():
    assert layout_paths((REPO / "README.md").read_text()), "the '## Layout' section of README.md holds no table rows"


def test_every_module_is_listed():
    listed = set(layout_paths((REPO / "README.md").read_text()))
    missing = sorted(tree_modules(REPO) - listed)
    assert not missing, f"README.md's layout table misses {missing}: add a row with a one-line role"


def test_every_listed_path_exists_and_is_listed_once():
    listed = layout_paths((REPO / "README.md").read_text())
    absent = [p for p in listed if not (REPO / p).exists()]
    assert not absent, f"README.md's layout table lists paths that do not exist: {absent}"
    repeated = sorted({p for p in listed if listed.count(p) > 1})
    assert not repeated, f"README.md's layout table lists these more than once: {repeated}"


def test_layout_paths_reads_only_the_layout_sections_table():
    readme = "## Layout\n\n| path | role |\n| --- | --- |\n| `a.py` | a |\n\n## Next\n\n| `b.py` | b |\n"
    assert layout_paths(readme) == ["a.py"]
    with pytest.raises(AssertionError, match="no '## Layout' section"):
        layout_paths("# Title\n\n## Tests\n")
