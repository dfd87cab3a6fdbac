"""The service, in layers that import downwards only:

    __main__.py, embedded.py,  entry point and composition roots (build everything from Settings):
    backend.py, worker_main.py the embedded server, its worker process, the Modal backend
    http/                     FastAPI app, routes, auth, intake, error answers (the web tier)
    jobs/                     the rules of a job's life, workers, housekeeping, limits, webhooks
    stores/                   SQLite, modal.Dicts, result storage: the job layer's ports implemented
    config.py, logs.py        settings and logging, used by all of the above

No torch anywhere here (inference/ holds it); no web framework below http/.
"""
