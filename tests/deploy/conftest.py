"""What the deployment tests read: the Kubernetes manifests (the base's files as they are, and every
overlay rendered when a kubectl with kustomize v5 is at hand), and the metric names that the service
and the balancer actually export on /metrics."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import yaml

from harness.procs import Balancer, free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
TOKEN = "deploy-test-token"

Objects = list[dict[str, Any]]


def load_validate_module() -> ModuleType:
    """deploy/kubernetes/validate.py (the CI check) as a module; it imports kubernetes-validate
    and jsonschema only inside the functions that need them."""
    spec = importlib.util.spec_from_file_location("k8s_validate", DEPLOY / "validate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def base_objects() -> Objects:
    """The base's objects from its files, with the kustomization's namespace: no kubectl."""
    kustomization = yaml.safe_load((DEPLOY / "base" / "kustomization.yaml").read_text())
    objects = []
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((DEPLOY / "base" / name).read_text()):
            if doc and doc["kind"] != "Namespace":
                doc["metadata"].setdefault("namespace", kustomization["namespace"])
            if doc:
                objects.append(doc)
    return objects


def find_kubectl() -> str | None:
    """A kubectl whose kustomize is v5: $KUBECTL, the one on PATH, or the one .ci/k8s-validate
    installs into its cache."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    for candidate in (os.environ.get("KUBECTL"), shutil.which("kubectl"),
                      str(cache / "yoloserve-ci" / "kubectl-v1.30.0" / "kubectl")):
        if not candidate or not os.access(candidate, os.X_OK):
            continue
        try:
            out = subprocess.run([candidate, "version", "--client"], capture_output=True, text=True,
                                 timeout=30, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        if re.search(r"^Kustomize Version: v([5-9]|\d\d)\.", out, re.M):
            return candidate
    return None


VARIANTS = ["base (files)", "overlays/cpu", "overlays/gpu", "overlays/cpu + components/keda",
            "overlays/gpu + components/model-volume", "overlays/cpu + components/redis",
            "overlays/cpu + components/tls"]


@pytest.fixture(scope="session", params=VARIANTS)
def manifests(request: pytest.FixtureRequest) -> Objects:
    """One set of objects: the base's files read directly, or an overlay rendered by kubectl
    (skipped when no kubectl with kustomize v5 is found; .ci/k8s-validate renders them all)."""
    variant: str = request.param
    if variant == "base (files)":
        return base_objects()
    kubectl = find_kubectl()
    if kubectl is None:
        pytest.skip("no kubectl with kustomize v5 (.ci/k8s-validate installs one)")
    validate = load_validate_module()
    target = next(t for t in validate.targets() if t.name == variant)
    objects: Objects = validate.render(kubectl, target)
    return objects


def one(objects: Objects, kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


# -- what /metrics exports -------------------------------------------------------------------------


def exported_names(text: str) -> set[str]:
    """Every series name a Prometheus text exposition can hold, from its # TYPE lines: a counter's
    name as written (prometheus_client writes it with _total), a histogram's _bucket, _sum and
    _count, a summary's _sum and _count, a gauge's name."""
    names: set[str] = set()
    for line in text.splitlines():
        match = re.fullmatch(r"# TYPE (\S+) (\S+)", line.strip())
        if not match:
            continue
        name, kind = match.groups()
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif kind == "summary":
            names |= {f"{name}_sum", f"{name}_count"}
    return names


@dataclass(frozen=True)
class Answer:
    status: int
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


@pytest.fixture(scope="session")
def service_answers() -> dict[str, Answer]:
    """GET /health/live, /health/ready and /metrics of the service app, in-process, its lifespan
    not run: no model is loaded (/health/ready answers 503 "starting"), and every metric is
    registered (the HTTP middleware's once a request has passed through it)."""
    import asyncio

    from service.app import create_app
    from service.settings import Settings

    async def get(paths: list[str]) -> dict[str, Answer]:
        transport = httpx.ASGITransport(app=create_app(Settings()))
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            return {p: Answer((r := await client.get(p)).status_code, r.text) for p in paths}

    return asyncio.run(get(["/health/live", "/health/ready", "/metrics"]))


@pytest.fixture(scope="session")
def service_metrics_text(service_answers: dict[str, Answer]) -> str:
    metrics = service_answers["/metrics"]
    assert metrics.status == 200
    return metrics.text


@pytest.fixture(scope="session")
def balancer_metrics_text() -> Iterator[str]:
    """/metrics of a real `yoloserve lb` (admin port, with a token), with one configured backend
    and one DNS name (asked of a closed loopback port: it fails, and is counted)."""
    dead = free_port()
    lb = Balancer("deploy-metrics", [f"http://127.0.0.1:{dead}"],
                  "--discover", "dns://yoloserve-detector.yoloserve.svc.cluster.local:8000",
                  "--dns-server", f"127.0.0.1:{free_port()}", "--log-level", "warning",
                  cli=("yoloserve", "lb"), token=TOKEN, drop_env=("YOLOSERVE_",))
    lb.start()
    try:
        def scrape() -> str | None:
            lb.check_running()
            try:
                r = httpx.get(lb.admin_url + "/metrics", headers=lb.headers, timeout=2.0)
            except httpx.HTTPError:
                return None
            return r.text if r.status_code == 200 else None

        wait_until(scrape, 30.0, "the balancer's /metrics")
        text = scrape()
        assert text is not None
        yield text
    finally:
        lb.stop()


@pytest.fixture(scope="session")
def service_metrics(service_metrics_text: str) -> set[str]:
    return exported_names(service_metrics_text)


@pytest.fixture(scope="session")
def balancer_metrics(balancer_metrics_text: str) -> set[str]:
    return exported_names(balancer_metrics_text)
