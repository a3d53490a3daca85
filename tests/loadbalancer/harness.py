"""Real processes on loopback for the load balancer's tests: fake backends (uvicorn running
``backend_app``) and the balancer itself (``python -m loadbalancer``), plus a load generator.
Everything waits by polling with a deadline; nothing sleeps as synchronisation."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.loadbalancer.backend_app:app"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def await_until(predicate: Callable[[], Any], within: float, what: str, every: float = 0.05) -> None:
    """Polls an async predicate with a deadline."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {within}s waiting for {what}")


def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("YOLOSERVE_", "BACKEND_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def _get(url: str, timeout: float = 1.0, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.get(url, timeout=timeout, headers=headers)


@dataclass
class BackendProc:
    name: str
    port: int = field(default_factory=free_port)
    mode: str = "ok"
    delay_ms: float = 0.0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def id(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> BackendProc:
        env = _clean_env(
            {
                "BACKEND_NAME": self.name,
                "BACKEND_MODE": self.mode,
                "BACKEND_DELAY_MS": str(self.delay_ms),
            }
        )
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            APP,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
            "--timeout-graceful-shutdown",
            "1",
        ]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        return self

    def wait_ready(self, timeout: float = 20.0) -> BackendProc:
        def alive() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"backend {self.name} exited with {self.proc.returncode}")
            try:
                return _get(self.url + "/health/live", 0.5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(alive, timeout, f"backend {self.name} to start")
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)

    def stop(self) -> None:
        self.kill(signal.SIGKILL)  # a fake: no need to wait for its graceful shutdown


def start_backends(backends: Iterable[BackendProc]) -> list[BackendProc]:
    started = [b.start() for b in backends]  # start all, then wait: they boot in parallel
    return [b.wait_ready() for b in started]


class LBProc:
    """``python -m loadbalancer`` on free ports; logs go to a temp file."""

    def __init__(
        self,
        backends: Iterable[str] = (),
        *args: str,
        env: dict[str, str] | None = None,
        token: str | None = None,
    ) -> None:
        self.port = free_port()
        self.admin_port = free_port()
        self.args = [a for b in backends for a in ("--backend", b)] + list(args)
        self.env = dict(env or {})
        self.token = token
        if token:
            self.env["YOLOSERVE_LB_ADMIN_TOKEN"] = token
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tempfile.NamedTemporaryFile(prefix="lb-", suffix=".log", delete=False)  # noqa: SIM115

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def start(self, *, port_flags: bool = True) -> LBProc:
        flags = ["--port", str(self.port), "--admin-port", str(self.admin_port)]
        cmd = [sys.executable, "-m", "loadbalancer", *(flags if port_flags else []), *self.args]
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=_clean_env(self.env), stdout=subprocess.DEVNULL, stderr=self.log
        )
        return self

    def wait_ready(self, timeout: float = 20.0, healthy: int | None = None) -> LBProc:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"lb exited {self.proc.returncode}: {self.logs()[-2000:]}")
            try:
                status = self.status()
            except httpx.HTTPError:
                return False
            wanted = len(status["backends"]) if healthy is None else healthy
            return bool(sum(b["health"] == "healthy" for b in status["backends"]) >= wanted)

        wait_until(ready, timeout, "the load balancer to be ready")
        return self

    def status(self) -> dict[str, Any]:
        response = _get(self.admin_url + "/lb/status", 1.0, self.headers)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

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
        return Path(self.log.name).read_text(errors="replace")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> int | None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)
        return self.proc.returncode if self.proc is not None else None


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
) -> list[Result]:
    """POSTs to ``url`` from ``concurrency`` workers, ``total`` requests or for ``duration``."""
    assert total is not None or duration is not None
    results: list[Result] = []
    stop_at = time.monotonic() + duration if duration is not None else float("inf")
    budget = [total if total is not None else 1 << 60]
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            while budget[0] > 0 and time.monotonic() < stop_at:
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
