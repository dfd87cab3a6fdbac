"""The Modal topology in separate processes on loopback: a Dict server (stand-in Dicts shared over a socket,
like modal.Dict between containers), a web process (the real app over the Modal backend) and a GPU process
(the GPU class's `run` on the tiny model), with spawn/FunctionCall played by a shared call queue.

    python -m tests.multiprocess_modal web PORT ADDRESS STATE_DIR MODEL_DIR
    python -m tests.multiprocess_modal gpu ADDRESS STATE_DIR MODEL_DIR
"""

import asyncio
import itertools
import os
import queue
import sys
import time
import uuid
from multiprocessing.managers import BaseManager

from tests.standins import StandInDict

AUTHKEY = b"inpaint-test"
DICT_NAMES = ("records", "active", "expiry", "counters", "results")
_dicts = {name: StandInDict() for name in DICT_NAMES}
_calls: "queue.Queue" = queue.Queue()


class DictServer(BaseManager):
    pass


DictServer.register("dict", callable=lambda name: _dicts[name])
DictServer.register("calls", callable=lambda: _calls)


def connect(address: tuple[str, int]) -> tuple[dict, object]:
    manager = DictServer(address=address, authkey=AUTHKEY)
    manager.connect()
    return {name: manager.dict(name) for name in DICT_NAMES}, manager.calls()


class RemoteCall:
    """FunctionCall over the shared `results` Dict: get() waits for the GPU process's answer."""

    def __init__(self, call_id: str, results):
        self.object_id, self.results = call_id, results
        self.get = _GetWithAio(self)

    def cancel(self):
        self.results.put(f"cancelled:{self.object_id}", True)


class _GetWithAio:
    def __init__(self, call: RemoteCall):
        self.call = call

    def __call__(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            answer = self.call.results.get(self.call.object_id)
            if answer is not None:
                kind, value = answer
                if kind == "error":
                    raise RuntimeError(value)
                return value
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError()
            time.sleep(0.02)

    async def aio(self, timeout=None):
        return await asyncio.to_thread(self, timeout)


def settings_for(state_dir: str, model_dir: str):
    from tests.servers import make_settings

    return make_settings(state_dir, model_dir)


def run_web(port: int, address: tuple[str, int], state_dir: str, model_dir: str) -> None:
    import uvicorn

    from service.http.app import create_app
    from service.backend import build_modal
    from service.logs import configure_logging

    configure_logging()
    dicts, calls = connect(address)
    ids = itertools.count()

    def spawn(job_id: str) -> RemoteCall:
        call_id = f"fc-{os.getpid()}-{next(ids)}-{uuid.uuid4().hex[:6]}"
        calls.put((call_id, job_id))
        return RemoteCall(call_id, dicts["results"])

    backend = build_modal(settings_for(state_dir, model_dir), dicts, spawn=spawn,
                          call_from_id=lambda call_id: RemoteCall(call_id, dicts["results"]), gpu="standin")
    uvicorn.run(create_app(backend), host="127.0.0.1", port=port, log_level="warning")


def run_gpu(address: tuple[str, int], state_dir: str, model_dir: str) -> None:
    from inference import Inpainter
    from service.backend import build_modal
    from service.logs import configure_logging
    from service.stores.modal_dispatch import outcome_to_wire
    from service.jobs.worker import run_job

    configure_logging()
    dicts, calls = connect(address)
    jobs = build_modal(settings_for(state_dir, model_dir), dicts).jobs
    model = Inpainter(model_dir)
    print("gpu ready", flush=True)
    while True:
        call_id, job_id = calls.get()
        try:
            answer = ("ok", outcome_to_wire(run_job(job_id, jobs, model, timeout=60)))
        except Exception as exc:  # what Modal would hand the caller as the remote error
            answer = ("error", f"{type(exc).__name__}: {exc}")
        dicts["results"].put(call_id, answer)


if __name__ == "__main__":
    role = sys.argv[1]
    if role == "web":
        host, port = sys.argv[3].rsplit(":", 1)
        run_web(int(sys.argv[2]), (host, int(port)), sys.argv[4], sys.argv[5])
    else:
        host, port = sys.argv[2].rsplit(":", 1)
        run_gpu((host, int(port)), sys.argv[3], sys.argv[4])
