"""Processes on free loopback ports, for the tests and the benchmarks alike: the service, the
balancer, fake backends and Redis, and the waits around them.

A port comes free from the kernel (``free_port``). Every wait polls with a deadline
(``wait_until``, ``await_until``) and never sleeps as synchronisation. A ``Proc`` is one
subprocess on a port: ``start`` (again on the same port after a kill), ``wait_ready`` or
``wait_ready_async`` (until its readiness check passes, failing at once if it exits), ``kill``
(SIGKILL by default) and ``stop`` (SIGTERM, then SIGKILL after a grace period). ``start_all`` and
``stop_all`` start a fleet in parallel and stop it all at once; ``Fleet`` does both as a context
manager, so that every process started is stopped on every path. A process's output may go to a
file (the benchmarks' to ``bench/results/raw/logs/NAME.log``, ``LOGS``, ignored by git); a log's
tail is in the error when a process dies before it is ready.

Test support, run from a checkout: neither this package nor ``bench`` ships in the wheel.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from signal import SIGKILL, SIGTERM
from types import TracebackType
from typing import IO, Any, Self, TypeAlias, TypeVar

import httpx

__all__ = [
    "BACKEND_APP",
    "LOGS",
    "ROOT",
    "Balancer",
    "FakeBackend",
    "Fleet",
    "GrpcBackend",
    "Proc",
    "RedisServer",
    "Service",
    "WaitTimeout",
    "await_until",
    "free_port",
    "start_all",
    "stop_all",
    "text_get",
    "wait_all_healthy",
    "wait_until",
]

ROOT = Path(__file__).resolve().parents[1]
LOGS = ROOT / "bench" / "results" / "raw" / "logs"
BACKEND_APP = "harness.backend_app:app"
# Where a process's output goes: a file (truncated), subprocess.DEVNULL (or STDOUT for stderr:
# with stdout), or None: this process's own.
Output: TypeAlias = Path | int | None


def free_port() -> int:
    """A port free on 127.0.0.1 now: the kernel's pick, closed again for the caller to use."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def text_get(url: str, timeout: float = 10.0) -> str:
    return httpx.get(url, timeout=timeout).text


# -- waiting -------------------------------------------------------------------------------------


class WaitTimeout(TimeoutError, AssertionError):
    """A wait's deadline passed: a ``TimeoutError`` to the benchmarks, a failed check to tests."""


def wait_until(predicate: Callable[[], object], timeout: float, what: str, *, every: float = 0.05,
               max_every: float | None = None) -> None:
    """Call ``predicate`` every ``every`` seconds until it is true (the interval growing by half
    each time up to ``max_every``, when given); ``WaitTimeout`` after ``timeout`` seconds. An
    exception from ``predicate`` ends the wait."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(every)  # polling another process, with a deadline
        if max_every is not None:
            every = min(every * 1.5, max_every)
    raise WaitTimeout(f"timed out after {timeout}s waiting for {what}")


async def await_until(predicate: Callable[[], Awaitable[object]], within: float, what: str, *,
                      every: float = 0.05) -> float:
    """``wait_until`` for an async predicate, without blocking the event loop; returns the
    ``time.monotonic()`` at which the predicate was true."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await predicate():
            return time.monotonic()
        await asyncio.sleep(every)  # polling another process, with a deadline
    raise WaitTimeout(f"timed out after {within}s waiting for {what}")


# -- processes -----------------------------------------------------------------------------------


class Proc:
    """One subprocess serving HTTP on ``port`` of 127.0.0.1, run from the repository's root (or
    ``cwd``).

    Its environment is this process's without the variables whose names start with ``drop_env``,
    plus ``YOLO_OFFLINE=1`` and ``env``. It is ready when ``ready()`` is true: by default when
    ``GET ready_path`` answers 200. ``wait_ready`` checks every 50 ms (the interval growing to
    ``poll_max``; None: staying at 50 ms), ``ready_timeout`` seconds at most unless told otherwise;
    ``stop`` SIGKILLs it when it has not exited ``stop_timeout`` seconds after SIGTERM.
    """

    def __init__(self, name: str, cmd: Sequence[str], port: int, *,
                 ready_path: str = "/health/ready", env: dict[str, str] | None = None,
                 drop_env: tuple[str, ...] = (), stdout: Output = subprocess.DEVNULL,
                 stderr: Output = subprocess.STDOUT, ready_timeout: float = 120.0,
                 poll_max: float | None = 0.5, stop_timeout: float = 30.0,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.cmd = list(cmd)
        self.cwd = cwd or ROOT
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.ready_path = ready_path
        kept = {k: v for k, v in os.environ.items() if not k.startswith(drop_env)}
        self.env = {**kept, "YOLO_OFFLINE": "1", **(env or {})}
        self.stdout, self.stderr = stdout, stderr
        self.ready_timeout, self.poll_max, self.stop_timeout = ready_timeout, poll_max, stop_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    @property
    def log(self) -> Path | None:
        """The file its output goes to, if any."""
        return next((out for out in (self.stdout, self.stderr) if isinstance(out, Path)), None)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, wait: bool = False) -> Self:
        """Start the command (again after a kill: on the same port); wait until ready if told."""
        with contextlib.ExitStack() as files:

            def target(out: Output) -> IO[bytes] | int | None:
                if not isinstance(out, Path):
                    return out
                out.parent.mkdir(parents=True, exist_ok=True)
                return files.enter_context(out.open("wb"))

            # a session of its own: stopping it reaches its children too (gunicorn's workers)
            self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, env=self.env, stdout=target(self.stdout),
                                         stderr=target(self.stderr), start_new_session=True)
        return self.wait_ready() if wait else self

    def tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of its log ("" without one)."""
        log = self.log
        try:
            return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log else ""
        except OSError:
            return ""

    def check_running(self) -> None:
        """Raise if the process has exited: it will never be ready then."""
        assert self.proc is not None, f"{self.name} was never started"
        if self.proc.poll() is not None:
            tail = self.tail()
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before it was ready"
                               + (f"; log {self.log}:\n{tail}" if tail else ""))

    def ready(self) -> bool:
        """``GET ready_path`` answers 200; raises once the process has exited."""
        self.check_running()
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(self.url + self.ready_path, timeout=2.0).status_code == 200
        return False

    def _waiting_for(self) -> str:
        return f"{self.name} to be ready" + (f" (log {self.log})" if self.log else "")

    def wait_ready(self, timeout: float | None = None) -> Self:
        """Poll ``ready()`` until true; fails at once if the process exits."""
        timeout = self.ready_timeout if timeout is None else timeout
        wait_until(self.ready, timeout, self._waiting_for(), max_every=self.poll_max)
        return self

    async def wait_ready_async(self, within: float | None = None) -> float:
        """``wait_ready`` without blocking the event loop (each check runs in a thread, every
        20 ms); returns the ``time.monotonic()`` at which it was ready."""
        within = self.ready_timeout if within is None else within
        return await await_until(lambda: asyncio.to_thread(self.ready), within, self._waiting_for(),
                                 every=0.02)

    def kill(self, sig: int = SIGKILL) -> None:
        """Send ``sig`` (SIGKILL: no drain, connections reset, the port closed at once) if it
        runs, and wait for it to exit."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        if sig == SIGKILL:
            self._kill_group()

    def signal(self, sig: int) -> None:
        assert self.proc is not None, f"{self.name} was never started"
        self.proc.send_signal(sig)

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds (``stop_timeout``
        by default); returns its exit status (None if it was never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(SIGTERM)
            try:
                self.proc.wait(self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._kill_group()  # children it left behind (a worker stuck in its shutdown)
        return self.proc.returncode

    def _kill_group(self) -> None:
        """SIGKILL whatever is left of its process group: the host is gone, workers and all."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, SIGKILL)

    def __enter__(self) -> Self:
        start_all([self])
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


P = TypeVar("P", bound=Proc)


def start_all(procs: Iterable[P], timeout: float | None = None) -> list[P]:
    """Start them all, then wait for each to be ready (they start up in parallel); if one fails,
    stop them all and raise."""
    started: list[P] = []
    try:
        for proc in procs:
            started.append(proc.start(wait=False))
        for proc in started:
            proc.wait_ready(timeout)
    except BaseException:
        stop_all(started)
        raise
    return started


def stop_all(procs: Iterable[Proc]) -> None:
    """SIGTERM to them all at once (they drain in parallel), then ``stop`` each, the last first."""
    procs = list(procs)
    for proc in procs:
        if proc.running():
            proc.signal(SIGTERM)
    for proc in reversed(procs):
        proc.stop()


class Fleet:
    """Processes started together, ready together, and always stopped together."""

    def __init__(self, *procs: Proc, timeout: float | None = None) -> None:
        self.procs = list(procs)
        self.timeout = timeout

    def __enter__(self) -> Fleet:
        start_all(self.procs, self.timeout)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        stop_all(self.procs)


# -- the project's processes ---------------------------------------------------------------------


class Service(Proc):
    """``yoloserve serve ARGS`` on ``port`` (a free one by default).

    ``checkout`` (or, unset, the variable ``YOLOSERVE_BENCH_CHECKOUT``) runs it from another
    checkout of the project, to measure an older commit against this one: its folder is the working
    directory and first on ``PYTHONPATH``, so ``-m yoloserve`` imports that checkout's packages
    (this interpreter and its installed dependencies are the same). Relative paths in ``args``
    are then relative to that checkout. Unset: this repository, as before.
    """

    def __init__(self, name: str, *args: str, port: int | None = None,
                 env: dict[str, str] | None = None, stdout: Output = subprocess.DEVNULL,
                 ready_timeout: float = 120.0, checkout: Path | None = None) -> None:
        port = port or free_port()
        cmd = [sys.executable, "-m", "yoloserve", "serve", "--port", str(port), *args]
        from_env = os.environ.get("YOLOSERVE_BENCH_CHECKOUT")
        checkout = checkout or (Path(from_env) if from_env else None)
        if checkout is not None:
            checkout = checkout.resolve()
            path = os.pathsep.join(p for p in (str(checkout), os.environ.get("PYTHONPATH")) if p)
            env = {**(env or {}), "PYTHONPATH": path}
        self.checkout = checkout
        super().__init__(name, cmd, port, env=env, stdout=stdout, ready_timeout=ready_timeout,
                         cwd=checkout)


class Balancer(Proc):
    """The balancer (``python -m loadbalancer``; ``cli=("yoloserve", "lb")``: ``yoloserve lb``) on
    two free ports, in front of ``backends``, with ``args``; ``token`` guards its admin API.

    Ready when its ``GET /lb/status`` shows every backend (or ``healthy`` of them) healthy.
    """

    def __init__(self, name: str, backends: Iterable[str] = (), *args: str,
                 cli: Sequence[str] = ("loadbalancer",), token: str | None = None,
                 env: dict[str, str] | None = None, drop_env: tuple[str, ...] = (),
                 stdout: Output = subprocess.DEVNULL, stderr: Output = subprocess.STDOUT,
                 ready_timeout: float = 20.0, poll_max: float | None = None,
                 stop_timeout: float = 30.0) -> None:
        port, self.admin_port = free_port(), free_port()
        cmd = [sys.executable, "-m", *cli, "--port", str(port), "--admin-port", str(self.admin_port),
               *(flag for b in backends for flag in ("--backend", b)), *args]
        self.token = token
        env = {**(env or {}), **({"YOLOSERVE_LB_ADMIN_TOKEN": token} if token else {})}
        super().__init__(name, cmd, port, env=env, drop_env=drop_env, stdout=stdout, stderr=stderr,
                         ready_timeout=ready_timeout, poll_max=poll_max, stop_timeout=stop_timeout)

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def headers(self) -> dict[str, str]:
        """What the admin API wants to see (the token, if any)."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def status(self, timeout: float = 1.0) -> dict[str, Any]:
        """``GET /lb/status`` of the admin API."""
        response = httpx.get(self.admin_url + "/lb/status", timeout=timeout, headers=self.headers)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def ready(self, healthy: int | None = None) -> bool:
        self.check_running()
        try:
            backends = self.status()["backends"]
        except httpx.HTTPError:
            return False
        wanted = len(backends) if healthy is None else healthy
        return bool(sum(b["health"] == "healthy" for b in backends) >= wanted)

    def wait_ready(self, timeout: float | None = None, healthy: int | None = None) -> Self:
        timeout = self.ready_timeout if timeout is None else timeout
        wait_until(lambda: self.ready(healthy), timeout, self._waiting_for(), max_every=self.poll_max)
        return self


class FakeBackend(Proc):
    """``harness/backend_app.py`` under uvicorn (uvloop, httptools): a fake detect service
    that answers as ``mode`` says after ``delay_ms``; ready when ``/health/live`` answers."""

    def __init__(self, name: str, *, mode: str = "ok", delay_ms: float = 0.0,
                 stderr: Output = subprocess.STDOUT, ready_timeout: float = 20.0,
                 stop_timeout: float = 30.0) -> None:
        port = free_port()
        cmd = [sys.executable, "-m", "uvicorn", BACKEND_APP, "--host", "127.0.0.1", "--port", str(port),
               "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
               "--timeout-graceful-shutdown", "1"]
        env = {"BACKEND_NAME": name, "BACKEND_MODE": mode, "BACKEND_DELAY_MS": str(delay_ms),
               "PYTHONUNBUFFERED": "1"}
        super().__init__(name, cmd, port, ready_path="/health/live", env=env,
                         drop_env=("YOLOSERVE_", "BACKEND_"), stderr=stderr,
                         ready_timeout=ready_timeout, poll_max=None, stop_timeout=stop_timeout)

    @property
    def id(self) -> str:
        """Its name in the balancer's status and ``X-Upstream``."""
        return f"127.0.0.1:{self.port}"


class GrpcBackend(Proc):
    """``harness/grpc_backend.py``: a stand-in gRPC backend (``ModelInfer`` and health), ready
    when its health check answers SERVING; ``id`` is its name in the balancer's status."""

    def __init__(self, name: str, *, delay_ms: float = 0.0, stop_timeout: float = 15.0) -> None:
        port = free_port()
        cmd = [sys.executable, "-m", "harness.grpc_backend", "--port", str(port), "--name", name,
               "--delay-ms", str(delay_ms)]
        super().__init__(name, cmd, port, env={"PYTHONUNBUFFERED": "1"}, drop_env=("YOLOSERVE_",),
                         ready_timeout=30.0, poll_max=None, stop_timeout=stop_timeout)

    @property
    def id(self) -> str:
        return f"127.0.0.1:{self.port}"

    def ready(self) -> bool:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        self.check_running()
        with grpc.insecure_channel(self.id) as channel:
            try:
                answer = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1.0)
            except grpc.RpcError:
                return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


class RedisServer(Proc):
    """``redis-server`` on ``port`` of 127.0.0.1 (a free one by default), nothing persisted, so that
    a restart comes back empty; ready when it answers ``PING``. ``redis_url`` is its address.
    ``RedisServer.binary()`` is None where no ``redis-server`` is installed."""

    def __init__(self, name: str = "redis", *, port: int | None = None,
                 stdout: Output = subprocess.DEVNULL) -> None:
        port = port or free_port()
        binary = self.binary() or "redis-server"
        cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        super().__init__(name, cmd, port, stdout=stdout, ready_timeout=20.0, poll_max=None,
                         stop_timeout=10.0)
        self.redis_url = f"redis://127.0.0.1:{port}/0"

    @staticmethod
    def binary() -> str | None:
        return shutil.which("redis-server") or next(
            (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if os.path.exists(p)), None)

    def ready(self) -> bool:
        self.check_running()
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


def wait_all_healthy(balancer: Balancer, timeout: float = 30.0) -> None:
    """Poll the balancer's ``GET /lb/status`` until every backend is healthy with full weight."""

    def settled() -> bool:
        try:
            backends = balancer.status(timeout=2.0)["backends"]
        except (httpx.HTTPError, ValueError):
            return False
        return bool(backends) and all(b["health"] == "healthy" and not b["slow_start"]
                                      for b in backends)

    wait_until(settled, timeout, f"every backend of {balancer.name} healthy at full weight", every=0.2)
