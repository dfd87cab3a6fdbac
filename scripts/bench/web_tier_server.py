"""The web tier alone (no model, no torch) for the cold-start benchmark. Not for production use.

    python -m scripts.bench.web_tier_server PORT REPORT_JSON
"""

import json
import sys
import time

STARTED = time.perf_counter()

import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import uvicorn  # noqa: E402

from service.http.app import create_app  # noqa: E402
from service.embedded import build_embedded  # noqa: E402
from service.config import Settings  # noqa: E402


class NoModel:
    """Stands where the model would be: the benchmark measures the web tier's start only."""

    device = None


def main() -> None:
    port, report = int(sys.argv[1]), Path(sys.argv[2])
    state = Path(tempfile.mkdtemp(prefix="web-tier-"))
    settings = Settings(api_keys=["k"], state_dir=state)
    app = create_app(build_embedded(settings, make_inpainter=NoModel))

    report.write_text(json.dumps({
        "import_to_app_built_s": time.perf_counter() - STARTED,
        "torch_imported": "torch" in sys.modules,
        "diffusers_imported": "diffusers" in sys.modules,
    }))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
