"""torch.compile's warm-up at a GPU container's start, with a bound.

A compile cannot be interrupted, and on Modal a start that runs past the function's startup timeout is
killed and tried again: a compile longer than that would be a billed crash loop. So each attempt is written
down on the compile-cache Volume before it starts. A container that finds an attempt for the same
deployment that failed, or that started longer ago than the startup timeout and never finished (Modal
killed it), serves without compiling (saying so in its log) instead of trying again. Meanwhile the cache
is committed as it grows, so what a killed attempt compiled is kept.
"""

import hashlib
import json
import logging
import threading
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

COMMIT_EVERY = 30.0  # seconds between commits of the compile cache during a warm-up


class WarmupRecord:
    """The attempt markers of one deployment's compile, in the compile cache directory."""

    def __init__(self, cache_dir: Path, deployment: dict, startup_timeout: float):
        tag = hashlib.sha256(json.dumps(deployment, sort_keys=True).encode()).hexdigest()[:16]
        self.path = Path(cache_dir) / f"warmup-{tag}.json"
        self.startup_timeout = startup_timeout

    def skip_reason(self, now: float | None = None) -> str | None:
        """Why not to compile: an earlier attempt that failed or must have been killed; None when compiling is
        fine (no attempt yet, one that finished, or one still within the start-up limit)."""
        try:
            state = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        if state.get("failed") is not None:
            return f"an earlier container's torch.compile warm-up for this deployment failed ({state.get('error')})"
        age = (time.time() if now is None else now) - state.get("started", 0)
        if state.get("finished") is None and age > self.startup_timeout:
            return (f"an earlier container's torch.compile warm-up for this deployment started {age:.0f}s ago and "
                    f"never finished (killed at the {self.startup_timeout:g}s start-up limit)")
        return None

    def write(self, **state: float | str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(state))


def warm_up(run_once: Callable[[], None], record: WarmupRecord, commit: Callable[[], None],
            commit_every: float = COMMIT_EVERY) -> float:
    """Run `run_once` (one small job, which compiles), committing the cache every `commit_every` seconds
    meanwhile and once at the end. Returns the seconds it took."""
    started = time.time()
    record.write(started=started)
    commit()
    done = threading.Event()

    def keep_committing() -> None:
        while not done.wait(commit_every):
            try:
                commit()
            except Exception:
                log.warning("committing the compile cache during the warm-up failed", exc_info=True)

    committer = threading.Thread(target=keep_committing, name="compile-cache-commit", daemon=True)
    committer.start()
    try:
        run_once()
    except Exception as exc:
        record.write(started=started, failed=time.time(), error=f"{type(exc).__name__}: {exc}"[:500])
        raise
    finally:
        done.set()
        committer.join()
    elapsed = time.time() - started
    record.write(started=started, finished=time.time())
    commit()
    return elapsed
