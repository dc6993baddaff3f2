"""Shared test setup: offline hub, one CPU thread, a CUDA skip marker."""

import os
import tempfile

# Never reach real weights or the network: an empty model cache for the whole session (a
# machine with FLUX or MoGe in its own cache would otherwise load them in the `auto` tests),
# and offline hubs. Set before anything imports huggingface_hub, which reads them once.
_EMPTY_HF_HOME = tempfile.mkdtemp(prefix="matrix_world-tests-hf-")
os.environ["HF_HOME"] = _EMPTY_HF_HOME
os.environ["HF_HUB_CACHE"] = os.path.join(_EMPTY_HF_HOME, "hub")
os.environ.pop("HUGGINGFACE_HUB_CACHE", None)
os.environ.pop("TRANSFORMERS_CACHE", None)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")  # pipelines run in-process and in subprocesses keep one thread
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

@pytest.fixture(autouse=True, scope="session")
def _one_cpu_thread():
    """The tests run tiny models and tensors, which are overhead-bound: one intra-op thread is
    as fast on an idle machine and 10-50x faster than two when the CPU is shared (OpenMP
    threads spin against other processes). Restored at the end."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (runs on the H100/H200 machine)")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (runs on the H100/H200 machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


# ----------------------------------------------------------------- the script tests' shared runs


@pytest.fixture(scope="session")
def env(tmp_path_factory) -> dict:
    """Subprocess environment of the script tests (tests/script_helpers.py: script_env)."""
    from script_helpers import script_env

    return script_env(tmp_path_factory)


@pytest.fixture(scope="session")
def world_run(tmp_path_factory, env):
    """``text2world.py PROMPT`` with small sizes and the default run directory (under the cwd):
    (run folder, stdout), shared by tests/test_scripts_world.py and test_scripts_tools.py."""
    from script_helpers import PROMPT, SMALL, run_script

    cwd = tmp_path_factory.mktemp("text2world")
    proc = run_script("text2world.py", PROMPT, *SMALL, env=env, cwd=cwd)
    runs = list((cwd / "outputs").iterdir())
    assert len(runs) == 1, runs
    return runs[0], proc.stdout
