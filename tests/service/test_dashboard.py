"""The demo page's files and the JSON its live panel polls, without a browser
(tests/browser/test_pages.py drives the page itself)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import httpx

from tests.service.conftest import app_client, jpeg


async def test_the_page_and_its_assets_come_from_the_service() -> None:
    async with app_client() as client:
        page = await client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "connect-src 'self'" in page.headers["content-security-policy"]
        urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
        assets = [u for u in urls if not u.startswith("data:")]
        assert {"/static/app.js", "/static/style.css"} <= set(assets)
        for url in assets:
            assert not urlsplit(url).netloc, url
            assert (await client.get(url)).status_code == 200, url
        bundle = (await client.get("/redoc/redoc.standalone.js")).content
        assert b"https://cdn.redoc.ly" not in bundle and len(bundle) > 100_000
        assert '"/redoc/redoc.standalone.js"' in (await client.get("/redoc")).text


async def _stats(client: httpx.AsyncClient) -> dict[str, object]:
    response = await client.get("/v1/stats")
    assert response.status_code == 200
    body: dict[str, object] = response.json()
    return body


async def test_stats_show_recent_traffic() -> None:
    async with app_client(cache_enabled=False, max_queue=0, max_batch_size=1,
                          max_concurrent_batches=1) as client:
        before = await _stats(client)
        assert before["requests"] == 0 and before["batch_sizes"] == {}
        for i in range(3):
            response = await client.post("/v1/detect", files={"image": ("a.jpg", jpeg(i))})
            assert response.status_code == 200
        after = await _stats(client)
        assert after["requests"] == 3 and after["batch_sizes"] == {"1": 3}
        assert isinstance(after["images_per_s"], float) and after["images_per_s"] > 0
        latency = after["latency_ms"]
        assert isinstance(latency, dict) and 0 < latency["p50"] <= latency["p99"]
        assert after["refusals_total"] == 0
