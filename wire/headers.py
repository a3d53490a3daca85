"""Header names shared by the service, the balancer and the client (lower case, as HTTP/1.1 and
ASGI carry them)."""

from __future__ import annotations

from typing import Final

__all__ = [
    "API_KEY",
    "AUTHORIZATION",
    "HOP_BY_HOP",
    "HOP_BY_HOP_BYTES",
    "REQUEST_ID",
    "REQUEST_TIMEOUT_MS",
    "RETRY_AFTER",
    "UPSTREAM",
]

REQUEST_ID: Final = "x-request-id"
"""Taken from the request or generated; echoed on the answer and in every log line."""
REQUEST_TIMEOUT_MS: Final = "x-request-timeout-ms"
"""Milliseconds the caller will still wait; the balancer forwards what is left of it."""
RETRY_AFTER: Final = "retry-after"
"""Seconds (an integer) to wait before retrying: on every 429 and 503."""
UPSTREAM: Final = "x-upstream"
"""Set by the balancer: the backend that answered."""
API_KEY: Final = "x-api-key"
AUTHORIZATION: Final = "authorization"

HOP_BY_HOP: Final = frozenset(
    {
        # RFC 9110 section 7.6.1, plus the older names proxies still meet
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
"""Headers that describe one connection and are never forwarded as they are."""
HOP_BY_HOP_BYTES: Final = frozenset(name.encode() for name in HOP_BY_HOP)
