"""What the dynamic batcher itself costs, measured with a batch function that does nothing.

1. Throughput: many concurrent submitters push items through ``DynamicBatcher`` as fast as it
   takes them; items per second for several ``max_batch_size`` values (each batch is one hop to a
   worker thread and back, so small batches are bound by that hop).
2. Added latency: one sequential client; p50 and p99 of ``await submit()`` minus the p50 of
   calling the batch function directly.

By default the process is pinned to one CPU (the goal is stated per core) and runs on uvloop when
it is installed. Prints markdown tables and writes ``bench/results/batcher_overhead.{json,md}``
(not with ``--quick``).

    python -m bench.batcher_overhead [--quick] [--loop uvloop|asyncio] [--no-pin]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from batching import DynamicBatcher
from bench.common import RESULTS
from harness.stats import percentile

THROUGHPUT_GOAL = 50_000.0  # items/s on one core
LATENCY_GOAL_US = 500.0  # added p50, microseconds


@dataclass(frozen=True)
class ThroughputRow:
    max_batch_size: int
    submitters: int
    items: int
    items_per_s: float  # median of the repeats
    best_items_per_s: float
    mean_batch_size: float


@dataclass(frozen=True)
class HopRow:
    hops: int
    hop_p50_us: float  # one bare run_in_executor round trip of a no-op, no batcher
    ceiling_at_8: float  # items/s if each batch of 8 cost only that hop


@dataclass(frozen=True)
class LatencyRow:
    requests: int
    direct_p50_us: float
    submit_p50_us: float
    submit_p99_us: float
    added_p50_us: float
    added_p99_us: float


class CountingNoop:
    """A batch function that returns its input and counts calls (from the worker thread)."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, items: list[int]) -> list[int]:
        self.sizes.append(len(items))  # list.append is atomic under the GIL
        return items


async def one_throughput_run(
    max_batch_size: int, submitters: int, items: int
) -> tuple[float, float]:
    fn = CountingNoop()
    per_client = items // submitters
    batcher: DynamicBatcher[int, int] = DynamicBatcher(
        fn, max_batch_size=max_batch_size, max_wait=0.005, max_queue=submitters, name="bench"
    )

    async def client() -> None:
        for i in range(per_client):
            await batcher.submit(i)

    async with batcher:
        await asyncio.gather(*(batcher.submit(i) for i in range(submitters)))  # warm-up
        fn.sizes.clear()
        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(submitters)))
        elapsed = time.perf_counter() - start
    done = per_client * submitters
    return done / elapsed, done / len(fn.sizes)


async def measure_throughput(
    batch_sizes: list[int], submitters: int, items: int, repeats: int
) -> list[ThroughputRow]:
    rows = []
    for size in batch_sizes:
        runs = [await one_throughput_run(size, submitters, items) for _ in range(repeats)]
        rates = [rate for rate, _ in runs]
        rows.append(
            ThroughputRow(
                max_batch_size=size,
                submitters=submitters,
                items=items,
                items_per_s=statistics.median(rates),
                best_items_per_s=max(rates),
                mean_batch_size=statistics.mean(mean for _, mean in runs),
            )
        )
    return rows


async def measure_latency(requests: int) -> LatencyRow:
    fn = CountingNoop()
    direct = []
    for i in range(requests):
        start = time.perf_counter()
        fn([i])
        direct.append(time.perf_counter() - start)
    through: list[float] = []
    async with DynamicBatcher(fn, max_batch_size=8, max_wait=0.005, name="bench") as batcher:
        for i in range(requests // 10):  # warm-up: threads started, code paths hot
            await batcher.submit(i)
        for i in range(requests):
            start = time.perf_counter()
            await batcher.submit(i)
            through.append(time.perf_counter() - start)
    direct_p50 = statistics.median(direct) * 1e6
    p50, p99 = (percentile(through, q) * 1e6 for q in (50, 99))
    return LatencyRow(requests, direct_p50, p50, p99, p50 - direct_p50, p99 - direct_p50)


async def measure_hop(hops: int) -> HopRow:
    """The floor under any thread-pool batcher: one bare hop to a worker thread and back."""
    loop = asyncio.get_running_loop()
    samples = []
    with ThreadPoolExecutor(max_workers=1) as executor:
        await loop.run_in_executor(executor, int)
        for _ in range(hops):
            start = time.perf_counter()
            await loop.run_in_executor(executor, int)
            samples.append(time.perf_counter() - start)
    p50 = statistics.median(samples)
    return HopRow(hops, p50 * 1e6, 8 / p50)


def pin_to_one_cpu() -> str:
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity)"
    cpu = max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return f"pinned to CPU {cpu}"


def run_on(loop_name: str, main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    if loop_name == "uvloop":
        import uvloop

        return uvloop.run(main())
    return asyncio.run(main())


def choose_loop(requested: str | None) -> str:
    if requested is not None:
        return requested
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def render(
    meta: dict[str, Any], rows: list[ThroughputRow], latency: LatencyRow, hop: HopRow
) -> str:
    lines = [
        "# Batcher overhead",
        "",
        f"{meta['loop']} on Python {meta['python']}, {meta['cpu']}, {meta['when']} "
        f"(load average {meta['load_average_1m_before']} on {os.cpu_count()} CPUs before the run); "
        f"no-op batch_fn, max_wait 5 ms, max_concurrent_batches 1.",
        "",
        "## Throughput (many concurrent submitters)",
        "",
        "| max_batch_size | submitters | items/s (median) | items/s (best) | mean batch |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.max_batch_size} | {r.submitters} | {r.items_per_s:,.0f} | "
            f"{r.best_items_per_s:,.0f} | {r.mean_batch_size:.1f} |"
        )
    lines += [
        "",
        "## Added latency (one sequential client; microseconds)",
        "",
        "| requests | direct p50 | submit p50 | submit p99 | added p50 | added p99 |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {latency.requests} | {latency.direct_p50_us:.1f} | {latency.submit_p50_us:.1f} | "
        f"{latency.submit_p99_us:.1f} | {latency.added_p50_us:.1f} | {latency.added_p99_us:.1f} |",
        "",
        "## Floor: one bare thread hop (run_in_executor of a no-op, no batcher)",
        "",
        f"p50 {hop.hop_p50_us:.1f} µs over {hop.hops} hops: at one hop per batch of 8, at most "
        f"{hop.ceiling_at_8:,.0f} items/s before any per-item work.",
        "",
        "## Goals",
        "",
        *verdicts(rows, latency),
        "",
    ]
    return "\n".join(lines)


def verdicts(rows: list[ThroughputRow], latency: LatencyRow) -> list[str]:
    out = []
    for r in rows:
        met = "met" if r.items_per_s >= THROUGHPUT_GOAL else "NOT met"
        out.append(
            f"- ≥ {THROUGHPUT_GOAL:,.0f} items/s at max_batch_size {r.max_batch_size}: "
            f"{met} ({r.items_per_s:,.0f}/s)"
        )
    met = "met" if latency.added_p50_us < LATENCY_GOAL_US else "NOT met"
    out.append(
        f"- added p50 < {LATENCY_GOAL_US:.0f} µs: {met} ({latency.added_p50_us:.1f} µs; "
        f"p99 {latency.added_p99_us:.1f} µs)"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default=None)
    parser.add_argument("--quick", action="store_true", help="fewer items, for a smoke run")
    parser.add_argument("--no-pin", action="store_true", help="use every CPU allowed")
    parser.add_argument("--submitters", type=int, default=256)
    parser.add_argument("--batch-sizes", default="8,32,128")
    args = parser.parse_args(argv)

    load_before = round(os.getloadavg()[0], 2)
    cpu = f"{os.cpu_count()} CPUs, not pinned" if args.no_pin else pin_to_one_cpu()
    loop_name = choose_loop(args.loop)
    items, repeats, requests = (20_000, 1, 1_000) if args.quick else (100_000, 3, 5_000)
    sizes = [int(size) for size in args.batch_sizes.split(",")]

    async def bench() -> tuple[list[ThroughputRow], LatencyRow, HopRow]:
        rows = await measure_throughput(sizes, args.submitters, items, repeats)
        return rows, await measure_latency(requests), await measure_hop(requests)

    rows, latency, hop = run_on(loop_name, bench)
    meta = {
        "loop": loop_name,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "items_per_run": items,
        "repeats": repeats,
        "load_average_1m_before": load_before,
    }
    report = render(meta, rows, latency, hop)
    print(report)
    if not args.quick:  # a smoke run keeps the saved results
        save(meta, {"throughput": rows, "latency": latency, "thread_hop": hop}, report)
    return 0


def save(meta: dict[str, Any], results: dict[str, Any], report: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {
        "meta": meta,
        **{key: _plain(value) for key, value in results.items()},
        "goals": {"items_per_s": THROUGHPUT_GOAL, "added_p50_us": LATENCY_GOAL_US},
    }
    (RESULTS / "batcher_overhead.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / "batcher_overhead.md").write_text(report)


def _plain(value: Any) -> Any:
    return [asdict(v) for v in value] if isinstance(value, list) else asdict(value)


if __name__ == "__main__":
    sys.exit(main())
