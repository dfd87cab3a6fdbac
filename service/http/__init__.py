"""The HTTP layer: the FastAPI app, routes, API-key auth, request intake, error answers, the docs pages and
the playground. It calls the job layer and maps its errors to status codes; nothing below imports it."""
