"""Multi-host faults: three namespace hosts behind the balancer, under load, through each fault.

    python -m bench multihost [--quick] [--callers 6] [--policies peak_ewma least_request]

Needs root and iproute2 (the ground is ``harness/multihost/``, which the tests assert on too):
each host is a network namespace joined to a bridge by a veth pair, with an address in
198.18.0.0/15, running a real ``yoloserve serve`` (one core, batches of 4, no result
cache); the balancer (``yoloserve lb``, its defaults, ``least_request``) runs in a namespace of its
own; ``--callers`` closed-loop callers send 320x240 JPEGs from the root namespace with the
project's ``AsyncDetectionClient`` at its defaults (10 s deadline, 4 tries), and every failed call
is counted. In one run, on the same ground:

1. ``healthy``: 15 s of load, nothing wrong (the reference);
2. ``rolling restart``: each host drained through the admin API, SIGTERMed once idle, started
   again and taken back, one at a time;
3. ``link cut``: h2's veth down for 10 s, then up, until the balancer sends it requests again;
4. ``frozen``: h3's service SIGSTOPped for 10 s with requests in flight, then SIGCONTed;
5. ``SIGKILL``: h1's service killed with requests in flight, started again 3 s later;
6. ``loss``: 5 % of h2's packets dropped each way for 10 s (an nftables rule in its namespace;
   needs ``nft``);
7. per policy, ``+100 ms``: a balancer reaching h3 through a proxy that delays every byte by
   50 ms each way against one reaching it directly, the load through each in turn (3 rounds of
   1 s warm-up + 6 s measured). ``tc netem`` does not exist on this project's kernels: the delay is
   emulated in user space (``harness/multihost/delayproxy.py``).

Writes ``bench/results/multihost.{json,md,png}`` (``--quick``: under ``raw/``); exits 1 if any
call failed or a scenario could not finish.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import json
import math
import os
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import plots
from bench.common import RESULTS, machine, markdown_table, save
from harness.multihost import ground as h
from harness.multihost.ground import Ground, Outcome
from harness.multihost.netns import loss_unavailable, unavailable

__all__ = ["main"]

FAIR_SHARE_FRACTION = 1 / 3
P99_FACTOR = 1.5

HOW = """How: every figure is from one run on one ground. p50/p99/max are of the calls that \
succeeded, from the client's side (its retries included), over the whole scenario (the fault and \
the recovery included); `failed` counts every call that raised. Requests per host are the \
balancer's own totals (`GET /lb/status`, tries included) over the same window. Delay rows: \
+100 ms is emulated by a user-space TCP proxy (the kernel has no `netem`), and the healthy row \
beside it is measured through a balancer with the same policy in alternating rounds. Loss: an \
nftables rule in the host's namespace drops that share of its packets on its link, each way, \
at random (`numgen random`)."""


def _fmt(x: float) -> str:
    return "" if math.isnan(x) else f"{x:.0f}"


def _events(o: dict[str, Any]) -> str:
    return "; ".join(f"{k} {v:.1f}s" for k, v in o["events"].items())


def report(rows: list[dict[str, Any]], failures: dict[str, str]) -> tuple[str, list[dict[str, str]]]:
    hosts = sorted({h for r in rows for h in r["per_host"]})
    table = [{"scenario": r["scenario"], "policy": r["policy"], "s": f"{r['seconds']:.0f}",
              "calls": r["calls"], "failed": r["failed"], "p50 ms": _fmt(r["p50_ms"]),
              "p99 ms": _fmt(r["p99_ms"]), "max ms": _fmt(r["max_ms"]),
              **{f"{h} req": r["per_host"].get(h, 0) for h in hosts},
              "events (s from start)": _events(r)} for r in rows]
    goals = []
    for r in rows:
        if r["scenario"] != "healthy" and "+" not in r["scenario"]:
            goals.append({"goal": f"{r['scenario']}: zero failed calls", "measured":
                          f"{r['failed']} of {r['calls']}", "met": "met" if r["failed"] == 0 else "NOT met"})
    for plain, slowed in itertools.pairwise(rows):
        if plain["scenario"] != "healthy" or "+" not in slowed["scenario"]:
            continue
        policy, delayed = slowed["policy"], slowed["scenario"].split()[0]
        total = sum(slowed["per_host"].values())
        share = slowed["per_host"].get(delayed, 0) / (total / len(slowed["per_host"])) if total else math.nan
        ratio = slowed["p99_ms"] / plain["p99_ms"]
        goals.append({"goal": f"{policy}, {slowed['scenario']}: ≤ 1/3 of its fair share",
                      "measured": f"{share:.2f} of its fair share ({slowed['per_host'].get(delayed, 0)} "
                                  f"of {total} requests)",
                      "met": "met" if share <= FAIR_SHARE_FRACTION else "NOT met"})
        goals.append({"goal": f"{policy}, {slowed['scenario']}: p99 ≤ 1.5 × all healthy",
                      "measured": f"{ratio:.2f} × ({slowed['p99_ms']:.0f} vs {plain['p99_ms']:.0f} ms)",
                      "met": "met" if ratio <= P99_FACTOR else "NOT met"})
    cols = ["scenario", "policy", "s", "calls", "failed", "p50 ms", "p99 ms", "max ms",
            *(f"{h} req" for h in hosts), "events (s from start)"]
    parts = ["## Scenarios", markdown_table(table, cols), "## Goals (issue 14)",
             markdown_table(goals, ["goal", "measured", "met"]), HOW]
    if failures:
        parts += ["## Scenarios that could not finish",
                  "\n".join(f"- {name}: {why}" for name, why in failures.items())]
    return "\n\n".join(parts), goals


def draw(rows: list[dict[str, Any]], stem: Path) -> Path:
    # the faults go through the ground's balancer; the delay rows through one per policy
    short = {"least_request": "least req.", "peak_ewma": "peak EWMA"}
    delay_rows = next((i for i, r in enumerate(rows) if "+" in r["scenario"]), len(rows)) - 1
    groups = {}
    for i, r in enumerate(rows):
        policy = short.get(r["policy"], r["policy"])
        label = r["scenario"] if i < delay_rows else f"{r['scenario']}\n{policy}"
        groups[label] = {"p50 ms": r["p50_ms"], "p99 ms": r["p99_ms"]}
    return plots.grouped_bars(groups, stem.with_suffix(".png"), "Latency through each fault "
                              "(3 namespace hosts, client's view)", "ms")


async def scenarios(ground: Ground, args: argparse.Namespace) -> tuple[list[Outcome], dict[str, str]]:
    quick = args.quick
    steps: list[tuple[str, Callable[[], Awaitable[Outcome | tuple[Outcome, Outcome]]]]] = [
        ("healthy", lambda: h.healthy(ground, 5.0 if quick else 15.0)),
        ("rolling restart", lambda: h.rolling_restart(ground)),
        ("link cut", lambda: h.link_cut(ground, "h2", args.cut_seconds)),
        ("frozen", lambda: h.freeze(ground, "h3", args.freeze_seconds)),
        ("SIGKILL", lambda: h.kill(ground, "h1")),
        ("loss", lambda: h.lossy(ground, "h2", args.loss_percent, args.loss_seconds)),
    ]
    for policy in args.policies:
        steps.append((f"+{args.delay_ms:g} ms, {policy}", functools.partial(
            h.delayed, ground, policy, "h3", args.delay_ms, rounds=1 if quick else 3,
            seconds=4.0 if quick else 6.0)))
    outcomes: list[Outcome] = []
    failures: dict[str, str] = {}
    for name, step in steps:
        if quick and name == "rolling restart":
            continue  # three model loads: minutes
        if name == "loss" and (why := loss_unavailable()) is not None:
            failures[name] = f"skipped: {why}"
            continue
        try:
            result = await step()
        except Exception as exc:  # one scenario's failure is reported, the others still run
            traceback.print_exc()
            failures[name] = f"{type(exc).__name__}: {exc}"
            continue
        outcomes += list(result) if isinstance(result, tuple) else [result]
    return outcomes, failures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench multihost",
                                 description="faults on three namespace hosts behind the balancer")
    ap.add_argument("--callers", type=int, default=6, help="closed-loop callers")
    ap.add_argument("--policies", nargs="+", default=["peak_ewma", "least_request"])
    ap.add_argument("--delay-ms", type=float, default=100.0)
    ap.add_argument("--cut-seconds", type=float, default=10.0)
    ap.add_argument("--freeze-seconds", type=float, default=10.0)
    ap.add_argument("--loss-percent", type=float, default=5.0, help="of h2's packets, each way")
    ap.add_argument("--loss-seconds", type=float, default=10.0)
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: no rolling restart, short windows (results under raw/)")
    ap.add_argument("--replot", action="store_true", help="only redraw the plot from the JSON")
    args = ap.parse_args(argv)
    name = "raw/multihost_quick" if args.quick else "multihost"
    if args.replot:
        saved = json.loads((RESULTS / f"{name}.json").read_text())
        print(f"wrote {draw(saved['rows'], RESULTS / name)}")
        return 0
    reason = unavailable()
    if reason is not None:
        print(f"multihost cannot run here: {reason}")
        return 2
    print(f"multihost: {machine()}", flush=True)
    started = time.monotonic()
    with Ground(callers=args.callers) as ground:
        outcomes, failures = asyncio.run(scenarios(ground, args))
    rows = [o.to_dict() for o in outcomes]
    text, goals = report(rows, failures)
    print(text)
    data = {"callers": args.callers, "cpus": os.cpu_count(), "delay_ms": args.delay_ms,
            "delay": "user-space TCP proxy, half each way (no netem on this kernel)",
            "rows": rows, "goals": goals, "failures": failures, "wall_s": time.monotonic() - started}
    md = save(name, data, text, "Multi-host faults: three namespace hosts behind the balancer")
    png = draw(rows, RESULTS / name)
    root = RESULTS.parent.parent
    print(f"wrote {png.relative_to(root)}, {md.relative_to(root)} in {data['wall_s']:.0f} s")
    failed = [(r["scenario"], r["policy"], r["failed"]) for r in rows if r["failed"]]
    if failed or failures:
        print(f"NOT every call succeeded: {failed}; scenarios that could not finish: {list(failures)}")
    return 1 if failed or failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
