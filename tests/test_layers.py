"""The import layers hold: every import in utils/, vlm_datasets/, training/, evals/ and scripts/, read with `ast` (no
module is imported), points down the layers, never at an entry point, and evals' library code drives no trainer.

Layers, bottom to top: utils (0) -> vlm_datasets (1) -> training (2) -> evals (3) -> entry points (4). A module may
import its own layer and those below it.
- Entry point: a module with a top-level `if __name__ == "__main__":` (a command: training/sft.py, evals/compare.py,
  every script). It sits at the top layer wherever its file is, except in utils (which imports nothing of the
  project), and nothing imports it: the code it runs lives in a library module that it imports
  (training/fine_tuning.py for training/sft.py, ...).
- scripts/ is the top layer throughout: orchestration that drives training and evaluation together (scripts/sweeps.py)
  is a library of that layer, imported by its command (scripts/sweep.py).
- Trainer modules: training.trainer, training.callbacks and every training module importing one of them, directly
  or through another. evals' library code may load models through training (training.models) but imports none of them.

Run alone (fast, no heavy import): python -m pytest -q tests/test_layers.py; `make lint` runs it too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = {"utils": 0, "vlm_datasets": 1, "training": 2, "evals": 3, "scripts": 4}
TOP = max(LAYERS.values())
TRAINER_ROOTS = ("training.trainer", "training.callbacks")


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package(root: Path, path: Path) -> str:
    return ".".join(path.parent.relative_to(root).parts)


def is_entry_point(tree: ast.Module) -> bool:
    """A top-level `if __name__ == "__main__":`."""
    for node in tree.body:
        test = node.test if isinstance(node, ast.If) else None
        if not (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"):
            continue
        if isinstance(test.ops[0], ast.Eq) and isinstance(test.comparators[0], ast.Constant):
            if test.comparators[0].value == "__main__":
                return True
    return False


def parse_tree(root: Path) -> dict[str, tuple[Path, ast.Module]]:
    """{module name: (file, syntax tree)} of every .py under the layered packages."""
    modules = {}
    for package in LAYERS:
        for path in sorted((root / package).rglob("*.py")):
            modules[module_name(root, path)] = (path, ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return modules


def imports(tree: ast.Module, package: str, known: set[str]) -> Iterator[tuple[int, str]]:
    """(line, module) of each import of a layered module (`package`: the importing file's folder, for relative
    imports); `from a import b` names a.b when that is a module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importing module's package up
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in dict.fromkeys(targets):
            if target.split(".")[0] in LAYERS:
                yield node.lineno, target


def trainer_modules(graph: dict[str, set[str]]) -> set[str]:
    """training.trainer, training.callbacks and every training module that imports one of them, at any depth."""
    found = set(TRAINER_ROOTS)
    while grown := {m for m, deps in graph.items() if m.startswith("training.") and deps & found} - found:
        found |= grown
    return found


def layer_violations(root: Path) -> list[str]:
    """'file:line -> module (why)' for every import that breaks the layers, in file order."""
    modules = parse_tree(root)
    known = set(modules)
    entry = {name for name, (_, tree) in modules.items() if is_entry_point(tree)}
    found = {name: list(imports(tree, package(root, path), known)) for name, (path, tree) in modules.items()}
    trainers = trainer_modules({name: {t for _, t in imps} for name, imps in found.items()})

    def layer(name: str) -> int:  # utils imports nothing of the project, a command there included
        return TOP if name in entry and not name.startswith("utils.") else LAYERS[name.split(".")[0]]

    problems = []
    for name, imps in found.items():
        where = modules[name][0].relative_to(root)
        for line, target in imps:
            if target in entry:
                why = "an entry point: import its library module instead"
            elif layer(target) > layer(name):
                why = f"layer {layer(target)} imported from layer {layer(name)}"
            elif name.startswith("evals.") and name not in entry and target in trainers:
                why = "a trainer module imported by evals library code"
            else:
                continue
            problems.append(f"{where}:{line} -> {target} ({why})")
    return problems


def test_the_repository_keeps_its_layers():
    problems = layer_violations(REPO)
    assert not problems, "imports against the layers:\n" + "\n".join(problems)


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


MAIN = 'if __name__ == "__main__":\n    main()\n'


def test_scanner_names_each_kind_of_violation(tmp_path):
    write(
        tmp_path,
        {
            "utils/__init__.py": "",
            "utils/io.py": "import json\n\nfrom vlm_datasets.example import Example\n",
            "utils/bookmarks.py": f"from vlm_datasets.example import Example\n\n\n{MAIN}",
            "vlm_datasets/example.py": "from utils import io\n",
            "training/trainer.py": "from vlm_datasets.example import Example\n",
            "training/loop.py": "def run():\n    from training.trainer import T\n",
            "training/models.py": "from utils.io import x\n",
            "training/sft.py": f"from training.loop import run\n\n\n{MAIN}",
            "evals/score.py": "from training.models import load\nfrom training import loop\nfrom .cli import main\n",
            "evals/cli.py": f"from evals.score import s\n\n\n{MAIN}",
            "scripts/sweeps.py": "from training.sft import main\nfrom evals.score import s\n",
            "scripts/sweep.py": f"from scripts.sweeps import run\n\n\n{MAIN}",
        },
    )
    assert layer_violations(tmp_path) == [
        "utils/bookmarks.py:1 -> vlm_datasets.example (layer 1 imported from layer 0)",
        "utils/io.py:3 -> vlm_datasets.example (layer 1 imported from layer 0)",
        "evals/score.py:2 -> training.loop (a trainer module imported by evals library code)",
        "evals/score.py:3 -> evals.cli (an entry point: import its library module instead)",
        "scripts/sweeps.py:1 -> training.sft (an entry point: import its library module instead)",
    ]


def test_scanner_accepts_a_tree_that_keeps_its_layers(tmp_path):
    write(
        tmp_path,
        {
            "utils/io.py": "import os\n",
            "vlm_datasets/example.py": "from utils.io import x\n",
            "training/models.py": "import vlm_datasets.example\n",
            "evals/score.py": "from training.models import load\nif __name__ != '__main__':\n    pass\n",
            "evals/cli.py": f"from evals import score\n\n\n{MAIN}",
            "scripts/run.py": f"from evals.score import s\nfrom training.models import load\n\n\n{MAIN}",
        },
    )
    assert layer_violations(tmp_path) == []
