"""Scale simulation: the balancer in front of 2 to 32 stand-in hosts (``bench/standin.py``).

    python -m bench scalesim [--quick] [--hosts 2 4 8 16 32] [--service-ms 20] [--concurrency 1]

Each host answers like the service after a fixed service time, with a fixed concurrency (the rest
wait in order), at almost no CPU cost, so that the hosts' summed capacity, N x concurrency /
service time, is known and the balancer is the only thing that varies. For each host count N, in
one run:

1. one stand-in process serving N hosts on N loopback ports, and ``yoloserve lb --policy
   least_request`` in front of them (slow start off, health checked every 0.5 s), ready once
   ``/lb/status`` shows every host healthy;
2. **saturation**, closed loop, ``oversubscribe`` x N x concurrency clients (every host always
   has a request waiting): first **direct** (client i keeps one connection to host i mod N, the
   same load per host), then **through the balancer**. Throughput, the balancer's CPU per
   request and its added latency come from here;
3. **half load**, closed loop, N x concurrency / 2 clients, through the balancer, then direct:
   latency with (almost) no waiting at the hosts.

Before the sweep, two **ceilings** on hosts that take no time (service 0 ms, no concurrency
limit, the largest N): the load generator straight to them (what the generator can deliver at
most on this machine) and through the balancer (what the balancer can forward at most).

The load generator is this process: one uvloop event loop, a raw ``asyncio.Protocol`` client per
connection parsing answers with httptools (cheaper than aiohttp, so that it stays far from a
core), sending the bench's 640x480 JPEGs as multipart bodies (``harness.images.make_bodies``).
Every answer must be 200 with ``detections`` in its body, or it counts as an error (exit 1).
Latency is from the first byte written to the answer's last byte (``time.perf_counter``).
Each stand-in answer says how long the request was at its host (waiting for a slot and being
served, ``X-Standin-Us``), so every request's time splits into time at the host and time
"outside" it (the client, the loopback hops and, through the balancer, the balancer); the host's
``X-Standin-Arrived-Ns`` (``time.perf_counter``, the system's monotonic clock, the same in both
processes) splits the outside time into the way there and the way back.

**Added latency** is p50 (p99) of the outside time through the balancer minus p50 (p99) of the
outside time direct, both at saturation with the same clients per host. At saturation the
latency is mostly waiting at the hosts (a closed loop with twice the slots waits one service
time on average), and how long a request waits depends on how evenly requests spread, not on
what the balancer costs; taking each request's own time at its host out of it leaves what the
balancer adds on the way, at the load it is measured at. The half-load rows give the plain
difference (through minus direct p50 and p99 of the whole latency) as a cross-check; waits at a
host there are what least_request's placement adds.

CPU: ``psutil`` ``cpu_times`` (user + system) of the balancer's and the stand-in's processes,
and ``getrusage`` of this one, from the start to the end of the measured window (after a
warm-up); the balancer's CPU per request is its CPU seconds in the window / answers in it, its
health checks included. /proc counts CPU in clock ticks (10 ms), so a saturation window lasts
long enough for ``--min-requests`` answers at the summed capacity, and the table shows the
resolution that leaves per request. Writes ``bench/results/scalesim.{json,md,png}``
(``--quick``: under ``raw/``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import socket
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any, cast

import httptools
import httpx

from bench.common import RESULTS, machine, markdown_table, save
from bench.loadgen import CpuWatch
from bench.procs import lb
from harness.images import Body, make_bodies, make_images
from harness.procs import LOGS, ROOT, Balancer, Fleet, Proc, wait_all_healthy
from harness.stats import percentile
from service.heap import frozen_heap

__all__ = ["RunResult", "drive", "free_ports", "main", "standin"]

_CHECK = b'"detections"'
_HOST_US = b"x-standin-us"
_ARRIVED_NS = b"x-standin-arrived-ns"
_HOST_INDEX = b"x-standin-host"
CLOCK_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 now (all bound at once, so the kernel cannot hand
    out one twice, then closed for the caller to use)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                 for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def standin(name: str, ports: Sequence[int], service_ms: float, concurrency: int) -> Proc:
    """``python -m bench.standin``: one host per port; ready when the first answers (all bind
    before any serves)."""
    cmd = [sys.executable, "-m", "bench.standin", "--ports", *map(str, ports),
           "--service-ms", str(service_ms), "--concurrency", str(concurrency)]
    return Proc(name, cmd, ports[0], stdout=LOGS / f"{name}.log", ready_timeout=30.0, poll_max=None)


def standin_stats(proc: Proc) -> list[dict[str, Any]]:
    hosts: list[dict[str, Any]] = httpx.get(proc.url + "/standin/stats", timeout=5.0).json()["hosts"]
    return hosts


# -- the load generator --------------------------------------------------------------------------


@dataclass
class RunResult:
    target: str  # "direct" | "lb"
    load: str  # "saturation" | "half" | "ceiling"
    hosts: int
    clients: int
    seconds: float
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    rps: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    outside_p50_ms: float = float("nan")  # latency minus the request's own time at its host
    outside_p99_ms: float = float("nan")
    there_p50_ms: float = float("nan")  # the way there: the first byte sent to the host's parse
    back_p50_ms: float = float("nan")  # the way back: the host's answer to its last byte here
    host_mean_ms: float = float("nan")  # time at the host (waiting + service), mean
    per_host_min: int = 0  # answers in the window of the least and the most used host
    per_host_max: int = 0
    cpu: dict[str, float] = field(default_factory=dict)  # % of one core in the window

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        errs = f" errors={self.errors}" if self.errors else ""
        cpu = " ".join(f"{k[4:-4]}={v:.0f}%" for k, v in self.cpu.items())
        return (f"{self.target:6s} {self.load:10s} N={self.hosts:<2d} c={self.clients:<3d} "
                f"{self.rps:7.1f} req/s p50={self.p50_ms:.2f} p99={self.p99_ms:.2f} ms "
                f"outside p50={self.outside_p50_ms:.3f} p99={self.outside_p99_ms:.3f} ms "
                f"(there {self.there_p50_ms:.3f}, back {self.back_p50_ms:.3f}) "
                f"(n={self.ok}{errs}) cpu[{cpu}]")


class _Run:
    """What the clients of one closed-loop run share: the window, the samples, the errors."""

    def __init__(self, loop: asyncio.AbstractEventLoop, start: float, end: float,
                 heads: Sequence[bytes], bodies: Sequence[bytes]) -> None:
        self.loop, self.start, self.end = loop, start, end
        self.heads, self.bodies = heads, bodies
        self.next = 0
        self.latency: list[float] = []  # seconds, answers that arrived in the window
        self.at_host: list[float] = []
        self.there: list[float] = []  # seconds from the send to the host's parse
        self.host_index: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.busy = 0  # requests in flight
        self.drained = asyncio.Event()

    def in_window(self, t: float) -> bool:
        return self.start <= t <= self.end

    def error(self, what: str, t: float) -> None:
        if self.in_window(t) or t > self.end:
            self.errors[what] += 1

    def done_one(self) -> None:
        self.busy -= 1
        if self.busy == 0 and self.loop.time() >= self.end:
            self.drained.set()


class _Client(asyncio.Protocol):
    """One keep-alive connection sending its next request when the answer arrives."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.t0 = 0.0
        self.in_flight = False
        self.host_us = -1
        self.arrived_ns = -1
        self.host_index = -1
        self.body = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def send(self) -> None:
        run = self.run
        if self.transport is None or self.transport.is_closing() or run.loop.time() >= run.end:
            return
        i = run.next % len(run.bodies)
        run.next += 1
        self.host_us, self.arrived_ns, self.host_index, self.body = -1, -1, -1, b""
        self.in_flight = True
        run.busy += 1
        self.t0 = perf_counter()
        self.transport.writelines((run.heads[i], run.bodies[i]))

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail("bad_http")
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(type(exc).__name__ if exc else "ConnectionClosed")

    def _fail(self, what: str) -> None:
        if self.in_flight:
            self.in_flight = False
            self.run.error(what, self.run.loop.time())
            self.run.done_one()

    # -- httptools callbacks -------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == _HOST_US:
            self.host_us = int(value)
        elif lowered == _ARRIVED_NS:
            self.arrived_ns = int(value)
        elif lowered == _HOST_INDEX:
            self.host_index = int(value)

    def on_body(self, body: bytes) -> None:
        if len(self.body) < 4096:
            self.body += body

    def on_message_complete(self) -> None:
        t1 = perf_counter()
        run = self.run
        now = run.loop.time()
        self.in_flight = False
        status = self.parser.get_status_code()
        if run.in_window(now):
            if status != 200:
                run.errors[str(status)] += 1
            elif _CHECK not in self.body or self.host_us < 0:
                run.errors["bad_body"] += 1
            else:
                run.latency.append(t1 - self.t0)
                run.at_host.append(self.host_us / 1e6)
                run.there.append(self.arrived_ns / 1e9 - self.t0)
                run.host_index[self.host_index] += 1
        elif status != 200 and now > run.end:
            run.errors[str(status)] += 1
        run.done_one()
        self.send()


def request_heads(bodies: Sequence[Body]) -> list[bytes]:
    """The request line and headers of each body, built once."""
    return [(f"POST /v1/detect HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: {b.content_type}\r\n"
             f"content-length: {len(b.data)}\r\n\r\n").encode() for b in bodies]


async def _drive(targets: Sequence[tuple[str, int]], clients: int, seconds: float, warmup: float,
                 heads: Sequence[bytes], bodies: Sequence[bytes], watch: CpuWatch,
                 res: RunResult, drain_timeout: float) -> RunResult:
    loop = asyncio.get_running_loop()
    run = _Run(loop, 0.0, 0.0, heads, bodies)
    conns: list[_Client] = []
    for i in range(clients):
        host, port = targets[i % len(targets)]
        _, proto = await loop.create_connection(lambda: _Client(run), host, port)
        conns.append(proto)
    run.start = loop.time() + warmup
    run.end = run.start + seconds
    for c in conns:
        c.send()
    await asyncio.sleep(max(0.0, run.start - loop.time()))
    watch.start()
    await asyncio.sleep(max(0.0, run.end - loop.time()))
    res.cpu = watch.stop()
    if run.busy > 0:
        try:
            await asyncio.wait_for(run.drained.wait(), drain_timeout)
        except TimeoutError:
            for c in conns:
                if c.in_flight:
                    c._fail("timeout")
    for c in conns:
        if c.transport is not None:
            c.in_flight = False
            c.transport.close()
    await asyncio.sleep(0)
    res.ok = len(run.latency)
    res.errors = dict(run.errors)
    res.rps = res.ok / seconds
    if run.latency:
        lat = [x * 1e3 for x in run.latency]
        outside = [(x - h) * 1e3 for x, h in zip(run.latency, run.at_host, strict=True)]
        res.p50_ms, res.p99_ms = percentile(lat, 50), percentile(lat, 99)
        res.outside_p50_ms, res.outside_p99_ms = percentile(outside, 50), percentile(outside, 99)
        res.host_mean_ms = 1e3 * sum(run.at_host) / len(run.at_host)
        there = [x * 1e3 for x in run.there]
        back = [o - t for o, t in zip(outside, there, strict=True)]
        res.there_p50_ms, res.back_p50_ms = percentile(there, 50), percentile(back, 50)
        counts = [run.host_index.get(i, 0) for i in range(res.hosts)]
        res.per_host_min, res.per_host_max = min(counts), max(counts)
    return res


def drive(targets: Sequence[tuple[str, int]], clients: int, seconds: float, *, warmup: float,
          heads: Sequence[bytes], bodies: Sequence[bytes], res: RunResult,
          pids: dict[str, int] | None = None, drain_timeout: float = 10.0) -> RunResult:
    """A closed loop of ``clients`` connections (client i to ``targets[i % len]``) for ``seconds``
    after ``warmup``, on a fresh uvloop loop with this process's heap frozen."""
    import uvloop

    watch = CpuWatch(pids)
    with frozen_heap(), asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_drive(targets, clients, seconds, warmup, heads, bodies, watch, res,
                                 drain_timeout))


# -- the sweep -----------------------------------------------------------------------------------


def _lb_code() -> str:
    """A digest of the balancer's sources as measured (others may be changing them)."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "loadbalancer").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _stats_delta(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> float:
    """Mean service time (ms) of the requests served between two snapshots."""
    served = sum(a["served"] - b["served"] for a, b in zip(after, before, strict=True))
    total = sum(a["service_total_s"] - b["service_total_s"] for a, b in zip(after, before, strict=True))
    return 1e3 * total / served if served else float("nan")


def _run(args: argparse.Namespace, label: str, targets: Sequence[tuple[str, int]], clients: int,
         seconds: float, res: RunResult, heads: list[bytes], bodies: list[bytes],
         pids: dict[str, int]) -> dict[str, Any]:
    res = drive(targets, clients, seconds, warmup=args.warmup, heads=heads, bodies=bodies, res=res,
                pids=pids)
    row = res.to_dict()
    if res.ok:
        for who in ("lb", "standin", "loadgen"):
            pct = res.cpu.get(f"cpu_{who}_pct")
            if pct is not None:
                row[f"{who}_cpu_us_per_req"] = pct / 100 * seconds / res.ok * 1e6
        row["cpu_resolution_us_per_req"] = CLOCK_TICK_S / res.ok * 1e6
    print(f"{label}: {res.summary()}", flush=True)
    return row


def ceilings(args: argparse.Namespace, heads: list[bytes], bodies: list[bytes]) -> list[dict[str, Any]]:
    n = max(args.hosts)
    clients = args.oversubscribe * n * args.concurrency
    ports = free_ports(n)
    fake = standin("scalesim_ceiling_standin", ports, 0.0, 1 << 20)
    rows = []
    with Fleet(fake):
        balancer = lb("scalesim_ceiling_lb", [f"http://127.0.0.1:{p}" for p in ports],
                      "--policy", args.policy)
        with Fleet(balancer):
            wait_all_healthy(balancer)
            direct = [("127.0.0.1", p) for p in ports]
            pids = {"standin": fake.pid}
            rows.append(_run(args, "ceiling", direct, clients, args.ceiling_seconds,
                             RunResult("direct", "ceiling", n, clients, args.ceiling_seconds),
                             heads, bodies, pids))
            rows.append(_run(args, "ceiling", [("127.0.0.1", balancer.port)], clients,
                             args.ceiling_seconds,
                             RunResult("lb", "ceiling", n, clients, args.ceiling_seconds),
                             heads, bodies, {**pids, "lb": balancer.pid}))
    return rows


def sweep(args: argparse.Namespace, heads: list[bytes], bodies: list[bytes]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for n in args.hosts:
        ports = free_ports(n)
        capacity = n * args.concurrency / (args.service_ms / 1e3)
        sat_clients = args.oversubscribe * n * args.concurrency
        half_clients = max(1, n * args.concurrency // 2)
        sat_seconds = max(args.seconds, args.min_requests / capacity)
        fake = standin(f"scalesim_standin_{n}", ports, args.service_ms, args.concurrency)
        with Fleet(fake):
            balancer: Balancer = lb(f"scalesim_lb_{n}", [f"http://127.0.0.1:{p}" for p in ports],
                                    "--policy", args.policy)
            with Fleet(balancer):
                wait_all_healthy(balancer)
                direct = [("127.0.0.1", p) for p in ports]
                through = [("127.0.0.1", balancer.port)]
                pids = {"lb": balancer.pid, "standin": fake.pid}
                plan = [("direct", "saturation", direct, sat_clients, sat_seconds),
                        ("lb", "saturation", through, sat_clients, sat_seconds),
                        ("lb", "half", through, half_clients, args.seconds),
                        ("direct", "half", direct, half_clients, args.seconds)]
                for target, load, where, clients, seconds in plan:
                    before = standin_stats(fake)
                    row = _run(args, f"N={n}", where, clients, seconds,
                               RunResult(target, load, n, clients, seconds), heads, bodies, pids)
                    row["service_mean_ms"] = _stats_delta(before, standin_stats(fake))
                    row["capacity_rps"] = capacity
                    rows.append(row)
    return rows


# -- the report ----------------------------------------------------------------------------------


def _find(rows: list[dict[str, Any]], target: str, load: str, n: int) -> dict[str, Any] | None:
    return next((r for r in rows if r["target"] == target and r["load"] == load and r["hosts"] == n),
                None)


def _f(x: float | None, nd: int = 1) -> str:
    return "-" if x is None or x != x else f"{x:.{nd}f}"


def summarise(rows: list[dict[str, Any]], service_ms: float) -> list[dict[str, Any]]:
    """One line per host count with the figures the goals use."""
    out = []
    for n in sorted({r["hosts"] for r in rows if r["load"] != "ceiling"}):
        lb_sat, dir_sat = _find(rows, "lb", "saturation", n), _find(rows, "direct", "saturation", n)
        lb_half, dir_half = _find(rows, "lb", "half", n), _find(rows, "direct", "half", n)
        if lb_sat is None or dir_sat is None or lb_half is None or dir_half is None:
            continue
        capacity = lb_sat["capacity_rps"]
        out.append({
            "hosts": n, "capacity_rps": capacity,
            "direct_rps": dir_sat["rps"], "lb_rps": lb_sat["rps"],
            "lb_vs_capacity": lb_sat["rps"] / capacity,
            # what the hosts could serve at the service time they actually kept (timers run late)
            "effective_capacity_rps": capacity * service_ms / lb_sat["service_mean_ms"],
            "service_mean_ms": lb_sat["service_mean_ms"],
            "added_p50_ms": lb_sat["outside_p50_ms"] - dir_sat["outside_p50_ms"],
            "added_p99_ms": lb_sat["outside_p99_ms"] - dir_sat["outside_p99_ms"],
            # the p50 of each way, through minus direct (they need not add up to the p50 above)
            "added_there_p50_ms": lb_sat["there_p50_ms"] - dir_sat["there_p50_ms"],
            "added_back_p50_ms": lb_sat["back_p50_ms"] - dir_sat["back_p50_ms"],
            "half_added_outside_p50_ms": lb_half["outside_p50_ms"] - dir_half["outside_p50_ms"],
            "half_added_p50_ms": lb_half["p50_ms"] - dir_half["p50_ms"],
            "half_added_p99_ms": lb_half["p99_ms"] - dir_half["p99_ms"],
            "lb_cpu_pct": lb_sat["cpu"].get("cpu_lb_pct", float("nan")),
            "lb_cpu_us_per_req": lb_sat.get("lb_cpu_us_per_req", float("nan")),
            "cpu_resolution_us_per_req": lb_sat.get("cpu_resolution_us_per_req", float("nan")),
            "loadgen_cpu_pct": lb_sat["cpu"].get("cpu_loadgen_pct", float("nan")),
            "standin_cpu_pct": lb_sat["cpu"].get("cpu_standin_pct", float("nan")),
            "loadgen_cpu_us_per_req": lb_sat.get("loadgen_cpu_us_per_req", float("nan")),
            "spread": f"{lb_sat['per_host_min']}-{lb_sat['per_host_max']}",
            "errors": sum(sum(r["errors"].values()) for r in (lb_sat, dir_sat, lb_half, dir_half)),
        })
    return out


def goals(summary: list[dict[str, Any]]) -> list[dict[str, str]]:
    if not summary:
        return []
    small, big = summary[0], summary[-1]
    nb, ns = big["hosts"], small["hosts"]
    ratio = big["lb_vs_capacity"]
    cpu_ratio = big["lb_cpu_us_per_req"] / small["lb_cpu_us_per_req"]
    # the CPU figures' resolution: one clock tick of the window either way
    cpu_lo = ((big["lb_cpu_us_per_req"] - big["cpu_resolution_us_per_req"])
              / (small["lb_cpu_us_per_req"] + small["cpu_resolution_us_per_req"]))
    cpu_hi = ((big["lb_cpu_us_per_req"] + big["cpu_resolution_us_per_req"])
              / max(small["lb_cpu_us_per_req"] - small["cpu_resolution_us_per_req"], 1e-9))
    return [
        {"goal": f"at {nb} hosts the balancer delivers ≥ 0.9 × their summed capacity",
         "measured": f"{ratio:.3f} ×",
         "figures": f"{big['lb_rps']:.1f} req/s vs {nb} × concurrency / service time = "
                    f"{big['capacity_rps']:.0f} req/s; direct, same clients: {big['direct_rps']:.1f} "
                    f"req/s; hosts' measured mean service {big['service_mean_ms']:.2f} ms "
                    f"(capacity at that: {big['effective_capacity_rps']:.0f} req/s)",
         "met": "met" if ratio >= 0.9 else "NOT met"},
        {"goal": f"its added p50 at {nb} hosts < 1 ms",
         "measured": f"{big['added_p50_ms']:.3f} ms (p99 {big['added_p99_ms']:.3f} ms)",
         "figures": f"at saturation, latency outside the hosts, through minus direct (p50 of the "
                    f"way there +{big['added_there_p50_ms']:.3f} ms, of the way back "
                    f"+{big['added_back_p50_ms']:.3f} ms); at half load, whole latency through "
                    f"minus direct: p50 {big['half_added_p50_ms']:.3f} ms, p99 "
                    f"{big['half_added_p99_ms']:.3f} ms (outside the hosts: p50 "
                    f"{big['half_added_outside_p50_ms']:.3f} ms)",
         "met": "met" if big["added_p50_ms"] < 1.0 else "NOT met"},
        {"goal": f"CPU per request at {nb} hosts within 1.3 × that at {ns}",
         "measured": f"{cpu_ratio:.3f} ×",
         "figures": f"{big['lb_cpu_us_per_req']:.1f} vs {small['lb_cpu_us_per_req']:.1f} µs/request "
                    f"({big['lb_cpu_pct']:.0f} % and {small['lb_cpu_pct']:.0f} % of a core); "
                    f"within the clock-tick resolution the ratio is {cpu_lo:.3f}–{cpu_hi:.3f} ×",
         "met": "met" if cpu_ratio <= 1.3 else "NOT met"},
    ]


def report(data: dict[str, Any]) -> str:
    rows, summary, goal_rows = data["rows"], data["summary"], data["goals"]
    s = data["settings"]
    main_rows = [{
        "hosts": x["hosts"], "capacity req/s": f"{x['capacity_rps']:.0f}",
        "direct req/s": _f(x["direct_rps"]), "lb req/s": _f(x["lb_rps"]),
        "lb / capacity": _f(x["lb_vs_capacity"], 3), "host service ms": _f(x["service_mean_ms"], 2),
        "added p50 ms": _f(x["added_p50_ms"], 3), "added p99 ms": _f(x["added_p99_ms"], 3),
        "added p50 there / back ms": f"{_f(x['added_there_p50_ms'], 3)} / {_f(x['added_back_p50_ms'], 3)}",
        "half-load added p50 / p99 ms": f"{_f(x['half_added_p50_ms'], 3)} / {_f(x['half_added_p99_ms'], 3)}",
        "lb cpu %": _f(x["lb_cpu_pct"], 0), "lb cpu µs/req": _f(x["lb_cpu_us_per_req"], 1),
        "± µs/req": _f(x["cpu_resolution_us_per_req"], 1),
        "loadgen cpu %": _f(x["loadgen_cpu_pct"], 0), "stand-in cpu %": _f(x["standin_cpu_pct"], 0),
        "per-host answers min-max": x["spread"], "errors": x["errors"]} for x in summary]
    run_rows = [{
        "hosts": r["hosts"], "target": r["target"], "load": r["load"], "clients": r["clients"],
        "s": _f(r["seconds"], 1), "req/s": _f(r["rps"]), "p50 ms": _f(r["p50_ms"], 2),
        "p99 ms": _f(r["p99_ms"], 2), "outside p50 ms": _f(r["outside_p50_ms"], 3),
        "outside p99 ms": _f(r["outside_p99_ms"], 3),
        "there / back p50 ms": f"{_f(r['there_p50_ms'], 3)} / {_f(r['back_p50_ms'], 3)}",
        "at host ms": _f(r["host_mean_ms"], 2),
        "n": r["ok"], "errors": sum(r["errors"].values()),
        "cpu % (one core)": ", ".join(f"{k[4:-4]} {v:.0f}" for k, v in r["cpu"].items())}
        for r in data["ceilings"] + rows]
    method = (
        f"Stand-in hosts: service {s['service_ms']} ms, concurrency {s['concurrency']} each "
        f"({1e3 * s['concurrency'] / s['service_ms']:.0f} req/s per host); balancer `yoloserve lb "
        f"--policy {s['policy']}` (sources digest {data['lb_code']}); saturation: "
        f"{s['oversubscribe']} × the hosts' slots in clients, closed loop, ≥ {s['seconds']} s and "
        f"≥ {s['min_requests']} answers at capacity after {s['warmup']} s of warm-up; half load: "
        f"half the slots, {s['seconds']} s. Bodies: {s['images']} distinct {s['image_size']} JPEGs, "
        f"multipart, {data['body_bytes_mean'] / 1024:.0f} KiB on average. Capacity = hosts × "
        f"concurrency / service time (nominal). Added latency: p50 "
        f"(p99) of each request's time outside its host (latency minus the host's own "
        f"`X-Standin-Us`), through the balancer minus direct, both at saturation; half-load "
        f"columns: whole latency through minus direct. CPU: psutil user + system over the "
        f"measured window / answers in it (± one clock tick of {CLOCK_TICK_S * 1e3:.0f} ms). "
        f"Run took {data['wall_s']:.0f} s.")
    return "\n\n".join([
        "## How it was measured", method,
        "## Per host count (saturation unless said)",
        markdown_table(main_rows, list(main_rows[0]) if main_rows else []),
        "## Goals", markdown_table(goal_rows, ["goal", "measured", "figures", "met"]),
        "## Every run (ceilings: hosts that take no time)",
        markdown_table(run_rows, list(run_rows[0]) if run_rows else [])])


def draw(data: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from bench.plots import save_figure  # sets the Agg backend

    summary = data["summary"]
    hosts = [x["hosts"] for x in summary]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    ax = axes[0]
    ax.plot(hosts, [x["direct_rps"] / x["capacity_rps"] for x in summary], marker="s",
            label="direct")
    ax.plot(hosts, [x["lb_rps"] / x["capacity_rps"] for x in summary], marker="o",
            label="through the balancer")
    ax.axhline(0.9, color="red", linestyle="--", alpha=0.4, label="0.9 (goal)")
    ceiling = ", ".join(f"{row['target']} {row['rps']:.0f}" for row in data["ceilings"])
    ax.plot([], [], " ", label=f"ceilings, 0 ms hosts (req/s): {ceiling}")
    ax.set_ylabel("req/s ÷ summed capacity, saturation")
    ax.set_title("Throughput against the hosts' capacity")
    ax = axes[1]
    ax.plot(hosts, [x["added_p50_ms"] for x in summary], marker="o", label="p50, saturation")
    ax.plot(hosts, [x["added_p99_ms"] for x in summary], marker="x", label="p99, saturation")
    ax.plot(hosts, [x["half_added_p50_ms"] for x in summary], marker=".", linestyle=":",
            label="p50, half load (whole latency)")
    ax.axhline(1.0, color="red", linestyle="--", alpha=0.4, label="1 ms")
    ax.set_ylabel("ms added by the balancer")
    ax.set_title("Added latency (through minus direct)")
    ax = axes[2]
    ax.errorbar(hosts, [x["lb_cpu_us_per_req"] for x in summary],
                yerr=[x["cpu_resolution_us_per_req"] for x in summary], marker="o", capsize=3,
                label="balancer")
    ax.plot(hosts, [x["loadgen_cpu_us_per_req"] for x in summary], marker="s", label="load generator")
    ax.set_ylabel("CPU µs per request")
    ax.set_title("CPU per request")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(hosts, [str(h) for h in hosts])
        ax.set_xlabel("stand-in hosts")
        ax.set_ylim(bottom=0, top=max(1.1, ax.get_ylim()[1]))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    s = data["settings"]
    fig.suptitle(f"Scale simulation: yoloserve lb ({s['policy']}) in front of stand-in hosts, "
                 f"{s['service_ms']} ms × concurrency {s['concurrency']} each")
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench scalesim",
                                 description="the balancer in front of 2 to 32 stand-in hosts")
    ap.add_argument("--hosts", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    ap.add_argument("--service-ms", type=float, default=20.0)
    ap.add_argument("--concurrency", type=int, default=1, help="per host")
    ap.add_argument("--oversubscribe", type=int, default=2, help="saturation clients per host slot")
    ap.add_argument("--policy", default="least_request")
    ap.add_argument("--seconds", type=float, default=8.0, help="measured window per run (at least)")
    ap.add_argument("--min-requests", type=int, default=1500,
                    help="a saturation window lasts long enough for this many answers at capacity")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--ceiling-seconds", type=float, default=4.0)
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--image-size", default="640x480", help="WxH of the JPEGs sent")
    ap.add_argument("--name", default=None,
                    help="results as bench/results/NAME.{json,md,png} (default: scalesim)")
    ap.add_argument("--quick", action="store_true", help="a smoke run (results under raw/)")
    ap.add_argument("--replot", action="store_true", help="only redraw the plot from the JSON")
    args = ap.parse_args(argv)
    if args.quick:
        args.hosts, args.seconds, args.warmup, args.min_requests = [2, 4], 1.0, 0.5, 0
        args.ceiling_seconds, args.images = 1.0, 8
    args.hosts = sorted(set(args.hosts))
    name = args.name or ("raw/scalesim_quick" if args.quick else "scalesim")
    width, height = (int(x) for x in args.image_size.lower().split("x"))
    if args.replot:
        saved = json.loads((RESULTS / f"{name}.json").read_text())
        print(f"wrote {draw(saved, RESULTS / f'{name}.png')}")
        return 0
    print(f"scalesim: {machine()}", flush=True)
    started = time.monotonic()
    encoded = make_bodies(make_images(args.images, width, height))
    heads, bodies = request_heads(encoded), [b.data for b in encoded]
    lb_code = _lb_code()
    ceiling_rows = ceilings(args, heads, bodies)
    rows = sweep(args, heads, bodies)
    summary = summarise(rows, args.service_ms)
    data: dict[str, Any] = {
        "settings": {k: getattr(args, k) for k in ("hosts", "service_ms", "concurrency",
                                                   "oversubscribe", "policy", "seconds",
                                                   "min_requests", "warmup", "ceiling_seconds",
                                                   "images", "image_size")},
        "lb_code": lb_code, "ceilings": ceiling_rows, "rows": rows, "summary": summary,
        "goals": goals(summary), "wall_s": time.monotonic() - started,
        "body_bytes_mean": sum(map(len, bodies)) / len(bodies)}
    text = report(data)
    print(text)
    md = save(name, data, text, "Scale simulation: the balancer in front of 2 to 32 stand-in hosts")
    png = draw(data, RESULTS / f"{name}.png")
    print(f"wrote {png.relative_to(ROOT)}, {md.relative_to(ROOT)} in {data['wall_s']:.0f} s")
    bad = [(r["target"], r["load"], r["hosts"], r["errors"]) for r in ceiling_rows + rows if r["errors"]]
    if bad:
        print(f"NOT every answer was 200: {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
