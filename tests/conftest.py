import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The tiny random-weight model, no safety checker."""
    from weights.tiny import build

    return build(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_flagging_model_dir(tmp_path_factory) -> Path:
    """The tiny model with a safety checker forced to flag every image."""
    from weights.tiny import build

    return build(tmp_path_factory.mktemp("tiny-model-flag"), safety_checker="flag")


@pytest.fixture(scope="session")
def inpainter(tiny_model_dir):
    from inference import Inpainter

    return Inpainter(tiny_model_dir)


def pytest_sessionfinish(session, exitstatus):
    """Let worker threads of stopped test servers finish the job they are in: a thread killed inside torch at
    interpreter exit aborts the process ("terminate called without an active exception", exit 134)."""
    import threading

    for thread in threading.enumerate():
        if thread.name == "inpaint-worker" and thread.is_alive():
            thread.join(120)
