"""The FastAPI app: middleware, error handlers and the routers over one job service."""

import asyncio
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.backend import Backend
from service.http.access_log import AccessLog
from service.http.docs_ui import install_docs
from service.http.errors import install_error_handlers
from service.http.inputs import FetchLimits, make_client
from service.http.metrics import Metrics
from service.http.poll_limit import PollLimiter
from service.http.routes import extras, files, metrics, v1, v2

DESCRIPTION = ("Stable Diffusion 1.5 inpainting, compatible with Segmind's sd1.5-inpainting API. "
               "Authenticate with the `x-api-key` header (or `Authorization: Bearer`). "
               "The full reference is docs/API.md in the repository.")


def fetch_limits(settings) -> FetchLimits:
    return FetchLimits(max_bytes=settings.input_max_bytes, max_pixels=settings.input_max_pixels,
                       connect_timeout=settings.fetch_connect_timeout, read_timeout=settings.fetch_read_timeout,
                       max_redirects=settings.fetch_max_redirects, allow_private=settings.allow_private_urls)


def create_app(backend: Backend) -> FastAPI:
    """`backend.background`: objects with start()/stop() run for the app's lifetime (worker, sweep, webhooks),
    started in order and stopped in reverse."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if backend.settings.blocking_threads:  # asyncio.to_thread's pool: one thread per blocking store call
            asyncio.get_running_loop().set_default_executor(
                ThreadPoolExecutor(backend.settings.blocking_threads, thread_name_prefix="store"))
        for item in backend.background:
            item.start()
        app.state.http = make_client(app.state.fetch_limits)
        try:
            yield
        finally:
            await app.state.http.aclose()
            for item in reversed(backend.background):
                item.stop()

    app = FastAPI(title="inpaint", version="0.1.0", description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None)  # served from the package by install_docs: no CDN
    install_docs(app)
    app.state.jobs = backend.jobs
    app.state.fetch_limits = fetch_limits(backend.settings)
    app.state.poll_limit = PollLimiter(backend.settings.status_polls_per_second, backend.settings.status_poll_burst)
    app.state.metrics = Metrics(backend.jobs)
    install_error_handlers(app)
    app.add_middleware(AccessLog, observe=app.state.metrics.observe)
    app.include_router(extras.router)
    app.include_router(metrics.router)
    app.include_router(v1.router)
    app.include_router(v2.router)
    if getattr(backend.jobs.storage, "served_here", False):
        app.include_router(files.router)
    return app
