"""Render every kustomization under deploy/kubernetes and validate every object, offline.

What is rendered: the base, each overlay (overlays/*), and each overlay with each optional component
(components/*) added, through ``kubectl kustomize``. What is checked, for every object:

- core kinds: the Kubernetes 1.30 OpenAPI schema bundled by the ``kubernetes-validate`` package, in
  its strict form (a field the schema does not know is an error);
- custom resources (ScaledObject, ServiceMonitor, PodMonitor): the openAPIV3Schema of their CRD,
  committed in crds/, made strict the way the API server prunes (an object schema without
  ``x-kubernetes-preserve-unknown-fields`` admits no other fields), with jsonschema; their
  ``metadata`` against the 1.30 ObjectMeta schema;
- references between objects: every Service, PodDisruptionBudget, NetworkPolicy and monitor selects
  some pod template (or Service), every scale target exists and has one autoscaler at most, every
  named port a probe or monitor uses exists, every object lies in the kustomization's namespace;
- the examples a component ships beside its kustomization and does not render
  (``components/*/*.yaml.example``, e.g. the TLS component's cert-manager Certificate): each object
  as above (a kind with no schema here is an error, never skipped), in the namespace.

Anything on kubectl's stderr (kustomize's warnings) and any Python warning fails the run, as does
every error above. ``python deploy/kubernetes/validate.py [--kubectl PATH]``; exit status 1 on any
problem. CI runs it through ``.ci/k8s-validate``, which installs what it needs first.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
CRD_DIR = HERE / "crds"
KUBERNETES_VERSION = "1.30.0"
NAMESPACE = "yoloserve"
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet"}
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding",
                  "PersistentVolume", "StorageClass", "PriorityClass"}


# -- rendering -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str  # as printed: "overlays/cpu", "overlays/cpu + components/keda"
    directory: Path | None  # a kustomization of the repository, or None: composed below
    resources: tuple[Path, ...] = ()
    components: tuple[Path, ...] = ()


def targets(root: Path = HERE) -> list[Target]:
    """The base, every overlay, and every overlay with every component."""
    found = [Target("base", root / "base")]
    overlays = sorted(p for p in (root / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
    components = sorted(p for p in (root / "components").iterdir()
                        if (p / "kustomization.yaml").is_file())
    found += [Target(f"overlays/{o.name}", o) for o in overlays]
    found += [Target(f"overlays/{o.name} + components/{c.name}", None, (o,), (c,))
              for o in overlays for c in components]
    return found


def render(kubectl: str, target: Target) -> list[dict[str, Any]]:
    """``kubectl kustomize`` of the target; raises RuntimeError on a failure or any stderr."""
    with tempfile.TemporaryDirectory(prefix="k8s-validate-") as tmp:
        directory = target.directory
        if directory is None:  # an overlay of our own: resources and components, paths relative
            directory = Path(tmp)  # (kustomize refuses absolute ones)
            spec = {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(p, directory) for p in target.resources],
                "components": [os.path.relpath(p, directory) for p in target.components],
            }
            (directory / "kustomization.yaml").write_text(yaml.safe_dump(spec))
        done = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True,
                              text=True, timeout=120, check=False)
    if done.returncode != 0 or done.stderr.strip():
        raise RuntimeError(f"kubectl kustomize failed (exit {done.returncode}): {done.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


# -- custom resources: their CRDs' schemas, strict -------------------------------------------------


def strict_schema(schema: Any) -> Any:
    """An OpenAPI v3 schema of a CRD as a JSON Schema (draft 4) that rejects unknown fields.

    The API server prunes the fields that an object schema does not declare unless it has
    ``x-kubernetes-preserve-unknown-fields: true``; here they are errors instead. ``nullable``
    becomes a ``null`` type. Walks the schema keywords only (a field may be named "type")."""
    if not isinstance(schema, Mapping):
        return schema
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {k: strict_schema(v) for k, v in out["properties"].items()}
    if isinstance(out.get("additionalProperties"), Mapping):
        out["additionalProperties"] = strict_schema(out["additionalProperties"])
    if "items" in out:
        items = out["items"]
        out["items"] = [strict_schema(i) for i in items] if isinstance(items, list) else strict_schema(items)
    for key in ("allOf", "anyOf", "oneOf"):
        if key in out:
            out[key] = [strict_schema(s) for s in out[key]]
    if "not" in out:
        out["not"] = strict_schema(out["not"])
    preserve = out.get("x-kubernetes-preserve-unknown-fields") is True
    if out.get("type") == "object" and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    if out.get("nullable") is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


class CustomResources:
    """The committed CRDs: (apiVersion, kind) -> strict schema of that served version."""

    def __init__(self, directory: Path = CRD_DIR) -> None:
        self.schemas: dict[tuple[str, str], dict[str, Any]] = {}
        self.kinds: set[tuple[str, str]] = set()  # (group, kind), any version
        for path in sorted(directory.glob("*.yaml")):
            for crd in yaml.safe_load_all(path.read_text()):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
                self.kinds.add((group, kind))
                for version in crd["spec"]["versions"]:
                    if not version.get("served", False):
                        continue
                    schema = dict(version["schema"]["openAPIV3Schema"])
                    properties = dict(schema.get("properties", {}))
                    properties.pop("metadata", None)  # ObjectMeta: checked on its own
                    properties.pop("status", None)  # written by the controller, never by us
                    schema["properties"] = properties
                    self.schemas[(f"{group}/{version['name']}", kind)] = strict_schema(schema)

    def knows(self, obj: Mapping[str, Any]) -> bool:
        group = str(obj.get("apiVersion", "")).rpartition("/")[0]
        return (group, obj.get("kind")) in self.kinds

    def errors(self, obj: Mapping[str, Any]) -> list[str]:
        import jsonschema

        schema = self.schemas.get((obj["apiVersion"], obj["kind"]))
        if schema is None:
            return [f"{obj['apiVersion']} is not a served version of {obj['kind']} in {CRD_DIR.name}/"]
        body = {k: v for k, v in obj.items() if k != "metadata"}
        validator = jsonschema.Draft4Validator(schema)
        found = [f"{_path(e.absolute_path)}: {e.message}" for e in validator.iter_errors(body)]
        return found + _metadata_errors(obj.get("metadata"))


def _path(parts: Any) -> str:
    return ".".join(str(p) for p in parts) or "(top)"


def _metadata_errors(metadata: Any) -> list[str]:
    """ObjectMeta of a custom resource, against the 1.30 schema (through a ConfigMap's)."""
    return core_errors({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata})


# -- core kinds: kubernetes-validate ---------------------------------------------------------------


def core_errors(obj: Mapping[str, Any]) -> list[str]:
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError

    try:
        kubernetes_validate.validate(dict(obj), KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{_path(exc.path)}: {exc.message}"]
    except SchemaNotFoundError as exc:
        return [exc.message]
    return []


# -- references between the objects of one rendering ---------------------------------------------


def _matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A label selector (matchLabels/matchExpressions, or a Service's plain map) against labels."""
    if not selector:
        return False
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        return all(labels.get(k) == v for k, v in selector.items())
    if not all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _pod_templates(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o["spec"]["template"] for o in objects if o["kind"] in WORKLOADS]


def _container_ports(template: Mapping[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for c in template["spec"]["containers"]
            for p in c.get("ports", []) if "name" in p}


def reference_errors(objects: list[dict[str, Any]]) -> Iterator[str]:
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for o in objects:
        by_kind.setdefault(o["kind"], []).append(o)
    templates = _pod_templates(objects)

    def selected(selector: Any) -> list[dict[str, Any]]:
        return [t for t in templates if _matches(selector, t["metadata"].get("labels", {}))]

    seen: set[tuple[str, str, str]] = set()
    for o in objects:
        meta = o["metadata"]
        key = (o["kind"], meta.get("namespace", ""), meta["name"])
        if key in seen:
            yield f"{o['kind']}/{meta['name']}: defined twice"
        seen.add(key)
        if o["kind"] not in CLUSTER_SCOPED and meta.get("namespace") != NAMESPACE:
            yield f"{o['kind']}/{meta['name']}: namespace {meta.get('namespace')!r}, not {NAMESPACE!r}"

    for svc in by_kind.get("Service", []):
        pods = selected(svc["spec"].get("selector"))
        if not pods:
            yield f"Service/{svc['metadata']['name']}: its selector matches no pod template"
        for port in svc["spec"].get("ports", []):
            target = port.get("targetPort", port["port"])
            for t in pods:
                named = _container_ports(t)
                if isinstance(target, str) and target not in named:
                    yield f"Service/{svc['metadata']['name']}: targetPort {target!r} is not a container port"
                if isinstance(target, int) and target not in named.values():
                    yield f"Service/{svc['metadata']['name']}: targetPort {target} is not a container port"
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for o in by_kind.get(kind, []):
            field = "selector" if kind == "PodDisruptionBudget" else "podSelector"
            if not selected(o["spec"][field]):
                yield f"{kind}/{o['metadata']['name']}: its {field} matches no pod template"
    for o in by_kind.get("PodMonitor", []):
        pods = selected(o["spec"]["selector"])
        if not pods:
            yield f"PodMonitor/{o['metadata']['name']}: its selector matches no pod template"
        for endpoint in o["spec"].get("podMetricsEndpoints", []):
            if not all(endpoint.get("port") in _container_ports(t) for t in pods):
                yield (f"PodMonitor/{o['metadata']['name']}: port {endpoint.get('port')!r} "
                       "is not a container port")
    for o in by_kind.get("ServiceMonitor", []):
        services = [s for s in by_kind.get("Service", [])
                    if _matches(o["spec"]["selector"], s["metadata"].get("labels", {}))]
        if not services:
            yield f"ServiceMonitor/{o['metadata']['name']}: its selector matches no Service"
        for endpoint in o["spec"].get("endpoints", []):
            if not all(endpoint.get("port") in {p.get("name") for p in s["spec"]["ports"]}
                       for s in services):
                yield (f"ServiceMonitor/{o['metadata']['name']}: port {endpoint.get('port')!r} "
                       "is not a Service port")

    workloads = {(o["kind"], o["metadata"]["name"]) for o in objects if o["kind"] in WORKLOADS}
    scaled: dict[tuple[str, str], list[str]] = {}
    for o in by_kind.get("HorizontalPodAutoscaler", []) + by_kind.get("ScaledObject", []):
        ref = o["spec"]["scaleTargetRef"]
        target = (ref.get("kind", "Deployment"), ref["name"])
        if target not in workloads:
            yield f"{o['kind']}/{o['metadata']['name']}: no {target[0]} named {target[1]!r}"
        scaled.setdefault(target, []).append(f"{o['kind']}/{o['metadata']['name']}")
    for target, scalers in scaled.items():
        if len(scalers) > 1:
            yield f"{target[0]}/{target[1]} has {len(scalers)} autoscalers: {', '.join(scalers)}"

    for o in objects:
        if o["kind"] not in WORKLOADS:
            continue
        spec = o["spec"]["template"]["spec"]
        for c in spec["containers"]:
            declared = set(_container_ports({"spec": {"containers": [c]}}))
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                handler = c.get(probe) or {}
                for way in ("httpGet", "tcpSocket", "grpc"):
                    port = (handler.get(way) or {}).get("port")
                    if isinstance(port, str) and port not in declared:
                        yield (f"{o['kind']}/{o['metadata']['name']}: {c['name']}.{probe} "
                               f"port {port!r} is not declared")
            for ref in [e["valueFrom"]["resourceFieldRef"] for e in c.get("env", [])
                        if "resourceFieldRef" in e.get("valueFrom", {})]:
                if ref.get("containerName", c["name"]) not in {x["name"] for x in spec["containers"]}:
                    yield f"{o['kind']}/{o['metadata']['name']}: resourceFieldRef names no container"


# -- the run ---------------------------------------------------------------------------------------


def object_errors(obj: Mapping[str, Any], crds: CustomResources) -> list[str]:
    return crds.errors(obj) if crds.knows(obj) else core_errors(obj)


def examples(root: Path = HERE) -> list[Path]:
    """The example manifests of the components, which they do not render."""
    return sorted((root / "components").glob("*/*.yaml.example"))


def example_errors(path: Path, crds: CustomResources) -> tuple[list[dict[str, Any]], list[str]]:
    """The objects of an example file and what is wrong with them."""
    objects = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    errors = [] if objects else ["no object in the file"]
    for o in objects:
        name = f"{o.get('kind')}/{o.get('metadata', {}).get('name')}"
        errors += [f"{name}: {e}" for e in object_errors(o, crds)]
        if o.get("kind") not in CLUSTER_SCOPED and o.get("metadata", {}).get("namespace") != NAMESPACE:
            errors.append(f"{name}: namespace {o.get('metadata', {}).get('namespace')!r}, not {NAMESPACE!r}")
    return objects, errors


def _report(name: str, objects: list[dict[str, Any]], errors: list[str]) -> int:
    """Prints one rendering's or example's verdict; returns its number of problems."""
    if errors:
        print(f"FAIL {name}: {len(objects)} objects, {len(errors)} problems")
        for e in errors:
            print(f"  - {e}")
    else:
        print(f"ok   {name}: {len(objects)} objects ({', '.join(sorted({o['kind'] for o in objects}))})")
    return len(errors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubectl", default=os.environ.get("KUBECTL", "kubectl"),
                        help="kubectl with kustomize v5 (default: $KUBECTL or kubectl on PATH)")
    args = parser.parse_args(argv)
    warnings.simplefilter("error")  # a warning is a failure
    from kubernetes_validate.utils import all_versions

    if KUBERNETES_VERSION not in all_versions():  # it would fall back to an older one silently
        print(f"FAIL this kubernetes-validate has no {KUBERNETES_VERSION} schemas ({all_versions()})")
        return 1
    start = time.monotonic()
    crds = CustomResources()
    problems = 0
    objects_checked = 0
    for target in targets():
        try:
            objects = render(args.kubectl, target)
        except (RuntimeError, subprocess.SubprocessError, yaml.YAMLError) as exc:
            print(f"FAIL {target.name}: {exc}")
            problems += 1
            continue
        errors = [f"{o.get('kind')}/{o.get('metadata', {}).get('name')}: {e}"
                  for o in objects for e in object_errors(o, crds)]
        errors += list(reference_errors(objects))
        objects_checked += len(objects)
        problems += _report(target.name, objects, errors)
    for path in examples():
        name = str(path.relative_to(HERE))
        try:
            objects, errors = example_errors(path, crds)
        except (yaml.YAMLError, AttributeError, TypeError) as exc:
            objects, errors = [], [f"not a manifest: {exc}"]
        objects_checked += len(objects)
        problems += _report(name, objects, errors)
    took = time.monotonic() - start
    verdict = "FAILED" if problems else "passed"
    print(f"k8s-validate: {verdict}: {objects_checked} objects in {len(targets())} renderings and "
          f"{len(examples())} examples against Kubernetes {KUBERNETES_VERSION} (strict) and "
          f"{len(crds.schemas)} CRD schemas; {problems} problems; {took:.1f} s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
