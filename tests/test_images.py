"""Each Modal image of app.py installed for real, and its functions' imports and code paths run there.

A container has exactly its image's pip list (plus the Modal client) and the local packages the image ships, so
an import that the dev venv satisfies can still fail on Modal (download_weights once imported fastapi through
service.backend in an image without fastapi). For each image this builds a venv with exactly that list
(tests/image_envs.py, cached in .image-venvs/) and runs tests/image_harness.py in it, outside the dev venv:
a static check of every import its functions can reach, then each function run offline. The GPU image gets the
CPU build of its torch release (the machine's pip config finds it); the rest of its list is what deploys.

Without a reachable package registry the venvs cannot be built and these tests skip; any other failure fails.
"""

import importlib
import time

import pytest

from tests import image_envs

IMAGES = sorted(image_envs.image_definitions())  # from app.py's AST: nothing imported at collection


@pytest.fixture(scope="module")
def specs() -> dict[str, image_envs.ImageSpec]:
    return image_envs.image_specs(importlib.import_module("app"))


def test_every_function_runs_on_an_image_checked_here(specs):
    served = sorted(function for spec in specs.values() for function in spec.functions)
    assert served == sorted(image_envs.app_functions(importlib.import_module("app").app))
    for spec in specs.values():
        assert spec.packages and all("==" in p for p in spec.packages), f"{spec.name}: exact pins only"


def test_the_static_closure_follows_helpers_function_bodies_and_lazy_imports():
    """The harness's import analysis, run here (no venv needed): what it must reach for the checks to mean
    anything, and the layering the web tier depends on."""
    from tests.image_harness import static_closure

    local = image_envs.local_packages()
    web = static_closure(["web"], local)
    assert {"service.http.app", "service.backend", "service.stores.modal_dispatch"} <= set(web.modules)
    assert {"fastapi", "fastapi_offline", "modal"} <= set(web.third_party)
    assert not [m for m in web.modules if m.partition(".")[0] in ("inference", "weights")], web.modules
    assert not {"torch", "diffusers", "transformers"} & set(web.third_party)
    assert web.chain("service.jobs.pricing")[0] == "app.py (module level)"  # deploy-time helpers run at import
    gpu = static_closure(["Inpainter.*"], local)
    assert "inference.inpainter" in gpu.modules  # named by a string in inference/__init__.py's lazy loader
    assert {"torch", "diffusers", "scipy"} <= set(gpu.third_party)
    download = static_closure(["download_weights"], local)
    assert "weights.download" in download.modules and "service.backend" not in download.modules


def describe(result: dict) -> list[str]:
    """What went wrong in the harness's result, one entry per problem."""
    problems = []
    image = result["image"]
    if not result["isolation"]["ok"]:
        problems.append(f"{image}: the harness was not isolated from the dev venv: {result['isolation']}")
    static = result["static"]
    if not static["ok"]:
        problems.append(f"{image}: the static check failed: {static['error']}\n{static['traceback']}")
    else:
        for item in static["details"]["missing"]:
            problems.append(f"{image}: third-party module {item['module']!r} is not installed in the image; imported "
                            f"by {', '.join(item['imported_by'])}; reached via {' -> '.join(item['chain'])}")
        for item in static["details"]["unshipped"]:
            problems.append(f"{image}: local package {item['package']!r} is not shipped by the image "
                            f"(add_local_python_source); reached via {' -> '.join(item['chain'])}")
    if not result["import_app"]["ok"]:
        problems.append(f"{image}: `import app` failed: {result['import_app']['error']}\n"
                        f"{result['import_app']['traceback']}")
    for function, check in result["checks"].items():
        if not check["ok"]:
            problems.append(f"{image}: running {function} failed: {check['error']}\n{check.get('traceback', '')}")
    return problems


@pytest.mark.parametrize("image", IMAGES)
def test_image_has_what_its_functions_import(image, specs, request, tmp_path):
    spec = specs[image]
    if not spec.functions:
        pytest.skip(f"no function runs on {image}_image")
    try:
        venv = image_envs.ensure_venv(spec)
    except image_envs.RegistryUnreachable as exc:
        print(exc)
        pytest.skip(f"package registry not reachable; cannot build the {image} image's venv")
    extra = {}
    if "inference" in spec.local_sources:  # the GPU image runs jobs on the tiny model (built in the dev venv)
        extra["tiny_model_dir"] = str(request.getfixturevalue("tiny_model_dir"))
    started = time.monotonic()
    result, proc = image_envs.run_harness(venv, spec, tmp_path, extra)
    took = time.monotonic() - started
    built = "reused" if venv.built_seconds is None else f"built in {venv.built_seconds:.0f}s"
    print(f"{image}: venv {venv.path.name} {built}; harness {took:.1f}s; functions {spec.functions}")
    logs = f"\n--- harness stderr (last 6000 chars) ---\n{proc.stderr[-6000:]}"
    assert result is not None, f"the harness printed no result (exit {proc.returncode}){logs}\n{proc.stdout[-3000:]}"
    print(f"{image}: closure {result['static'].get('details', {}).get('local_packages')}, checks "
          f"{ {name: check.get('details') for name, check in result['checks'].items()} }")
    problems = describe(result)
    assert not problems, "\n".join(problems) + logs
    assert sorted(result["checks"]) == sorted(spec.functions)
