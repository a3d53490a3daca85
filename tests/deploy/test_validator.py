"""deploy/kubernetes/validate.py, the check that .ci/k8s-validate runs: the committed manifests pass
it (read from the files: no kubectl), and it is strict: unknown fields, wrong types, unserved
versions and broken references between objects are errors."""

from __future__ import annotations

import copy
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, base_objects, load_validate_module, one

pytest.importorskip("kubernetes_validate", reason="the dev extra's kubernetes-validate")
pytest.importorskip("jsonschema", reason="the dev extra's jsonschema")


@pytest.fixture(scope="module")
def validate() -> ModuleType:
    return load_validate_module()


@pytest.fixture(scope="module")
def crds(validate: ModuleType) -> Any:
    return validate.CustomResources()


def component_objects() -> list[dict[str, Any]]:
    objects = []
    for path in sorted((DEPLOY / "components").glob("*/*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and "spec" in doc and doc["kind"] != "Deployment":  # not the patches
                objects.append(doc)
    return objects


def test_the_manifests_validate(validate: ModuleType, crds: Any) -> None:
    objects = base_objects() + component_objects()
    assert {"ScaledObject", "ServiceMonitor", "PodMonitor", "Deployment"} <= {o["kind"] for o in objects}
    for obj in objects:
        assert validate.object_errors(obj, crds) == [], f"{obj['kind']}/{obj['metadata']['name']}"
    assert list(validate.reference_errors(base_objects())) == []


@pytest.mark.parametrize(("kind", "name", "change", "expected"), [
    ("ServiceMonitor", "yoloserve-detector", lambda o: o["spec"]["endpoints"][0].update(intervall="15s"),
     "'intervall' was unexpected"),
    ("ServiceMonitor", "yoloserve-detector", lambda o: o["spec"]["endpoints"][0].update(interval="15 s"),
     "does not match"),
    ("ServiceMonitor", "yoloserve-detector", lambda o: o.update(apiVersion="monitoring.coreos.com/v9"),
     "not a served version"),
    ("PodMonitor", "yoloserve-lb", lambda o: o["metadata"].update(label={"a": "b"}),
     "'label' was unexpected"),
    ("Deployment", "yoloserve-detector",
     lambda o: o["spec"]["template"]["spec"]["containers"][0].update(livenessprobe={}),
     "'livenessprobe' was unexpected"),
    ("HorizontalPodAutoscaler", "yoloserve-detector", lambda o: o["spec"].update(minReplicas="2"),
     "is not of type"),
])
def test_errors_are_found(validate: ModuleType, crds: Any, kind: str, name: str, change: Any,
                          expected: str) -> None:
    obj = copy.deepcopy(one(base_objects(), kind, name))
    change(obj)
    errors = validate.object_errors(obj, crds)
    assert any(expected in e for e in errors), errors


def test_scaled_object_is_strict(validate: ModuleType, crds: Any) -> None:
    scaled = next(o for o in component_objects() if o["kind"] == "ScaledObject")
    bad = copy.deepcopy(scaled)
    bad["spec"]["triggers"][0]["metadata"]["threshold"] = 8  # a map of strings
    assert any("is not of type 'string'" in e for e in validate.object_errors(bad, crds))
    bad = copy.deepcopy(scaled)
    bad["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behaviour"] = {}
    assert any("'behaviour' was unexpected" in e for e in validate.object_errors(bad, crds))


def test_references_are_checked(validate: ModuleType) -> None:
    objects = base_objects()
    scaled = next(o for o in component_objects() if o["kind"] == "ScaledObject")
    errors = list(validate.reference_errors([*objects, scaled]))
    assert any("2 autoscalers" in e for e in errors), errors
    broken = copy.deepcopy(objects)
    one(broken, "Service", "yoloserve")["spec"]["selector"] = {"app.kubernetes.io/component": "nothing"}
    one(broken, "NetworkPolicy", "yoloserve-detector")["metadata"]["namespace"] = "default"
    errors = list(validate.reference_errors(broken))
    assert any("Service/yoloserve: its selector matches no pod template" in e for e in errors), errors
    assert any("namespace 'default'" in e for e in errors), errors


def test_strict_schema_follows_the_api_servers_pruning(validate: ModuleType) -> None:
    import jsonschema

    schema = validate.strict_schema({
        "type": "object",
        "properties": {
            "kept": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            "pruned": {"type": "object", "properties": {"a": {"type": "string", "nullable": True}}},
            "type": {"type": "string"},  # a field named like a keyword
            "map": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    })
    check = jsonschema.Draft4Validator(schema)
    assert check.is_valid({"kept": {"anything": 1}, "pruned": {"a": None}, "type": "x", "map": {"k": "v"}})
    assert not check.is_valid({"pruned": {"b": "x"}})
    assert not check.is_valid({"other": 1})
    assert not check.is_valid({"map": {"k": 1}})


def test_the_certificate_example_is_checked_strictly(validate: ModuleType, crds: Any,
                                                     tmp_path: Path) -> None:
    """cert-manager's Certificate is no kind of kubernetes-validate's: the example is checked
    against the subset schema committed in crds/ (and a kind without a schema is an error)."""
    [path] = [p for p in validate.examples() if p.parent.name == "tls"]
    objects, errors = validate.example_errors(path, crds)
    assert errors == [] and [o["kind"] for o in objects] == ["Certificate"]
    certificate = objects[0]
    assert crds.knows(certificate)
    for change, expected in [
        (lambda s: s.update(secretname="x"), "'secretname' was unexpected"),
        (lambda s: s.pop("issuerRef"), "'issuerRef' is a required property"),
        (lambda s: s.update(duration="90d"), "does not match"),  # Go durations have no days
        (lambda s: s["privateKey"].update(algorithm="EC"), "is not one of"),
        (lambda s: s["privateKey"].update(size=2048), "is not valid under any of the given schemas"),
        (lambda s: s["dnsNames"].append(1), "is not of type 'string'"),
    ]:
        bad = copy.deepcopy(certificate)
        change(bad["spec"])
        found = validate.object_errors(bad, crds)
        assert any(expected in e for e in found), (expected, found)
    rsa = copy.deepcopy(certificate)
    rsa["spec"]["privateKey"].update(algorithm="RSA", size=2048)
    assert validate.object_errors(rsa, crds) == []
    unknown = {**certificate, "apiVersion": "example.com/v1", "kind": "Widget"}
    assert validate.object_errors(unknown, crds) != []  # never skipped
    moved = copy.deepcopy(certificate)
    moved["metadata"]["namespace"] = "default"
    elsewhere = tmp_path / "certificate.yaml.example"
    elsewhere.write_text(yaml.safe_dump(moved))
    assert any("namespace 'default'" in e for e in validate.example_errors(elsewhere, crds)[1])
