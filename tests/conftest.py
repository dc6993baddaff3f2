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
