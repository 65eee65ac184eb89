import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Tests never touch the network: no hub, no telemetry.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# One converted copy of the bundled model for the whole test session (and across sessions).
os.environ.setdefault("FTSTUDIO_MODEL_CACHE", str(REPO / ".test-cache" / "models"))


def _has_cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:
        return False


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`make test` runs two pytest-xdist workers. A file's tests stay in one worker, so its module fixtures (a
    trained run, a merged model) are built once; the browser tests share one studio and one Chromium, so the
    whole of tests/e2e is one unit. (xdist's own `loadgroup` mode did not group anything in xdist 3.8.)"""
    from xdist.scheduler import LoadFileScheduling

    class FilesAndBrowserSuite(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "tests/e2e" if nodeid.startswith("tests/e2e/") else super()._split_scope(nodeid)

    return FilesAndBrowserSuite(config, log)


def pytest_collection_modifyitems(config, items):
    if not _has_cuda():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def bundled_dir() -> Path:
    from backend.core.models import ensure_bundled
    return ensure_bundled()


@pytest.fixture(scope="session")
def tiny_model_dir(bundled_dir) -> Path:
    from tests.tiny import make_tiny_model
    return make_tiny_model(REPO / ".test-cache" / "tiny-llama", bundled_dir)


@pytest.fixture()
def workspace(tmp_path, monkeypatch) -> Path:
    ws = tmp_path / "workspace"
    ws.mkdir()
    monkeypatch.setenv("FTSTUDIO_WORKSPACE", str(ws))
    return ws
