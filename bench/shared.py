"""Shared state in Redis against none: what the fleet-wide cache costs and what it saves.

    python -m bench shared [--quick] [--workers 2] [--concurrency 16] [--seconds 8]

One ``yoloserve serve --workers N`` (the demo ONNX model on the CPU, result cache on, a per-client
rate limit high enough never to refuse, so that its round trip is counted) is measured twice:
without Redis (each worker its own cache, coalescing and buckets) and with a ``redis-server`` on
loopback. Two workloads, closed loop, each after a warm-up:

1. ``distinct``: every request a new image: no cache can help; what Redis adds (a lookup, the
   lease, the store, the limiter) on every request;
2. ``repeats``: 32 images sent over and over: with Redis each is computed once for the fleet,
   without it once per worker.

Per run: images/s, p50/p99, the model's runs (``inference_batch_size`` summed), cache hits by
level, and Redis round trips per answered request (the ``shared_store_latency_seconds`` counts).
Writes ``bench/results/shared.{json,md,png}`` (``--quick``: under ``raw/``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench import plots
from bench.common import RESULTS, machine, markdown_table, save
from bench.loadgen import run_closed
from bench.procs import service
from harness.images import Body, make_bodies, make_images
from harness.procs import Fleet, RedisServer, wait_until

__all__ = ["main"]

_COUNTERS = {
    "answered": ("http_requests_total", {}),
    "model_images": ("inference_batch_size_sum", {}),
    "local_hits": ("result_cache_lookups_total", {"level": "local", "result": "hit"}),
    "shared_hits": ("result_cache_lookups_total", {"level": "shared", "result": "hit"}),
    "redis_calls": ("shared_store_latency_seconds_count", {}),
    "redis_seconds": ("shared_store_latency_seconds_sum", {}),
    "redis_errors": ("shared_store_errors_total", {}),
}


def counters(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    return {key: sum(s.value for s in samples
                     if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))
            for key, (name, labels) in _COUNTERS.items()}


def _workers_up(url: str, workers: int) -> bool:
    text = httpx.get(url + "/metrics", timeout=10).text
    pids = {s.labels.get("pid") for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "model_info"}
    return len(pids) >= workers


def measure(setup: str, url: str, workloads: dict[str, list[Body]], args: argparse.Namespace
            ) -> list[dict[str, Any]]:
    rows = []
    for workload, bodies in workloads.items():
        before = counters(url)
        res = run_closed(url + "/v1/detect", bodies, args.concurrency, args.seconds,
                         warmup=args.warmup)
        after = counters(url)
        delta = {k: after[k] - before[k] for k in after}
        answered = max(delta["answered"], 1.0)
        rows.append({
            "setup": setup, "workload": workload, **res.to_dict(), "counters": delta,
            "model_runs_per_request": delta["model_images"] / answered,
            "redis_round_trips_per_request": delta["redis_calls"] / answered,
            "redis_ms_per_call": (1000 * delta["redis_seconds"] / delta["redis_calls"]
                                  if delta["redis_calls"] else 0.0),
        })
        print(f"{setup} / {workload}: {res.summary()}; model runs {delta['model_images']:.0f}, "
              f"redis calls/request {rows[-1]['redis_round_trips_per_request']:.2f}", flush=True)
    return rows


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    serve = ["--workers", str(args.workers), "--model", str(args.model), "--device", "cpu",
             "--max-batch-size", str(args.max_batch_size)]
    env = {"YOLOSERVE_CACHE_ENABLED": "true", "YOLOSERVE_CACHE_SIZE": "4096",
           "YOLOSERVE_RATE_LIMIT_RPS": "100000", "YOLOSERVE_RATE_LIMIT_BURST": "100000",
           "YOLOSERVE_ACCESS_LOG": "false"}
    rows: list[dict[str, Any]] = []
    # fresh images for each setup, so that nothing is cached from the one before
    for i, setup in enumerate(("no redis", "redis")):
        workloads = {
            "distinct": make_bodies(make_images(args.distinct, 640 - 2 * i, 480)),
            "repeats": make_bodies(make_images(32, 480 - 2 * i, 360)),
        }
        redis = RedisServer("shared_redis")
        procs = [redis] if setup == "redis" else []
        svc_env = {**env, **({"YOLOSERVE_REDIS_URL": redis.redis_url} if procs else {})}
        svc = service(f"shared_{setup.replace(' ', '_')}", *serve, env=svc_env)
        with Fleet(*procs, svc):
            wait_until(lambda s=svc: _workers_up(s.url, args.workers), 120, "every worker loaded",
                       every=0.5)
            rows += measure(setup, svc.url, workloads, args)
    return rows


def report(rows: list[dict[str, Any]]) -> str:
    table = [{
        "setup": r["setup"], "workload": r["workload"], "img/s": f"{r['throughput']:.1f}",
        "p50 ms": f"{r['p50_ms']:.1f}", "p99 ms": f"{r['p99_ms']:.1f}", "n": r["ok"],
        "errors": sum(r["errors"].values()),
        "model runs / request": f"{r['model_runs_per_request']:.3f}",
        "local hits": f"{r['counters']['local_hits']:.0f}",
        "shared hits": f"{r['counters']['shared_hits']:.0f}",
        "Redis round trips / request": f"{r['redis_round_trips_per_request']:.2f}",
        "ms per Redis call": f"{r['redis_ms_per_call']:.3f}"} for r in rows]
    cols = list(table[0]) if table else []
    return "\n\n".join(["## Closed loop, the same service without and with Redis",
                        markdown_table(table, cols)])


def draw(rows: list[dict[str, Any]], stem: Path) -> Path:
    groups = {w: {r["setup"]: r["throughput"] for r in rows if r["workload"] == w}
              for w in dict.fromkeys(r["workload"] for r in rows)}
    return plots.grouped_bars(groups, stem.with_suffix(".png"),
                              "Without and with Redis (one run each; compare only on a quiet "
                              "machine)", "images/s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench shared",
                                 description="the service without and with Redis")
    ap.add_argument("--model", type=Path, default=Path("models/demo.onnx"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--distinct", type=int, default=1000, help="images of the distinct workload")
    ap.add_argument("--quick", action="store_true", help="a smoke run (results under raw/)")
    ap.add_argument("--replot", action="store_true", help="only redraw the plot from the JSON")
    args = ap.parse_args(argv)
    if RedisServer.binary() is None:
        print("shared: redis-server is not installed")
        return 2
    if args.quick:
        args.seconds, args.warmup, args.distinct = 2.0, 0.5, 200
    name = "raw/shared_quick" if args.quick else "shared"
    if args.replot:
        saved = json.loads((RESULTS / f"{name}.json").read_text())
        print(f"wrote {draw(saved['rows'], RESULTS / name)}")
        return 0
    print(f"shared: {machine()}", flush=True)
    started = time.monotonic()
    rows = run(args)
    text = report(rows)
    print(text)
    data = {"model": str(args.model), "workers": args.workers, "concurrency": args.concurrency,
            "seconds": args.seconds, "rows": rows, "wall_s": time.monotonic() - started}
    md = save(name, data, text, "Shared state in Redis: the service without and with it")
    png = draw(rows, RESULTS / name)
    print(f"wrote {png.relative_to(RESULTS.parent.parent)}, "
          f"{md.relative_to(RESULTS.parent.parent)} in {data['wall_s']:.0f} s")
    bad = [(r["setup"], r["workload"], r["errors"]) for r in rows if r["errors"]]
    if bad:
        print(f"NOT every answer was 200: {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
