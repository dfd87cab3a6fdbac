"""Deploy to Modal with nothing but a Modal account: `make deploy` (python -m scripts.modal_deploy).

1. Knobs: the INPAINT_* and runtime settings (GPU, containers, limits, ...) of the last deploy from this clone
   are kept in .modal-deploy.env and used again; a variable set in the environment now replaces one, and every
   change is printed before anything happens. `modal deploy app.py` alone would reset a knob not passed again.
2. Secrets: the API-key and webhook Secrets are created with generated values when missing. A generated API key
   is printed once and kept in .modal-api-key (mode 600; both files are git-ignored). Existing Secrets are
   never changed.
3. Weights: when the weight Volume has none, or lacks the mask model, `modal run app.py::download_weights` fills
   it first (about 2.7 GB from the Hugging Face hub, no token needed; 600 MB when only the mask model is missing).
4. `modal deploy app.py`, with the knobs as its environment; then the knobs are saved.

    python -m scripts.modal_deploy [--dry-run]     # --dry-run: print and check the knobs, change nothing
"""

import argparse
import os
import secrets
import subprocess
import sys
from pathlib import Path

from weights import MASK_MODEL_FOLDER, MASK_MODEL_WEIGHTS

KNOBS_FILE = Path(".modal-deploy.env")
API_KEY_FILE = Path(".modal-api-key")


def knob_names() -> set[str]:
    """Environment variables a deploy reads: INPAINT_* (DeployConfig) and the runtime settings app.py hands to
    the containers (those that are not secrets)."""
    from service.config import DERIVED_SETTINGS, DeployConfig, Settings

    names = {f"INPAINT_{name.upper()}" for name in DeployConfig.model_fields}
    return names | {name.upper() for name in Settings.model_fields
                    if name not in DERIVED_SETTINGS and not name.startswith("s3_")}


def read_knobs(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#"))
    return {name.strip(): value for name, value in pairs}


def write_knobs(path: Path, knobs: dict[str, str]) -> None:
    lines = ["# The knobs of the last `make deploy` from this clone; edit, or set a variable to change one."]
    path.write_text("\n".join(lines + [f"{name}={knobs[name]}" for name in sorted(knobs)]) + "\n")


def merge_knobs(saved: dict[str, str], environ: dict[str, str], names: set[str]) -> tuple[dict[str, str], list[str]]:
    """The knobs for this deploy (saved ones, replaced by any set in `environ`) and a line per change."""
    knobs = dict(saved)
    changes = []
    for name in sorted(names & environ.keys()):
        if saved.get(name) != environ[name]:
            was = saved.get(name, "(default)")
            changes.append(f"{name}: {was} -> {environ[name]}")
        knobs[name] = environ[name]
    return knobs, changes


def knob_problems(knobs: dict[str, str]) -> list[str]:
    """One line per knob the deploy, or its containers, would refuse (the same checks app.py makes)."""
    from pydantic import ValidationError

    from service.config import DeployConfig, Settings

    problems = []
    runtime = {name.lower(): value for name, value in knobs.items() if not name.startswith("INPAINT_")}
    deploy = {name.removeprefix("INPAINT_").lower(): value for name, value in knobs.items()
              if name.startswith("INPAINT_")}
    for model, values, prefix in ((DeployConfig, deploy, "INPAINT_"), (Settings, runtime, "")):
        try:
            model.model_validate(values)
        except ValidationError as exc:
            problems += [f"{prefix}{'.'.join(map(str, e['loc'])).upper()}: {e['msg'].removeprefix('Value error, ')}"
                         for e in exc.errors(include_url=False)]
    return problems


def generated_secrets(existing: set[str], cfg) -> dict[str, dict[str, str]]:
    """The Secrets to create (name -> contents) for those app.py needs that do not exist yet."""
    from service.jobs.webhooks import new_secret

    wanted = {cfg.api_keys_secret: {"API_KEYS": "sk-" + secrets.token_urlsafe(24)},
              cfg.webhook_secret: {"WEBHOOK_SECRET": new_secret()}}
    return {name: contents for name, contents in wanted.items() if name not in existing}


def names(entries) -> set[str]:
    """The last part of each listed path (Modal lists entries of a folder by their path in the Volume)."""
    return {entry.path.rstrip("/").rsplit("/", 1)[-1] for entry in entries}


def missing_weights(volume) -> str | None:
    """What download_weights would fetch into the weight Volume, or None when it holds everything."""
    if "CURRENT" not in names(volume.listdir("/")):
        return "weights (about 2.7 GB)"
    current = b"".join(volume.read_file("CURRENT")).decode().strip()
    # A download cut short leaves the folder with its small files and no weights.
    if (MASK_MODEL_FOLDER not in names(volume.listdir(f"/{current}"))
            or not set(MASK_MODEL_WEIGHTS) & names(volume.listdir(f"/{current}/{MASK_MODEL_FOLDER}"))):
        return "mask model for mask_prompt (about 600 MB)"
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)

    knobs, changes = merge_knobs(read_knobs(KNOBS_FILE), dict(os.environ), knob_names())
    if KNOBS_FILE.is_file():
        print(f"knobs from the last deploy ({KNOBS_FILE}): " + (", ".join(f"{k}={v}" for k, v in sorted(knobs.items()))
                                                             or "none"))
    print("changed since the last deploy:\n  " + "\n  ".join(changes) if changes else "no knob changed")
    if problems := knob_problems(knobs):
        sys.exit("error: invalid knobs, nothing was changed:\n  " + "\n  ".join(problems))
    env = {**os.environ, **knobs}
    os.environ.update(knobs)  # DeployConfig below reads what the deploy will read
    from service.config import DeployConfig

    cfg = DeployConfig()
    if args.dry_run:
        print(f"would deploy app {cfg.app_name!r} on {cfg.gpu}; nothing changed (--dry-run)")
        return 0

    import modal

    existing = {secret.name for secret in modal.Secret.objects.list()}
    for name, contents in generated_secrets(existing, cfg).items():
        modal.Secret.objects.create(name, contents)
        print(f"created the Modal Secret {name!r}")
        if "API_KEYS" in contents:
            API_KEY_FILE.write_text(contents["API_KEYS"] + "\n")
            API_KEY_FILE.chmod(0o600)
            print(f"your API key (also in {API_KEY_FILE}): {contents['API_KEYS']}")

    weights = modal.Volume.from_name(cfg.weights_volume, create_if_missing=True)
    if missing := missing_weights(weights):
        print(f"the Volume {cfg.weights_volume!r} has no {missing} yet: downloading it once")
        subprocess.run([sys.executable, "-m", "modal", "run", "app.py::download_weights"], env=env, check=True)

    subprocess.run([sys.executable, "-m", "modal", "deploy", "app.py"], env=env, check=True)
    write_knobs(KNOBS_FILE, knobs)
    print(f"knobs saved to {KNOBS_FILE}; the next `make deploy` uses them unless you set others")
    return 0


if __name__ == "__main__":
    sys.exit(main())
