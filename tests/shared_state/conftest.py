"""A real ``redis-server`` (Debian's package) on a free loopback port, nothing persisted."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.procs import RedisServer


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    if RedisServer.binary() is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    server = RedisServer("redis").start(wait=True)
    try:
        yield server
    finally:
        server.stop()
