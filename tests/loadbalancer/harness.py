"""Real processes on loopback for the load balancer's tests: fake backends (uvicorn running
``backend_app``) and the balancer itself (``python -m loadbalancer``), plus a load generator.
The processes and the waits (polls with a deadline; nothing sleeps as synchronisation) are
``harness.procs``'s."""

from __future__ import annotations

import asyncio
import os
import ssl
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from harness.procs import Balancer, FakeBackend, start_all


class BackendProc(FakeBackend):
    """A fake backend whose errors go to the test's output; stopping it kills it (a fake: no need
    to wait for its graceful shutdown)."""

    def __init__(self, name: str, *, mode: str = "ok", delay_ms: float = 0.0) -> None:
        super().__init__(name, mode=mode, delay_ms=delay_ms, stderr=None)

    def stop(self, timeout: float | None = None) -> int | None:
        self.kill()
        return self.proc.returncode if self.proc is not None else None


def ready_over_tls(backend: BackendProc, trust: ssl.SSLContext) -> bool:
    """An HTTPS backend's readiness (``ready_path`` answers 200), its certificate verified with
    ``trust``."""
    backend.check_running()
    try:
        return httpx.get(backend.url + backend.ready_path, timeout=2.0, verify=trust).status_code == 200
    except httpx.HTTPError:
        return False


def start_backends(backends: Iterable[BackendProc]) -> list[BackendProc]:
    """Start them all, then wait for each: they boot in parallel."""
    return start_all(backends)


class LBProc(Balancer):
    """``python -m loadbalancer`` on free ports, without this environment's ``YOLOSERVE_`` and
    ``BACKEND_`` variables; its log goes to a temp file (``logs()``), removed by ``stop``."""

    def __init__(
        self,
        backends: Iterable[str] = (),
        *args: str,
        env: dict[str, str] | None = None,
        token: str | None = None,
    ) -> None:
        fd, log = tempfile.mkstemp(prefix="lb-", suffix=".log")
        os.close(fd)
        self.log_file = Path(log)
        super().__init__(
            "lb",
            backends,
            *args,
            token=token,
            env={"PYTHONUNBUFFERED": "1", **(env or {})},
            drop_env=("YOLOSERVE_", "BACKEND_"),
            stderr=self.log_file,
            stop_timeout=15.0,
        )

    def backend(self, backend_id: str) -> dict[str, Any]:
        found = [b for b in self.status()["backends"] if b["id"] == backend_id]
        assert found, f"{backend_id} not in the status"
        backend: dict[str, Any] = found[0]
        return backend

    def admin(self, method: str, path: str, json: Any = None) -> httpx.Response:
        return httpx.request(method, self.admin_url + path, json=json, headers=self.headers, timeout=5.0)

    def set_backends(
        self, backends: Iterable[BackendProc | str], weights: dict[str, int] | None = None
    ) -> None:
        """Replaces the whole backend set through the admin API."""
        for b in self.status()["backends"]:
            assert self.admin("DELETE", f"/lb/backends/{b['id']}").status_code == 200
        for b in backends:
            url = b if isinstance(b, str) else b.url
            weight = (weights or {}).get(url, 1)
            response = self.admin("POST", "/lb/backends", {"url": url, "weight": weight})
            assert response.status_code == 201, response.text

    def logs(self) -> str:
        return self.log_file.read_text(errors="replace")

    def stop(self, timeout: float | None = None) -> int | None:
        code = super().stop(timeout)
        self.log_file.unlink(missing_ok=True)
        return code


@dataclass
class Result:
    started: float
    ended: float
    status: int
    upstream: str | None
    body: bytes = b""


async def load(
    url: str,
    *,
    total: int | None = None,
    duration: float | None = None,
    concurrency: int = 16,
    body: bytes = b"x" * 256,
    headers: dict[str, str] | None = None,
    stop: asyncio.Event | None = None,
    into: list[Result] | None = None,
    tls: ssl.SSLContext | None = None,
) -> list[Result]:
    """POSTs to ``url`` from ``concurrency`` workers, ``total`` requests, for ``duration`` or until
    ``stop`` is set; each result is appended to ``into`` (read while it runs) as it comes. An
    ``https://`` URL is verified with ``tls`` (the system's store without it)."""
    assert total is not None or duration is not None or stop is not None
    results: list[Result] = [] if into is None else into
    stop_at = time.monotonic() + duration if duration is not None else float("inf")
    budget = [total if total is not None else 1 << 60]
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=concurrency, ssl=tls or True)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            while budget[0] > 0 and time.monotonic() < stop_at and not (stop and stop.is_set()):
                budget[0] -= 1
                started = time.monotonic()
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        data = await response.read()
                        status, upstream = response.status, response.headers.get("X-Upstream")
                except aiohttp.ClientError as exc:
                    data, status, upstream = repr(exc).encode(), -1, None
                results.append(Result(started, time.monotonic(), status, upstream, data))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def shares(results: Iterable[Result]) -> dict[str | None, float]:
    counts: dict[str | None, int] = {}
    for r in results:
        counts[r.upstream] = counts.get(r.upstream, 0) + 1
    total = sum(counts.values()) or 1
    return {k: v / total for k, v in counts.items()}
