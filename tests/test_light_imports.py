"""The layers keep their imports: the web tier pulls in no torch (fast cold start, small image), and nothing
below HTTP needs a web framework (the Modal functions without one, like the weights download, import it)."""

import ast
import subprocess
import sys

from tests.conftest import REPO

HEAVY = ("torch", "diffusers", "transformers", "accelerate")
WEB = ("fastapi", "starlette", "uvicorn")
BELOW_HTTP = ["service/jobs", "service/stores", "service/config.py", "service/logs.py", "service/backend.py",
              "service/embedded.py", "service/worker_main.py"]
MAX_CLASS_LINES = 150


def python_files(*paths: str) -> list:
    files = []
    for path in paths:
        target = REPO / path
        files += sorted(target.rglob("*.py")) if target.is_dir() else [target]
    return files


def imported_roots(path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
    return names


def test_schemas_and_the_web_tier_do_not_import_torch():
    code = ("import sys, schemas, service.http.app, service.backend; "
            f"heavy = [m for m in {HEAVY!r} if m in sys.modules]; print(heavy); assert not heavy")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
    for path in python_files("schemas", "service"):
        assert not imported_roots(path) & set(HEAVY), f"{path.relative_to(REPO)} imports a heavy ML package"


def test_nothing_below_http_imports_a_web_framework():
    for path in python_files(*BELOW_HTTP):
        assert not imported_roots(path) & set(WEB), f"{path.relative_to(REPO)} imports a web framework"
    # And it imports in a process where none can be found (as in the Modal images without one).
    modules = [".".join(p.relative_to(REPO).with_suffix("").parts) for p in python_files(*BELOW_HTTP)]
    code = ("import importlib, sys\n"
            f"for name in {WEB!r}: sys.modules[name] = None\n"
            f"for module in {[m.removesuffix('.__init__') for m in modules]!r}: importlib.import_module(module)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_no_class_is_longer_than_a_screenful_or_two():
    long = []
    for path in python_files("service", "schemas", "inference", "weights", "app.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                long.append(f"{path.relative_to(REPO)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long
