"""Soak: many requests through the balancer and two services; memory must stay flat, nothing fail.

    python -m bench soak                      # 20,000 requests (bench/results/soak.{json,md,png})
    python -m bench soak --requests 2000 --name soak_quick

Two ``yoloserve serve`` processes (ONNX demo model, result cache off so every request runs the
model) behind ``yoloserve lb``; a closed loop of ``--concurrency`` clients (aiohttp, no retries, so
every failure counts) sends distinct small JPEGs. Each service gets half the cores for ONNX
Runtime. The RSS of the three processes is sampled every ``--sample-every`` answers. "Flat"
means: after the warm-up (the first ``--warmup`` fraction of the requests) no process grows by
more than ``--max-growth-pct`` (default 5 %) from its RSS at the end of the warm-up. The program
exits 1 on any error or on growth over the bound.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from bench.common import RESULTS, markdown_table, save
from bench.procs import lb, service
from harness.images import Body, make_bodies, make_images
from harness.procs import Fleet, wait_all_healthy
from harness.stats import percentile

__all__ = ["SoakResult", "main", "run_soak", "soak_against"]


@dataclass
class SoakResult:
    requests: int
    concurrency: int
    seconds: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    upstreams: Counter[str] = field(default_factory=Counter)
    # (answers so far, {process name: RSS MiB})
    samples: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    warmup_requests: int = 0

    def growth_pct(self) -> dict[str, float]:
        """Each process's largest RSS after the warm-up, relative to its RSS at the warm-up's end."""
        after = [s for n, s in self.samples if n >= self.warmup_requests]
        if len(after) < 2:
            return {}
        base = after[0]
        return {name: (max(s[name] for s in after) - base[name]) / base[name] * 100 for name in base}

    def summary(self) -> dict[str, Any]:
        lat = self.latencies_ms
        return {
            "requests": self.requests, "concurrency": self.concurrency,
            "seconds": round(self.seconds, 1),
            "throughput_rps": round(self.requests / self.seconds, 1) if self.seconds else 0.0,
            "errors": dict(self.errors), "error_count": sum(self.errors.values()),
            "p50_ms": round(percentile(lat, 50), 1), "p99_ms": round(percentile(lat, 99), 1),
            "max_ms": round(max(lat), 1) if lat else float("nan"),
            "upstreams": dict(self.upstreams), "warmup_requests": self.warmup_requests,
            "rss_growth_pct": {k: round(v, 2) for k, v in self.growth_pct().items()},
            "rss_first_mb": self.samples[0][1] if self.samples else {},
            "rss_last_mb": self.samples[-1][1] if self.samples else {},
        }


async def _drive(url: str, bodies: list[Body], result: SoakResult, pids: dict[str, int],
                 sample_every: int) -> None:
    procs = {name: psutil.Process(pid) for name, pid in pids.items()}
    counter = iter(range(result.requests))
    done = [0]

    def sample() -> None:
        result.samples.append((done[0], {n: p.memory_info().rss / 2**20 for n, p in procs.items()}))

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        body = bodies[i % len(bodies)]
        t0 = time.perf_counter()
        try:
            async with session.post(url, data=body.data,
                                    headers={"Content-Type": body.content_type}) as resp:
                payload = await resp.read()
                if resp.status != 200 or b'"detections"' not in payload[:4096]:
                    result.errors[str(resp.status)] += 1
                else:
                    result.latencies_ms.append((time.perf_counter() - t0) * 1000)
                result.upstreams[resp.headers.get("X-Upstream", "?")] += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            result.errors[type(exc).__name__] += 1
        done[0] += 1
        if done[0] % sample_every == 0:
            sample()

    conn = aiohttp.TCPConnector(limit=result.concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        sample()

        async def worker() -> None:
            for i in counter:
                await one(session, i)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(result.concurrency)))
        result.seconds = time.perf_counter() - started
    if not result.samples or result.samples[-1][0] != done[0]:
        sample()


def soak_against(url: str, pids: dict[str, int], *, requests: int, concurrency: int = 16,
                 images: int = 256, size: int = 64, sample_every: int = 250,
                 warmup: float = 0.1) -> SoakResult:
    """Run the soak's load against ``url`` (already serving), sampling the RSS of ``pids``."""
    bodies = make_bodies(make_images(images, size, size))
    result = SoakResult(requests, concurrency,
                        warmup_requests=max(sample_every, int(requests * warmup)))
    asyncio.run(_drive(url + "/v1/detect", bodies, result, pids, sample_every))
    return result


def run_soak(*, requests: int, concurrency: int = 16, images: int = 256, size: int = 64,
             sample_every: int = 250, warmup: float = 0.1, name: str = "soak") -> SoakResult:
    """Start two services and the balancer, run the soak, stop everything."""
    model = str(Path(__file__).resolve().parents[1] / "models" / "demo.onnx")
    # two services share the machine: half the cores each, or they oversubscribe and both slow
    # down (bench/README.md, "Two services on one machine")
    cores = str(max(1, (os.cpu_count() or 2) // 2))
    env = {"YOLOSERVE_ACCESS_LOG": "false", "YOLOSERVE_CORES": cores}
    s1 = service(f"{name}_s1", "--model", model, env=env)
    s2 = service(f"{name}_s2", "--model", model, env=env)
    with Fleet(s1, s2) as fleet:
        balancer = lb(f"{name}_lb", [s1.url, s2.url])
        fleet.procs.append(balancer)
        balancer.start()
        balancer.wait_ready()
        wait_all_healthy(balancer)
        pids = {"service_1": s1.pid, "service_2": s2.pid, "balancer": balancer.pid}
        return soak_against(balancer.url, pids, requests=requests, concurrency=concurrency,
                            images=images, size=size, sample_every=sample_every, warmup=warmup)


def _figure(result: SoakResult, path: Path, max_growth: float) -> Path:
    import matplotlib.pyplot as plt

    from bench.plots import save_figure  # sets the Agg backend

    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = list(result.samples[0][1])
    for i, n in enumerate(names):
        xs = [count for count, _ in result.samples]
        ax.plot(xs, [s[n] for _, s in result.samples], marker=".", label=n, color=f"C{i}")
    ax.axvline(result.warmup_requests, linestyle=":", color="grey", label="end of warm-up")
    ax.set_xlabel("requests answered")
    ax.set_ylabel("RSS (MiB)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.set_title(f"Soak: {result.requests} requests, balancer + 2 services "
                 f"(errors: {sum(result.errors.values())}; bound +{max_growth:g} %)")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def _table(summary: dict[str, Any], after_warmup: dict[str, float], last: dict[str, float],
           growth: dict[str, float], figure: str) -> str:
    rows = [{"process": n, "RSS after warm-up (MiB)": f"{mb:.1f}", "RSS at the end (MiB)":
             f"{last[n]:.1f}", "growth (%)": f"{growth[n]:.2f}"} for n, mb in after_warmup.items()]
    return (f"{summary['requests']} requests at concurrency {summary['concurrency']} in "
            f"{summary['seconds']} s ({summary['throughput_rps']} req/s); errors: "
            f"{summary['error_count']} {summary['errors']}; latency p50 {summary['p50_ms']} ms, "
            f"p99 {summary['p99_ms']} ms; answers per backend: {summary['upstreams']}.\n\n"
            + markdown_table(rows, list(rows[0]))
            + f"\n\n![RSS over the soak]({figure})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench soak", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--images", type=int, default=256, help="distinct JPEGs sent in turn")
    parser.add_argument("--size", type=int, default=64, help="side of the square JPEGs, px")
    parser.add_argument("--sample-every", type=int, default=500)
    parser.add_argument("--warmup", type=float, default=0.1, help="fraction of the requests")
    parser.add_argument("--max-growth-pct", type=float, default=5.0)
    parser.add_argument("--name", default="soak")
    args = parser.parse_args(argv)
    result = run_soak(requests=args.requests, concurrency=args.concurrency, images=args.images,
                      size=args.size, sample_every=args.sample_every, warmup=args.warmup,
                      name=args.name)
    summary = result.summary()
    growth = result.growth_pct()
    figure = _figure(result, RESULTS / f"{args.name}.png", args.max_growth_pct)
    after_warmup = next(s for c, s in result.samples if c >= result.warmup_requests)
    table = _table(summary, after_warmup, result.samples[-1][1], growth, figure.name)
    data = {**summary, "max_growth_pct": args.max_growth_pct,
            "samples": [{"answered": c, **s} for c, s in result.samples]}
    print(save(args.name, data, table, "Soak: balancer + two services"))
    ok = summary["error_count"] == 0 and all(g <= args.max_growth_pct for g in growth.values())
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
