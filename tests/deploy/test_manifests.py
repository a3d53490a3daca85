"""The Kubernetes manifests (deploy/kubernetes/) against the code they deploy.

Each check runs on the base's files as they are (no kubectl needed) and on every overlay as kubectl
renders it (skipped without kubectl; .ci/k8s-validate renders and schema-checks them all). The
containers' args and env are put through the real `yoloserve serve` / `yoloserve lb` command lines
(with `run` replaced), so that ports, timeouts and the discovered name are the settings the
processes would actually run with.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from loadbalancer.settings import ENV_PREFIX as LB_PREFIX
from loadbalancer.settings import DiscoverSpec, LBSettings
from service.settings import Settings
from tests.deploy.conftest import DEPLOY, ROOT, TOKEN, Answer, Objects, base_objects, one

DETECTOR, BALANCER, HEADLESS, FRONT = "yoloserve-detector", "yoloserve-lb", "yoloserve-detector", "yoloserve"
MIN_STARTUP_ALLOWANCE_S = 300  # model load and warm-up on a cold node, a larger model, CUDA


# -- helpers: a pod as the kubelet would start it ------------------------------------------------


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "one container per pod"
    result: dict[str, Any] = containers[0]
    return result


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity as a number ("500m" -> 0.5, "2" -> 2.0; binary suffixes too)."""
    text = str(value)
    suffixes = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, scale in sorted(suffixes.items(), key=lambda kv: -len(kv[0])):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * scale
    return float(text)


def image_env() -> dict[str, str]:
    """The YOLOSERVE_* variables the image's ENV sets (Dockerfile, runtime stage)."""
    runtime = (ROOT / "Dockerfile").read_text().split("AS runtime", 1)[1]
    return dict(re.findall(r"\b(YOLOSERVE_[A-Z0-9_]+)=(\S+)", runtime))


def pod_env(deployment: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet resolves it (Secrets: a test token)."""
    c = container(deployment)
    env: dict[str, str] = {}
    for item in c.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        source = item["valueFrom"]
        if "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "metadata.namespace", source
            env[item["name"]] = deployment["metadata"]["namespace"]
        elif "resourceFieldRef" in source:
            ref = source["resourceFieldRef"]
            assert ref.get("containerName", c["name"]) == c["name"], ref
            kind, _, resource = ref["resource"].partition(".")
            amount = quantity(c["resources"][kind][resource]) / quantity(ref.get("divisor", "1"))
            env[item["name"]] = str(math.ceil(amount))  # the kubelet rounds up
        elif "secretKeyRef" in source:
            assert not source["secretKeyRef"].get("optional", False), "a required Secret"
            env[item["name"]] = TOKEN
        else:
            raise AssertionError(f"unexpected env source {source}")
    return env


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """$(VAR) in args, as the kubelet expands it from the container's env."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), a) for a in args]


def on_volumes(env: dict[str, str], deployment: dict[str, Any], root: Path) -> dict[str, str]:
    """``env`` with each file on one of the container's volumes put under ``root`` (as an empty
    file), so that the CLI's start-up checks find the weights a volume would hold in the pod."""
    mounts = [m["mountPath"] for m in container(deployment).get("volumeMounts", [])]
    out = dict(env)
    for name, value in env.items():
        if any(value.startswith(mount.rstrip("/") + "/") for mount in mounts):
            local = root / value.lstrip("/")
            local.parent.mkdir(parents=True, exist_ok=True)
            local.touch()
            out[name] = str(local)
    return out


def run_cli(monkeypatch: pytest.MonkeyPatch, deployment: dict[str, Any], module: str,
            command: Any, volumes: Path | None = None) -> Any:
    """The settings the container's command line and env give, through the real CLI."""
    env = {**image_env(), **pod_env(deployment)}
    if volumes is not None:
        env = on_volumes(env, deployment, volumes)
    args = expand([str(a) for a in container(deployment)["args"]], env)
    for name in list(os.environ):
        if name.startswith("YOLOSERVE_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    captured: list[Any] = []
    monkeypatch.setattr(f"{module}.run", captured.append)
    command.main(args[1:], prog_name=args[0], standalone_mode=False)
    assert len(captured) == 1
    return captured[0]


@pytest.fixture()
def serve_settings(manifests: Objects, monkeypatch: pytest.MonkeyPatch,
                   tmp_path: Path) -> Settings:
    from service.cli import serve_command

    deployment = one(manifests, "Deployment", DETECTOR)
    assert container(deployment)["args"][0] == "serve"
    settings: Settings = run_cli(monkeypatch, deployment, "service.server", serve_command,
                                 volumes=tmp_path)
    return settings


@pytest.fixture()
def lb_settings(manifests: Objects, monkeypatch: pytest.MonkeyPatch) -> LBSettings:
    from loadbalancer.cli import lb_command

    deployment = one(manifests, "Deployment", BALANCER)
    assert container(deployment)["args"][0] == "lb"
    settings: LBSettings = run_cli(monkeypatch, deployment, "loadbalancer.server", lb_command)
    return settings


def port_number(c: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert port in named, f"port {port!r} is not one of the container's ({named})"
    return int(named[port])


def pause_seconds(c: dict[str, Any]) -> float:
    """The preStop pause: exec of sleep N, or the sleep handler."""
    pre_stop = c["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = pre_stop["exec"]["command"]
    assert command[0] in ("/bin/sleep", "/usr/bin/sleep", "sleep") and len(command) == 2, command
    return float(command[1])


def labels_of(deployment: dict[str, Any]) -> dict[str, str]:
    result: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return result


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are expected here"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()) and bool(selector)


# -- the service ---------------------------------------------------------------------------------


def test_service_probes_point_at_the_health_routes(manifests: Objects, serve_settings: Settings,
                                                   service_answers: dict[str, Answer]) -> None:
    c = container(one(manifests, "Deployment", DETECTOR))
    assert serve_settings.host == "0.0.0.0"
    assert port_number(c, "http") == serve_settings.port
    expected = {"startupProbe": "/health/ready", "readinessProbe": "/health/ready",
                "livenessProbe": "/health/live"}
    for probe, path in expected.items():
        http = c[probe]["httpGet"]
        assert http["path"] == path, probe
        assert port_number(c, http["port"]) == serve_settings.port, probe
    # what the kubelet sees from a pod whose model is still loading: alive, not ready
    assert service_answers["/health/live"].status == 200
    ready = service_answers["/health/ready"]
    assert (ready.status, ready.json()["status"]) == (503, "starting")
    startup = c["startupProbe"]
    allowance = startup["periodSeconds"] * startup["failureThreshold"]
    assert allowance >= MIN_STARTUP_ALLOWANCE_S, f"startup allowance {allowance} s"
    # a saturated pod must not be restarted for answering late: more than one slow answer
    liveness = c["livenessProbe"]
    assert liveness["failureThreshold"] * liveness["periodSeconds"] >= 30


def test_drain_fits_in_the_grace_period(manifests: Objects, serve_settings: Settings,
                                        lb_settings: LBSettings) -> None:
    detector = one(manifests, "Deployment", DETECTOR)
    assert "YOLOSERVE_DRAIN_TIMEOUT_S" in pod_env(detector), "the drain timeout is stated"
    pause, drain = pause_seconds(container(detector)), serve_settings.drain_timeout_s
    grace = detector["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert pause > 0
    assert grace > pause + drain
    # uvicorn waits up to drain_timeout_s for the requests in flight, then the lifespan's shutdown
    # waits up to drain_timeout_s again for the batcher (service/server.py, service/app.py)
    assert grace >= pause + 2 * drain, (grace, pause, drain)

    balancer = one(manifests, "Deployment", BALANCER)
    assert f"{LB_PREFIX}SHUTDOWN_TIMEOUT" in pod_env(balancer), "the shutdown timeout is stated"
    pause = pause_seconds(container(balancer))
    grace = balancer["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert pause > 0
    assert grace > pause + lb_settings.shutdown_timeout


def test_every_setting_in_the_env_is_a_setting(manifests: Objects) -> None:
    """The service ignores unknown YOLOSERVE_ variables: a misspelt one would do nothing."""
    detector_env = pod_env(one(manifests, "Deployment", DETECTOR))
    for name in (n for n in detector_env if n.startswith("YOLOSERVE_")):
        assert name.removeprefix("YOLOSERVE_").lower() in Settings.model_fields, name
    lb_env = pod_env(one(manifests, "Deployment", BALANCER))
    for name in (n for n in lb_env if n.startswith(LB_PREFIX)):
        assert name.removeprefix(LB_PREFIX).lower() in LBSettings.model_fields, name


def test_the_service_pods_run_as_the_hardware_says(manifests: Objects, serve_settings: Settings) -> None:
    detector = one(manifests, "Deployment", DETECTOR)
    c = container(detector)
    resources = c["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind]), kind
    # the process plans its forward passes for the cores it was given, not the node's
    assert serve_settings.cores == math.ceil(quantity(resources["requests"]["cpu"]))
    gpus = resources["limits"].get("nvidia.com/gpu")
    if gpus is not None:
        assert str(gpus) == "1"
        assert serve_settings.device.startswith("cuda")
        pod = detector["spec"]["template"]["spec"]
        assert pod.get("nodeSelector"), "GPU pods go to the GPU nodes"
        assert any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", []))
    else:
        assert serve_settings.device in ("cpu", "auto")


# -- the balancer and the Services -----------------------------------------------------------------


def test_the_balancer_follows_the_headless_service(manifests: Objects, serve_settings: Settings,
                                                   lb_settings: LBSettings) -> None:
    detector, balancer = one(manifests, "Deployment", DETECTOR), one(manifests, "Deployment", BALANCER)
    headless = one(manifests, "Service", HEADLESS)
    namespace = headless["metadata"]["namespace"]
    assert headless["spec"]["clusterIP"] == "None"
    assert selects({"matchLabels": headless["spec"]["selector"]}, labels_of(detector))
    assert not selects({"matchLabels": headless["spec"]["selector"]}, labels_of(balancer))
    ports = {p["name"]: p for p in headless["spec"]["ports"]}
    assert set(ports) == {"http", "grpc"}  # the HTTP API, and the Open Inference Protocol over gRPC
    port = ports["http"]
    assert port_number(container(detector), port["targetPort"]) == serve_settings.port == port["port"]
    assert port_number(container(detector), ports["grpc"]["targetPort"]) == serve_settings.grpc_port \
        == ports["grpc"]["port"]
    assert lb_settings.discover == [
        DiscoverSpec(name=f"{HEADLESS}.{namespace}.svc.cluster.local", port=port["port"])
    ]
    # the detectors' gRPC port, balanced per call on the balancer's own
    assert lb_settings.discover_grpc == [
        DiscoverSpec(name=f"{HEADLESS}.{namespace}.svc.cluster.local", port=ports["grpc"]["port"])
    ]
    assert lb_settings.backends == [] and lb_settings.grpc_backends == []
    assert lb_settings.policy == "least_request"
    assert balancer["spec"]["replicas"] == 2
    anti = balancer["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    terms = [t.get("podAffinityTerm", t)
             for t in anti.get("preferredDuringSchedulingIgnoredDuringExecution", [])
             + anti.get("requiredDuringSchedulingIgnoredDuringExecution", [])]
    assert any(t["topologyKey"] == "kubernetes.io/hostname"
               and selects(t["labelSelector"], labels_of(balancer)) for t in terms)


def test_the_front_service_exposes_the_proxy_and_grpc_ports_only(manifests: Objects,
                                                                  lb_settings: LBSettings) -> None:
    balancer = one(manifests, "Deployment", BALANCER)
    c = container(balancer)
    front = one(manifests, "Service", FRONT)
    assert selects({"matchLabels": front["spec"]["selector"]}, labels_of(balancer))
    assert lb_settings.grpc_port is not None
    assert {p["name"]: port_number(c, p["targetPort"]) for p in front["spec"]["ports"]} == {
        "http": lb_settings.port, "grpc": lb_settings.grpc_port}
    assert port_number(c, "admin") == lb_settings.admin_port
    for s in (o for o in manifests if o["kind"] == "Service"):
        for p in s["spec"]["ports"]:
            assert p["port"] != lb_settings.admin_port and p.get("targetPort") != "admin", s["metadata"]
    # the admin API listens on the pod's address (for Prometheus) only behind a token
    assert lb_settings.admin_host == "0.0.0.0"
    assert lb_settings.admin_token is not None and lb_settings.admin_token.get_secret_value() == TOKEN
    for probe in ("readinessProbe", "livenessProbe"):
        assert port_number(c, c[probe]["tcpSocket"]["port"]) == lb_settings.port


def test_monitors_scrape_the_metrics_endpoints(manifests: Objects, serve_settings: Settings,
                                               lb_settings: LBSettings,
                                               service_answers: dict[str, Answer]) -> None:
    headless = one(manifests, "Service", HEADLESS)
    service_monitor = one(manifests, "ServiceMonitor", DETECTOR)
    assert selects(service_monitor["spec"]["selector"], headless["metadata"]["labels"])
    [endpoint] = service_monitor["spec"]["endpoints"]
    assert endpoint["port"] == headless["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics" and service_answers["/metrics"].status == 200

    balancer = one(manifests, "Deployment", BALANCER)
    pod_monitor = one(manifests, "PodMonitor", BALANCER)
    assert selects(pod_monitor["spec"]["selector"], labels_of(balancer))
    [endpoint] = pod_monitor["spec"]["podMetricsEndpoints"]
    assert port_number(container(balancer), endpoint["port"]) == lb_settings.admin_port
    assert endpoint["path"] == "/metrics"
    token_env = next(e for e in container(balancer)["env"] if e["name"] == f"{LB_PREFIX}ADMIN_TOKEN")
    secret = token_env["valueFrom"]["secretKeyRef"]
    assert endpoint["authorization"]["credentials"] == {"name": secret["name"], "key": secret["key"]}


# -- disruption, autoscaling, network --------------------------------------------------------------


def autoscaler_bounds(manifests: Objects) -> tuple[int, int]:
    hpas = [o for o in manifests if o["kind"] == "HorizontalPodAutoscaler"]
    scaled = [o for o in manifests if o["kind"] == "ScaledObject"]
    assert len(hpas) + len(scaled) == 1, "one autoscaler for the detectors"
    if hpas:
        return hpas[0]["spec"]["minReplicas"], hpas[0]["spec"]["maxReplicas"]
    return scaled[0]["spec"]["minReplicaCount"], scaled[0]["spec"]["maxReplicaCount"]


def test_disruption_budgets_leave_a_pod_serving(manifests: Objects) -> None:
    detector, balancer = one(manifests, "Deployment", DETECTOR), one(manifests, "Deployment", BALANCER)
    assert "replicas" not in detector["spec"], "the autoscaler owns the detectors' replica count"
    minimum, maximum = autoscaler_bounds(manifests)
    assert 2 <= minimum <= maximum
    for deployment, floor in ((detector, minimum), (balancer, balancer["spec"]["replicas"])):
        [pdb] = [o for o in manifests if o["kind"] == "PodDisruptionBudget"
                 and selects(o["spec"]["selector"], labels_of(deployment))]
        spec = pdb["spec"]
        if "maxUnavailable" in spec:
            assert 1 <= spec["maxUnavailable"] < floor, (spec, floor)
        else:
            assert 1 <= spec["minAvailable"] < floor, (spec, floor)
        assert spec.get("unhealthyPodEvictionPolicy") == "AlwaysAllow"


def test_network_policy_admits_only_the_balancer_to_the_service_port(
        manifests: Objects, serve_settings: Settings, lb_settings: LBSettings) -> None:
    detector, balancer = one(manifests, "Deployment", DETECTOR), one(manifests, "Deployment", BALANCER)
    policy = one(manifests, "NetworkPolicy", DETECTOR)
    assert selects(policy["spec"]["podSelector"], labels_of(detector))
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    balancer_rules = 0
    for rule in policy["spec"]["ingress"]:
        from_balancer = any("namespaceSelector" not in peer for peer in rule.get("from", []))
        # the balancer reaches the HTTP port and the gRPC one; Prometheus only the HTTP port
        ports = [serve_settings.port, *([serve_settings.grpc_port] if from_balancer else [])]
        assert rule["ports"] == [{"port": p, "protocol": "TCP"} for p in ports], rule
        assert rule.get("from"), "a rule without `from` admits every source"
        for peer in rule["from"]:
            if "namespaceSelector" in peer:  # Prometheus, scraping /metrics
                assert peer["namespaceSelector"] == {
                    "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
                assert peer["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}
            else:  # pods of this namespace: the balancer's, and no others
                assert set(peer) == {"podSelector"}, peer
                assert selects(peer["podSelector"], labels_of(balancer))
                assert not selects(peer["podSelector"], labels_of(detector))
                balancer_rules += 1
    assert balancer_rules == 1

    policy = one(manifests, "NetworkPolicy", BALANCER)
    assert selects(policy["spec"]["podSelector"], labels_of(balancer))
    by_port = {p["port"]: rule for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert set(by_port) == {lb_settings.port, lb_settings.grpc_port, lb_settings.admin_port}
    assert "from" not in by_port[lb_settings.port], "the proxy port is open to clients"
    assert "from" not in by_port[lb_settings.grpc_port], "the gRPC port is open to clients"
    assert all("namespaceSelector" in peer for peer in by_port[lb_settings.admin_port]["from"])


# -- TLS (components/tls) ----------------------------------------------------------------------------

TLS_COMPONENT = DEPLOY / "components" / "tls"


def secret_files(deployment: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Each file path the container can read from a Secret volume: (Secret, key)."""
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"].get("volumes", [])}
    files = {}
    for mount in container(deployment).get("volumeMounts", []):
        secret = volumes[mount["name"]].get("secret")
        if secret is None:
            continue
        keys = [item["key"] for item in secret.get("items", [])] or ["tls.crt", "tls.key", "ca.crt"]
        for key in keys:  # a kubernetes.io/tls Secret: tls.crt, tls.key (and ca.crt from cert-manager)
            files[f"{mount['mountPath'].rstrip('/')}/{key}"] = (secret["secretName"], key)
    return files


def test_tls_serves_both_ports_from_the_secret_the_certificate_writes(manifests: Objects,
                                                                     lb_settings: LBSettings) -> None:
    balancer = one(manifests, "Deployment", BALANCER)
    if lb_settings.tls_cert is None:  # without the component: HTTP and h2c
        assert lb_settings.tls_key is None and f"{LB_PREFIX}TLS_CERT" not in pod_env(balancer)
        return
    # one certificate for both ports: the gRPC port is on, and takes --tls-cert like the proxy port
    assert lb_settings.tls_key is not None and lb_settings.grpc_port is not None
    files = secret_files(balancer)
    assert files.get(str(lb_settings.tls_cert)) == ("yoloserve-lb-tls", "tls.crt")
    assert files.get(str(lb_settings.tls_key)) == ("yoloserve-lb-tls", "tls.key")
    mount = next(m for m in container(balancer)["volumeMounts"]
                 if str(lb_settings.tls_cert).startswith(m["mountPath"]))
    assert mount.get("readOnly") and "subPath" not in mount, "a subPath mount never sees a renewal"
    # the example Certificate writes that Secret, for the names clients call the Service by
    certificate = yaml.safe_load((TLS_COMPONENT / "certificate.yaml.example").read_text())
    front = one(manifests, "Service", FRONT)
    namespace = front["metadata"]["namespace"]
    assert certificate["kind"] == "Certificate" and certificate["metadata"]["namespace"] == namespace
    assert certificate["spec"]["secretName"] == "yoloserve-lb-tls"
    assert f"{FRONT}.{namespace}.svc.cluster.local" in certificate["spec"]["dnsNames"]


def test_the_tls_component_is_what_the_balancer_reads() -> None:
    """Without kubectl too: the component's patch sets the settings from the Secret's files."""
    kustomization = yaml.safe_load((TLS_COMPONENT / "kustomization.yaml").read_text())
    [patch] = [yaml.safe_load((TLS_COMPONENT / p["path"]).read_text()) for p in kustomization["patches"]]
    assert (patch["kind"], patch["metadata"]["name"]) == ("Deployment", BALANCER)
    env = {e["name"]: e["value"] for e in container(patch)["env"]}
    assert set(env) == {f"{LB_PREFIX}TLS_CERT", f"{LB_PREFIX}TLS_KEY"}
    files = secret_files(patch)
    assert files[env[f"{LB_PREFIX}TLS_CERT"]] == ("yoloserve-lb-tls", "tls.crt")
    assert files[env[f"{LB_PREFIX}TLS_KEY"]] == ("yoloserve-lb-tls", "tls.key")


# -- security ----------------------------------------------------------------------------------------


def dockerfile_value(pattern: str) -> str:
    match = re.search(pattern, (ROOT / "Dockerfile").read_text())
    assert match, f"{pattern} not found in the Dockerfile"
    return match.group(1)


def test_pods_are_locked_down(manifests: Objects) -> None:
    uid = int(dockerfile_value(r"--uid (\d+)"))
    for name in (DETECTOR, BALANCER):
        pod = one(manifests, "Deployment", name)["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["enableServiceLinks"] is False, "docker-link variables collide with YOLOSERVE_*"
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] == uid
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in pod["containers"]:
            assert c["securityContext"] == {"allowPrivilegeEscalation": False,
                                            "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    # the only writable place of the service is /tmp (Ultralytics' settings, spooled uploads)
    pod = one(manifests, "Deployment", DETECTOR)["spec"]["template"]["spec"]
    config_dir = dockerfile_value(r"YOLO_CONFIG_DIR=(\S+)")
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = [m for m in container(one(manifests, "Deployment", DETECTOR))["volumeMounts"]
                if not m.get("readOnly") and "emptyDir" in volumes[m["name"]]]
    assert any(config_dir.startswith(m["mountPath"].rstrip("/") + "/") for m in writable)
    namespaces = [o for o in manifests if o["kind"] == "Namespace"]
    for ns in namespaces:
        assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# -- the overlays' patches, read without kubectl --------------------------------------------------


def json_patch_args(overlay: str) -> list[str]:
    kustomization = yaml.safe_load((DEPLOY / "overlays" / overlay / "kustomization.yaml").read_text())
    added = []
    for patch in kustomization.get("patches", []):
        if "patch" in patch and patch["target"]["name"] == DETECTOR:
            added += [op["value"] for op in yaml.safe_load(patch["patch"])
                      if op["op"] == "add" and op["path"].endswith("/args/-")]
    return added


def test_overlays_set_the_device_and_the_gpu() -> None:
    assert json_patch_args("cpu") == ["--device", "cpu"]
    assert json_patch_args("gpu") == ["--device", "cuda"]
    gpu = yaml.safe_load((DEPLOY / "overlays" / "gpu" / "detector-gpu.yaml").read_text())
    pod = gpu["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert c["name"] == container(one(base_objects(), "Deployment", DETECTOR))["name"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == c["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] and pod["tolerations"]


# -- the autoscaling metric ------------------------------------------------------------------------


def metric_of_series_query(query: str) -> str:
    match = re.match(r"\s*([A-Za-z_:][A-Za-z0-9_:]*)", query)
    assert match, query
    return match.group(1)


def adapter_rules() -> list[dict[str, Any]]:
    values = yaml.safe_load((DEPLOY / "prometheus-adapter" / "values.yaml").read_text())
    rules: list[dict[str, Any]] = values["rules"]["custom"]
    return rules


def test_the_autoscaler_metric_is_made_from_an_exported_gauge(
        manifests: Objects, service_metrics: set[str], service_metrics_text: str) -> None:
    """The HPA's Pods metric is the adapter rule's rename of a gauge that /metrics exports; in the
    KEDA variant, the ScaledObject's query reads that gauge itself."""
    hpas = [o for o in manifests if o["kind"] == "HorizontalPodAutoscaler"]
    scaled = [o for o in manifests if o["kind"] == "ScaledObject"]
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": DETECTOR}
    if scaled:
        [scaler] = scaled
        assert scaler["spec"]["scaleTargetRef"] == target
        [trigger] = scaler["spec"]["triggers"]
        series = re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\{", trigger["metadata"]["query"])
        assert series and set(series) <= service_metrics, series
        assert all(f"# TYPE {s} gauge" in service_metrics_text for s in series)
        return
    [hpa] = hpas
    assert hpa["spec"]["scaleTargetRef"] == target
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    assert metric["pods"]["target"]["type"] == "AverageValue"
    [rule] = [r for r in adapter_rules() if r["name"]["as"] == name]
    series = metric_of_series_query(rule["seriesQuery"])
    assert series in service_metrics, f"{series} is not exported by the service"
    assert f"# TYPE {series} gauge" in service_metrics_text
    assert re.search(rule["name"]["matches"], series)
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"},
                                              "pod": {"resource": "pod"}}
    assert "<<.Series>>" in rule["metricsQuery"] and "<<.LabelMatchers>>" in rule["metricsQuery"]


def test_keda_has_the_hpa_policy(service_metrics: set[str]) -> None:
    """components/keda/scaledobject.yaml against the base's HPA, read from the files."""
    base = base_objects()
    hpa = one(base, "HorizontalPodAutoscaler", DETECTOR)
    scaled = yaml.safe_load((DEPLOY / "components" / "keda" / "scaledobject.yaml").read_text())
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == hpa["spec"]["scaleTargetRef"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (
        hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"])
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == hpa["spec"]["behavior"]
    [trigger] = spec["triggers"]
    assert trigger["type"] == "prometheus" and trigger.get("metricType", "AverageValue") == "AverageValue"
    [metric] = hpa["spec"]["metrics"]
    assert quantity(trigger["metadata"]["threshold"]) == quantity(metric["pods"]["target"]["averageValue"])
    query = trigger["metadata"]["query"]
    [rule] = [r for r in adapter_rules() if r["name"]["as"] == metric["pods"]["metric"]["name"]]
    series = metric_of_series_query(rule["seriesQuery"])
    assert re.search(rf"\b{series}\{{", query) and series in service_metrics
    # summed over the pods: KEDA's AverageValue divides by the replica count, as the HPA averages
    assert query.startswith("sum(")
    headless = one(base, "Service", HEADLESS)
    assert f'namespace="{headless["metadata"]["namespace"]}"' in query
    assert f'service="{HEADLESS}"' in query
