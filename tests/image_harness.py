"""Runs inside one Modal image's venv (built by tests/image_envs.py): its pip list plus the Modal client, the repo
on PYTHONPATH, nothing of the dev venv. Stdlib and the repo only.

    python -m tests.image_harness '<request JSON>'

1. STATIC: the local modules a container of this image can reach, from app.py's module-level code, the served
   functions' bodies (a class: all of it) and the app.py helpers they name (transitively), following every import
   statement of every local module reached (module level and inside functions); each third-party top-level
   module they name must be importable here, each local package must be shipped by the image.
2. DYNAMIC: import app, then run each served function's code path offline (Modal Dicts replaced by
   tests/standins.py), with local packages the image does not ship made unimportable.

The result is one line on stdout: IMAGE-HARNESS-RESULT <json>.
"""

import ast
import asyncio
import base64
import contextlib
import hashlib
import hmac
import importlib.util
import io
import json
import os
import re
import struct
import sys
import threading
import time
import traceback
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULT = "IMAGE-HARNESS-RESULT "  # tests/image_envs.py reads the line that starts with this
# app.py's top-level functions that run in containers besides the underscored ones.
NAMED_HELPERS = {"current_weights_dir", "container_env", "gpu_price_env", "checked_env"}
MODULE_LEVEL = "app.py (module level)"


# ---- static: the closure of local modules ------------------------------------------------------------------

def module_file(name: str, local: set[str]) -> Path | None:
    if name.partition(".")[0] not in local:
        return None
    base = REPO.joinpath(*name.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def import_time_nodes(node: ast.AST):
    """The nodes of `node` that run when it is executed: function and lambda bodies are skipped (their decorators,
    defaults and annotations are not), class bodies are not."""
    yield node
    if is_type_checking(node):
        children = node.orelse
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        children = [*node.decorator_list, *node.args.defaults, *(d for d in node.args.kw_defaults if d)]
    elif isinstance(node, ast.Lambda):
        children = [*node.args.defaults, *(d for d in node.args.kw_defaults if d)]
    else:
        children = list(ast.iter_child_nodes(node))
    for child in children:
        yield from import_time_nodes(child)


def is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING" or
                                         isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def all_nodes(node: ast.AST):
    """ast.walk, less the bodies of `if TYPE_CHECKING:` (imports there never run)."""
    yield node
    children = node.orelse if is_type_checking(node) else ast.iter_child_nodes(node)
    for child in children:
        yield from all_nodes(child)


def imports_in(nodes, modname: str, is_package: bool) -> list[tuple[str, list[str] | None, int]]:
    """(absolute module, names imported from it or None, line) for each import statement among `nodes`."""
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = modname if is_package else modname.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{node.module}" if node.module else package
            else:
                base = node.module
            found.append((base, [alias.name for alias in node.names], node.lineno))
    return found


class Closure:
    def __init__(self, local_packages: list[str]):
        self.local = set(local_packages) | {"app"}
        self.parent: dict[str, str | None] = {}  # label -> the label that reached it first
        self.modules: list[str] = []  # local modules, in the order reached
        self.third_party: dict[str, list[tuple[str, int]]] = {}  # top-level module -> [(importer, line)]
        self._queue: list[str] = []

    def chain(self, label: str) -> list[str]:
        out = []
        while label is not None:
            out.append(label)
            label = self.parent.get(label)
        return list(reversed(out))

    def _reach(self, label: str, via: str) -> bool:
        if label in self.parent:
            return False
        self.parent[label] = via
        return True

    def add_imports(self, imports, importer: str) -> None:
        for base, names, line in imports:
            top = base.partition(".")[0]
            if top in self.local:
                parts = base.split(".")
                targets = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
                targets += [f"{base}.{n}" for n in names or () if module_file(f"{base}.{n}", self.local)]
                for target in targets:
                    if module_file(target, self.local) and self._reach(target, importer):
                        self.modules.append(target)
                        self._queue.append(target)
            elif top not in sys.stdlib_module_names and top != "__future__":
                self.third_party.setdefault(top, []).append((importer, line))

    def follow(self) -> None:
        while self._queue:
            name = self._queue.pop(0)
            path = module_file(name, self.local)
            source = path.read_text()
            tree = ast.parse(source, str(path))
            self.add_imports(imports_in(all_nodes(tree), name, path.name == "__init__.py"), name)
            if "import_module" in source or "__import__" in source:  # imports named by strings (lazy loading)
                strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
                dynamic = [(s, None, 0) for s in strings
                           if re.fullmatch(r"[A-Za-z_][\w.]*", s) and module_file(s, self.local)]
                self.add_imports(dynamic, name)


def static_closure(functions: list[str], local_packages: list[str]) -> Closure:
    tree = ast.parse((REPO / "app.py").read_text(), "app.py")
    defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    helpers = {name: node for name, node in defs.items() if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
               and (name.startswith("_") or name in NAMED_HELPERS)}
    closure = Closure(local_packages)
    regions = [(MODULE_LEVEL, None, [n for top in tree.body for n in import_time_nodes(top)])]
    for function in functions:
        name = function.removesuffix(".*")
        if name not in defs:
            raise LookupError(f"app.py has no top-level def or class {name!r} (registered function {function})")
        regions.append((f"app.py:{name}" + ("" if isinstance(defs[name], ast.ClassDef) else "()"), None,
                        list(all_nodes(defs[name]))))
    while regions:
        label, via, nodes = regions.pop(0)
        if not closure._reach(label, via):
            continue
        closure.add_imports(imports_in(nodes, "app", False), label)
        for node in nodes:
            if isinstance(node, ast.Name) and node.id in helpers:
                regions.append((f"app.py:{node.id}()", label, list(all_nodes(helpers[node.id]))))
    closure.follow()
    return closure


def static_check(request: dict) -> dict:
    closure = static_closure(request["functions"], request["local_packages"])
    missing = []
    for top, importers in sorted(closure.third_party.items()):
        if importlib.util.find_spec(top) is None:
            importer = importers[0][0]
            missing.append({"module": top, "imported_by": [f"{m}:{n}" for m, n in importers],
                            "chain": closure.chain(importer)})
    tops = sorted({m.partition(".")[0] for m in closure.modules} - {"app"})
    first = {}  # each local package's first module reached
    for module in closure.modules:
        first.setdefault(module.partition(".")[0], module)
    unshipped = [{"package": top, "chain": closure.chain(first[top])} for top in tops if top not in request["shipped"]]
    return {"modules": closure.modules, "local_packages": tops, "third_party": sorted(closure.third_party),
            "missing": missing, "unshipped": unshipped}


# ---- dynamic: run each function's code ---------------------------------------------------------------------

class NotShipped:
    """Local packages the image does not ship cannot be imported (the repo is on the path here, not in Modal)."""

    def __init__(self, blocked: set[str], image: str):
        self.blocked, self.image = blocked, image

    def find_spec(self, fullname, path=None, target=None):
        top = fullname.partition(".")[0]
        if top in self.blocked:
            raise ModuleNotFoundError(f"No module named {fullname!r}: the {self.image} image does not ship the "
                                      f"local package {top!r}", name=fullname)
        return None


def png(width: int, height: int, mask: bool = False) -> bytes:
    """A PNG with the stdlib: an RGB gradient, or an L mask with a white box in the middle."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    rows = bytearray()
    for y in range(height):
        rows.append(0)
        if mask:
            inside = height // 3 <= y < 2 * height // 3
            rows += bytes(255 if inside and width // 3 <= x < 2 * width // 3 else 0 for x in range(width))
        else:
            rows += bytes(v for x in range(width) for v in ((x * 255) // width, (y * 255) // height, (x + y) % 256))
    header = struct.pack(">IIBBBBB", width, height, 8, 0 if mask else 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(rows)))
            + chunk(b"IEND", b""))


@contextlib.asynccontextmanager
async def lifespan(asgi):
    """The ASGI lifespan protocol, as Modal's web endpoint runs it around the app."""
    inbox, outbox = asyncio.Queue(), asyncio.Queue()
    task = asyncio.create_task(asgi({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get,
                                    outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    started = await outbox.get()
    if started["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"lifespan startup: {started}")
    try:
        yield
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await task


def check_web(app, request) -> dict:
    import httpx

    from tests.standins import StandInVolume, standin_dicts

    key = "sk-image-test-key"
    os.environ["API_KEYS"] = key
    app.dicts = standin_dicts()
    app.files = StandInVolume()  # inputs and results, as deployed
    asgi = app.web.local()
    body = {"prompt": "a chair", "image": base64.b64encode(png(64, 64)).decode(),
            "mask": base64.b64encode(png(64, 64, mask=True)).decode(), "seed": 1}
    seen = {}

    async def drive():
        async with lifespan(asgi):
            transport = httpx.ASGITransport(app=asgi)
            async with httpx.AsyncClient(transport=transport, base_url="http://image-test") as client:
                health = await client.get("/health")
                seen["GET /health"] = health.status_code
                assert health.status_code == 200, health.text
                spec = await client.get("/openapi.json")
                seen["GET /openapi.json"] = spec.status_code
                assert spec.status_code == 200 and spec.json()["paths"], spec.text[:500]
                docs = await client.get("/docs")
                seen["GET /docs"] = docs.status_code
                assert docs.status_code == 200, docs.text[:500]
                bundle = re.search(r"""src=["']([^"']*swagger-ui-bundle\.js)""", docs.text)
                assert bundle, "no swagger-ui-bundle.js in /docs"
                asset = await client.get(bundle.group(1))
                seen[f"GET {bundle.group(1)}"] = asset.status_code
                assert asset.status_code == 200 and len(asset.content) > 10_000, asset.status_code
                playground = await client.get("/")
                seen["GET /"] = playground.status_code
                assert playground.status_code == 200, playground.text[:500]
                # A valid request: stored in the stand-in Dicts, then the spawn fails (no Modal here): a 503.
                submit = await client.post("/v2/sd1.5-inpainting", json=body, headers={"x-api-key": key})
                seen["POST /v2 (valid)"] = [submit.status_code, submit.text[:300]]
                assert submit.status_code == 503, submit.text
                assert "no worker could take the job" in submit.text, submit.text
                bad = await client.post("/v2/sd1.5-inpainting", json={"prompt": "a chair", "image": "x"},
                                        headers={"x-api-key": key})
                seen["POST /v2 (bad body)"] = [bad.status_code, bad.text[:300]]
                assert bad.status_code == 400, bad.text
                anonymous = await client.post("/v2/sd1.5-inpainting", json=body)
                seen["POST /v2 (no key)"] = anonymous.status_code
                assert anonymous.status_code == 401, anonymous.text

    asyncio.run(drive())
    return seen


def check_sweep(app, request) -> dict:
    from tests.standins import StandInVolume, standin_dicts

    app.dicts = standin_dicts()

    app.files = StandInVolume()  # inputs and results, as deployed
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        app.sweep.local()
    assert "sweep:" in out.getvalue(), out.getvalue()
    return {"printed": out.getvalue().strip()}


class Receiver(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        self.received.append((self.path, dict(self.headers.items()), body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def check_deliver_webhook(app, request) -> dict:
    from service.backend import build_modal
    from service.jobs.records import JobRecord, StoredImage
    from tests.standins import StandInVolume, standin_dicts

    secret_key = os.urandom(32)
    secret = "whsec_" + base64.b64encode(secret_key).decode()
    os.environ.update({"WEBHOOK_SECRET": secret, "ALLOW_PRIVATE_URLS": "1", "WEBHOOK_ATTEMPTS": "1"})
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        app.dicts = standin_dicts()
        app.files = StandInVolume()  # inputs and results, as deployed
        # no on_terminal: the delivery under test is ours
        jobs = build_modal(app._settings(), app.dicts, files_volume=app.files).jobs
        now = time.time()
        job_id = "webhook-job"
        jobs.records.create(JobRecord(id=job_id, owner="o", params={"prompt": "a chair"}, created_at=now,
                                      expires_at=now + 600, base_url="http://image-test",
                                      webhook_url=f"http://127.0.0.1:{server.server_port}/hook"))
        image = png(8, 8)
        jobs.storage.put(f"{job_id}/0.png", image, "image/png")
        done = jobs.lifecycle.complete(job_id, images=[StoredImage(key=f"{job_id}/0.png", content_type="image/png",
                                                                   file_size=len(image), seed=7)], seeds=[7])
        assert done is not None and done.status.value == "COMPLETED", done
        app.deliver_webhook.local(job_id)
    finally:
        server.shutdown()
    assert len(Receiver.received) == 1, f"the receiver got {len(Receiver.received)} POSTs"
    path, headers, body = Receiver.received[0]
    headers = {k.lower(): v for k, v in headers.items()}
    assert path == "/hook" and headers["webhook-id"] == f"msg_{job_id}", (path, headers)
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = "v1," + base64.b64encode(hmac.new(secret_key, signed, hashlib.sha256).digest()).decode()
    assert expected in headers["webhook-signature"].split(), "bad webhook signature"
    payload = json.loads(body)
    assert payload["request_id"] == job_id and payload["status"] == "COMPLETED", payload
    return {"posts": len(Receiver.received), "status": payload["status"], "images": len(payload["images"])}


def check_download_weights(app, request) -> dict:
    root = Path(request["scratch"]) / "weights-volume"
    root.mkdir(parents=True, exist_ok=True)
    app.WEIGHTS_ROOT, app.CURRENT_WEIGHTS = str(root), str(root / "CURRENT")
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        app.download_weights.local()
    except ImportError:
        raise
    except Exception as exc:  # noqa: BLE001 - the hub's offline error is the expected end
        name = f"{type(exc).__module__}.{type(exc).__name__}"
        assert type(exc).__module__.startswith("huggingface_hub"), f"not the hub's offline error: {name}: {exc}"
        assert "offline" in f"{name} {exc}".lower(), f"not the hub's offline error: {name}: {exc}"
        return {"raised": name, "message": str(exc)[:300]}
    raise AssertionError("download_weights returned although the hub is offline")


def check_inpainter(app, request) -> dict:
    import PIL.Image
    import scipy
    import torch

    from inference.schedulers import SCHEDULER_TABLE, SchedulerCache
    from service.backend import build_modal
    from service.jobs.records import JobRecord
    from tests.standins import StandInVolume, standin_dicts

    model_dir = Path(request["tiny_model_dir"])
    os.environ["MODEL_DIR"] = str(model_dir)
    app.dicts = standin_dicts()
    app.files = StandInVolume()  # inputs and results, as deployed
    jobs = build_modal(app._settings(), app.dicts, files_volume=app.files).jobs
    now = time.time()
    image, mask = png(512, 512), png(512, 512, mask=True)
    inpainter = app.Inpainter()
    details = {"torch": torch.__version__, "cuda_build": torch.version.cuda, "scipy": scipy.__version__}
    for job_id, scheduler in (("gpu-job-ddim", "DDIM"), ("gpu-job-lms", "LMS")):
        jobs.records.create(JobRecord(id=job_id, owner="o", created_at=now, expires_at=now + 600,
                                      params={"prompt": "a chair", "seed": 5, "scheduler": scheduler}))
        jobs.inputs.put(job_id, image, mask)
        # One job per call, as the GPU class takes them with batching off, or a list with it on (the default).
        result = inpainter.run.local([job_id])[0] if app.cfg.batch_max_images > 1 else inpainter.run.local(job_id)
        record = result["record"]
        assert record["status"] == "COMPLETED", record
        assert jobs.records.get(job_id).status.value == "COMPLETED"
        details[scheduler] = {"status": record["status"], "seeds": record["seeds"], "files": len(result["files"])}
    # A mask from words and an outpainted border: the mask model (CLIPSeg) runs on this image's transformers.
    jobs.records.create(JobRecord(id="gpu-job-mask-prompt", owner="o", created_at=now, expires_at=now + 600,
                                  params={"prompt": "a chair", "seed": 5, "mask_prompt": "the chair",
                                          "mask_threshold": 0.1, "extend_right": 64, "original_size": True}))
    blank = io.BytesIO()
    PIL.Image.new("L", (1, 1), 0).save(blank, format="PNG")  # no drawn mask: stored as the web tier stores it
    jobs.inputs.put("gpu-job-mask-prompt", image, blank.getvalue())
    result = (inpainter.run.local(["gpu-job-mask-prompt"])[0] if app.cfg.batch_max_images > 1
              else inpainter.run.local("gpu-job-mask-prompt"))
    record = result["record"]
    assert record["status"] == "COMPLETED" and record["mask_time"] > 0, record
    details["mask_prompt"] = {"status": record["status"], "mask_time": record["mask_time"]}
    # Every scheduler of the contract can be built here (one needing a package the image lacks would not).
    cache = SchedulerCache(json.loads((model_dir / "scheduler" / "scheduler_config.json").read_text()))
    details["schedulers"] = sorted(type(cache.get(name)).__name__ for name in SCHEDULER_TABLE)
    return details


def decorator_env(app, function: str) -> dict[str, str]:
    """The `env=NAME` its @app.function / @app.cls decorator gives the function's containers, as a dict."""
    tree = ast.parse((REPO / "app.py").read_text(), "app.py")
    node = next(n for n in tree.body if getattr(n, "name", None) == function.removesuffix(".*"))
    for decorator in node.decorator_list:
        for keyword in getattr(decorator, "keywords", ()):
            if keyword.arg == "env" and isinstance(keyword.value, ast.Name):
                return dict(getattr(app, keyword.value.id))
    return {}


CHECKS = {"web": check_web, "sweep": check_sweep, "deliver_webhook": check_deliver_webhook,
          "download_weights": check_download_weights, "Inpainter.*": check_inpainter}


def guarded(step):
    try:
        return {"ok": True, "details": step()}
    except BaseException as exc:  # noqa: BLE001 - every failure goes into the result
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}


def main() -> int:
    request = json.loads(sys.argv[1])
    result = {"image": request["image"], "python": sys.version.split()[0], "prefix": sys.prefix}
    dev = request["dev_venv"]
    leaks = [p for p in sys.path if p and os.path.realpath(p).startswith(dev + os.sep)]
    result["isolation"] = {"ok": sys.prefix != sys.base_prefix and not leaks and os.path.realpath(sys.prefix) != dev,
                           "leaks": leaks}
    result["static"] = guarded(lambda: static_check(request))
    blocked = set(request["local_packages"]) - set(request["shipped"]) - {"tests"}
    sys.meta_path.insert(0, NotShipped(blocked, request["image"]))
    result["import_app"] = guarded(lambda: __import__("app") and None)
    result["checks"] = {}
    if result["import_app"]["ok"]:
        app = sys.modules["app"]
        for function in request["functions"]:
            check = CHECKS.get(function)
            if check is None:
                result["checks"][function] = {"ok": False, "error": f"no dynamic check for {function}: add one to "
                                                                    f"tests/image_harness.py"}
                continue
            os.environ.update(decorator_env(app, function))
            result["checks"][function] = guarded(lambda: check(app, request))
    sys.stdout.flush()
    sys.stderr.flush()
    print(RESULT + json.dumps(result), file=sys.__stdout__, flush=True)
    return 0


if __name__ == "__main__":
    code = main()
    os._exit(code)  # no interpreter teardown: leftover worker threads (torch's, a pool's) cannot hang or abort it
