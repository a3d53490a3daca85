"""Security properties: loopback defaults, the admin token, constant-time key checks, bounded
request heads on the service and the balancer, the non-root image, and SECURITY.md in step with
the code's limits (every limit documented with its real default)."""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from harness.procs import free_port
from loadbalancer.settings import LBSettings
from service.settings import Settings
from tests.loadbalancer.harness import LBProc
from tests.reliability.rawhttp import request
from tests.service.conftest import app_client, jpeg
from tests.support.procs import ROOT, ServiceProcess

SECURITY = ROOT / "SECURITY.md"
# every limit the service or the balancer enforces on what a client sends
SERVICE_LIMITS = ["max_body_bytes", "max_pixels", "min_side", "max_side", "max_batch_items",
                  "max_parts", "max_header_bytes", "max_queue", "rate_limit_rps", "drain_timeout_s"]
LB_LIMITS = ["max_body_bytes", "max_header_bytes", "max_headers", "max_inflight",
             "max_client_connections", "client_request_timeout", "client_keepalive_timeout",
             "max_request_timeout"]


@pytest.fixture(scope="module")
def lb_with_token() -> Iterator[LBProc]:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there: the balancer still starts
    lb = LBProc([dead], token="s3cret-token")
    try:
        lb.start().wait_ready(healthy=0, timeout=60)
        yield lb
    finally:
        lb.stop()


def test_defaults_listen_on_loopback_only() -> None:
    assert Settings().host == "127.0.0.1"
    lb = LBSettings()
    assert lb.host == "127.0.0.1" and lb.admin_host == "127.0.0.1" and lb.admin_token is None


def _connections(proc: psutil.Process) -> list[Any]:
    """The process's inet sockets: ``net_connections`` from psutil 6, ``connections`` before it
    (the interop clients' dependencies hold psutil below 6)."""
    listing = getattr(proc, "net_connections", None) or proc.connections
    return list(listing("inet"))


@pytest.mark.slow
def test_balancer_sockets_are_loopback_and_admin_needs_the_token(lb_with_token: LBProc) -> None:
    import httpx

    assert lb_with_token.proc is not None
    listening = [c.laddr for c in _connections(psutil.Process(lb_with_token.proc.pid))
                 if c.status == psutil.CONN_LISTEN]
    assert {a.port for a in listening} >= {lb_with_token.port, lb_with_token.admin_port}
    assert {a.ip for a in listening} == {"127.0.0.1"}
    url = lb_with_token.admin_url + "/lb/status"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
        r = httpx.get(url, headers=headers, timeout=10)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", headers
        assert "s3cret" not in r.text
    assert httpx.get(url, headers=lb_with_token.headers, timeout=10).status_code == 200
    for method, path in (("POST", "/lb/backends"), ("DELETE", "/lb/backends/x"), ("GET", "/metrics")):
        assert httpx.request(method, lb_with_token.admin_url + path, timeout=10).status_code == 401


@pytest.mark.slow
async def test_balancer_refuses_oversized_heads(lb_with_token: LBProc) -> None:
    big = {"x-padding": "p" * 40_000}
    r = await request(lb_with_token.port, "GET", "/health/ready", big)
    assert r.status == 431 and r.json()["error"]["code"] == "headers_too_large"


@pytest.mark.slow
async def test_service_refuses_oversized_heads_and_many_headers(served: ServiceProcess,
                                                                fd_guard: int) -> None:
    many = {f"x-h{i}": "v" * 100 for i in range(400)}  # 40 kB in many small headers
    for headers in ({"x-padding": "p" * 40_000}, many):
        r = await request(served.port, "GET", "/health/live", headers)
        assert r.status == 431, r.body[:200]
        assert r.json()["error"]["code"] == "headers_too_large"
    long_url = "/health/live?" + "q" * 40_000
    assert (await request(served.port, "GET", long_url)).status == 431
    ok = await request(served.port, "GET", "/health/live", {"x-padding": "p" * 8_000})
    assert ok.status == 200  # under the 16 KiB default
    garbage = await request(served.port, "GET", "/\x01\x02 nonsense")
    assert garbage.status == 400 and garbage.json()["error"]["code"] == "invalid_request"


async def test_api_keys_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    keys = ["first-key", "second-key", "third-key"]
    async with app_client(api_keys=keys, warmup=False) as c:
        for given, status in (("first-key", 200), ("third-key", 200), ("nope", 401)):
            calls.clear()
            r = await c.post("/v1/detect", files={"image": jpeg(0)},
                             headers={"Authorization": f"Bearer {given}"})
            assert r.status_code == status
            # every configured key is compared, with compare_digest, even after a match
            assert sorted(b for _, b in calls) == sorted(k.encode() for k in keys)
            assert all(a == given.encode() for a, _ in calls)
            assert not any(k in r.text for k in keys)


def test_docker_image_runs_as_non_root_with_the_packaged_model_read_only() -> None:
    text = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1] == "yoloserve"
    runtime = text.split("AS runtime", 1)[1]
    copies = [line for line in runtime.splitlines() if line.startswith("COPY")]
    # the model ships inside the installed package: the runtime stage copies only the venv, as root's
    assert copies == ["COPY --from=build --chown=root:root /opt/venv /opt/venv"]
    assert "--model" not in re.findall(r"^CMD .*$", runtime, re.MULTILINE)[-1]


def _documented() -> dict[str, str]:
    """``ENV_NAME -> default column`` from the limit tables of SECURITY.md."""
    rows = re.findall(r"^\|\s*`(YOLOSERVE_[A-Z0-9_]+)`\s*\|\s*([^|]*)\|", SECURITY.read_text(),
                      re.MULTILINE)
    return {name: default.strip() for name, default in rows}


def _number(text: str) -> float | None:
    found = re.match(r"[\d_.]+", text.replace(",", ""))
    return float(found.group().replace("_", "")) if found else None


@pytest.mark.parametrize(("prefix", "names", "model"),
                         [("YOLOSERVE_", SERVICE_LIMITS, Settings),
                          ("YOLOSERVE_LB_", LB_LIMITS, LBSettings)])
def test_security_md_documents_every_limit_with_its_default(prefix: str, names: list[str],
                                                            model: Any) -> None:
    documented = _documented()
    for name in names:
        env = prefix + name.upper()
        assert env in documented, f"{env} is not in SECURITY.md"
        default = model.model_fields[name].default
        if default is None:
            assert documented[env].lower().startswith("off"), (env, documented[env])
        else:
            assert _number(documented[env]) == float(default), (env, documented[env], default)


def test_security_md_exists_and_names_the_reporting_route() -> None:
    text = Path(SECURITY).read_text()
    for words in ("Reporting", "loopback", "constant time", "non-root", "0444", "stack trace"):
        assert words.lower() in text.lower(), words
