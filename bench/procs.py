"""Processes the benchmarks start on free loopback ports: services, the balancer, the naive app.

The same approach as ``tests/support/procs.py``: a free port from the kernel, ``/health/ready``
(or another path) polled with a deadline, SIGTERM then SIGKILL on the way out. Use ``Fleet`` as a
context manager so that every process started is stopped on every path. Each process writes its
output to ``bench/results/raw/logs/NAME.log`` (ignored by git); the tail is printed when a process
dies before it is ready.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import httpx

__all__ = ["ROOT", "Fleet", "Proc", "free_port", "lb", "naive", "service", "text_get", "wait_all_healthy"]

ROOT = Path(__file__).resolve().parents[1]
LOGS = ROOT / "bench" / "results" / "raw" / "logs"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def text_get(url: str, timeout: float = 10.0) -> str:
    return httpx.get(url, timeout=timeout).text


class Proc:
    """One subprocess serving HTTP on ``port``; ready when ``ready_path`` answers 200."""

    def __init__(self, name: str, cmd: Sequence[str], port: int, *, ready_path: str,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.cmd = list(cmd)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.ready_path = ready_path
        self.env = {**os.environ, "YOLO_OFFLINE": "1", **(env or {})}
        self.log = LOGS / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.admin_url: str | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT)

    def _tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Poll ``ready_path`` until 200, the process dies, or the deadline passes."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        delay = 0.05
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before it was "
                                   f"ready; log {self.log}:\n{self._tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + self.ready_path, timeout=2.0).status_code == 200:
                    return
            time.sleep(delay)  # polling an external process, with a deadline
            delay = min(delay * 1.5, 0.5)
        raise TimeoutError(f"{self.name} not ready within {timeout}s; log {self.log}")

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class Fleet:
    """Processes started together, ready together, and always stopped (in reverse order)."""

    def __init__(self, *procs: Proc) -> None:
        self.procs = list(procs)

    def __enter__(self) -> Fleet:
        try:
            for p in self.procs:
                p.start()
            for p in self.procs:
                p.wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        for p in reversed(self.procs):
            p.stop()


def service(name: str, *args: str, env: dict[str, str] | None = None) -> Proc:
    """``yoloserve serve ARGS`` with the result cache off (identical images would be free)."""
    port = free_port()
    cmd = [sys.executable, "-m", "service", "serve", "--port", str(port), *args]
    return Proc(name, cmd, port, ready_path="/health/ready",
                env={"YOLOSERVE_CACHE_ENABLED": "false", **(env or {})})


def lb(name: str, backends: Sequence[str], *args: str) -> Proc:
    """``yoloserve lb`` in front of ``backends``, slow start off so that the run sees full weights."""
    port, admin = free_port(), free_port()
    cmd = [sys.executable, "-m", "service", "lb", "--port", str(port), "--admin-port", str(admin),
           "--slow-start-window", "0", "--no-access-log", "--log-level", "warning",
           "--health-interval", "0.5", "--healthy-threshold", "1", *args]
    for b in backends:
        cmd += ["--backend", b]
    proc = Proc(name, cmd, port, ready_path="/health/ready")
    proc.admin_url = f"http://127.0.0.1:{admin}"
    return proc


def wait_all_healthy(balancer: Proc, timeout: float = 30.0) -> None:
    """Poll the balancer's ``GET /lb/status`` until every backend is healthy with full weight."""
    assert balancer.admin_url is not None
    deadline = time.monotonic() + timeout
    status: object = None
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            status = httpx.get(balancer.admin_url + "/lb/status", timeout=2.0).json()
            backends = status["backends"] if isinstance(status, dict) else []
            if backends and all(b["health"] == "healthy" and not b["slow_start"]
                                for b in backends):
                return
        time.sleep(0.2)  # polling an external process, with a deadline
    raise TimeoutError(f"{balancer.name}: backends not all healthy within {timeout}s: {status}")


def naive(name: str, model: Path, device: str | None = None) -> Proc:
    """The tutorial-style baseline under plain ``uvicorn`` (its defaults)."""
    port = free_port()
    env = {"NAIVE_MODEL": str(model)}
    if device:
        env["NAIVE_DEVICE"] = device
    cmd = [sys.executable, "-m", "uvicorn", "bench.baselines.naive_app:app",
           "--host", "127.0.0.1", "--port", str(port)]
    return Proc(name, cmd, port, ready_path="/docs", env=env)
