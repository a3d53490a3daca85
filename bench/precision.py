"""``python -m bench precision``: what serving at a lower precision buys, and how close the service
comes to the work that no server can avoid, all measured in one run.

1. **Unavoidable work**, in-process, before any server starts: for each configuration served
   below, its forward pass alone at ``--batch`` run the way the service's compute plan runs it
   (``service/runtime/compute.py``; on 2 cores, 2 passes at once of 1 thread each: two threads call
   ``forward`` at once), and decoding + letterboxing the same JPEGs on one thread. Each becomes
   core-seconds per image (the forward pass: cores / its images/s, every core busy; decoding and
   letterboxing: 1 / its images/s, one core); their sum is what one image costs at least, and
   the unavoidable rate is cores / that sum.
2. **Served**, one server at a time: ``yoloserve serve --backend openvino --precision P`` for each
   ``--precisions`` P, and the default ``--backend onnx --precision fp32`` as the baseline, the
   result cache off, ``--clients`` closed-loop clients sending distinct 640x480 JPEGs for
   ``--seconds`` (``bench/loadgen.py``): images/s, p50, p99.
3. The unavoidable work again once the last server has stopped; each figure is the higher of
   its two, so that a machine that got faster meanwhile cannot flatter a ratio.
4. **Ratios** of figures of this run: each precision against OpenVINO fp32 and ONNX Runtime
   fp32 served, and each server against its unavoidable rate.

``--letterbox rect`` and/or ``--decode-reduce`` add a row set: the OpenVINO servers again with
those flags, each with its own unavoidable work. A precision that cannot run here (no int8
model, no bf16 units) is skipped with the reason printed and saved.

Writes ``bench/results/precision.{json,md,png}`` (``--quick``: under ``bench/results/raw/``).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import RESULTS, machine, markdown_table, rate, save

__all__ = ["Config", "acceptance", "best_of", "configs", "core_seconds", "main", "ratios", "report"]


@dataclass(frozen=True)
class Config:
    """One way of serving the model."""

    backend: str
    precision: str
    letterbox: str = "square"
    decode_reduce: bool = False

    @property
    def options(self) -> str:
        """The row set: ``square``, ``rect``, ``square, decode-reduce``..."""
        return self.letterbox + (", decode-reduce" if self.decode_reduce else "")

    @property
    def key(self) -> str:
        return f"{self.backend} {self.precision} ({self.options})"

    @property
    def slug(self) -> str:
        return (f"precision_{self.backend}_{self.precision}_{self.letterbox}"
                f"{'_reduce' if self.decode_reduce else ''}")

    def serve_args(self, model: Path, batch: int) -> list[str]:
        return ["--model", str(model), "--device", "cpu", "--backend", self.backend,
                "--precision", self.precision, "--letterbox", self.letterbox,
                "--decode-reduce" if self.decode_reduce else "--no-decode-reduce",
                "--max-batch-size", str(batch)]


def default_precisions(model: Path) -> list[str]:
    """fp32 and bf16, and int8 when a quantized model of ``model`` exists."""
    from service.engine.engine import openvino_dir

    int8 = (openvino_dir(model, "int8") / f"{model.stem}.xml").is_file()
    return ["fp32", "bf16", *(["int8"] if int8 else [])]


def configs(precisions: list[str], letterbox: str, decode_reduce: bool) -> list[Config]:
    """The baseline (ONNX Runtime fp32), OpenVINO at each precision, and the same OpenVINO rows
    with ``letterbox`` / ``decode_reduce`` when either differs from the default."""
    out = [Config("onnx", "fp32"), *(Config("openvino", p) for p in precisions)]
    if letterbox != "square" or decode_reduce:
        out += [Config("openvino", p, letterbox, decode_reduce) for p in precisions]
    return out


# -- unavoidable work ----------------------------------------------------------------------------
def core_seconds(forward_ips: float, decode_ips: float, cores: int) -> dict[str, float]:
    """Core-seconds one image costs at least: its share of a forward pass that keeps ``cores``
    busy at ``forward_ips``, and its decoding + letterboxing on one core at ``decode_ips``; the
    rate those allow on ``cores``."""
    forward_s, decode_s = cores / forward_ips, 1.0 / decode_ips
    total = forward_s + decode_s
    return {"forward_ips": forward_ips, "decode_ips": decode_ips, "cores": cores,
            "forward_core_s": forward_s, "decode_core_s": decode_s, "total_core_s": total,
            "unavoidable_ips": cores / total}


def best_of(before: list[dict[str, Any]], after: list[dict[str, Any]],
            cores: int) -> list[dict[str, Any]]:
    """Per configuration, the higher forward and decode rates of the two measurements, as
    core-seconds (a configuration measured only once keeps its one figure)."""
    out = []
    for b in before:
        a = next((x for x in after if x["key"] == b["key"]), b)
        forward, decode = max(b["forward_ips"], a["forward_ips"]), max(b["decode_ips"], a["decode_ips"])
        out.append({"key": b["key"], "plan": b["plan"], "forward_before_ips": b["forward_ips"],
                    "forward_after_ips": a["forward_ips"], **core_seconds(forward, decode, cores)})
    return out


def measure_work(config: Config, model: Path, images: list[bytes], batch: int, seconds: float,
                 decode_cache: dict[tuple[str, bool], float]) -> dict[str, Any]:
    """``config``'s forward pass alone run as the service's plan runs it, and (once per letterbox
    and decoding) decode + letterbox on one thread; raises ``ModelLoadError`` when it cannot load."""
    import numpy as np

    from bench.served import served_as
    from service.engine import Engine

    srv = served_as(model, config.backend, "cpu", precision=config.precision,
                    letterbox=config.letterbox, decode_reduce=config.decode_reduce)
    engine = Engine.load(model, backend=srv.backend, device="cpu",  # type: ignore[arg-type]
                         precision=srv.precision, threads=srv.threads, streams=srv.streams,
                         rect=srv.rect, decode_reduce=srv.decode_reduce)
    engine.warmup(batch)
    stacked = np.stack([engine.prepare(images[i % len(images)]).tensor for i in range(batch)])
    forward = rate(lambda: engine.backend.forward(stacked), batch, seconds, srv.streams)
    key = (config.letterbox, config.decode_reduce)
    if key not in decode_cache:
        cycle = itertools.cycle(images)
        decode_cache[key] = rate(lambda: engine.prepare(next(cycle)), 1, seconds)
    return {"key": config.key, "forward_ips": forward, "decode_ips": decode_cache[key],
            "tensor": "x".join(str(d) for d in stacked.shape[1:3]),
            "plan": f"{srv.streams} pass(es) at once, {srv.threads or 'all'} thread(s) each"}


def measure_all(todo: list[Config], model: Path, images: list[bytes], batch: int, seconds: float,
                skipped: list[dict[str, str]]) -> list[dict[str, Any]]:
    """``measure_work`` for each configuration; one that cannot load is moved to ``skipped``."""
    from service.engine import ModelLoadError

    rows: list[dict[str, Any]] = []
    decode_cache: dict[tuple[str, bool], float] = {}
    for config in list(todo):
        try:
            rows.append(measure_work(config, model, images, batch, seconds, decode_cache))
        except ModelLoadError as exc:  # PrecisionUnavailable too
            print(f"skipped {config.key}: {exc}", flush=True)
            skipped.append({"config": config.key, "why": str(exc)})
            todo.remove(config)
            continue
        finally:
            gc.collect()  # the engine just measured, before the next one loads
        r = rows[-1]
        print(f"  {config.key}: forward {r['forward_ips']:.1f} img/s ({r['plan']}, "
              f"{r['tensor']}), decode + letterbox {r['decode_ips']:.1f} img/s", flush=True)
    return rows


# -- served --------------------------------------------------------------------------------------
def serve_one(config: Config, args: argparse.Namespace, bodies: list[Any]) -> dict[str, Any]:
    """One server of ``config`` under ``--clients`` closed-loop clients."""
    import httpx

    from bench.loadgen import run_closed
    from bench.procs import service
    from bench.scrape import batch_stats, scrape
    from harness.procs import Fleet

    proc = service(config.slug, *config.serve_args(args.model, args.batch))
    with Fleet(proc):
        info = httpx.get(proc.url + "/v1/model", timeout=10.0).json()
        before = scrape(proc.url)
        res = run_closed(proc.url + "/v1/detect", bodies, args.clients, args.seconds,
                         warmup=args.warmup, pids={"server": proc.pid})
        batches = batch_stats(before, scrape(proc.url), args.batch)
    print(f"  {config.key}: {res.summary()}", flush=True)
    return {"key": config.key, **asdict(config), "options": config.options,
            "served_as": f"{info.get('backend')} {info.get('precision')} {info.get('letterbox')}",
            "img_s": res.throughput, "p50_ms": res.p50_ms, "p99_ms": res.p99_ms, "n": res.ok,
            "errors": sum(res.errors.values()), "error_kinds": res.errors,
            "mean_batch": batches.get("mean_batch", float("nan")),
            "cpu_server_pct": res.cpu.get("cpu_server_pct"),
            "cpu_loadgen_pct": res.cpu.get("cpu_loadgen_pct")}


# -- the report ----------------------------------------------------------------------------------
def ratios(served: list[dict[str, Any]], work: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each OpenVINO precision served against OpenVINO fp32 (same row set) and ONNX Runtime fp32;
    each row set against the square one at the same precision; each server against its
    unavoidable rate."""
    by = {r["key"]: r for r in served}
    out: list[dict[str, Any]] = []

    def add(what: str, num: dict[str, Any], den: dict[str, Any] | None, value: str = "img_s",
            of: str = "img_s") -> None:
        if den is not None and den.get(of):
            out.append({"ratio": what, "value": num[value] / den[of],
                        "figures": f"{num[value]:.1f} / {den[of]:.1f} img/s"})

    onnx = by.get(Config("onnx", "fp32").key)
    for r in served:
        if r["backend"] != "openvino":
            continue
        if r["precision"] != "fp32":
            fp32 = by.get(Config("openvino", "fp32", r["letterbox"], r["decode_reduce"]).key)
            add(f"served {r['key']} / served {fp32['key'] if fp32 else ''}", r, fp32)
        add(f"served {r['key']} / served {onnx['key'] if onnx else ''}", r, onnx)
        if r["options"] != "square":
            square = by.get(Config("openvino", r["precision"]).key)
            add(f"served {r['key']} / served {square['key'] if square else ''}", r, square)
    for w in work:
        if w["key"] in by:
            add(f"served {w['key']} / its unavoidable rate", by[w["key"]], w,
                of="unavoidable_ips")
    return out


def acceptance(served: list[dict[str, Any]], work: list[dict[str, Any]],
               precision: str = "bf16") -> dict[str, Any] | None:
    """The headline of the square row set: OpenVINO at ``precision`` served, its unavoidable
    rate and their ratio, and the ratios to OpenVINO fp32 and ONNX Runtime fp32 served."""
    by = {r["key"]: r for r in served}
    mine = by.get(Config("openvino", precision).key)
    if mine is None:
        return None
    unavoidable = next((w for w in work if w["key"] == mine["key"]), None)
    out: dict[str, Any] = {"precision": precision, "served_ips": mine["img_s"],
                           "unavoidable_ips": unavoidable["unavoidable_ips"] if unavoidable else None}
    out["served_over_unavoidable"] = (mine["img_s"] / out["unavoidable_ips"]
                                      if out["unavoidable_ips"] else None)
    for name, ref in (("openvino_fp32", Config("openvino", "fp32")), ("onnx_fp32", Config("onnx", "fp32"))):
        other = by.get(ref.key)
        out[f"over_{name}"] = mine["img_s"] / other["img_s"] if other and other["img_s"] else None
    return out


def _acceptance_line(a: dict[str, Any] | None) -> str:
    if a is None:
        return "No OpenVINO row at the headline precision was served."

    def x(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    return (f"OpenVINO {a['precision']} served {a['served_ips']:.1f} img/s; its unavoidable rate "
            f"{'n/a' if a['unavoidable_ips'] is None else format(a['unavoidable_ips'], '.1f')} "
            f"img/s; served / unavoidable **{x(a['served_over_unavoidable'])}**; against "
            f"OpenVINO fp32 served **{x(a['over_openvino_fp32'])} ×**, against ONNX Runtime fp32 "
            f"served **{x(a['over_onnx_fp32'])} ×**.")


def _f(v: Any, nd: int = 1) -> str:
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def report(data: dict[str, Any]) -> str:
    s = data["settings"]
    served = [{**r, **{k: _f(r[k]) for k in ("img_s", "p50_ms", "p99_ms", "cpu_server_pct",
                                               "cpu_loadgen_pct")},
               "mean_batch": _f(r["mean_batch"], 2)} for r in data["served"]]
    work = [{"config": w["key"], "plan": w["plan"], "forward before": _f(w["forward_before_ips"]),
             "forward after": _f(w["forward_after_ips"]), "forward used": _f(w["forward_ips"]),
             "forward core-ms/img": _f(1000 * w["forward_core_s"], 2),
             "decode+letterbox img/s": _f(w["decode_ips"]),
             "decode core-ms/img": _f(1000 * w["decode_core_s"], 2),
             "total core-ms/img": _f(1000 * w["total_core_s"], 2),
             "unavoidable img/s": _f(w["unavoidable_ips"])} for w in data["unavoidable"]]
    lines = [
        "## Headline", _acceptance_line(data.get("acceptance")), "",
        "## How it was measured",
        f"Each server: `yoloserve serve --backend B --precision P --letterbox L "
        f"[--decode-reduce] --max-batch-size {s['batch']}`, result cache off, {s['clients']} "
        f"closed-loop clients, {s['images']} distinct 640x480 JPEGs, {s['warmup']} s warm-up "
        f"then {s['seconds']} s counted, one server at a time. Unavoidable work: in-process, "
        f"before the servers and after them ({s['forward_seconds']} s each), the forward pass "
        f"alone at batch {s['batch']} run as the service's plan runs it, and decode + "
        f"letterbox on one thread; core-seconds per image = {s['cores']} cores / forward "
        f"img/s + 1 / decode img/s; unavoidable img/s = {s['cores']} / that sum.",
        "", "## Served", markdown_table(served, ["key", "served_as", "img_s", "p50_ms", "p99_ms",
                                                 "n", "errors", "mean_batch", "cpu_server_pct",
                                                 "cpu_loadgen_pct"]),
        "", "## Unavoidable work (images/s; the higher of before and after used)",
        markdown_table(work, list(work[0]) if work else ["config"]),
        "", "## Ratios (figures of this run)",
        markdown_table([{**r, "value": f"{r['value']:.3f}"} for r in data["ratios"]],
                       ["ratio", "value", "figures"]),
    ]
    if data["skipped"]:
        lines += ["", "Not run:", *(f"- {x['config']}: {x['why']}" for x in data["skipped"])]
    return "\n".join(lines)


def draw(data: dict[str, Any], path: Path) -> Path:
    from bench import plots

    work = {w["key"]: w for w in data["unavoidable"]}
    groups = {f"{r['backend']}\n{r['precision']}\n{r['options'].replace(', decode-reduce', '+reduce')}": {
        f"served ({data['settings']['clients']} clients)": r["img_s"],
        "unavoidable (forward + decode + letterbox)": work.get(r["key"], {}).get("unavoidable_ips", 0.0),
        "forward pass alone (service plan)": work.get(r["key"], {}).get("forward_ips", 0.0),
    } for r in data["served"]}
    return plots.grouped_bars(groups, path, "Served against unavoidable work, by precision",
                              "images/s", legend_y=-0.2)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Unavoidable work, the servers one at a time, the unavoidable work again; the ratios."""
    from harness.images import make_bodies, make_images

    started, cores = time.monotonic(), os.cpu_count() or 1
    precisions = args.precisions or default_precisions(args.model)
    todo = configs(precisions, args.letterbox, args.decode_reduce)
    images = make_images(args.images)
    bodies = make_bodies(images)
    skipped: list[dict[str, str]] = []
    print("unavoidable work, before the servers", flush=True)
    before = measure_all(todo, args.model, images, args.batch, args.forward_seconds, skipped)
    served = []
    for config in todo:
        try:
            served.append(serve_one(config, args, bodies))
        except (RuntimeError, TimeoutError) as exc:  # a server that did not start
            print(f"skipped {config.key}: {exc}", flush=True)
            skipped.append({"config": config.key, "why": f"the server did not start: {exc}"})
    print("unavoidable work, after the servers", flush=True)
    after = measure_all(list(todo), args.model, images, args.batch, args.forward_seconds, [])
    work = best_of(before, after, cores)
    settings = {k: getattr(args, k) for k in ("seconds", "warmup", "clients", "images", "batch",
                                              "forward_seconds", "letterbox", "decode_reduce")}
    return {"settings": {**settings, "model": str(args.model), "precisions": precisions,
                         "cores": cores},
            "served": served, "unavoidable": work, "unavoidable_before": before,
            "unavoidable_after": after, "ratios": ratios(served, work),
            "acceptance": acceptance(served, work), "skipped": skipped,
            "wall_s": time.monotonic() - started}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    name = args.name or ("raw/precision_quick" if args.quick else "precision")
    if args.replot:
        print(f"wrote {draw(json.loads((RESULTS / f'{name}.json').read_text()), RESULTS / f'{name}.png')}")
        return 0
    print(f"precision: {machine()}", flush=True)
    data = run(args)
    text = report(data)
    print(text)
    md = save(name, data, text, "Precision: served against unavoidable work")
    png = draw(data, RESULTS / f"{name}.png")
    print(f"wrote {png}, {md} in {data['wall_s']:.0f} s")
    bad = [r["key"] for r in data["served"] if r["errors"]]
    if bad:
        print(f"NOT every answer was 200: {bad}")
    return 1 if bad or not data["served"] else 0


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench precision", description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=Path("models/demo.pt"))
    ap.add_argument("--precisions", nargs="+", choices=["fp32", "fp16", "bf16", "int8"],
                    default=None, help="OpenVINO's rows [fp32 bf16, and int8 when its model exists]")
    ap.add_argument("--seconds", type=float, default=15.0, help="counted, per server")
    ap.add_argument("--warmup", type=float, default=3.0, help="per server, before counting")
    ap.add_argument("--clients", type=int, default=16, help="closed-loop clients")
    ap.add_argument("--images", type=int, default=128, help="distinct 640x480 JPEGs")
    ap.add_argument("--batch", type=int, default=8,
                    help="the servers' max batch size and the forward pass's batch")
    ap.add_argument("--forward-seconds", type=float, default=5.0,
                    help="per in-process measurement")
    ap.add_argument("--letterbox", choices=["square", "rect"], default="square",
                    help="rect: add a row set served with --letterbox rect")
    ap.add_argument("--decode-reduce", action="store_true",
                    help="add a row set served with --decode-reduce")
    ap.add_argument("--name", default=None, help="results name [precision]")
    ap.add_argument("--quick", action="store_true", help="a smoke run, results under raw/")
    ap.add_argument("--replot", action="store_true", help="only redraw the plot from the JSON")
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.forward_seconds, args.images = 3.0, 1.0, 1.0, 16
    return args


if __name__ == "__main__":
    raise SystemExit(main())
