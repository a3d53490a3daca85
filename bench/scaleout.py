"""Scale-out: two service processes behind the bundled balancer against one process alone.

    python -m bench scaleout [--quick] [--concurrency 16 32] [--seconds 8]

In one run, with the same load generator and images (result cache off in every service):

1. ``one``: one ``yoloserve serve`` process, the load sent to it directly;
2. ``one+lb``: the same process behind ``yoloserve lb`` (what the balancer itself costs);
3. ``two+lb``: two processes behind the balancer (``least_request``);
4. ``two+lb, N core(s) each``: the same with ``YOLOSERVE_CORES=cores/2`` in each process, so that
   two processes do not both plan their forward passes for the whole machine.

The CPU use of every process (psutil, percent of one core) is reported next to the throughput:
on a machine with fewer cores than the processes want, a second process cannot add much and the
table shows why. Writes ``bench/results/scaleout.{json,md,png}`` (``--quick``: under ``raw/``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from bench import plots
from bench.common import RESULTS, machine, markdown_table, save
from bench.loadgen import run_closed
from bench.procs import lb, service
from bench.scrape import batch_stats, scrape
from harness.images import Body, make_bodies, make_images
from harness.procs import Fleet, Proc, wait_all_healthy

__all__ = ["main"]


def _floor(x: float, nd: int = 3) -> str:
    q = 10**nd
    return f"{int(x * q) / q:.{nd}f}"


def _short(proc: Proc) -> str:
    return proc.name.removeprefix("scaleout_")


def measure(config: str, entry: Proc, services: list[Proc], balancer: Proc | None,
            bodies: list[Body], concurrency: list[int], seconds: float, warmup: float,
            max_batch: int) -> list[dict[str, Any]]:
    pids = {_short(s): s.pid for s in services}
    if balancer is not None:
        pids["lb"] = balancer.pid
    rows = []
    for i, c in enumerate(concurrency):
        before = [scrape(s.url) for s in services]
        res = run_closed(entry.url + "/v1/detect", bodies, c, seconds,
                         warmup=warmup * (3 if i == 0 else 1), pids=pids)
        after = [scrape(s.url) for s in services]
        batches = {_short(s): batch_stats(b, a, max_batch)
                   for s, b, a in zip(services, before, after, strict=True)}
        rows.append({"config": config, **res.to_dict(), "per_service": batches})
        print(f"{config}: {res.summary()}", flush=True)
    return rows


def run(args: argparse.Namespace, bodies: list[Body]) -> list[dict[str, Any]]:
    serve = ["--model", str(args.model), "--device", args.device,
             "--max-batch-size", str(args.max_batch_size)]
    cores = str(max(1, (os.cpu_count() or 2) // 2))
    common = (bodies, args.concurrency, args.seconds, args.warmup, args.max_batch_size)
    rows: list[dict[str, Any]] = []
    s1 = service("scaleout_s1", *serve)
    with Fleet(s1):
        rows += measure("one", s1, [s1], None, *common)
        balancer = lb("scaleout_lb1", [s1.url])
        with Fleet(balancer):
            wait_all_healthy(balancer)
            rows += measure("one+lb", balancer, [s1], balancer, *common)
        s2 = service("scaleout_s2", *serve)
        balancer = lb("scaleout_lb2", [s1.url, s2.url])
        with Fleet(s2, balancer):
            wait_all_healthy(balancer)
            rows += measure("two+lb", balancer, [s1, s2], balancer, *common)
    if args.no_threads_variant:
        return rows
    env = {"YOLOSERVE_CORES": cores}
    t1, t2 = (service(f"scaleout_t{i}", *serve, env=env) for i in (1, 2))
    balancer = lb("scaleout_lb3", [t1.url, t2.url])
    with Fleet(t1, t2, balancer):
        wait_all_healthy(balancer)
        rows += measure(f"two+lb, {cores} core(s) each", balancer, [t1, t2], balancer,
                        *common)
    return rows


def _cpu(row: dict[str, Any]) -> str:
    return ", ".join(f"{k[4:-4]} {v:.0f}%" for k, v in row["cpu"].items())


def report(rows: list[dict[str, Any]]) -> tuple[str, list[dict[str, str]]]:
    table_rows = [{
        "config": r["config"], "clients": r["concurrency"], "img/s": f"{r['throughput']:.1f}",
        "p50 ms": f"{r['p50_ms']:.1f}", "p99 ms": f"{r['p99_ms']:.1f}", "n": r["ok"],
        "errors": r["errors"] or 0,
        "mean batch": ", ".join(f"{b.get('mean_batch', float('nan')):.2f}"
                                for b in r["per_service"].values()),
        "cpu per process (% of one core)": _cpu(r)} for r in rows]
    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["config"] not in best or r["throughput"] > best[r["config"]]["throughput"]:
            best[r["config"]] = r
    goals = []
    one = best.get("one")
    for name, r in best.items():
        if not name.startswith("two") or one is None or one["throughput"] <= 0:
            continue
        ratio = r["throughput"] / one["throughput"]
        goals.append({
            "goal": f"{name} ≥ 1.7 × one process alone",
            "measured": f"{_floor(ratio)} ×",
            "figures": f"{r['throughput']:.1f} img/s (c={r['concurrency']}; {_cpu(r)}) vs "
                       f"{one['throughput']:.1f} img/s (c={one['concurrency']}; {_cpu(one)}); "
                       f"{os.cpu_count()} cores",
            "met": "met" if ratio >= 1.7 else "NOT met"})
    cols = ["config", "clients", "img/s", "p50 ms", "p99 ms", "n", "errors", "mean batch",
            "cpu per process (% of one core)"]
    text = "\n\n".join([
        "## Closed loop, saturation throughput of each setup", markdown_table(table_rows, cols),
        "## Goal (best concurrency of each setup)",
        markdown_table(goals, ["goal", "measured", "figures", "met"])])
    return text, goals


def draw(rows: list[dict[str, Any]], stem: Path) -> Path:
    concurrencies = sorted({r["concurrency"] for r in rows})
    groups = {f"{c} clients": {r["config"]: r["throughput"] for r in rows
                               if r["concurrency"] == c} for c in concurrencies}
    return plots.grouped_bars(groups, stem.with_suffix(".png"), "Scale-out throughput",
                              "images/s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench scaleout",
                                 description="two processes behind the balancer vs one")
    ap.add_argument("--model", type=Path, default=Path("models/demo.pt"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--no-threads-variant", action="store_true")
    ap.add_argument("--quick", action="store_true", help="a smoke run (results under raw/)")
    ap.add_argument("--replot", action="store_true", help="only redraw the plot from the JSON")
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.concurrency = 2.0, 0.5, [16]
    name = "raw/scaleout_quick" if args.quick else "scaleout"
    if args.replot:
        saved = json.loads((RESULTS / f"{name}.json").read_text())
        print(f"wrote {draw(saved['rows'], RESULTS / name)}")
        return 0
    print(f"scaleout: {machine()}", flush=True)
    started = time.monotonic()
    bodies = make_bodies(make_images(16 if args.quick else args.images))
    rows = run(args, bodies)
    text, goals = report(rows)
    print(text)
    data = {"model": str(args.model), "device": args.device, "rows": rows, "goals": goals,
            "wall_s": time.monotonic() - started}
    md = save(name, data, text, "Scale-out: two processes behind the balancer vs one")
    png = draw(rows, RESULTS / name)
    print(f"wrote {png.relative_to(RESULTS.parent.parent)}, "
          f"{md.relative_to(RESULTS.parent.parent)} in {data['wall_s']:.0f} s")
    bad = [(r["config"], r["errors"]) for r in rows if r["errors"]]
    if bad:
        print(f"NOT every answer was 200: {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
