"""The static checks (.ci/static: ruff, then mypy with pyproject.toml's [tool.mypy]) catch the
bug class that all-CPU tests miss: a misspelt attribute or keyword in code no test reaches."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = '''\
from dataclasses import dataclass

import torch


@dataclass
class Options:
    steps: int = 1


def pick_device(name):  # unannotated, as most functions here
    return "cuda" if torch.cuda.isweights_available() else "cpu"


def make():
    return Options(step=2)
'''


@pytest.mark.slow
def test_mypy_config_reports_misspelt_attribute_and_keyword_in_untyped_code(tmp_path):
    """mypy with the project's configuration on a module holding the review-rename bug
    (torch.cuda.isweights_available) and an unknown dataclass keyword, both in unannotated
    functions. Slow when mypy's cache is cold (torch's stubs: ~25 s CPU); it shares the
    repository's .mypy_cache with .ci/static, so after either it takes ~2 s."""
    mypy_api = pytest.importorskip("mypy.api")
    (tmp_path / "probe.py").write_text(PROBE)
    out, err, status = mypy_api.run([
        str(tmp_path / "probe.py"), "--config-file", str(ROOT / "pyproject.toml"),
        "--cache-dir", str(ROOT / ".mypy_cache"), "--no-error-summary",
    ])
    assert status == 1, (out, err)
    lines = out.splitlines()
    assert any(":12: error:" in line and "isweights_available" in line and line.endswith("[attr-defined]")
               for line in lines), out
    assert any(":16: error:" in line and '"step"' in line and line.endswith("[call-arg]") for line in lines), out
    assert len(lines) == 2, out  # nothing else in the probe is wrong


def test_static_checks_are_configured_and_pinned():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    script = ROOT / ".ci" / "static"
    text = script.read_text()
    assert "set -euo pipefail" in text and "ruff check" in text and "mypy" in text
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mypy_options = project["tool"]["mypy"]
    assert mypy_options["check_untyped_defs"] is True
    kept_on = {"attr-defined", "call-arg", "name-defined", "union-attr", "call-overload", "misc",
               "return-value", "index", "operator"}
    assert not kept_on & set(mypy_options.get("disable_error_code", []))
    assert "F" in project["tool"]["ruff"]["lint"]["select"]
    test_extra = project["project"]["optional-dependencies"]["test"]
    assert "mypy==2.4.1" in test_extra and "ruff==0.17.6" in test_extra  # CI installs only ".[test]"


def test_ci_runs_the_static_checks():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash .ci/static" in ci.splitlines(), ".ci/run must run the static checks (a line 'bash .ci/static')"


# --------------------------------------------------------------------------- import contracts


def _contract_run(tree: Path) -> tuple[int, str]:
    """lint-imports with the repository's contracts over the link tree ``tree`` (as .ci/imports)."""
    import os
    import subprocess
    import sys

    runner = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    proc = subprocess.run([sys.executable, "-c", runner, str(ROOT / "pyproject.toml"), "--no-cache"],
                          cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr


def _link_tree(tmp_path: Path, extra: dict[str, str]) -> Path:
    """The installed layout as links (as .ci/link_tree), plus ``extra`` {relative path: source}."""
    tree = tmp_path / "src"
    pkg = tree / "matrix_world"
    pkg.mkdir(parents=True)
    for entry in (ROOT / "matrix_world").iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    for sub in ("generation", "reconstruction", "datasets"):
        (pkg / sub).mkdir()
        for entry in (ROOT / sub).iterdir():
            if entry.name != "__pycache__":
                (pkg / sub / entry.name).symlink_to(entry)
    for rel, source in extra.items():
        (pkg / rel).write_text(source)
    return tree


@pytest.mark.slow
def test_import_contracts_hold_and_catch_a_violation(tmp_path):
    pytest.importorskip("importlinter")
    code, out = _contract_run(_link_tree(tmp_path / "clean", {}))
    assert code == 0 and "2 kept, 0 broken" in out, out
    # production code importing the synthetic datasets, and a module cycle: both refused
    code, out = _contract_run(_link_tree(tmp_path / "bad", {
        "generation/uses_datasets.py": "from matrix_world.datasets import procedural  # noqa: F401\n",
        "reconstruction/cycle_a.py": "from matrix_world.reconstruction import cycle_b  # noqa: F401\n",
        "reconstruction/cycle_b.py": "from matrix_world.reconstruction import cycle_a  # noqa: F401\n"}))
    assert code != 0 and "0 kept, 2 broken" in out, out
    assert "matrix_world.generation.uses_datasets -> matrix_world.datasets.procedural" in out, out


def test_ci_runs_the_import_contracts():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert "bash .ci/imports" in ci
    test_extra = (ROOT / "pyproject.toml").read_text()
    assert '"import-linter==2.17"' in test_extra
