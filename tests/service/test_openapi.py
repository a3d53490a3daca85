"""The OpenAPI schema generates a complete client, and the docs pages need no network."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from service.app import create_app
from service.settings import Settings

# every route of the contract that the service serves today, as (method, path)
CONTRACT_ROUTES = {
    ("post", "/v1/detect"), ("post", "/v1/detect/batch"), ("post", "/v1/annotate"),
    ("get", "/v1/model"), ("get", "/v1/classes"), ("get", "/health/live"),
    ("get", "/health/ready"), ("get", "/metrics"),
    ("post", "/v1/streams/{stream_id}/frames"), ("get", "/v1/streams"),
    ("delete", "/v1/streams/{stream_id}"),
}


def _schema() -> dict[str, object]:
    return create_app(Settings(model=Path("models/demo.onnx"))).openapi()


def test_every_contract_route_declares_its_bodies() -> None:
    paths = _schema()["paths"]
    assert isinstance(paths, dict)
    for method, path in CONTRACT_ROUTES:
        responses = paths[path][method]["responses"]
        for status, response in responses.items():
            for media, content in response.get("content", {}).items():
                assert content.get("schema"), f"{method} {path} {status} {media} has no schema"


@pytest.mark.slow
def test_openapi_python_client_generates_every_operation_without_warnings(tmp_path: Path) -> None:
    spec = tmp_path / "openapi.json"
    spec.write_bytes(orjson.dumps(_schema()))
    tool = shutil.which("openapi-python-client", path=str(Path(sys.executable).parent))
    assert tool, "openapi-python-client is in the dev extras"
    out = tmp_path / "client"
    done = subprocess.run(
        [tool, "generate", "--path", str(spec), "--output-path", str(out), "--meta", "none"],
        capture_output=True, text=True, timeout=240,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"},
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert "warning" not in log.lower(), log
    modules = {p.stem for p in (out / "api").rglob("*.py") if p.stem != "__init__"}
    schema_ops = {op["operationId"] for methods in _schema()["paths"].values()  # type: ignore[attr-defined]
                  for op in methods.values()}
    assert len(modules) == len(schema_ops), (sorted(modules), sorted(schema_ops))


async def test_docs_pages_load_nothing_from_outside() -> None:
    app = create_app(Settings(model=Path("models/demo.onnx")))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for page in ("/docs", "/redoc"):
            html = (await client.get(page)).text
            urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", html)
            assert urls, f"{page} references no assets"
            for url in urls:
                assert not urlsplit(url).netloc, f"{page} loads {url} from outside the service"
                asset = await client.get(url)
                assert asset.status_code == 200 and asset.content, url
