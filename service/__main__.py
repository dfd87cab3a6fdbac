"""Serve the API on this machine.

    python -m service           # real weights from MODEL_DIR (downloaded once if absent)
    python -m service --demo    # tiny random-weight model, built locally if absent
"""

import argparse
import logging
import sys
from pathlib import Path

import uvicorn

from service.app import create_app
from service.backend import build_embedded, configure_logging, ensure_api_key
from service.config import Settings

log = logging.getLogger("service")
DEMO_MODEL_DIR = Path(".models/tiny-sd-inpainting")


def prepare_model(settings: Settings, demo: bool) -> None:
    if demo:
        settings.demo = True
        settings.model_dir = DEMO_MODEL_DIR
        if not (DEMO_MODEL_DIR / "model_index.json").is_file():
            from weights.tiny import build

            build(DEMO_MODEL_DIR)
        log.warning("=" * 72)
        log.warning("DEMO MODE: serving a tiny RANDOM-WEIGHT model from %s.", DEMO_MODEL_DIR)
        log.warning("It exercises the real pipeline but paints noise. Use `make serve` for real images.")
        log.warning("=" * 72)
        return
    if (settings.model_dir / "model_index.json").is_file():
        return
    log.info("no weights in %s; downloading them once (about 2.1 GB)", settings.model_dir)
    from weights.download import REPO_ID, download

    try:
        download(settings.model_dir, safety_checker=settings.safety_checker)
    except Exception as exc:
        sys.exit(
            f"error: no model in MODEL_DIR={settings.model_dir} and it could not be downloaded "
            f"from {REPO_ID}: {exc}\n"
            f"Fetch it where the Hugging Face hub is reachable with "
            f"`python -m weights.download {settings.model_dir}` and copy it here, "
            f"set MODEL_DIR to a directory that holds it, or run `make demo` for the tiny demo model."
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", action="store_true", help="serve the tiny random-weight demo model")
    args = parser.parse_args(argv)
    configure_logging()

    settings = Settings()
    prepare_model(settings, args.demo)
    generated = ensure_api_key(settings)
    app = create_app(build_embedded(settings))
    url = settings.public_base_url or f"http://{settings.host}:{settings.port}"
    if generated:
        log.warning("no API_KEYS set: use this generated key (kept in %s/api_key): %s", settings.state_dir, generated)
    log.info("serving on %s  (docs: %s/docs)", url, url)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", proxy_headers=True)


if __name__ == "__main__":
    main()
