"""The package layout holds: imports go one way (pyproject.toml [tool.importlinter], also run by `make lint`), no
cycle, no gradio in the engine, and no engine file over ~500 lines without the reason at its top."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
MAX_LINES = 500
REASON = "Over 500 lines:"


def _lint(tree: Path) -> subprocess.CompletedProcess:
    """lint-imports over ``tree``. requirements-dev.txt holds import-linter and `make install` always installs it, so
    a missing lint-imports is a broken install: these tests fail then, they never skip."""
    assert LINT_IMPORTS.exists(), f"{LINT_IMPORTS}: import-linter is not installed (make install)"
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=tree, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def copy(tmp_path_factory) -> Path:
    """The packages and the contracts, copied: the tests below add imports against the rules to the copy."""
    tree = tmp_path_factory.mktemp("tree")
    for package in ("core", "retrieval", "ui"):
        shutil.copytree(ROOT / package, tree / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


def test_the_repository_keeps_every_contract():
    done = _lint(ROOT)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "4 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(("module", "line", "broken"), [
    ("core/models.py", "from core.engine import Engine", "Each layer imports only the layers below it"),
    ("core/training/loop.py", "from core.inference import load_trained_model", "Each layer imports only"),
    ("retrieval/embeddings.py", "from core.models import load_embedding_model", "retrieval uses only core's base"),
    ("core/arena/runner.py", "import gradio", "never imports gradio"),
    ("core/data/files.py", "from core.data.prompts import render_prompt", "No import cycle"),
])
def test_an_import_against_the_rules_breaks_a_contract(copy, module, line, broken):
    """Function-level imports count too: the line goes inside a function, where circles used to hide."""
    path = copy / module
    original = path.read_text()
    path.write_text(original + f"\n\ndef _against_the_rules():\n    {line}  # noqa\n")
    try:
        done = _lint(copy)
    finally:
        path.write_text(original)
    assert done.returncode != 0
    assert broken in done.stdout.replace("\n", " ")


def test_no_engine_file_is_over_500_lines_without_its_reason():
    long = []
    for path in sorted([*(ROOT / "core").rglob("*.py"), *(ROOT / "retrieval").rglob("*.py")]):
        lines = path.read_text(encoding="utf-8").splitlines()
        if len(lines) > MAX_LINES and REASON not in "\n".join(lines[:15]):
            long.append(f"{path.relative_to(ROOT)}: {len(lines)} lines")
    assert long == [], f"split these, or state at their top why not ({REASON} ...)"
