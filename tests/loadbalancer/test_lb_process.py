"""The balancer as a process: settings from flags, env and file; SIGHUP reload; SIGTERM drain."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import pytest

from harness.procs import await_until, free_port, wait_until
from tests.loadbalancer.harness import BackendProc, LBProc, start_backends


@pytest.fixture(scope="module")
def trio() -> Iterator[list[BackendProc]]:
    procs = start_backends([BackendProc("one"), BackendProc("two"), BackendProc("slow", delay_ms=800)])
    yield procs
    for p in procs:
        p.stop()


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return True
    return False


def test_flags_win_over_env_which_wins_over_the_file(tmp_path: Path, trio: list[BackendProc]) -> None:
    one, two, _ = trio
    config = tmp_path / "lb.toml"
    config.write_text(f'backends = ["{one.url}"]\npolicy = "peak_ewma"\nmax_retries = 1\n')
    env_port = free_port()
    lb = LBProc(
        (),
        "--config",
        str(config),
        env={
            "YOLOSERVE_LB_PORT": str(env_port),
            "YOLOSERVE_LB_POLICY": "random",
            "YOLOSERVE_LB_BACKENDS": f"{two.url}=2",
        },
    )
    try:
        lb.start().wait_ready()
        status = lb.status()
        assert status["policy"] == "random"  # env over file
        assert [(b["url"], b["weight"]) for b in status["backends"]] == [(two.url, 2)]
        assert httpx.post(lb.url + "/v1/detect", content=b"x").status_code == 200  # flag port
        assert refused(env_port)
    finally:
        lb.stop()


def test_sighup_reloads_backends_from_the_config_file(tmp_path: Path, trio: list[BackendProc]) -> None:
    one, two, _ = trio
    config = tmp_path / "lb.yaml"
    config.write_text(f"backends:\n  - {one.url}\n")
    lb = LBProc((), "--config", str(config), "--health-interval", "0.2").start().wait_ready()
    try:
        assert [b["url"] for b in lb.status()["backends"]] == [one.url]
        config.write_text(f"backends:\n  - {one.url}=2\n  - url: {two.url}\n    weight: 3\n")
        lb.signal(signal.SIGHUP)
        wait_until(
            lambda: {b["url"]: b["weight"] for b in lb.status()["backends"]} == {one.url: 2, two.url: 3},
            5.0,
            "the reload",
        )
        config.write_text("backends: [oops\n")  # a broken file keeps the current set
        lb.signal(signal.SIGHUP)
        wait_until(lambda: "reload failed" in lb.logs(), 5.0, "the failed reload to be logged")
        assert len(lb.status()["backends"]) == 2
        config.write_text(f"backends:\n  - {two.url}\n")
        lb.signal(signal.SIGHUP)
        wait_until(lambda: [b["url"] for b in lb.status()["backends"]] == [two.url], 5.0, "the removal")
        response = httpx.post(lb.url + "/v1/detect", content=b"x")
        assert response.headers["x-upstream"] == two.id
    finally:
        lb.stop()


async def test_sigterm_drains_in_flight_requests_then_exits(trio: list[BackendProc]) -> None:
    slow = trio[2]
    lb = LBProc([slow.url], "--shutdown-timeout", "10").start().wait_ready()
    try:
        async with aiohttp.ClientSession(lb.url) as session:

            async def post() -> int:
                async with session.post("/v1/detect", data=b"x") as response:
                    await response.read()
                    return response.status

            requests = [asyncio.create_task(post()) for _ in range(5)]

            async def all_in_flight() -> bool:
                return bool((await asyncio.to_thread(lb.status))["inflight"] == 5)

            await await_until(all_in_flight, 5.0, "5 requests in flight")
            lb.signal(signal.SIGTERM)
            await await_until(lambda: asyncio.to_thread(refused, lb.port), 2.0, "stop accepting")
            assert await asyncio.gather(*requests) == [200] * 5
        assert lb.proc is not None
        assert await asyncio.to_thread(lb.proc.wait, 10) == 0
        logs = lb.logs()
        assert '"message":"drained"' in logs and '"message":"load balancer stopped"' in logs
    finally:
        lb.stop()


def test_the_package_imports_nothing_heavy() -> None:
    import subprocess
    import sys

    code = (
        "import sys, loadbalancer, loadbalancer.cli, loadbalancer.server\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'cv2', 'numpy', 'ultralytics', 'onnxruntime')]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
