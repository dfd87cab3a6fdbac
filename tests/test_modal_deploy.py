"""`make deploy` and `make teardown` (scripts/modal_deploy.py, scripts/modal_teardown.py), offline: the knobs a
redeploy keeps and the changes it prints, the Secrets it would create, and a teardown that names every Modal
object app.py makes (read from app.py itself, imported with modal's own from_name recorded)."""

import importlib
import os
import subprocess
import sys

import modal

from scripts.modal_deploy import generated_secrets, knob_names, merge_knobs, read_knobs, write_knobs
from scripts.modal_teardown import modal_objects
from service.config import DeployConfig
from tests.conftest import REPO


def test_a_redeploy_keeps_the_last_knobs_and_says_what_changed(tmp_path):
    saved = tmp_path / ".modal-deploy.env"
    write_knobs(saved, {"INPAINT_GPU": "L4", "INPAINT_MAX_CONTAINERS": "4", "DAILY_IMAGE_CAP": "500"})
    environ = {"INPAINT_GPU": "A10G", "DAILY_IMAGE_CAP": "500", "HOME": "/root", "API_KEYS": "never-a-knob",
               "PORT": "9000"}
    knobs, changes = merge_knobs(read_knobs(saved), environ, knob_names())
    assert knobs == {"INPAINT_GPU": "A10G", "INPAINT_MAX_CONTAINERS": "4", "DAILY_IMAGE_CAP": "500"}
    assert changes == ["INPAINT_GPU: L4 -> A10G"]
    first, changes = merge_knobs({}, {"INPAINT_MIN_CONTAINERS": "1"}, knob_names())
    assert first == {"INPAINT_MIN_CONTAINERS": "1"} and changes == ["INPAINT_MIN_CONTAINERS: (default) -> 1"]


def test_only_missing_secrets_are_generated():
    cfg = DeployConfig()
    fresh = generated_secrets(set(), cfg)
    assert set(fresh) == {cfg.api_keys_secret, cfg.webhook_secret}
    assert fresh[cfg.api_keys_secret]["API_KEYS"].startswith("sk-")
    assert fresh[cfg.webhook_secret]["WEBHOOK_SECRET"].startswith("whsec_")
    assert generated_secrets({cfg.api_keys_secret, cfg.webhook_secret}, cfg) == {}
    assert set(generated_secrets({cfg.api_keys_secret}, cfg)) == {cfg.webhook_secret}


def test_teardown_names_every_modal_object_the_app_makes(monkeypatch):
    made: dict[str, list[str]] = {"dict": [], "volume": [], "secret": []}
    for kind, cls in (("dict", modal.Dict), ("volume", modal.Volume), ("secret", modal.Secret)):
        real = cls.from_name

        def recording(name, *args, _kind=kind, _real=real, **kwargs):
            made[_kind].append(name)
            return _real(name, *args, **kwargs)

        monkeypatch.setattr(cls, "from_name", recording)
    monkeypatch.delenv("INPAINT_S3_SECRET", raising=False)
    sys.modules.pop("app", None)
    try:
        module = importlib.import_module("app")
    finally:
        sys.modules.pop("app", None)
    objects = modal_objects(module.cfg)
    assert {kind: sorted(names) for kind, names in made.items()} == {k: sorted(v) for k, v in objects.items()}
    assert module.cfg.weights_volume not in modal_objects(module.cfg, keep_weights=True)["volume"]


def test_a_dry_run_prints_the_knobs_and_changes_nothing(tmp_path):
    write_knobs(tmp_path / ".modal-deploy.env", {"INPAINT_GPU": "L4"})
    env = {**os.environ, "PYTHONPATH": str(REPO), "INPAINT_GPU": "H100"}
    result = subprocess.run([sys.executable, "-m", "scripts.modal_deploy", "--dry-run"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "INPAINT_GPU: L4 -> H100" in result.stdout and "would deploy app 'inpaint' on H100" in result.stdout
    assert read_knobs(tmp_path / ".modal-deploy.env") == {"INPAINT_GPU": "L4"}  # saved only after a deploy


def test_bad_knobs_stop_the_deploy_before_anything_changes(tmp_path):
    from scripts.modal_deploy import knob_problems

    assert knob_problems({"INPAINT_GPU": "A10", "DAILY_IMAGE_CAP": "500"}) == []
    problems = knob_problems({"INPAINT_GPU": "X100", "DAILY_IMAGE_CAP": "abc", "RATE_LIMIT_PER_SECOND": "-1"})
    assert sorted(line.split(":")[0] for line in problems) == ["DAILY_IMAGE_CAP", "INPAINT_GPU", "RATE_LIMIT_PER_SECOND"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "DAILY_IMAGE_CAP": "abc"}
    result = subprocess.run([sys.executable, "-m", "scripts.modal_deploy", "--dry-run"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "DAILY_IMAGE_CAP: Input should be a valid integer" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_deploy_fetches_what_the_weight_volume_lacks():
    """Weights fetched before the mask model existed get it added; a full Volume is left alone. The listing is
    made of modal's own FileEntry objects, paths written from the Volume's root as Modal lists them."""
    from modal.volume import FileEntry, FileEntryType

    from scripts.modal_deploy import missing_weights

    class Listing:
        def __init__(self, files: dict[str, list[str]], current: str | None):
            self.files, self.current = files, current

        def listdir(self, path: str):
            folder = path.strip("/")
            return [FileEntry(path=f"{folder}/{name}".lstrip("/"), type=FileEntryType.DIRECTORY, mtime=0, size=0)
                    for name in self.files[folder]]

        def read_file(self, path: str):
            assert path == "CURRENT"
            yield self.current.encode() + b"\n"

    assert missing_weights(Listing({"": []}, None)).startswith("weights")
    old = {"": ["CURRENT", "sd15-a"], "sd15-a": ["unet", "vae", "model_index.json"]}
    assert missing_weights(Listing(old, "sd15-a")).startswith("mask model")
    cut_short = {**old, "sd15-a": [*old["sd15-a"], "clipseg"], "sd15-a/clipseg": ["config.json", "vocab.json"]}
    assert missing_weights(Listing(cut_short, "sd15-a")).startswith("mask model")
    full = {**cut_short, "sd15-a/clipseg": ["config.json", "vocab.json", "model.safetensors"]}
    assert missing_weights(Listing(full, "sd15-a")) is None
