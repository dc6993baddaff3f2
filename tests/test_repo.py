"""Repository-level promises: the README's test command is what CI runs; imports stay light."""

import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("diffusers", "gsplat", "nvdiffrast", "moge", "transformers", "peft")


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- setup-commands -->\s*```(?:bash|sh)?\n(.*?)```", text, re.S)
    assert block, "README.md must hold the set-up commands in a fenced block after <!-- setup-commands -->"
    return [line.strip() for line in block.group(1).splitlines() if line.strip() and not line.strip().startswith("#")]


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    commands = readme_commands()
    assert len(commands) == 2, commands
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command.startswith("pip install torch==2.13.0")  # an unpinned torch pulls GBs of CUDA wheels
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci.splitlines(), "the README's test command must be the command .ci/run runs"


def test_ci_runs_the_readme_main_job_with_its_defaults_and_checks_it():
    main = next(c for c in readme_commands() if "pytest" not in c)
    job = main.split("&&")[-1].strip()  # python scripts/text2world.py "..."
    assert job.startswith("python scripts/text2world.py ") and "--device" not in job and "--preset" not in job
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert f'{job} --out "$main_job_out"' in ci, "CI must run the README's first command's job with its defaults"
    prompt = re.search(r'"([^"]+)"', job).group(1)
    assert f'python .ci/check_world.py "$main_job_out" "{prompt}"' in ci
    test_at = next(i for i, line in enumerate(ci) if "python -m pytest" in line)
    job_at = next(i for i, line in enumerate(ci) if line.startswith(job))
    assert test_at < job_at


def test_the_main_job_checker_catches_a_broken_world(tmp_path):
    sys.path.insert(0, str(ROOT / ".ci"))
    try:
        import check_world
    finally:
        sys.path.pop(0)
    import numpy as np
    from plyfile import PlyData, PlyElement

    assert check_world.problems(tmp_path, "x") == [f"{tmp_path / 'world.ply'} is missing"]
    fields = [(f, "f4") for f in check_world.FIELDS if f != "rot_3"]
    data = np.zeros(10, dtype=fields)
    data["x"][3] = np.nan
    PlyData([PlyElement.describe(data, "vertex")]).write(str(tmp_path / "world.ply"))
    found = " | ".join(check_world.problems(tmp_path, "x"))
    assert "lacks the standard 3DGS fields ['rot_3']" in found and "holds 10 Gaussians" in found
    assert "field x has 1 non-finite values" in found and "manifest.json is missing" in found


def test_import_is_light_and_fast():
    code = (
        "import sys, time; t = time.perf_counter(); import matrix_world, matrix_world.generation, "
        "matrix_world.reconstruction, matrix_world.datasets; dt = time.perf_counter() - t; "
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]; print(dt, heavy)"
    )
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    wall = time.perf_counter() - start
    dt, heavy = out.split(" ", 1)
    assert heavy.strip() == "[]", f"importing matrix_world pulled in {heavy.strip()}"
    assert float(dt) < 2.0 and wall < 10.0
