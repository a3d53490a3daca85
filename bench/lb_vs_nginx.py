"""The balancer against nginx, on the same backends, with the same load generator, in one run.

Starts N fake backends (uvicorn with uvloop and httptools, ``harness/backend_app.py``),
our balancer (``python -m loadbalancer``, default settings) and nginx (``least_conn`` upstream
with keep-alive, one worker, config in a temp dir, not daemonised). wrk POSTs a 2 KB body to
``/v1/detect`` through a Lua script. Targets are measured in interleaved rounds (direct to one
backend, ours, nginx, again), and each figure is the median over the rounds, so that a noisy
machine moves all three alike. Two phases per target: ``load`` (many connections: throughput)
and ``light`` (one connection: the latency a proxy adds).

    python -m bench lb [--backends 2] [--duration 8] [--rounds 3] [--connections 64]

Needs ``nginx`` and ``wrk`` on PATH (Debian: ``apt-get install -y nginx wrk``); Linux only
(proxy CPU is read from /proc). Writes ``bench/results/lb_vs_nginx.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import markdown_table, save
from harness.procs import Balancer, FakeBackend, Fleet, Proc, free_port

LUA = """wrk.method = "POST"
wrk.body = string.rep("x", 2048)
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.path = "/v1/detect"
"""
NGINX_CONF = """worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  upstream backends {{
    least_conn;
{servers}
    keepalive 256;
  }}
  server {{
    listen 127.0.0.1:{port};
    client_max_body_size 11m;
    client_body_buffer_size 64k;
    location / {{
      proxy_pass http://backends;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Request-ID $request_id;
    }}
  }}
}}
"""
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


@dataclass
class Run:
    target: str
    phase: str
    round: int
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    proxy_cpu_us_per_request: float | None


def start_backends(stack: ExitStack, count: int) -> list[int]:
    backends = [FakeBackend(f"b{i}", stop_timeout=10.0) for i in range(count)]
    stack.enter_context(Fleet(*backends, timeout=30.0))
    return [b.port for b in backends]


def start_ours(stack: ExitStack, backends: list[int]) -> tuple[int, list[int]]:
    """Our balancer with its default settings (none from this environment)."""
    urls = [f"http://127.0.0.1:{b}" for b in backends]
    ours = Balancer("ours", urls, drop_env=("YOLOSERVE_LB_",), ready_timeout=30.0, stop_timeout=10.0)
    stack.enter_context(ours)
    return ours.port, [ours.pid]


def start_nginx(stack: ExitStack, backends: list[int], tmp: Path) -> tuple[int, list[int]]:
    port = free_port()
    servers = "\n".join(f"    server 127.0.0.1:{b};" for b in backends)
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, servers=servers, port=port))
    nginx = Proc("nginx", ["nginx", "-c", str(conf), "-p", str(tmp)], port, ready_path="/health/live",
                 ready_timeout=30.0, poll_max=None, stop_timeout=10.0)
    stack.enter_context(nginx)
    children = subprocess.run(["pgrep", "-P", str(nginx.pid)], capture_output=True, text=True)
    return port, [nginx.pid, *map(int, children.stdout.split())]


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def parse_wrk(output: str) -> tuple[float, float, float, int, int]:
    """Requests/s, p50 ms, p99 ms, requests, errors (socket errors + non-2xx)."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    pct = {
        m[0]: float(m[1]) * _UNITS[m[2]]
        for m in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
    }
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return rps, pct["50"], pct["99"], requests, errors + (int(non2xx.group(1)) if non2xx else 0)


def wrk(url: str, lua: Path, connections: int, duration: float, pids: list[int]) -> tuple[Any, ...]:
    before = cpu_seconds(pids) if pids else 0.0
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        "-s",
        str(lua),
        url,
    ]
    output = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps, p50, p99, requests, errors = parse_wrk(output)
    cpu = (cpu_seconds(pids) - before) / requests * 1e6 if pids and requests else None
    return rps, p50, p99, requests, errors, cpu


def measure(targets: dict[str, tuple[str, list[int]]], lua: Path, args: argparse.Namespace) -> list[Run]:
    runs: list[Run] = []
    for url, _ in targets.values():  # warm up pools, caches and the JIT-less interpreter alike
        wrk(url, lua, args.connections, 2.0, [])
    phases = {"load": args.connections, "light": 1}
    for round_ in range(1, args.rounds + 1):
        for phase, connections in phases.items():
            duration = args.duration if phase == "load" else max(args.duration / 2, 2.0)
            for name, (url, pids) in targets.items():
                result = wrk(url, lua, connections, duration, pids)
                runs.append(Run(name, phase, round_, *result))
                print(
                    f"round {round_} {phase:5s} {name:6s} {result[0]:8.0f} req/s  "
                    f"p50 {result[1]:.2f} ms  p99 {result[2]:.2f} ms  errors {result[4]}",
                    flush=True,
                )
    return runs


def round_ratios(runs: list[Run]) -> list[float]:
    """ours / nginx throughput within each round (runs taken side by side)."""
    by = {(r.target, r.round): r.rps for r in runs if r.phase == "load"}
    rounds = sorted({r.round for r in runs})
    return [by[("ours", n)] / by[("nginx", n)] for n in rounds]


def summarise(runs: list[Run]) -> dict[str, dict[str, float | None]]:
    summary: dict[str, dict[str, float | None]] = {}
    for target in dict.fromkeys(r.target for r in runs):
        mine = [r for r in runs if r.target == target]
        load = [r for r in mine if r.phase == "load"]
        light = [r for r in mine if r.phase == "light"]
        cpu = [r.proxy_cpu_us_per_request for r in load if r.proxy_cpu_us_per_request is not None]
        summary[target] = {
            "rps": statistics.median(r.rps for r in load),
            "p50_ms": statistics.median(r.p50_ms for r in load),
            "p99_ms": statistics.median(r.p99_ms for r in load),
            "light_p50_ms": statistics.median(r.p50_ms for r in light),
            "light_p99_ms": statistics.median(r.p99_ms for r in light),
            "errors": float(sum(r.errors for r in mine)),
            "proxy_cpu_us_per_request": statistics.median(cpu) if cpu else None,
        }
    summary["ours"]["round_ratio"] = statistics.median(round_ratios(runs))
    return summary


def report(summary: dict[str, dict[str, float | None]]) -> tuple[list[dict[str, Any]], dict[str, float]]:
    direct, ours, nginx = summary["direct"], summary["ours"], summary["nginx"]

    def f(value: float | None) -> float:
        return float("nan") if value is None else float(value)

    rows = []
    for name, s in summary.items():
        rows.append(
            {
                "target": name,
                "req/s": round(f(s["rps"])),
                "p50 ms": f(s["p50_ms"]),
                "p99 ms": f(s["p99_ms"]),
                "light p50 ms": f(s["light_p50_ms"]),
                "light p99 ms": f(s["light_p99_ms"]),
                "added light p50 ms": f(s["light_p50_ms"]) - f(direct["light_p50_ms"]),
                "added light p99 ms": f(s["light_p99_ms"]) - f(direct["light_p99_ms"]),
                "proxy CPU us/req": "-"
                if s["proxy_cpu_us_per_request"] is None
                else round(f(s["proxy_cpu_us_per_request"])),
                "errors": int(f(s["errors"])),
            }
        )
    verdict = {
        "ratio_rps_ours_over_nginx": f(ours["rps"]) / f(nginx["rps"]),
        "ratio_rps_median_of_rounds": f(ours["round_ratio"]),
        "added_p50_ms_ours": f(ours["light_p50_ms"]) - f(direct["light_p50_ms"]),
        "added_p99_ms_ours": f(ours["light_p99_ms"]) - f(direct["light_p99_ms"]),
        "added_p50_ms_nginx": f(nginx["light_p50_ms"]) - f(direct["light_p50_ms"]),
        "added_p99_ms_nginx": f(nginx["light_p99_ms"]) - f(direct["light_p99_ms"]),
    }
    return rows, verdict


def run_all(args: argparse.Namespace) -> list[Run]:
    """Starts everything, measures, stops everything."""
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lb-vs-nginx-")))
        lua = tmp / "post.lua"
        lua.write_text(LUA)
        backends = start_backends(stack, args.backends)
        ours_port, ours_pids = start_ours(stack, backends)
        nginx_port, nginx_pids = start_nginx(stack, backends, tmp)
        targets = {
            "direct": (f"http://127.0.0.1:{backends[0]}", []),
            "ours": (f"http://127.0.0.1:{ours_port}", ours_pids),
            "nginx": (f"http://127.0.0.1:{nginx_port}", nginx_pids),
        }
        return measure(targets, lua, args)


def write(args: argparse.Namespace, runs: list[Run]) -> str:
    """Saves JSON and markdown; returns the markdown text."""
    summary = summarise(runs)
    rows, verdict = report(summary)
    v = verdict
    text = "\n".join(
        [
            markdown_table(rows, list(rows[0])),
            "",
            f"ours / nginx throughput: **{v['ratio_rps_ours_over_nginx']:.2f}x** (ratio of the medians; "
            f"median of the per-round ratios {v['ratio_rps_median_of_rounds']:.2f}x); added p50 "
            f"(1 connection) ours {v['added_p50_ms_ours']:.3f} ms, nginx "
            f"{v['added_p50_ms_nginx']:.3f} ms; added p99 ours {v['added_p99_ms_ours']:.3f} "
            f"ms, nginx {v['added_p99_ms_nginx']:.3f} ms.",
            "",
            f"{args.backends} backends (uvicorn + uvloop + httptools, fake detect), wrk 1 thread, "
            f"2 KB POST; load = {args.connections} connections x {args.duration:g} s, light = 1 "
            f"connection; median of {args.rounds} interleaved rounds; nginx 1 worker, least_conn, "
            f"keepalive; ours with default settings (one process).",
        ]
    )
    config = {**vars(args), "generator": "wrk -t1, POST 2 KB to /v1/detect"}
    data = {"config": config, "summary": summary, "verdict": verdict, "runs": [asdict(r) for r in runs]}
    path = save("lb_vs_nginx", data, text, "Load balancer: ours vs nginx")
    return f"{text}\n\nsaved {path} and {path.with_suffix('.json')}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench lb", description=__doc__.split("\n")[0])
    parser.add_argument("--backends", type=int, default=2)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per load run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args(argv)
    missing = [tool for tool in ("nginx", "wrk") if shutil.which(tool) is None]
    if missing:
        print(f"missing {', '.join(missing)}: apt-get install -y nginx wrk", file=sys.stderr)
        return 2
    runs = run_all(args)
    print()
    print(write(args, runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
