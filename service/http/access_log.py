"""One JSON line per HTTP request (service/logs.py writes it): method, path, status, time, request id, owner."""

import time

from service.logs import log_event, log_path


class AccessLog:
    """Plain ASGI middleware (cheaper than Starlette's BaseHTTPMiddleware on the hot status path)."""

    def __init__(self, app, observe=None):
        self.app = app
        self.observe = observe  # observe(scope, status, seconds): the latency histogram of GET /metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        seen = {"status": 500, "request_id": None}

        async def send_and_watch(message):
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                for name, value in message.get("headers", ()):
                    if name == b"x-request-id":
                        seen["request_id"] = value.decode()
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            state = scope.get("state") or {}
            fields = {"request_id": seen["request_id"] or state.get("request_id"), "owner": state.get("owner")}
            if seen["status"] >= 400 and state.get("error"):
                fields["error"] = state["error"]  # why it was refused, in the same line
            seconds = time.perf_counter() - started
            if self.observe is not None:
                self.observe(scope, seen["status"], seconds)
            log_event("request", method=scope["method"], path=log_path(scope["path"]), status=seen["status"],
                      ms=round(seconds * 1000, 2),
                      **{k: v for k, v in fields.items() if v is not None})
