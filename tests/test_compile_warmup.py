"""torch.compile's warm-up at a GPU container's start: the cache committed as it grows, and an attempt that was
killed at the start-up limit never tried again by the same deployment (inference/compile_warmup.py)."""

import threading
import time

import pytest

from inference.compile_warmup import WarmupRecord, warm_up

DEPLOYMENT = {"torch": "2.13.0", "gpu": "L4", "weights": "sd15-inpainting-1", "startup_timeout": 600}


def test_the_cache_is_committed_while_the_warm_up_runs_and_at_its_end(tmp_path):
    record = WarmupRecord(tmp_path, DEPLOYMENT, startup_timeout=600)
    commits, enough = [], threading.Event()

    def commit():
        commits.append(record.path.read_text())
        if len(commits) >= 3:  # the start, then two while compiling
            enough.set()

    def compile_once():
        assert enough.wait(30), "the cache was not committed while the warm-up ran"

    seconds = warm_up(compile_once, record, commit, commit_every=0.01)
    assert seconds >= 0 and '"finished"' in commits[-1] and '"finished"' not in commits[0]
    assert record.skip_reason() is None


def test_an_attempt_killed_at_the_start_up_limit_is_not_repeated(tmp_path):
    record = WarmupRecord(tmp_path, DEPLOYMENT, startup_timeout=600)
    record.write(started=time.time() - 601)  # started, never finished, and Modal's limit has passed
    assert "never finished" in record.skip_reason()
    assert WarmupRecord(tmp_path, {**DEPLOYMENT, "startup_timeout": 1200}, 1200).skip_reason() is None


def test_an_attempt_still_within_the_limit_is_not_taken_for_dead(tmp_path):
    """Another container compiling right now: this one compiles too rather than give up."""
    record = WarmupRecord(tmp_path, DEPLOYMENT, startup_timeout=600)
    record.write(started=time.time() - 30)
    assert record.skip_reason() is None


def test_a_failed_warm_up_is_not_repeated_either(tmp_path):
    record = WarmupRecord(tmp_path, DEPLOYMENT, startup_timeout=600)

    def broken():
        raise RuntimeError("compile failed")

    with pytest.raises(RuntimeError):
        warm_up(broken, record, lambda: None)
    assert "failed (RuntimeError: compile failed)" in record.skip_reason()  # later containers serve eager
