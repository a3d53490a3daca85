"""``python -m bench streams``: N video streams with tracking, each at a set frame rate, through
one service, against the way users track many streams today: one process per stream, each
running Ultralytics' ``model.track(frame, persist=True)`` in a loop.

Both sides get the same frames (the test clips of :mod:`service.demo.clips`, one clip per
stream, played forwards then backwards so that motion never jumps), paced the same way: stream
``i`` starts ``i / (N x fps)`` s after the others (cameras are not in step) and frame ``k`` is
due ``k / fps`` s after its stream's start; a frame is sent (or, in the baseline, passed to
``model.track``) at its due time or, when the previous one was late, as soon as that one is
answered. A frame's latency is from that moment to its answer. Counted: the frames answered in a
window of ``--seconds`` after ``--warmup`` s. A stream count is *held* when every stream got at
least 95 % of its frame rate and the p99 latency was under ``--p99-ms``.

Ours, the service started once by ``yoloserve serve SERVE_ARGS``, fed in this process by one of
two transports (``--transports``): ``http``, ``AsyncDetectionClient.track`` (one client, a
``POST /v1/streams/{id}/frames`` per frame); ``ws``, one ``WS /v1/streams/{id}/ws`` connection
per stream (the feed for video at a steady rate; no HTTP request per frame on either side). Both
keep one frame of a stream in flight. The baseline's processes load the
checkpoint ``--model`` with Ultralytics' defaults (torch, its own thread count) and decode the
frames before the clock starts; they start together and wait for a common start time.

With ``--latency-target-ms T``, the same steps run again against a second service started with
``--latency-target-ms T`` (rows "..., target T ms"), in the same run, so that the target's rows,
the target-off rows and the baseline's share this machine's state.

``--precision``, ``--letterbox`` and ``--decode-reduce`` are passed to ``yoloserve serve`` (after
``--serve-args``) and to the ceiling's rows of the served backend; unset, the service's defaults.

The ceiling: before the service starts and again after the baseline, the forward pass alone of
each backend at the service's batch size on the clips' first frames (``bench served``'s
measurement, the service's compute plan included), so that the report can say, from figures of
the same run, whether the goal's frame rate fits in this machine's forward pass at all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    RESULTS,
    add_serving_options,
    machine,
    markdown_table,
    save,
    serving_flags,
)
from bench.procs import service
from bench.served import measure_ceiling
from harness.procs import ROOT
from harness.stats import percentile

__all__ = ["main"]

HELD_SHARE = 0.95  # of the frame rate, for every stream
BASELINE = "model.track, a process per stream"
BASELINE_OV = "model.track on the OpenVINO IR (its default precision), a process per stream"
CEILING_BATCH = 8  # the service's default max batch size
WORKER_MIB = 600  # a baseline process's own memory (measured: 427 MiB private, 1 GiB resident)


def available_mib() -> float:
    """MemAvailable from /proc/meminfo, MiB (infinite where there is none)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("inf")


def make_frames(count: int, frames: int, width: int, height: int) -> list[list[bytes]]:
    """``count`` clips as JPEG frames, each played forwards then backwards."""
    import cv2

    from service.demo.clips import make_clip

    clips = []
    for seed in range(count):
        clip = make_clip(seed, frames=frames, width=width, height=height)
        encoded = [bytes(cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 90])[1]) for f in clip.frames]
        clips.append(encoded + encoded[-2:0:-1])
    return clips


def summarise_stream(received: list[tuple[float, float]], seconds: float) -> dict[str, Any]:
    """One stream's frames answered in the window: ``(answered_at, latency_s)`` pairs."""
    return {"frames": len(received), "fps": len(received) / seconds,
            "latencies": [lat for _, lat in received]}


def row(system: str, n: int, fps: float, seconds: float, streams: list[dict[str, Any]],
        errors: int, p99_ms: float, load: float) -> dict[str, Any]:
    latencies = [lat * 1000 for s in streams for lat in s["latencies"]]
    rates = [s["fps"] for s in streams]
    held = (len(streams) == n and min(rates, default=0) >= HELD_SHARE * fps and errors == 0
            and bool(latencies) and percentile(latencies, 99) < p99_ms)
    return {"system": system, "streams": n, "load_1m_before": round(load, 2),
            "offered_fps": n * fps,
            "total_fps": sum(s["frames"] for s in streams) / seconds,
            "min_stream_fps": min(rates, default=0.0), "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99), "frames": len(latencies), "errors": errors,
            "held": held}


# -- ours ------------------------------------------------------------------------------------
async def delete_streams(url: str, tag: str, n: int) -> None:
    """Ends the streams ``{tag}-0`` to ``{tag}-{n-1}``, so that a step leaves nothing behind."""
    async with httpx.AsyncClient(base_url=url, timeout=10.0) as http:
        await asyncio.gather(*(http.delete(f"/v1/streams/{tag}-{i}") for i in range(n)))


async def run_ours(url: str, clips: list[list[bytes]], n: int, args: argparse.Namespace,
                   tag: str) -> dict[str, Any]:
    from clients import AsyncDetectionClient, ClientError

    fps, warmup, seconds = args.fps, args.warmup, args.seconds
    load = os.getloadavg()[0]  # other jobs on the machine, just before
    total = int((warmup + seconds) * fps) + 2
    errors = 0
    async with AsyncDetectionClient(url, timeout=30.0, max_connections=n + 4,
                                    max_keepalive_connections=n + 4) as client:
        loop_start = time.monotonic() + 0.5

        async def one(i: int) -> dict[str, Any]:
            nonlocal errors
            clip = clips[i % len(clips)]
            frames = [clip[k % len(clip)] for k in range(total)]
            await asyncio.sleep(max(0.0, loop_start + i / (n * fps) - time.monotonic()))
            t0 = time.monotonic()
            window = (t0 + warmup, t0 + warmup + seconds)
            received: list[tuple[float, float]] = []
            previous = t0
            track = client.track(f"{tag}-{i}", frames, rate=fps, conf=args.conf)
            try:
                async for result in track:
                    now = time.monotonic()
                    sent = max(t0 + result.stream.seq / fps, previous)
                    previous = now
                    if now >= window[1]:
                        break
                    if now >= window[0]:
                        received.append((now, now - sent))
            except ClientError as exc:
                errors += 1
                print(f"  stream {i}: {exc}", flush=True)
            finally:
                await track.aclose()
            return summarise_stream(received, seconds)

        streams = await asyncio.gather(*(one(i) for i in range(n)))
    await delete_streams(url, tag, n)
    return row("yoloserve (HTTP)", n, fps, seconds, list(streams), errors, args.p99_ms, load)


async def run_ours_ws(url: str, clips: list[list[bytes]], n: int, args: argparse.Namespace,
                      tag: str) -> dict[str, Any]:
    """As :func:`run_ours`, each stream over its own WebSocket feed, one frame in flight."""
    import websockets

    fps, warmup, seconds = args.fps, args.warmup, args.seconds
    load = os.getloadavg()[0]
    total = int((warmup + seconds) * fps) + 2
    errors = 0
    ws_url = url.replace("http://", "ws://", 1)
    loop_start = time.monotonic() + 0.5

    async def one(i: int) -> dict[str, Any]:
        nonlocal errors
        clip = clips[i % len(clips)]
        received: list[tuple[float, float]] = []
        async with websockets.connect(f"{ws_url}/v1/streams/{tag}-{i}/ws",
                                      max_size=None) as ws:
            await ws.send(json.dumps({"conf": args.conf}))
            await asyncio.sleep(max(0.0, loop_start + i / (n * fps) - time.monotonic()))
            t0 = time.monotonic()
            window = (t0 + warmup, t0 + warmup + seconds)
            for k in range(total):
                await asyncio.sleep(max(0.0, t0 + k / fps - time.monotonic()))
                sent = time.monotonic()
                await ws.send(clip[k % len(clip)])
                answer = json.loads(await ws.recv())
                now = time.monotonic()
                if "error" in answer:
                    errors += 1
                    print(f"  stream {i}: {answer['error']}", flush=True)
                    break
                if now >= window[1]:
                    break
                if now >= window[0]:
                    received.append((now, now - sent))
        return summarise_stream(received, seconds)

    streams = await asyncio.gather(*(one(i) for i in range(n)))
    await delete_streams(url, tag, n)
    return row("yoloserve (WebSocket)", n, fps, seconds, list(streams), errors, args.p99_ms, load)


# -- the baseline ----------------------------------------------------------------------------
def worker(argv: list[str]) -> int:
    """One baseline stream: ``--worker FRAMES_DIR MODEL FPS WARMUP SECONDS PHASE CONF``."""
    folder, model_path, fps, warmup, seconds, phase, conf = argv
    import cv2
    from ultralytics import YOLO  # type: ignore[attr-defined]

    names = sorted(Path(folder).iterdir())
    frames = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in names]
    model = YOLO(model_path, task="detect")
    model.predict(frames[0], verbose=False, conf=float(conf))  # load and fuse before the clock
    print("ready", flush=True)
    start = float(sys.stdin.readline())  # a common time.time() to begin at
    time.sleep(max(0.0, start + float(phase) - time.time()))
    rate, warm, window = float(fps), float(warmup), float(seconds)
    t0 = time.monotonic()
    received: list[tuple[float, float]] = []
    k = 0
    while True:
        due = t0 + k / rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        sent = time.monotonic()
        model.track(frames[k % len(frames)], persist=True, tracker="bytetrack.yaml",
                    conf=float(conf), verbose=False)
        done = time.monotonic()
        if done >= t0 + warm + window:
            break
        if done >= t0 + warm:
            received.append((done, done - sent))
        k += 1
    print(json.dumps(summarise_stream(received, window)), flush=True)
    return 0


def run_baseline(clips: list[list[bytes]], n: int, args: argparse.Namespace,
                 workdir: Path, model: Path | None = None,
                 system: str = BASELINE) -> dict[str, Any]:
    folders = []
    for c, clip in enumerate(clips):
        folder = workdir / f"clip{c}"
        if not folder.exists():
            folder.mkdir()
            for k, data in enumerate(clip):
                (folder / f"{k:05d}.jpg").write_bytes(data)
        folders.append(folder)
    load = os.getloadavg()[0]  # other jobs on the machine, just before
    env = {k: v for k, v in os.environ.items() if not k.startswith("YOLOSERVE_")}
    env["YOLO_OFFLINE"] = "1"
    procs = [subprocess.Popen(
        [sys.executable, "-m", "bench.streams", "--worker", str(folders[i % len(folders)]),
         str(model or args.model), str(args.fps), str(args.warmup), str(args.seconds),
         str(i / (n * args.fps)), str(args.conf)],
        cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for i in range(n)]
    streams, errors = [], 0
    try:
        for proc in procs:  # every one loaded and warm before any starts
            assert proc.stdout is not None
            line = proc.stdout.readline()
            while line and line.strip() != "ready":  # Ultralytics may print first
                line = proc.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"a baseline worker did not start: {line!r}")
        start = time.time() + 1.0
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(f"{start}\n")
            proc.stdin.flush()
        for proc in procs:
            out, _ = proc.communicate(timeout=args.warmup + args.seconds + 120)
            try:
                streams.append(json.loads(out.strip().splitlines()[-1]))
            except (IndexError, ValueError):
                errors += 1
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return row(system, n, args.fps, args.seconds, streams, errors, args.p99_ms, load)


# -- the ceiling -----------------------------------------------------------------------------
def _ceiling(args: argparse.Namespace, clips: list[list[bytes]]) -> list[dict[str, Any]]:
    """The forward pass alone of each backend on the clips' first frames (none when
    ``--ceiling-seconds`` is 0)."""
    if args.ceiling_seconds <= 0:
        return []
    images = [clip[0] for clip in clips]
    return measure_ceiling(Path(args.model), "auto", None, CEILING_BATCH, args.ceiling_seconds,
                           images, precision=args.precision, letterbox=args.letterbox,
                           decode_reduce=args.decode_reduce)


def _baselines(args: argparse.Namespace) -> list[tuple[Path, str]]:
    """The baseline's model (the .pt, FP32, as users run it) and, with ``--baseline-openvino``,
    the same model as an OpenVINO IR (exported under build/ once), which Ultralytics runs at
    OpenVINO's default precision: bf16 on CPUs with bf16 units."""
    out = [(Path(args.model), BASELINE)]
    if args.baseline_openvino:
        from service.engine.openvino_export import export_openvino

        model = Path(args.model)
        folder = ROOT / "build" / "bench" / f"{model.stem}_openvino_model"
        if not (folder / f"{model.stem}.xml").is_file():
            export_openvino(model, out=folder)
        out.append((folder, BASELINE_OV))
    return out


def serve_flags(args: argparse.Namespace) -> list[str]:
    """``--serve-args`` and then the options this program names (unset ones left out)."""
    return [*str(args.serve_args).split(), *serving_flags(args)]


# -- the report ------------------------------------------------------------------------------
def summary(rows: list[dict[str, Any]], ceiling: list[dict[str, Any]],
            args: argparse.Namespace) -> dict[str, Any]:
    """Ratios at each stream count for each transport of ours, the most streams each system
    held, and the goal (met by a transport that meets it); with the fastest forward pass alone
    of the run (``ceiling``: every backend, the service's plan included)."""
    base = {r["streams"]: r for r in rows if r["system"] == BASELINE}
    base_ov = {r["streams"]: r for r in rows if r["system"] == BASELINE_OV}
    ours: dict[str, dict[int, dict[str, Any]]] = {}
    for r in rows:
        if r["system"] not in {BASELINE, BASELINE_OV}:
            ours.setdefault(r["system"], {})[r["streams"]] = r
    ratios = [{"system": system, "streams": n,
               "fps_ratio": by_n[n]["total_fps"] / base[n]["total_fps"],
               "ours_p99_ms": by_n[n]["p99_ms"], "baseline_p99_ms": base[n]["p99_ms"],
               **({"fps_ratio_vs_openvino": by_n[n]["total_fps"] / base_ov[n]["total_fps"],
                   "openvino_baseline_p99_ms": base_ov[n]["p99_ms"]}
                  if base_ov.get(n, {}).get("total_fps") else {})}
              for system, by_n in ours.items()
              for n in sorted(by_n) if n in base and base[n]["total_fps"] > 0]
    held = {name: max((n for n, r in rs.items() if r["held"]), default=0)
            for name, rs in (*ours.items(), ("baseline", base),
                             *((("baseline on OpenVINO", base_ov),) if base_ov else ()))}
    goal_n = args.goal_streams
    def meets(r: dict[str, Any]) -> bool:
        return bool(r["fps_ratio"] >= 2 and r["ours_p99_ms"] < r["baseline_p99_ms"])

    # the transport that meets the goal, else the one with the highest ratio
    at = max((r for r in ratios if r["streams"] == goal_n),
             key=lambda r: (meets(r), r["fps_ratio"]), default=None)
    goal = {"streams": goal_n, "fps_ratio": at["fps_ratio"] if at else None,
            "system": at["system"] if at else None,
            "met": "not run" if at is None else ("met" if meets(at) else "NOT met")}
    if goal_n in base:
        goal["needed_fps"] = 2 * base[goal_n]["total_fps"]
    if ceiling:
        goal["forward_ceiling_ips"] = max(r["forward_ips"] for r in ceiling)
    return {"ratios": ratios, "most_streams_held": held, "goal": goal}


def report(data: dict[str, Any]) -> str:
    s, summ = data["settings"], data["summary"]
    columns = ["system", "streams", "load_1m_before", "offered_fps", "total_fps", "min_stream_fps", "p50_ms",
               "p99_ms", "frames", "errors", "held"]
    g = summ["goal"]
    held = summ["most_streams_held"]
    lines = [
        "## How it was measured",
        f"{s['fps']} frames/s per stream, {s['warmup']} s warm-up then {s['seconds']} s counted; "
        f"clips {s['width']}x{s['height']}, JPEG; conf {s['conf']}; service: `yoloserve serve "
        f"{' '.join(s['serve_args'])}` (precision {s.get('precision') or 'default'}, letterbox "
        f"{s.get('letterbox') or 'default'}, decode-reduce "
        f"{'default' if s.get('decode_reduce') is None else s['decode_reduce']}), fed over "
        f"{', '.join(s['transports'])} (one frame of a "
        f"stream in flight); baseline: `{s['model']}` with Ultralytics' defaults, "
        f"ByteTrack. Held: every stream ≥ {HELD_SHARE:.0%} of its rate and p99 < {s['p99_ms']} ms.",
        "", "## Results", markdown_table(data["rows"], columns), "",
        "## Ratios", markdown_table(summ["ratios"], ["system", "streams", "fps_ratio",
                                                     "ours_p99_ms", "baseline_p99_ms",
                                                     "fps_ratio_vs_openvino",
                                                     "openvino_baseline_p99_ms"]), "",
        "Most streams held (of the counts run): "
        + ", ".join(f"{name} {n}" for name, n in held.items()) + ".",
        *(f"Baseline at {x['streams']} streams not run: {x['available_mib']} MiB of memory "
          f"available, {WORKER_MIB} MiB a process needed." for x in data["baseline_not_run"]),
        "",
        "## Goal",
        f"At {g['streams']} streams, total frames/s ≥ 2x the baseline with a lower p99: "
        f"**{g['met']}**" + (f" ({g['fps_ratio']:.2f}x, {g['system']})"
                             if g["fps_ratio"] is not None else ""),
    ]
    if "needed_fps" in g and "forward_ceiling_ips" in g:
        lines += ["", f"2x the baseline is {g['needed_fps']:.1f} frames/s; the fastest forward pass "
                  f"alone measured in this run (no decoding, tracking or HTTP) did "
                  f"{g['forward_ceiling_ips']:.1f} images/s "
                  f"({g['forward_ceiling_ips'] / g['needed_fps']:.2f} of what the goal needs)."]
    if data.get("ceiling"):
        lines += ["", "## Forward pass alone (before the service and after the baseline)",
                  markdown_table(data["ceiling"], ["when", "backend", "precision", "letterbox",
                                                   "batch", "mode", "forward_ips", "infer_ips"])]
    return "\n".join(lines)


def draw(data: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from bench.plots import save_figure  # sets the Agg backend

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    systems = sorted({r["system"] for r in data["rows"]}, key=lambda s: (s == BASELINE, s))
    for system, colour in zip(systems, ("tab:blue", "tab:green", "tab:orange", "tab:purple",
                                        "tab:red"), strict=False):
        rows = [r for r in data["rows"] if r["system"] == system]
        ns = [r["streams"] for r in rows]
        axes[0].plot(ns, [r["total_fps"] for r in rows], marker="o", color=colour, label=system)
        axes[1].plot(ns, [r["p99_ms"] for r in rows], marker="o", color=colour,
                     label=f"{system} p99")
        axes[1].plot(ns, [r["p50_ms"] for r in rows], marker=".", linestyle=":", color=colour,
                     label=f"{system} p50")
    ns = sorted({r["streams"] for r in data["rows"]})
    axes[0].plot(ns, [n * data["settings"]["fps"] for n in ns], color="grey", linestyle="--",
                 label="offered")
    goal = data.get("summary", {}).get("goal", {})
    if "forward_ceiling_ips" in goal:
        axes[0].axhline(goal["forward_ceiling_ips"], color="black", linestyle=":",
                        label="forward pass alone, fastest")
    if "needed_fps" in goal:
        axes[0].plot([goal["streams"]], [goal["needed_fps"]], marker="*", markersize=11,
                     color="red", linestyle="none", label="goal: 2x the baseline")
    axes[0].set_ylabel("frames/s, all streams")
    axes[1].axhline(data["settings"]["p99_ms"], color="red", linestyle="--", alpha=0.5,
                    label="p99 bound")
    axes[1].set_yscale("log")
    axes[1].yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axes[1].yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    axes[1].set_ylabel("per-frame latency, ms")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_xlabel("streams")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Streams with tracking at {data['settings']['fps']} frames/s each: one service "
                 "against a model.track process per stream")
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        return worker(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m bench streams", description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 4, 8, 12, 16, 32])
    ap.add_argument("--baseline-openvino", action="store_true",
                    help="also run the baseline on the model's OpenVINO IR (bf16 where the CPU "
                         "has it): batching's own gain at equal precision")
    ap.add_argument("--baseline-streams", type=int, nargs="*", default=None,
                    help="stream counts the baseline runs (default: the same)")
    ap.add_argument("--fps", type=float, default=10.0, help="frames/s per stream")
    ap.add_argument("--seconds", type=float, default=15.0, help="counted window per run")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--p99-ms", type=float, default=200.0)
    ap.add_argument("--conf", type=float, default=0.1, help="Ultralytics' track default")
    ap.add_argument("--clips", type=int, default=8, help="distinct clips, shared round-robin")
    ap.add_argument("--frames", type=int, default=48, help="frames per clip before it reverses")
    ap.add_argument("--size", default="480x360", help="WxH of the frames")
    ap.add_argument("--model", default=str(ROOT / "models" / "demo.pt"))
    ap.add_argument("--serve-args", default="",
                    help="extra arguments of yoloserve serve")
    add_serving_options(ap)
    ap.add_argument("--transports", nargs="+", choices=("http", "ws"), default=["http", "ws"],
                    help="how this process feeds the service: the client's POST per frame, "
                    "or a WebSocket per stream")
    ap.add_argument("--latency-target-ms", type=float, default=None,
                    help="also run a service with this --latency-target-ms (off: not run)")
    ap.add_argument("--goal-streams", type=int, default=16)
    ap.add_argument("--ceiling-seconds", type=float, default=4.0,
                    help="seconds per forward-pass-alone measurement; 0: none")
    ap.add_argument("--shared", default="", help="a note on other jobs on the machine")
    ap.add_argument("--name", default=None)
    ap.add_argument("--quick", action="store_true", help="a smoke run (results under raw/)")
    ap.add_argument("--replot", action="store_true", help="only redraw the plot from the JSON")
    args = ap.parse_args(argv)
    if args.quick:
        args.streams, args.seconds, args.warmup, args.fps = [1, 2], 2.0, 1.0, 5.0
        args.clips, args.frames, args.size, args.goal_streams = 2, 8, "160x128", 2
        args.ceiling_seconds = min(args.ceiling_seconds, 1.0)
    name = args.name or ("raw/streams_quick" if args.quick else "streams")
    if args.replot:
        saved = json.loads((RESULTS / f"{name}.json").read_text())
        print(f"wrote {draw(saved, RESULTS / f'{name}.png')}")
        return 0
    baseline_counts = args.streams if args.baseline_streams is None else args.baseline_streams
    width, height = (int(x) for x in args.size.lower().split("x"))
    print(f"streams: {machine()}", flush=True)
    started = time.monotonic()
    clips = make_frames(args.clips, args.frames, width, height)
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []  # baseline counts this machine had no memory for
    serve_args = serve_flags(args)
    ceiling = [{"when": "before", **r} for r in _ceiling(args, clips)]
    variants: list[tuple[list[str], str]] = [(serve_args, "")]
    if args.latency_target_ms is not None:
        target = f"{args.latency_target_ms:g}"
        variants.append(([*serve_args, "--latency-target-ms", target], f", target {target} ms"))
    for variant_args, suffix in variants:
        svc = service("streams-svc", *variant_args).start()
        try:
            svc.wait_ready()
            for transport in args.transports:
                run = run_ours if transport == "http" else run_ours_ws
                for n in args.streams:
                    print(f"  yoloserve{suffix} over {transport}, {n} streams", flush=True)
                    rows.append(asyncio.run(run(svc.url, clips, n, args, f"{transport}{n}")))
                    rows[-1]["system"] = rows[-1]["system"][:-1] + suffix + ")"
                    print(f"    {rows[-1]['total_fps']:.1f} frames/s, p99 "
                          f"{rows[-1]['p99_ms']:.0f} ms", flush=True)
        finally:
            svc.stop()
    with tempfile.TemporaryDirectory(prefix="bench-streams-") as tmp:
        for n in baseline_counts:
            if (free := available_mib()) < n * WORKER_MIB + 2048:
                print(f"  baseline, {n} streams: not run, {free:.0f} MiB free", flush=True)
                skipped.append({"streams": n, "available_mib": round(free)})
                continue
            for model, system in _baselines(args):
                print(f"  {system}, {n} streams", flush=True)
                rows.append(run_baseline(clips, n, args, Path(tmp), model, system))
                print(f"    {rows[-1]['total_fps']:.1f} frames/s, p99 "
                      f"{rows[-1]['p99_ms']:.0f} ms", flush=True)
    ceiling += [{"when": "after", **r} for r in _ceiling(args, clips)]
    settings = {k: getattr(args, k) for k in ("streams", "fps", "seconds", "warmup", "p99_ms",
                                              "conf", "clips", "frames", "goal_streams", "shared",
                                              "transports", "precision", "letterbox",
                                              "decode_reduce", "baseline_openvino",
                                              "latency_target_ms")}
    settings.update(width=width, height=height, serve_args=serve_args,
                    model=os.path.relpath(args.model, ROOT), baseline_streams=baseline_counts)
    data: dict[str, Any] = {"settings": settings, "rows": rows, "baseline_not_run": skipped,
                            "ceiling": ceiling, "wall_s": time.monotonic() - started}
    data["summary"] = summary(rows, ceiling, args)
    text = report(data)
    print(text)
    md = save(name, data, text, "Video streams with tracking: one service against a "
              "model.track process per stream")
    png = draw(data, RESULTS / f"{name}.png")
    print(f"wrote {png.relative_to(ROOT)}, {md.relative_to(ROOT)} in {data['wall_s']:.0f} s")
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
