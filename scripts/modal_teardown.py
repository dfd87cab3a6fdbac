"""Remove what the Modal deployment created: `make teardown` (python -m scripts.modal_teardown).

Stops the app, then deletes its Dicts (jobs, counters), Volumes (inputs and results, the compile cache, and the
weights unless --keep-weights) and the Secrets `make deploy` creates (API keys, webhook secret), and this clone's
.modal-deploy.env and .modal-api-key. A Secret named by INPAINT_S3_SECRET is yours and is left alone, as is the
bucket it names. The names come from the same settings the deploy read (INPAINT_* from .modal-deploy.env and the
environment).

    python -m scripts.modal_teardown [--keep-weights] [--yes]
"""

import argparse
import os
import subprocess
import sys

from scripts.modal_deploy import API_KEY_FILE, KNOBS_FILE, knob_names, merge_knobs, read_knobs


def modal_objects(cfg, keep_weights: bool = False) -> dict[str, list[str]]:
    """The named Modal objects app.py uses, by kind."""
    volumes = [cfg.files_volume, cfg.compile_cache_volume] + ([] if keep_weights else [cfg.weights_volume])
    return {"dict": [cfg.records_dict, cfg.active_dict, cfg.expiry_dict, cfg.counters_dict],
            "volume": volumes,
            "secret": [cfg.api_keys_secret, cfg.webhook_secret]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep-weights", action="store_true", help="keep the weight Volume (a 2.7 GB download)")
    parser.add_argument("--yes", action="store_true", help="do not ask before deleting")
    args = parser.parse_args(argv)

    knobs, _ = merge_knobs(read_knobs(KNOBS_FILE), dict(os.environ), knob_names())
    os.environ.update(knobs)
    from service.config import DeployConfig

    cfg = DeployConfig()
    objects = modal_objects(cfg, args.keep_weights)
    print(f"this stops the Modal app {cfg.app_name!r} and deletes, with all their data:")
    for kind, names in objects.items():
        print(f"  {kind}s: {', '.join(names)}")
    if not args.yes and input("type 'yes' to go on: ").strip() != "yes":
        print("nothing deleted")
        return 1

    import modal

    # Fails only when the app was never deployed (or is stopped already): the deletions go on.
    subprocess.run([sys.executable, "-m", "modal", "app", "stop", "--yes", cfg.app_name], check=False)
    managers = {"dict": modal.Dict.objects, "volume": modal.Volume.objects, "secret": modal.Secret.objects}
    for kind, names in objects.items():
        for name in names:
            managers[kind].delete(name, allow_missing=True)
            print(f"deleted {kind} {name!r}")
    for path in (KNOBS_FILE, API_KEY_FILE):
        path.unlink(missing_ok=True)
    if cfg.s3_secret:
        print(f"left alone: the Secret {cfg.s3_secret!r} and its bucket (delete them yourself if you made them "
              f"for this)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
