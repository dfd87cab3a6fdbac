"""The job layer assembled over one set of stores: what the HTTP routes, the workers and the housekeeping use.

Its three parts are in their own modules: `admission` (service/jobs/admission.py: limits, charging, storing,
dispatching), `lifecycle` (service/jobs/lifecycle.py: the once-only transitions and what follows a job's end)
and `waiting` (service/jobs/waiting.py: status, long-poll, v1's wait).
"""

from typing import Callable

from service.config import Settings
from service.jobs.admission import Admission
from service.jobs.changes import Changes
from service.jobs.lifecycle import JobLifecycle
from service.jobs.ports import Counters, Dispatcher, InputBlobs, JobRecords, ResultStorage
from service.jobs.records import JobRecord
from service.jobs.waiting import Waiting

MAX_ATTEMPTS = 2  # a job whose worker went silent is run once more, then FAILED


class JobService:
    def __init__(self, settings: Settings, records: JobRecords, inputs: InputBlobs, counters: Counters,
                 storage: ResultStorage, dispatcher: Dispatcher, changes: Changes | None = None,
                 on_terminal: Callable[[JobRecord], None] | None = None, inline_reads: bool = False,
                 hand_over_inputs: bool = False):
        self.settings = settings
        self.records, self.inputs, self.counters = records, inputs, counters
        self.storage, self.dispatcher, self.changes = storage, dispatcher, changes
        self.lifecycle = JobLifecycle(settings, records, inputs, counters, dispatcher, on_terminal)
        self.admission = Admission(settings, records, inputs, counters, dispatcher, self.lifecycle,
                                   hand_over_inputs)
        self.waiting = Waiting(records, counters, dispatcher, self.lifecycle, changes, inline_reads)
