"""torch.compile's warm-up at a GPU container's start: the cache committed as it grows, and an attempt that
failed, or that went quiet without finishing (killed at the start-up limit), never tried again by the same
deployment (inference/compile_warmup.py)."""

import json
import threading
import time

import pytest

from inference.compile_warmup import QUIET_ROUNDS, WarmupRecord, warm_up

DEPLOYMENT = {"gpu": "L4", "weights": "sd15-inpainting-1", "startup_timeout": 600}


def test_the_cache_is_committed_while_the_warm_up_runs_and_at_its_end(tmp_path):
    record = WarmupRecord(tmp_path, DEPLOYMENT)
    commits, enough = [], threading.Event()

    def commit():
        commits.append(json.loads(record.path.read_text()))
        if len(commits) >= 3:  # the start, then two while compiling
            enough.set()

    def compile_once():
        assert enough.wait(30), "the cache was not committed while the warm-up ran"

    seconds = warm_up(compile_once, record, commit, commit_every=0.01)
    assert seconds >= 0 and "finished" in commits[-1] and "finished" not in commits[0]
    assert commits[2]["alive"] > commits[0]["alive"]  # a sign of life with each commit
    assert record.skip_reason() is None


def test_an_attempt_that_went_quiet_without_finishing_is_not_repeated(tmp_path):
    record = WarmupRecord(tmp_path, DEPLOYMENT)
    started = time.time() - 600
    record.write(started=started, alive=started + 100, every=30)  # killed 500 s ago, mid-compile
    assert "without finishing" in record.skip_reason()
    assert WarmupRecord(tmp_path, {**DEPLOYMENT, "startup_timeout": 900}).skip_reason() is None  # a new deployment


def test_an_attempt_still_alive_in_another_container_is_not_taken_for_dead(tmp_path):
    record = WarmupRecord(tmp_path, DEPLOYMENT)
    record.write(started=time.time() - 300, alive=time.time() - 30, every=30)
    assert record.skip_reason() is None
    assert record.skip_reason(now=time.time() + QUIET_ROUNDS * 30) is not None  # once it stays quiet


def test_a_failed_warm_up_is_not_repeated_either(tmp_path):
    record = WarmupRecord(tmp_path, DEPLOYMENT)

    def broken():
        raise RuntimeError("compile failed")

    with pytest.raises(RuntimeError):
        warm_up(broken, record, lambda: None)
    assert "failed (RuntimeError: compile failed)" in record.skip_reason()  # later containers serve eager
