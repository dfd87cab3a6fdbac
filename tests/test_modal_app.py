"""app.py offline: no Modal token, no network. Modal objects are replaced by tests/standins.py where needed."""

import importlib
import os
import subprocess
import sys
import time

import modal
import pytest

from schemas import JobStatus
from service.backend import build_modal
from service.jobs.records import JobRecord
from service.stores.modal_dicts import DictRecords
from service.stores.object_inputs import ObjectInputs
from service.stores.results import LocalStorage
from service.stores.sqlite import FileInputs, SQLiteState
from tests.conftest import REPO
from tests.images import box_mask, gradient_image, png_bytes
from tests.image_envs import app_functions
from tests.standins import StandInVolume, standin_dicts

HEAVY = ("torch", "diffusers", "transformers", "xformers", "accelerate", "scipy", "torchsde")


def test_import_app_needs_no_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    env["HOME"] = str(tmp_path)  # no ~/.modal.toml either
    code = "import sys, app; assert 'torch' not in sys.modules; print(app.app.name)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "inpaint"


@pytest.fixture
def recorded_app(monkeypatch):
    """Import app.py with deploy-time env set, recording what each decorator was given."""
    recorded = {}
    original_function, original_cls = modal.App.function, modal.App.cls

    def recorder(original):
        def decorator_factory(self, *args, **kwargs):
            decorate = original(self, *args, **kwargs)

            def wrapper(target):
                raw = target._get_raw_f() if hasattr(target, "_get_raw_f") else target
                name = raw.__name__
                recorded[name] = kwargs
                return decorate(target)

            return wrapper

        return decorator_factory

    monkeypatch.setattr(modal.App, "function", recorder(original_function))
    monkeypatch.setattr(modal.App, "cls", recorder(original_cls))
    for name, value in {"INPAINT_GPU": "A10G", "INPAINT_MAX_CONTAINERS": "7", "INPAINT_MIN_CONTAINERS": "0",
                        "INPAINT_BUFFER_CONTAINERS": "1", "INPAINT_SCALEDOWN_WINDOW": "45",
                        "INPAINT_TIMEOUT": "300", "INPAINT_STARTUP_TIMEOUT": "900"}.items():
        monkeypatch.setenv(name, value)
    sys.modules.pop("app", None)
    module = importlib.import_module("app")
    yield module, recorded
    sys.modules.pop("app", None)


def test_app_layout_and_knobs(recorded_app):
    from modal._utils.async_utils import synchronizer

    module, recorded = recorded_app
    assert set(recorded) == {"Inpainter", "web", "sweep", "download_weights", "deliver_webhook"}
    assert recorded["deliver_webhook"]["secrets"] == [module.webhook_secret]  # results in the files Volume
    assert recorded["deliver_webhook"]["image"] is recorded["sweep"]["image"] is module.jobs_image
    assert recorded["download_weights"]["image"] is module.download_image
    assert recorded["sweep"]["secrets"] == [module.api_keys_secret]  # it keeps credits alive
    gpu = recorded["Inpainter"]
    assert gpu["gpu"] == "A10G"
    assert (gpu["min_containers"], gpu["max_containers"], gpu["buffer_containers"]) == (0, 7, 1)
    assert gpu["scaledown_window"] == 45 and gpu["timeout"] == module.GPU_CALL_TIMEOUT == 2 * 300 * 8
    assert gpu["startup_timeout"] == 900  # set, never the implicit `timeout`: it covers a compile warm-up
    weights_mount = synchronizer._translate_in(gpu["volumes"]["/weights"])
    assert weights_mount._mount_options.read_only and not weights_mount._read_only  # not the deprecated read_only()
    assert recorded["sweep"]["timeout"] == module.SWEEP_TIMEOUT == 300  # a sweep never runs into the next
    assert gpu["enable_memory_snapshot"] is True and gpu["experimental_options"] is None
    assert gpu["image"] is module.gpu_image
    assert list(gpu["volumes"]) == ["/weights", "/compile-cache"]
    assert gpu["secrets"] == []
    web = recorded["web"]
    assert web["image"] is module.web_image and "gpu" not in web
    assert web["secrets"] == [module.api_keys_secret]
    assert float(web["env"]["V1_TIMEOUT_SECONDS"]) < 150  # Modal web requests stop at 150 s
    assert isinstance(recorded["sweep"]["schedule"], modal.Period)
    assert recorded["download_weights"]["volumes"]["/weights"] is module.weights


def test_web_image_has_no_torch(recorded_app):
    module, _ = recorded_app
    names = {p.split("==")[0].lower() for p in module.WEB_PACKAGES}
    assert not names & set(HEAVY)
    assert all("==" in p for p in module.WEB_PACKAGES + module.GPU_PACKAGES)  # exact pins


def test_gpu_image_pins_resolve_for_linux_py311(recorded_app, tmp_path):
    """The GPU image's pinned wheels exist and co-resolve for linux x86_64 / CPython 3.11, with torch the CUDA
    build of the release the tests run on."""
    module, _ = recorded_app
    report = tmp_path / "report.json"
    # pip does not expand manylinux tags for a foreign --platform: name every glibc level up to Modal's 2.28.
    platforms = [arg for glibc in range(17, 29) for arg in ("--platform", f"manylinux_2_{glibc}_x86_64")]
    # --isolated, PyPI only: a local index or find-links (a CPU build of torch on disk) must not answer for it.
    cert = ["--cert", os.environ["PIP_CERT"]] if os.environ.get("PIP_CERT") else []
    cmd = [sys.executable, "-m", "pip", "install", "--isolated", *cert, "--index-url", "https://pypi.org/simple",
           "--dry-run", "--ignore-installed", "--quiet",
           "--target", str(tmp_path / "target"), "--report", str(report), "--only-binary=:all:",
           "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311", *platforms,
           "--platform", "manylinux2014_x86_64", *module.GPU_PACKAGES]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    offline = ("NewConnectionError", "Temporary failure in name resolution", "Network is unreachable",
               "ConnectTimeoutError", "ProxyError")
    if result.returncode != 0 and any(marker in result.stderr for marker in offline):
        print("package registry unreachable:", result.stderr[-500:])
        pytest.skip("package registry not reachable; cannot check the GPU image pins")
    assert result.returncode == 0, result.stderr[-3000:]
    import json

    resolved = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}
    from importlib.metadata import version

    assert resolved["torch"] == version("torch").split("+")[0]  # what ships is what is tested
    assert any(name.startswith("nvidia-") for name in resolved)  # PyPI's Linux torch: the CUDA build
    assert "xformers" not in resolved


def test_container_env_carries_the_deploy_config_but_no_secrets(recorded_app, monkeypatch):
    module, recorded = recorded_app
    env = recorded["Inpainter"]["env"]
    assert env["INPAINT_GPU"] == "A10G" and env["INPAINT_TIMEOUT"] == "300"  # containers read what deploy read
    assert float(env["JOB_TIMEOUT_SECONDS"]) == 290  # under Modal's limit: the job ends FAILED, not killed
    assert recorded["web"]["env"] is env and recorded["sweep"]["env"] is env
    monkeypatch.setenv("API_KEYS", "sk-secret")
    monkeypatch.setenv("TORCH_COMPILE", "1")
    monkeypatch.setenv("KEY_CREDITS", "sk-secret=5")
    monkeypatch.setenv("GPU_PRICE_PER_SECOND", "A10G=0.0004")
    fresh = module.container_env()
    assert fresh["TORCH_COMPILE"] == "1"
    assert fresh["GPU_PRICE_PER_SECOND"] == "A10G=0.0004" and fresh["GPU_TYPE"] == "A10G"  # prices reach the GPUs
    assert "sk-secret" not in json_dump(fresh)


def json_dump(value) -> str:
    import json

    return json.dumps(value)


def imports_in(node) -> set[str]:
    import ast

    names = set()
    for child in ast.walk(node):
        if isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
            names.add(child.module.split(".")[0])
        elif isinstance(child, ast.Import):
            names.update(alias.name.split(".")[0] for alias in child.names)
    return names


def test_every_image_carries_the_local_packages_its_container_imports(recorded_app):
    """A container imports app.py (module level), then runs its function, which calls app.py's helpers
    (_settings, _backend, ...): every local package any of them imports must be in that function's image."""
    import ast

    from modal._utils.async_utils import synchronizer

    module, _ = recorded_app
    tree = ast.parse((REPO / "app.py").read_text())
    local = {p.name for p in REPO.iterdir() if (p / "__init__.py").is_file()}
    top_level = {n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    helpers = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("_")]
    always = set().union(*(imports_in(n) for n in top_level), *(imports_in(n) for n in helpers))
    bodies = {n.name: imports_in(n) for n in tree.body if isinstance(n, ast.FunctionDef)}
    bodies["Inpainter.*"] = imports_in(next(n for n in tree.body if isinstance(n, ast.ClassDef)))
    checked = 0
    for name, function in app_functions(module.app).items():
        image = synchronizer._translate_in(function)._spec.image
        shipped = set(image._added_python_source_set)
        needed = (always | bodies[name]) & local
        assert needed <= shipped, f"{name}: image lacks {sorted(needed - shipped)}"
        checked += 1
    assert checked == 5 and "inference" in bodies["Inpainter.*"] and "weights" in bodies["download_weights"]


def test_inpainter_run_local_end_to_end(recorded_app, monkeypatch, tiny_model_dir, tmp_path):
    module, _ = recorded_app
    monkeypatch.setenv("MODEL_DIR", str(tiny_model_dir))
    monkeypatch.setenv("STATE_DIR", str(tmp_path))
    monkeypatch.setattr(module, "dicts", standin_dicts())
    monkeypatch.setattr(module, "files", StandInVolume())
    jobs = build_modal(module._settings(), module.dicts, files_volume=module.files).jobs
    now = time.time()
    jobs.records.create(JobRecord(id="j1", owner="o", params={"prompt": "a chair", "seed": 5}, created_at=now,
                                  expires_at=now + 60))
    jobs.inputs.put("j1", png_bytes(gradient_image()), png_bytes(box_mask()))
    [result] = module.Inpainter().run.local(["j1"])  # batched by default: a list of jobs per call
    assert result["record"]["status"] == "COMPLETED" and result["record"]["seeds"] == [5]
    assert jobs.records.get("j1").status == JobStatus.COMPLETED and jobs.inputs.get("j1") is None
    key = result["record"]["images"][0]["key"]
    assert module.files.files[key] == result["files"][0][0]  # in the files Volume, read back by the web tier
    assert not [name for name in module.files.files if name.startswith("inputs/")]  # inputs deleted at the end
    assert jobs.records.unfinished() == 0


def test_the_gpu_call_never_raises_what_the_web_tier_would_take_for_its_own_lost_link(monkeypatch, tiny_model_dir,
                                                                                     tmp_path):
    """A modal.exception.ConnectionError raised inside the GPU call reaches the web tier as that same class, which
    there means "Modal unreachable, the job may be running": the call returns nothing instead, and the jobs are
    left to the sweep ("the worker returned without finishing the job"). Batched, the requests are read before
    any job starts, outside the per-group guard."""
    import modal.exception

    module = import_app(monkeypatch, INPAINT_BATCH_MAX_IMAGES="2", MODEL_DIR=str(tiny_model_dir),
                        STATE_DIR=str(tmp_path))
    monkeypatch.setattr(module, "dicts", standin_dicts())

    def unreachable(*args, **kwargs):
        raise modal.exception.ConnectionError("the Dicts are unreachable")

    monkeypatch.setattr(module.dicts["records"], "get", unreachable)
    assert module.Inpainter().run.local(["j1", "j2"]) == [None, None]


def run_method_params(module):
    """The modal.batched parameters Modal registered for Inpainter.run (None for a plain method)."""
    from modal._utils.async_utils import synchronizer

    raw = synchronizer._translate_in(module.Inpainter._get_user_cls().__dict__["run"])
    return raw.params.batch_max_size, raw.params.batch_wait_ms


def test_batching_is_on_by_default_and_one_turns_it_off(recorded_app, monkeypatch):
    module, _ = recorded_app
    assert run_method_params(module) == (8, 10)  # what the embedded server does on a GPU, too
    assert module.runtime_env["BATCH_MAX_IMAGES"] == "8"
    assert module.runtime_env["GPU_TYPE"] == "A10G"  # prices metrics.cost_usd
    unbatched = import_app(monkeypatch, INPAINT_BATCH_MAX_IMAGES="1")
    assert run_method_params(unbatched) == (None, None) and unbatched.GPU_CALL_TIMEOUT == unbatched.cfg.timeout


def test_batching_knob_makes_run_a_modal_batched_method_that_runs_jobs_together(monkeypatch, tiny_model_dir,
                                                                               tmp_path):
    monkeypatch.setenv("INPAINT_BATCH_MAX_IMAGES", "3")
    monkeypatch.setenv("INPAINT_BATCH_WAIT_MS", "25")
    monkeypatch.setenv("INPAINT_GPU", "L4")
    monkeypatch.setenv("MODEL_DIR", str(tiny_model_dir))
    monkeypatch.setenv("STATE_DIR", str(tmp_path))
    sys.modules.pop("app", None)
    try:
        module = importlib.import_module("app")
        assert run_method_params(module) == (3, 25)
        assert module.GPU_CALL_TIMEOUT == 2 * 3 * 600  # jobs of a batch may run in turn, after a failed call
        monkeypatch.setenv("BATCH_MAX_IMAGES", module.runtime_env["BATCH_MAX_IMAGES"])
        monkeypatch.setenv("GPU_TYPE", module.runtime_env["GPU_TYPE"])
        monkeypatch.setattr(module, "dicts", standin_dicts())
        monkeypatch.setattr(module, "files", StandInVolume())
        jobs = build_modal(module._settings(), module.dicts, files_volume=module.files).jobs
        assert jobs.dispatcher.batched  # never cancels a FunctionCall: that would cancel its batch-mates
        now = time.time()
        for job_id, seed in (("j1", 5), ("j2", 6)):
            jobs.records.create(JobRecord(id=job_id, owner="o", params={"prompt": "a chair", "seed": seed},
                                          created_at=now, expires_at=now + 60))
            jobs.inputs.put(job_id, png_bytes(gradient_image()), png_bytes(box_mask()))
        results = module.Inpainter().run.local(["j1", "j2"])
        assert [r["record"]["seeds"] for r in results] == [[5], [6]]
        for result in results:
            record = result["record"]
            assert record["status"] == "COMPLETED" and record["batch_size"] == 2
            assert record["cost_usd"] == pytest.approx(record["gpu_seconds"] * 0.000222)
    finally:
        sys.modules.pop("app", None)


# ---- the store ports, both implementations ---------------------------------------------------

@pytest.fixture(params=["sqlite", "modal-dict"])
def stores(request, tmp_path):
    if request.param == "sqlite":
        return SQLiteState(tmp_path / "jobs.sqlite3"), FileInputs(tmp_path / "inputs")
    dicts = standin_dicts()
    return DictRecords(dicts["records"], dicts["active"], dicts["expiry"]), ObjectInputs(LocalStorage(tmp_path))


def make_record(job_id, created, ttl=60.0):
    return JobRecord(id=job_id, owner="o", params={"prompt": "p"}, created_at=created, expires_at=created + ttl)


def test_store_contract(stores):
    records, inputs = stores
    now = time.time()
    for i in range(3):
        assert records.create(make_record(f"j{i}", now + i))
        inputs.put(f"j{i}", b"img%d" % i, b"mask")
    assert not records.create(make_record("j3", now + 3), max_unfinished=3)  # the queue cap, atomic
    assert records.get("j1").id == "j1" and records.get("nope") is None
    assert inputs.get("j2") == (b"img2", b"mask")
    assert records.unfinished_ids(JobStatus.QUEUED) == ["j0", "j1", "j2"]
    assert [records.queue_position(records.get(f"j{i}")) for i in range(3)] == [0, 1, 2]
    assert records.unfinished() == 3
    assert records.update("j0", status=JobStatus.PROCESSING, attempts=1).attempts == 1
    assert records.queue_position(records.get("j2")) == 1
    assert records.update("j0", status=JobStatus.QUEUED) is None  # never backwards
    assert records.update("j0", status=JobStatus.COMPLETED) is None  # only finish() ends a job
    assert records.finish("j0", status=JobStatus.COMPLETED).status == JobStatus.COMPLETED
    assert records.finish("j0", status=JobStatus.FAILED) is None  # exactly once
    assert records.update("j0", progress_step=1) is None  # a late write never shows
    assert records.get("j0").status == JobStatus.COMPLETED and records.get("j0").progress_step is None
    inputs.delete(["j0"])
    assert inputs.get("j0") is None
    assert records.unfinished() == 2
    expired = records.expired(now + 60.5)
    assert [job.id for job in expired] == ["j0"]
    records.delete(expired)
    assert records.get("j0") is None and records.expired(now + 60.5) == []
    assert records.claim("attempt1:j1") and not records.claim("attempt1:j1")
    records.update("j1", status=JobStatus.PROCESSING, progress_step=3, progress_total=20)
    assert not records.cancel_requested("j1")
    records.request_cancel("j1")
    assert records.cancel_requested("j1")
    assert records.get("j1").status == JobStatus.PROCESSING and records.get("j1").progress_step == 3


def test_store_hides_expired_finished_jobs_only(stores):
    records, _ = stores
    now = time.time()
    records.create(make_record("old", now - 120))
    records.create(make_record("waiting", now - 120))
    records.finish("old", status=JobStatus.FAILED, expires_at=now - 1)
    assert records.get("old") is None
    assert records.get("waiting").status == JobStatus.QUEUED  # unfinished jobs never vanish
    assert [job.id for job in records.expired(now)] == ["old"]


def test_download_weights_never_overwrites_what_a_snapshot_used(recorded_app, monkeypatch, tmp_path):
    """Each download lands in a new directory named in CURRENT; --force never deletes or overwrites files a
    deployed snapshot was made from."""
    import weights.download

    module, _ = recorded_app
    monkeypatch.setattr(module, "WEIGHTS_ROOT", str(tmp_path))
    monkeypatch.setattr(module, "CURRENT_WEIGHTS", str(tmp_path / "CURRENT"))
    commits = []
    monkeypatch.setattr(module, "weights", type("Volume", (), {"commit": lambda self: commits.append(1)})())
    names = iter(["20260101-000000", "20260101-000001"])
    monkeypatch.setattr(module.time, "strftime", lambda fmt: next(names))

    def fake_mask_download(folder):
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "preprocessor_config.json", "model.safetensors"):
            (folder / name).write_text("{}")
        return folder

    def fake_download(target, safety_checker=True):  # the weights, then the mask model into target/clipseg
        target.mkdir(parents=True)
        (target / "model_index.json").write_text("{}")
        fake_mask_download(target / "clipseg")
        return target

    monkeypatch.setattr(weights.download, "download", fake_download)
    monkeypatch.setattr(weights.download, "download_mask_model", fake_mask_download)
    module.download_weights.local()
    first = module.current_weights_dir()
    module.download_weights.local()  # already there: nothing fetched
    assert module.current_weights_dir() == first and len(commits) == 1
    module.download_weights.local(force=True)
    second = module.current_weights_dir()
    assert second != first and (first / "model_index.json").is_file()  # the old copy is untouched
    assert (tmp_path / "CURRENT").read_text().strip() == second.name and len(commits) == 2
    # Weights fetched before the mask model existed: it is added beside them, nothing else changes.
    (second / "clipseg" / "model.safetensors").unlink()  # a download cut short: configs, no weights
    module.download_weights.local()
    assert module.current_weights_dir() == second and (second / "clipseg" / "model.safetensors").is_file()
    assert (second / "model_index.json").is_file() and len(commits) == 3


# ---- deploy-time checks -------------------------------------------------------------------------------------

def test_gpu_types_are_checked_at_deploy_time():
    from pydantic import ValidationError

    from service.config import DeployConfig

    assert DeployConfig(gpu="h100:2").gpu == "h100:2" and DeployConfig(gpu="RTX-PRO-6000").gpu == "RTX-PRO-6000"
    for bad, says in (("H1OO", "not a Modal GPU type"), ("L4:x", "count"), ("L4:9", "count")):
        with pytest.raises(ValidationError, match=says):
            DeployConfig(gpu=bad)


def import_app(monkeypatch, **env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    sys.modules.pop("app", None)
    try:
        return importlib.import_module("app")
    finally:
        sys.modules.pop("app", None)


def test_a_gpu_without_a_price_deploys_without_cost_figures(monkeypatch, capsys):
    """Modal accepts RTX-PRO-6000, which has no list price here: the containers run with metrics.cost_usd null
    (and the deploy says so) rather than refusing to start."""
    module = import_app(monkeypatch, INPAINT_GPU="RTX-PRO-6000")
    assert "GPU_TYPE" not in module.runtime_env
    assert "no price is known for GPU type 'RTX-PRO-6000'" in capsys.readouterr().out
    priced = import_app(monkeypatch, INPAINT_GPU="RTX-PRO-6000", GPU_PRICE_PER_SECOND="RTX-PRO-6000=0.0005")
    assert priced.runtime_env["GPU_TYPE"] == "RTX-PRO-6000"


def test_a_runtime_setting_the_containers_would_refuse_is_refused_at_deploy(monkeypatch):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="rate_limit_per_second"):
        import_app(monkeypatch, RATE_LIMIT_PER_SECOND="-1")


# ---- the GPU class's start ----------------------------------------------------------------------------------

class FakeModel:
    """Stands in for inference.Inpainter where no GPU is: records where it is moved and what it runs."""

    def __init__(self, fail_warm_up=False):
        self.moves, self.runs, self.compile_unet, self.uncompiled = [], 0, False, False
        self.fail_warm_up = fail_warm_up
        self.device = "cpu"

    def to(self, device):
        self.moves.append((device, self.compile_unet))
        self.device = device
        return self

    def warm_up(self):
        self.runs += 1
        if self.fail_warm_up:
            raise RuntimeError("inductor crashed")
        return 0.1

    def uncompile(self):
        self.uncompiled, self.compile_unet = True, False


def gpu_class(monkeypatch, tmp_path, model, **env):
    """Inpainter's container methods as Modal would run them on a GPU machine, with the model and CUDA faked."""
    import torch

    env = {"MODEL_DIR": str(tmp_path), "STATE_DIR": str(tmp_path), "S3_BUCKET": "bucket", **env}
    module = import_app(monkeypatch, **env)
    monkeypatch.setattr(module.modal, "is_local", lambda: False)
    monkeypatch.setattr(module, "COMPILE_CACHE", str(tmp_path / "compile-cache"))
    monkeypatch.setattr(module, "compile_cache", type("Volume", (), {"commit": lambda self: None})())
    monkeypatch.setattr(module, "dicts", standin_dicts())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cls = module.Inpainter._get_user_cls()
    monkeypatch.setattr(cls, "_load_model", lambda self, settings, device: model.to(device))
    return module, cls()


def test_with_gpu_snapshots_the_model_is_on_the_gpu_inside_the_snapshot(monkeypatch, tmp_path):
    model = FakeModel()
    _, container = gpu_class(monkeypatch, tmp_path, model, INPAINT_GPU_SNAPSHOT="1")
    container.load()  # the snapshot phase: with INPAINT_GPU_SNAPSHOT the GPU is attached here
    assert model.moves[-1][0] == "cuda"
    moves = len(model.moves)
    container.connect()  # after each restore: nothing left to move
    assert len(model.moves) == moves


def test_without_gpu_snapshots_the_model_moves_after_the_restore(monkeypatch, tmp_path):
    model = FakeModel()
    _, container = gpu_class(monkeypatch, tmp_path, model)
    container.load()
    assert model.moves == [("cpu", False)]
    container.connect()
    assert model.moves[-1] == ("cuda", False) and model.runs == 0  # no warm-up without TORCH_COMPILE or CUDA_GRAPHS


def test_with_cuda_graphs_the_common_shape_is_captured_at_start(monkeypatch, tmp_path):
    model = FakeModel()
    _, container = gpu_class(monkeypatch, tmp_path, model, CUDA_GRAPHS="1")
    container.load()
    container.connect()
    assert model.moves[-1] == ("cuda", False) and model.runs == 1


def test_a_failed_compile_warm_up_serves_uncompiled_and_later_containers_do_not_compile(monkeypatch, tmp_path):
    broken = FakeModel(fail_warm_up=True)
    _, first = gpu_class(monkeypatch, tmp_path, broken, TORCH_COMPILE="1")
    first.load()
    first.connect()  # the warm-up fails: the container still starts, uncompiled
    assert broken.moves[-1] == ("cuda", True) and broken.uncompiled
    later = FakeModel()
    _, second = gpu_class(monkeypatch, tmp_path, later, TORCH_COMPILE="1")
    second.load()
    second.connect()
    assert later.moves[-1] == ("cuda", False) and later.runs == 0
