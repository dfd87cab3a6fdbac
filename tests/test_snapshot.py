"""The Modal GPU class's snapshot phase asks torch nothing about CUDA devices (inference/snapshot.py).

Each check runs in a fresh process that makes this CPU build of torch look like a CUDA build with no GPU
attached, which is what a Modal memory-snapshot phase is: torch._C's device count (the entry into the C++
static that would remember "no GPU" for the life of the process, restores included) answers 0 and records
every call that reaches it; CUDA initialisation records and fails. Then the phase runs as Modal runs it."""

import json
import os
import subprocess
import sys

from tests.conftest import REPO

FAKE_CUDA_BUILD = r'''
import json, sys, traceback
import torch

reached = []  # calls that got through to what would be the C++ side of a CUDA build


def where():
    frames = [f for f in traceback.extract_stack()[:-2] if "<string>" not in f.filename]
    return " <- ".join(f"{f.filename.split('site-packages/')[-1]}:{f.lineno}" for f in reversed(frames[-4:]))


def device_count():
    reached.append("c10::cuda::device_count() from " + where())
    return 0


def cuda_init():
    reached.append("CUDA initialisation from " + where())
    raise RuntimeError("no GPU is attached")


def missing_binding(name):  # a CUDA build has more torch._C._cuda_* bindings; any use of one is recorded
    if name.startswith("_cuda"):
        def binding(*args, **kwargs):
            reached.append(f"torch._C.{name} from " + where())
            raise RuntimeError("no GPU is attached")
        return binding
    raise AttributeError(name)


torch._C._cuda_getDeviceCount = device_count
torch._C._cuda_init = cuda_init
torch._C._accelerator_getAccelerator = lambda: torch.device("cuda")
torch._C.__getattr__ = missing_binding
'''

# The GPU class's @modal.enter(snap=True) method, exactly as Modal calls it before taking the snapshot.
SNAPSHOT_PHASE = FAKE_CUDA_BUILD + r'''
import app

gpu_class = app.Inpainter._get_user_cls()()
gpu_class.load()
print(json.dumps({"reached": reached, "device": gpu_class.model.device}))
'''

# The same load without the guard: what the snapshot phase did before it had one.
UNGUARDED = FAKE_CUDA_BUILD + r'''
from inference import Inpainter

model = Inpainter(sys.argv[1], device="cpu", dtype=torch.float32)
print(json.dumps({"reached": reached, "device": model.device}))
'''


def run(code: str, tiny_model_dir, tmp_path, *args: str) -> tuple[dict, str]:
    env = {**os.environ, "MODEL_DIR": str(tiny_model_dir), "STATE_DIR": str(tmp_path), "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stdout


def test_the_snapshot_phase_makes_no_cuda_query(tiny_model_dir, tmp_path):
    result, output = run(SNAPSHOT_PHASE, tiny_model_dir, tmp_path)
    assert result == {"reached": [], "device": "cpu"}
    # What it kept out, logged by the GPU class: diffusers asks for its default device while it is imported.
    kept_out = [line for line in output.splitlines() if line.startswith("kept out of the memory snapshot")]
    assert kept_out and any("diffusers" in line for line in kept_out), output


def test_without_the_guard_importing_diffusers_asks_cuda_for_its_devices(tiny_model_dir, tmp_path):
    """The recorder sees what the guard keeps out: the same load, unguarded, reaches the device count."""
    result, _ = run(UNGUARDED, tiny_model_dir, tmp_path, str(tiny_model_dir))
    assert result["device"] == "cpu"
    assert any("diffusers" in call for call in result["reached"]), result


def test_after_the_snapshot_phase_cuda_is_asked_afresh(tiny_model_dir, tmp_path):
    """Nothing the guard answered stays cached: the first query after it reaches torch again."""
    code = SNAPSHOT_PHASE.replace('print(json.dumps({"reached": reached, "device": gpu_class.model.device}))',
                                  'torch.cuda.is_available()\nprint(json.dumps({"reached": reached, '
                                  '"device": gpu_class.model.device}))')
    result, _ = run(code, tiny_model_dir, tmp_path)
    assert len(result["reached"]) == 1 and result["reached"][0].startswith("c10::cuda::device_count()")
