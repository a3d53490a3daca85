"""gRPC against HTTP, and the balancer's gRPC side against nginx ``grpc_pass``, in one run.

Part 1, the service (``models/demo.onnx``, cache off) with ``--grpc-port``, direct and through the
balancer (``--backend`` and ``--grpc-backend`` of the same service): our HTTP client
(``/v1/detect``, ``/v1/detect/batch``) against our gRPC client (``ModelInfer`` of ``IMAGE``), for
one image a call and ``--batch`` images a call: latency at 1 client, images/s at 16 clients.

Part 2, the proxies alone: two stand-in gRPC backends (``harness/grpc_backend.py``: they answer
``ModelInfer`` at once, echoing a 2 KB input), our balancer (``--grpc-port``, default settings)
and nginx (one worker, ``grpc_pass`` to a ``least_conn`` upstream with keep-alive, h2c in and out)
in front of the same two, and one of them direct. One load generator for all three: grpc.aio
in this process, ``--channels`` channels with ``--inflight`` calls each (load: throughput) and
one channel with one call (light: the latency a proxy adds). Rounds are interleaved (direct,
ours, nginx, again) and each figure is the median over them; the ratio is ours / nginx within
each round. The proxies' CPU per call is read from /proc (it does not depend on the generator).

    python -m bench grpc [--duration 5] [--rounds 3] [--batch 8] [--skip-service] [--skip-proxies]

Needs ``nginx`` (with ``http_v2_module``) on PATH and grpcio; Linux only. Writes
``bench/results/grpc.{json,md,png}``; a run of one part alone writes ``grpc_proxies.*`` or
``grpc_service.*`` instead, leaving the last run of both as it was.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import plots
from bench.common import RESULTS, markdown_table, save
from harness.images import make_images
from harness.procs import Balancer, Fleet, GrpcBackend, Proc, Service, free_port, wait_until

NGINX_GRPC_CONF = """worker_processes 1;
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
  upstream grpc_backends {{
    least_conn;
{servers}
    keepalive 256;
  }}
  server {{
    listen 127.0.0.1:{port} http2;
    http2_max_concurrent_streams 1024;
    location / {{
      grpc_pass grpc://grpc_backends;
    }}
  }}
}}
"""
PAYLOAD = b"x" * 2048
SERVICE_ENV = {"YOLOSERVE_CACHE_ENABLED": "false", "YOLOSERVE_ACCESS_LOG": "false"}


@dataclass
class Run:
    part: str  # service | proxies
    target: str
    load: str  # service: images and clients; proxies: "load" or "light"
    round: int
    calls_per_s: float
    images_per_s: float
    p50_ms: float
    p99_ms: float
    calls: int
    errors: int
    proxy_cpu_us_per_call: float | None = None


# -- a closed-loop load: `clients` callers, each calling again as soon as it is answered ----------

async def closed_loop(call: Callable[[int], Awaitable[object]], clients: int, seconds: float
                      ) -> tuple[list[float], int]:
    """Latencies (s) of the calls that succeeded, and the count that failed."""
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def caller(index: int) -> None:
        nonlocal errors
        n = index
        while time.perf_counter() < stop_at:
            begin = time.perf_counter()
            try:
                await call(n)
            except Exception:
                errors += 1
            else:
                latencies.append(time.perf_counter() - begin)
            n += clients

    await asyncio.gather(*(caller(i) for i in range(clients)))
    return latencies, errors


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


# -- part 1: the service over HTTP and gRPC, direct and through the balancer ----------------------

async def measure_service(http_url: str, grpc_target: str, name: str, args: argparse.Namespace,
                          round_: int) -> list[Run]:
    from clients import AsyncDetectionClient, AsyncGrpcDetectionClient

    images = make_images(32)
    runs: list[Run] = []
    async with AsyncDetectionClient(http_url, model="demo", timeout=60) as http, \
            AsyncGrpcDetectionClient(grpc_target, model="demo", timeout=60) as grpc:
        protocols: dict[str, Any] = {"http": http, "grpc": grpc}
        for proto, client in protocols.items():
            async def one(n: int, client: Any = client) -> object:
                return await client.detect(images[n % len(images)])

            async def batch(n: int, client: Any = client) -> object:
                start = (n * args.batch) % len(images)
                return await client.detect_batch((images * 2)[start: start + args.batch])

            for shape, fn, per_call in (("1 image", one, 1), (f"{args.batch} images", batch,
                                                               args.batch)):
                await closed_loop(fn, 2, 1.0)  # warm up
                for clients in (1, 16):
                    lat, errors = await closed_loop(fn, clients, args.duration)
                    rate = len(lat) / args.duration
                    run = Run("service", f"{proto} {name}", f"{shape}, {clients} client"
                              f"{'s' if clients > 1 else ''}", round_, rate, rate * per_call,
                              _pct(lat, 0.5), _pct(lat, 0.99), len(lat), errors)
                    runs.append(run)
                    print(f"round {round_} {run.target:12s} {run.load:22s} "
                          f"{run.images_per_s:7.1f} img/s  p50 {run.p50_ms:7.2f} ms  "
                          f"p99 {run.p99_ms:7.2f} ms  errors {errors}", flush=True)
    return runs


def run_service(args: argparse.Namespace) -> list[Run]:
    grpc_port, lb_grpc_port = free_port(), free_port()
    service = Service("service", "--model", "demo=models/demo.onnx", "--grpc-port", str(grpc_port),
                      env=SERVICE_ENV)
    with Fleet(service, timeout=120):
        balancer = Balancer("lb", [service.url], "--grpc-port", str(lb_grpc_port),
                            "--grpc-backend", f"127.0.0.1:{grpc_port}",
                            drop_env=("YOLOSERVE_LB_",), ready_timeout=30.0)
        with Fleet(balancer):
            wait_until(lambda: _grpc_healthy(balancer, 1), 30, "the balancer's gRPC backend")
            targets = {"direct": (service.url, f"127.0.0.1:{grpc_port}"),
                       "via lb": (balancer.url, f"127.0.0.1:{lb_grpc_port}")}
            runs: list[Run] = []
            for round_ in range(1, args.service_rounds + 1):
                for name, (http_url, grpc_target) in targets.items():
                    runs += asyncio.run(measure_service(http_url, grpc_target, name, args, round_))
            return runs


def _grpc_healthy(lb: Balancer, count: int) -> bool:
    status = lb.status()
    healthy: int = sum(b["health"] == "healthy" for b in status["grpc"]["backends"])
    return healthy >= count


# -- part 2: our balancer against nginx grpc_pass on the same stand-ins --------------------------

class GrpcNginx(Proc):
    """nginx with ``grpc_pass`` (h2c only: ready when a gRPC health check through it answers)."""

    def ready(self) -> bool:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        self.check_running()
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            try:
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.RpcError:
                return False
        return True


def start_nginx(stack: ExitStack, backends: list[GrpcBackend], tmp: Path) -> tuple[int, list[int]]:
    import subprocess

    port = free_port()
    servers = "\n".join(f"    server {b.id};" for b in backends)
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_GRPC_CONF.format(tmp=tmp, servers=servers, port=port))
    nginx = GrpcNginx("nginx", ["nginx", "-c", str(conf), "-p", str(tmp)], port, ready_timeout=30.0,
                      poll_max=None, stop_timeout=10.0)
    stack.enter_context(nginx)
    children = subprocess.run(["pgrep", "-P", str(nginx.pid)], capture_output=True, text=True)
    return port, [nginx.pid, *map(int, children.stdout.split())]


async def proxy_load(target: str, channels: int, inflight: int, seconds: float
                     ) -> tuple[list[float], int]:
    import grpc

    from service.api.grpc.proto import grpc_service_pb2 as pb

    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="in", datatype="UINT8", shape=[len(PAYLOAD)])
    request.raw_input_contents.append(PAYLOAD)
    opened = [grpc.aio.insecure_channel(target) for _ in range(channels)]
    try:
        methods = [c.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                 request_serializer=pb.ModelInferRequest.SerializeToString,
                                 response_deserializer=pb.ModelInferResponse.FromString)
                   for c in opened]

        async def call(n: int) -> object:
            return await methods[n % channels](request, timeout=10)

        return await closed_loop(call, channels * inflight, seconds)
    finally:
        for c in opened:
            await c.close()


def measure_proxies(targets: dict[str, tuple[str, list[int]]], args: argparse.Namespace
                    ) -> list[Run]:
    runs: list[Run] = []
    for target, _ in targets.values():  # warm up connections and pools alike
        asyncio.run(proxy_load(target, args.channels, args.inflight, 1.0))
    phases = {"load": (args.channels, args.inflight), "light": (1, 1)}
    for round_ in range(1, args.rounds + 1):
        for phase, (channels, inflight) in phases.items():
            for name, (target, pids) in targets.items():
                before = cpu_seconds(pids) if pids else 0.0
                lat, errors = asyncio.run(proxy_load(target, channels, inflight, args.duration))
                rate = len(lat) / args.duration
                cpu = ((cpu_seconds(pids) - before) / len(lat) * 1e6) if pids and lat else None
                run = Run("proxies", name, phase, round_, rate, rate, _pct(lat, 0.5),
                          _pct(lat, 0.99), len(lat), errors, cpu)
                runs.append(run)
                print(f"round {round_} {phase:5s} {name:6s} {rate:8.0f} calls/s  "
                      f"p50 {run.p50_ms:.3f} ms  p99 {run.p99_ms:.3f} ms  errors {errors}"
                      + (f"  proxy CPU {cpu:.0f} us/call" if cpu is not None else ""), flush=True)
    return runs


def run_proxies(args: argparse.Namespace) -> list[Run]:
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="grpc-vs-nginx-")))
        backends = [GrpcBackend("a"), GrpcBackend("b")]
        stack.enter_context(Fleet(*backends, timeout=30.0))
        lb_port = free_port()
        ours = Balancer("ours", (), "--grpc-port", str(lb_port),
                        *(f for b in backends for f in ("--grpc-backend", b.id)),
                        drop_env=("YOLOSERVE_LB_",), ready_timeout=30.0, stop_timeout=10.0)
        stack.enter_context(ours)
        wait_until(lambda: _grpc_healthy(ours, 2), 30, "both stand-ins healthy in the balancer")
        nginx_port, nginx_pids = start_nginx(stack, backends, tmp)
        targets = {"direct": (backends[0].id, []),
                   "ours": (f"127.0.0.1:{lb_port}", [ours.pid]),
                   "nginx": (f"127.0.0.1:{nginx_port}", nginx_pids)}
        return measure_proxies(targets, args)


# -- the report -----------------------------------------------------------------------------------

def _median(runs: list[Run], attr: str) -> float:
    return float(statistics.median(getattr(r, attr) for r in runs))


def summarise_service(runs: list[Run]) -> list[dict[str, Any]]:
    rows = []
    for target in dict.fromkeys(r.target for r in runs):
        for load in dict.fromkeys(r.load for r in runs):
            mine = [r for r in runs if r.target == target and r.load == load]
            rows.append({"target": target, "load": load,
                         "images/s": round(_median(mine, "images_per_s"), 1),
                         "p50 ms": round(_median(mine, "p50_ms"), 2),
                         "p99 ms": round(_median(mine, "p99_ms"), 2),
                         "errors": sum(r.errors for r in mine)})
    return rows


def service_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """gRPC against HTTP for each load and path: throughput and p50 ratios."""
    by = {(r["target"], r["load"]): r for r in rows}
    out = []
    for (target, load), row in by.items():
        if not target.startswith("grpc "):
            continue
        http = by[("http " + target[5:], load)]
        out.append({"path": target[5:], "load": load,
                    "grpc / http images/s": round(row["images/s"] / http["images/s"], 2),
                    "grpc - http p50 ms": round(row["p50 ms"] - http["p50 ms"], 2)})
    return out


def summarise_proxies(runs: list[Run]) -> tuple[list[dict[str, Any]], dict[str, float]]:
    rows: list[dict[str, Any]] = []
    summary: dict[str, dict[str, float]] = {}
    for target in dict.fromkeys(r.target for r in runs):
        load = [r for r in runs if r.target == target and r.load == "load"]
        light = [r for r in runs if r.target == target and r.load == "light"]
        cpu = [r.proxy_cpu_us_per_call for r in load if r.proxy_cpu_us_per_call is not None]
        summary[target] = {"calls/s": _median(load, "calls_per_s"), "p50": _median(load, "p50_ms"),
                           "p99": _median(load, "p99_ms"), "light p50": _median(light, "p50_ms"),
                           "light p99": _median(light, "p99_ms")}
        rows.append({"target": target, "calls/s": round(summary[target]["calls/s"]),
                     "p50 ms": summary[target]["p50"], "p99 ms": summary[target]["p99"],
                     "light p50 ms": summary[target]["light p50"],
                     "light p99 ms": summary[target]["light p99"],
                     "added light p50 ms": summary[target]["light p50"] - summary.get(
                         "direct", summary[target])["light p50"],
                     "proxy CPU us/call": round(statistics.median(cpu)) if cpu else "-",
                     "errors": sum(r.errors for r in runs if r.target == target)})
    rounds = sorted({r.round for r in runs})
    by = {(r.target, r.round): r.calls_per_s for r in runs if r.load == "load"}
    per_round = [by[("ours", n)] / by[("nginx", n)] for n in rounds]
    verdict = {
        "ratio_ours_over_nginx": summary["ours"]["calls/s"] / summary["nginx"]["calls/s"],
        "ratio_median_of_rounds": statistics.median(per_round),
        "added_p50_ms_ours": summary["ours"]["light p50"] - summary["direct"]["light p50"],
        "added_p50_ms_nginx": summary["nginx"]["light p50"] - summary["direct"]["light p50"],
    }
    return rows, verdict


def plot(service_rows: list[dict[str, Any]], proxy_rows: list[dict[str, Any]], name: str
         ) -> Path | None:
    """Left: images/s at 16 clients by protocol and path; right: the proxies' calls/s."""
    import matplotlib.pyplot as plt

    if not service_rows and not proxy_rows:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), width_ratios=[2, 1])
    loads = [load for load in dict.fromkeys(r["load"] for r in service_rows) if "16" in load]
    targets = list(dict.fromkeys(r["target"] for r in service_rows))
    width = 0.8 / max(len(targets), 1)
    for i, target in enumerate(targets):
        ys = [next((r["images/s"] for r in service_rows
                    if r["target"] == target and r["load"] == load), 0.0) for load in loads]
        bars = axes[0].bar([j + i * width for j in range(len(loads))], ys, width, label=target)
        axes[0].bar_label(bars, fmt="%.1f", fontsize=7)
    axes[0].set_xticks([j + 0.4 - width / 2 for j in range(len(loads))], loads)
    axes[0].set_ylabel("images/s")
    axes[0].set_title("the service: gRPC against HTTP (16 clients)")
    axes[0].legend(fontsize=8)
    bars = axes[1].bar([r["target"] for r in proxy_rows], [r["calls/s"] for r in proxy_rows],
                       color=["grey", "tab:red", "tab:green"][: len(proxy_rows)])
    axes[1].bar_label(bars, fmt="%.0f", fontsize=8)
    axes[1].set_ylabel("calls/s")
    axes[1].set_title("stand-ins: ours vs nginx grpc_pass")
    for ax in axes:
        ax.grid(True, axis="y", alpha=0.3)
    return plots.save_figure(fig, RESULTS / f"{name}.png")


def write(args: argparse.Namespace, service_runs: list[Run], proxy_runs: list[Run]) -> str:
    lines: list[str] = []
    data: dict[str, Any] = {"config": vars(args), "runs": [asdict(r) for r in service_runs + proxy_runs]}
    service_rows: list[dict[str, Any]] = []
    proxy_rows: list[dict[str, Any]] = []
    if service_runs:
        service_rows = summarise_service(service_runs)
        ratios = service_ratios(service_rows)
        data["service"], data["service_ratios"] = service_rows, ratios
        lines += ["## The service: gRPC against HTTP (our clients, demo.onnx, cache off)", "",
                  markdown_table(service_rows, list(service_rows[0])), "",
                  markdown_table(ratios, list(ratios[0])), "",
                  f"Closed loop, {args.duration:g} s per load, median of {args.service_rounds} "
                  f"round(s); HTTP: /v1/detect and /v1/detect/batch; gRPC: ModelInfer of IMAGE "
                  f"(batches: one call of {args.batch} images); the clients run in the "
                  f"benchmark's process, on the same cores as the service.", ""]
    if proxy_runs:
        proxy_rows, verdict = summarise_proxies(proxy_runs)
        data["proxies"], data["verdict"] = proxy_rows, verdict
        v = verdict
        ok_ratio, ok_p50 = v["ratio_median_of_rounds"] >= 0.6, v["added_p50_ms_ours"] < 1.0
        lines += ["## The balancer against nginx grpc_pass (two stand-in gRPC backends)", "",
                  markdown_table(proxy_rows, list(proxy_rows[0])), "",
                  f"ours / nginx throughput: **{v['ratio_ours_over_nginx']:.2f}x** (median of "
                  f"the per-round ratios {v['ratio_median_of_rounds']:.2f}x; goal >= 0.6: "
                  f"{'met' if ok_ratio else 'NOT met'}); added p50 at 1 call in flight: ours "
                  f"{v['added_p50_ms_ours']:.3f} ms (goal < 1 ms: {'met' if ok_p50 else 'NOT met'}),"
                  f" nginx {v['added_p50_ms_nginx']:.3f} ms.", "",
                  f"Load: {args.channels} channels x {args.inflight} calls in flight, "
                  f"{args.duration:g} s; light: 1 channel, 1 call; ModelInfer with a 2 KB raw "
                  f"input, echoed; median of {args.rounds} interleaved rounds; one grpc.aio "
                  f"generator (Python, one process) for every target; nginx 1 worker, "
                  f"least_conn, keepalive; ours with default settings (one process).", ""]
    name = "grpc" if service_runs and proxy_runs else "grpc_service" if service_runs else "grpc_proxies"
    figure = plot(service_rows, proxy_rows, name)
    text = "\n".join(lines)
    path = save(name, data, text, "gRPC: against HTTP, and the balancer against nginx grpc_pass")
    return f"{text}\nsaved {path}, {path.with_suffix('.json')}" + (f", {figure}" if figure else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench grpc", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the proxy comparison")
    parser.add_argument("--service-rounds", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8, help="images per batch call")
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--inflight", type=int, default=16, help="calls in flight per channel")
    parser.add_argument("--skip-service", action="store_true")
    parser.add_argument("--skip-proxies", action="store_true")
    args = parser.parse_args(argv)
    if not args.skip_proxies and shutil.which("nginx") is None:
        print("missing nginx: apt-get install -y nginx (or --skip-proxies)", file=sys.stderr)
        return 2
    service_runs = [] if args.skip_service else run_service(args)
    proxy_runs = [] if args.skip_proxies else run_proxies(args)
    print()
    print(write(args, service_runs, proxy_runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
