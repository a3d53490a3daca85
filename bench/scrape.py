"""Reading the service's Prometheus ``/metrics``: the ``inference_batch_size`` histogram and the
per-batch execution time, as the difference between two scrapes around a run."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Scrape", "batch_stats", "scrape"]


@dataclass
class Scrape:
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative batches
    batches: float = 0.0
    images: float = 0.0  # sum of batch sizes
    exec_count: float = 0.0
    exec_sum: float = 0.0  # seconds
    dispatch: dict[str, float] = field(default_factory=dict)  # batches sent, by reason


def scrape(base_url: str) -> Scrape | None:
    """One scrape of ``base_url/metrics``; ``None`` when there is none (the naive baseline)."""
    try:
        resp = httpx.get(base_url + "/metrics", timeout=10.0)
    except httpx.HTTPError:
        return None
    if resp.status_code != 200:
        return None
    out = Scrape()
    found = False
    # summed over the labels (models, and the protocols a batch came from)
    for fam in text_string_to_metric_families(resp.text):
        if fam.name == "inference_batch_size":
            found = True
            for s in fam.samples:
                if s.name.endswith("_bucket"):
                    le = float(s.labels["le"])
                    out.buckets[le] = out.buckets.get(le, 0.0) + s.value
                elif s.name.endswith("_count"):
                    out.batches += s.value
                elif s.name.endswith("_sum"):
                    out.images += s.value
        elif fam.name == "batch_dispatch":
            for s in fam.samples:
                if s.name.endswith("_total"):
                    reason = s.labels.get("reason", "")
                    out.dispatch[reason] = out.dispatch.get(reason, 0.0) + s.value
        elif fam.name == "model_inference_latency_seconds":
            for s in fam.samples:
                if s.name.endswith("_count"):
                    out.exec_count += s.value
                elif s.name.endswith("_sum"):
                    out.exec_sum += s.value
    return out if found else None


def _label(lo: float, hi: float) -> str:
    if math.isinf(hi):
        return f">{int(lo)}"
    lo_i, hi_i = int(lo) + 1, int(hi)
    return str(hi_i) if lo_i == hi_i else f"{lo_i}-{hi_i}"


def batch_stats(before: Scrape | None, after: Scrape | None, max_batch: int) -> dict[str, Any]:
    """Batches, mean size, per-bucket counts (up to ``max_batch``) and mean execution time."""
    if before is None or after is None:
        return {}
    batches = after.batches - before.batches
    hist: dict[str, float] = {}
    prev_le, prev_cum = 0.0, 0.0
    for le in sorted(after.buckets):
        cum = after.buckets[le] - before.buckets.get(le, 0.0)
        if prev_le < max_batch:
            hist[_label(prev_le, le)] = cum - prev_cum
        prev_le, prev_cum = le, cum
    dispatch = {k: v - before.dispatch.get(k, 0.0) for k, v in after.dispatch.items()}
    with contextlib.suppress(ZeroDivisionError):
        execs = after.exec_count - before.exec_count
        return {
            "batches": batches,
            "mean_batch": (after.images - before.images) / batches,
            "mean_exec_ms": 1000 * (after.exec_sum - before.exec_sum) / execs,
            "hist": hist,
            "dispatch": dispatch,
        }
    return {"batches": batches, "hist": hist, "dispatch": dispatch}
