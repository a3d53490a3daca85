"""The balancer against nginx, on the same backends, with the same load generator, in one run.

Starts N fake backends (uvicorn with uvloop and httptools, ``harness/backend_app.py``),
our balancer (``python -m loadbalancer``, default settings) and nginx (``least_conn`` upstream
with keep-alive, one worker, config in a temp dir, not daemonised; ``keepalive_requests`` raised
on both sides so that, like ours, it does not close a connection after 1,000 requests; a second
port of it, ``nginx-fwd``, also sends the two request headers ours adds, X-Forwarded-For and
X-Request-Timeout-Ms, so that the backends do the same work behind both); and, unless ``--no-tls``, a
second balancer terminating TLS (``--tls-cert``/``--tls-key``) and an HTTPS server of the same
nginx, both with a self-signed P-256 certificate made by ``openssl``. wrk POSTs a 2 KB body to
``/v1/detect`` through a Lua script, on keep-alive connections (over TLS: one handshake per
connection). Targets are measured in interleaved rounds (direct to one backend, ours, nginx,
nginx-fwd, ours-tls, nginx-tls, again), and each figure is the median over the rounds, so that a noisy
machine moves all of them alike; the ratios are ours / nginx within each round. Two phases per
target: ``load`` (many connections: throughput) and ``light`` (one connection: the latency a
proxy adds). With ``--profile`` (py-spy installed), one more load run through our plain balancer
is sampled by ``py-spy record`` (``bench/pyspy.py``): where its time goes.

    python -m bench lb [--backends 2] [--duration 8] [--rounds 3] [--connections 64] [--no-tls]
                       [--profile]

Needs ``nginx`` and ``wrk`` on PATH (Debian: ``apt-get install -y nginx wrk``) and ``openssl``
for TLS; Linux only (proxy CPU is read from /proc). Writes ``bench/results/lb_vs_nginx.{json,md}``
(and the profile's raw stacks in ``bench/results/raw/lb_profile.txt``).
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

from bench import pyspy
from bench.common import markdown_table, save
from harness.procs import ROOT, Balancer, FakeBackend, Fleet, Proc, free_port

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
    keepalive_requests 1000000;
  }}
{server_blocks}}}
"""
NGINX_SERVER = """  server {{
    listen 127.0.0.1:{port};
{tls}
    client_max_body_size 11m;
    client_body_buffer_size 64k;
    keepalive_requests 1000000;
    location / {{
      proxy_pass http://backends;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Request-ID $request_id;
{headers}
    }}
  }}
"""
# nginx-fwd: also the two request headers our balancer adds
FWD_HEADERS = """      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Request-Timeout-Ms 30000;"""
# nginx's HTTPS: the same server on a second port; TLS 1.2 and 1.3, a session cache and tickets.
NGINX_TLS = """    listen 127.0.0.1:{port} ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;"""
PROFILE_RAW = ROOT / "bench" / "results" / "raw" / "lb_profile.txt"
PROFILE_RATE = 200
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


def start_ours(
    stack: ExitStack, backends: list[int], *args: str, name: str = "ours"
) -> tuple[int, list[int]]:
    """Our balancer with its default settings (none from this environment) and ``args``."""
    urls = [f"http://127.0.0.1:{b}" for b in backends]
    ours = Balancer(name, urls, *args, drop_env=("YOLOSERVE_LB_",), ready_timeout=30.0, stop_timeout=10.0)
    stack.enter_context(ours)
    return ours.port, [ours.pid]


def make_certificate(tmp: Path) -> tuple[Path, Path]:
    """A self-signed P-256 certificate for 127.0.0.1 (wrk does not verify it)."""
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


def start_nginx(
    stack: ExitStack, backends: list[int], tmp: Path, tls: tuple[Path, Path] | None
) -> tuple[int, int, int | None, list[int]]:
    """nginx on a plain port, a second plain port that forwards the headers ours adds (``fwd``)
    and, with ``tls`` (certificate, key), an HTTPS one."""
    port, fwd_port, tls_port = free_port(), free_port(), (free_port() if tls else None)
    servers = "\n".join(f"    server 127.0.0.1:{b};" for b in backends)
    tls_lines = NGINX_TLS.format(port=tls_port, cert=tls[0], key=tls[1]) if tls else ""
    conf = tmp / "nginx.conf"
    blocks = NGINX_SERVER.format(port=port, tls=tls_lines, headers="")
    blocks += NGINX_SERVER.format(port=fwd_port, tls="", headers=FWD_HEADERS)
    conf.write_text(NGINX_CONF.format(tmp=tmp, servers=servers, server_blocks=blocks))
    nginx = Proc("nginx", ["nginx", "-c", str(conf), "-p", str(tmp)], port, ready_path="/health/live",
                 ready_timeout=30.0, poll_max=None, stop_timeout=10.0)
    stack.enter_context(nginx)
    children = subprocess.run(["pgrep", "-P", str(nginx.pid)], capture_output=True, text=True)
    return port, fwd_port, tls_port, [nginx.pid, *map(int, children.stdout.split())]


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


def round_ratios(runs: list[Run], ours: str = "ours", nginx: str = "nginx") -> list[float]:
    """``ours`` / ``nginx`` throughput within each round (runs taken side by side)."""
    by = {(r.target, r.round): r.rps for r in runs if r.phase == "load"}
    rounds = sorted({r.round for r in runs})
    return [by[(ours, n)] / by[(nginx, n)] for n in rounds]


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
    summary["ours"]["fwd_round_ratio"] = statistics.median(round_ratios(runs, "ours", "nginx-fwd"))
    if "ours-tls" in summary:
        summary["ours-tls"]["round_ratio"] = statistics.median(round_ratios(runs, "ours-tls", "nginx-tls"))
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
        "fwd_ratio_rps_ours_over_nginx_fwd": f(ours["rps"]) / f(summary["nginx-fwd"]["rps"]),
        "fwd_ratio_rps_median_of_rounds": f(ours["fwd_round_ratio"]),
        "added_p50_ms_ours": f(ours["light_p50_ms"]) - f(direct["light_p50_ms"]),
        "added_p99_ms_ours": f(ours["light_p99_ms"]) - f(direct["light_p99_ms"]),
        "added_p50_ms_nginx": f(nginx["light_p50_ms"]) - f(direct["light_p50_ms"]),
        "added_p99_ms_nginx": f(nginx["light_p99_ms"]) - f(direct["light_p99_ms"]),
    }
    if "ours-tls" in summary:
        ours_tls, nginx_tls = summary["ours-tls"], summary["nginx-tls"]
        verdict["tls_ratio_rps_ours_over_nginx"] = f(ours_tls["rps"]) / f(nginx_tls["rps"])
        verdict["tls_ratio_rps_median_of_rounds"] = f(ours_tls["round_ratio"])
    return rows, verdict


def run_all(args: argparse.Namespace) -> tuple[list[Run], pyspy.Profile | None]:
    """Starts everything, measures (then profiles ours, if asked), stops everything."""
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lb-vs-nginx-")))
        lua = tmp / "post.lua"
        lua.write_text(LUA)
        tls = make_certificate(tmp) if args.tls else None
        backends = start_backends(stack, args.backends)
        ours_port, ours_pids = start_ours(stack, backends)
        nginx_port, fwd_port, nginx_tls_port, nginx_pids = start_nginx(stack, backends, tmp, tls)
        targets = {
            "direct": (f"http://127.0.0.1:{backends[0]}", []),
            "ours": (f"http://127.0.0.1:{ours_port}", ours_pids),
            "nginx": (f"http://127.0.0.1:{nginx_port}", nginx_pids),
            "nginx-fwd": (f"http://127.0.0.1:{fwd_port}", nginx_pids),
        }
        if tls is not None:
            tls_args = ("--tls-cert", str(tls[0]), "--tls-key", str(tls[1]))
            ours_tls_port, ours_tls_pids = start_ours(stack, backends, *tls_args, name="ours-tls")
            targets["ours-tls"] = (f"https://127.0.0.1:{ours_tls_port}", ours_tls_pids)
            targets["nginx-tls"] = (f"https://127.0.0.1:{nginx_tls_port}", nginx_pids)
        runs = measure(targets, lua, args)
        profile = None
        if args.profile:
            url, pids = targets["ours"]
            profile = profile_ours(url, pids[0], lua, args)
        return runs, profile


def profile_ours(url: str, pid: int, lua: Path, args: argparse.Namespace) -> pyspy.Profile:
    """One more load run through our plain balancer, sampled by py-spy throughout."""
    PROFILE_RAW.parent.mkdir(parents=True, exist_ok=True)
    seconds = max(1, round(args.duration))
    sampler = pyspy.record(pid, seconds + 1, PROFILE_RAW, rate=PROFILE_RATE)
    result = wrk(url, lua, args.connections, seconds, [pid])
    sampler.wait(timeout=60)
    print(f"profiled  load  ours   {result[0]:8.0f} req/s (sampled by py-spy at {PROFILE_RATE} Hz)")
    return pyspy.summarise(PROFILE_RAW, expected=PROFILE_RATE * (seconds + 1))


def write(args: argparse.Namespace, runs: list[Run], profile: pyspy.Profile | None) -> str:
    """Saves JSON and markdown; returns the markdown text."""
    summary = summarise(runs)
    rows, verdict = report(summary)
    v = verdict
    lines = [
            markdown_table(rows, list(rows[0])),
            "",
            f"ours / nginx throughput: **{v['ratio_rps_ours_over_nginx']:.2f}x** (ratio of the medians; "
            f"median of the per-round ratios {v['ratio_rps_median_of_rounds']:.2f}x); added p50 "
            f"(1 connection) ours {v['added_p50_ms_ours']:.3f} ms, nginx "
            f"{v['added_p50_ms_nginx']:.3f} ms; added p99 ours {v['added_p99_ms_ours']:.3f} "
            f"ms, nginx {v['added_p99_ms_nginx']:.3f} ms.",
            "",
            f"Against nginx-fwd (the same nginx also sending the two headers ours adds to every "
            f"request, X-Forwarded-For and X-Request-Timeout-Ms, so that the backends parse and echo "
            f"the same): **{v['fwd_ratio_rps_ours_over_nginx_fwd']:.2f}x** (median of the per-round "
            f"ratios {v['fwd_ratio_rps_median_of_rounds']:.2f}x).",
    ]
    if "tls_ratio_rps_ours_over_nginx" in v:
        lines += ["", f"Over TLS (keep-alive), ours-tls / nginx-tls throughput: "
                      f"**{v['tls_ratio_rps_ours_over_nginx']:.2f}x** (median of the per-round ratios "
                      f"{v['tls_ratio_rps_median_of_rounds']:.2f}x)."]
    lines += [
            "",
            f"{args.backends} backends (uvicorn + uvloop + httptools, fake detect), wrk 1 thread, "
            f"2 KB POST; load = {args.connections} connections x {args.duration:g} s, light = 1 "
            f"connection; median of {args.rounds} interleaved rounds; nginx 1 worker, least_conn, "
            f"keepalive; ours with default settings (one process); TLS: a self-signed P-256 "
            f"certificate, TLS 1.3, keep-alive connections.",
    ]
    if profile is not None:
        lines += ["", profile_text(profile)]
    text = "\n".join(lines)
    config = {**vars(args), "generator": "wrk -t1, POST 2 KB to /v1/detect"}
    data = {"config": config, "summary": summary, "verdict": verdict, "runs": [asdict(r) for r in runs],
            "profile": profile.as_dict() if profile is not None else None}
    path = save("lb_vs_nginx", data, text, "Load balancer: ours vs nginx")
    return f"{text}\n\nsaved {path} and {path.with_suffix('.json')}"


def profile_text(profile: pyspy.Profile) -> str:
    """The profile as markdown: where the balancer's busy time went."""
    rows = [{"function (self time)": name, "share": f"{share:.1%}"} for name, share in profile.self_time]
    inclusive = [{"function (inclusive)": name, "share": f"{share:.1%}"} for name, share in profile.inclusive]
    return "\n".join([
        f"Profile of ours (plain HTTP, load phase): py-spy, {profile.samples} samples at "
        f"{PROFILE_RATE} Hz; the process was busy {profile.busy:.0%} of the time. Shares of the busy "
        f"samples (C code, such as uvloop's and httptools', counts in the Python frame that called it):",
        "",
        markdown_table(rows, list(rows[0])) if rows else "(no samples)",
        "",
        markdown_table(inclusive, list(inclusive[0])) if inclusive else "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench lb", description=__doc__.split("\n")[0])
    parser.add_argument("--backends", type=int, default=2)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per load run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--no-tls", dest="tls", action="store_false", help="plain HTTP only")
    parser.add_argument("--profile", action="store_true", help="py-spy our plain balancer under load")
    args = parser.parse_args(argv)
    missing = [tool for tool in ("nginx", "wrk", *(["openssl"] if args.tls else []))
               if shutil.which(tool) is None]
    if missing:
        print(f"missing {', '.join(missing)}: apt-get install -y nginx wrk openssl", file=sys.stderr)
        return 2
    if args.profile and not pyspy.available():
        print("--profile needs py-spy (pip install py-spy)", file=sys.stderr)
        return 2
    runs, profile = run_all(args)
    print()
    print(write(args, runs, profile))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
