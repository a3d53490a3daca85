"""Every error the load balancer raises, in one tree.

::

    LoadBalancerError
    ├── ConfigError                 misuse: bad backend URL or weight, unknown policy, bad file
    ├── AdminError                  an admin API call refused (carries status and code)
    │   ├── BackendNotFound         404: no backend with that id
    │   └── BackendExists           409: a backend with that URL is already registered
    ├── DiscoveryError              resolving a ``--discover`` name failed: the last good set is kept
    │   ├── NameNotFound            NXDOMAIN, or neither A nor AAAA records
    │   └── ResolverUnavailable     no nameserver answered in time (timeout, SERVFAIL, REFUSED, down)
    ├── RequestError                the client's request gets an answer from the balancer itself
    │   ├── BadRequest              400 invalid_request: not HTTP/1.x, or malformed
    │   ├── HeadersTooLarge         431 headers_too_large: request line and headers over the limit
    │   ├── PayloadTooLarge         413: body over the replay-buffer limit
    │   ├── RequestTimeout          408: the request was not received in time
    │   ├── Overloaded              503: the balancer's own in-flight limit, or shutting down
    │   ├── NoHealthyBackend        502: no backend could take it within its retries and deadline
    │   └── DeadlineExceeded        504: the caller's deadline passed before an answer started
    └── UpstreamError               one attempt at one backend failed before its answer started
        ├── ConnectFailed           retryable: refused, unreachable or connect timeout
        │   └── TlsFailed           retryable: the TLS handshake failed (a certificate that does
        │                           not verify, no common protocol, a client certificate refused)
        ├── PoolExhausted           retryable: no connection slot to that backend in time (ours)
        ├── UpstreamReset           retryable: closed or reset before the answer started
        │   └── StaleConnection     retryable on the same backend: an idle keep-alive connection
        │                           closed under us before any byte came back
        ├── UpstreamTimeout         retryable: the per-try timeout passed before the answer started
        ├── UpstreamOverloaded      retryable: 503 with Retry-After (load shedding, not a fault)
        ├── UpstreamProtocolError   not retryable: the backend did not speak HTTP/1.1
        └── ResponseAborted         not retryable: the answer broke after it started streaming

Foreign errors (``OSError``, ``ssl.SSLError``, ``httptools`` parser errors, ``aiohttp``,
``dnspython`` and pydantic validation errors) are mapped to these at the boundary where they
happen, raised ``from`` the original.
Statuses and codes of the answers come from the shared table in :mod:`wire.errors`.
"""

from __future__ import annotations

from typing import ClassVar

from wire import errors as codes
from wire.errors import ErrorCode

__all__ = [
    "AdminError",
    "BackendExists",
    "BackendNotFound",
    "BadRequest",
    "ConfigError",
    "ConnectFailed",
    "DeadlineExceeded",
    "DiscoveryError",
    "HeadersTooLarge",
    "LoadBalancerError",
    "NameNotFound",
    "NoHealthyBackend",
    "Overloaded",
    "PayloadTooLarge",
    "PoolExhausted",
    "RequestError",
    "RequestTimeout",
    "ResolverUnavailable",
    "ResponseAborted",
    "StaleConnection",
    "TlsFailed",
    "UpstreamError",
    "UpstreamOverloaded",
    "UpstreamProtocolError",
    "UpstreamReset",
    "UpstreamTimeout",
    "answer_of",
]


class LoadBalancerError(Exception):
    """Root of every error raised by the ``loadbalancer`` package."""


class ConfigError(LoadBalancerError):
    """Invalid configuration: a backend spec, a policy name, a settings file."""


class _Answered(LoadBalancerError):
    """An error the balancer answers itself: ``row`` (from the shared table) gives its status and
    code."""

    row: ClassVar[ErrorCode] = codes.INTERNAL_ERROR
    status: ClassVar[int] = row.status
    code: ClassVar[str] = row.code

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.status, cls.code = cls.row.status, cls.row.code


class AdminError(_Answered):
    """An admin API call that is refused."""

    row = codes.INVALID_REQUEST


class BackendNotFound(AdminError):
    row = codes.BACKEND_NOT_FOUND


class BackendExists(AdminError):
    row = codes.BACKEND_EXISTS


class DiscoveryError(LoadBalancerError):
    """One resolution of a discovered name failed; ``kind`` labels the failure in the metrics."""

    kind = "error"


class NameNotFound(DiscoveryError):
    kind = "not_found"


class ResolverUnavailable(DiscoveryError):
    kind = "unavailable"


class RequestError(_Answered):
    """A proxied request answered by the balancer itself."""

    retry_after: int | None = None


class BadRequest(RequestError):
    row = codes.INVALID_REQUEST


class HeadersTooLarge(RequestError):
    row = codes.HEADERS_TOO_LARGE


class PayloadTooLarge(RequestError):
    row = codes.PAYLOAD_TOO_LARGE


class RequestTimeout(RequestError):
    row = codes.REQUEST_TIMEOUT


class Overloaded(RequestError):
    row = codes.OVERLOADED
    retry_after = 1


class NoHealthyBackend(RequestError):
    row = codes.NO_HEALTHY_BACKEND


class DeadlineExceeded(RequestError):
    row = codes.DEADLINE_EXCEEDED


class UpstreamError(LoadBalancerError):
    """One attempt failed before its answer started. ``retryable``: worth a different backend;
    ``outlier``: counts towards ejecting that backend."""

    retryable = True
    outlier = True
    kind = "error"


class ConnectFailed(UpstreamError):
    kind = "connect"


class TlsFailed(ConnectFailed):
    kind = "tls"


class PoolExhausted(UpstreamError):
    outlier = False
    kind = "pool_exhausted"


class UpstreamReset(UpstreamError):
    kind = "reset"


class StaleConnection(UpstreamReset):
    outlier = False
    kind = "stale"


class UpstreamTimeout(UpstreamError):
    kind = "timeout"


class UpstreamOverloaded(UpstreamError):
    outlier = False
    kind = "overloaded"

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamProtocolError(UpstreamError):
    retryable = False
    kind = "protocol"


class ResponseAborted(UpstreamError):
    retryable = False
    kind = "aborted"


def answer_of(error: RequestError | UpstreamError) -> tuple[int, str]:
    """The status and code a client is answered with for ``error``: a request error's own, else
    502 bad_gateway (a try that failed in a way no other backend would mend)."""
    if isinstance(error, RequestError):
        return error.status, error.code
    return codes.BAD_GATEWAY.status, codes.BAD_GATEWAY.code
