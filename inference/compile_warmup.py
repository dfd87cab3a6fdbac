"""torch.compile's warm-up at a GPU container's start, with a bound.

A compile cannot be interrupted, and on Modal a start that runs past the function's startup timeout is
killed and tried again: a compile longer than that would be a billed crash loop. So each attempt is written
down on the compile-cache Volume and kept fresh while it runs. A container that finds an attempt for the same
deployment that failed, or that went quiet without finishing (Modal killed it), serves without compiling
(saying so in its log) instead of trying again. Meanwhile the cache is committed as it grows, so what a killed
attempt compiled is kept.
"""

import hashlib
import json
import logging
import threading
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

COMMIT_EVERY = 30.0  # seconds between commits of the compile cache (and signs of life) during a warm-up
QUIET_ROUNDS = 3  # an unfinished attempt silent for this many rounds is dead


class WarmupRecord:
    """The attempt record of one deployment's compile, in the cache directory. A deployment is `deployment`
    (GPU, weights, start-up limit...) with the torch release and this package's code: a fix of either is a new
    deployment, which compiles again."""

    def __init__(self, cache_dir: Path, deployment: dict):
        import torch

        code = hashlib.sha256(b"".join(path.read_bytes() for path in sorted(Path(__file__).parent.glob("*.py"))))
        facts = {**deployment, "torch": torch.__version__, "code": code.hexdigest()}
        self.tag = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]
        self.path = Path(cache_dir) / f"warmup-{self.tag}.json"

    def skip_reason(self, now: float | None = None) -> str | None:
        """Why not to compile: an earlier attempt that failed, or that stopped without finishing; None when
        compiling is fine (no attempt yet, one that finished, or one still running in another container)."""
        try:
            state = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        if state.get("failed") is not None:
            return f"an earlier torch.compile warm-up of this deployment failed ({state.get('error')})"
        quiet = (time.time() if now is None else now) - state.get("alive", 0)
        if state.get("finished") is None and quiet > QUIET_ROUNDS * state.get("every", COMMIT_EVERY):
            return (f"an earlier torch.compile warm-up of this deployment stopped {quiet:.0f}s ago without "
                    f"finishing (killed, as at the start-up limit)")
        return None

    def write(self, **state: float | str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(state))


def warm_up(run_once: Callable[[], None], record: WarmupRecord, commit: Callable[[], None],
            commit_every: float = COMMIT_EVERY) -> float:
    """Run `run_once` (one small job, which compiles), marking the attempt alive and committing the cache every
    `commit_every` seconds meanwhile and once at the end. Returns the seconds it took."""
    started = time.time()
    record.write(started=started, alive=started, every=commit_every)
    commit()
    done = threading.Event()

    def keep_committing() -> None:
        while not done.wait(commit_every):
            try:
                record.write(started=started, alive=time.time(), every=commit_every)
                commit()
            except Exception:
                log.warning("committing the compile cache during the warm-up failed", exc_info=True)

    committer = threading.Thread(target=keep_committing, name="compile-cache-commit", daemon=True)
    committer.start()
    try:
        run_once()
    except Exception as exc:
        done.set()
        committer.join()
        record.write(started=started, failed=time.time(), error=f"{type(exc).__name__}: {exc}"[:500])
        commit()
        raise
    done.set()
    committer.join()
    elapsed = time.time() - started
    record.write(started=started, alive=time.time(), finished=time.time())
    commit()
    return elapsed
