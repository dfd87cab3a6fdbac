"""Serve the API on this machine.

    python -m service           # real weights from MODEL_DIR (downloaded once if absent)
    python -m service --demo    # tiny random-weight model, built locally if absent
"""

import argparse
import errno
import logging
import socket
import sys
from pathlib import Path

import uvicorn
from filelock import FileLock, Timeout
from pydantic import ValidationError

from service.http.app import create_app
from service.embedded import build_embedded, ensure_api_key
from service.config import Settings, state_dir_problem
from service.logs import configure_logging

log = logging.getLogger("service")
DEMO_MODEL_DIR = Path(".models/tiny-sd-inpainting")


def prepare_model(settings: Settings, demo: bool) -> None:
    if demo:
        settings.demo = True
        settings.model_dir = DEMO_MODEL_DIR
        from weights import MASK_MODEL_FOLDER, has_mask_model

        if not (DEMO_MODEL_DIR / "model_index.json").is_file():
            from weights.tiny import build

            build(DEMO_MODEL_DIR)
        elif not has_mask_model(DEMO_MODEL_DIR / MASK_MODEL_FOLDER):  # built before mask_prompt
            from weights.tiny import build_mask_model

            build_mask_model(DEMO_MODEL_DIR / MASK_MODEL_FOLDER)
        log.warning("=" * 72)
        log.warning("DEMO MODE: serving a tiny RANDOM-WEIGHT model from %s.", DEMO_MODEL_DIR)
        log.warning("It exercises the real pipeline but paints noise. Use `make serve` for real images.")
        log.warning("=" * 72)
        return
    if (settings.model_dir / "model_index.json").is_file():
        add_mask_model(settings)
        return
    from weights.download import REPO_ID, download, hub_problem

    try:
        problem = hub_problem()
        if problem:
            raise RuntimeError(problem)
        log.info("no weights in %s; downloading them once (about 2.1 GB)", settings.model_dir)
        download(settings.model_dir, safety_checker=settings.safety_checker, mask_model=False)
    except Exception as exc:
        sys.exit(
            f"error: no model in MODEL_DIR={settings.model_dir} and it could not be downloaded "
            f"from {REPO_ID}: {exc}\n"
            f"Fetch it where the Hugging Face hub is reachable with "
            f"`python -m weights.download {settings.model_dir}` and copy it here, "
            f"set MODEL_DIR to a directory that holds it, or run `make demo` for the tiny demo model."
        )
    add_mask_model(settings)  # apart: the service runs without it, only mask_prompt needs it


def add_mask_model(settings: Settings) -> None:
    """Weights fetched before mask_prompt existed lack the mask model: fetch it once beside them. Without the hub
    the service still starts; only requests with mask_prompt fail, saying why."""
    from weights import MASK_MODEL_FOLDER, has_mask_model

    folder = settings.model_dir / MASK_MODEL_FOLDER
    if settings.mask_model_dir is not None or has_mask_model(folder):  # an operator's own folder: theirs to fill
        return
    from weights.download import MASK_REPO_ID, download_mask_model, hub_problem

    try:
        if problem := hub_problem(MASK_REPO_ID):
            raise RuntimeError(problem)
        log.info("fetching the mask model for mask_prompt into %s (about 600 MB, once)", folder)
        download_mask_model(folder)
    except Exception as exc:
        log.warning("the mask model could not be fetched into %s (%s): requests with mask_prompt will fail; "
                    "fetch it with `python -m weights.download %s`", folder, exc, settings.model_dir)


def load_settings() -> Settings:
    """Settings from the environment, or exit with one line per bad variable (no traceback)."""
    try:
        return Settings()
    except ValidationError as exc:
        lines = [f"  {'.'.join(map(str, e['loc'])).upper()}: {e['msg'].removeprefix('Value error, ')}"
                 for e in exc.errors(include_url=False)]
        sys.exit("error: invalid configuration:\n" + "\n".join(lines))


def lock_state_dir(state_dir: Path) -> FileLock:
    """One server per STATE_DIR: a second one would take the first one's running jobs for dead and run them again."""
    lock = FileLock(state_dir / "server.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        sys.exit(f"error: another inpaint server is already using STATE_DIR={state_dir}. Stop it first, or give this "
                 f"one its own STATE_DIR (and PORT).")
    return lock


def public_url_problem(settings: Settings) -> str | None:
    """Beyond loopback, URLs in answers must not be built from the client's Host header."""
    if settings.public_base_url or settings.host in ("127.0.0.1", "localhost", "::1"):
        return None
    return (f"HOST={settings.host} serves beyond this machine, so set PUBLIC_BASE_URL to the address clients use "
            f"(e.g. PUBLIC_BASE_URL=http://my-server:{settings.port}): the status and result URLs in answers are "
            f"built from it, never from the Host header a client sends.")


def bind(host: str, port: int, demo: bool = False) -> socket.socket:
    """The listening address, taken before anything slow runs, so a busy port fails at once and clearly.
    `demo`: the server was started for the demo model, so the advice names the command that was run."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            sys.exit(f"error: port {port} on {host} is already in use (another server, or an earlier one still "
                     f"running). Stop it, or pick another port: PORT={port + 1} make {'demo' if demo else 'serve'}")
        sys.exit(f"error: cannot listen on {host}:{port} ({exc.strerror}). Check HOST and PORT.")
    return sock


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", action="store_true", help="serve the tiny random-weight demo model")
    args = parser.parse_args(argv)
    configure_logging()

    settings = load_settings()
    if problem := state_dir_problem(Path(settings.state_dir)) or public_url_problem(settings):
        sys.exit(f"error: {problem}")
    lock = lock_state_dir(Path(settings.state_dir))  # held until the process exits
    sock = bind(settings.host, settings.port, args.demo)
    prepare_model(settings, args.demo)
    generated = ensure_api_key(settings)
    app = create_app(build_embedded(settings))  # the worker process loads the model
    url = settings.public_base_url or f"http://{settings.host}:{settings.port}"
    if generated:
        log.warning("no API_KEYS set: use this generated key (kept in %s/api_key): %s", settings.state_dir, generated)
    count = len(settings.api_keys)
    log.info("%d API key%s configured (%s)", count, "" if count == 1 else "s", "generated" if generated else "API_KEYS")
    log.info("serving on %s  (docs: %s/docs)", url, url)
    # access_log=False: service/logs.py writes one JSON line per request; uvicorn's would be a second one.
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info", proxy_headers=True,
                            access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
