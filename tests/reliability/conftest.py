"""Shared pieces of the reliability tests: the generated corpus and one real service process.

``served`` is one ``yoloserve serve`` process (ONNX demo model, result cache off so every good
image runs the model) shared by the tests that do not need special settings. ``fd_guard`` records
its open file descriptors before a test and fails the test if they do not return to that
baseline afterwards (polled with a deadline: the server closes sockets asynchronously).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.data.make_bad_corpus import write_corpus
from tests.reliability.loadtools import settle_fds
from tests.support.procs import ServiceProcess

MODEL = "models/demo.onnx"
QUIET = {"YOLOSERVE_CACHE_ENABLED": "false", "YOLOSERVE_ACCESS_LOG": "false"}


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bad")
    write_corpus(out)
    return out


@pytest.fixture(scope="session")
def served() -> Iterator[ServiceProcess]:
    proc = ServiceProcess("--model", MODEL, env=QUIET)
    try:
        proc.start()
        yield proc
    finally:
        proc.stop()


def pid_of(proc: ServiceProcess) -> int:
    assert proc.proc is not None and proc.proc.poll() is None, "the service process is not running"
    return proc.proc.pid


@pytest.fixture
def fd_guard(served: ServiceProcess) -> Iterator[int]:
    baseline = psutil.Process(pid_of(served)).num_fds()
    yield baseline
    settle_fds(pid_of(served), baseline)
