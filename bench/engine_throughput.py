"""Ceiling: images/s of the forward pass alone and of ``Engine.infer`` at each batch size.

    python -m bench.engine_throughput [--model models/demo.pt] [--batches 1 2 4 8] [--seconds 5]

The forward pass alone (a stacked uint8 batch already in memory) is the limit any server can
reach; ``Engine.infer`` adds our batched NMS; ``end to end`` adds decode + letterbox of a
640x480 JPEG per image (single thread). Both backends are measured in one run.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bench import plots
from bench.common import RESULTS, markdown_table, rate, save
from service.engine import Engine
from service.engine.backends import resolve_device


def _jpeg() -> bytes:
    from service.demo.synthetic import make_sample

    img = cv2.resize(make_sample(7, 0).image, (640, 480))
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def _finished(out: Any) -> None:
    """Wait for a CUDA forward pass to end: kernels are queued asynchronously."""
    if getattr(out, "is_cuda", False):
        import torch

        torch.cuda.synchronize(out.device)


def measure(engine: Engine, batch: int, seconds: float, data: bytes) -> dict[str, Any]:
    prepared = [engine.prepare(data) for _ in range(batch)]
    stacked = np.stack([p.tensor for p in prepared])
    forward = rate(lambda: _finished(engine.backend.forward(stacked)), batch, seconds)
    infer = rate(lambda: engine.infer(prepared), batch, seconds)
    e2e = rate(lambda: engine.infer([engine.prepare(data) for _ in range(batch)]), batch, seconds)
    return {"backend": engine.meta.backend, "precision": engine.meta.precision, "batch": batch,
            "forward_ips": forward, "infer_ips": infer, "end_to_end_ips": e2e}


def draw(rows: list[dict[str, Any]]) -> Path:
    """Images/s against batch size: forward alone, + NMS, + decode and letterbox, per backend."""
    stages = (("forward_ips", "forward"), ("infer_ips", "+ NMS"),
              ("end_to_end_ips", "+ decode, letterbox"))
    series: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        for key, stage in stages:
            label = f"{r['backend']} {r['precision']}: {stage}"
            series.setdefault(label, []).append((r["batch"], r[key]))
    return plots.throughput_vs_concurrency(series, RESULTS / "engine_throughput.png",
                                           "Engine throughput against batch size", xlabel=
                                           "batch size (in-process)", ylabel="images/s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=Path("models/demo.pt"))
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--backends", nargs="+", default=["torch", "onnx"])
    ap.add_argument("--replot", action="store_true", help="only redraw the plot from the JSON")
    args = ap.parse_args(argv)
    if args.replot:
        import json

        print(f"wrote {draw(json.loads((RESULTS / 'engine_throughput.json').read_text())['rows'])}")
        return 0
    data = _jpeg()
    rows = []
    device = resolve_device(args.device)
    for backend in args.backends:
        halves = [False, True] if device.startswith("cuda") else [False]
        for half in halves:
            engine = Engine.load(args.model, backend=backend, device=device, half=half)
            engine.warmup(max(args.batches))
            for b in args.batches:
                rows.append(measure(engine, b, args.seconds, data))
                print(rows[-1], flush=True)
    for r in rows:
        base = next(x for x in rows if x["backend"] == r["backend"]
                    and x["precision"] == r["precision"] and x["batch"] == min(args.batches))
        r["forward_vs_batch1"] = r["forward_ips"] / base["forward_ips"]
    cols = ["backend", "precision", "batch", "forward_ips", "infer_ips", "end_to_end_ips",
            "forward_vs_batch1"]
    table = markdown_table(rows, cols)
    print(table)
    save("engine_throughput", {"model": str(args.model), "rows": rows}, table,
         "Engine throughput (images/s)")
    print(f"wrote {draw(rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
