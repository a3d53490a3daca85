"""The processes of the multi-host ground, each inside its host's namespace: ``yoloserve serve``
(``NsService``), ``yoloserve lb`` (``NsBalancer``) and the delay proxy (``DelayProxy``), built on
``harness.procs``'s ``Proc`` with ``ip netns exec NS`` before the command and the host's address in
the URL. Their output goes to ``bench/results/raw/logs/multihost/`` (ignored by git)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, Self

import httpx

from harness.multihost.netns import Host
from harness.procs import LOGS, Balancer, Proc, Service

__all__ = [
    "HOSTS",
    "LB",
    "LOG_DIR",
    "SERVICE_HOSTS",
    "START_TIMEOUT",
    "DelayProxy",
    "NsBalancer",
    "NsService",
]

LB = Host("lb", "198.18.0.2")
HOSTS = (LB, Host("h1", "198.18.0.11"), Host("h2", "198.18.0.12"), Host("h3", "198.18.0.13"))
SERVICE_HOSTS = ("h1", "h2", "h3")
SERVICE_PORT = 8000
PROXY_PORT = 8001  # the delay proxy, beside the service
LB_PORTS = (8080, 8081)  # the balancer every fault goes through: proxy, admin
# Two cores for everything: one core, batches of 4 and no result cache in each service.
SERVE_ARGS = ("--max-batch-size", "4", "--log-format", "text")
SERVE_ENV = {"YOLOSERVE_CORES": "1", "YOLOSERVE_CACHE_ENABLED": "false", "YOLOSERVE_ACCESS_LOG": "false"}
START_TIMEOUT = 300.0  # loading and warming the model up on a busy 2-core machine
LOG_DIR = LOGS / "multihost"


class NsService(Service):
    """``yoloserve serve`` inside host ``host``'s namespace, on its address; each start logs to
    a file of its own (``LOG_DIR/NAME-N.log``)."""

    def __init__(self, host: Host) -> None:
        super().__init__(host.name, "--host", host.address, *SERVE_ARGS, port=SERVICE_PORT,
                         env=SERVE_ENV, stdout=LOG_DIR / f"{host.name}-1.log",
                         ready_timeout=START_TIMEOUT)
        self.host = host
        self.cmd = [*host.exec_prefix, *self.cmd]
        self.url = f"http://{host.address}:{SERVICE_PORT}"
        self.env = {k: v for k, v in self.env.items()
                    if not k.startswith("YOLOSERVE_") or k in SERVE_ENV}
        self.starts = 0

    @property
    def id(self) -> str:
        """Its name in the balancer's status."""
        return f"{self.host.address}:{SERVICE_PORT}"

    def start(self, wait: bool = False) -> Self:
        self.starts += 1
        self.stdout = LOG_DIR / f"{self.name}-{self.starts}.log"
        return super().start(wait)


class NsBalancer(Balancer):
    """``yoloserve lb`` in the balancer's namespace, proxy and admin API on its address."""

    def __init__(self, name: str, backends: Iterable[str], *args: str,
                 ports: tuple[int, int] = LB_PORTS) -> None:
        backends = list(backends)
        super().__init__(name, backends, cli=("yoloserve", "lb"), stdout=LOG_DIR / f"{name}.log",
                         drop_env=("YOLOSERVE_",), ready_timeout=60.0, poll_max=0.5)
        self.port, self.admin_port = ports
        flags = [flag for b in backends for flag in ("--backend", b)]
        self.cmd = [*LB.exec_prefix, sys.executable, "-m", "yoloserve", "lb",
                    "--host", LB.address, "--port", str(self.port),
                    "--admin-host", LB.address, "--admin-port", str(self.admin_port), *flags, *args]
        self.url = f"http://{LB.address}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://{LB.address}:{self.admin_port}"

    async def backends(self) -> dict[str, dict[str, Any]]:
        """``GET /lb/status``'s backends by id, without blocking the event loop."""
        async with httpx.AsyncClient(timeout=2.0, headers=self.headers) as http:
            response = await http.get(self.admin_url + "/lb/status")
        response.raise_for_status()
        return {b["id"]: b for b in response.json()["backends"]}

    async def patch(self, backend_id: str, change: dict[str, Any]) -> dict[str, Any]:
        """``PATCH /lb/backends/{id}`` (``{"drain": true}``, ``{"weight": 3}``)."""
        async with httpx.AsyncClient(timeout=5.0, headers=self.headers) as http:
            response = await http.patch(f"{self.admin_url}/lb/backends/{backend_id}", json=change)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result


class DelayProxy(Proc):
    """``harness/multihost/delayproxy.py`` in ``host``'s namespace: its service at ``PROXY_PORT``,
    ``delay_ms`` later per round trip (half each way)."""

    def __init__(self, host: Host, delay_ms: float) -> None:
        cmd = [*host.exec_prefix, sys.executable, "-m", "harness.multihost.delayproxy",
               "--listen", f"{host.address}:{PROXY_PORT}",
               "--target", f"{host.address}:{SERVICE_PORT}", "--delay-ms", str(delay_ms / 2)]
        super().__init__(f"delay-{host.name}", cmd, PROXY_PORT, ready_path="/health/live",
                         stdout=LOG_DIR / f"delay-{host.name}.log", ready_timeout=30.0,
                         stop_timeout=10.0)
        self.url = f"http://{host.address}:{PROXY_PORT}"

    @property
    def id(self) -> str:
        return self.url.removeprefix("http://")
