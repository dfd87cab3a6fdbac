"""Each Modal image of app.py as a local venv: its pip list (plus the Modal client every container has) installed
FOR REAL, then tests/image_harness.py run in it. Used by tests/test_images.py.

What an image is, is read from app.py itself: every top-level `<name>_image = modal.Image.debian_slim(...)
.pip_install(*LIST)...add_local_python_source(...)` assignment (AST: which lists, which local packages, which
Python), and the lists' values from the imported module. A build step this file cannot reproduce makes it fail
loudly rather than test something else than what deploys.

Venvs are cached in .image-venvs/<image>-<hash of the sorted pip list and the Python version>/ and reused when a
marker says their install completed; a file lock per venv keeps parallel test runs from building one twice.
"""

import ast
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "app.py"
CACHE = REPO / ".image-venvs"
MARKER = ".install-complete.json"
# The image build steps reproduced here; any other (apt_install, run_commands, uv_pip_install, ...) is refused.
KNOWN_STEPS = {"debian_slim", "pip_install", "add_local_python_source", "env"}
# pip's words for "the registry could not be reached" (then the test skips; any other failure fails).
OFFLINE_MARKERS = ("NewConnectionError", "Temporary failure in name resolution", "Network is unreachable",
                   "ConnectTimeoutError", "ProxyError", "Name or service not known", "No route to host",
                   "Connection refused", "ReadTimeoutError")
BUILD_TIMEOUT = 1800  # seconds for one venv's pip install (the GPU image's is the long one)
LOCK_TIMEOUT = BUILD_TIMEOUT + 600  # waiting for another test run that builds the same venv


class RegistryUnreachable(Exception):
    """pip could not reach a package registry: the venv cannot be built here (the test skips)."""


class BuildFailed(Exception):
    """pip refused or failed for another reason (a pin that does not exist, pins that conflict, ...)."""


@dataclass
class ImageDef:
    """One image as app.py builds it (from the AST)."""

    name: str  # "web" for web_image
    variable: str  # "web_image"
    python_version: str  # debian_slim(python_version=...)
    lists: list[str] = field(default_factory=list)  # pip_install(*NAME) list names, in order
    literals: list[str] = field(default_factory=list)  # pip_install("pkg==1") literal packages
    local_sources: list[str] = field(default_factory=list)  # add_local_python_source(...) packages


def _chain(call: ast.expr) -> list[ast.Call]:
    """modal.Image.debian_slim(...).pip_install(...).env(...) -> its calls, first to last."""
    calls = []
    while isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute):
        calls.append(call)
        call = call.func.value
    return list(reversed(calls))


def image_definitions(app_path: Path = APP) -> dict[str, ImageDef]:
    tree = ast.parse(app_path.read_text(), str(app_path))
    images: dict[str, ImageDef] = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id.endswith("_image")):
            continue
        variable = node.targets[0].id
        calls = _chain(node.value)
        if not calls or calls[0].func.attr != "debian_slim":
            raise ValueError(f"app.py:{node.lineno}: {variable} does not start from modal.Image.debian_slim(...); "
                             f"tests/image_envs.py cannot reproduce it")
        image = ImageDef(name=variable.removesuffix("_image"), variable=variable, python_version="")
        for call in calls:
            step = call.func.attr
            if step not in KNOWN_STEPS:
                raise ValueError(f"app.py:{call.lineno}: {variable} uses .{step}(), which tests/image_envs.py does "
                                 f"not reproduce: teach it that step")
            if step == "debian_slim":
                versions = [k.value for k in call.keywords if k.arg == "python_version"]
                if not (versions and isinstance(versions[0], ast.Constant)):
                    raise ValueError(f"app.py:{call.lineno}: {variable} must name its python_version")
                image.python_version = versions[0].value
            elif step == "pip_install":
                if call.keywords:
                    raise ValueError(f"app.py:{call.lineno}: pip_install options are not reproduced here")
                for arg in call.args:
                    if isinstance(arg, ast.Starred) and isinstance(arg.value, ast.Name):
                        image.lists.append(arg.value.id)
                    elif isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                        image.literals.append(arg.value)
                    else:
                        raise ValueError(f"app.py:{call.lineno}: pip_install arguments must be *LIST or strings")
            elif step == "add_local_python_source":
                image.local_sources += [a.value for a in call.args if isinstance(a, ast.Constant)]
        images[image.name] = image
    return images


@dataclass
class ImageSpec:
    """An image with its pip list resolved from the imported app module, and the functions it serves."""

    name: str
    python_version: str
    packages: list[str]  # exactly the image's pip list
    local_sources: list[str]
    functions: list[str]  # registered function names ("web", "Inpainter.*", ...)


def app_functions(app) -> dict:
    """The app's functions by name, as Modal's internal objects ("Inpainter.*" for the class): modal 1.6 has no
    public way (App.registered_functions is deprecated and goes in 1.7)."""
    from modal._utils.async_utils import synchronizer

    return dict(synchronizer._translate_in(app)._local_state.functions)


def image_specs(module) -> dict[str, ImageSpec]:
    """Every image of the imported app module, with the functions that run on it. Fails when a function runs on
    an image app.py does not assign to a top-level `<name>_image`, or when the image objects disagree with the AST."""
    from modal._utils.async_utils import synchronizer

    definitions = image_definitions()
    by_object = {id(synchronizer._translate_in(getattr(module, d.variable))): d for d in definitions.values()}
    functions: dict[str, list[str]] = {name: [] for name in definitions}
    for name, function in app_functions(module.app).items():
        definition = by_object.get(id(function._spec.image))
        if definition is None:
            raise ValueError(f"function {name} runs on an image that is no top-level *_image of app.py")
        functions[definition.name].append(name)
    specs = {}
    for definition in definitions.values():
        image = synchronizer._translate_in(getattr(module, definition.variable))
        shipped = sorted(image._added_python_source_set)
        if shipped != sorted(definition.local_sources):
            raise ValueError(f"{definition.variable}: Modal ships {shipped}, the AST says {definition.local_sources}")
        packages = [p for name in definition.lists for p in getattr(module, name)] + definition.literals
        specs[definition.name] = ImageSpec(definition.name, definition.python_version, packages, shipped,
                                           functions[definition.name])
    return specs


def modal_pin() -> str:
    """The Modal client of every container: the one that deploys (this venv's, pinned in pyproject.toml)."""
    from importlib.metadata import version

    return f"modal=={version('modal')}"


def interpreter(python_version: str) -> tuple[str, str]:
    """(path, full version) of a Python `python_version` (like "3.11") to build venvs with."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" == python_version:
        return sys.executable, platform.python_version()
    found = shutil.which(f"python{python_version}")
    if not found:
        raise BuildFailed(f"no python{python_version} on PATH to build the image venvs with")
    out = subprocess.run([found, "-c", "import platform; print(platform.python_version())"], capture_output=True,
                         text=True, check=True)
    return found, out.stdout.strip()


def venv_key(requirements: list[str], full_version: str) -> str:
    text = json.dumps({"pip": sorted(requirements), "python": full_version})
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _pip_failure(result: subprocess.CompletedProcess, what: str) -> Exception:
    output = (result.stdout or "") + (result.stderr or "")
    tail = "\n".join(line for line in output.splitlines() if not line.startswith("WARNING: Location"))[-6000:]
    if "ResolutionImpossible" in output or "conflicting dependencies" in output:
        return BuildFailed(f"{what}: the pins cannot be installed together (pip's explanation below)\n{tail}")
    if any(marker in output for marker in OFFLINE_MARKERS):
        return RegistryUnreachable(f"{what}: a package registry is unreachable\n{tail}")
    return BuildFailed(f"{what}: pip failed (exit {result.returncode})\n{tail}")


def _pip(python: Path, args: list[str], what: str, timeout: float) -> subprocess.CompletedProcess:
    cmd = [str(python), "-m", "pip", "--disable-pip-version-check", "--no-input", *args]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_pip_env())
    except subprocess.TimeoutExpired as exc:
        tail = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        raise BuildFailed(f"{what}: pip ran past {timeout:.0f}s\n{tail[-3000:]}") from None
    if result.returncode != 0:
        raise _pip_failure(result, what)
    return result


def _pip_env() -> dict[str, str]:
    """The machine's pip configuration as it is (its indexes, find-links, certificates), none of this venv's."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PIP_NO_INPUT"] = "1"
    return env


def _check_torch_is_not_cuda(python: Path, requirements: list[str], what: str) -> None:
    """Before installing torch: a dry run must pick a CPU build (the stand-in for the image's CUDA build); a CUDA
    build is several GB, which this check must never download."""
    report = python.parent.parent / "resolve-report.json"
    _pip(python, ["install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report), *requirements],
         what + " (dry run)", BUILD_TIMEOUT)
    install = json.loads(report.read_text())["install"]
    report.unlink()
    resolved = {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in install}
    cuda = sorted(name for name in resolved if name.startswith("nvidia-") or name == "triton")
    if "torch" in resolved and ("+cu" in resolved["torch"] or cuda):
        raise BuildFailed(f"{what}: torch resolves to {resolved['torch']} with {cuda or 'no nvidia packages'} here, "
                          f"a CUDA build of several GB. Give pip a CPU build of that release (a find-links "
                          f"directory or an extra index with torch==<version>+cpu) to run this check.")


def _remove_stale(image: str, keep: Path) -> None:
    """Older venvs of the same image (their pip list changed): removed unless another run holds them."""
    for old in CACHE.glob(f"{image}-*"):
        if old == keep or old.suffix == ".lock" or not old.is_dir():
            continue
        lock = FileLock(str(old) + ".lock")
        try:
            with lock.acquire(timeout=0):
                shutil.rmtree(old, ignore_errors=True)
        except Timeout:
            continue


@dataclass
class Venv:
    path: Path
    python: Path
    requirements: list[str]
    built_seconds: float | None  # None when reused from the cache
    marker: dict


def ensure_venv(spec: ImageSpec, log=print) -> Venv:
    """The venv of `spec`, built (python -m venv; pip install <its list> modal==<deploying version>) unless a
    completed one with the same key is cached. Raises RegistryUnreachable or BuildFailed."""
    requirements = [*spec.packages, modal_pin()]
    base_python, full_version = interpreter(spec.python_version)
    path = CACHE / f"{spec.name}-{venv_key(requirements, full_version)}"
    python = path / "bin" / "python"
    CACHE.mkdir(exist_ok=True)
    gitignore = CACHE / ".gitignore"  # ignored even in a checkout whose .gitignore does not name it
    if not gitignore.exists():
        gitignore.write_text("*\n")
    try:
        lock = FileLock(str(path) + ".lock").acquire(timeout=LOCK_TIMEOUT)
    except Timeout:
        raise BuildFailed(f"waited {LOCK_TIMEOUT}s for another run building {path}") from None
    with lock:
        marker_path = path / MARKER
        if marker_path.is_file() and python.exists():
            marker = json.loads(marker_path.read_text())
            if marker.get("requirements") == requirements and marker.get("python") == full_version:
                return Venv(path, python, requirements, None, marker)
        shutil.rmtree(path, ignore_errors=True)
        started = time.monotonic()
        what = f"the {spec.name} image's venv ({path.name})"
        log(f"building {what}: pip install {' '.join(requirements)}")
        try:
            subprocess.run([base_python, "-m", "venv", str(path)], check=True, capture_output=True, text=True,
                           timeout=300, env=_pip_env())
            if any(r.split("==")[0].strip().lower() == "torch" for r in requirements):
                _check_torch_is_not_cuda(python, requirements, what)
            _pip(python, ["install", *requirements], what, BUILD_TIMEOUT)
            freeze = _pip(python, ["freeze", "--all"], what + " (freeze)", 120).stdout.split()
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        seconds = time.monotonic() - started
        marker = {"requirements": requirements, "python": full_version, "built_seconds": round(seconds, 1),
                  "built_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "freeze": freeze}
        marker_path.write_text(json.dumps(marker, indent=1) + "\n")
        log(f"built {what} in {seconds:.0f}s")
    _remove_stale(spec.name, path)
    return Venv(path, python, requirements, seconds, marker)


def local_packages() -> list[str]:
    return sorted(p.name for p in REPO.iterdir() if (p / "__init__.py").is_file())


HARNESS_RESULT = "IMAGE-HARNESS-RESULT "


def harness_env(home: Path) -> dict[str, str]:
    """What a container would have, offline: no Modal token or config, no dev venv, the repo on the path (as
    add_local_python_source puts the local packages there), a scratch HOME and STATE_DIR."""
    home.mkdir(parents=True, exist_ok=True)
    env = {name: os.environ[name] for name in ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR") if name in os.environ}
    env.update({
        "HOME": str(home),
        "STATE_DIR": str(home / "state"),
        "PYTHONPATH": str(REPO),
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(home / "hf"),
        "TRANSFORMERS_VERBOSITY": "error",
    })
    return env


def run_harness(venv: Venv, spec: ImageSpec, scratch: Path, extra: dict | None = None,
                timeout: float = 900) -> tuple[dict | None, subprocess.CompletedProcess]:
    """Run tests/image_harness.py in the venv for `spec`; returns (its JSON result or None, the process)."""
    request = {"image": spec.name, "functions": spec.functions, "shipped": spec.local_sources,
               "local_packages": local_packages(), "dev_venv": str(Path(sys.prefix).resolve()),
               "scratch": str(scratch), **(extra or {})}
    cmd = [str(venv.python), "-m", "tests.image_harness", json.dumps(request)]
    proc = subprocess.run(cmd, cwd=REPO, env=harness_env(scratch / "home"), capture_output=True, text=True,
                          timeout=timeout)
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith(HARNESS_RESULT):
            result = json.loads(line[len(HARNESS_RESULT):])
    return result, proc
