"""Served: images/s and latency over HTTP with the dynamic batcher, without it, and a naive server.

    python -m bench served [--quick] [--device cpu|cuda] [--backend auto|torch|onnx|openvino]
                           [--precision fp32|fp16|bf16|int8|auto] [--half/--no-half]
                           [--letterbox square|rect] [--decode-reduce/--no-decode-reduce]
                           [--max-batch-size 8] [--windows 2 5 10]

All in one run, so that the ratios hold on a shared, noisy machine:

1. **ceiling** — before any server starts, the forward pass alone of each backend at the batch
   size the servers use, and ``Engine.infer`` (forward + NMS) of the served backend: a full
   batch's compute time.
2. **servers**, one at a time, each a ``yoloserve serve`` subprocess with the result cache off
   (and distinct images anyway): batched at each ``--windows`` max wait (``--max-batch-size``),
   batched with one forward pass at a time (``YOLOSERVE_MAX_CONCURRENT_BATCHES=1``, the
   alternative to the CPU plan of ``service/runtime/compute.py``; saturation and half load only),
   unbatched (``--max-batch-size 1``), and the naive tutorial app under uvicorn
   (``bench/baselines/naive_app.py``). Closed loop at the saturation concurrency (16 by
   default); for the default window, unbatched and naive also a concurrency sweep and open-loop
   Poisson arrivals at fractions of their own saturation throughput.
3. **goals** — printed as met / not met with the figures they come from.

Writes ``bench/results/served.{json,md}`` and ``served_{throughput,latency,batches}.png``
(``--quick`` writes under ``bench/results/raw/``; other devices or settings get their own name).
``--precision``, ``--letterbox`` and ``--decode-reduce`` go to every ``yoloserve serve`` it starts
(unset: the service's default, or its ``YOLOSERVE_*`` variable) and to the served backend's rows of
the ceiling; the report records what the servers resolved them to.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench import plots
from bench.common import (
    RESULTS,
    add_serving_options,
    machine,
    markdown_table,
    rate,
    save,
    serving_flags,
)
from bench.loadgen import run_closed, run_open
from bench.procs import naive, service
from bench.scrape import batch_stats, scrape
from harness.images import Body, make_bodies, make_images
from harness.procs import Fleet, Proc

__all__ = ["main"]


@dataclass(frozen=True)
class Target:
    key: str
    label: str
    args: tuple[str, ...] = ()  # `yoloserve serve` flags
    is_naive: bool = False
    full: bool = False  # concurrency sweep and open-loop sweep
    max_batch: int = 1
    max_wait_ms: float = 0.0
    env: tuple[tuple[str, str], ...] = ()  # YOLOSERVE_* settings that have no flag


@dataclass(frozen=True)
class Plan:
    seconds: float
    open_seconds: float  # at 50 % of saturation (the p99 goal)
    sweep_open_seconds: float  # other open-loop fractions
    warmup: float
    sweep: tuple[int, ...]
    saturation: int
    fractions: tuple[float, ...]
    route: str = "/v1/detect"  # /v1/classify for a classifier


def _floor(x: float, nd: int = 3) -> str:
    """A ratio shown without ever rounding it up."""
    q = 10**nd
    return f"{int(x * q) / q:.{nd}f}"


# ceiling -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Served:
    """How ``yoloserve serve`` would run the model, from the same settings: its compute plan,
    letterbox and decoding."""

    backend: str
    precision: str
    streams: int  # forward passes at once
    threads: int | None  # per pass (ONNX Runtime, OpenVINO on a CPU)
    rect: bool
    decode_reduce: bool


def served_as(model: Path, backend: str, device: str, **given: Any) -> Served:
    """The service's plan for these flags (``precision``, ``half``, ``letterbox``,
    ``decode_reduce``; ``None``: its default or ``YOLOSERVE_*`` variable, as the servers see it)."""
    from service.runtime.compute import plan_compute
    from service.settings import Settings

    settings = Settings(model=model, backend=backend, device=device,
                        **{k: v for k, v in given.items() if v is not None})
    plan = plan_compute(settings)
    return Served(plan.backend, plan.precision, plan.concurrent_batches,
                  plan.threads if plan.backend in {"onnx", "openvino"} else None,
                  settings.letterbox == "rect", settings.decode_reduce)


def measure_ceiling(model: Path, device: str, half: bool | None, batch: int, seconds: float,
                    images: list[bytes], backend: str = "auto", *, precision: str | None = None,
                    letterbox: str | None = None,
                    decode_reduce: bool | None = None) -> list[dict[str, Any]]:
    """Forward pass alone and ``Engine.infer`` at ``batch``, for each backend that loads: one
    stream of passes on every core (``mode`` "one stream"), torch and ONNX Runtime at fp32 (fp16
    with ``half``), the served backend also at the served precision and letterbox when those
    differ; and, where the service's compute plan runs several passes at once, the served
    backend run that way too ("service plan")."""
    import numpy as np
    import torch

    from service.engine import Engine
    from service.engine.errors import ModelLoadError

    srv = served_as(model, backend, device, precision=precision, half=half, letterbox=letterbox,
                    decode_reduce=decode_reduce)
    # (backend, passes at once, threads per pass, precision, served options)
    modes: list[tuple[str, int, int | None, str, bool]] = [
        ("torch", 1, None, "fp32", False), ("onnx", 1, None, "fp32", False)]
    if srv.precision != "fp32" or srv.rect or srv.decode_reduce:
        modes.append((srv.backend, 1, None, srv.precision, True))
    if srv.streams > 1:
        modes.append((srv.backend, srv.streams, srv.threads, srv.precision, True))
    rows = []
    for kind, n_streams, threads, prec, as_served in modes:
        try:
            engine = Engine.load(model, backend=kind, device=device, half=half,  # type: ignore[arg-type]
                                 precision=prec, threads=threads, streams=n_streams,
                                 rect=as_served and srv.rect,
                                 decode_reduce=as_served and srv.decode_reduce)
        except ModelLoadError as exc:
            print(f"ceiling: {kind} {prec} skipped: {exc}")
            continue
        engine.warmup(batch)
        prepared = [engine.prepare(images[i % len(images)]) for i in range(batch)]
        stacked = np.stack([p.tensor for p in prepared])
        on_gpu = engine.meta.device.startswith("cuda")

        def forward(e: Engine = engine, x: Any = stacked, gpu: bool = on_gpu) -> None:
            e.backend.forward(x)
            if gpu:
                torch.cuda.synchronize()

        def infer(e: Engine = engine, p: list[Any] = prepared) -> None:
            e.infer(p)

        fwd = rate(forward, batch, seconds, n_streams)
        inf = rate(infer, batch, seconds, n_streams)
        mode = ("one stream" if n_streams == 1 else
                f"service plan: {n_streams} passes at once, {threads} thread(s) each")
        rows.append({"backend": engine.meta.backend, "precision": engine.meta.precision,
                     "device": engine.meta.device, "letterbox": engine.meta.letterbox,
                     "tensor": "x".join(str(d) for d in stacked.shape[1:3]),
                     "batch": batch, "mode": mode,
                     "streams": n_streams, "forward_ips": fwd, "infer_ips": inf,
                     # how long one batch takes, forward + NMS, run this way
                     "batch_compute_ms": 1000 * batch * n_streams / inf})
        print(f"ceiling: {rows[-1]}", flush=True)
        del engine, prepared, stacked
        gc.collect()
    return rows


# servers -------------------------------------------------------------------------------------
def _row(target: Target, res: Any, batch: dict[str, Any]) -> dict[str, Any]:
    return {"config": target.key, "label": target.label, **res.to_dict(), "batch": batch}


def run_target(target: Target, proc: Proc, bodies: list[Body], plan: Plan,
               out: dict[str, list[dict[str, Any]]]) -> None:
    """Closed-loop points, then open-loop points at fractions of this target's saturation."""
    url = proc.url + plan.route
    pids = {"server": proc.pid}
    concurrencies = plan.sweep if target.full else (plan.saturation,)
    if plan.saturation not in concurrencies:
        concurrencies = (*concurrencies, plan.saturation)
    saturation_ips = 0.0
    for i, c in enumerate(concurrencies):
        before = scrape(proc.url)
        res = run_closed(url, bodies, c, plan.seconds, warmup=plan.warmup * (3 if i == 0 else 1),
                         pids=pids)
        out["closed"].append(_row(target, res, batch_stats(before, scrape(proc.url),
                                                           target.max_batch)))
        print(res.summary(), flush=True)
        saturation_ips = max(saturation_ips, res.throughput)  # the peak of the sweep
    fractions = plan.fractions if target.full else (0.5,)
    for f in fractions:
        if saturation_ips <= 0:
            break
        before = scrape(proc.url)
        seconds = plan.open_seconds if f == 0.5 else plan.sweep_open_seconds
        res = run_open(url, bodies, f * saturation_ips, seconds, warmup=plan.warmup, pids=pids)
        row = _row(target, res, batch_stats(before, scrape(proc.url), target.max_batch))
        row["fraction"] = f
        out["open"].append(row)
        print(f"  ({f:.0%} of saturation) {res.summary()} max_lag={res.max_lag_ms:.1f} ms",
              flush=True)


def targets(args: argparse.Namespace) -> list[Target]:
    mb, default_wait = args.max_batch_size, 5.0
    out = [Target(f"batched_w{w:g}", f"batched (max {mb}, wait {w:g} ms)",
                  ("--max-batch-size", str(mb), "--max-wait-ms", str(w)),
                  full=(w == default_wait or len(args.windows) == 1), max_batch=mb,
                  max_wait_ms=w)
           for w in args.windows]
    # the CPU plan's alternative: one forward pass at a time on every core (service/runtime/compute.py)
    out.append(Target("one_pass", f"batched, one pass at a time (max {mb}, wait {default_wait:g} ms)",
                      ("--max-batch-size", str(mb), "--max-wait-ms", str(default_wait)),
                      max_batch=mb, max_wait_ms=default_wait,
                      env=(("YOLOSERVE_MAX_CONCURRENT_BATCHES", "1"),)))
    out.append(Target("unbatched", "unbatched (max batch 1)",
                      ("--max-batch-size", "1", "--max-wait-ms", "0"), full=True))
    if not args.no_naive:
        out.append(Target("naive", "naive tutorial app", is_naive=True, full=True))
    return out


def _server_args(args: argparse.Namespace) -> list[str]:
    """The flags every server gets; an option left unset leaves the service's default."""
    out = ["--model", str(args.model), "--backend", args.backend, "--device", args.device]
    if args.half is not None:
        out.append("--half" if args.half else "--no-half")
    return out + serving_flags(args)


# goals and tables ----------------------------------------------------------------------------
def _find(rows: list[dict[str, Any]], config: str, **match: Any) -> dict[str, Any] | None:
    for r in rows:
        if r["config"] == config and all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def ceiling_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Each mode's ceiling, the higher of its figures before and after the servers ran."""
    best: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in data["ceiling"] + data.get("ceiling_after", []):
        r = {"mode": "one stream", "streams": 1, **r}  # results saved before modes existed
        key = (r["backend"], r["precision"], r["mode"])
        if key not in best or r["forward_ips"] > best[key]["forward_ips"]:
            best[key] = r
    return list(best.values())


def _peak(rows: list[dict[str, Any]], config: str) -> dict[str, Any] | None:
    """The closed-loop point of highest throughput (the saturation point) of ``config``."""
    mine = [r for r in rows if r["config"] == config]
    return max(mine, key=lambda r: r["throughput"]) if mine else None


def _ratio_goal(goal: str, served: dict[str, Any], label: str, ref: dict[str, Any],
                also: str = "") -> dict[str, str]:
    ratio = served["throughput"] / ref["forward_ips"]
    return {"goal": goal, "measured": f"{_floor(ratio)} ×",
            "figures": f"{label}, c={served['concurrency']} (the peak of its sweep): "
                       f"{served['throughput']:.1f} img/s; forward alone {ref['backend']} "
                       f"{ref['precision']} batch {ref['batch']}, {ref['mode']}: "
                       f"{ref['forward_ips']:.1f} img/s{also}",
            "met": "met" if ratio >= 0.8 else "NOT met"}


def goals(data: dict[str, Any], primary: Target, served_backend: str,
          saturation: int) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    closed, opened, ceiling = data["closed"], data["open"], ceiling_rows(data)
    sat = _peak(closed, primary.key)
    at16 = _find(closed, primary.key, concurrency=saturation)
    one_stream = [r for r in ceiling if r["streams"] == 1]
    plan_rows = [r for r in ceiling if r["streams"] > 1]
    if sat and one_stream:
        best = max(one_stream, key=lambda r: r["forward_ips"])
        also = (f"; at c={saturation}: {at16['throughput']:.1f} img/s = "
                f"{_floor(at16['throughput'] / best['forward_ips'])} ×" if at16 else "")
        out.append(_ratio_goal("served at saturation ≥ 0.8 × forward pass alone (fastest "
                               "backend, same batch)", sat, primary.label, best, also))
    if sat and plan_rows:
        out.append(_ratio_goal("stricter reading: served at saturation ≥ 0.8 × the forward "
                               "pass alone run the way the service runs it (what decode, "
                               "letterbox, NMS, HTTP and the batcher cost together)", sat,
                               primary.label, plan_rows[0]))
    for c in sorted({saturation, sat["concurrency"]} if sat else set()):
        mine, naive_c = _find(closed, primary.key, concurrency=c), _find(closed, "naive", concurrency=c)
        if not mine or not naive_c:
            continue
        ratio = mine["throughput"] / naive_c["throughput"]
        lower = mine["p99_ms"] < naive_c["p99_ms"]
        out.append({"goal": f"batched ≥ 1.8 × naive baseline, with a lower p99 ({c} clients)",
                    "measured": f"{_floor(ratio)} ×, p99 {mine['p99_ms']:.1f} vs "
                                f"{naive_c['p99_ms']:.1f} ms",
                    "figures": f"c={c}: batched {mine['throughput']:.1f} img/s, naive "
                               f"{naive_c['throughput']:.1f} img/s",
                    "met": "met" if ratio >= 1.8 and lower else "NOT met"})
    one_pass = _find(closed, "one_pass", concurrency=saturation)
    if at16 and one_pass:
        ratio = at16["throughput"] / one_pass["throughput"]
        out.append({"goal": "the CPU plan: default passes vs one pass at a time (no goal; the "
                            "default must not lose)",
                    "measured": f"{_floor(ratio)} ×",
                    "figures": f"c={saturation}: {at16['throughput']:.1f} vs "
                               f"{one_pass['throughput']:.1f} img/s",
                    "met": "met" if ratio >= 1.0 else "NOT met"})
    own = [r for r in one_stream if r["backend"] == served_backend]
    single = next((r for r in own if r["precision"] == data.get("served_precision")),
                  own[0] if own else None)
    for target in data["targets"]:
        half_load = _find(opened, target["key"], fraction=0.5)
        if target["is_naive"] or target["max_batch"] < 2 or not half_load or not single:
            continue
        # A full batch's compute time, run the way this server runs its passes.
        one_at_a_time = dict(target["env"]).get("YOLOSERVE_MAX_CONCURRENT_BATCHES") == "1"
        compute = single if one_at_a_time or not plan_rows else plan_rows[0]
        bound = target["max_wait_ms"] + 2 * compute["batch_compute_ms"]
        strict = target["max_wait_ms"] + 2 * single["batch_compute_ms"]
        mean_exec = half_load["batch"].get("mean_exec_ms", float("nan"))
        out.append({"goal": f"p99 at 50% of saturation ≤ max_wait + 2 × batch compute "
                            f"({target['label']})",
                    "measured": f"{half_load['p99_ms']:.1f} ms vs bound {bound:.1f} ms",
                    "figures": f"offered {half_load['offered_rps']:.1f} req/s (drawn "
                               f"{half_load['scheduled_rps']:.1f}); max_wait "
                               f"{target['max_wait_ms']:g} ms; batch compute "
                               f"{compute['batch_compute_ms']:.1f} ms ({served_backend}, batch "
                               f"{compute['batch']}, {compute['mode']}, in-process)"
                               + ("" if compute is single else
                                  f"; with one stream's {single['batch_compute_ms']:.1f} ms the "
                                  f"bound would be {strict:.1f} ms")
                               + f"; in-service mean per batch at this load {mean_exec:.1f} ms",
                    "met": "met" if half_load["p99_ms"] <= bound else "NOT met"})
    return out


def _num(v: Any, nd: int = 1) -> str:
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def tables(data: dict[str, Any]) -> str:
    ceil = [{**r, "when": when, **{k: _num(r[k]) for k in ("forward_ips", "infer_ips",
                                                           "batch_compute_ms")}}
            for when, key in (("before", "ceiling"), ("after", "ceiling_after"))
            for r in data.get(key, [])]
    def load_row(r: dict[str, Any]) -> dict[str, Any]:
        b = r["batch"]
        return {"config": r["label"], "clients": r["concurrency"],
                "offered req/s": _num(r["offered_rps"]), "load": _num(r.get("fraction", ""), 2),
                "drawn req/s": _num(r["scheduled_rps"]),
                "img/s": _num(r["throughput"]), "p50 ms": _num(r["p50_ms"]),
                "p95 ms": _num(r["p95_ms"]), "p99 ms": _num(r["p99_ms"]), "n": r["ok"],
                "errors": r["errors"] or 0, "mean batch": _num(b.get("mean_batch", "-"), 2),
                "batch exec ms": _num(b.get("mean_exec_ms", "-")),
                "server cpu %": _num(r["cpu"].get("cpu_server_pct"), 0),
                "loadgen cpu %": _num(r["cpu"].get("cpu_loadgen_pct"), 0),
                "max lag ms": _num(r["max_lag_ms"])}
    cols_c = ["config", "clients", "img/s", "p50 ms", "p95 ms", "p99 ms", "n", "errors",
              "mean batch", "batch exec ms", "server cpu %", "loadgen cpu %"]
    cols_o = ["config", "load", "offered req/s", "drawn req/s", "img/s", "p50 ms", "p95 ms", "p99 ms", "n",
              "errors", "mean batch", "server cpu %", "loadgen cpu %", "max lag ms"]
    servers = ("Servers: `yoloserve serve " + " ".join(data["server_args"]) + "` (served at "
               f"{data['served_backend']} {data['served_precision']}, "
               f"{data['served_letterbox']} letterbox, decode-reduce "
               f"{'on' if data['served_decode_reduce'] else 'off'})"
               if "server_args" in data else "")
    parts = [
        *([servers] if servers else []),
        "## Ceiling: forward pass alone (in-process, before the servers start and after they "
        "stop; the goals use the higher figure of each)",
        markdown_table(ceil, ["when", "backend", "precision", "device", "letterbox", "tensor",
                              "batch", "mode", "forward_ips", "infer_ips", "batch_compute_ms"]),
        "## Closed loop (images/s at a fixed number of clients; latency from the send)",
        markdown_table([load_row(r) for r in data["closed"]], cols_c),
        "## Open loop (Poisson arrivals; latency from the scheduled send time)",
        markdown_table([load_row(r) for r in data["open"]], cols_o),
        "## Goals",
        markdown_table(data["goals"], ["goal", "measured", "figures", "met"]),
    ]
    return "\n\n".join(parts)


def draw(data: dict[str, Any], name: str, where: Path) -> list[Path]:
    closed, opened = data["closed"], data["open"]
    labels = {t["key"]: t["label"] for t in data["targets"]}
    thr = {labels[k]: [(r["concurrency"], r["throughput"]) for r in closed if r["config"] == k]
           for k in labels}
    hl = {f"forward alone, {r['backend']} {r['precision']} batch {r['batch']}"
          f"{'' if r.get('streams', 1) == 1 else ', ' + str(r['streams']) + ' passes at once'}":
          r["forward_ips"] for r in ceiling_rows(data)}
    lat = {labels[k]: [(r["scheduled_rps"], r["p50_ms"], r["p95_ms"], r["p99_ms"])
                       for r in opened if r["config"] == k] for k in labels}
    sat = data["plan"]["saturation"]
    panels = {
        f"closed loop, {sat} clients": {r["label"]: r["batch"]["hist"] for r in closed
                                        if r["concurrency"] == sat and r["batch"].get("hist")},
        "open loop, 50% of saturation": {r["label"]: r["batch"]["hist"] for r in opened
                                         if r.get("fraction") == 0.5 and r["batch"].get("hist")},
    }
    return [
        plots.throughput_vs_concurrency({k: v for k, v in thr.items() if len(v) > 1},
                                        where / f"{name}_throughput.png",
                                        "Throughput against concurrency", hl),
        plots.latency_vs_load({k: v for k, v in lat.items() if v}, where / f"{name}_latency.png",
                              "Latency against offered load"),
        plots.batch_histograms(panels, where / f"{name}_batches.png",
                               "Batch sizes (inference_batch_size from /metrics)"),
    ]


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench served",
                                 description="HTTP throughput and latency, batched vs not vs naive")
    ap.add_argument("--model", type=Path, default=Path("models/demo.pt"))
    ap.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx", "openvino"])
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--half", action=argparse.BooleanOptionalAction, default=None,
                    help="same as --precision fp16 (default: the service's choice)")
    add_serving_options(ap, "the servers'")
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--windows", type=float, nargs="+", default=[2.0, 5.0, 10.0],
                    help="max wait (ms) of the batched runs; 5 (or a lone value) gets the sweep")
    ap.add_argument("--saturation", type=int, default=None,
                    help="clients at saturation [16; 2 x max batch when that is larger]")
    ap.add_argument("--concurrency", type=int, nargs="+", default=None,
                    help="sweep [1 4 8 16 32, and 64 128 when max batch > 16]")
    ap.add_argument("--seconds", type=float, default=5.0, help="per closed-loop point")
    ap.add_argument("--open-seconds", type=float, default=20.0, help="open loop at 50%%")
    ap.add_argument("--images", type=int, default=128, help="distinct JPEGs")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
    ap.add_argument("--name", default=None, help="results name [served, or one per device]")
    ap.add_argument("--quick", action="store_true", help="a smoke run of a few seconds per point")
    ap.add_argument("--replot", action="store_true",
                    help="only redraw the plots from the saved JSON of this configuration")
    return ap.parse_args(argv)


def model_task(model: Path) -> str:
    """The Ultralytics task the weights say they do (their metadata)."""
    from ultralytics import YOLO  # type: ignore[attr-defined]

    return str(YOLO(str(model)).task)


def plan_for(args: argparse.Namespace) -> Plan:
    mb = args.max_batch_size
    sat = args.saturation or max(16, 2 * mb)
    sweep = tuple(args.concurrency or ([1, 4, 8, 16, 32] + ([64, 128] if mb > 16 else [])))
    if args.quick:
        return Plan(1.5, 3.0, 2.0, 0.5, (1, sat), sat, (0.5,))
    return Plan(args.seconds, args.open_seconds, args.open_seconds / 2, 1.0, sweep, sat,
                (0.25, 0.5, 0.75, 0.9))


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from service.engine import choose_backend
    from service.engine.backends import resolve_device

    device = resolve_device(args.device)
    srv = served_as(args.model, args.backend, device, precision=args.precision, half=args.half,
                    letterbox=args.letterbox, decode_reduce=args.decode_reduce)
    served_backend = choose_backend(args.model, args.backend, device, srv.precision)[0]
    task = model_task(args.model)
    plan = replace(plan_for(args), route="/v1/classify" if task == "classify" else "/v1/detect")
    defaults = (args.backend == "auto" and args.precision is None and not args.half
                and args.letterbox is None and args.decode_reduce is None)
    of_task = "" if task == "detect" else f"_{task}"
    name = args.name or (f"served{of_task}" if device == "cpu" and args.max_batch_size == 8
                         and defaults else
                         f"served{of_task}_{device.replace(':', '')}_{served_backend}_{srv.precision}"
                         f"_b{args.max_batch_size}{'_rect' if srv.rect else ''}"
                         f"{'_reduce' if srv.decode_reduce else ''}")
    if args.quick:
        name = f"raw/{name}_quick"
    if args.replot:
        saved = json.loads((RESULTS / f"{name}.json").read_text())
        for p in draw(saved, Path(name).name, (RESULTS / name).parent):
            print(f"wrote {p.relative_to(RESULTS.parent.parent)}")
        return 0
    print(f"served: {machine()}; plan {plan}", flush=True)
    started = time.monotonic()
    images = make_images(max(16 if args.quick else args.images, args.max_batch_size))
    bodies = make_bodies(images)
    data: dict[str, Any] = {"model": str(args.model), "task": task, "device": device,
                            "half": args.half,
                            "precision": args.precision, "letterbox": args.letterbox,
                            "decode_reduce": args.decode_reduce,
                            "served_backend": served_backend, "served_precision": srv.precision,
                            "served_letterbox": "rect" if srv.rect else "square",
                            "served_decode_reduce": srv.decode_reduce,
                            "server_args": _server_args(args), "plan": plan.__dict__,
                            "closed": [], "open": []}
    ceiling_seconds = 1.5 if args.quick else 3.0
    served_opts = {"precision": args.precision, "letterbox": args.letterbox,
                   "decode_reduce": args.decode_reduce}
    data["ceiling"] = measure_ceiling(args.model, device, args.half, args.max_batch_size,
                                      ceiling_seconds, images, args.backend, **served_opts)
    all_targets = targets(args)
    data["targets"] = [t.__dict__ for t in all_targets]
    for target in all_targets:
        proc = (naive(target.key, args.model, device)
                if target.is_naive else service(target.key, *_server_args(args), *target.args,
                                                env=dict(target.env)))
        with Fleet(proc):
            if not target.is_naive:
                import httpx

                data.setdefault("served_models", {})[target.key] = httpx.get(
                    proc.url + "/v1/model").json()
            run_target(target, proc, bodies, plan, data)
    # the ceiling again, so that a machine that got faster while the servers ran is seen
    data["ceiling_after"] = measure_ceiling(args.model, device, args.half, args.max_batch_size,
                                            ceiling_seconds, images, args.backend, **served_opts)
    primary = next(t for t in all_targets if t.full and not t.is_naive and t.max_batch > 1)
    data["goals"] = goals(data, primary, served_backend, plan.saturation)
    data["wall_s"] = time.monotonic() - started
    table = tables(data)
    print(table)
    md = save(name, data, table, f"Served throughput and latency ({device}, {served_backend} "
                                 f"{srv.precision}, {data['served_letterbox']} letterbox"
                                 f"{', decode-reduce' if srv.decode_reduce else ''})")
    for p in draw(data, Path(name).name, md.parent):
        print(f"wrote {p.relative_to(RESULTS.parent.parent)}")
    print(f"wrote {md.relative_to(RESULTS.parent.parent)} in {data['wall_s']:.0f} s")
    bad = [r for r in data["closed"] + data["open"] if r["errors"]]
    if bad:
        print(f"NOT every answer was 200: {[(r['config'], r['errors']) for r in bad]}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
