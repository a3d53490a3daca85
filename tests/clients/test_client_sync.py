"""DetectionClient: the async client on a private loop thread, from plain synchronous code."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from contextlib import closing
from types import FrameType
from typing import Any

import httpx
import pytest
from conftest import Script, ok, result_payload, status

from clients import DetectionClient, InvalidRequest, ItemResult, Overloaded, Progress
from clients._sync import _Portal
from wire.schemas import DetectionResult

PNG = b"\x89PNG\r\n\x1a\nfake"


async def no_sleep(_: float) -> None:
    return None


def make(script: Script, **options: Any) -> DetectionClient:
    options.setdefault("transport", httpx.MockTransport(script))
    return DetectionClient("http://sync.test", sleep=no_sleep, **options)


def client_threads() -> int:
    return threading.active_count()


def test_the_same_api_blocking() -> None:
    model = {
        "name": "d",
        "version": "v",
        "backend": "onnx",
        "device": "cpu",
        "precision": "fp32",
        "input_size": 640,
        "classes": {},
        "max_batch_size": 8,
        "max_wait_ms": 5,
    }
    script = Script(
        [
            status(503),
            ok("a"),
            httpx.Response(200, json={"results": [result_payload("b")]}),
            httpx.Response(200, content=b"\xff\xd8"),
            httpx.Response(200, json=model),
            httpx.Response(200, json={"status": "ready"}),
            httpx.Response(200, json={"status": "ready"}),
        ]
    )
    with make(script) as client:
        assert client.base_url.startswith("http://sync.test")
        result = client.detect(PNG, conf=0.2)
        assert isinstance(result, DetectionResult) and result.image_name == "a"
        assert isinstance(client.detect_batch([PNG])[0], DetectionResult)
        assert client.annotate(PNG) == b"\xff\xd8"
        assert client.model_info().input_size == 640
        assert client.health().status == "ready"
        assert client.wait_until_ready(timeout=1).status == "ready"
        budget = client.async_client.retry_budget
        assert budget.tokens == pytest.approx(budget.max_tokens - 0.6)  # -1 + 4 x 0.1
    assert client.detect.__doc__ and "Detect objects in one image" in client.detect.__doc__
    assert DetectionClient.detect.__name__ == "detect"


def test_errors_cross_the_thread_unchanged() -> None:
    with make(Script([status(400, "invalid_image")])) as client, pytest.raises(InvalidRequest) as e:
        client.detect(PNG)
    assert e.value.code == "invalid_image" and e.value.status == 400
    with make(Script([status(503)]), max_attempts=2) as client, pytest.raises(Overloaded):
        client.detect(PNG)


def test_detect_many_iterates() -> None:
    seen: list[Progress] = []
    with make(Script([ok()])) as client:
        outcomes = list(client.detect_many([PNG] * 20, concurrency=4, on_progress=seen.append))
    assert len(outcomes) == 20 and all(isinstance(o, ItemResult) for o in outcomes)
    assert seen[-1].completed == 20


def test_breaking_out_of_detect_many_cancels_the_window() -> None:
    started = threading.Event()
    cancelled = 0

    async def first_fast(request: httpx.Request) -> httpx.Response:
        nonlocal cancelled
        if started.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled += 1
                raise
        started.set()
        return ok()

    with make(Script(), transport=httpx.MockTransport(first_fast)) as client:
        with closing(client.detect_many([PNG] * 50, concurrency=4)) as outcomes:
            for _ in outcomes:
                break
        assert cancelled == 3
        list(client.detect_many([]))  # still usable


def test_callbacks_must_not_reenter_the_client() -> None:
    with make(Script([ok()])) as client:

        def reenter(_: Progress) -> None:
            client.health()

        with pytest.raises(RuntimeError, match="event loop thread"):
            list(client.detect_many([PNG], on_progress=reenter))


def test_close_is_idempotent_and_final() -> None:
    before = client_threads()
    client = make(Script([ok()]))
    assert client_threads() == before + 1
    client.close()
    client.close()
    assert client_threads() == before
    with pytest.raises(RuntimeError, match="closed"):
        client.detect(PNG)


def test_a_failing_constructor_leaves_no_thread() -> None:
    before = client_threads()
    with pytest.raises(ValueError, match="timeout"):
        DetectionClient("http://x", timeout=-1)
    assert client_threads() == before


def test_an_abandoned_iterator_after_close_is_harmless() -> None:
    client = make(Script([ok()]))
    outcomes = client.detect_many([PNG, PNG], concurrency=1)
    next(outcomes)
    client.close()
    outcomes.close()


async def test_works_inside_a_running_event_loop() -> None:
    with make(Script([ok()])) as client:
        assert client.detect(PNG).image_name == "image"


def _waits_for_the_answer(frame: FrameType | None) -> bool:
    """Whether the main thread waits in ``_Portal.run``'s ``future.result()``: not in the wait of
    ``start_task_soon`` (handing the call over), which also blocks in a frame named ``wait``."""
    names = []
    while frame is not None and len(names) < 4:
        names.append(frame.f_code.co_name)
        frame = frame.f_back
    return names[:3] == ["wait", "result", "run"]


@pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals")
def test_ctrl_c_while_waiting_cancels_the_call() -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach only the main thread")
    # A process started in the background by a non-interactive shell inherits SIGINT ignored,
    # and Python then raises no KeyboardInterrupt: press Ctrl-C with Python's own handler.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    before = client_threads()
    loop = _Portal()
    started = threading.Event()
    cancelled = threading.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    def ctrl_c() -> None:
        if not started.wait(10):
            return
        # press once the caller waits for the answer (not while it is still handing the call over)
        main = threading.main_thread().ident
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            frame = sys._current_frames().get(main or 0)
            if _waits_for_the_answer(frame):
                break
            time.sleep(0.001)
        os.kill(os.getpid(), signal.SIGINT)

    presser = threading.Thread(target=ctrl_c, daemon=True)
    presser.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run(forever)
        assert cancelled.wait(5)
    finally:
        presser.join(15)
        signal.signal(signal.SIGINT, previous)
        loop.close()
        loop.close()  # idempotent
    deadline = time.monotonic() + 1
    while time.monotonic() < deadline and client_threads() > before:
        time.sleep(0.01)
    assert client_threads() == before
