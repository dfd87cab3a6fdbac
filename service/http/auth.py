"""API keys: x-api-key (what the Segmind SDK sends) or Authorization: Bearer."""

import hmac

from fastapi import Request

from service.http.errors import ApiError
from service.jobs.identity import key_owner

# Where keys come from, for the 401 messages; says nothing about the keys themselves.
KEY_SOURCES = ("this server's keys are set by its API_KEYS setting or, when that is unset, generated into "
               "STATE_DIR/api_key and printed in the server log at startup")


def presented_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def authenticate(request: Request, api_keys: list[str]) -> str:
    """The owner id of the request's key; 401 when it is missing or unknown (constant-time compare)."""
    key = presented_key(request)
    if key is None:
        raise ApiError(401, f"missing API key: send it in the x-api-key header (or Authorization: Bearer); "
                            f"{KEY_SOURCES}")
    matched = False
    for candidate in api_keys:  # compare with every key so timing does not reveal which one matched
        matched |= hmac.compare_digest(key.encode(), candidate.encode())
    if not matched:
        raise ApiError(401, f"invalid API key: it matches none of this server's keys; {KEY_SOURCES}")
    return key_owner(key)
