"""One call to the service: its tries, their headers and deadline, and its budget bookkeeping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from clients._retry import RetryPolicy, Try, parse_retry_after
from clients.errors import (
    DeadlineExceeded,
    ProtocolError,
    error_from_response,
    error_from_transport,
)
from wire.headers import REQUEST_ID, REQUEST_TIMEOUT_MS, RETRY_AFTER
from wire.ids import new_request_id

__all__ = ["ATTEMPT_HEADER", "REQUEST_ID_HEADER", "TIMEOUT_HEADER", "RequestSpec", "Sender",
           "parse_answer"]

REQUEST_ID_HEADER = REQUEST_ID
ATTEMPT_HEADER = "x-attempt"
TIMEOUT_HEADER = REQUEST_TIMEOUT_MS

FileField = tuple[str, tuple[str, bytes, str]]
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """What to send; the request itself is built anew for each try."""

    method: str
    path: str
    files: Sequence[FileField] = ()
    data: Mapping[str, str] = field(default_factory=dict)


class Sender:
    """Sends a :class:`RequestSpec` with retries; answers only with a 2xx response or raises."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        policy: RetryPolicy,
        *,
        connect_timeout: float,
        attempt_timeout: float | None,
    ) -> None:
        self._http = http
        self._policy = policy
        self._connect_timeout = connect_timeout
        self._attempt_timeout = attempt_timeout

    async def send(self, spec: RequestSpec, *, deadline_s: float) -> httpx.Response:
        """Send ``spec``, retrying what may be retried, all within ``deadline_s`` seconds."""
        return await self._policy.run(new_request_id(), deadline_s,
                                      lambda attempt: self._send_once(spec, attempt))

    async def _send_once(self, spec: RequestSpec, attempt: Try) -> httpx.Response:
        remaining, request_id = attempt.remaining, attempt.request_id
        limit = remaining
        if self._attempt_timeout is not None:
            limit = min(remaining, self._attempt_timeout)
        headers = {
            REQUEST_ID_HEADER: request_id,
            ATTEMPT_HEADER: str(attempt.number),
            TIMEOUT_HEADER: str(max(1, int(limit * 1000))),
        }
        request = self._http.build_request(
            spec.method,
            spec.path,
            headers=headers,
            files=list(spec.files) or None,
            data=dict(spec.data) or None,
            timeout=httpx.Timeout(limit, connect=min(self._connect_timeout, limit)),
        )
        try:
            async with asyncio.timeout(limit):
                response = await self._http.send(request)
        except httpx.HTTPError as exc:
            raise error_from_transport(exc, request_id=request_id) from exc
        except TimeoutError as exc:
            raise DeadlineExceeded(
                f"no answer within {limit:.3f}s",
                code="timeout" if limit < remaining else "deadline_exceeded",
                request_id=request_id,
                retryable=limit < remaining,
            ) from exc
        if response.is_success:
            return response
        retry_after = parse_retry_after(response.headers.get(RETRY_AFTER), now=time.time())
        raise error_from_response(response, request_id=request_id, retry_after=retry_after)


def parse_answer(model: type[M], response: httpx.Response) -> M:
    """A 2xx answer as ``model``, or a :class:`ProtocolError` naming what was wrong."""
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise ProtocolError(
            f"answer is not a valid {model.__name__}: {exc.error_count()} error(s), first: "
            f"{exc.errors()[0]['msg']}",
            status=response.status_code,
            request_id=response.headers.get("x-request-id"),
        ) from exc
