"""The embedded server with its worker on a thread of the server process (how `python -m service` ran before
its worker got a process of its own), for comparisons. Not for production use.

    python -m scripts.bench.thread_worker_server        # the same settings as `python -m service --demo`
"""

import uvicorn

from service.__main__ import DEMO_MODEL_DIR, load_settings, prepare_model
from service.embedded import build_embedded, ensure_api_key
from service.http.app import create_app
from service.logs import configure_logging


def main() -> None:
    configure_logging()
    settings = load_settings()
    prepare_model(settings, demo=True)
    ensure_api_key(settings)

    def load():
        from inference import Inpainter

        return Inpainter.from_settings(settings)

    app = create_app(build_embedded(settings, make_inpainter=load))
    print(f"thread-worker demo server on {settings.host}:{settings.port} ({DEMO_MODEL_DIR})", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
