"""The Grafana dashboard: valid JSON, and every query names only metrics that the service or the
balancer export on /metrics (the names read from the real exposition, not from a list)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.deploy.conftest import DEPLOY

DASHBOARD = DEPLOY / "components" / "grafana-dashboard" / "yoloserve-dashboard.json"

# PromQL words that look like names but are not metrics
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
             "and", "or", "unless", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, labels, strings, ranges, Grafana
    variables and grouping clauses removed)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\$\{?\w+\}?", "", s)
    s = re.sub(r"\{[^}]*\}", "", s)
    s = re.sub(r"\[[^\]]*\]", "", s)
    s = re.sub(r"\boffset\s+\S+", "", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", s)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", s):
        if s[match.end():].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group(0).lower() not in _KEYWORDS:
            names.add(match.group(0))
    return names


def test_metric_names_reads_promql() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, handler) (rate(http_request_duration_seconds_bucket'
            '{namespace="$namespace", handler!~"/health.*"}[$__rate_interval]))) / on (pod) '
            'group_left count without (le) (model_info) offset 5m')
    assert metric_names(expr) == {"http_request_duration_seconds_bucket", "model_info"}


def load() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return dashboard


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found += panel.get("panels", [])  # inside a collapsed row
    return found


def test_the_dashboard_is_valid_json_with_its_parts() -> None:
    dashboard = load()
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for panel in panels(dashboard):
        assert panel["title"] and {"h", "w", "x", "y"} <= set(panel["gridPos"])
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_every_query_names_exported_metrics(service_metrics: set[str], balancer_metrics: set[str]) -> None:
    exported = service_metrics | balancer_metrics
    dashboard = load()
    used: set[str] = set()
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            names = metric_names(target["expr"])
            assert names, f"{panel['title']}: {target['expr']!r} names no metric"
            unknown = names - exported
            assert not unknown, f"{panel['title']}: {sorted(unknown)} not exported by the service or balancer"
            used |= names
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = re.fullmatch(r"label_values\((\w+),\s*\w+\)", query)
        assert match and match.group(1) in exported, query
    # both halves are on it
    assert used & service_metrics and used & balancer_metrics


@pytest.mark.parametrize("name", ["inference_queue_depth", "yoloserve_lb_requests_total",
                                  "http_request_duration_seconds_bucket"])
def test_exported_names_are_read_from_the_exposition(name: str, service_metrics: set[str],
                                                     balancer_metrics: set[str]) -> None:
    """The fixtures read what /metrics says (a counter with _total, a histogram's _bucket)."""
    assert name in service_metrics | balancer_metrics
