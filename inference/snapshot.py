"""Loading the model for a CPU memory snapshot without asking torch about CUDA devices.

On Modal the GPU class loads the pipeline before a memory snapshot is taken, on a machine with no GPU
attached, then restores that snapshot on GPU machines. torch's C++ side counts CUDA devices once per
process and keeps the answer (a function-local static in c10::cuda::device_count()), so a single query
made while no GPU is attached would leave every restored container believing it has none. Importing
diffusers makes such a query (`torch.accelerator.is_available()`, to pick its default device), and so can
any library that checks `torch.cuda.is_available()` at import.

`no_device_queries()` wraps the snapshot phase: the Python entry into that static
(`torch._C._cuda_getDeviceCount`) answers 0 without reaching C++, CUDA initialisation (what `.to("cuda")`
and friends run first) raises, and the accelerator runtime calls raise. Each query is recorded with its
caller. On exit everything is put back and the caches that saw "no device" meanwhile are cleared, so the
first real query happens after the restore, with the GPU attached. (diffusers also keeps "cpu" in two
module globals set at import, `torch_device` and `SUPPORTED_DEVICE_MAP`; only device_map, CPU offload and
LoRA helpers read them, none of which this service uses.)
"""

import sys
import traceback
from contextlib import contextmanager
from typing import Iterator

# torch._C bindings of the accelerator runtime that reach the device (current_accelerator() is a
# compile-time answer and stays).
ACCELERATOR_RUNTIME = (
    "_accelerator_hooks_device_count", "_accelerator_getDeviceIndex", "_accelerator_setDeviceIndex",
    "_accelerator_exchangeDevice", "_accelerator_maybeExchangeDevice", "_accelerator_getStream",
    "_accelerator_setStream", "_accelerator_synchronizeDevice", "_accelerator_getDeviceCapability",
    "_accelerator_getMemoryInfo", "_accelerator_hooks_get_current_device",
    "_accelerator_hooks_set_current_device", "_accelerator_hooks_exchange_device",
    "_accelerator_hooks_maybe_exchange_device",
)


class DeviceQueryInSnapshot(RuntimeError):
    """Something tried to use CUDA while the snapshot was being prepared."""


def _caller() -> str:
    frames = [f for f in traceback.extract_stack()[:-3] if not f.filename.endswith("snapshot.py")]
    return " <- ".join(f"{f.filename.split('site-packages/')[-1]}:{f.lineno}" for f in reversed(frames[-3:]))


@contextmanager
def no_device_queries() -> Iterator[list[str]]:
    """Yields the list of device queries made inside (each with where it came from)."""
    import torch

    queries: list[str] = []
    saved: list[tuple[object, str, object]] = []

    def patch(owner: object, name: str, replacement) -> None:
        if hasattr(owner, name):  # a CPU build has no CUDA bindings: nothing to keep out
            saved.append((owner, name, getattr(owner, name)))
            setattr(owner, name, replacement)

    def no_devices() -> int:
        queries.append(f"device count (answered 0, not asked of CUDA) from {_caller()}")
        return 0

    def refuse(what: str):
        def refused(*args, **kwargs):
            queries.append(f"{what} (refused) from {_caller()}")
            raise DeviceQueryInSnapshot(f"{what} while preparing the memory snapshot, where no GPU is attached: "
                                        f"it would leave CUDA unusable after the restore")
        return refused

    patch(torch._C, "_cuda_getDeviceCount", no_devices)
    patch(torch.cuda, "_lazy_init", refuse("CUDA initialisation"))
    for name in ACCELERATOR_RUNTIME:
        patch(torch._C, name, refuse(f"torch._C.{name}"))
    try:
        yield queries
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)
        torch.cuda._cached_device_count = None  # filled only after a real CUDA init; cleared to be sure
        torch_utils = sys.modules.get("diffusers.utils.torch_utils")
        if torch_utils is not None:  # diffusers' default device, detected (as "cpu") inside
            torch_utils.TorchDeviceBackend._detect_device_type.cache_clear()
