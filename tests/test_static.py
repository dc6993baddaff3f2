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
