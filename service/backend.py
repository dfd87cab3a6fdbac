"""The composition roots: from Settings to a job service with its store, storage, dispatcher and hooks.

app.py builds the Modal backend here; `python -m service` builds the embedded one (service/embedded.py) from
the same pieces, so a setting honoured in one place is honoured in the other. Nothing reachable from app.py
reaches the embedded worker, which imports the model.
"""

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from service.config import Settings
from service.jobs.service import JobService
from service.stores.results import make_storage

log = logging.getLogger(__name__)


@dataclass
class Backend:
    settings: Settings
    jobs: JobService
    background: tuple = field(default=())  # objects with start()/stop(), run for the app's lifetime


def build_modal(settings: Settings, dicts: dict[str, Any], spawn: Callable[[str], Any] | None = None,
                call_from_id: Callable[[str], Any] | None = None, gpu: str = "",
                on_terminal: Callable[[Any], None] | None = None, files_volume: Any = None) -> Backend:
    """modal.Dicts for state (`records`, `active`, `expiry`, `counters`), inputs and results in the result
    storage (S3 when S3_BUCKET is set, else `files_volume`), dispatch by spawn. The GPU containers build it
    without spawn (they never dispatch)."""
    from service.stores.modal_dicts import DictCounters, DictRecords
    from service.stores.modal_dispatch import ModalDispatcher
    from service.stores.object_inputs import ObjectInputs

    records = DictRecords(dicts["records"], dicts["active"], dicts["expiry"])
    dispatcher = ModalDispatcher(records, spawn, call_from_id, gpu, batched=(settings.batch_max_images or 1) > 1)
    storage = make_storage(settings, files_volume)
    jobs = JobService(settings, records, ObjectInputs(storage), DictCounters(dicts["counters"]), storage,
                      dispatcher, on_terminal=on_terminal)
    return Backend(settings, jobs)
