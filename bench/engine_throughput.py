"""Ceiling: images/s of the forward pass alone and of ``Engine.infer`` at each batch size, for
each backend at each precision.

    python -m bench engine [--backends torch onnx openvino] [--precisions fp32 bf16 int8]
                           [--batches 1 2 4 8] [--seconds 4] [--device cpu|cuda]

The forward pass alone (a stacked uint8 batch already in memory) is the limit any server can
reach; ``Engine.infer`` adds our batched NMS; ``end to end`` adds decode + letterbox of a
640x480 JPEG per image (single thread). Every pass runs as one stream, on every core. Without
``--precisions``: fp32 on every backend, plus each precision this hardware has for the backends
that run it (``service.engine.precision.missing_for``); on CUDA, torch and ONNX Runtime at fp32
and fp16 (and bf16 for torch where the GPU has it). A combination that cannot load (no int8
model, a precision the device lacks) is skipped, with the reason printed and saved. Each row's
forward pass is also given as a ratio to ONNX Runtime fp32 at the same batch size.
"""

from __future__ import annotations

import argparse
import gc
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bench.common import RESULTS, markdown_table, rate, save

__all__ = ["combos", "main", "with_ratios"]

BACKENDS = ("torch", "onnx", "openvino")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


def _jpeg() -> bytes:
    from service.demo.synthetic import make_sample

    img = cv2.resize(make_sample(7, 0).image, (640, 480))
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def _finished(out: Any) -> None:
    """Wait for a CUDA forward pass to end: kernels are queued asynchronously."""
    if getattr(out, "is_cuda", False):
        import torch

        torch.cuda.synchronize(out.device)


def combos(backends: list[str], precisions: list[str] | None,
           device: str) -> tuple[list[tuple[str, str]], list[dict[str, str]]]:
    """(backend, precision) pairs to measure, and those passed over with why. Asked precisions are
    all tried (``Engine.load`` says why one cannot run); by default fp32 everywhere and each
    precision this hardware has for each backend."""
    from service.engine.precision import detect_hardware, missing_for

    hw = detect_hardware(device)
    on_cuda = device.startswith("cuda")
    out, skipped = [], []
    for backend in backends:
        if on_cuda and backend == "openvino":
            skipped.append({"backend": backend, "precision": "*",
                            "why": "OpenVINO runs on the CPU only"})
            continue
        for precision in precisions or PRECISIONS:
            why = None if precisions else missing_for(precision, hw, device, backend)  # type: ignore[arg-type]
            if why is None:
                out.append((backend, precision))
    return out, skipped


def measure(engine: Any, batch: int, seconds: float, data: bytes) -> dict[str, Any]:
    prepared = [engine.prepare(data) for _ in range(batch)]
    stacked = np.stack([p.tensor for p in prepared])
    forward = rate(lambda: _finished(engine.backend.forward(stacked)[0]), batch, seconds)
    infer = rate(lambda: engine.infer(prepared), batch, seconds)
    e2e = rate(lambda: engine.infer([engine.prepare(data) for _ in range(batch)]), batch, seconds)
    return {"backend": engine.meta.backend, "precision": engine.meta.precision, "batch": batch,
            "forward_ips": forward, "infer_ips": infer, "end_to_end_ips": e2e}


def measure_all(todo: list[tuple[str, str]], args: argparse.Namespace, device: str,
                skipped: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Every batch size of each (backend, precision) that loads; the others go to ``skipped``."""
    from service.engine import Engine, ModelLoadError

    data = _jpeg()
    rows: list[dict[str, Any]] = []
    for backend, precision in todo:
        try:
            engine = Engine.load(args.model, backend=backend, device=device,  # type: ignore[arg-type]
                                 precision=precision, tensorrt=args.tensorrt)
        except ModelLoadError as exc:  # PrecisionUnavailable too
            print(f"skipped {backend} {precision}: {exc}", flush=True)
            skipped.append({"backend": backend, "precision": precision, "why": str(exc)})
            continue
        engine.warmup(max(args.batches))
        for b in args.batches:
            rows.append(measure(engine, b, args.seconds, data))
            print(rows[-1], flush=True)
        del engine
        gc.collect()
    return rows


def with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``forward_vs_batch1`` (against the smallest batch of the same backend and precision)
    and ``forward_vs_onnx_fp32`` (against ONNX Runtime fp32 at the same batch, when measured)."""
    for r in rows:
        same = [x for x in rows if (x["backend"], x["precision"]) == (r["backend"], r["precision"])]
        base = min(same, key=lambda x: x["batch"])
        r["forward_vs_batch1"] = r["forward_ips"] / base["forward_ips"]
        ref = next((x for x in rows if (x["backend"], x["precision"], x["batch"])
                    == ("onnx", "fp32", r["batch"])), None)
        r["forward_vs_onnx_fp32"] = r["forward_ips"] / ref["forward_ips"] if ref else ""
    return rows


def results_name(device: str) -> str:
    """``engine_throughput`` on the CPU; a GPU's figures beside them (``engine_throughput_cuda0``)."""
    return "engine_throughput" if device == "cpu" else f"engine_throughput_{device.replace(':', '')}"


def draw(rows: list[dict[str, Any]], name: str = "engine_throughput") -> Path:
    """Images/s against batch size, one panel per stage, a line per backend and precision."""
    from bench import plots

    stages = (("forward_ips", "forward pass alone"), ("infer_ips", "+ NMS"),
              ("end_to_end_ips", "+ decode, letterbox"))
    panels: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for key, stage in stages:
        for r in rows:
            label = f"{r['backend']} {r['precision']}"
            panels.setdefault(stage, {}).setdefault(label, []).append((r["batch"], r[key]))
    return plots.line_panels(panels, RESULTS / f"{name}.png",
                             "Engine throughput against batch size (in-process, one stream)",
                             xlabel="batch size", ylabel="images/s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench engine", description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=Path("models/demo.pt"))
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--backends", nargs="+", choices=BACKENDS, default=None,
                    help="[torch onnx openvino; torch onnx on CUDA]")
    ap.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=None,
                    help="[fp32, and each precision this hardware has, per backend]")
    ap.add_argument("--tensorrt", action="store_true",
                    help="ONNX Runtime through its TensorRT provider on CUDA (FP16 at fp16)")
    ap.add_argument("--replot", action="store_true", help="only redraw the plot from the JSON")
    args = ap.parse_args(argv)
    if args.replot:
        print(f"wrote {draw(json.loads((RESULTS / 'engine_throughput.json').read_text())['rows'])}")
        return 0
    from service.engine.backends import resolve_device

    device = resolve_device(args.device)
    backends = args.backends or (["torch", "onnx"] if device.startswith("cuda") else list(BACKENDS))
    todo, skipped = combos(backends, args.precisions, device)
    rows = measure_all(todo, args, device, skipped)
    for s in skipped:
        if s["precision"] == "*":
            print(f"skipped {s['backend']}: {s['why']}")
    with_ratios(rows)
    cols = ["backend", "precision", "batch", "forward_ips", "infer_ips", "end_to_end_ips",
            "forward_vs_batch1", "forward_vs_onnx_fp32"]
    table = markdown_table(rows, cols)
    if skipped:
        table += "\n\nNot measured:\n" + "\n".join(
            f"- {s['backend']} {s['precision']}: {s['why']}" for s in skipped)
    print(table)
    save(results_name(device), {"model": str(args.model), "device": device, "rows": rows,
                               "skipped": skipped, "seconds": args.seconds}, table,
         "Engine throughput (images/s)")
    print(f"wrote {draw(rows, results_name(device))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
